"""Model selection: fit a grid of Gaussian mixtures in shared passes, rank by BIC or AIC.

Every candidate (number of components x covariance type) and every restart is one start
of a single :func:`dask_em.engine._em.run_em`, so each EM iteration reads the data once for the
whole grid: every block computes the statistics of every live candidate while it is in
memory, and converged candidates drop out. Initialisation is shared the same way (see
:mod:`dask_em.init._starts`), and one last pass computes the log-likelihood of every
candidate's final parameters for the criteria.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import dask.array as da
import numpy as np

from dask_em.engine import _math, _missing
from dask_em.engine._accel import ALGORITHMS
from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._em import (
    CandidateState,
    EMProgress,
    best_candidate,
    em_kernel,
    run_em,
)
from dask_em.engine._errors import raise_non_finite
from dask_em.engine._reduce import compute_pass, counting_passes
from dask_em.engine._stats import log_prob_block
from dask_em.init._starts import StartRequest, make_starts
from dask_em.mixture._gaussian import GaussianMixture, _ensure_handler, _prepare_data
from dask_em.mixture._validation import check_array, check_weight_values, check_weights_like

logger = logging.getLogger(__name__)

CRITERIA = ("bic", "aic")
TABLE_COLUMNS = (
    "n_components",
    "covariance_type",
    "log_likelihood",
    "n_parameters",
    "bic",
    "aic",
    "converged",
    "n_iter",
    "lower_bound",
    "error",
)


@dataclass(frozen=True, eq=False)
class SelectionProgress:
    """Where a :func:`select_model` run has got to: what its ``callback`` receives after
    every EM iteration, and what its ``resume=`` takes to continue from there.

    Attributes
    ----------
    progress : EMProgress
        The state of every start of the whole grid after the last EM iteration (its
        ``candidates`` are the starts, in the order of ``owner``).
    owner : tuple of int
        For each start of ``progress.candidates``, its candidate: the index into
        ``grid`` (the row of the table).
    errors : dict of int to str
        Candidates (indices into ``grid``) with a start that failed at initialisation,
        and why; a candidate none of whose starts are left gets this as its ``error``.
    failed_starts : dict of int to str
        Starts (indices into ``progress.candidates``) dropped during EM because their
        M-step failed, and why (such a start is inactive and not a result).
    grid : tuple of (int, str)
        ``(n_components, covariance_type)`` of each candidate, in table order.
    n_features : int
        Columns of the data.
    n_init : int
    init_params : str
    missing : str
    seed : int
        The seed every candidate's starts were drawn from.
    n_rows_skipped : int
        Rows without any observed value (``missing='em'``), counted before the starts.
    """

    progress: EMProgress
    owner: tuple
    errors: dict
    failed_starts: dict
    grid: tuple
    n_features: int
    n_init: int
    init_params: str
    missing: str
    seed: int
    n_rows_skipped: int = 0

    @property
    def iteration(self) -> int:
        """EM iterations done."""
        return self.progress.iteration

    def to_arrays(self) -> dict:
        """Plain numpy arrays (savable with ``np.savez``, loadable without pickle).

        The grid state is under ``em_*`` (:meth:`EMProgress.to_arrays`), the rest under
        ``selection_*``.
        """
        out = {f"em_{k}": v for k, v in self.progress.to_arrays().items()}
        errors = sorted(self.errors.items())
        failed = sorted(self.failed_starts.items())
        out.update(
            {
                "selection_grid_n_components": np.asarray(
                    [k for k, _ in self.grid], dtype=np.int64
                ),
                "selection_grid_covariance_type": np.asarray(
                    [ct for _, ct in self.grid], dtype=np.str_
                ),
                "selection_owner": np.asarray(self.owner, dtype=np.int64),
                "selection_error_candidates": np.asarray([c for c, _ in errors], dtype=np.int64),
                "selection_error_messages": np.asarray([m for _, m in errors], dtype=np.str_),
                "selection_failed_starts": np.asarray([j for j, _ in failed], dtype=np.int64),
                "selection_failed_messages": np.asarray([m for _, m in failed], dtype=np.str_),
                "selection_n_features": np.asarray(self.n_features, dtype=np.int64),
                "selection_n_init": np.asarray(self.n_init, dtype=np.int64),
                "selection_init_params": np.asarray(self.init_params),
                "selection_missing": np.asarray(self.missing),
                "selection_seed": np.asarray(self.seed, dtype=np.int64),
                "selection_n_rows_skipped": np.asarray(self.n_rows_skipped, dtype=np.int64),
            }
        )
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping) -> SelectionProgress:
        """Rebuild from :meth:`to_arrays` output (or an ``np.load`` of it; other keys are
        ignored).

        Raises
        ------
        ValueError
            If an array is missing or the arrays do not fit together.
        """
        try:
            progress = EMProgress.from_arrays(
                {k[3:]: v for k, v in arrays.items() if k.startswith("em_")}
            )
            ks = np.asarray(arrays["selection_grid_n_components"]).tolist()
            cts = np.asarray(arrays["selection_grid_covariance_type"]).tolist()
            owner = tuple(int(c) for c in np.asarray(arrays["selection_owner"]).tolist())

            def pairs(keys, messages):
                keys = np.asarray(arrays[keys]).tolist()
                messages = np.asarray(arrays[messages]).tolist()
                if len(keys) != len(messages):
                    raise ValueError(f"{len(keys)} indices but {len(messages)} messages")
                return {int(i): str(m) for i, m in zip(keys, messages, strict=True)}

            errors = pairs("selection_error_candidates", "selection_error_messages")
            failed = pairs("selection_failed_starts", "selection_failed_messages")
            out = cls(
                progress=progress,
                owner=owner,
                errors=errors,
                failed_starts=failed,
                grid=tuple((int(k), str(ct)) for k, ct in zip(ks, cts, strict=True)),
                n_features=int(arrays["selection_n_features"]),
                n_init=int(arrays["selection_n_init"]),
                init_params=str(arrays["selection_init_params"]),
                missing=str(arrays["selection_missing"]),
                seed=int(arrays["selection_seed"]),
                n_rows_skipped=int(arrays["selection_n_rows_skipped"]),
            )
        except KeyError as exc:
            raise ValueError(f"not a model-selection state: array {exc} is missing") from None
        out._check_consistent()
        return out

    def _check_consistent(self) -> None:
        n_starts, n_cands = len(self.progress.candidates), len(self.grid)
        if len(self.owner) != n_starts:
            raise ValueError(
                f"inconsistent model-selection state: {n_starts} starts but "
                f"{len(self.owner)} owners"
            )
        bad = [c for c in (*self.owner, *self.errors) if not 0 <= c < n_cands]
        if bad:
            raise ValueError(
                f"inconsistent model-selection state: candidate {bad[0]} is not in a grid "
                f"of {n_cands}"
            )
        bad = [j for j in self.failed_starts if not 0 <= j < n_starts]
        if bad:
            raise ValueError(
                f"inconsistent model-selection state: start {bad[0]} is not one of "
                f"{n_starts} starts"
            )

    def _check_matches(self, grid, n_features, n_init, init_params, missing, seed) -> None:
        """Raise ValueError naming what of this call differs from the state's."""
        if list(self.grid) != list(grid):

            def show(g):
                return ", ".join(f"{ct} k={k}" for k, ct in g)

            raise ValueError(
                "resume does not match the grid: the state has the candidates "
                f"[{show(self.grid)}], this call [{show(grid)}]"
            )
        for name, saved, now in (
            ("n_features", self.n_features, n_features),
            ("n_init", self.n_init, n_init),
            ("init_params", self.init_params, init_params),
            ("missing", self.missing, missing),
            ("random_state", self.seed, seed),
        ):
            if now is not None and saved != now:
                what = "X has" if name == "n_features" else "this call has"
                raise ValueError(
                    f"resume does not match: the state has {name}={saved!r}, {what} {name}={now!r}"
                )


@dataclass(frozen=True, eq=False)
class SelectionResult:
    """The outcome of :func:`select_model`.

    Attributes
    ----------
    table : list of dict
        One row per candidate, in grid order (covariance types outer, numbers of
        components inner), with keys ``TABLE_COLUMNS``: ``log_likelihood`` is the total
        (weighted) log-likelihood of the final parameters, ``bic = -2 log_likelihood +
        n_parameters log(n)`` and ``aic = -2 log_likelihood + 2 n_parameters`` (lower is
        better, scikit-learn's sign), ``n`` the number of rows (the total weight with
        ``sample_weight``); ``lower_bound`` is scikit-learn's ``lower_bound_`` (the mean
        log-likelihood of the last E-step, i.e. of the parameters before the last
        M-step). A candidate that failed has NaN criteria and its ``error`` message.
    criterion : {'bic', 'aic'}
    best_index : int
        Row of the table with the lowest criterion.
    models : list of GaussianMixture or None
        The fitted model of each row (None where it failed).
    random_state : int
        The seed every candidate's starts were drawn from: refitting a row alone with
        ``GaussianMixture(..., random_state=random_state)`` gives the same model.
    n_samples : float
        ``n`` of the criteria.
    seconds : float
        Wall time of the whole selection.
    """

    table: list
    criterion: str
    best_index: int
    models: list
    random_state: int
    n_samples: float
    seconds: float

    @property
    def best_model(self) -> GaussianMixture:
        """The fitted model with the lowest criterion."""
        return self.models[self.best_index]

    @property
    def best(self) -> dict:
        """The table row of the best model."""
        return self.table[self.best_index]

    def to_dataframe(self):
        """The table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.table, columns=list(TABLE_COLUMNS))

    def plot_bic(self, path, criterion: str | None = None) -> Path:
        """Write an mclust-style plot of the criterion against n_components (PNG).

        One line per covariance type, its own colour and marker; the best model is
        ringed. The y axis is scikit-learn's BIC, so lower is better (mclust plots the
        opposite sign, higher is better).

        Parameters
        ----------
        path : str or Path
        criterion : {'bic', 'aic'}, optional
            Default: the criterion of the selection.

        Returns
        -------
        Path
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        crit = criterion or self.criterion
        if crit not in CRITERIA:
            raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {crit!r}")
        fig = Figure(figsize=(7.0, 5.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        markers = {"full": "o", "tied": "s", "diag": "^", "spherical": "D"}
        types = list(dict.fromkeys(r["covariance_type"] for r in self.table))
        for i, ct in enumerate(types):
            rows = sorted(
                (r for r in self.table if r["covariance_type"] == ct),
                key=lambda r: r["n_components"],
            )
            ax.plot(
                [r["n_components"] for r in rows],
                [r[crit] for r in rows],
                marker=markers.get(ct, "o"),
                color=f"C{i}",
                label=ct,
                mfc="none" if i % 2 else f"C{i}",
            )
        valid = [r for r in self.table if np.isfinite(r[crit])]
        if valid:
            best = min(valid, key=lambda r: r[crit])
            ax.plot(
                best["n_components"],
                best[crit],
                "o",
                ms=16,
                mfc="none",
                mec="k",
                label=f"best: {best['covariance_type']}, {best['n_components']} components",
            )
        ks = sorted({r["n_components"] for r in self.table})
        ax.set_xticks(ks)
        ax.set_xlabel("Number of components")
        ax.set_ylabel(f"{crit.upper()} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(title="covariance type", loc="best")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
        return path


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
    gm.n_rows_skipped_ = n_skipped
    gm._set_fitted(best.params)
    gm.converged_ = bool(best.converged)
    gm.n_iter_ = best.n_iter
    gm.lower_bound_ = best.lower_bound
    gm.lower_bounds_ = list(best.lower_bounds)
    gm.n_features_in_ = d
    gm.fit_state_ = EMProgress(
        max((c.n_iter for c in group), default=0),
        0.0,
        tuple(replace(c, index=j) for j, c in enumerate(group)),
    )
    # The grid's passes: every candidate shared them.
    gm.n_passes_ = n_passes
    return gm


def _grid_starts(x_init, grid, n_init, seed, init_params, *, log_level, **kw):
    """Every candidate's starts, in shared initialisation passes.

    Returns
    -------
    starts : list of MixtureParams
    owner : list of int
        The candidate (index into ``grid``) of each start.
    errors : dict of int to str
        Candidates with a start that failed, and why.
    """
    requests = [StartRequest(k, ct, n_init, np.random.RandomState(seed)) for k, ct in grid]
    t0 = time.perf_counter()
    with single_threaded_blas():
        per_candidate = make_starts(x_init, requests, init_params, on_error="return", **kw)
    logger.log(
        log_level,
        "select_model: %d starts in %.3f s",
        len(grid) * n_init,
        time.perf_counter() - t0,
    )
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
    reads the data once per EM iteration (and shares the initialisation passes) instead
    of once per candidate per iteration.

    Parameters
    ----------
    X : array-like, dask array or dask DataFrame of shape (n_samples, n_features)
    n_components : sequence of int, default=1..9
    covariance_types : sequence of {'full', 'tied', 'diag', 'spherical'}, default=all
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better (scikit-learn's sign).
    n_init : int, default=1
        Starts per candidate; the one with the highest final lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
    random_state : int, RandomState or None
        Every candidate draws its starts from ``RandomState(seed)``: ``seed`` is this
        int, or one int drawn from the RandomState (or numpy's global one).
    tol, reg_covar, max_iter : as :class:`GaussianMixture`
    sample_weight : array-like or dask array of shape (n_samples,), optional
        Row weights; the log-likelihood is weighted and ``n`` is the total weight.
    persist : {'auto', True, False}, default='auto'
        As :class:`GaussianMixture` (False: every pass re-reads the data).
    split_every : int, optional
    missing : {'error', 'em'}, default='error'
        As :class:`GaussianMixture`: with 'em', NaN are values missing at random, every
        candidate is fitted by EM for incomplete data and scored on each row's observed
        features.
    compute_dtype : {'auto', 'float32', 'float64'}, default='auto'
        E-step arithmetic, as :class:`GaussianMixture`.
    algorithm : {'em', 'accelerated'}, default='em'
        As :class:`GaussianMixture`; every start of the grid takes its own steps in
        the shared passes.
    verbose : int, default=0
        1 or more logs every iteration at INFO level on the ``dask_em`` logger.
    callback : callable, optional
        Called with a :class:`SelectionProgress` after every EM iteration (the state of
        the whole grid: every start, which candidate each belongs to, and the
        candidates and starts that failed so far). An exception it raises stops the run
        and propagates; the state it last received stays resumable.
    resume : SelectionProgress or mapping of arrays, optional
        Continue an interrupted run from a state its ``callback`` received (or that
        state's :meth:`SelectionProgress.to_arrays`): the initialisation passes are
        skipped and EM goes on from there, ending with the same result as an
        uninterrupted run. The grid, the number of features, ``n_init``,
        ``init_params``, ``missing`` and an int ``random_state`` must be those of the
        interrupted run (``random_state=None`` takes the state's seed); ``tol``,
        ``reg_covar`` and ``max_iter`` are this call's.

    Returns
    -------
    SelectionResult
        The table, the fitted models and the best one by ``criterion``.

    Raises
    ------
    ValueError
        For bad parameters or data, when every candidate failed (the message lists
        why), or when ``resume`` does not match this call (the message says what); a
        failing candidate alone only gets NaN criteria and an ``error``.
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
    settings = dict(
        tol=tol,
        reg_covar=reg_covar,
        max_iter=max_iter,
        n_init=n_init,
        init_params=init_params,
        random_state=seed,
        persist=persist,
        split_every=split_every,
        missing=missing,
        compute_dtype=compute_dtype,
        algorithm=algorithm,
        verbose=verbose,
    )
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, got {algorithm!r}")
    protos = [_prototype(k, ct, settings) for k, ct in grid]
    x, weights, from_numpy = _check_data(X, sample_weight, grid, resume)
    n, d = x.shape
    eps = float(np.finfo(x.dtype).eps)
    log_level = logging.INFO if verbose else logging.DEBUG
    if verbose:
        _ensure_handler()
    x, weights = _prepare_inputs(x, weights, sample_weight, persist, from_numpy)
    with counting_passes() as init_passes:
        starts, owner, errors, n_skipped = _initial_starts(
            x,
            weights,
            grid,
            resume,
            n_init,
            seed,
            init_params,
            missing,
            reg_covar,
            eps,
            split_every,
            log_level,
        )
    failures: dict[int, str] = dict(resume.failed_starts) if resume is not None else {}
    on_iteration = None
    if callback is not None:
        context = dict(
            owner=tuple(owner),
            grid=tuple(grid),
            n_features=d,
            n_init=n_init,
            init_params=init_params,
            missing=missing,
            seed=seed,
            n_rows_skipped=n_skipped,
        )
        on_iteration = _progress_callback(callback, context, errors, failures)

    state = None
    if owner:
        state = _run_em_dropping_failures(
            x,
            starts,
            failures,
            resume=None if resume is None else resume.progress,
            callback=on_iteration,
            tol=tol,
            max_iter=max_iter,
            reg_covar=reg_covar,
            eps=eps,
            weights=weights,
            split_every=split_every,
            log_level=log_level,
            log_interval=1,
            kernel=em_kernel(missing == "em", x.dtype, compute_dtype),
            algorithm=algorithm,
            init_passes=init_passes.n,
        )
    best_states, groups = _best_per_candidate(state, owner, failures, errors)
    order = sorted(best_states)
    logliks, n_eff = [], float(n)
    if order:
        logliks, n_eff = final_log_likelihoods(
            x,
            [best_states[c].params for c in order],
            weights=weights,
            split_every=split_every,
            missing=missing == "em",
        )
    loglik_of = dict(zip(order, logliks, strict=True))
    table, models = [], []
    for c, ((k, ct), proto) in enumerate(zip(grid, protos, strict=True)):
        b = best_states.get(c)
        ll = loglik_of.get(c)
        table.append(_table_row(k, ct, d, b, ll, n_eff, errors.get(c, "failed")))
        models.append(
            None if b is None else _fitted(proto, b, groups[c], d, n_skipped, state.n_passes)
        )
    best_index = _best_index(table, criterion)
    seconds = time.perf_counter() - t_start
    best = table[best_index]
    logger.log(
        log_level,
        "select_model: best by %s: %s with %d components (%s %.6g), %d candidates, %.3f s",
        criterion.upper(),
        best["covariance_type"],
        best["n_components"],
        criterion.upper(),
        best[criterion],
        len(grid),
        seconds,
    )
    return SelectionResult(table, criterion, best_index, models, seed, n_eff, seconds)


def _progress_callback(callback, context, errors, failures):
    """Calls ``callback`` with the :class:`SelectionProgress` of each EM iteration;
    ``errors`` and ``failures`` are read at each call (they grow as starts fail)."""

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


def _prototype(k, ct, settings) -> GaussianMixture:
    """The estimator a candidate equals, its parameters checked by scikit-learn's rules."""
    gm = GaussianMixture(k, covariance_type=ct, **settings)
    gm._validate_params()  # scikit-learn's parameter checks and messages
    return gm


def _check_data(X, sample_weight, grid, resume):
    """The data as a dask array, the checked weights (or None), and whether X was numpy."""
    x, from_numpy = check_array(X, min_rows=2)
    n, d = x.shape
    if resume is not None:
        resume._check_matches(grid, d, None, None, None, None)
    k_max = max(k for k, _ in grid)
    if n < k_max:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {k_max}, n_samples = {n}"
        )
    weights = None
    if sample_weight is not None:
        weights = check_weights_like(sample_weight, x)
    return x, weights, from_numpy


def _prepare_inputs(x, weights, sample_weight, persist, from_numpy):
    """Persist (or not) the data and weights, as :class:`GaussianMixture` does."""
    x = _prepare_data(x, persist, from_numpy)
    if weights is not None:
        weights = _prepare_data(weights, persist, not isinstance(sample_weight, da.Array))
        if isinstance(sample_weight, da.Array):
            check_weight_values(weights)
    return x, weights


def _initial_starts(
    x,
    weights,
    grid,
    resume,
    n_init,
    seed,
    init_params,
    missing,
    reg_covar,
    eps,
    split_every,
    log_level,
):
    """Every candidate's starts (None when resuming: they are in the state), the owner
    candidate of each start, the candidates that failed, and the rows skipped."""
    if resume is not None:
        # The starts (and what they needed: the missing-value summary) are in the state.
        logger.log(
            log_level,
            "select_model: resuming after iteration %d (%d starts)",
            resume.iteration,
            len(resume.owner),
        )
        return None, list(resume.owner), dict(resume.errors), resume.n_rows_skipped
    x_init, weights_init, n_skipped = x, weights, 0
    if missing == "em":
        # Initialisation sees missing values mean-filled (see _missing.prepare_fit).
        x_init, weights_init, summary = _missing.prepare_fit(x, weights, split_every)
        n_skipped = summary.n_skipped
    starts, owner, errors = _grid_starts(
        x_init,
        grid,
        n_init,
        seed,
        init_params,
        reg_covar=reg_covar,
        eps=eps,
        weights=weights_init,
        split_every=split_every,
        log_level=log_level,
    )
    return starts, owner, errors, n_skipped


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
