"""The variational Bayesian estimator: ``dask_em.BayesianGaussianMixture``.

Everything but the model is :class:`dask_em.mixture._base.BaseMixture`'s: the model is
:class:`dask_em.engine._variational.BayesianEM` (M-step and lower bound), its priors
resolved against the data here, and its parameters' fitted attributes.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from dask_em.engine import _math
from dask_em.engine._errors import ParameterValueError
from dask_em.engine._reduce import compute_pass
from dask_em.engine._stats import responsibility_statistics
from dask_em.engine._variational import PRIOR_TYPES, BayesianEM, BayesianParams, Priors
from dask_em.init._kmeans import reference_point
from dask_em.mixture._base import BaseMixture, FitData, float_arrays
from dask_em.mixture._validation import _check_shape, _init_array, check_precisions_init

_POSITIVE = Interval(Real, 0.0, None, closed="neither")

# What ``warm_start`` continues from: the variational parameters (those scikit-learn's
# ``_get_parameters`` returns) and the fit's record. Setting these by hand (e.g. from a
# scikit-learn model) and fitting with ``warm_start=True`` continues from them.
WARM_START_ATTRIBUTES = (
    "weight_concentration_",
    "mean_precision_",
    "means_",
    "degrees_of_freedom_",
    "covariances_",
    "precisions_cholesky_",
    "converged_",
    "lower_bound_",
    "n_features_in_",
)


class BayesianGaussianMixture(BaseMixture):
    """Variational Bayesian Gaussian mixture fitted with one pass over the data per
    iteration.

    The parameters, fitted attributes and methods are scikit-learn's
    ``sklearn.mixture.BayesianGaussianMixture``; from the same state the fitted numbers
    agree with it to round-off. With a Dirichlet process prior (the default) or a
    Dirichlet distribution prior on the weights, components the data do not need end
    with weights near zero, so ``n_components`` is an upper bound on the number used.
    Each iteration reads the data once, as :class:`GaussianMixture`: the variational
    E-step is a weighted Gaussian log-density, and every term of the lower bound
    follows from the same sufficient statistics. Input as for
    :class:`GaussianMixture` (numpy, dask arrays, dask DataFrames; dask input gives
    lazy outputs); NaN is an error.

    Parameters
    ----------
    n_components : int, default=1
        Upper bound on the number of components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the lower bound.
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
        Starts, advancing together in shared passes; the highest lower bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        As :class:`GaussianMixture`; the start is the variational M-step of the initial
        responsibilities (scikit-learn's ``_initialize``).
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}
        Default 'dirichlet_process' (stick-breaking).
    weight_concentration_prior : float, optional
        Default ``1 / n_components``; smaller puts more weight on fewer components.
    mean_precision_prior : float, optional
        Default 1.
    mean_prior : array-like of shape (n_features,), optional
        Default the (weighted) mean of ``X``.
    degrees_of_freedom_prior : float, optional
        Greater than ``n_features - 1``; default ``n_features``.
    covariance_prior : float or array-like, optional
        Default the (weighted, ``ddof=1``) covariance of ``X`` in the covariance
        type's shape: (d, d) full and tied, (d,) diag, a float spherical.
    random_state : int, RandomState or None
    warm_start : bool, default=False
        Continue from the fitted attributes (also when set by hand) on the next ``fit``.
    verbose : int, default=0
    verbose_interval : int, default=10
    persist : {'auto', True, False}, default='auto'
    split_every : int, optional
    compute_dtype : {'auto', 'float32', 'float64'}, default='auto'
        As :class:`GaussianMixture`.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
    weight_concentration_prior_ : float
    weight_concentration_ : tuple of two ndarray (Dirichlet process) or ndarray
    mean_precision_prior_ : float
    mean_precision_ : ndarray of shape (n_components,)
    mean_prior_ : ndarray of shape (n_features,)
    degrees_of_freedom_prior_ : float
    degrees_of_freedom_ : ndarray of shape (n_components,) (a float for tied)
    covariance_prior_ : float or ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features,)
    """

    _parameter_constraints: dict = {
        **BaseMixture._parameter_constraints,
        "weight_concentration_prior_type": [StrOptions(set(PRIOR_TYPES))],
        "weight_concentration_prior": [None, _POSITIVE],
        "mean_precision_prior": [None, _POSITIVE],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, _POSITIVE],
        "covariance_prior": [None, "array-like", _POSITIVE],
    }
    _ARRAY_PARAMS = ("mean_prior", "covariance_prior")

    def __init__(
        self,
        *,
        n_components=1,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        persist="auto",
        split_every=None,
        compute_dtype="auto",
    ):
        self._store_params(locals())

    # ----------------------------------------------------------------------------------
    # The model: priors, the variational strategy, parameters <-> attributes
    # ----------------------------------------------------------------------------------
    def _check_parameters(self, n_features):
        """scikit-learn's checks of the given priors (its messages), before any pass;
        a failure is a :class:`ParameterValueError` naming the prior."""
        d, ct = n_features, self.covariance_type
        if self.mean_prior is not None:
            mean = _init_array(self.mean_prior, "mean_prior")
            _check_shape(mean, (d,), "means", "mean_prior")
        dof = self.degrees_of_freedom_prior
        if dof is not None and not dof > d - 1.0:
            raise ParameterValueError(
                "The parameter 'degrees_of_freedom_prior' "
                f"should be greater than {d - 1}, but got {dof:.3f}.",
                parameter="degrees_of_freedom_prior",
            )
        if self.covariance_prior is not None and ct != "spherical":
            # The same checks as a precision matrix (scikit-learn's, and its names).
            shape = (d, d) if ct in ("full", "tied") else (d,)
            cov = _init_array(self.covariance_prior, "covariance_prior")
            _check_shape(cov, shape, f"{ct} covariance_prior", "covariance_prior")
            try:
                check_precisions_init(cov[None] if ct == "full" else cov, ct, 1, d)
            except ParameterValueError as exc:
                raise ParameterValueError(str(exc), parameter="covariance_prior") from exc

    def _em_model(self, data: FitData) -> BayesianEM:
        """The priors resolved against the data (one pass when a default needs its mean
        or covariance), kept as scikit-learn's ``*_prior_`` attributes."""
        d, ct = data.n_features, self.covariance_type
        mean, cov = None, None
        if self.mean_prior is None or self.covariance_prior is None:
            mean, cov = data_moments(data, ct, self.split_every)
        self.weight_concentration_prior_ = (
            1.0 / self.n_components
            if self.weight_concentration_prior is None
            else self.weight_concentration_prior
        )
        self.mean_precision_prior_ = (
            1.0 if self.mean_precision_prior is None else self.mean_precision_prior
        )
        self.mean_prior_ = (
            mean if self.mean_prior is None else np.asarray(self.mean_prior, dtype=np.float64)
        )
        self.degrees_of_freedom_prior_ = (
            d if self.degrees_of_freedom_prior is None else self.degrees_of_freedom_prior
        )
        if self.covariance_prior is None:
            self.covariance_prior_ = cov
        elif ct == "spherical":
            self.covariance_prior_ = self.covariance_prior
        else:
            self.covariance_prior_ = np.asarray(self.covariance_prior, dtype=np.float64)
        priors = Priors(
            self.weight_concentration_prior_,
            self.mean_precision_prior_,
            self.mean_prior_,
            self.degrees_of_freedom_prior_,
            self.covariance_prior_,
        )
        return BayesianEM(priors, ct, self.weight_concentration_prior_type)

    def _fitted_params(self) -> BayesianParams:
        wc = self.weight_concentration_
        return BayesianParams(
            np.stack(wc) if isinstance(wc, tuple) else np.asarray(wc, dtype=np.float64),
            np.asarray(self.mean_precision_, dtype=np.float64),
            np.asarray(self.means_, dtype=np.float64),
            np.asarray(self.degrees_of_freedom_, dtype=np.float64),
            np.asarray(self.covariances_, dtype=np.float64),
            np.asarray(self.precisions_cholesky_, dtype=np.float64),
            self.covariance_type,
            self.weight_concentration_prior_type,
        )

    def _inference_params(self):
        # scikit-learn's predictions use the variational E-step's weighted log-densities.
        return self._fitted_params().e_step()

    def _set_fitted(self, params: BayesianParams):
        wc = params.weight_concentration
        self.weight_concentration_ = (wc[0], wc[1]) if wc.ndim == 2 else wc
        self.mean_precision_ = params.mean_precision
        self.means_ = params.means
        dof = params.degrees_of_freedom
        self.degrees_of_freedom_ = float(dof) if np.ndim(dof) == 0 else dof
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = params.precisions_cholesky
        self.weights_ = params.weights
        self.precisions_ = _math.precisions_from_cholesky(
            params.precisions_cholesky, params.covariance_type
        )

    _MODEL_KEYS = (
        "weight_concentration",
        "mean_precision",
        "means",
        "degrees_of_freedom",
        "covariances",
        "precisions_cholesky",
    )
    _PRIOR_KEYS = (
        "weight_concentration_prior",
        "mean_precision_prior",
        "mean_prior",
        "degrees_of_freedom_prior",
        "covariance_prior",
    )

    def _model_arrays(self) -> dict:
        params = self._fitted_params()
        out = {key: np.asarray(getattr(params, key)) for key in self._MODEL_KEYS}
        for key in self._PRIOR_KEYS:
            if hasattr(self, key + "_"):
                out["prior_" + key] = np.asarray(getattr(self, key + "_"), dtype=np.float64)
        return out

    def _load_model_arrays(self, arrays) -> None:
        values = float_arrays(arrays, self._MODEL_KEYS)
        self._set_fitted(
            BayesianParams(*values, self.covariance_type, self.weight_concentration_prior_type)
        )
        for key in self._PRIOR_KEYS:
            if "prior_" + key in arrays:
                (value,) = float_arrays(arrays, ["prior_" + key])
                setattr(self, key + "_", value.item() if value.ndim == 0 else value)

    def effective_components(self, threshold: float = 0.01) -> np.ndarray:
        """Indices of the components whose weight is above ``threshold``."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return np.flatnonzero(self.weights_ > threshold)


def _moments_chunk(x, spec, row_offset, block_index, w=None):
    center, covariance_type = spec
    resp = np.ones((x.shape[0], 1))
    return (
        responsibility_statistics(x, resp, center, covariance_type, w, row_offset, block_index),
    )


def data_moments(data: FitData, covariance_type: str, split_every=None):
    """Mean and covariance of the (weighted) rows, in one pass: scikit-learn's default
    priors ``X.mean(0)`` and ``np.cov(X.T)`` (full, tied), ``np.var(X, 0, ddof=1)``
    (diag) or its mean (spherical). Weights count as repetitions (``n = sum w``).

    Returns
    -------
    mean : ndarray of shape (d,)
    covariance : ndarray of shape (d, d) or (d,), or float
    """
    kind = "full" if covariance_type in ("full", "tied") else "diag"
    center = reference_point(data.x)
    (stats,) = compute_pass(
        data.x,
        _moments_chunk,
        (center, kind),
        weights=data.weights,
        split_every=split_every,
        prefix="bayes-prior",
    )
    n = float(stats.nk[0])
    s1 = stats.s1[0]
    mean = stats.reference[0] + s1 / n
    if kind == "full":
        cov = (stats.s2[0] - np.outer(s1, s1) / n) / (n - 1.0)
        return mean, 0.5 * (cov + cov.T)
    var = (stats.s2[0] - s1**2 / n) / (n - 1.0)
    return mean, (float(var.mean()) if covariance_type == "spherical" else var)


__all__ = ["WARM_START_ATTRIBUTES", "BayesianGaussianMixture"]
