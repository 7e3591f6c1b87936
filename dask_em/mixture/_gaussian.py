"""The scikit-learn-style estimator: ``dask_em.GaussianMixture``."""

from __future__ import annotations

import math
from numbers import Real

import dask.array as da
from sklearn.base import _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions

from dask_em.engine import _math, _missing
from dask_em.engine._accel import ALGORITHMS
from dask_em.engine._em import EMProgress
from dask_em.engine._params import GAUSSIAN, MixtureParams
from dask_em.engine._reduce import compute
from dask_em.engine._stats import row_log_likelihood as _log_norm
from dask_em.init import _init
from dask_em.mixture._base import BaseMixture, FitData, float_arrays, mean_of
from dask_em.mixture._partial import online_fit_starts, partial_fit_batch
from dask_em.mixture._validation import (
    check_means_init,
    check_precisions_init,
    check_weight_values,
    check_weights_init,
    check_weights_like,
)

#: ``algorithm`` values of :meth:`GaussianMixture.fit`: the engine's step rules, and
#: 'online' (one online-EM pass, then 'accelerated').
FIT_ALGORITHMS = (*ALGORITHMS, "online")


class GaussianMixture(BaseMixture):
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
        'em': scikit-learn's iterations, one pass each. 'accelerated': converges to a
        fixed point of the same EM map, usually in a fraction of the passes on
        overlapping components, and stops by the same rule (one more plain EM
        iteration would change the mean log-likelihood by less than ``tol``). On at
        most 50,000 rows and 64 parameters it takes capped Newton steps on the
        fixed-point equation, with the EM map's Jacobian from the same pass (each
        pass computes ``p + 1`` E-steps); otherwise SQUAREM (Varadhan & Roland, 2008),
        one E-step a pass. Both work in unconstrained coordinates with a safeguard.
        'online': one pass of online EM over the row blocks in a ``random_state``-seeded
        order (see :meth:`partial_fit`) after initialisation,
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
        **BaseMixture._parameter_constraints,
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "missing": [StrOptions(set(_missing.MISSING_OPTIONS))],
        "algorithm": [StrOptions(set(FIT_ALGORITHMS))],
        "learning_decay": [Interval(Real, 0.5, 1.0, closed="right")],
        "learning_offset": [Interval(Real, 0.0, None, closed="left")],
    }
    _ARRAY_PARAMS = ("weights_init", "means_init", "precisions_init")

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
        self._store_params(locals())

    # ----------------------------------------------------------------------------------
    # The model: maximum-likelihood EM from given or drawn starts
    # ----------------------------------------------------------------------------------
    def _check_parameters(self, n_features):
        """Check ``weights_init``, ``means_init``, ``precisions_init`` as scikit-learn
        does before initialising (kept for :meth:`_initial_params`; None when not given)."""
        K, ct = self.n_components, self.covariance_type
        self._given = (
            None if self.weights_init is None else check_weights_init(self.weights_init, K),
            None if self.means_init is None else check_means_init(self.means_init, K, n_features),
            None
            if self.precisions_init is None
            else check_precisions_init(self.precisions_init, ct, K, n_features),
        )

    def _em_model(self, data: FitData):
        return GAUSSIAN

    def _initial_params(self, data: FitData, rng, model):
        w0, m0, p0 = self._given
        if w0 is not None and m0 is not None and p0 is not None:
            # Given entirely; every start is the same, as in scikit-learn.
            return [_init.from_arrays(w0, m0, p0, self.covariance_type)] * self.n_init
        # Like scikit-learn, a start is computed even when means or precisions are given:
        # the arrays given replace its parts and the rest (e.g. covariances) is kept.
        starts = super()._initial_params(data, rng, model)
        return [_init.override(s, w0, m0, p0) for s in starts]

    def _step_rule(self) -> str:
        # 'online' ends at an EM fixed point by accelerated passes.
        return "accelerated" if self.algorithm == "online" else self.algorithm

    def _online_start(self, data: FitData, starts, initial):
        if self.algorithm != "online":
            return starts, initial, 0
        kernel = self._run_settings(data)["kernel"]
        starts = online_fit_starts(self, data.x, starts, data.eps, data.weights, kernel)
        # Its M-steps come from running statistics: no EM parent to compare with; one pass.
        return starts, None, 1

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

    def _fitted_params(self) -> MixtureParams:
        return MixtureParams(
            self.weights_,
            self.means_,
            self.covariances_,
            self.precisions_cholesky_,
            self.covariance_type,
        )

    # Predictions use the fitted mixture itself.
    _inference_params = _fitted_params
    _params = _fitted_params

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

    _MODEL_KEYS = ("weights", "means", "covariances", "precisions_cholesky")

    def _model_arrays(self) -> dict:
        return {key: getattr(self, key + "_") for key in self._MODEL_KEYS}

    def _load_model_arrays(self, arrays) -> None:
        self._set_fitted(
            MixtureParams(*float_arrays(arrays, self._MODEL_KEYS), self.covariance_type)
        )

    # ----------------------------------------------------------------------------------
    # Gaussian-only methods: imputation and information criteria
    # ----------------------------------------------------------------------------------
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
            return mean_of(s) * n, n
        w = check_weights_like(sample_weight, x)
        if lazy and isinstance(sample_weight, da.Array):
            check_weight_values(w)
        loglik, n = compute((w * s).sum(), w.sum())
        return float(loglik), float(n)


# ConvergenceWarning is scikit-learn's, so that filters and ``pytest.warns`` written for
# scikit-learn catch ours; it stays importable from here and as
# ``dask_em.ConvergenceWarning`` for code written when it was a class of our own.
__all__ = ["GaussianMixture", "ConvergenceWarning", "EMProgress"]
