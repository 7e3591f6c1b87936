"""The EM loop over a chunked dask array: no I/O, no configuration, no estimator state.

Every iteration is one pass over the data: a tree reduction whose leaves are the fused
E-step of each block (for every still-running candidate start at once) and whose root is
a tuple of small statistics; the M-step then runs on the driver in numpy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from dask_em.engine._accel import STEP_RULES
from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._errors import StartError
from dask_em.engine._newton import (
    NEWTON_MAX_PARAMS,
    NEWTON_MAX_ROWS,
    n_params,
    newton_probes,
    newton_step,
)
from dask_em.engine._params import GAUSSIAN, GaussianEM, MixtureParams
from dask_em.engine._reduce import compute_pass
from dask_em.engine._stats import block_statistics, compute_dtype_for
from dask_em.engine._variational import BayesianParams

COMPUTE_DTYPES = ("auto", "float32", "float64")
# What a Bayesian mixture's parameters hold besides a Gaussian mixture's (checkpoints).
_VARIATIONAL_FIELDS = ("weight_concentration", "mean_precision", "degrees_of_freedom")

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
    parent_lower_bound : float
        Mean log-likelihood of the point whose EM image ``params`` is (the next pass's
        comparison point for convergence), NaN when ``params`` is an extrapolation.
    step_state : dict of ndarray
        The step rule's own state (:mod:`dask_em.engine._accel`); empty for plain EM.
    """

    index: int
    params: MixtureParams
    lower_bounds: tuple
    converged: bool
    active: bool
    error: StartError | None = None
    parent_lower_bound: float = -np.inf
    step_state: dict = field(default_factory=dict)

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
    init_passes : int
        Passes over the data before the first iteration (initialisation).
    """

    iteration: int
    seconds: float
    candidates: tuple
    init_passes: int = 0

    @property
    def n_passes(self) -> int:
        """Full passes over the data so far: initialisation plus one per iteration."""
        return self.init_passes + self.iteration

    def to_arrays(self) -> dict:
        """Plain numpy arrays (savable with ``np.savez``, loadable without pickle)."""
        out = {
            "iteration": np.asarray(self.iteration),
            "seconds": np.asarray(self.seconds),
            "n_candidates": np.asarray(len(self.candidates)),
            "init_passes": np.asarray(self.init_passes),
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
            for name in _VARIATIONAL_FIELDS:  # a Bayesian mixture's other factors
                if hasattr(c.params, name):
                    out[p + name] = np.asarray(getattr(c.params, name))
            if hasattr(c.params, "prior_type"):
                out[p + "prior_type"] = np.asarray(c.params.prior_type)
            out[p + "lower_bounds"] = np.asarray(c.lower_bounds, dtype=np.float64)
            out[p + "converged"] = np.asarray(c.converged)
            out[p + "active"] = np.asarray(c.active)
            out[p + "parent_lower_bound"] = np.asarray(c.parent_lower_bound, dtype=np.float64)
            for key, value in c.step_state.items():
                out[p + "step_" + key] = np.asarray(value)
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
            params = _params_from_arrays(arrays, p, ct)
            lower_bounds = tuple(float(v) for v in np.asarray(arrays[p + "lower_bounds"]))
            # Saved before step rules existed: plain EM, compared with its last bound.
            parent = arrays.get(
                p + "parent_lower_bound", lower_bounds[-1] if lower_bounds else -np.inf
            )
            step = p + "step_"
            step_state = {
                k[len(step) :]: np.asarray(arrays[k]) for k in arrays if k.startswith(step)
            }
            cands.append(
                CandidateState(
                    int(arrays[p + "index"]),
                    params,
                    lower_bounds,
                    bool(arrays[p + "converged"]),
                    bool(arrays[p + "active"]),
                    parent_lower_bound=float(parent),
                    step_state=step_state,
                )
            )
        init_passes = int(arrays["init_passes"]) if "init_passes" in arrays else 0
        return cls(int(arrays["iteration"]), float(arrays["seconds"]), tuple(cands), init_passes)


def _em_chunk(x, params_list, row_offset, block_index, w=None):
    return block_statistics(x, params_list, row_offset, block_index, w, packed=True)


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

    from dask_em.engine._missing import missing_block_statistics

    dtype = compute_dtype_for(x_dtype, compute_dtype).name
    if missing:
        return partial(missing_block_statistics, compute_dtype=dtype)
    # Packed as the pass sends them (see block_statistics).
    return partial(block_statistics, compute_dtype=dtype, packed=True)


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
    # No kernel reads the covariances (the E-step works from the precisions' factors):
    # not shipping them halves what every worker holds at high d (K d^2 float64 each).
    shipped = tuple(replace(p, covariances=None) for p in params_list)
    return compute_pass(
        x,
        kernel or _em_chunk,
        shipped,
        weights=weights,
        split_every=split_every,
        prefix="em",
        # The E-step kernels return statistics only, never a view of the block.
        fuse_reads=True,
    )


def _params_from_arrays(arrays, p: str, ct: str):
    """Candidate ``p``'s parameters in a checkpoint: a Bayesian or a Gaussian mixture's."""
    if p + "prior_type" in arrays:
        return BayesianParams(
            *(np.asarray(arrays[p + name]) for name in _VARIATIONAL_FIELDS[:2]),
            np.asarray(arrays[p + "means"]),
            np.asarray(arrays[p + "degrees_of_freedom"]),
            np.asarray(arrays[p + "covariances"]),
            np.asarray(arrays[p + "precisions_cholesky"]),
            ct,
            str(arrays[p + "prior_type"]),
        )
    return MixtureParams(
        np.asarray(arrays[p + "weights"]),
        np.asarray(arrays[p + "means"]),
        np.asarray(arrays[p + "covariances"]) if p + "covariances" in arrays else None,
        np.asarray(arrays[p + "precisions_cholesky"]),
        ct,
    )


def _checked_m_step(model, stats, reg_covar, eps, start, iteration):
    """The M-step of one start; its failure is a :class:`StartError` naming the start."""
    try:
        # The M-step's matrices are tiny; with BLAS threads, OpenBLAS's idle threads
        # spin on after it and took cores from the next pass (measured: N=1e6, d=16,
        # K=8 iterations ~10% slower, median of 33).
        with single_threaded_blas():
            params = model.m_step(stats, reg_covar, eps)
    except ValueError as exc:
        raise StartError.at(str(exc), start, iteration) from None
    if not params.is_finite():
        hint = ". Scale the input data or increase reg_covar."
        raise StartError.at("EM produced non-finite parameters", start, iteration, hint)
    return params


def _start_state(starts, resume, max_iter, initial_lower_bounds, init_passes) -> EMProgress:
    """The state a run begins from: ``resume``, or iteration 0 of ``starts``."""
    if resume is not None:
        return resume
    parents = list(initial_lower_bounds or [-np.inf] * len(starts))
    # A warm start's comparison point is its lower bound (scikit-learn), a cold one's -inf.
    assert len(parents) == len(starts)
    cands = tuple(
        CandidateState(i, p, (), False, max_iter > 0, parent_lower_bound=float(lb))
        for i, (p, lb) in enumerate(zip(starts, parents, strict=True))
    )
    return EMProgress(0, 0.0, cands, init_passes=init_passes)


# Step rules that also need the EM images of probe points evaluated in the same pass.
_PROBES = {"newton": newton_probes}
_RULES = {**STEP_RULES, "newton": newton_step}


def step_rule_name(algorithm: str, params, n_rows: float) -> str:
    """The rule ``algorithm`` runs for a candidate on ``n_rows`` rows: 'accelerated' is
    Newton (:mod:`dask_em.engine._newton`), whose Jacobian costs ``p`` more E-steps per
    row and pass, for at most ``NEWTON_MAX_PARAMS`` parameters and ``NEWTON_MAX_ROWS``
    rows, else SQUAREM."""
    if algorithm == "accelerated":
        small = n_params(params) <= NEWTON_MAX_PARAMS and n_rows <= NEWTON_MAX_ROWS
        return "newton" if small else "squarem"
    return algorithm


def _probe_images(model, probe_stats, reg_covar, eps):
    """M-steps of the probes' statistics (None where one fails or is not finite)."""
    images = []
    with single_threaded_blas():
        for st in probe_stats:
            try:
                image = model.m_step(st, reg_covar, eps)
            except ValueError:
                image = None
            images.append(image if image is not None and image.is_finite() else None)
    return images


def _advance(
    c: CandidateState, st, step, model, *, tol, reg_covar, eps, iteration, last, drop, probes=None
):
    """A candidate after the pass that gave it statistics ``st`` (the model's M-step and
    lower bound, then the step rule; ``probes``: statistics of the rule's probe points)."""
    try:
        image = _checked_m_step(model, st, reg_covar, eps, c.index, iteration)
    except StartError as exc:
        if not drop:
            raise
        logger.warning("start %d dropped: %s", c.index, exc)
        return replace(c, active=False, converged=False, error=exc)
    lower_bound = model.lower_bound(st, c.params, image)
    # The rules' tiny factorisations under threaded BLAS cost ~20 ms each (measured:
    # SQUAREM's from_vector on 3x3 covariances, breast cancer benchmark), as the M-step.
    extra = {}
    if probes is not None:
        extra = {"probe_images": _probe_images(model, probes, reg_covar, eps), "eps": eps}
    with single_threaded_blas():
        out = step(c.params, lower_bound, image, c.parent_lower_bound, tol, c.step_state, **extra)
    # Stopped by max_iter: end on an EM image (never on an extrapolated point).
    params = out.params if out.converged or not last else image
    return replace(
        c,
        params=params,
        lower_bounds=c.lower_bounds + (lower_bound,),
        converged=out.converged,
        active=not out.converged and not last,
        parent_lower_bound=out.parent_lower_bound,
        step_state=out.state,
    )


def _pass_points(cands, live, rules, model, eps):
    """Every point a pass evaluates: each live candidate's, then its rule's probes.

    Returns the points and, per candidate, the ``(first, stop)`` span of its own.
    """
    points, spans = [], {}
    for i in live:
        own = [cands[i].params]
        if rules[i] in _PROBES:
            own += _PROBES[rules[i]](cands[i].params, eps)
        spans[i] = (len(points), len(points) + len(own))
        points += [model.e_step_params(p) for p in own]
    return points, spans


def _log_iteration(log_level, state: EMProgress, live) -> None:
    cands = state.candidates
    ran = [cands[i] for i in live if cands[i].error is None] or [cands[i] for i in live]
    best = max(ran, key=lambda c: c.lower_bound)
    logger.log(
        log_level,
        "iteration %d (pass %d): lower bound %.10g, change %.3g, %.3f s, %d/%d starts running",
        state.iteration,
        state.n_passes,
        best.lower_bound,
        best.lower_bound - (best.lower_bounds[-2] if best.n_iter > 1 else -np.inf),
        state.seconds,
        sum(c.active for c in cands),
        len(cands),
    )


def _check_run_options(on_start_error: str, algorithm: str, model) -> None:
    if on_start_error not in ("raise", "drop"):
        raise ValueError(f"on_start_error must be 'raise' or 'drop', got {on_start_error!r}")
    if algorithm not in (*_RULES, "accelerated"):
        names = sorted((*_RULES, "accelerated"))
        raise ValueError(f"algorithm must be one of {names}, got {algorithm!r}")
    if algorithm != "em" and model is not GAUSSIAN:
        raise ValueError(f"algorithm={algorithm!r} extrapolates Gaussian parameters only")


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
    algorithm: str = "em",
    init_passes: int = 0,
    model: GaussianEM = GAUSSIAN,
) -> EMProgress:
    """Run EM from several starts together, one pass over ``x`` per iteration.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    starts : sequence of MixtureParams
        Initial parameters of each candidate (ignored when ``resume`` is given).
    tol : float
        A candidate converges when one plain EM iteration changes its mean
        log-likelihood by less than this.
    max_iter : int
        Iterations (passes) at most, counted from the first (including resumed ones).
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
    algorithm : {'em', 'accelerated', 'squarem', 'newton', 'daarem'}
        The step rule: plain EM, or a rule that reaches a fixed point of the same EM map
        in fewer passes: SQUAREM (:mod:`dask_em.engine._accel`), Newton on the
        fixed-point equation (:mod:`dask_em.engine._newton`), or DAAREM (benchmarked,
        not offered by the estimators). 'accelerated' is Newton or SQUAREM per
        candidate (:func:`step_rule_name`).
    init_passes : int
        Passes made before this run (initialisation), kept in :attr:`EMProgress.n_passes`.
    model : GaussianEM or alike, default maximum-likelihood Gaussian
        The model's E-step parameters, M-step and lower bound (see
        :class:`dask_em.engine._params.GaussianEM`); ``starts`` are its parameters.
        Step rules other than plain EM extrapolate Gaussian parameters only.

    Returns
    -------
    EMProgress
        The final state of every candidate.
    """
    _check_run_options(on_start_error, algorithm, model)
    state = _start_state(starts, resume, max_iter, initial_lower_bounds, init_passes)
    cands, iteration = list(state.candidates), state.iteration
    n_rows = float(np.sum(x.chunks[0]))  # NaN for unknown chunk sizes: not Newton
    while iteration < max_iter and any(c.active for c in cands):
        iteration += 1
        live = [i for i, c in enumerate(cands) if c.active]
        t0 = time.perf_counter()
        rules = {i: step_rule_name(algorithm, cands[i].params, n_rows) for i in live}
        points, spans = _pass_points(cands, live, rules, model, eps)
        stats = em_pass(x, points, weights=weights, split_every=split_every, kernel=kernel)
        for i in live:
            first, stop = spans[i]
            # The point's own statistics first: the probes' differences are against it.
            probes = stats[first:stop] if rules[i] in _PROBES else None
            step = (_RULES[rules[i]], model)
            cands[i] = _advance(cands[i], stats[first], *step, tol=tol, reg_covar=reg_covar,
                                eps=eps, iteration=iteration, last=iteration >= max_iter,
                                drop=on_start_error == "drop", probes=probes)  # fmt: skip
        seconds = time.perf_counter() - t0
        state = EMProgress(iteration, seconds, tuple(cands), init_passes=state.init_passes)
        if iteration % log_interval == 0 or not any(c.active for c in cands):
            _log_iteration(log_level, state, live)
        if callback is not None:
            callback(state)
    return state


def best_candidate(state: EMProgress) -> CandidateState:
    """The start with the highest final lower bound, chosen by scikit-learn's rule."""
    best = None
    for c in state.candidates:
        if best is None or c.lower_bound > best.lower_bound or best.lower_bound == -np.inf:
            best = c
    return best
