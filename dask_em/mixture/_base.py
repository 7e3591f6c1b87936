"""What every mixture estimator shares: preparing a fit, running it, recording it.

One place prepares a fit (:func:`prepare_fit`: the data as row blocks placed on the
cluster, the weights checked, the missing-value summary, the dtype's epsilon), one draws
the starts (:func:`draw_starts`, settings in a :class:`StartSettings`), one records the
result (:func:`record_result`). :class:`BaseMixture` uses them for ``fit`` and holds
the methods every estimator has (``predict``, ``score_samples``, ``sample``, model
files). A subclass (``GaussianMixture``, ``BayesianGaussianMixture``) brings only its
model: the strategy :func:`dask_em.engine._em.run_em` runs (E-step parameters, M-step,
lower bound), its parameters' attributes and its parameter checks, as scikit-learn's
``BaseMixture`` subclasses bring ``_m_step`` and ``_compute_lower_bound``.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state, check_scalar
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from dask_em.engine import _math, _missing
from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._em import COMPUTE_DTYPES, CandidateState, best_candidate, em_kernel, run_em
from dask_em.engine._math import normalize_log_prob
from dask_em.engine._params import GAUSSIAN
from dask_em.engine._reduce import counting_passes
from dask_em.engine._stats import log_prob_block
from dask_em.engine._stats import row_log_likelihood as _log_norm
from dask_em.init._starts import StartRequest, make_starts
from dask_em.mixture._validation import (
    active_client,
    auto_chunk_rows,
    check_input,
    check_weight_values,
    check_weights_like,
    finite_then,
    to_blocks,
)

logger = logging.getLogger(__name__)

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


# --------------------------------------------------------------------------------------
# Data placement
# --------------------------------------------------------------------------------------
def memory_budget(client) -> float:
    """Bytes the data may take when persisted: half the workers' (or machine's) memory."""
    import psutil

    if client is not None:
        try:
            info = client.scheduler_info(n_workers=-1)
        except TypeError:  # older distributed
            info = client.scheduler_info()
        limits = [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]
        if limits and all(limits):
            return 0.5 * float(sum(limits))
        return 0.5 * psutil.virtual_memory().total
    return 0.5 * psutil.virtual_memory().available


def place_data(X, persist, from_numpy, client=None):
    """Keep a dask array in (cluster) memory for the passes that follow, or not.

    Parameters
    ----------
    X : dask.array.Array
    persist : {'auto', True, False}
        'auto': in-memory input is shipped once to a cluster (kept as is without one);
        dask input is persisted when it takes at most :func:`memory_budget`.
    from_numpy : bool
        ``X`` was made by ``da.from_array`` from an in-memory array.
    client : distributed.Client, optional
        Default: the active one (None: the local scheduler).

    Returns
    -------
    dask.array.Array
    """
    client = client if client is not None else active_client()
    if persist == "auto":
        if from_numpy:
            # In memory already; a cluster needs it shipped once, not once per pass.
            persist = client is not None
        else:
            persist = X.nbytes <= memory_budget(client)
    if not persist:
        return X
    if client is None:
        return X.persist()
    if from_numpy:
        return scatter_blocks(client, X)
    return client.persist(X)


def scatter_blocks(client, X):
    """Send an in-memory array's row blocks straight to the workers, spread evenly.

    ``client.persist`` of ``da.from_array(ndarray)`` puts the whole array on one worker,
    and the block tasks that slice it mostly stay there: 12 blocks on 2 workers ended 7
    and 5, so every EM pass waited for the seventh block (passes run where their block
    is). Here block ``i`` goes to thread slot ``i mod T`` of the cluster's ``T`` threads,
    whatever the array: row weights persisted the same way sit with their rows.

    Parameters
    ----------
    client : distributed.Client
    X : dask.array.Array
        Made by ``da.from_array`` from an in-memory array (its blocks are views).

    Returns
    -------
    dask.array.Array
        ``X`` persisted under a new name, held by the workers.
    """
    slots = [addr for addr, n in sorted(client.nthreads().items()) for _ in range(n)]
    if not slots:  # no workers yet: let the scheduler place the blocks when they come
        return client.persist(X)
    # A name of its own: the same rows fitted twice would otherwise be scattered under
    # the keys that the first fit's futures are still releasing (and lose them).
    name = f"scattered-{uuid.uuid4().hex}"
    keys = [(name, *key[1:]) for key in dask.core.flatten(X.__dask_keys__())]
    blocks = dask.compute(*X.to_delayed().ravel(), scheduler="sync")
    by_slot: dict = {}
    for i, (key, block) in enumerate(zip(keys, blocks, strict=True)):
        by_slot.setdefault(slots[i % len(slots)], {})[key] = block
    futures = {}
    for addr, data in by_slot.items():
        futures.update(client.scatter(data, workers=[addr], hash=False))
    rebuild, args = X.__dask_postpersist__()
    return rebuild(futures, *args, rename={X.name: name})


# --------------------------------------------------------------------------------------
# Preparing a fit
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FitData:
    """The data of a fit, ready for the passes.

    Attributes
    ----------
    x : dask.array.Array of shape (n, d)
        Row blocks, placed (see :func:`place_data`).
    weights : dask.array.Array of shape (n,) or None
        Checked row weights, placed with the rows.
    x_init, weights_init : dask.array.Array
        What initialisation sees: with ``missing='em'`` the rows mean-filled and the
        rows with nothing observed at weight zero; otherwise ``x`` and ``weights``.
    n_skipped : int
        Rows without any observed value (``missing='em'``).
    eps : float
        Machine epsilon of the data's dtype (the M-step's weight guard).
    """

    x: da.Array
    weights: da.Array | None
    x_init: da.Array
    weights_init: da.Array | None
    n_skipped: int
    eps: float

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])


def prepare_fit(
    x, from_numpy, sample_weight, *, persist, missing, split_every, initialise=True
) -> FitData:
    """Blocks, placement, weights and the missing-value summary of a checked input.

    Parameters
    ----------
    x : ndarray or dask.array.Array of shape (n, d)
        Checked data (:func:`check_input` or :func:`check_array`).
    from_numpy : bool
        ``x`` is (or was made from) an in-memory array.
    sample_weight : array-like or dask array of shape (n,), optional
        As given by the user (dask weights are checked by one pass here).
    persist : {'auto', True, False}
    missing : {'error', 'em'}
    split_every : int, optional
    initialise : bool
        Starts will be drawn: with ``missing='em'``, one pass prepares what
        initialisation sees (a resumed fit skips it).

    Returns
    -------
    FitData
    """
    X = to_blocks(x) if isinstance(x, np.ndarray) else x
    weights = None
    if sample_weight is not None:
        weights = check_weights_like(sample_weight, X)
    X = place_data(X, persist, from_numpy)
    if weights is not None:
        lazy_weights = isinstance(sample_weight, da.Array)
        weights = place_data(weights, persist, not lazy_weights)
        if lazy_weights:
            check_weight_values(weights)
    x_init, weights_init, n_skipped = X, weights, 0
    if missing == "em" and initialise:
        # One pass counts what is missing; initialisation sees the incomplete rows
        # mean-filled and the rows without any observed value at weight zero.
        x_init, weights_init, summary = _missing.prepare_fit(X, weights, split_every)
        n_skipped = summary.n_skipped
    eps = float(np.finfo(X.dtype).eps)
    return FitData(X, weights, x_init, weights_init, n_skipped, eps)


@dataclass(frozen=True)
class StartSettings:
    """How the starts of one or more candidates are drawn.

    Attributes
    ----------
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}
    n_init : int
        Starts per candidate.
    reg_covar : float
    split_every : int or None
    log_level : int
        Level of the timing line.
    """

    init_params: str
    n_init: int
    reg_covar: float
    split_every: int | None = None
    log_level: int = logging.DEBUG


def draw_starts(data: FitData, candidates, rngs, settings: StartSettings, model=GAUSSIAN):
    """The starts of every candidate ``(n_components, covariance_type)``, sharing passes.

    Parameters
    ----------
    data : FitData
    candidates : sequence of (int, str)
    rngs : sequence of numpy.random.RandomState
        One per candidate, advanced as scikit-learn advances its one ``RandomState``.
    settings : StartSettings
    model : GaussianEM or alike
        Whose M-step makes the starts (see :func:`dask_em.engine._em.run_em`).

    Returns
    -------
    list of list
        Per candidate, its ``n_init`` starts (parameters, or the ValueError a start
        failed with).
    """
    requests = [
        StartRequest(k, ct, settings.n_init, rng)
        for (k, ct), rng in zip(candidates, rngs, strict=True)
    ]
    t0 = time.perf_counter()
    with single_threaded_blas():
        out = make_starts(
            data.x_init,
            requests,
            settings.init_params,
            reg_covar=settings.reg_covar,
            eps=data.eps,
            weights=data.weights_init,
            split_every=settings.split_every,
            on_error="return",
            model=model,
        )
    logger.log(
        settings.log_level,
        "%d start(s) in %.3f s",
        len(requests) * settings.n_init,
        time.perf_counter() - t0,
    )
    return out


def record_result(
    estimator, best: CandidateState, fit_state, n_features, n_skipped, n_passes=None
):
    """Set a fitted estimator's attributes from its best start (every fit ends here).

    Parameters
    ----------
    estimator : BaseMixture
    best : CandidateState
    fit_state : EMProgress
        Kept as ``fit_state_`` (to resume or inspect the other starts).
    n_features : int
    n_skipped : int
    n_passes : int, optional
        Full passes over the data the fit made, initialisation included (``n_passes_``);
        default ``fit_state.n_passes``.
    """
    estimator._set_fitted(best.params)
    estimator.converged_ = bool(best.converged)
    estimator.n_iter_ = best.n_iter
    estimator.lower_bound_ = best.lower_bound
    estimator.lower_bounds_ = list(best.lower_bounds)
    estimator.n_features_in_ = n_features
    estimator.n_rows_skipped_ = n_skipped
    estimator.fit_state_ = fit_state
    estimator.n_passes_ = fit_state.n_passes if n_passes is None else n_passes


def ensure_handler():
    """A stderr handler and INFO level on the package logger ``dask_em``, whose children
    (every module logs to ``logging.getLogger(__name__)``) pass their records up to it."""
    logger = logging.getLogger("dask_em")
    root = logging.getLogger()
    if not logger.handlers and not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


# --------------------------------------------------------------------------------------
# The estimator base
# --------------------------------------------------------------------------------------
class BaseMixture(DensityMixin, BaseEstimator):
    """Base of the mixture estimators: one ``fit`` path and the shared methods.

    A subclass lists its parameters in ``__init__`` (scikit-learn reads them from its
    signature) and ``_parameter_constraints``, and defines:

    - ``_check_parameters(n_features)``: its own parameter checks, before any pass;
    - ``_em_model(data)``: the strategy :func:`run_em` runs (may read the data, e.g.
      for priors), see :class:`dask_em.engine._params.GaussianEM`;
    - ``_initial_params(data, rng, model)``: the starts (default: :func:`draw_starts`);
    - ``_fitted_params()`` / ``_set_fitted(params)``: its parameters from / to the
      fitted attributes (warm starts, model files);
    - ``_inference_params()``: the :class:`MixtureParams` whose weighted log-densities
      predictions use;
    - ``_model_arrays()`` / ``_load_model_arrays(arrays)``: the fitted arrays of a
      model file.
    """

    # Constraints of the parameters every estimator has (scikit-learn's, plus ours).
    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(_math.COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_METHODS))],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "persist": [StrOptions({"auto"}), "boolean"],
        "split_every": [Interval(Integral, 2, None, closed="left"), None],
        "compute_dtype": [StrOptions(set(COMPUTE_DTYPES))],
    }

    def _store_params(self, values: dict) -> None:
        """Keep every ``__init__`` argument unchanged (scikit-learn's rule for estimators;
        checking them is ``fit``'s)."""
        for name in self._get_param_names():
            setattr(self, name, values[name])

    @property
    def _missing_mode(self) -> str:
        return getattr(self, "missing", "error")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # With missing='em' NaN are data, in fit and prediction alike.
        tags.input_tags.allow_nan = self._missing_mode == "em"
        return tags

    def __sklearn_is_fitted__(self):
        # Fitted means parameters to predict with: a fit that failed after checking X
        # leaves n_features_in_, which scikit-learn's default test would take as fitted.
        return hasattr(self, "precisions_cholesky_")

    # ----------------------------------------------------------------------------------
    # Fitting
    # ----------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, sample_weight=None, callback=None, resume=None):
        """Estimate the parameters, one pass over the data per iteration.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Non-negative, finite row weights, not all zero (dask weights are checked in
            one pass before fitting); responsibilities and the log-likelihood are
            weighted by them and mixture weights are normalised by their total. From
            the same start, an integer weight equals repeating the row, a zero weight
            removing it (random starts are drawn per row, so they differ).
        callback : callable, optional
            Called with an :class:`EMProgress` after every iteration. An exception it
            raises stops the fit.
        resume : EMProgress, optional
            Continue an interrupted fit from its last reported state.

        Returns
        -------
        self
        """
        self._fit(X, sample_weight, callback, resume)
        return self

    def fit_predict(self, X, y=None, *, sample_weight=None):
        """Fit, then return the labels of ``X`` (equals ``fit(X).predict(X)``)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def _fit(self, X, sample_weight, callback, resume):
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        missing = self._missing_mode
        # A warm start continues from parameters of a given number of features: X is
        # checked against them (scikit-learn's message), not recorded anew.
        x, lazy = check_input(self, X, reset=do_init, fit=True, allow_nan=missing == "em")
        n, d = x.shape
        if n < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {n}"
            )
        self._check_parameters(d)
        if self.verbose:
            ensure_handler()
        data = prepare_fit(
            x,
            not lazy,
            sample_weight,
            persist=self.persist,
            missing=missing,
            split_every=self.split_every,
        )
        with counting_passes() as counted:
            model = self._em_model(data)
            starts, initial = self._starting_point(data, model, do_init, resume)
        # The pass counting missing values is one (prepare_fit), initialisation its own.
        init_passes = int(missing == "em") + counted.n
        if resume is None:
            starts, initial, extra = self._online_start(data, starts, initial)
            init_passes += extra
        state = run_em(
            data.x,
            starts,
            **self._run_settings(data),
            initial_lower_bounds=initial,
            resume=resume,
            callback=callback,
            log_level=logging.INFO if self.verbose else logging.DEBUG,
            log_interval=self.verbose_interval if self.verbose else 1,
            model=model,
            init_passes=init_passes,
        )
        best = best_candidate(state)
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=4,  # _fit, fit, its validating wrapper, the caller
            )
        record_result(self, best, state, d, data.n_skipped)
        # A later partial_fit goes on from these parameters, not an older stream's.
        self.__dict__.pop("_online_state", None)

    def _starting_point(self, data: FitData, model, do_init: bool, resume):
        """``(starts, initial lower bounds)`` of a fit: drawn, the fitted parameters
        (warm start), or none (resumed)."""
        if resume is not None:
            return None, None
        if not do_init:
            # squeezed: scikit-learn's tied Bayesian bound, set by hand, is a 1-array
            return [self._fitted_params()], [float(np.squeeze(self.lower_bound_))]
        starts = self._initial_params(data, check_random_state(self.random_state), model)
        for i, s in enumerate(starts):
            if not s.is_finite():
                raise ValueError(
                    f"Initialisation produced non-finite parameters (start {i}). "
                    "Check the data for NaN or infinity, or scale it."
                )
        return starts, None

    def _step_rule(self) -> str:
        """The engine's step rule for this estimator's fits (see ``run_em``)."""
        return "em"

    def _online_start(self, data: FitData, starts, initial):
        """``(starts, initial lower bounds, passes made)`` after any pass the algorithm
        makes before EM (none here)."""
        return starts, initial, 0

    def _run_settings(self, data: FitData) -> dict:
        """:func:`run_em`'s settings from this estimator's parameters, for ``data``."""
        return dict(
            tol=self.tol,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            eps=data.eps,
            weights=data.weights,
            split_every=self.split_every,
            kernel=em_kernel(self._missing_mode == "em", data.x.dtype, self.compute_dtype),
            algorithm=self._step_rule(),
        )

    def _check_parameters(self, n_features):
        """Checks of the subclass's own parameters against the data's width."""

    def _initial_params(self, data: FitData, rng, model):
        """The ``n_init`` starts of a fit, drawn by ``init_params``."""
        settings = StartSettings(self.init_params, self.n_init, self.reg_covar, self.split_every)
        (starts,) = draw_starts(
            data, [(self.n_components, self.covariance_type)], [rng], settings, model
        )
        for s in starts:
            if isinstance(s, Exception):
                raise s
        return starts

    # ----------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------
    def _check_rows(self, X, allow_nan=None):
        """Check a fitted model's input: (X as numpy or dask array, whether lazy)."""
        check_is_fitted(self)
        if allow_nan is None:
            allow_nan = self._missing_mode == "em"
        return check_input(self, X, reset=False, allow_nan=allow_nan)

    def _map_rows(self, x, lazy, func, out_cols, allow_nan=None):
        """Apply ``func(block, params)`` to the row blocks of checked input (numpy in ->
        numpy out, dask in -> lazy dask out).

        Parameters
        ----------
        x : ndarray or dask.array.Array of shape (n, d)
            From :meth:`_check_rows`.
        lazy : bool
        func : callable
            ``func(block, params)`` -> (rows,) or (rows, out_cols).
        out_cols : int or None
        allow_nan : bool, optional
            NaN in a dask block is data (default: ``missing='em'``); infinity never is.
        """
        params = self._inference_params()
        out_dtype = np.int64 if func is _labels else np.float64
        if allow_nan is None:
            allow_nan = self._missing_mode == "em"
        if self._missing_mode == "em":
            func = _NAN_AWARE.get(func, func)
        if not lazy:
            rows = auto_chunk_rows(x.shape[0], x.shape[1], 8)
            with single_threaded_blas():
                parts = [func(x[s], params) for s in _row_slices(x.shape[0], rows)]
            return np.concatenate(parts) if parts else func(x, params)
        # The values of a dask array are checked as each block is read (scikit-learn's
        # check and message), not in a pass of their own.
        kwargs = dict(kernel=func, allow_nan=allow_nan, estimator_name=type(self).__name__)
        if out_cols is None:
            return x.map_blocks(finite_then, params, drop_axis=1, dtype=out_dtype, **kwargs)
        return x.map_blocks(
            finite_then, params, chunks=(x.chunks[0], (out_cols,)), dtype=np.float64, **kwargs
        )

    def score_samples(self, X):
        """Log-likelihood of each row, shape (n_samples,); lazy for dask input.

        With ``missing='em'``, rows may hold NaN: the log-likelihood is that of the
        observed features (zero for a row with none).
        """
        return self._map_rows(*self._check_rows(X), _log_norm, None)

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of ``X`` (a float)."""
        return mean_of(self.score_samples(X))

    def predict(self, X):
        """Most probable component of each row, shape (n_samples,); lazy for dask input."""
        return self._map_rows(*self._check_rows(X), _labels, None)

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components); lazy for dask input.

        With ``missing='em'``, rows may hold NaN: responsibilities come from the observed
        features (the mixture weights for a row with none).
        """
        return self._map_rows(*self._check_rows(X), _proba, self.n_components)

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture (scikit-learn's draws for a seed).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        check_scalar(n_samples, "n_samples", Integral)
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples} . The sampling requires at "
                "least one sample."
            )
        _, d = self.means_.shape
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        if self.covariance_type == "full":
            draws = [
                rng.multivariate_normal(mean, cov, int(c))
                for mean, cov, c in zip(self.means_, self.covariances_, counts, strict=True)
            ]
        elif self.covariance_type == "tied":
            draws = [
                rng.multivariate_normal(mean, self.covariances_, int(c))
                for mean, c in zip(self.means_, counts, strict=True)
            ]
        else:
            draws = [
                mean + rng.standard_normal(size=(c, d)) * np.sqrt(cov)
                for mean, cov, c in zip(self.means_, self.covariances_, counts, strict=True)
            ]
        y = np.concatenate([np.full(c, j, dtype=np.int64) for j, c in enumerate(counts)])
        return np.vstack(draws), y

    # ----------------------------------------------------------------------------------
    # Persistence as plain arrays
    # ----------------------------------------------------------------------------------
    def fitted_arrays(self) -> dict:
        """Everything needed to rebuild this fitted model, as numpy arrays (no objects)."""
        check_is_fitted(self)
        out = dict(self._model_arrays())
        out.update(
            converged=np.asarray(self.converged_),
            n_iter=np.asarray(self.n_iter_),
            lower_bound=np.asarray(self.lower_bound_),
            lower_bounds=np.asarray(self.lower_bounds_, dtype=np.float64),
            n_features_in=np.asarray(self.n_features_in_),
        )
        if hasattr(self, "feature_names_in_"):
            out["feature_names_in"] = np.asarray(self.feature_names_in_, dtype=str)
        for name, value in self.get_params(deep=False).items():
            if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
                out["param_" + name] = np.asarray(value)
            elif value is not None and name in self._ARRAY_PARAMS:
                out["param_" + name] = np.asarray(value, dtype=np.float64)
        return out

    # Parameters that may be arrays, saved with the model when given.
    _ARRAY_PARAMS: tuple = ()

    @classmethod
    def from_fitted_arrays(cls, arrays):
        """Rebuild a fitted model from :meth:`fitted_arrays` (or ``np.load`` of it)."""
        params = {}
        for key in arrays:
            if key.startswith("param_"):
                value = np.asarray(arrays[key])
                if value.dtype.kind in "OV":
                    raise ValueError(f"model array {key!r} holds objects; refusing to load.")
                params[key[6:]] = value if value.ndim else value.item()
        est = cls(**params)
        est._load_model_arrays(arrays)
        est.converged_ = bool(arrays["converged"])
        est.n_iter_ = int(arrays["n_iter"])
        est.lower_bound_ = float(arrays["lower_bound"])
        est.lower_bounds_ = [float(v) for v in np.asarray(arrays["lower_bounds"])]
        est.n_features_in_ = int(arrays["n_features_in"])
        if "feature_names_in" in arrays:
            names = np.asarray(arrays["feature_names_in"])
            if names.dtype.kind != "U":
                raise ValueError(f"model array 'feature_names_in' has dtype {names.dtype}.")
            # scikit-learn keeps feature names as an object array of str.
            est.feature_names_in_ = names.astype(object)
        return est


def float_arrays(arrays, keys) -> list:
    """The model arrays ``keys`` as numpy arrays, refusing any that is not float."""
    out = []
    for key in keys:
        value = np.asarray(arrays[key])
        if value.dtype.kind != "f":
            raise ValueError(f"model array {key!r} has dtype {value.dtype}; expected float.")
        out.append(value)
    return out


def _row_slices(n, rows):
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def mean_of(values) -> float:
    """The mean of a numpy or dask array, as a Python float."""
    m = values.mean()
    return float(m.compute() if isinstance(m, da.Array) else m)


def _proba(x, params):
    lp = log_prob_block(x, params)
    normalize_log_prob(lp.T)
    return np.ascontiguousarray(lp)


def _labels(x, params):
    return np.argmax(log_prob_block(x, params), axis=1)


def _log_norm_missing(x, params):
    return normalize_log_prob(_missing.log_prob_missing(x, params).T)


def _proba_missing(x, params):
    lp = _missing.log_prob_missing(x, params)
    normalize_log_prob(lp.T)
    return np.ascontiguousarray(lp)


def _labels_missing(x, params):
    return np.argmax(_missing.log_prob_missing(x, params), axis=1)


# Under missing='em', inference uses each row's observed features.
_NAN_AWARE = {_log_norm: _log_norm_missing, _proba: _proba_missing, _labels: _labels_missing}
