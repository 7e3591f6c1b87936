"""Model selection: one shared-pass grid vs the same candidates fitted one by one.

A grid of 8 candidates (default n_components 2..5 x {full, diag}) on synthetic data, timed
two ways in the same process:

* separate: ``GaussianMixture(k, covariance_type=t, ...).fit(X)`` then ``.bic(X)`` for
  each candidate, one after the other (what a loop over the grid costs);
* grid: one :func:`dask_em.select_model` call (every pass serves every live candidate).

and in two settings: in memory (a persisted dask array) and out of core (a zarr store in
a temporary directory, re-read on every pass: ``persist=False``; deleted afterwards).
Both give the same models (the table's last column checks the BIC values agree).

Example::

    python benchmarks/bench_selection.py --n-samples 1000000 --n-features 8

Not a test: it prints a table (and, with ``--json``, writes the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

import dask
import dask.array as da
import numpy as np
from dask.callbacks import Callback

from dask_em import ConvergenceWarning, GaussianMixture, select_model


def make_data(n, d, k, seed, spread=2.0):
    """A seeded mixture of ``k`` correlated Gaussians; ``spread`` scales the centres."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, size=(k, d))
    mixing = [np.eye(d) + 0.3 * rng.normal(size=(d, d)) for _ in range(k)]
    labels = rng.integers(0, k, size=n)
    x = np.empty((n, d))
    for j in range(k):
        idx = np.flatnonzero(labels == j)
        x[idx] = centers[j] + rng.normal(size=(idx.size, d)) @ mixing[j].T
    return x


class PassCounter(Callback):
    """Counts computes that read every block of the data (the passes over it).

    A pass has a task per block plus the reduction (>= 2 per block); reading a few rows
    (a reference point, the first k-means centres) has far fewer. Task names are no
    guide: dask fuses the zarr reads into the tasks that use them.
    """

    def __init__(self, x):
        super().__init__()
        self.n_blocks = x.numblocks[0]
        self.passes = 0

    def _start(self, dsk):
        if len(dsk) >= 2 * self.n_blocks:
            self.passes += 1


def run_separate(x, grid, kw):
    bics, t0, c0 = [], time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k, ct in grid:
            gm = GaussianMixture(k, covariance_type=ct, **kw).fit(x)
            bics.append(gm.bic(x))
    return time.perf_counter() - t0, time.process_time() - c0, bics


def run_grid(x, ks, cts, kw):
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = select_model(x, ks, cts, **kw)
    return time.perf_counter() - t0, time.process_time() - c0, [r["bic"] for r in res.table], res


def bench(name, x, ks, cts, kw, repeats):
    """Separate fits and the grid, alternated ``repeats`` times; the minimum of each
    (the least disturbed by other work on the machine) makes the ratio. CPU time (this
    process, all threads) is reported too: it hardly depends on other processes."""
    grid = [(k, ct) for ct in cts for k in ks]
    t_sep, t_grid, c_sep, c_grid = [], [], [], []
    for _ in range(repeats):
        with PassCounter(x) as pc_sep:
            t, c, bic_sep = run_separate(x, grid, kw)
        t_sep.append(t)
        c_sep.append(c)
        with PassCounter(x) as pc_grid:
            t, c, bic_grid, res = run_grid(x, ks, cts, kw)
        t_grid.append(t)
        c_grid.append(c)
    return {
        "setting": name,
        "separate_s": min(t_sep),
        "grid_s": min(t_grid),
        "ratio": min(t_grid) / min(t_sep),
        "separate_cpu_s": min(c_sep),
        "grid_cpu_s": min(c_grid),
        "cpu_ratio": min(c_grid) / min(c_sep),
        "separate_all_s": t_sep,
        "grid_all_s": t_grid,
        "separate_passes": pc_sep.passes,
        "grid_passes": pc_grid.passes,
        "max_rel_bic_diff": float(
            np.max(np.abs(np.subtract(bic_sep, bic_grid)) / np.abs(bic_sep))
        ),
        "best": f"{res.best['covariance_type']} k={res.best['n_components']}",
        "n_iter": [r["n_iter"] for r in res.table],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=1_000_000)
    p.add_argument("--n-features", type=int, default=8)
    p.add_argument("--true-k", type=int, default=4)
    p.add_argument("--spread", type=float, default=2.0, help="scale of the true centres")
    p.add_argument("--n-components", type=int, nargs="+", default=[2, 3, 4, 5])
    p.add_argument("--covariance-types", nargs="+", default=["full", "diag"])
    p.add_argument("--chunk-rows", type=int, default=125_000)
    p.add_argument("--init-params", default="kmeans")
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--settings", nargs="+", default=["memory", "zarr"])
    p.add_argument("--tmpdir", default=None, help="where the zarr store goes (default: TMPDIR)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    x_np = make_data(args.n_samples, args.n_features, args.true_k, 0, args.spread)
    kw = dict(
        init_params=args.init_params,
        n_init=args.n_init,
        max_iter=args.max_iter,
        tol=args.tol,
        random_state=0,
    )
    rows = []
    print(
        f"N={args.n_samples} d={args.n_features} true k={args.true_k} spread={args.spread} "
        f"grid={args.n_components} x {args.covariance_types} chunk_rows={args.chunk_rows} "
        f"init={args.init_params} n_init={args.n_init} tol={args.tol}; scheduler: threads, "
        f"{os.cpu_count()} cores; load average before {load_before[0]:.2f}",
        flush=True,
    )
    with dask.config.set(scheduler="threads"):
        if "memory" in args.settings:
            x = da.from_array(x_np, chunks=(args.chunk_rows, -1)).persist()
            rows.append(
                bench(
                    "in memory",
                    x,
                    args.n_components,
                    args.covariance_types,
                    {**kw, "persist": True},
                    args.repeats,
                )
            )
            print(rows[-1], flush=True)
            del x
        if "zarr" in args.settings:
            tmp = tempfile.mkdtemp(prefix="bench-selection-", dir=args.tmpdir)
            try:
                path = os.path.join(tmp, "x.zarr")
                da.from_array(x_np, chunks=(args.chunk_rows, -1)).to_zarr(path)
                x = da.from_zarr(path)
                rows.append(
                    bench(
                        "zarr, re-read every pass",
                        x,
                        args.n_components,
                        args.covariance_types,
                        {**kw, "persist": False},
                        args.repeats,
                    )
                )
                print(rows[-1], flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()

    print()
    header = (
        f"{'setting':<26} {'separate (s)':>12} {'grid (s)':>9} {'ratio':>6} "
        f"{'CPU ratio':>9} {'passes sep':>10} {'passes grid':>11} {'max rel dBIC':>12}  best"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['setting']:<26} {r['separate_s']:>12.2f} {r['grid_s']:>9.2f} "
            f"{r['ratio']:>6.2f} {r['cpu_ratio']:>9.2f} "
            f"{r['separate_passes']:>10d} {r['grid_passes']:>11d} "
            f"{r['max_rel_bic_diff']:>12.1e}  {r['best']}"
        )
    print(f"load average: before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load": [load_before, load_after], "rows": rows}, f)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
