"""How many values a node of a tree reduction may add: its fan-in, from their size.

A Dask task receives all its inputs at once, so a combine node of fan-in ``f`` holds its
``f`` inputs and the one buffer it adds them into (:func:`dask_em.engine._reduce.add_values`):
``(f + 1) * S`` bytes for values of ``S`` bytes each. Full-covariance statistics hold
``K * d * d`` float64 (``S`` = 75 MB at K=16, d=768), so dask's usual fan-in of 16 asks
more than a worker of 1 GiB has. :func:`fan_in` picks the largest fan-in up to the one
asked for whose node fits in :data:`COMBINE_MEMORY_FRACTION` of the memory of one worker
thread (never below 2).

Every finished statistics task's value also waits in memory for its node. Where tasks
read their own blocks (fused reads), :func:`read_tasks` bounds how many there are by the
scheduler's threads once a value is large, so what waits does not grow with the number
of blocks. Full-covariance statistics travel packed (lower triangles,
:meth:`dask_em.engine._stats.SuffStats.packed`), which halves every such value.
"""

from __future__ import annotations

import dask

# A combine node may take this share of a worker thread's memory. The rest is for what
# the same worker holds meanwhile: Python, the libraries and a block being read (~250 MB
# on a dask worker), block results waiting for their node, and the next node's inputs
# arriving; dask pauses a worker at 80% of its limit.
COMBINE_MEMORY_FRACTION = 0.25

# Blocks whose value is at least this large are read several to a task (read_tasks):
# K=16, d=768 full statistics are 38 MB packed; d=256, K=8 ones 2 MB.
_GROUPED_VALUE_BYTES = 8 * 2**20
# Tasks per worker thread when blocks are grouped: two keep every thread busy while
# the tree adds, however the blocks' costs differ.
_TASKS_PER_THREAD = 2

# Nodes smaller than this are not checked against the workers' memory (which asks the
# scheduler): any worker thread is assumed to have 4x this to spare.
_UNCHECKED_NODE_BYTES = 16 * 2**20


def active_client():
    """The distributed Client that ``dask.compute`` would use now, or None."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def memory_per_thread() -> float:
    """Bytes of memory one task may count on under the current scheduler.

    On a distributed cluster: the smallest ``memory_limit / nthreads`` over the workers
    (workers without a limit count as the machine's total memory). On the local
    schedulers: the machine's available memory over the scheduler's threads.
    """
    import psutil
    from dask.system import CPU_COUNT

    workers = _workers()
    if workers is None:
        threads = int(dask.config.get("num_workers", None) or CPU_COUNT)
        return psutil.virtual_memory().available / max(1, threads)
    total = psutil.virtual_memory().total
    per_thread = [(w.get("memory_limit") or total) / max(1, w.get("nthreads", 1)) for w in workers]
    return float(min(per_thread, default=total))


def total_threads() -> int:
    """Threads that run tasks under the current scheduler (all workers' on a cluster)."""
    from dask.system import CPU_COUNT

    workers = _workers()
    if workers is None:
        return int(dask.config.get("num_workers", None) or CPU_COUNT)
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers))


def _workers():
    """The cluster's workers' info dicts (``memory_limit``, ``nthreads``), or None on
    the local schedulers."""
    client = active_client()
    if client is None:
        return None
    return list(client.scheduler_info(n_workers=-1).get("workers", {}).values())


def read_tasks(value_nbytes: int, n_blocks: int) -> int:
    """Statistics tasks of a pass whose tasks read their own blocks.

    One per block while a block's value is under 8 MiB; beyond, at most two per thread
    of the scheduler, each reading its consecutive blocks one after another and adding
    their values into one sum as they come. Every finished task's value waits in memory
    for its tree node, so this bounds what a worker holds by its threads, not by the
    number of blocks (at K=16, d=768 and 20 blocks on 2 workers of 1 GiB, one a block
    paused the workers).

    Parameters
    ----------
    value_nbytes : int
        Bytes of one block's value.
    n_blocks : int

    Returns
    -------
    int
    """
    if value_nbytes < _GROUPED_VALUE_BYTES:
        return n_blocks
    return max(1, min(n_blocks, _TASKS_PER_THREAD * total_threads()))


def fan_in(value_nbytes: int, most: int, memory: float | None = None) -> int:
    """Values a combine node may add: the largest ``f <= most`` with
    ``(f + 1) * value_nbytes <= COMBINE_MEMORY_FRACTION * memory``, at least 2.

    Parameters
    ----------
    value_nbytes : int
        Bytes of one value (one block's statistics).
    most : int
        The fan-in asked for (``split_every``).
    memory : float, optional
        Bytes a task may count on; default :func:`memory_per_thread` (asked only when
        a node of fan-in ``most`` would be larger than 16 MiB).

    Returns
    -------
    int
    """
    most = max(2, int(most))
    if value_nbytes <= 0 or (most + 1) * value_nbytes <= _UNCHECKED_NODE_BYTES:
        return most
    if memory is None:
        memory = memory_per_thread()
    fits = int(COMBINE_MEMORY_FRACTION * memory // value_nbytes) - 1
    return max(2, min(most, fits))
