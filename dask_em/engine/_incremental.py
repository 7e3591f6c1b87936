"""Incremental EM over waves of blocks (Neal & Hinton 1998), the other accelerator tried.

The row blocks are split into ``n_waves`` waves. Each wave's statistics are computed
under the current parameters, replace that wave's statistics from its last visit, and the
M-step of the sum over all waves gives new parameters: ``n_waves`` M-steps per pass. The
first pass sums only the waves seen so far. Per-wave statistics are kept on the driver
(``n_waves`` times the size of one :class:`SuffStats`).

It is measured side by side with SQUAREM in ``benchmarks/suite_accel.py``; SQUAREM needed
fewer passes there, so the estimator does not offer it. The mean log-likelihood of an
incremental pass mixes the parameters of its waves, so it cannot say when plain EM
would stop: after ``n_passes`` incremental passes, the caller finishes with
:func:`dask_em.engine._em.run_em`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dask_em.engine._em import _checked_m_step, em_pass
from dask_em.engine._online import shift_reference
from dask_em.engine._params import GAUSSIAN, MixtureParams


def _waves(n_blocks: int, n_waves: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_blocks, min(n_waves, n_blocks) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def incremental_passes(
    x,
    start: MixtureParams,
    *,
    n_passes: int,
    n_waves: int,
    reg_covar: float,
    eps: float,
    weights=None,
    split_every=None,
    kernel=None,
    tol: float = 0.0,
    callback: Callable[[int, float], object] | None = None,
) -> tuple[MixtureParams, int]:
    """Up to ``n_passes`` passes of incremental EM from ``start``.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    start : MixtureParams
    n_passes : int
    n_waves : int
        Waves (groups of consecutive row blocks) a pass is split into.
    reg_covar, eps : float
        As for the M-step.
    weights : dask.array.Array of shape (n,), optional
    split_every : int, optional
    kernel : callable, optional
        The block E-step (see :func:`dask_em.engine._em.em_pass`).
    tol : float
        Stop early when the mixed mean log-likelihood of a pass changes by less.
    callback : callable, optional
        ``callback(pass_number, mixed_mean_log_likelihood)`` after every pass.

    Returns
    -------
    params : MixtureParams
        The parameters after the last wave.
    passes : int
        Passes made.
    """
    params = start
    stored: dict = {}
    previous = -np.inf
    for p in range(n_passes):
        for g, (a, b) in enumerate(_waves(x.numblocks[0], n_waves)):
            wave_w = None if weights is None else weights.blocks[a:b]
            (st,) = em_pass(
                x.blocks[a:b], [params], weights=wave_w, split_every=split_every, kernel=kernel
            )
            stored[g] = st
            total = None
            for s in stored.values():
                s = shift_reference(s, st.reference)
                total = s if total is None else total + s
            params = _checked_m_step(GAUSSIAN, total, reg_covar, eps, 0, p + 1)
        mixed = sum(s.loglik for s in stored.values())
        mixed /= sum(s.weight_total for s in stored.values())
        if callback is not None:
            callback(p + 1, mixed)
        if abs(mixed - previous) < tol:
            return params, p + 1
        previous = mixed
    return params, n_passes
