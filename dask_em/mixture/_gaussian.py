"""The scikit-learn-style estimator: ``dask_em.GaussianMixture``."""

from __future__ import annotations

import logging
import math
import uuid
import warnings
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
from dask_em.engine._accel import ALGORITHMS
from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._em import (
    COMPUTE_DTYPES,
    EMProgress,
    best_candidate,
    em_kernel,
    run_em,
)
from dask_em.engine._math import normalize_log_prob
from dask_em.engine._params import MixtureParams
from dask_em.engine._reduce import compute, counting_passes
from dask_em.engine._stats import log_prob_block
from dask_em.engine._stats import row_log_likelihood as _log_norm
from dask_em.init import _init
from dask_em.mixture._partial import online_fit_starts, partial_fit_batch
from dask_em.mixture._validation import (
    active_client,
    auto_chunk_rows,
    check_input,
    check_means_init,
    check_precisions_init,
    check_weight_values,
    check_weights_init,
    check_weights_like,
    finite_then,
    to_blocks,
)

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
FIT_ALGORITHMS = (*ALGORITHMS, "online")


def _memory_budget(client) -> float:
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


def _prepare_data(X, persist, from_numpy):
    client = active_client()
    if persist == "auto":
        if from_numpy:
            # In memory already; a cluster needs it shipped once, not once per pass.
            persist = client is not None
        else:
            persist = X.nbytes <= _memory_budget(client)
    if persist:
        if client is None:
            X = X.persist()
        elif from_numpy:
            X = _scatter_blocks(client, X)
        else:
            X = client.persist(X)
    return X


def _scatter_blocks(client, X):
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


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by one-pass distributed EM.

    The parameters, fitted attributes and methods are scikit-learn's
    ``sklearn.mixture.GaussianMixture``; given the same start, the fitted numbers agree
    with it to round-off. ``X`` may be a numpy array, a dask array chunked along rows,
    or a dask DataFrame of numeric columns. Each EM iteration reads the data once, on
    the current Dask scheduler (threads by default, or an active ``distributed.Client``).

    It is a scikit-learn estimator (``BaseEstimator``, ``DensityMixin``, as scikit-learn's
    mixtures): it works in ``Pipeline``, ``GridSearchCV`` (scored by :meth:`score`),
    ``clone`` and ``check_estimator``. In-memory input is checked by scikit-learn's rules
    and messages; dask input gives lazy dask arrays back (as dask-ml's estimators). The
    fitted arrays are float64 whatever the input's dtype (scikit-learn's follow a float32
    input since 1.7).

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the mean log-likelihood.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
    n_init : int, default=1
        Number of starts. All starts advance together, sharing each pass over the data;
        the one with the highest final lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        'kmeans': labels of a distributed k-means (k-means|| seeding, Lloyd passes);
        'k-means++': one component on each of K rows chosen by greedy k-means++;
        'random': uniform random responsibilities; 'random_from_data': K rows drawn
        uniformly. Each is deterministic for a ``random_state`` whatever the chunking
        or scheduler; see :mod:`dask_em.init._kmeans` for passes and empty clusters.
    weights_init : array-like of shape (n_components,), optional
    means_init : array-like of shape (n_components, n_features), optional
    precisions_init : array-like, optional
        Shape depends on ``covariance_type`` as in scikit-learn.
    random_state : int, RandomState or None
    warm_start : bool, default=False
        Continue from the fitted parameters on the next ``fit``.
    verbose : int, default=0
        1 or more logs every ``verbose_interval``-th iteration at INFO level on the
        ``dask_em`` logger (a stderr handler is added if logging is not configured).
    verbose_interval : int, default=10
    persist : {'auto', True, False}, default='auto'
        Keep the data in cluster memory during the fit. 'auto' persists when the data
        takes at most half the workers' memory; otherwise every iteration re-reads it.
    split_every : int, optional
        Fan-in of the tree reduction of the statistics (dask's ``split_every``).
    missing : {'error', 'em'}, default='error'
        What NaN in ``X`` means. 'error': NaN is an error, in ``fit`` a
        :class:`NonFiniteError` naming the first NaN's block and row for dask input
        (found by the pass that reads it), and scikit-learn's ``ValueError`` for
        in-memory input and in prediction. 'em' treats NaN as a value missing at random
        and fits by the exact EM for incomplete data (Ghahramani & Jordan, 1994):
        responsibilities from each row's observed features, expected statistics that
        complete the missing ones; ``lower_bound_`` is then the observed-data
        log-likelihood per used row.
        Rows with no observed value are skipped (``n_rows_skipped_``). Infinity is an
        error either way. Prediction and scoring use the observed features of each row.
        'em' costs one extra pass before fitting (counting what is missing), and
        initialisation, having no model to condition on, sees each missing value
        replaced by its feature's observed mean, and rows with nothing observed at
        weight zero ('random_from_data', which draws rows uniformly, may still draw one).
    compute_dtype : {'auto', 'float32', 'float64'}, default='auto'
        Arithmetic of the E-step. 'auto' is float32 for float32 data and float64
        otherwise. In float32 each block's rows are centred in float64, then the
        products of a tile (a few thousand rows) run in single precision (about twice
        as fast) while every sum across tiles, the log-likelihood and the M-step stay
        float64: the fitted parameters and lower bound typically move by 1e-7
        relative. 'float64' gives the same numbers as fitting ``X.astype(float64)``.
        Tied covariances always use float64 (their pooled scatter, taken about one
        point, would lose too many digits in single precision).
    algorithm : {'em', 'accelerated', 'online'}, default='em'
        'em': scikit-learn's iterations, one pass each. 'accelerated': SQUAREM
        (Varadhan & Roland, 2008) in unconstrained coordinates with a monotonicity
        safeguard: it converges to a fixed point of the same EM map, usually in a
        fraction of the passes on overlapping components, and stops by the same rule
        (one more plain EM iteration would change the mean log-likelihood by less
        than ``tol``). 'online': one pass of online EM over the row blocks in a
        ``random_state``-seeded order (see :meth:`partial_fit`) after initialisation,
        then 'accelerated' passes to convergence. ``max_iter`` counts passes.
    learning_decay : float in (0.5, 1], default=0.7
        Online EM's ``kappa``: the ``t``-th batch is blended into the running statistics
        with weight ``(t + learning_offset) ** -learning_decay`` (:meth:`partial_fit`,
        ``algorithm='online'``), as in scikit-learn's online LDA.
    learning_offset : float >= 0, default=1.0
        Online EM's ``t0`` (see ``learning_decay``).

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,), float64
    means_ : ndarray of shape (n_components, n_features), float64
    covariances_ : ndarray, float64
    precisions_ : ndarray, float64
    precisions_cholesky_ : ndarray, float64
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
        Mean log-likelihood at every iteration (every pass of the EM loop).
    n_passes_ : int
        Full passes over the data the fit made, initialisation included (k-means,
        counting missing values, the online pass); for :meth:`partial_fit`, passes over
        the batches given.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features,)
        Column names of ``X``, when it had string column names (pandas or dask
        DataFrame).
    n_rows_skipped_ : int
        Rows without any observed value, left out of the fit (``missing='em'``).
    """

    # scikit-learn's constraints for its parameters (``sklearn.mixture.GaussianMixture``),
    # checked by ``fit`` with its ``InvalidParameterError`` messages, plus ours.
    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(_math.COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(INIT_METHODS))],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "persist": [StrOptions({"auto"}), "boolean"],
        "split_every": [Interval(Integral, 2, None, closed="left"), None],
        "missing": [StrOptions(set(_missing.MISSING_OPTIONS))],
        "compute_dtype": [StrOptions(set(COMPUTE_DTYPES))],
        "algorithm": [StrOptions(set(FIT_ALGORITHMS))],
        "learning_decay": [Interval(Real, 0.5, 1.0, closed="right")],
        "learning_offset": [Interval(Real, 0.0, None, closed="left")],
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        persist="auto",
        split_every=None,
        missing="error",
        compute_dtype="auto",
        algorithm="em",
        learning_decay=0.7,
        learning_offset=1.0,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.persist = persist
        self.split_every = split_every
        self.missing = missing
        self.compute_dtype = compute_dtype
        self.algorithm = algorithm
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # With missing='em' NaN are data, in fit and prediction alike.
        tags.input_tags.allow_nan = self.missing == "em"
        return tags

    def _params(self) -> MixtureParams:
        return MixtureParams(
            self.weights_,
            self.means_,
            self.covariances_,
            self.precisions_cholesky_,
            self.covariance_type,
        )

    # ----------------------------------------------------------------------------------
    # Fitting
    # ----------------------------------------------------------------------------------
    def _initial_arrays(self, n_features):
        """The given ``weights_init``, ``means_init``, ``precisions_init`` checked (None
        for those not given), as scikit-learn checks them before initialising."""
        K, ct = self.n_components, self.covariance_type
        return (
            None if self.weights_init is None else check_weights_init(self.weights_init, K),
            None if self.means_init is None else check_means_init(self.means_init, K, n_features),
            None
            if self.precisions_init is None
            else check_precisions_init(self.precisions_init, ct, K, n_features),
        )

    def _starts(self, X, rng, eps, weights, given):
        K = self.n_components
        w0, m0, p0 = given
        if w0 is not None and m0 is not None and p0 is not None:
            # Given entirely; every start is the same, as in scikit-learn.
            return [_init.from_arrays(w0, m0, p0, self.covariance_type)] * self.n_init
        from dask_em.init._starts import StartRequest, make_starts

        # Like scikit-learn, a start is computed even when means or precisions are given:
        # the arrays given replace its parts and the rest (e.g. covariances) is kept.
        (starts,) = make_starts(
            X,
            [StartRequest(K, self.covariance_type, self.n_init, rng)],
            self.init_params,
            reg_covar=self.reg_covar,
            eps=eps,
            weights=weights,
            split_every=self.split_every,
        )
        return [_init.override(s, w0, m0, p0) for s in starts]

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, sample_weight=None, callback=None, resume=None):
        """Estimate the parameters by EM.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Non-negative, finite row weights, not all zero (dask weights are checked in
            one pass before fitting); responsibilities and the log-likelihood are
            weighted by them and mixture weights are normalised by their total. From
            the same start, an integer weight equals repeating the row, a zero weight
            removing it (random starts are drawn per row, so they differ). To score
            weighted data, pass the same weights to :meth:`bic` and :meth:`aic` (then
            ``n`` is the total weight).
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

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, *, sample_weight=None):
        """Update the model from one batch of rows by online (stepwise) EM.

        Cappé & Moulines (2009): the batch's E-step statistics are blended into running
        statistics with weight ``(t + learning_offset) ** -learning_decay`` (the first
        batch whole) and the parameters become their M-step. The first call
        initialises from the given ``*_init`` arrays, else by k-means++ on that batch
        (a model fitted by :meth:`fit` goes on from its parameters). Deterministic for a
        seed and an order of batches; memory does not grow with the number of batches.
        ``lower_bound_`` is the batch's mean log-likelihood before its update,
        ``n_iter_`` counts batches and ``n_passes_`` passes over them.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return partial_fit_batch(self, X, sample_weight)

    def _fit(self, X, sample_weight, callback, resume):
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        # A warm start continues from parameters of a given number of features: X is
        # checked against them (scikit-learn's message), not recorded anew.
        x, lazy = check_input(self, X, reset=do_init, fit=True, allow_nan=self.missing == "em")
        n, d = x.shape
        if n < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {n}"
            )
        given = self._initial_arrays(d)
        X = x if lazy else to_blocks(x)
        weights = None
        if sample_weight is not None:
            weights = check_weights_like(sample_weight, X)
        eps = float(np.finfo(X.dtype).eps)
        log_level = logging.INFO if self.verbose else logging.DEBUG
        if self.verbose:
            _ensure_handler()
        X = _prepare_data(X, self.persist, not lazy)
        if weights is not None:
            weights = _prepare_data(weights, self.persist, not isinstance(sample_weight, da.Array))
            if isinstance(sample_weight, da.Array):
                check_weight_values(weights)
        x_init, weights_init, n_skipped = X, weights, 0
        kernel = em_kernel(self.missing == "em", X.dtype, self.compute_dtype)
        if self.missing == "em":
            # One pass counts what is missing; initialisation sees the incomplete rows
            # mean-filled and the rows without any observed value at weight zero.
            x_init, weights_init, summary = _missing.prepare_fit(X, weights, self.split_every)
            n_skipped = summary.n_skipped

        initial = None
        # The pass counting missing values is one; initialisation counts its own.
        n_init_passes = int(self.missing == "em")
        if resume is not None:
            starts = None
        elif do_init:
            rng = check_random_state(self.random_state)
            with single_threaded_blas(), counting_passes() as init_passes:
                starts = self._starts(x_init, rng, eps, weights_init, given)
            n_init_passes += init_passes.n
            for i, s in enumerate(starts):
                if not s.is_finite():
                    raise ValueError(
                        f"Initialisation produced non-finite parameters (start {i}). "
                        "Check the data for NaN or infinity, or scale it."
                    )
        else:
            starts = [self._params()]
            initial = [self.lower_bound_]
        if self.algorithm == "online" and resume is None:
            starts = online_fit_starts(self, X, starts, eps, weights, kernel)
            # Its M-steps come from running statistics: no EM parent to compare with.
            initial, n_init_passes = None, n_init_passes + 1

        state = run_em(
            X,
            starts,
            tol=self.tol,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            eps=eps,
            weights=weights,
            split_every=self.split_every,
            initial_lower_bounds=initial,
            resume=resume,
            callback=callback,
            log_level=log_level,
            log_interval=self.verbose_interval if self.verbose else 1,
            kernel=kernel,
            algorithm="accelerated" if self.algorithm == "online" else self.algorithm,
            init_passes=n_init_passes,
        )
        best = best_candidate(state)
        converged = bool(best.converged)
        if not converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=4,  # _fit, fit, its validating wrapper, the caller
            )
        self._set_fitted(best.params)
        self.converged_ = converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = list(best.lower_bounds)
        self.n_rows_skipped_ = n_skipped
        self.n_passes_ = state.n_passes
        self.fit_state_ = state
        # A later partial_fit goes on from these parameters, not an older stream's.
        self.__dict__.pop("_online_state", None)

    def _set_fitted(self, params: MixtureParams):
        self.weights_ = params.weights
        self.means_ = params.means
        self.precisions_cholesky_ = params.precisions_cholesky
        self.covariances_ = (
            params.covariances
            if params.covariances is not None
            else _math.covariances_from_cholesky(
                params.precisions_cholesky, params.covariance_type
            )
        )
        self.precisions_ = _math.precisions_from_cholesky(
            params.precisions_cholesky, params.covariance_type
        )

    # ----------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------
    def __sklearn_is_fitted__(self):
        # Fitted means parameters to predict with: a fit that failed after checking X
        # leaves n_features_in_, which scikit-learn's default test would take as fitted.
        return hasattr(self, "precisions_cholesky_")

    def _check_rows(self, X, allow_nan=None):
        """Check a fitted model's input: (X as numpy or dask array, whether lazy)."""
        check_is_fitted(self)
        if allow_nan is None:
            allow_nan = self.missing == "em"
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
        params = self._params()
        out_dtype = np.int64 if func is _labels else np.float64
        if allow_nan is None:
            allow_nan = self.missing == "em"
        if self.missing == "em":
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
        return _mean(self.score_samples(X))

    def predict(self, X):
        """Most probable component of each row, shape (n_samples,); lazy for dask input."""
        return self._map_rows(*self._check_rows(X), _labels, None)

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components); lazy for dask input.

        With ``missing='em'``, rows may hold NaN: responsibilities come from the observed
        features (the mixture weights for a row with none).
        """
        return self._map_rows(*self._check_rows(X), _proba, self.n_components)

    def impute(self, X):
        """Fill missing values (NaN) with their conditional expectation under the model.

        ``E[x_m | x_o] = sum_k r_k(x_o) (mu_km + Sigma_k,mo Sigma_k,oo^-1 (x_o - mu_ko))``
        with ``r_k(x_o)`` the responsibilities from the row's observed features; a row
        with no observed value gets the mixture mean. Observed values are unchanged.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features)
            NaN marks the values to fill, whatever ``missing`` was; infinity is an error.

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_features), float64
            Lazy for dask input, numpy for numpy input.
        """
        x, lazy = self._check_rows(X, allow_nan=True)
        return self._map_rows(x, lazy, _missing.impute_block, self.n_features_in_, True)

    def _n_parameters(self):
        return _math.n_parameters(self.covariance_type, self.n_components, self.means_.shape[1])

    def bic(self, X, sample_weight=None):
        """Bayesian information criterion on ``X`` (lower is better).

        With ``sample_weight`` the log-likelihood is weighted and ``n`` is the total
        weight, as if each row were repeated by its (integer) weight.
        """
        loglik, n = self._total_loglik(X, sample_weight)
        return -2 * loglik + self._n_parameters() * math.log(n)

    def aic(self, X, sample_weight=None):
        """Akaike information criterion on ``X`` (lower is better); weighted as :meth:`bic`."""
        loglik, _ = self._total_loglik(X, sample_weight)
        return -2 * loglik + 2 * self._n_parameters()

    def _total_loglik(self, X, sample_weight):
        x, lazy = self._check_rows(X)
        s = self._map_rows(x, lazy, _log_norm, None)
        if sample_weight is None:
            # scikit-learn's arithmetic: the mean log-likelihood times n.
            n = int(x.shape[0])
            return _mean(s) * n, n
        w = check_weights_like(sample_weight, x)
        if lazy and isinstance(sample_weight, da.Array):
            check_weight_values(w)
        loglik, n = compute((w * s).sum(), w.sum())
        return float(loglik), float(n)

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
            X = np.vstack(
                [
                    rng.multivariate_normal(mean, cov, int(c))
                    for mean, cov, c in zip(self.means_, self.covariances_, counts, strict=True)
                ]
            )
        elif self.covariance_type == "tied":
            X = np.vstack(
                [
                    rng.multivariate_normal(mean, self.covariances_, int(c))
                    for mean, c in zip(self.means_, counts, strict=True)
                ]
            )
        else:
            X = np.vstack(
                [
                    mean + rng.standard_normal(size=(c, d)) * np.sqrt(cov)
                    for mean, cov, c in zip(self.means_, self.covariances_, counts, strict=True)
                ]
            )
        y = np.concatenate([np.full(c, j, dtype=np.int64) for j, c in enumerate(counts)])
        return X, y

    # ----------------------------------------------------------------------------------
    # Persistence as plain arrays
    # ----------------------------------------------------------------------------------
    def fitted_arrays(self) -> dict:
        """Everything needed to rebuild this fitted model, as numpy arrays (no objects)."""
        check_is_fitted(self)
        out = {
            "weights": self.weights_,
            "means": self.means_,
            "covariances": self.covariances_,
            "precisions_cholesky": self.precisions_cholesky_,
            "converged": np.asarray(self.converged_),
            "n_iter": np.asarray(self.n_iter_),
            "lower_bound": np.asarray(self.lower_bound_),
            "lower_bounds": np.asarray(self.lower_bounds_, dtype=np.float64),
            "n_features_in": np.asarray(self.n_features_in_),
        }
        if hasattr(self, "feature_names_in_"):
            out["feature_names_in"] = np.asarray(self.feature_names_in_, dtype=str)
        for name, value in self.get_params(deep=False).items():
            if name in ("weights_init", "means_init", "precisions_init"):
                if value is not None:
                    out["param_" + name] = np.asarray(value, dtype=np.float64)
            elif isinstance(value, (bool, int, float, str, np.integer, np.floating)):
                out["param_" + name] = np.asarray(value)
        return out

    @classmethod
    def from_fitted_arrays(cls, arrays) -> GaussianMixture:
        """Rebuild a fitted model from :meth:`fitted_arrays` (or ``np.load`` of it)."""
        params = {}
        for key in arrays:
            if key.startswith("param_"):
                value = np.asarray(arrays[key])
                if value.dtype.kind in "OV":
                    raise ValueError(f"model array {key!r} holds objects; refusing to load.")
                params[key[6:]] = value if value.ndim else value.item()
        gm = cls(**params)
        for key in ("weights", "means", "covariances", "precisions_cholesky"):
            value = np.asarray(arrays[key])
            if value.dtype.kind != "f":
                raise ValueError(f"model array {key!r} has dtype {value.dtype}; expected float.")
        gm._set_fitted(
            MixtureParams(
                np.asarray(arrays["weights"]),
                np.asarray(arrays["means"]),
                np.asarray(arrays["covariances"]),
                np.asarray(arrays["precisions_cholesky"]),
                gm.covariance_type,
            )
        )
        gm.converged_ = bool(arrays["converged"])
        gm.n_iter_ = int(arrays["n_iter"])
        gm.lower_bound_ = float(arrays["lower_bound"])
        gm.lower_bounds_ = [float(v) for v in np.asarray(arrays["lower_bounds"])]
        gm.n_features_in_ = int(arrays["n_features_in"])
        if "feature_names_in" in arrays:
            names = np.asarray(arrays["feature_names_in"])
            if names.dtype.kind != "U":
                raise ValueError(f"model array 'feature_names_in' has dtype {names.dtype}.")
            # scikit-learn keeps feature names as an object array of str.
            gm.feature_names_in_ = names.astype(object)
        return gm


def _row_slices(n, rows):
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def _mean(values) -> float:
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


def _ensure_handler():
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


# ConvergenceWarning is scikit-learn's, so that filters and ``pytest.warns`` written for
# scikit-learn catch ours; it stays importable from here and as
# ``dask_em.ConvergenceWarning`` for code written when it was a class of our own.
__all__ = ["GaussianMixture", "ConvergenceWarning", "EMProgress"]
