"""Where one block's fused E+M time goes, and how it scales on threads vs processes.

    python benchmarks/profile_kernel.py [--n-rows 98304] [--d 16] [--k 8] [--cov full]
                                        [--dtype float64] [--repeats 5]

1. The block kernel (``dask_em.engine._stats.block_statistics``) on one block, BLAS 1 thread.
2. The same block taken apart: the time in each compiled tile kernel
   (``dask_em.engine._kernels``, wrapped with timers for the run) and the rest (BLAS products,
   numpy's exp, Python).
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
import measure  # noqa: E402


def _params(x, k, cov):
    """Mid-fit parameters: two iterations from the benchmark start."""
    start = h.make_start(x, k, cov)
    return measure.daskem_fit(x[: min(len(x), 200_000)], start, 2)["model"]._params()


def parts(block, params, repeats):
    """Seconds in each compiled kernel of the tile loop, summed over the block, and the
    rest (BLAS products, numpy's exp, Python), min over repeats. The kernels are wrapped
    with timers for the run, so this follows the engine's own loop."""
    from threadpoolctl import threadpool_limits

    from dask_em.engine import _kernels
    from dask_em.engine._stats import block_statistics

    names = [n for n in vars(_kernels) if n.startswith(("full_tile_", "diag_tile_", "tile_"))]
    originals = {n: getattr(_kernels, n) for n in names}
    spent = dict.fromkeys(names, 0.0)

    def timed(name, func):
        def call(*args):
            t0 = time.perf_counter()
            out = func(*args)
            spent[name] += time.perf_counter() - t0
            return out

        return call

    best: dict = {}
    try:
        for n in names:
            setattr(_kernels, n, timed(n, originals[n]))
        with threadpool_limits(1, "blas"):
            for _ in range(repeats + 1):
                for n in names:
                    spent[n] = 0.0
                t0 = time.perf_counter()
                block_statistics(block, [params])
                total = time.perf_counter() - t0
                used = {n: v for n, v in spent.items() if v > 0}
                used["BLAS products, exp, Python"] = total - sum(used.values())
                for key, v in used.items():
                    best[key] = min(best.get(key, np.inf), v)
    finally:
        for n, f in originals.items():
            setattr(_kernels, n, f)
    return best


def _run_copies_threads(blocks, params, repeats):
    from threadpoolctl import threadpool_limits

    from dask_em.engine._stats import block_statistics

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

    from dask_em.engine._stats import block_statistics

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

    from dask_em.mixture._validation import auto_chunk_rows

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
    one = measure.kernel_times(blocks[0], params, a.repeats)
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
        print(f"  {key:28s} {v * 1e3:7.1f} ms  {100 * v / total:4.0f}%")
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
