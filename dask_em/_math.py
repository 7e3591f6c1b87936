"""Gaussian mixture math, one small pure function per covariance type.

Nothing here imports Dask: these functions see one in-memory block of rows (or only the
parameters) and are shared by the fit, by prediction and by the tests.

Conventions follow scikit-learn's ``sklearn.mixture``: a model stores the Cholesky factor
of each precision matrix (``precisions_cholesky``), whose shape depends on the covariance
type:

=============  =====================  =====================
type           covariances            precisions_cholesky
=============  =====================  =====================
``full``       (K, d, d)              (K, d, d)
``tied``       (d, d)                 (d, d)
``diag``       (K, d)                 (K, d)
``spherical``  (K,)                   (K,)
=============  =====================  =====================

Block computations take rows already centred on a point ``c`` (``xc = x - c``) and the
component means relative to it (``b = means - c``). Centring keeps the digits of data with
a large offset; every quadratic form below is written so that it is exact whatever ``c``
is, as long as ``xc`` and ``b`` share it.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

LOG_2PI = float(np.log(2.0 * np.pi))

_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar, or scale the "
    "input data."
)


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------
def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of ``covariances`` (and of ``precisions_cholesky``) for a covariance type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters of a mixture (as used by BIC and AIC)."""
    d, k = n_features, n_components
    cov_params = {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]
    return int(cov_params + k * d + k - 1)


def _chol_full(cov: np.ndarray, component: int | None) -> np.ndarray:
    try:
        cov_chol = linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError:
        where = "" if component is None else f" (component {component})"
        raise ValueError(_ILL_DEFINED + where) from None
    d = cov.shape[0]
    return linalg.solve_triangular(cov_chol, np.eye(d), lower=True).T


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of the precision matrices from the covariances.

    Parameters
    ----------
    covariances : ndarray, shape depends on ``covariance_type`` (see module docstring)

    Returns
    -------
    precisions_cholesky : ndarray, same shape
        Upper-triangular ``P`` with ``P @ P.T`` the precision (full, tied), or the square
        root of the precisions (diag, spherical).

    Raises
    ------
    ValueError
        If a covariance is not positive definite.
    """
    if covariance_type == "full":
        return np.stack([_chol_full(c, k) for k, c in enumerate(covariances)])
    if covariance_type == "tied":
        return _chol_full(covariances, None)
    if np.any(np.less_equal(covariances, 0.0)) or not np.all(np.isfinite(covariances)):
        raise ValueError(_ILL_DEFINED)
    return 1.0 / np.sqrt(covariances)


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str):
    """Cholesky factors of given precision matrices (scikit-learn's ``precisions_init``)."""
    if covariance_type == "full":
        return np.stack([linalg.cholesky(p, lower=True) for p in precisions])
    if covariance_type == "tied":
        return linalg.cholesky(precisions, lower=True)
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices ``P @ P.T`` (full, tied) or ``P**2`` (diag, spherical)."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision Cholesky factors (used for ``precisions_init`` starts)."""
    if covariance_type == "full":
        return np.stack([_inv_from_chol(p) for p in prec_chol])
    if covariance_type == "tied":
        return _inv_from_chol(prec_chol)
    return 1.0 / prec_chol**2


def _inv_from_chol(p: np.ndarray) -> np.ndarray:
    # cov = (P P^T)^-1 = P^-T P^-1; P is upper triangular after an M-step but lower
    # triangular when it came from precisions_init, so do not assume either.
    p_inv = linalg.inv(p)
    return p_inv.T @ p_inv


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int):
    """Log-determinant of the precision Cholesky factors, shape (K,) or scalar."""
    if covariance_type == "full":
        return np.sum(np.log(np.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)
    if covariance_type == "tied":
        return np.sum(np.log(np.diag(prec_chol)))
    if covariance_type == "diag":
        return np.sum(np.log(prec_chol), axis=1)
    return n_features * np.log(prec_chol)


# --------------------------------------------------------------------------------------
# E-step: squared Mahalanobis distances of centred rows
# --------------------------------------------------------------------------------------
def _mahalanobis_full(xc, b, prec_chol):
    n, d = xc.shape
    k = b.shape[0]
    out = np.empty((n, k))
    xa = np.empty((n, d + 1))
    xa[:, :d] = xc
    xa[:, d] = 1.0
    y = np.empty((n, d))
    paug = np.empty((d + 1, d))
    for j in range(k):
        # y = (xc - b_j) @ P_j in one GEMM: the ones column carries the offset.
        paug[:d] = prec_chol[j]
        paug[d] = -(b[j] @ prec_chol[j])
        np.matmul(xa, paug, out=y)
        out[:, j] = np.einsum("ij,ij->i", y, y)
    return out


def _mahalanobis_tied(xc, b, prec_chol):
    y = xc @ prec_chol
    v = b @ prec_chol
    # |y - v_j|^2 expanded: one GEMM for all components instead of K subtractions.
    out = y @ (-2.0 * v.T)
    out += np.einsum("ij,ij->i", y, y)[:, None]
    out += np.einsum("ij,ij->i", v, v)[None, :]
    return out


def _mahalanobis_diag(xc, b, prec_chol):
    prec = prec_chol**2
    out = (xc * xc) @ prec.T
    out -= xc @ (2.0 * b * prec).T
    out += np.sum(b * b * prec, axis=1)[None, :]
    return out


def _mahalanobis_spherical(xc, b, prec_chol):
    prec = prec_chol**2
    out = xc @ (-2.0 * b.T)
    out += np.einsum("ij,ij->i", xc, xc)[:, None]
    out += np.einsum("ij,ij->i", b, b)[None, :]
    out *= prec[None, :]
    return out


MAHALANOBIS = {
    "full": _mahalanobis_full,
    "tied": _mahalanobis_tied,
    "diag": _mahalanobis_diag,
    "spherical": _mahalanobis_spherical,
}


def weighted_log_prob(xc, b, weights, prec_chol, covariance_type):
    """Per-row, per-component ``log(w_k) + log N(x | mu_k, Sigma_k)``.

    Parameters
    ----------
    xc : ndarray of shape (n, d), float64
        Rows centred on ``c``.
    b : ndarray of shape (K, d)
        Component means centred on the same ``c``.
    weights : ndarray of shape (K,)
    prec_chol : ndarray
        Precision Cholesky factors in the covariance type's shape.

    Returns
    -------
    ndarray of shape (n, K)
    """
    d = xc.shape[1]
    maha = MAHALANOBIS[covariance_type](xc, b, prec_chol)
    const = log_det_cholesky(prec_chol, covariance_type, d) - 0.5 * d * LOG_2PI
    with np.errstate(divide="ignore"):
        const = const + np.log(weights)
    maha *= -0.5
    maha += const
    return maha


def normalize_log_prob(wlp):
    """Log-sum-exp over components and the responsibilities, in place.

    Parameters
    ----------
    wlp : ndarray of shape (n, K)
        Weighted log-probabilities; overwritten with the responsibilities.

    Returns
    -------
    log_norm : ndarray of shape (n,)
        ``log sum_k exp(wlp[:, k])``.
    resp : ndarray of shape (n, K)
        Responsibilities (the same memory as ``wlp``).
    """
    if wlp.shape[0] == 0:
        return np.zeros(0), wlp
    m = wlp.max(axis=1)
    # Rows whose maximum is not finite are reported by the caller; keep them from
    # poisoning the arithmetic with warnings.
    m_safe = np.where(np.isfinite(m), m, 0.0)
    wlp -= m_safe[:, None]
    np.exp(wlp, out=wlp)
    s = wlp.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_norm = np.log(s) + m_safe
        wlp /= s[:, None]
    return log_norm, wlp


# --------------------------------------------------------------------------------------
# Sufficient statistics of centred rows given responsibilities
# --------------------------------------------------------------------------------------
def _moments_full(xc, resp):
    n, d = xc.shape
    k = resp.shape[1]
    xa = np.empty((n, d + 1))
    xa[:, :d] = xc
    xa[:, d] = 1.0
    buf = np.empty_like(xa)
    m = np.empty((k, d + 1, d + 1))
    for j in range(k):
        # One GEMM gives the scatter, the weighted sum and the weight sum together.
        np.multiply(xa, resp[:, j : j + 1], out=buf)
        np.matmul(buf.T, xa, out=m[j])
    return m[:, d, d].copy(), m[:, d, :d].copy(), m[:, :d, :d].copy()


def _moments_tied(xc, resp, sample_weight=None):
    n, d = xc.shape
    xa = np.empty((n, d + 1))
    xa[:, :d] = xc
    xa[:, d] = 1.0
    ra = resp.T @ xa
    # The responsibilities of a row sum to its weight, so the pooled scatter
    # sum_k sum_i r_ik xc xc^T is a single unweighted (or row-weighted) Gram matrix.
    if sample_weight is None:
        gram = xc.T @ xc
    else:
        gram = (xc * sample_weight[:, None]).T @ xc
    return ra[:, d].copy(), ra[:, :d].copy(), gram


def _moments_diag(xc, resp):
    n, d = xc.shape
    z = np.empty((n, 2 * d + 1))
    np.multiply(xc, xc, out=z[:, :d])
    z[:, d : 2 * d] = xc
    z[:, 2 * d] = 1.0
    rz = resp.T @ z
    return rz[:, 2 * d].copy(), rz[:, d : 2 * d].copy(), rz[:, :d].copy()


def _moments_spherical(xc, resp):
    n, d = xc.shape
    z = np.empty((n, d + 2))
    z[:, 0] = np.einsum("ij,ij->i", xc, xc)
    z[:, 1 : d + 1] = xc
    z[:, d + 1] = 1.0
    rz = resp.T @ z
    return rz[:, d + 1].copy(), rz[:, 1 : d + 1].copy(), rz[:, 0].copy()


def moments(xc, resp, covariance_type, sample_weight=None):
    """Weighted zeroth, first and second moments of centred rows.

    Parameters
    ----------
    xc : ndarray of shape (n, d), float64
    resp : ndarray of shape (n, K)
        Responsibilities, already multiplied by the row weights if there are any.
    sample_weight : ndarray of shape (n,), optional
        Row weights (only the tied Gram matrix needs them separately).

    Returns
    -------
    nk : ndarray of shape (K,)
        ``sum_i r_ik``
    s1 : ndarray of shape (K, d)
        ``sum_i r_ik xc_i``
    s2 : ndarray
        full (K, d, d) ``sum_i r_ik xc_i xc_i^T``; tied (d, d) the same summed over k;
        diag (K, d) ``sum_i r_ik xc_i**2``; spherical (K,) ``sum_i r_ik |xc_i|^2``.
    """
    if covariance_type == "tied":
        return _moments_tied(xc, resp, sample_weight)
    return {"full": _moments_full, "diag": _moments_diag, "spherical": _moments_spherical}[
        covariance_type
    ](xc, resp)


# --------------------------------------------------------------------------------------
# M-step: covariances from moments
# --------------------------------------------------------------------------------------
def covariances_from_moments(nk_raw, nk, s1, s2, delta, reg_covar, covariance_type):
    """Covariances around the new means from moments about the centring point.

    Parameters
    ----------
    nk_raw : ndarray of shape (K,)
        Weight sums.
    nk : ndarray of shape (K,)
        Weight sums plus scikit-learn's ``10 * eps`` guard (the divisor).
    s1, s2 : moments about ``c`` (see :func:`moments`)
    delta : ndarray of shape (K, d)
        New means minus ``c`` (``s1 / nk``).
    reg_covar : float
        Added to the diagonal after dividing, as scikit-learn does.

    Returns
    -------
    covariances : ndarray in the covariance type's shape
    """
    d = s1.shape[1]
    if covariance_type == "full":
        # sum r (x - mu)(x - mu)^T = S2 - s1 delta^T - delta s1^T + nk delta delta^T
        cross = s1[:, :, None] * delta[:, None, :]
        scatter = s2 - cross - cross.transpose(0, 2, 1)
        scatter += nk_raw[:, None, None] * delta[:, :, None] * delta[:, None, :]
        cov = scatter / nk[:, None, None]
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return cov
    if covariance_type == "tied":
        cross = s1.T @ delta
        scatter = s2 - cross - cross.T + (delta.T * nk_raw) @ delta
        cov = scatter / nk.sum()
        cov = 0.5 * (cov + cov.T)
        cov[np.arange(d), np.arange(d)] += reg_covar
        return cov
    if covariance_type == "diag":
        scatter = s2 - 2.0 * s1 * delta + nk_raw[:, None] * delta * delta
        # The true scatter is never negative; clip what cancellation leaves below zero.
        return np.maximum(scatter, 0.0) / nk[:, None] + reg_covar
    scatter = s2 - 2.0 * np.sum(s1 * delta, axis=1) + nk_raw * np.sum(delta * delta, axis=1)
    return np.maximum(scatter, 0.0) / (nk * d) + reg_covar
