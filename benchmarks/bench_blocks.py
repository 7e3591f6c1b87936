"""Blocks at scale (issue 22): the cost of one EM pass against the number of blocks.

Not a test (minutes of work on a shared machine): run by hand. The same rows (``--rows``
x ``--d``, persisted) are cut into about 100, 1,000 and 10,000 blocks and one E-step pass
(:func:`dask_em.engine._em.em_pass`, the statistics of every block tree-reduced to one
value) is timed ``--repeats`` times, on dask's threads and on a LocalCluster of
``--workers`` worker processes x 1 thread. From the figures:

- per-row compute ``c_row``: seconds of one thread per row, from one block timed alone
  (the kernel, no scheduler);
- per-task cost ``c_task``: ``(pass - N * c_row / threads) / blocks``, the scheduling
  and bookkeeping each block adds to a pass;
- the scheduling share of each pass, and the block size
  :func:`dask_em.jobs._blocks.choose_chunk_rows` picks for the machine.

Prints one Markdown table and one JSON object (every figure)::

    python benchmarks/bench_blocks.py [--rows 2000000] [--d 8] [--k 4]
        [--covariance-type diag] [--blocks 100 1000 10000] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402

from dask_em.engine._blas import single_threaded_blas  # noqa: E402
from dask_em.engine._em import em_pass  # noqa: E402
from dask_em.engine._params import MixtureParams  # noqa: E402
from dask_em.engine._stats import block_statistics  # noqa: E402
from dask_em.jobs._blocks import choose_chunk_rows  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--covariance-type", default="diag")
    p.add_argument("--blocks", type=int, nargs="+", default=[100, 1000, 10_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


def _params(a) -> MixtureParams:
    """A mixture close to the data's, from a short fit on a sample."""
    from dask_em import GaussianMixture

    sample = h.make_data(20_000, a.d, a.k)
    gm = GaussianMixture(a.k, covariance_type=a.covariance_type, max_iter=3, random_state=0)
    gm.fit(sample)
    return MixtureParams(
        gm.weights_, gm.means_, gm.covariances_, gm.precisions_cholesky_, a.covariance_type
    )


def per_row_seconds(a, params, rows: int = 100_000, repeats: int = 5) -> float:
    """One thread's seconds per row of the fused E-step kernel on one block (min)."""
    block = h.make_data(rows, a.d, a.k)
    times = []
    with single_threaded_blas():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            block_statistics(block, (params,), 0, 0, None)
            times.append(time.perf_counter() - t0)
    return min(times[1:]) / rows


def _pass_times(x, params, repeats: int, compute) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first pass warms caches and the kernels
        t0 = time.perf_counter()
        compute(x, params)
        times.append(time.perf_counter() - t0)
    return times[1:]


def measure(a, params, where: str) -> list[dict]:
    import dask

    out = []
    cm = h.local_cluster(a.workers, 1, "2GiB", malloc_trim=None) if where == "cluster" else None
    client = cm.__enter__() if cm is not None else None
    try:
        threads = a.workers if client is not None else h.cores()
        for blocks in a.blocks:
            chunk = -(-a.rows // blocks)
            # generated in the harness's own blocks (a small block would make a whole one
            # of those each), then cut into the blocks measured and persisted
            x = h.dask_data(a.rows, a.d, a.k, h.GEN_BLOCK).rechunk((chunk, a.d))
            if client is not None:
                x = client.persist(x)
                from distributed import wait

                wait(x)

                def compute(x, p):
                    return em_pass(x, [p])
            else:
                x = x.persist(scheduler="threads")

                def compute(x, p):
                    with dask.config.set(scheduler="threads"):
                        return em_pass(x, [p])

            times = _pass_times(x, params, a.repeats, compute)
            out.append({"where": where, "blocks": x.numblocks[0], "chunk_rows": chunk,
                        "threads": threads, "times": times})  # fmt: skip
            print(f"{where} {x.numblocks[0]} blocks: min {min(times):.3f} s", file=sys.stderr)
            del x
    finally:
        if cm is not None:
            cm.__exit__(None, None, None)
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    params = _params(a)
    c_row = per_row_seconds(a, params)
    rows = measure(a, params, "threads") + measure(a, params, "cluster")
    table = ["| where | blocks | rows/block | min s/pass | median s/pass | per task ms | "
             "scheduling share |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        best = min(r["times"])
        compute = a.rows * c_row / r["threads"]
        r["per_task_ms"] = max(0.0, (best - compute) / r["blocks"]) * 1e3
        r["share"] = max(0.0, best - compute) / best
        table.append(
            f"| {r['where']} | {r['blocks']:,} | {r['chunk_rows']:,} | {best:.3f} | "
            f"{float(np.median(r['times'])):.3f} | {r['per_task_ms']:.2f} | {r['share']:.0%} |"
        )
    c_task = max(r["per_task_ms"] for r in rows if r["where"] == "cluster") / 1e3
    chosen = {
        threads: choose_chunk_rows(a.rows, a.d, a.k, a.covariance_type, threads, itemsize=8)
        for threads in (2, 16, 800)
    }
    print("\n".join(table))
    result = {
        "args": vars(a),
        "c_row_seconds": c_row,
        "c_task_seconds_cluster_max": c_task,
        "rows": rows,
        "chosen_chunk_rows": chosen,
        "loadavg": h.loadavg(),
        "environment": h.environment(),
    }
    print(json.dumps(result, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
