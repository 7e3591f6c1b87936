"""Per-iteration cost of the missing-data E-step against complete data (issue 6).

Not a test. N=1e6 rows, d=16, K=8, full covariances, 10% of values missing completely
at random; the data are persisted in memory and each E-step pass over them is timed
(the M-step is the same small driver-side computation for both, so it is left out).
Runs alternate between the two so that load from other processes hits both alike; prints
the median and minimum pass time of each and their ratios (target: at most 2.5).

    python benchmarks/bench_missing.py [--rows 1000000] [--repeats 5] [--fraction 0.1]
"""

from __future__ import annotations

import argparse
import os
import time

import dask
import dask.array as da
import numpy as np

from dask_em.engine._em import em_pass
from dask_em.engine._missing import missing_block_statistics
from dask_em.engine._params import m_step
from dask_em.init._init import random_from_data
from dask_em.mixture._validation import auto_chunk_rows


def _data(n, d, k, fraction, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 4.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    x = centers[labels] + rng.normal(size=(n, d)) @ (np.eye(d) + 0.2 * rng.normal(size=(d, d)))
    xm = x.copy()
    xm[rng.random(x.shape) < fraction] = np.nan
    return x, xm


def _time_interleaved(runs, repeats):
    """Time each ``(name, thunk)`` ``repeats`` times, alternating between them so that a
    change of machine load hits all alike."""
    for _, thunk in runs:
        thunk()  # warm up (threads, BLAS, caches)
    times = {name: [] for name, _ in runs}
    for _ in range(repeats):
        for name, thunk in runs:
            t0 = time.perf_counter()
            thunk()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    n, d, k = args.rows, args.features, args.components

    print(f"load average before: {os.getloadavg()}")
    x, xm = _data(n, d, k, args.fraction)
    rows = auto_chunk_rows(n, d)
    xd = da.from_array(x, chunks=(rows, -1)).persist()
    xmd = da.from_array(xm, chunks=(rows, -1)).persist()
    complete_rows = np.isfinite(xm).all(axis=1).mean()
    print(
        f"N={n} d={d} K={k} full, {xd.numblocks[0]} blocks of {rows} rows, "
        f"{np.isnan(xm).mean():.1%} values missing, {complete_rows:.1%} rows complete"
    )
    # A realistic mid-fit model: one M-step after a data-drawn start.
    with dask.config.set(scheduler="threads"):
        start = random_from_data(xd, k, "full", 1e-6, 2.2e-16, np.random.RandomState(0))
        (st,) = em_pass(xd, [start])
        params = m_step(st, 1e-6, 2.2e-16)
        times = _time_interleaved(
            [
                ("complete", lambda: em_pass(xd, [params])),
                ("missing", lambda: em_pass(xmd, [params], kernel=missing_block_statistics)),
            ],
            args.repeats,
        )
    tc, tm = np.asarray(times["complete"]), np.asarray(times["missing"])
    label = f"{args.fraction:.0%} missing"
    print(f"complete data: median {np.median(tc):.3f} s, min {tc.min():.3f} s per E-step pass")
    print(f"{label + ':':14s} median {np.median(tm):.3f} s, min {tm.min():.3f} s per E-step pass")
    print(
        f"ratio: {np.median(tm) / np.median(tc):.2f} (medians), {tm.min() / tc.min():.2f} "
        "(minima); target <= 2.5"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
