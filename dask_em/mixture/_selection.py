"""Model selection: fit a grid of Gaussian mixtures in shared passes, rank by BIC or AIC.

Every candidate (number of components x covariance type) and every restart is one start
of a single :func:`dask_em.engine._em.run_em`, so each EM iteration reads the data once for the
whole grid: every block computes the statistics of every live candidate while it is in
memory, and converged candidates drop out. Initialisation is shared the same way (see
:mod:`dask_em.init._starts`), and one last pass computes the log-likelihood of every
candidate's final parameters for the criteria. Preparing the data, drawing the starts and
recording each fitted model are :mod:`dask_em.mixture._base`'s, as for one estimator.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from dask_em.engine import _math, _missing
from dask_em.engine._accel import ALGORITHMS
from dask_em.engine._em import CandidateState, EMProgress, best_candidate, run_em
from dask_em.engine._errors import raise_non_finite
from dask_em.engine._reduce import compute_pass, counting_passes
from dask_em.engine._stats import log_prob_block
from dask_em.mixture._base import (
    FitData,
    StartSettings,
    draw_starts,
    ensure_handler,
    prepare_fit,
    record_result,
)
from dask_em.mixture._gaussian import GaussianMixture
from dask_em.mixture._selection_state import (
    CRITERIA,
    TABLE_COLUMNS,
    SelectionProgress,
    SelectionResult,
)
from dask_em.mixture._validation import check_array

logger = logging.getLogger(__name__)

__all__ = [
    "CRITERIA",
    "TABLE_COLUMNS",
    "SelectionProgress",
    "SelectionResult",
    "final_log_likelihoods",
    "select_model",
]


def _seed(random_state) -> int:
    if random_state is None:
        return int(np.random.mtrand._rand.randint(0, 2**31 - 1))
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise ValueError(
        f"random_state must be None, an int or a numpy RandomState, got {random_state!r}"
    )


def _loglik_chunk(x, spec, row_offset, block_index, w=None):
    params_list, missing = spec
    out = []
    for params in params_list:
        lp = (_missing.log_prob_missing if missing else log_prob_block)(x, params)
        lp = np.ascontiguousarray(lp.T)  # (K, n), normalised in place
        log_norm = _math.normalize_log_prob(lp)
        if not np.all(np.isfinite(log_norm)):
            raise_non_finite(x, np.flatnonzero(~np.isfinite(log_norm)), block_index, row_offset)
        out.append(float(log_norm.sum() if w is None else w @ log_norm))
    out.append(float(x.shape[0] if w is None else w.sum()))
    return tuple(out)


def final_log_likelihoods(x, params_list, *, weights=None, split_every=None, missing=False):
    """Total (weighted) log-likelihood of several mixtures, in one pass.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    params_list : sequence of MixtureParams
    weights : dask.array.Array of shape (n,), optional
    split_every : int, optional
    missing : bool
        NaN are missing values: each row contributes the log-likelihood of its observed
        features (zero for a row with none), as ``GaussianMixture(missing='em')`` scores.

    Returns
    -------
    logliks : list of float
        ``sum_i w_i log p(x_i)`` under each mixture.
    n : float
        Number of rows, or the total weight.
    """
    out = compute_pass(
        x,
        _loglik_chunk,
        (tuple(params_list), bool(missing)),
        weights=weights,
        split_every=split_every,
        prefix="select-loglik",
    )
    return list(out[:-1]), float(out[-1])


def _run_em_dropping_failures(x, starts, failures, *, resume=None, callback=None, **kw):
    """:func:`run_em` with ``on_start_error='drop'``: a start whose M-step fails is
    stopped and the others go on. ``failures`` (start index -> message) gets each
    dropped start before ``callback`` sees the state it was dropped in."""

    def collect(progress: EMProgress) -> None:
        for c in progress.candidates:
            if c.error is not None:
                failures.setdefault(c.index, str(c.error))

    def on_iteration(progress: EMProgress) -> None:
        collect(progress)
        if callback is not None:
            callback(progress)

    state = run_em(x, starts, resume=resume, callback=on_iteration, on_start_error="drop", **kw)
    collect(state)
    return state


def _fitted(proto, best: CandidateState, group, d, n_skipped, n_passes) -> GaussianMixture:
    gm = GaussianMixture(**proto.get_params())
    fit_state = EMProgress(
        max((c.n_iter for c in group), default=0),
        0.0,
        tuple(replace(c, index=j) for j, c in enumerate(group)),
    )
    # The grid's passes: every candidate shared them.
    record_result(gm, best, fit_state, d, n_skipped, n_passes)
    return gm


def _grid_starts(data: FitData, grid, seed, settings: StartSettings):
    """Every candidate's starts, in shared initialisation passes.

    Returns
    -------
    starts : list of MixtureParams
    owner : list of int
        The candidate (index into ``grid``) of each start.
    errors : dict of int to str
        Candidates with a start that failed, and why.
    """
    rngs = [np.random.RandomState(seed) for _ in grid]
    per_candidate = draw_starts(data, grid, rngs, settings)
    starts, owner, errors = [], [], {}
    for c, group in enumerate(per_candidate):
        for s in group:
            if isinstance(s, Exception):
                errors.setdefault(c, f"initialisation: {s}")
            elif not s.is_finite():
                errors.setdefault(c, "initialisation produced non-finite parameters")
            else:
                starts.append(s)
                owner.append(c)
    return starts, owner, errors


def select_model(
    X,
    n_components: Sequence[int] = tuple(range(1, 10)),
    covariance_types: Sequence[str] = _math.COVARIANCE_TYPES,
    *,
    criterion: str = "bic",
    n_init: int = 1,
    init_params: str = "kmeans",
    random_state=None,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    sample_weight=None,
    persist="auto",
    split_every: int | None = None,
    missing: str = "error",
    compute_dtype: str = "auto",
    algorithm: str = "em",
    verbose: int = 0,
    callback: Callable[[SelectionProgress], object] | None = None,
    resume: SelectionProgress | Mapping | None = None,
) -> SelectionResult:
    """Fit every (n_components, covariance_type) pair in shared passes; rank them.

    Each candidate equals ``GaussianMixture(n_components=k, covariance_type=t,
    random_state=seed, ...)`` fitted alone with the same settings, but the whole grid
    reads the data once per EM iteration (and shares the initialisation passes).

    Parameters
    ----------
    X : array-like, dask array or dask DataFrame of shape (n_samples, n_features)
    n_components : sequence of int, default=1..9
    covariance_types : sequence of {'full', 'tied', 'diag', 'spherical'}, default=all
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better (scikit-learn's sign).
    n_init, init_params, tol, reg_covar, max_iter, persist, split_every, missing, \
compute_dtype, verbose : as :class:`GaussianMixture`
    algorithm : {'em', 'accelerated'}, default='em'
        As :class:`GaussianMixture`; every start of the grid takes its own steps in the
        shared passes.
    random_state : int, RandomState or None
        Every candidate draws its starts from ``RandomState(seed)``: ``seed`` is this
        int, or one int drawn from the RandomState (or numpy's global one).
    sample_weight : array-like or dask array of shape (n_samples,), optional
        Row weights; the log-likelihood is weighted and ``n`` is the total weight.
    callback : callable, optional
        Called with a :class:`SelectionProgress` (the whole grid's state) after every EM
        iteration. An exception it raises stops the run; that state stays resumable.
    resume : SelectionProgress or mapping of arrays, optional
        Continue from a state ``callback`` received (or its ``to_arrays()``), skipping
        the initialisation passes, to the result of an uninterrupted run. The grid,
        ``n_features``, ``n_init``, ``init_params``, ``missing`` and an int
        ``random_state`` must be the interrupted run's (None takes the state's seed).

    Returns
    -------
    SelectionResult
        The table, the fitted models and the best one by ``criterion``.

    Raises
    ------
    ValueError
        For bad parameters or data, when ``resume`` does not match, or when every
        candidate failed (a failing candidate alone gets NaN criteria and an ``error``).
    """
    t_start = time.perf_counter()
    grid, seed, resume = _check_grid(
        criterion,
        n_components,
        covariance_types,
        n_init,
        init_params,
        missing,
        random_state,
        resume,
    )
    settings = dict(tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_init=n_init)
    settings.update(init_params=init_params, random_state=seed, persist=persist, verbose=verbose)
    settings.update(split_every=split_every, missing=missing, compute_dtype=compute_dtype)
    settings.update(algorithm=algorithm)
    protos = [_prototype(k, ct, settings) for k, ct in grid]
    x, from_numpy = _check_data(X, grid, resume)
    log_level = _log_level(verbose)
    start_settings = StartSettings(init_params, n_init, reg_covar, split_every, log_level)
    with counting_passes() as init_passes:
        data = _prepare(x, from_numpy, sample_weight, protos[0], resume)
        starts, owner, errors, n_skipped = _initial_starts(
            data, grid, seed, start_settings, resume
        )
    failures: dict[int, str] = dict(resume.failed_starts) if resume is not None else {}
    context = dict(owner=tuple(owner), grid=tuple(grid), n_features=data.n_features, seed=seed)
    context.update(n_init=n_init, init_params=init_params, missing=missing)
    on_iteration = _progress_callback(callback, context, n_skipped, errors, failures)
    run = (data, starts, failures, resume, on_iteration, protos[0], log_level, init_passes.n)
    state = _run_grid(*run) if owner else None
    table, models, n_eff = _results(data, grid, protos, state, owner, failures, errors, n_skipped)
    best_index = _best_index(table, criterion)
    seconds = _log_best(log_level, table[best_index], criterion, len(grid), t_start)
    return SelectionResult(table, criterion, best_index, models, seed, n_eff, seconds)


def _log_level(verbose) -> int:
    """INFO (with a handler on the package logger) when verbose, else DEBUG."""
    if verbose:
        ensure_handler()
        return logging.INFO
    return logging.DEBUG


def _run_grid(data: FitData, starts, failures, resume, on_iteration, proto, log_level, passes):
    """EM of every start of the grid in shared passes, settings from a prototype."""
    return _run_em_dropping_failures(
        data.x,
        starts,
        failures,
        resume=None if resume is None else resume.progress,
        callback=on_iteration,
        **proto._run_settings(data),
        log_level=log_level,
        log_interval=1,
        init_passes=passes,
    )


def _results(data: FitData, grid, protos, state, owner, failures, errors, n_skipped):
    """The table rows, fitted models and ``n`` of the criteria, after one scoring pass."""
    best_states, groups = _best_per_candidate(state, owner, failures, errors)
    order = sorted(best_states)
    logliks, n_eff = [], float(data.x.shape[0])
    if order:
        logliks, n_eff = final_log_likelihoods(
            data.x,
            [best_states[c].params for c in order],
            weights=data.weights,
            split_every=protos[0].split_every,
            missing=protos[0].missing == "em",
        )
    loglik_of = dict(zip(order, logliks, strict=True))
    d = data.n_features
    table, models = [], []
    for c, ((k, ct), proto) in enumerate(zip(grid, protos, strict=True)):
        b = best_states.get(c)
        table.append(_table_row(k, ct, d, b, loglik_of.get(c), n_eff, errors.get(c, "failed")))
        fitted = None if b is None else _fitted(proto, b, groups[c], d, n_skipped, state.n_passes)
        models.append(fitted)
    return table, models, n_eff


def _log_best(log_level, best, criterion, n_candidates, t_start) -> float:
    """Log the best candidate; the seconds since ``t_start``."""
    seconds = time.perf_counter() - t_start
    logger.log(
        log_level,
        "select_model: best by %s: %s with %d components (%s %.6g), %d candidates, %.3f s",
        criterion.upper(),
        best["covariance_type"],
        best["n_components"],
        criterion.upper(),
        best[criterion],
        n_candidates,
        seconds,
    )
    return seconds


def _progress_callback(callback, context, n_skipped, errors, failures):
    """Calls ``callback`` with the :class:`SelectionProgress` of each EM iteration;
    ``errors`` and ``failures`` are read at each call (they grow as starts fail)."""
    if callback is None:
        return None
    context = dict(context, n_rows_skipped=n_skipped)

    def on_iteration(progress: EMProgress) -> None:
        callback(
            SelectionProgress(
                progress=progress, errors=dict(errors), failed_starts=dict(failures), **context
            )
        )

    return on_iteration


def _check_grid(
    criterion, n_components, covariance_types, n_init, init_params, missing, random_state, resume
):
    """The grid of (k, covariance type), the seed, and ``resume`` as a checked
    :class:`SelectionProgress` (or None)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    ks = list(dict.fromkeys(n_components))
    cts = list(dict.fromkeys(covariance_types))
    if not ks or not cts:
        raise ValueError("n_components and covariance_types must each list at least one value")
    grid = [(k, ct) for ct in cts for k in ks]
    if resume is None:
        return grid, _seed(random_state), None
    if not isinstance(resume, SelectionProgress):
        resume = SelectionProgress.from_arrays(resume)
    resume._check_consistent()
    if random_state is None:
        seed = resume.seed
    elif isinstance(random_state, (int, np.integer)):
        seed = int(random_state)
    else:  # a RandomState: no seed to compare; the starts are not drawn again
        seed = resume.seed
    resume._check_matches(grid, None, n_init, init_params, missing, seed)
    return grid, seed, resume


def _prepare(x, from_numpy, sample_weight, proto, resume) -> FitData:
    """The grid's data placed and weighted (:func:`prepare_fit`), settings from a
    prototype; a resumed grid skips the pass that prepares initialisation."""
    return prepare_fit(
        x,
        from_numpy,
        sample_weight,
        persist=proto.persist,
        missing=proto.missing,
        split_every=proto.split_every,
        initialise=resume is None,
    )


def _prototype(k, ct, settings) -> GaussianMixture:
    """The estimator a candidate equals, its parameters checked by scikit-learn's rules."""
    if settings["algorithm"] not in ALGORITHMS:  # 'online' is for single fits
        algorithm = settings["algorithm"]
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, got {algorithm!r}")
    gm = GaussianMixture(k, covariance_type=ct, **settings)
    gm._validate_params()  # scikit-learn's parameter checks and messages
    return gm


def _check_data(X, grid, resume):
    """The data as a dask array, and whether X was numpy."""
    x, from_numpy = check_array(X, min_rows=2)
    n, d = x.shape
    if resume is not None:
        resume._check_matches(grid, d, None, None, None, None)
    k_max = max(k for k, _ in grid)
    if n < k_max:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {k_max}, n_samples = {n}"
        )
    return x, from_numpy


def _initial_starts(data: FitData, grid, seed, settings: StartSettings, resume):
    """Every candidate's starts (None when resuming: they are in the state), the owner
    candidate of each start, the candidates that failed, and the rows skipped."""
    if resume is not None:
        # The starts (and what they needed: the missing-value summary) are in the state.
        logger.log(
            settings.log_level,
            "select_model: resuming after iteration %d (%d starts)",
            resume.iteration,
            len(resume.owner),
        )
        return None, list(resume.owner), dict(resume.errors), resume.n_rows_skipped
    starts, owner, errors = _grid_starts(data, grid, seed, settings)
    return starts, owner, errors, data.n_skipped


def _best_per_candidate(state, owner, failures, errors):
    """Each candidate's best surviving start, and its starts; a candidate whose start
    failed during EM gets that failure in ``errors``."""
    best_states: dict[int, CandidateState] = {}
    groups: dict[int, list] = {}
    for j, c in enumerate(owner):
        if j in failures:
            errors.setdefault(c, failures[j])
            continue
        groups.setdefault(c, []).append(state.candidates[j])
    for c, group in groups.items():
        best_states[c] = best_candidate(EMProgress(0, 0.0, tuple(group)))
    return best_states, groups


def _table_row(k, ct, d, best, loglik, n_eff, error) -> dict:
    """A candidate's row of the table: criteria of its best start, or NaN and ``error``."""
    p = _math.n_parameters(ct, k, d)
    if best is None:
        row = dict.fromkeys(TABLE_COLUMNS, math.nan)
        row.update(
            n_components=k,
            covariance_type=ct,
            n_parameters=p,
            converged=False,
            n_iter=0,
            error=error,
        )
        return row
    return {
        "n_components": k,
        "covariance_type": ct,
        "log_likelihood": loglik,
        "n_parameters": p,
        "bic": -2.0 * loglik + p * math.log(n_eff),
        "aic": -2.0 * loglik + 2.0 * p,
        "converged": bool(best.converged),
        "n_iter": best.n_iter,
        "lower_bound": best.lower_bound,
        "error": None,
    }


def _best_index(table, criterion) -> int:
    valid = [i for i, r in enumerate(table) if np.isfinite(r[criterion])]
    if not valid:
        details = "; ".join(
            f"{r['covariance_type']} k={r['n_components']}: {r['error']}" for r in table
        )
        raise ValueError(f"Every candidate failed: {details}")
    return min(valid, key=lambda i: table[i][criterion])
