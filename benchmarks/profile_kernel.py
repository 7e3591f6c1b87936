"""Where one block's fused E+M time goes, and how it scales on threads vs processes.

    python benchmarks/profile_kernel.py [--n-rows 98304] [--d 16] [--k 8] [--cov full]
                                        [--dtype float64] [--repeats 5]

1. The block kernel (``dask_em._stats.block_statistics``) on one block, BLAS 1 thread.
2. The same tile loop taken apart (full: design, log-densities, log-sum-exp, moments;
   diag/spherical: the two compiled kernels and numpy's exp between them) with a timer
   around each step (a copy of the kernel's loop; it calls dask_em's own functions, so it
   breaks loudly if they change).
3. Two copies of the kernel at once: on two threads of one process and in two processes;
   the speed-up over one copy says whether the cores can be kept busy in one process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402


def _params(x, k, cov):
    import warnings

    import dask_em

    start = h.make_start(x, k, cov)
    gm = dask_em.GaussianMixture(k, covariance_type=cov, max_iter=2, tol=0, **start.kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(x[: min(len(x), 200_000)])
    return gm._params()


def kernel_times(block, params, repeats):
    from threadpoolctl import threadpool_limits

    from dask_em._stats import block_statistics

    out = []
    with threadpool_limits(1, "blas"):
        block_statistics(block, [params])
        for _ in range(repeats):
            t0 = time.perf_counter()
            block_statistics(block, [params])
            out.append(time.perf_counter() - t0)
    return out


def diag_parts(block, params, repeats):
    """The compiled diag/spherical tile loop taken apart (a copy of
    ``dask_em._stats._diag_block_statistics``'s loop, without weights)."""
    from dask_em import _kernels, _math
    from dask_em._stats import compute_dtype_for, tile_rows

    n, d = block.shape
    ct, k = params.covariance_type, params.n_components
    dtype = compute_dtype_for(block.dtype)
    prec = params.precisions_cholesky**2
    if ct == "spherical":
        prec = np.repeat(prec[:, None], d, axis=1)
    prec = prec.astype(dtype)
    const = _math.log_prob_const(params.weights, params.precisions_cholesky, ct, d)
    const = const.astype(dtype)
    b = np.ascontiguousarray(params.means - params.center, dtype=dtype)
    floor = dtype.type(_math._EXP_FLOOR[dtype.itemsize])
    m_max = min(tile_rows(ct, k, d, dtype.itemsize), n)
    xt, lp = np.empty((d, m_max), dtype), np.empty((k, m_max), dtype)
    mx, s = np.empty(m_max, dtype), np.empty(m_max, dtype)
    best: dict = {}
    for _ in range(repeats + 1):
        acc_t = dict.fromkeys(("design + log-densities", "exp", "log-sum + moments"), 0.0)
        nk, s1, s2 = np.zeros(k), np.zeros((k, d)), np.zeros((k, d))
        for a in range(0, n, m_max):
            m = min(m_max, n - a)
            t0 = time.perf_counter()
            _kernels.diag_tile_log_prob(
                block, a, m, params.center, b, prec, const, floor, xt, lp, mx
            )
            t1 = time.perf_counter()
            np.exp(lp[:, :m], out=lp[:, :m])
            t2 = time.perf_counter()
            _kernels.diag_tile_moments(
                lp, mx, xt, m, dtype.type(np.exp(floor)), s, False, s, nk, s1, s2
            )
            t3 = time.perf_counter()
            acc_t["design + log-densities"] += t1 - t0
            acc_t["exp"] += t2 - t1
            acc_t["log-sum + moments"] += t3 - t2
        for key, v in acc_t.items():
            best[key] = min(best.get(key, np.inf), v)
    return best


def parts(block, params, repeats):
    """Seconds per step of the tile loop, summed over the block (min over repeats)."""
    if params.covariance_type in ("diag", "spherical"):
        return diag_parts(block, params, repeats)
    from threadpoolctl import threadpool_limits

    from dask_em import _math
    from dask_em._stats import _Tiles, component_reference, compute_dtype_for

    n, d = block.shape
    ct, c, k = params.covariance_type, params.center, params.n_components
    dtype = compute_dtype_for(block.dtype)
    best: dict = {}
    with threadpool_limits(1, "blas"):
        for _ in range(repeats + 1):
            acc_t = dict.fromkeys(("design", "log-densities", "log-sum-exp", "moments"), 0.0)
            prepared = _math.prepare_log_prob(
                params.means - c, params.weights, params.precisions_cholesky, ct, dtype
            )
            tiles = _Tiles(n, d, k, ct, dtype)
            acc = _math.new_accumulator(ct, k, d)
            offsets = None
            if ct == "full":
                offsets = np.zeros((k, d + 1), dtype)
                offsets[:, :d] = component_reference(params) - c
            for a, b, m in tiles.ranges(n):
                t0 = time.perf_counter()
                z = _math.fill_design(tiles.design(m), block[a:b], c, ct)
                t1 = time.perf_counter()
                w, y, buf = tiles.scratch(ct, m)
                w = _math.tile_log_prob(z, prepared, ct, w, y)
                t2 = time.perf_counter()
                log_norm = _math.normalize_log_prob(w)
                np.all(np.isfinite(log_norm))
                float(np.sum(log_norm, dtype=np.float64))
                t3 = time.perf_counter()
                _math.accumulate_moments(acc, z, w, ct, None, buf, offsets)
                t4 = time.perf_counter()
                acc_t["design"] += t1 - t0
                acc_t["log-densities"] += t2 - t1
                acc_t["log-sum-exp"] += t3 - t2
                acc_t["moments"] += t4 - t3
            for key, v in acc_t.items():
                best[key] = min(best.get(key, np.inf), v)
    return best


def _run_copies_threads(blocks, params, repeats):
    from threadpoolctl import threadpool_limits

    from dask_em._stats import block_statistics

    barrier = threading.Barrier(len(blocks) + 1)

    def work(b):
        barrier.wait()
        for _ in range(repeats):
            block_statistics(b, [params])

    with threadpool_limits(1, "blas"):
        threads = [threading.Thread(target=work, args=(b,)) for b in blocks]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - t0


def _proc_worker(args):
    block, params, repeats, barrier, out = args
    from threadpoolctl import threadpool_limits

    from dask_em._stats import block_statistics

    with threadpool_limits(1, "blas"):
        block_statistics(block, [params])
        barrier.wait()
        t0 = time.perf_counter()
        for _ in range(repeats):
            block_statistics(block, [params])
        out.put((t0, time.perf_counter()))


def _run_copies_processes(blocks, params, repeats):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(blocks))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_proc_worker, args=((b, params, repeats, barrier, out),))
        for b in blocks
    ]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(e for _, e in spans) - min(s for s, _ in spans)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-rows", type=int, default=None, help="rows per block (engine's default)")
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--cov", default="full", choices=("full", "diag", "spherical"))
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)

    from dask_em._validation import auto_chunk_rows

    rows = a.n_rows or auto_chunk_rows(10**6, a.d, 8)
    x = h.make_data(max(2 * rows, 200_000), a.d, a.k)
    params = _params(x, a.k, a.cov)
    blocks = [np.ascontiguousarray(x[i * rows : (i + 1) * rows], dtype=a.dtype) for i in (0, 1)]
    res = {
        "load_start": h.loadavg(),
        "block_rows": rows,
        "d": a.d,
        "k": a.k,
        "cov": a.cov,
        "dtype": a.dtype,
    }
    one = kernel_times(blocks[0], params, a.repeats)
    res["kernel"] = h.summary(one)
    res["parts"] = parts(blocks[0], params, a.repeats)
    two_threads = _run_copies_threads(blocks, params, a.repeats)
    two_procs = _run_copies_processes(blocks, params, a.repeats)
    single = min(one)
    res["two_threads_wall"] = two_threads
    res["two_processes_wall"] = two_procs
    res["speedup_two_threads"] = 2 * a.repeats * single / two_threads
    res["speedup_two_processes"] = 2 * a.repeats * single / two_procs
    res["load_end"] = h.loadavg()

    print(
        f"block {rows}×{a.d} {a.dtype}, {a.cov} K={a.k}: kernel min {single * 1e3:.1f} ms, "
        f"median {res['kernel']['median'] * 1e3:.1f} ms ({single / rows * 1e9:.0f} ns/row)"
    )
    total = sum(res["parts"].values())
    for key, v in res["parts"].items():
        print(f"  {key:14s} {v * 1e3:7.1f} ms  {100 * v / total:4.0f}%")
    print(
        f"two copies at once: threads {res['speedup_two_threads']:.2f}× one copy's "
        f"throughput, processes {res['speedup_two_processes']:.2f}× (ideal 2)"
    )
    print(f"load average {res['load_start']} -> {res['load_end']}")
    if a.json:
        h.write_json(a.json, res)
    return res


if __name__ == "__main__":
    main()
