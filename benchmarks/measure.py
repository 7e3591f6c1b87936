"""dask-em's own figures, for the suites of ``run.py`` and for ``profile_kernel.py``.

A fit's per-iteration seconds from a given start, a fit as a user runs it (default
initialisation), the engine's block size, and the block limit: the floor that one
block's kernel time sets for a pass that runs one block per core.
"""

from __future__ import annotations

import threading
import time

import harness as h
import numpy as np


def daskem_fit(
    x, start: h.Start, n_iter: int, *, tol=0.0, persist="auto", callback=None, **kwargs
) -> dict:
    """Fit dask-em from ``start`` and record every iteration's wall time (the
    ``EMProgress.seconds`` the engine reports: E-step pass, reduction and M-step).
    ``callback(state)`` runs after each iteration, outside the timed part."""
    import dask_em

    seconds = []

    def record(state):
        seconds.append(state.seconds)
        if callback is not None:
            callback(state)

    gm = dask_em.GaussianMixture(
        start.means.shape[0],
        covariance_type=start.covariance_type,
        max_iter=n_iter,
        tol=tol,
        persist=persist,
        **start.kwargs(),
        **kwargs,
    )
    outcome = _fit(gm, x, callback=record)
    return {
        "seconds": seconds,
        # The first iteration also waits for data a LocalCluster is still receiving
        # (persist is asynchronous) and for the workers' first imports; leave it out.
        "times": h.after_first(seconds),
        "first_iteration": seconds[0] if seconds else None,
        **outcome,
    }


def daskem_default_fit(x, k: int, max_iter: int, tol: float, **kwargs) -> dict:
    """Fit dask-em with its default initialisation (as a user would)."""
    import dask_em

    gm = dask_em.GaussianMixture(k, covariance_type="full", max_iter=max_iter, tol=tol, **kwargs)
    return _fit(gm, x)


def _fit(gm, x, **kwargs) -> dict:
    """Fit ``gm`` (a dask-em GaussianMixture) on ``x``: the fit's wall seconds and what
    it ended with."""
    import dask_em

    total = h.quiet_fit(gm, x, dask_em.ConvergenceWarning, **kwargs)
    return {
        "fit_seconds": total,
        "lower_bounds": list(gm.lower_bounds_),
        "lower_bound": float(gm.lower_bound_),
        "n_iter": int(gm.n_iter_),
        "converged": bool(gm.converged_),
        "model": gm,
    }


def engine_chunk_rows(n: int, d: int) -> int:
    """Rows per block the engine picks for numpy input of ``n`` rows, ``d`` features."""
    from dask_em.mixture._validation import auto_chunk_rows

    return auto_chunk_rows(n, d, 8)


def kernel_times(block, params, repeats: int) -> list[float]:
    """Seconds of the block kernel (``block_statistics``) on one block, again and
    again on one thread with BLAS at 1 thread, after one untimed call (a warm-up)."""
    from threadpoolctl import threadpool_limits

    from dask_em.engine._stats import block_statistics

    with threadpool_limits(limits=1, user_api="blas"):
        block_statistics(block, [params])
        return [h.timed(block_statistics, block, [params])[0] for _ in range(repeats)]


def _pass_on_threads(x, params, bounds, cores: int):
    """One pass's blocks, shared out in turn over one plain thread per core, each
    thread running its share back to back; the wall time and every block's seconds."""
    from dask_em.engine._stats import block_statistics

    def run_share(share, out):
        for a, b in share:
            t, _ = h.timed(block_statistics, x[a:b], [params])
            out.append(t)

    outs = [[] for _ in range(cores)]
    threads = [
        threading.Thread(target=run_share, args=(bounds[c::cores], outs[c])) for c in range(cores)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, [t for out in outs for t in out]


def block_limit(
    x, params, chunk_rows: int, repeats: int, alone_repeats: int | None = None
) -> dict:
    """One block's fused E+M time (BLAS at 1 thread) x blocks / cores: the floor of a
    design that runs one block per core, with nothing between the blocks.

    Each sample is one pass's worth of work done that way: every core runs its share of
    the pass's own blocks back to back in a plain thread (no scheduler, no reduction,
    no M-step), each block timed; the sample is the sum of the block times / cores.
    So the floor is taken under the pass's conditions (the other cores busy, each block
    read from memory once) and over a pass's length of time, as the passes it is
    compared with are; a minimum of short samples would catch this machine's fast
    spells more often than a minimum of whole passes. ``alone`` keeps the old reading:
    the first block again and again on one thread, the other cores idle, the block in
    cache. ``repeats`` pass samples (at least 3 unless ``alone_repeats`` is given) and
    ``alone_repeats`` (default as many) single blocks.
    """
    from threadpoolctl import threadpool_limits

    bounds = [(a, min(a + chunk_rows, x.shape[0])) for a in range(0, x.shape[0], chunk_rows)]
    block_rows = bounds[0][1] - bounds[0][0]
    cores = h.cores()
    if alone_repeats is None:
        repeats = alone_repeats = max(3, repeats)
    alone = []
    if alone_repeats:
        alone = kernel_times(np.ascontiguousarray(x[: bounds[0][1]]), params, alone_repeats)
    samples, walls, per_block = [], [], []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(repeats):
            wall, times = _pass_on_threads(x, params, bounds, cores)
            walls.append(wall)
            per_block += times
            samples.append(sum(times) / cores)
    return {
        "block_rows": int(block_rows),
        "n_blocks": len(bounds),
        "cores": cores,
        "block": h.summary(per_block),
        # Wall time of the threads above: the pass with a perfect scheduler (the last
        # block's core finishing last).
        "ideal_pass": h.summary(walls),
        "alone": {
            **h.summary(alone),
            "scaled": [t * x.shape[0] / block_rows / cores for t in alone],
        },
        "times": samples,
    }


def max_rel_diff(a, b) -> float | None:
    """Largest relative difference of ``a`` from ``b`` over their common length."""
    n = min(len(a), len(b))
    if n == 0:
        return None
    a, b = np.asarray(a[:n]), np.asarray(b[:n])
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
