"""Incremental EM over waves of blocks (Neal & Hinton 1998), and SQUAREM over its passes.

The row blocks are split into ``n_waves`` waves. Each wave's statistics are computed
under the current parameters, replace that wave's statistics from its last visit, and the
M-step of the sum over all waves gives new parameters: ``n_waves`` M-steps per pass. The
first pass sums only the waves seen so far. Per-wave statistics are kept on the driver
(``n_waves`` times the size of one :class:`SuffStats`).

:func:`incremental_squarem_passes` extrapolates those passes with SQUAREM: a pass maps
per-wave statistics to per-wave statistics, and the statistics add, so SQUAREM's step
is taken in their space. It keeps three sets of them (``3 n_waves`` statistics).

Both are measured side by side with SQUAREM in ``benchmarks/suite_accel.py`` and not
offered by the estimator. The mean log-likelihood of an incremental pass mixes the
parameters of its waves, so it cannot say when plain EM would stop: after the
incremental passes, the caller finishes with :func:`dask_em.engine._em.run_em`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from dask_em.engine._accel import _STEP_CAP, _STEP_GROWTH, step_length
from dask_em.engine._em import _checked_m_step, em_pass
from dask_em.engine._errors import StartError
from dask_em.engine._online import shift_reference
from dask_em.engine._params import GAUSSIAN, MixtureParams
from dask_em.engine._stats import SuffStats


def _waves(n_blocks: int, n_waves: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n_blocks, min(n_waves, n_blocks) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _wave_stats(x, weights, wave, params, split_every, kernel) -> SuffStats:
    """E-step statistics of the blocks ``wave = (first, end)`` under ``params``."""
    a, b = wave
    (st,) = em_pass(
        x.blocks[a:b],
        [params],
        weights=None if weights is None else weights.blocks[a:b],
        split_every=split_every,
        kernel=kernel,
    )
    return st


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
        for g, wave in enumerate(_waves(x.numblocks[0], n_waves)):
            st = _wave_stats(x, weights, wave, params, split_every, kernel)
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


# --------------------------------------------------------------------------------------
# SQUAREM over incremental sweeps
# --------------------------------------------------------------------------------------
# One incremental pass maps the per-wave statistics it starts from to the ones it leaves
# (every wave's replaced once), so its fixed points are EM's and the statistics are a
# linear space: SQUAREM (step S3 and the growing bound of :mod:`dask_em.engine._accel`)
# extrapolates there, and the next sweep replaces every extrapolated wave by statistics
# of real rows.


def _as_vector(waves: list[SuffStats]) -> np.ndarray:
    return np.concatenate([np.ravel(getattr(s, f)) for s in waves for f in ("nk", "s1", "s2")])


def _from_vector(vec: np.ndarray, like: list[SuffStats]) -> list[SuffStats]:
    out, at = [], 0
    for s in like:
        arrays = []
        for f in ("nk", "s1", "s2"):
            a = getattr(s, f)
            arrays.append(vec[at : at + a.size].reshape(a.shape))
            at += a.size
        out.append(dataclasses.replace(s, nk=arrays[0], s1=arrays[1], s2=arrays[2]))
    return out


class _Sweeper:
    """Incremental passes over waves from given per-wave statistics (one reference)."""

    def __init__(self, x, n_waves, weights, reg_covar, eps, split_every, kernel):
        self.x, self.weights = x, weights
        self.reg_covar, self.eps = reg_covar, eps
        self.split_every, self.kernel = split_every, kernel
        self.waves = _waves(x.numblocks[0], n_waves)
        self.reference = None
        self.passes = 0

    def wave_stats(self, g: int, params: MixtureParams) -> SuffStats:
        st = _wave_stats(
            self.x, self.weights, self.waves[g], params, self.split_every, self.kernel
        ).unpacked()
        if self.reference is None:
            self.reference = st.reference
        return shift_reference(st, self.reference)

    def m_step(self, waves: list[SuffStats]) -> MixtureParams:
        return _checked_m_step(
            GAUSSIAN, SuffStats.sum_of(waves), self.reg_covar, self.eps, 0, self.passes
        )

    def first(self, params: MixtureParams) -> list[SuffStats]:
        """One E-step pass at ``params``, kept per wave."""
        self.passes += 1
        return [self.wave_stats(g, params) for g in range(len(self.waves))]

    def sweep(self, waves: list[SuffStats]) -> tuple[list[SuffStats], MixtureParams, float]:
        """One incremental pass: new per-wave statistics, last parameters, mixed mean
        log-likelihood."""
        waves = list(waves)
        params = self.m_step(waves)  # raises before reading anything if not a mixture
        self.passes += 1
        for g in range(len(waves)):
            waves[g] = self.wave_stats(g, params)
            params = self.m_step(waves)
        total = SuffStats.sum_of(waves)
        return waves, params, total.loglik / total.weight_total


def incremental_squarem_passes(
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
    callback: Callable[[int, MixtureParams], object] | None = None,
) -> tuple[MixtureParams, int]:
    """Up to ``n_passes`` passes of SQUAREM over incremental sweeps from ``start``.

    A cycle is two sweeps from statistics ``s0`` (``s1``, ``s2``) and one from the
    extrapolation ``s0 + 2 a r + a^2 v`` (``r = s1 - s0``, ``v = s2 - 2 s1 + s0``). The
    third sweep is kept when its mixed mean log-likelihood is no lower than the second
    sweep's; otherwise the cycle goes on from ``s2``. The first pass is a plain E-step.

    Parameters
    ----------
    As :func:`incremental_passes`; ``tol`` stops when a sweep changes the mixed mean
    log-likelihood by less (the first against the start's), and
    ``callback(pass_number, params)`` gets the parameters held after every pass (after
    a rejected sweep, those it started from).

    Returns
    -------
    params : MixtureParams
        The parameters after the last sweep kept.
    passes : int
        Passes made, the first E-step included.
    """
    sw = _Sweeper(x, n_waves, weights, reg_covar, eps, split_every, kernel)
    s0 = sw.first(start)
    total = SuffStats.sum_of(s0)
    last = total.loglik / total.weight_total
    held, step_max = start, 1.0

    def settled(params, mixed):
        # Every pass is compared with the one before it, as plain EM compares
        # iterations: well-separated data then stops after the first sweep.
        nonlocal last
        if callback is not None:
            callback(sw.passes, params)
        done, last = abs(mixed - last) < tol, mixed
        return done

    while sw.passes + 3 <= n_passes:
        s1, p1, m1 = sw.sweep(s0)
        if settled(p1, m1):
            return p1, sw.passes
        s2, p2, m2 = sw.sweep(s1)
        if settled(p2, m2):
            return p2, sw.passes
        v0, v1, v2 = _as_vector(s0), _as_vector(s1), _as_vector(s2)
        r, v = v1 - v0, v2 - 2.0 * v1 + v0
        alpha = step_length(r, v, step_max)
        read = sw.passes
        try:
            with np.errstate(all="ignore"):
                s3, p3, m3 = sw.sweep(_from_vector(v0 + 2.0 * alpha * r + alpha**2 * v, s2))
        except StartError:
            # Not a mixture (a weight <= 0, a covariance not positive definite) at the
            # extrapolation or on the way: a rejected step.
            m3 = -np.inf
        accepted = bool(np.isfinite(m3) and m3 >= m2)
        if alpha == step_max:
            grown = step_max * _STEP_GROWTH if accepted else step_max / _STEP_GROWTH
            step_max = min(max(grown, 1.0), _STEP_CAP)
        if accepted:
            s0, held = s3, p3
            if settled(p3, m3):
                return p3, sw.passes
        else:
            s0, held = s2, p2
            if sw.passes > read and callback is not None:
                callback(sw.passes, p2)  # a step rejected before any row was read is free
    return held, sw.passes
