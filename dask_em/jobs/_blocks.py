"""Block size for a cluster: big enough that scheduling stays a small share of a pass.

Every block is one statistics task per EM pass (plus its share of the tree's combine
tasks), and the scheduler handles tasks one at a time, however many workers there are:
``blocks * TASK_SECONDS`` of every pass is scheduling, while the compute is
``rows * row_seconds / threads``. Keeping the first under ``share`` of the pass gives a
floor on the rows per block that grows with the cluster's threads and falls with the
work per row (``rows >= (1 - share) / share * threads * TASK_SECONDS / row_seconds``),
whatever the data size. The data size caps it: every thread should get a block.

The constants are measured on the project's 2-core machine with
``benchmarks/bench_blocks.py`` (see docs/user_guide/scaling.rst).
"""

from __future__ import annotations

import logging
import math

__all__ = ["TASK_SECONDS", "choose_chunk_rows", "row_seconds", "sized_for_cluster"]

log = logging.getLogger("dask_em.jobs.runner")

#: Scheduler seconds per block task per pass (incl. its share of the combine tasks);
#: measured ~0.3-1 ms on a LocalCluster, the higher end for many workers.
TASK_SECONDS = 1e-3

#: Seconds of one thread per row: a fixed part, and a part per component and "unit"
#: of the covariance type's work (see :func:`_units`); fitted to the kernel's timings.
_ROW_FIXED = 1e-8
_ROW_PER_UNIT = 4e-10

#: Rows per block, at least (below it the kernel's own per-block costs show), and bytes
#: per block, at most (a worker holds a block per thread being read, plus persisted ones).
MIN_ROWS = 50_000
MAX_BLOCK_BYTES = 128 * 2**20


def _units(d: int, covariance_type: str) -> float:
    """Multiply-adds per row and component, up to a constant: the triangular solve of a
    full/tied precision is ~d²/2, diagonal and spherical ones ~d."""
    return d * (d + 1) / 2 + d if covariance_type in ("full", "tied") else 2.0 * d


def row_seconds(n_features: int, n_components: int, covariance_type: str) -> float:
    """Estimated seconds of one thread to take one row through a pass (E-step and
    statistics), from the measured kernel."""
    units = _units(n_features, covariance_type)
    return _ROW_FIXED + _ROW_PER_UNIT * n_components * units


def choose_chunk_rows(
    n_rows: float,
    n_features: int,
    n_components: int,
    covariance_type: str,
    n_threads: int,
    *,
    itemsize: int = 8,
    task_seconds: float = TASK_SECONDS,
    share: float = 0.05,
) -> int:
    """Rows per block for a cluster of ``n_threads`` threads.

    Parameters
    ----------
    n_rows : int or float
        Rows of the data (``nan`` or ``inf`` where not known yet: no cap from it).
    n_features, n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    n_threads : int
        Threads of all workers together.
    itemsize : int
        Bytes per value (8 for float64, 4 for float32).
    task_seconds : float
        Scheduler seconds per block per pass.
    share : float
        Largest share of a pass left to scheduling.

    Returns
    -------
    int
        Rows per block: the scheduling floor, at least :data:`MIN_ROWS`, at most
        :data:`MAX_BLOCK_BYTES` per block, and at most ``n_rows / n_threads`` (rounded
        up) so that every thread gets a block; never more than ``n_rows``.
    """
    per_row = row_seconds(n_features, n_components, covariance_type)
    floor = (1 - share) / share * n_threads * task_seconds / per_row
    cap = max(1, MAX_BLOCK_BYTES // (n_features * itemsize))
    rows = min(max(floor, MIN_ROWS), cap)
    if math.isfinite(n_rows) and n_rows > 0:
        rows = min(rows, math.ceil(n_rows / n_threads), n_rows)
    return max(1, int(math.ceil(rows)))


def scheduling_share(
    chunk_rows: int,
    n_features: int,
    n_components: int,
    covariance_type: str,
    n_threads: int,
    *,
    task_seconds: float = TASK_SECONDS,
) -> float:
    """The estimated share of a pass spent on scheduling with blocks of ``chunk_rows``."""
    compute = chunk_rows * row_seconds(n_features, n_components, covariance_type) / n_threads
    return task_seconds / (task_seconds + compute)


def sized_for_cluster(data, model, client):
    """``data`` with ``chunk_rows`` chosen for the client's cluster, unless the job sets
    it (then ``data`` itself).

    Parameters
    ----------
    data : dask_em.data.base.Source
    model : dask_em.jobs.config.ModelConfig
        Its ``n_components`` and ``covariance_type`` set the work per row (with model
        selection: the model section's, a fair middle of the grid).
    client : distributed.Client

    Returns
    -------
    dask_em.data.base.Source
    """
    if "chunk_rows" in data.model_fields_set:
        return data
    threads = sum(client.nthreads().values()) or 1
    # the shape without reading rows (a table's row count is not known yet: nan)
    n_rows, n_features = data.check()
    itemsize = 4 if data.dtype == "float32" else 8
    rows = choose_chunk_rows(
        n_rows, n_features, model.n_components, model.covariance_type, threads, itemsize=itemsize
    )
    share = scheduling_share(rows, n_features, model.n_components, model.covariance_type, threads)
    log.info(
        "Blocks of %d rows for %d thread(s) (scheduling ~%.0f%% of a pass; set "
        "data.chunk_rows to choose)",
        rows,
        threads,
        100 * share,
    )
    return data.model_copy(update={"chunk_rows": rows})
