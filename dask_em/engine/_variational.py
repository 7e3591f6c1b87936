"""Variational Bayesian Gaussian mixture: parameters, M-step and lower bound.

scikit-learn's ``BayesianGaussianMixture`` (Bishop, 2006, ch. 10; Blei & Jordan, 2006
for the Dirichlet process) on the engine's sufficient statistics. Its E-step is a
weighted Gaussian log-density: ``log N(x | means_k, precisions_cholesky_k)`` plus a
per-component constant (``-d/2 log dof_k + (log Lambda_k - d / mean_precision_k) / 2``
and the expected log-weight from digammas), so :meth:`BayesianParams.e_step` gives the
:class:`MixtureParams` the one-pass kernel already evaluates, with unnormalised weights
``exp(constant_k)``. The bound's entropy term ``-sum_n sum_k r_nk log r_nk`` is
``sum_n log p~(x_n) - sum_k sum_n r_nk a_nk``, and ``sum_n r_nk a_nk`` follows from the
same statistics (weight sums, weighted sums and scatter about the E-step's means).
Pure numpy; the formulas, including scikit-learn's simplifications of the constant terms,
follow ``sklearn/mixture/_bayesian_mixture.py`` so that the numbers agree to round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, digamma, gammaln

from dask_em.engine import _math
from dask_em.engine._params import ComponentShape, MixtureParams, gaussian_moments
from dask_em.engine._stats import SuffStats

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


@dataclass(frozen=True, eq=False)
class BayesianParams(ComponentShape):
    """The variational posterior of a Bayesian Gaussian mixture (scikit-learn's names).

    Attributes
    ----------
    weight_concentration : ndarray of shape (2, K) (Dirichlet process: the two Beta
        parameters of each stick) or (K,) (Dirichlet distribution)
    mean_precision : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    degrees_of_freedom : ndarray of shape (K,), or of shape () for tied covariances
    covariances : ndarray in the covariance type's shape
        The Wishart scale normalised by the degrees of freedom (scikit-learn's).
    precisions_cholesky : ndarray in the covariance type's shape
    covariance_type : str
    prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    """

    weight_concentration: np.ndarray
    mean_precision: np.ndarray
    means: np.ndarray
    degrees_of_freedom: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    prior_type: str

    @property
    def weights(self) -> np.ndarray:
        """Expected mixture weights, shape (K,) (scikit-learn's ``weights_``)."""
        wc = self.weight_concentration
        if self.prior_type == "dirichlet_process":
            total = wc[0] + wc[1]
            weights = wc[0] / total * np.hstack((1, np.cumprod(wc[1] / total)[:-1]))
            return weights / np.sum(weights)
        return wc / np.sum(wc)

    def log_weights(self) -> np.ndarray:
        """Expected log mixture weights ``E[log pi_k]``, shape (K,)."""
        wc = self.weight_concentration
        if self.prior_type == "dirichlet_process":
            digamma_sum = digamma(wc[0] + wc[1])
            digamma_b = digamma(wc[1]) - digamma_sum
            return digamma(wc[0]) - digamma_sum + np.hstack((0, np.cumsum(digamma_b)[:-1]))
        return digamma(wc) - digamma(np.sum(wc))

    def component_offsets(self) -> np.ndarray:
        """``a_k``: what the E-step adds to ``log N(x | means_k, precisions_k)``, (K,)."""
        d = self.n_features
        dof = self.degrees_of_freedom
        # scikit-learn removes d/2 log(dof) from the density: its precisions are
        # normalised by the degrees of freedom.
        log_lambda = d * np.log(2.0) + np.sum(
            digamma(0.5 * (dof - np.arange(d)[:, np.newaxis])), 0
        )
        offsets = -0.5 * d * np.log(dof) + 0.5 * (log_lambda - d / self.mean_precision)
        return self.log_weights() + np.broadcast_to(offsets, (self.n_components,))

    def e_step(self) -> MixtureParams:
        """The mixture whose weighted log-densities are the E-step's log-responsibilities.

        Its ``weights`` are ``exp(a_k)`` (not normalised): the kernel adds their log to
        the Gaussian log-density, and its per-row log-sum-exp is the normaliser.
        """
        return MixtureParams(
            np.exp(self.component_offsets()),
            self.means,
            self.covariances,
            self.precisions_cholesky,
            self.covariance_type,
        )

    def is_finite(self) -> bool:
        arrays = [
            np.asarray(self.weight_concentration),
            self.mean_precision,
            self.means,
            np.asarray(self.degrees_of_freedom),
            self.covariances,
            self.precisions_cholesky,
        ]
        return all(np.all(np.isfinite(a)) for a in arrays)


@dataclass(frozen=True, eq=False)
class Priors:
    """The priors of a fit, resolved against the data (scikit-learn's ``*_prior_``).

    Attributes
    ----------
    weight_concentration : float
    mean_precision : float
    mean : ndarray of shape (d,)
    degrees_of_freedom : float
    covariance : ndarray of shape (d, d) (full, tied), (d,) (diag) or float (spherical)
    """

    weight_concentration: float
    mean_precision: float
    mean: np.ndarray
    degrees_of_freedom: float
    covariance: np.ndarray | float


# --------------------------------------------------------------------------------------
# The Wishart posterior, one function per covariance type (scikit-learn's formulas)
# --------------------------------------------------------------------------------------
def _wishart_full(priors, nk, xk, sk, mean_precision):
    dof = priors.degrees_of_freedom + nk
    diff = xk - priors.mean
    scale = nk * priors.mean_precision / mean_precision
    cov = (
        priors.covariance
        + nk[:, None, None] * sk
        + scale[:, None, None] * diff[:, :, None] * diff[:, None, :]
    )
    return dof, cov / dof[:, None, None]


def _wishart_tied(priors, nk, xk, sk, mean_precision):
    K = nk.shape[0]
    dof = np.asarray(priors.degrees_of_freedom + nk.sum() / K)
    diff = xk - priors.mean
    cov = (
        priors.covariance
        + sk * nk.sum() / K
        + priors.mean_precision / K * np.dot((nk / mean_precision) * diff.T, diff)
    )
    return dof, cov / dof


def _wishart_diag(priors, nk, xk, sk, mean_precision):
    dof = priors.degrees_of_freedom + nk
    diff = xk - priors.mean
    cov = priors.covariance + nk[:, None] * (
        sk + (priors.mean_precision / mean_precision)[:, None] * np.square(diff)
    )
    return dof, cov / dof[:, None]


def _wishart_spherical(priors, nk, xk, sk, mean_precision):
    dof = priors.degrees_of_freedom + nk
    diff = xk - priors.mean
    cov = priors.covariance + nk * (
        sk + priors.mean_precision / mean_precision * np.mean(np.square(diff), 1)
    )
    return dof, cov / dof


_WISHART = {
    "full": _wishart_full,
    "tied": _wishart_tied,
    "diag": _wishart_diag,
    "spherical": _wishart_spherical,
}


# --------------------------------------------------------------------------------------
# sum_n r_nk (x_n - m_k)^T Lambda_k (x_n - m_k) from the statistics, per covariance type
# --------------------------------------------------------------------------------------
def _quadratic_full(stats, delta, prec_chol):
    # Scatter about m_k: S2 + s1 delta^T + delta s1^T + nk delta delta^T (delta = ref - m).
    cross = stats.s1[:, :, None] * delta[:, None, :]
    scatter = stats.s2 + cross + cross.transpose(0, 2, 1)
    scatter += stats.nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
    # sum_k trace(P_k^T S_k P_k) as products (einsum's loop is K d^3 slow at high d).
    return float(np.sum(np.matmul(scatter, prec_chol) * prec_chol))


def _quadratic_tied(stats, delta, prec_chol):
    cross = stats.s1.T @ delta
    scatter = stats.s2 + cross + cross.T + (delta.T * stats.nk) @ delta
    return float(np.sum((scatter @ prec_chol) * prec_chol))


def _quadratic_diag(stats, delta, prec_chol):
    moment = stats.s2 + 2.0 * stats.s1 * delta + stats.nk[:, None] * delta**2
    return np.sum(prec_chol**2 * moment)


def _quadratic_spherical(stats, delta, prec_chol):
    moment = stats.s2 + 2.0 * np.sum(stats.s1 * delta, 1) + stats.nk * np.sum(delta**2, 1)
    return np.sum(prec_chol**2 * moment)


_QUADRATIC = {
    "full": _quadratic_full,
    "tied": _quadratic_tied,
    "diag": _quadratic_diag,
    "spherical": _quadratic_spherical,
}


def responsibility_log_sum(stats: SuffStats, e_step: MixtureParams) -> float:
    """``sum_n w_n sum_k r_nk log(w_k N(x_n | mu_k, P_k))`` of the E-step of ``stats``.

    Parameters
    ----------
    stats : SuffStats
        Statistics of a pass under ``e_step`` (moments about ``stats.reference``).
    e_step : MixtureParams
        The E-step's mixture (weights need not sum to one).

    Returns
    -------
    float
    """
    ct, d = e_step.covariance_type, e_step.n_features
    with np.errstate(divide="ignore"):
        log_const = _math.log_prob_const(e_step.weights, e_step.precisions_cholesky, ct, d)
    # Components without responsibility add nothing (and may have exp(a_k) = 0).
    linear = np.sum(np.where(stats.nk > 0, stats.nk * log_const, 0.0))
    delta = stats.reference - e_step.means
    return float(linear - 0.5 * _QUADRATIC[ct](stats, delta, e_step.precisions_cholesky))


# --------------------------------------------------------------------------------------
# The model strategy for run_em
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BayesianEM:
    """Variational EM of a Bayesian Gaussian mixture, for :func:`run_em`'s ``model``.

    Attributes
    ----------
    priors : Priors
    covariance_type : str
    prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    """

    priors: Priors
    covariance_type: str
    prior_type: str

    def e_step_params(self, params: BayesianParams) -> MixtureParams:
        return params.e_step()

    def m_step(self, stats: SuffStats, reg_covar: float, eps: float) -> BayesianParams:
        """The variational update of every factor from one pass's statistics.

        Raises
        ------
        ValueError
            When a normalised Wishart scale is not positive definite.
        """
        p = self.priors
        nk, xk, sk = gaussian_moments(stats, reg_covar, eps)
        if self.prior_type == "dirichlet_process":
            tail = np.hstack((np.cumsum(nk[::-1])[-2::-1], 0))
            concentration = np.stack((1.0 + nk, p.weight_concentration + tail))
        else:
            concentration = p.weight_concentration + nk
        mean_precision = p.mean_precision + nk
        means = (p.mean_precision * p.mean + nk[:, None] * xk) / mean_precision[:, None]
        dof, cov = _WISHART[self.covariance_type](p, nk, xk, sk, mean_precision)
        prec_chol = _math.precision_cholesky(cov, self.covariance_type)
        return BayesianParams(
            concentration,
            mean_precision,
            means,
            dof,
            cov,
            prec_chol,
            self.covariance_type,
            self.prior_type,
        )

    def lower_bound(self, stats: SuffStats, params, new_params: BayesianParams) -> float:
        """scikit-learn's variational lower bound (up to its constant terms).

        Parameters
        ----------
        stats : SuffStats
            The pass under ``params`` (the E-step).
        params : BayesianParams
            Parameters of the E-step (their responsibilities give the entropy term).
        new_params : BayesianParams
            Parameters after the M-step (the other terms).
        """
        entropy = stats.loglik - responsibility_log_sum(stats, params.e_step())
        return entropy - prior_terms(new_params)


def prior_terms(params: BayesianParams) -> float:
    """The bound's terms of the Wishart, Dirichlet and mean-precision normalisers."""
    d, ct = params.n_features, params.covariance_type
    dof = params.degrees_of_freedom
    log_det = _math.log_det_cholesky(params.precisions_cholesky, ct, d) - 0.5 * d * np.log(dof)
    log_wishart = -(
        dof * log_det
        + dof * d * 0.5 * math.log(2.0)
        + np.sum(gammaln(0.5 * (dof - np.arange(d)[:, np.newaxis])), 0)
    )
    if ct == "tied":
        log_wishart = params.n_components * np.float64(np.squeeze(log_wishart))
    else:
        log_wishart = np.sum(log_wishart)
    wc = params.weight_concentration
    if params.prior_type == "dirichlet_process":
        log_norm_weight = -np.sum(betaln(wc[0], wc[1]))
    else:
        log_norm_weight = gammaln(np.sum(wc)) - np.sum(gammaln(wc))
    return float(log_wishart + log_norm_weight + 0.5 * d * np.sum(np.log(params.mean_precision)))
