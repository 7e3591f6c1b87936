"""The EM loop over a chunked dask array: no I/O, no configuration, no estimator state.

Every iteration is one pass over the data: a tree reduction whose leaves are the fused
E-step of each block (for every still-running candidate start at once) and whose root is
a tuple of small statistics; the M-step then runs on the driver in numpy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._errors import StartError
from dask_em.engine._params import MixtureParams, m_step
from dask_em.engine._reduce import compute_pass
from dask_em.engine._stats import block_statistics, compute_dtype_for

COMPUTE_DTYPES = ("auto", "float32", "float64")

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CandidateState:
    """One start (restart) of EM and where it has got to.

    Attributes
    ----------
    index : int
        Position among the starts (scikit-learn's init number).
    params : MixtureParams
        Parameters after the last M-step.
    lower_bounds : tuple of float
        Mean log-likelihood of each iteration's E-step.
    converged : bool
    active : bool
        Still iterating.
    error : StartError or None
        Why the start was dropped (``run_em(on_start_error='drop')``); its parameters
        and lower bounds are those of the iteration before.
    """

    index: int
    params: MixtureParams
    lower_bounds: tuple
    converged: bool
    active: bool
    error: StartError | None = None

    @property
    def n_iter(self) -> int:
        return len(self.lower_bounds)

    @property
    def lower_bound(self) -> float:
        return self.lower_bounds[-1] if self.lower_bounds else -np.inf


@dataclass(frozen=True, eq=False)
class EMProgress:
    """The state of a fit after an iteration: enough to report progress and to resume.

    Attributes
    ----------
    iteration : int
        Iterations done (1-based after the first).
    seconds : float
        Wall time of the last iteration.
    candidates : tuple of CandidateState
    """

    iteration: int
    seconds: float
    candidates: tuple

    def to_arrays(self) -> dict:
        """Plain numpy arrays (savable with ``np.savez``, loadable without pickle)."""
        out = {
            "iteration": np.asarray(self.iteration),
            "seconds": np.asarray(self.seconds),
            "n_candidates": np.asarray(len(self.candidates)),
            "covariance_type": np.asarray(self.candidates[0].params.covariance_type),
        }
        for c in self.candidates:
            p = f"c{c.index}_"
            out[p + "index"] = np.asarray(c.index)
            # Per start: a model-selection grid mixes covariance types.
            out[p + "covariance_type"] = np.asarray(c.params.covariance_type)
            out[p + "weights"] = c.params.weights
            out[p + "means"] = c.params.means
            out[p + "precisions_cholesky"] = c.params.precisions_cholesky
            if c.params.covariances is not None:
                out[p + "covariances"] = c.params.covariances
            out[p + "lower_bounds"] = np.asarray(c.lower_bounds, dtype=np.float64)
            out[p + "converged"] = np.asarray(c.converged)
            out[p + "active"] = np.asarray(c.active)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> EMProgress:
        """Rebuild from :meth:`to_arrays` output (or an ``np.load`` of it)."""
        cov_type = str(arrays["covariance_type"])
        cands = []
        for i in range(int(arrays["n_candidates"])):
            p = f"c{i}_"
            ct = (
                str(arrays[p + "covariance_type"]) if p + "covariance_type" in arrays else cov_type
            )
            params = MixtureParams(
                np.asarray(arrays[p + "weights"]),
                np.asarray(arrays[p + "means"]),
                np.asarray(arrays[p + "covariances"]) if p + "covariances" in arrays else None,
                np.asarray(arrays[p + "precisions_cholesky"]),
                ct,
            )
            cands.append(
                CandidateState(
                    int(arrays[p + "index"]),
                    params,
                    tuple(float(v) for v in np.asarray(arrays[p + "lower_bounds"])),
                    bool(arrays[p + "converged"]),
                    bool(arrays[p + "active"]),
                )
            )
        return cls(int(arrays["iteration"]), float(arrays["seconds"]), tuple(cands))


def _em_chunk(x, params_list, row_offset, block_index, w=None):
    return block_statistics(x, params_list, row_offset, block_index, w)


def em_kernel(missing: bool, x_dtype, compute_dtype="auto"):
    """The block kernel of a fit, for :func:`run_em`'s ``kernel``.

    Parameters
    ----------
    missing : bool
        NaN are missing values (:func:`dask_em.engine._missing.missing_block_statistics`)
        rather than errors (:func:`dask_em.engine._stats.block_statistics`).
    x_dtype : numpy dtype of the data
    compute_dtype : {'auto', 'float32', 'float64'}
        Arithmetic of the tiles; 'auto' is float32 for float32 data, else float64.
    """
    from functools import partial

    from dask_em.engine._missing import missing_block_statistics

    dtype = compute_dtype_for(x_dtype, compute_dtype).name
    return partial(missing_block_statistics if missing else block_statistics, compute_dtype=dtype)


def em_pass(x, params_list, *, weights=None, split_every=None, kernel=None):
    """One E-step pass over ``x`` for several candidates: statistics of each.

    Parameters
    ----------
    kernel : callable, optional
        ``kernel(block, params_list, row_offset, block_index, weights_block)`` returning
        a tuple of :class:`SuffStats`; default the complete-data fused E-step.

    Returns
    -------
    tuple of SuffStats
    """
    return compute_pass(
        x,
        kernel or _em_chunk,
        tuple(params_list),
        weights=weights,
        split_every=split_every,
        prefix="em",
        # The E-step kernels return statistics only, never a view of the block.
        fuse_reads=True,
    )


def _checked_m_step(stats, reg_covar, eps, start, iteration) -> MixtureParams:
    """The M-step of one start; its failure is a :class:`StartError` naming the start."""
    try:
        # The M-step's matrices are tiny; with BLAS threads, OpenBLAS's idle threads
        # spin on after it and took cores from the next pass (measured: N=1e6, d=16,
        # K=8 iterations ~10% slower, median of 33).
        with single_threaded_blas():
            params = m_step(stats, reg_covar, eps)
    except ValueError as exc:
        raise StartError.at(str(exc), start, iteration) from None
    if not params.is_finite():
        hint = ". Scale the input data or increase reg_covar."
        raise StartError.at("EM produced non-finite parameters", start, iteration, hint)
    return params


def run_em(
    x,
    starts: Sequence[MixtureParams] | None,
    *,
    tol: float,
    max_iter: int,
    reg_covar: float,
    eps: float,
    weights=None,
    split_every=None,
    initial_lower_bounds: Sequence[float] | None = None,
    resume: EMProgress | None = None,
    callback: Callable[[EMProgress], object] | None = None,
    log_level: int = logging.DEBUG,
    log_interval: int = 1,
    kernel=None,
    on_start_error: str = "raise",
) -> EMProgress:
    """Run EM from several starts together, one pass over ``x`` per iteration.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    starts : sequence of MixtureParams
        Initial parameters of each candidate (ignored when ``resume`` is given).
    tol : float
        A candidate converges when its mean log-likelihood changes by less than this.
    max_iter : int
        Iterations at most, counted from the first (including resumed ones).
    reg_covar : float
    eps : float
        Machine epsilon of the input dtype (scikit-learn's weight guard).
    weights : dask.array.Array of shape (n,), optional
        Row weights.
    split_every : int, optional
        Fan-in of the statistics tree reduction.
    initial_lower_bounds : sequence of float, optional
        Lower bound each start is compared with at its first iteration (warm starts);
        default minus infinity.
    resume : EMProgress, optional
        Continue from this state.
    callback : callable, optional
        Called with the :class:`EMProgress` after every iteration.
    kernel : callable, optional
        The per-block E-step (see :func:`em_pass`).
    on_start_error : {'raise', 'drop'}
        A start whose M-step fails (or gives non-finite parameters) raises
        :class:`StartError`, or is stopped with the error in its ``error`` and the
        others go on (their numbers are those of a run without it).

    Returns
    -------
    EMProgress
        The final state of every candidate.
    """
    if on_start_error not in ("raise", "drop"):
        raise ValueError(f"on_start_error must be 'raise' or 'drop', got {on_start_error!r}")
    if resume is not None:
        cands = list(resume.candidates)
        iteration = resume.iteration
        prev = [c.lower_bound for c in cands]
        state = resume
    else:
        cands = [CandidateState(i, p, (), False, max_iter > 0) for i, p in enumerate(starts)]
        iteration = 0
        prev = list(initial_lower_bounds or [-np.inf] * len(cands))
        state = EMProgress(0, 0.0, tuple(cands))
    # A resumed candidate whose comparison point was lost is a bug, not a user error.
    assert len(prev) == len(cands)

    while iteration < max_iter and any(c.active for c in cands):
        iteration += 1
        live = [i for i, c in enumerate(cands) if c.active]
        t0 = time.perf_counter()
        stats = em_pass(
            x,
            [cands[i].params for i in live],
            weights=weights,
            split_every=split_every,
            kernel=kernel,
        )
        for i, st in zip(live, stats, strict=True):
            cands[i], prev[i] = _advance(
                cands[i], st, prev[i], iteration, max_iter, tol, (reg_covar, eps), on_start_error
            )
        seconds = time.perf_counter() - t0
        state = EMProgress(iteration, seconds, tuple(cands))
        if iteration % log_interval == 0 or not any(c.active for c in cands):
            _log_iteration(log_level, iteration, [cands[i] for i in live], cands, seconds)
        if callback is not None:
            callback(state)
    return state


def _advance(c, st, prev, iteration, max_iter, tol, m_step_args, on_start_error):
    """One candidate after its E-step's statistics ``st``: ``(new state, lower bound to
    compare the next with)``; a failed M-step raises or drops the candidate."""
    lower_bound = st.loglik / st.weight_total
    try:
        new_params = _checked_m_step(st, *m_step_args, c.index, iteration)
    except StartError as exc:
        if on_start_error == "raise":
            raise
        logger.warning("start %d dropped: %s", c.index, exc)
        return replace(c, active=False, converged=False, error=exc), prev
    converged = abs(lower_bound - prev) < tol
    new = replace(
        c,
        params=new_params,
        lower_bounds=c.lower_bounds + (lower_bound,),
        converged=converged,
        active=not converged and iteration < max_iter,
    )
    return new, lower_bound


def _log_iteration(log_level, iteration, live, cands, seconds):
    """The iteration's log line: the best of the starts that ran (and did not fail)."""
    ran = [c for c in live if c.error is None] or live
    best = max(ran, key=lambda c: c.lower_bound)
    logger.log(
        log_level,
        "iteration %d: lower bound %.10g, change %.3g, %.3f s, %d/%d starts running",
        iteration,
        best.lower_bound,
        best.lower_bound - (best.lower_bounds[-2] if best.n_iter > 1 else -np.inf),
        seconds,
        sum(c.active for c in cands),
        len(cands),
    )


def best_candidate(state: EMProgress) -> CandidateState:
    """The start with the highest final lower bound, chosen by scikit-learn's rule."""
    best = None
    for c in state.candidates:
        if best is None or c.lower_bound > best.lower_bound or best.lower_bound == -np.inf:
            best = c
    return best
