"""Mixture parameters as a value, and the M-step that makes them from statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.engine import _math
from dask_em.engine._stats import SuffStats


class ComponentShape:
    """``n_components`` and ``n_features`` from a ``means`` attribute of shape (K, d)."""

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]


#: A Gaussian mixture's arrays, in :class:`MixtureParams`' constructor order.
PARAM_FIELDS = ("weights", "means", "covariances", "precisions_cholesky")


def params_to_arrays(params: MixtureParams, prefix: str) -> dict:
    """``params``' arrays keyed ``prefix + field`` (for ``np.savez``, no pickles)."""
    return {prefix + f: np.asarray(getattr(params, f)) for f in PARAM_FIELDS}


def params_from_arrays(arrays, prefix: str, covariance_type: str) -> MixtureParams:
    """The inverse of :func:`params_to_arrays`."""
    return MixtureParams(*(np.asarray(arrays[prefix + f]) for f in PARAM_FIELDS), covariance_type)


@dataclass(frozen=True, eq=False)
class MixtureParams(ComponentShape):
    """Parameters of one Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    covariances : ndarray in the covariance type's shape, or None
        None only for a start given purely by precisions (never after an M-step).
    precisions_cholesky : ndarray in the covariance type's shape
    covariance_type : str
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray | None
    precisions_cholesky: np.ndarray
    covariance_type: str

    @property
    def center(self) -> np.ndarray:
        """The point a block is centred on: the mixture's mean, shape (d,).

        Any point works for exactness; one near the data keeps the digits of data with
        a large offset, and this one needs no pass over the data to find.
        """
        w = self.weights / self.weights.sum() if self.weights.sum() > 0 else self.weights
        return w @ self.means

    def is_finite(self) -> bool:
        arrays = [self.weights, self.means, self.precisions_cholesky]
        if self.covariances is not None:
            arrays.append(self.covariances)
        return all(np.all(np.isfinite(a)) for a in arrays)


def gaussian_moments(stats: SuffStats, reg_covar: float, eps: float):
    """Weight sums, means and covariances of the responsibilities (scikit-learn's
    ``_estimate_gaussian_parameters``): the part of the M-step every model shares.

    Parameters
    ----------
    stats : SuffStats
        Statistics summed over all blocks.
    reg_covar : float
        Non-negative regularisation added to the covariance diagonals.
    eps : float
        Machine epsilon of the input dtype; ``10 * eps`` guards every weight sum as in
        scikit-learn, so empty components divide by a tiny number, not by zero.

    Returns
    -------
    nk : ndarray of shape (K,)
        Guarded weight sums.
    means : ndarray of shape (K, d)
    covariances : ndarray in the covariance type's shape
        With ``reg_covar`` on the diagonal.
    """
    nk_raw = stats.nk
    nk = nk_raw + 10.0 * eps
    delta = stats.s1 / nk[:, None]
    means = stats.reference + delta
    cov = _math.covariances_from_moments(
        nk_raw, nk, stats.s1, stats.s2, delta, reg_covar, stats.covariance_type
    )
    return nk, means, cov


def m_step(stats: SuffStats, reg_covar: float, eps: float) -> MixtureParams:
    """New parameters from the statistics of one E-step (scikit-learn's rules).

    Parameters
    ----------
    stats : SuffStats
    reg_covar, eps : float
        As :func:`gaussian_moments`.

    Returns
    -------
    MixtureParams

    Raises
    ------
    ValueError
        When a covariance is not positive definite (increase reg_covar).
    """
    nk, means, cov = gaussian_moments(stats, reg_covar, eps)
    weights = nk / nk.sum()
    prec_chol = _math.precision_cholesky(cov, stats.covariance_type)
    return MixtureParams(weights, means, cov, prec_chol, stats.covariance_type)


class GaussianEM:
    """The model-specific half of EM for a maximum-likelihood Gaussian mixture.

    :func:`dask_em.engine._em.run_em` is generic over this small strategy (as
    scikit-learn's ``BaseMixture`` is over ``_m_step`` and ``_compute_lower_bound``):

    - ``e_step_params(params)``: the :class:`MixtureParams` whose weighted Gaussian
      log-densities are the E-step's unnormalised log-responsibilities;
    - ``m_step(stats, reg_covar, eps)``: new parameters from one pass's statistics;
    - ``lower_bound(stats, params, new_params)``: the iteration's lower bound, from the
      statistics of the E-step, its parameters and those after the M-step.
    """

    def e_step_params(self, params: MixtureParams) -> MixtureParams:
        return params

    def m_step(self, stats: SuffStats, reg_covar: float, eps: float) -> MixtureParams:
        return m_step(stats, reg_covar, eps)

    def lower_bound(self, stats: SuffStats, params, new_params) -> float:
        # scikit-learn's: the mean log-likelihood of the E-step.
        return stats.loglik / stats.weight_total


GAUSSIAN = GaussianEM()
