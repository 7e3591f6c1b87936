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
from scipy.linalg import blas

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
# E-step and moments on tiles of rows
#
# A block is processed in tiles of a few thousand rows so that every temporary stays in
# cache; per tile, each covariance type builds a "design" Z from the centred rows,
#   full, tied:  Z = [xc, 1]               (m, d+1)
#   diag:        Z = [xc**2, xc, 1]        (m, 2d+1)
#   spherical:   Z = [|xc|^2, xc, 1]       (m, d+2)
# from which both the squared Mahalanobis distances (one GEMM per tile, or one per
# component for full) and the moments (responsibilities times Z) follow, with the
# offsets carried by the ones column instead of separate elementwise passes.
# Per-component arrays are laid out (K, m) so reductions over components are vectorised.
# --------------------------------------------------------------------------------------
def design_width(covariance_type: str, n_features: int) -> int:
    """Columns of the tile design matrix Z."""
    d = n_features
    return {"full": d + 1, "tied": d + 1, "diag": 2 * d + 1, "spherical": d + 2}[covariance_type]


def fill_design(z, x, center, covariance_type):
    """Write the design of rows ``x`` centred on ``center`` into ``z`` (shape (m, q)).

    ``x`` may be float32; the subtraction writes float64 directly.
    """
    d = x.shape[1]
    if covariance_type in ("full", "tied"):
        np.subtract(x, center, out=z[:, :d])
        z[:, d] = 1.0
    elif covariance_type == "diag":
        xc = z[:, d : 2 * d]
        np.subtract(x, center, out=xc)
        np.multiply(xc, xc, out=z[:, :d])
        z[:, 2 * d] = 1.0
    else:
        xc = z[:, 1 : d + 1]
        np.subtract(x, center, out=xc)
        z[:, 0] = np.einsum("ij,ij->i", xc, xc)
        z[:, d + 1] = 1.0
    return z


def prepare_log_prob(b, weights, prec_chol, covariance_type):
    """Per-mixture matrices that turn a tile design into log-probabilities.

    Parameters
    ----------
    b : ndarray of shape (K, d)
        Means minus the centring point.
    weights : ndarray of shape (K,)
    prec_chol : ndarray in the covariance type's shape

    Returns
    -------
    tuple
        ``(matrix, const)``; ``matrix`` is (K, d+1, d) for full (the precision factor with
        the offset row ``-b_k P_k``), (d+1, d) plus ``-2 b P`` and ``|b P|^2`` for tied,
        (K, q) for diag and spherical; ``const`` (K,) is ``log w_k + log det P_k -
        d/2 log(2 pi)``.
    """
    K, d = b.shape
    with np.errstate(divide="ignore"):
        const = np.log(weights) + log_det_cholesky(prec_chol, covariance_type, d)
    const = const - 0.5 * d * LOG_2PI
    if covariance_type == "full":
        m = np.empty((K, d + 1, d))
        m[:, :d] = prec_chol
        m[:, d] = -np.einsum("kj,kji->ki", b, prec_chol)
        return m, const
    if covariance_type == "tied":
        p = np.zeros((d + 1, d))
        p[:d] = prec_chol
        v = b @ prec_chol
        return (p, -2.0 * v, np.einsum("ij,ij->i", v, v)), const
    prec = prec_chol**2
    if covariance_type == "diag":
        w = np.concatenate([prec, -2.0 * b * prec, np.sum(b * b * prec, axis=1)[:, None]], 1)
        return w, const
    w = np.concatenate(
        [prec[:, None], -2.0 * b * prec[:, None], (prec * np.einsum("ij,ij->i", b, b))[:, None]],
        axis=1,
    )
    return w, const


def tile_log_prob(z, prepared, covariance_type, out, ybuf):
    """Weighted log-probabilities of a tile, written into ``out`` of shape (K, m).

    Parameters
    ----------
    z : ndarray of shape (m, q)
        Tile design from :func:`fill_design`.
    prepared : tuple
        From :func:`prepare_log_prob`.
    out : ndarray of shape (K, m)
    ybuf : ndarray of shape (m, d)
        Scratch space (full and tied).
    """
    matrix, const = prepared
    if covariance_type == "full":
        for k in range(matrix.shape[0]):
            np.matmul(z, matrix[k], out=ybuf)
            np.einsum("ij,ij->i", ybuf, ybuf, out=out[k])
    elif covariance_type == "tied":
        p, m2v, vv = matrix
        np.matmul(z, p, out=ybuf)
        # |y - v_k|^2 = |y|^2 - 2 v_k.y + |v_k|^2: one GEMM for all components.
        np.matmul(m2v, ybuf.T, out=out)
        out += np.einsum("ij,ij->i", ybuf, ybuf)[None, :]
        out += vv[:, None]
    else:
        np.matmul(matrix, z.T, out=out)
    out *= -0.5
    out += const[:, None]
    return out


def normalize_log_prob(wlp):
    """Log-sum-exp over components and the responsibilities, in place.

    Parameters
    ----------
    wlp : ndarray of shape (K, m)
        Weighted log-probabilities; overwritten with the responsibilities.

    Returns
    -------
    log_norm : ndarray of shape (m,)
        ``log sum_k exp(wlp[k])``; not finite where a row held NaN or infinity.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = wlp.max(axis=0)
        m_safe = np.where(np.isfinite(m), m, 0.0)
        wlp -= m_safe
        np.exp(wlp, out=wlp)
        s = wlp.sum(axis=0)
        wlp /= s
        return np.log(s) + m_safe


def new_accumulator(covariance_type, n_components, n_features):
    """Zeroed running sums for :func:`accumulate_moments`."""
    q = design_width(covariance_type, n_features)
    if covariance_type == "full":
        # Fortran order so BLAS syrk updates each in place.
        return [np.zeros((q, q), order="F") for _ in range(n_components)]
    if covariance_type == "tied":
        return [np.zeros((q, q), order="F"), np.zeros((n_components, q))]
    return np.zeros((n_components, q))


def accumulate_moments(acc, z, resp, covariance_type, sample_weight=None, buf=None, offsets=None):
    """Add a tile's weighted moments to the running sums ``acc``.

    Parameters
    ----------
    acc : from :func:`new_accumulator`
    z : ndarray of shape (m, q)
        Tile design.
    resp : ndarray of shape (K, m)
        Responsibilities already multiplied by the row weights (overwritten for full).
    sample_weight : ndarray of shape (m,), optional
        Row weights (the tied pooled scatter needs them on their own).
    buf : ndarray of shape (m, q), optional
        Scratch space (full and weighted tied).
    offsets : ndarray of shape (K, d), optional
        Full only: take component k's moments about ``c + offsets[k]`` (its current
        mean) rather than about the tile's centre ``c``, so that the scatter keeps its
        digits however far the components are from each other.
    """
    if covariance_type == "full":
        # r z z^T = (sqrt(r) z)(sqrt(r) z)^T: a symmetric rank-m update, half a GEMM.
        np.sqrt(resp, out=resp)
        if offsets is not None:
            # [xc - o_k, 1] = z - [o_k, 0]: one contiguous pass per component.
            offsets = np.concatenate([offsets, np.zeros((offsets.shape[0], 1))], axis=1)
        for k in range(len(acc)):
            if offsets is None:
                np.multiply(z, resp[k][:, None], out=buf)
            else:
                np.subtract(z, offsets[k], out=buf)
                buf *= resp[k][:, None]
            acc[k] = blas.dsyrk(1.0, buf.T, beta=1.0, c=acc[k], trans=0, overwrite_c=1)
    elif covariance_type == "tied":
        zw = z
        if sample_weight is not None:
            zw = np.multiply(z, np.sqrt(sample_weight)[:, None], out=buf)
        acc[0] = blas.dsyrk(1.0, zw.T, beta=1.0, c=acc[0], trans=0, overwrite_c=1)
        acc[1] += resp @ z
    else:
        acc += resp @ z


def _symmetric_from_upper(a):
    return np.triu(a) + np.triu(a, 1).T


def finish_moments(acc, covariance_type, n_features):
    """Moments ``(nk, s1, s2)`` (see :class:`dask_em.SuffStats`) from running sums."""
    d = n_features
    if covariance_type == "full":
        m = np.stack([_symmetric_from_upper(a) for a in acc])
        return m[:, d, d].copy(), m[:, :d, d].copy(), m[:, :d, :d].copy()
    if covariance_type == "tied":
        gram, ra = acc
        g = _symmetric_from_upper(gram)
        return ra[:, d].copy(), ra[:, :d].copy(), g[:d, :d].copy()
    if covariance_type == "diag":
        return acc[:, 2 * d].copy(), acc[:, d : 2 * d].copy(), acc[:, :d].copy()
    return acc[:, d + 1].copy(), acc[:, 1 : d + 1].copy(), acc[:, 0].copy()


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
