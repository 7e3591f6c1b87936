"""Online (stepwise) EM: running sufficient statistics updated batch by batch.

Cappé & Moulines (2009, JRSS-B), in Liang & Klein's (2009) stepwise form: after the
E-step of batch ``t`` under the current parameters, the running statistics (per unit of
row weight) become ``(1 - g) s + g s_t`` with ``g = (t + learning_offset) **
-learning_decay``, and the M-step of the running statistics gives the new parameters.
The first update takes the batch's statistics as they are. Only the running statistics
are kept, so memory does not grow with the number of batches.

Statistics of different batches are taken about different reference points (the
parameters move between batches); :func:`shift_reference` re-expresses them about the
new batch's reference before they are blended, exactly (moments about a point are a
polynomial in it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.engine._em import _checked_m_step, em_pass
from dask_em.engine._params import (
    GAUSSIAN,
    MixtureParams,
    params_from_arrays,
    params_to_arrays,
)
from dask_em.engine._stats import SuffStats


def shift_reference(stats: SuffStats, reference: np.ndarray) -> SuffStats:
    """The same statistics taken about ``reference`` instead of ``stats.reference``.

    Parameters
    ----------
    stats : SuffStats
    reference : ndarray of shape (K, d)
        New points (all rows equal for tied covariances, whose scatter is pooled).

    Returns
    -------
    SuffStats
    """
    reference = np.asarray(reference, dtype=np.float64)
    a = stats.reference - reference  # x - new = (x - old) + a
    nk, s1 = stats.nk, stats.s1
    ct = stats.covariance_type
    if ct == "full":
        cross = s1[:, :, None] * a[:, None, :]
        s2 = stats.s2 + cross + cross.transpose(0, 2, 1)
        s2 = s2 + nk[:, None, None] * a[:, :, None] * a[:, None, :]
    elif ct == "tied":
        cross = s1.T @ a
        s2 = stats.s2 + cross + cross.T + (a.T * nk) @ a
    elif ct == "diag":
        s2 = stats.s2 + 2.0 * s1 * a + nk[:, None] * a * a
    else:
        s2 = stats.s2 + 2.0 * np.sum(s1 * a, axis=1) + nk * np.sum(a * a, axis=1)
    s1 = s1 + nk[:, None] * a
    return SuffStats(ct, reference, nk, s1, s2, stats.loglik, stats.n_rows, stats.weight_total)


def scaled(stats: SuffStats, factor: float) -> SuffStats:
    """Statistics with every weighted sum multiplied by ``factor`` (rows seen kept)."""
    return SuffStats(
        stats.covariance_type,
        stats.reference,
        stats.nk * factor,
        stats.s1 * factor,
        stats.s2 * factor,
        stats.loglik * factor,
        stats.n_rows,
        stats.weight_total * factor,
    )


def step_size(t: int, learning_decay: float, learning_offset: float) -> float:
    """Weight of the ``t``-th batch (``t = 0`` the first): 1, then ``(t + t0) ** -kappa``."""
    if t == 0:
        return 1.0
    return float(min(1.0, (t + learning_offset) ** -learning_decay))


@dataclass(frozen=True, eq=False)
class OnlineState:
    """Where online EM has got to.

    Attributes
    ----------
    params : MixtureParams
        The M-step of ``stats`` (or the initial parameters before any batch).
    stats : SuffStats or None
        Running statistics per unit of row weight; None before the first batch.
    n_steps : int
        Batches seen.
    last_lower_bound : float
        Mean log-likelihood of the last batch under the parameters before its update.
    """

    params: MixtureParams
    stats: SuffStats | None = None
    n_steps: int = 0
    last_lower_bound: float = -np.inf

    def to_arrays(self) -> dict:
        """Plain arrays for ``np.savez`` (no pickles); :meth:`from_arrays` undoes it."""
        out = params_to_arrays(self.params, "params_")
        out.update(n_steps=np.asarray(self.n_steps), last=np.asarray(self.last_lower_bound))
        if self.stats is not None:  # as kept (a full scatter may be packed)
            out.update({f"stats_{f}": np.asarray(getattr(self.stats, f)) for f in _STATS})
        return out

    @classmethod
    def from_arrays(cls, arrays, covariance_type: str) -> OnlineState:
        params = params_from_arrays(arrays, "params_", covariance_type)
        stats = None
        if "stats_nk" in arrays:
            st = {f: arrays[f"stats_{f}"] for f in _STATS}
            stats = SuffStats(
                covariance_type,
                st["reference"],
                st["nk"],
                st["s1"],
                st["s2"],
                float(st["loglik"]),
                int(st["n_rows"]),
                float(st["weight_total"]),
            )
        return cls(params, stats, int(arrays["n_steps"]), float(arrays["last"]))


_STATS = ("reference", "nk", "s1", "s2", "loglik", "n_rows", "weight_total")


def online_update(
    state: OnlineState,
    batch: SuffStats,
    *,
    learning_decay: float,
    learning_offset: float,
    reg_covar: float,
    eps: float,
    start: int = 0,
) -> OnlineState:
    """One stepwise-EM update from the statistics of a batch under ``state.params``.

    Parameters
    ----------
    state : OnlineState
    batch : SuffStats
        E-step statistics of the batch under ``state.params``.
    learning_decay : float
        ``kappa`` in (0.5, 1].
    learning_offset : float
        ``t0`` >= 0.
    reg_covar, eps : float
        As for the M-step.
    start : int
        Index of the start, for error messages.

    Returns
    -------
    OnlineState
    """
    if batch.weight_total <= 0:
        return state  # a batch of zero weight carries no information
    mean_stats = scaled(batch, 1.0 / batch.weight_total)
    g = step_size(state.n_steps, learning_decay, learning_offset)
    if state.stats is not None and g < 1.0:
        old = shift_reference(state.stats, batch.reference)
        mean_stats = scaled(old, 1.0 - g) + scaled(mean_stats, g)
    params = _checked_m_step(GAUSSIAN, mean_stats, reg_covar, eps, start, state.n_steps + 1)
    lower_bound = batch.loglik / batch.weight_total
    return OnlineState(params, mean_stats, state.n_steps + 1, lower_bound)


def online_pass(
    x,
    starts,
    *,
    rng: np.random.RandomState,
    learning_decay: float,
    learning_offset: float,
    reg_covar: float,
    eps: float,
    weights=None,
    split_every=None,
    kernel=None,
) -> list[MixtureParams]:
    """One pass of online EM over the row blocks of ``x`` in a random order.

    Every start is updated from the same read of each block (starts share the pass).

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    starts : sequence of MixtureParams
    rng : numpy.random.RandomState
        Draws the block order.
    learning_decay, learning_offset, reg_covar, eps : float
        See :func:`online_update`.
    weights : dask.array.Array of shape (n,), optional
    split_every : int, optional
    kernel : callable, optional
        The block E-step (see :func:`dask_em.engine._em.em_pass`).

    Returns
    -------
    list of MixtureParams
        Each start's parameters after the pass.
    """
    states = [OnlineState(p) for p in starts]
    for j in rng.permutation(x.numblocks[0]):
        block_w = None if weights is None else weights.blocks[int(j)]
        batch = em_pass(
            x.blocks[int(j)],
            [s.params for s in states],
            weights=block_w,
            split_every=split_every,
            kernel=kernel,
        )
        states = [
            online_update(
                s,
                st,
                learning_decay=learning_decay,
                learning_offset=learning_offset,
                reg_covar=reg_covar,
                eps=eps,
                start=i,
            )
            for i, (s, st) in enumerate(zip(states, batch, strict=True))
        ]
    return [s.params for s in states]
