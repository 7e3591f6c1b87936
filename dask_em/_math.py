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
# E-step and moments on tiles of rows
#
# A block is processed in tiles of a few hundred to a few thousand rows so that every
# temporary stays in cache; per tile, each covariance type builds a feature-major
# "design" Z^T (q, m) from the centred rows,
#   full, tied:  Z = [xc, 1]               (m, d+1)
#   diag:        Z = [xc**2, xc, 1]        (m, 2d+1)
#   spherical:   Z = [|xc|^2, xc, 1]       (m, d+2)
# from which both the squared Mahalanobis distances and the moments (responsibilities
# times Z) follow as matrix products, with the offsets carried by the ones row instead
# of separate elementwise passes. Per-component arrays are laid out (K, m) so that
# reductions over components are vectorised. (The fused E-step's full-covariance
# kernels drop the ones row and carry the offsets themselves: see dask_em._kernels.)
#
# The design may be float32 (``compute_dtype``): the centring subtraction is done in
# float64 and rounded once, products run in single precision, and every sum across
# tiles is float64, so only a tile's own products carry float32 rounding.
# --------------------------------------------------------------------------------------
def design_width(covariance_type: str, n_features: int) -> int:
    """Rows of the tile design matrix Z^T."""
    d = n_features
    return {"full": d + 1, "tied": d + 1, "diag": 2 * d + 1, "spherical": d + 2}[covariance_type]


def fill_design(zt, x, center, covariance_type):
    """Write the design of rows ``x`` centred on ``center`` into ``zt`` (shape (q, m)).

    Parameters
    ----------
    zt : ndarray of shape (q, m), float32 or float64
    x : ndarray of shape (m, d), float32 or float64
    center : ndarray of shape (d,), float64
        The subtraction is computed in float64 whatever the dtypes, then stored.
    """
    d = x.shape[1]
    if covariance_type in ("full", "tied"):
        np.subtract(x.T, center[:, None], out=zt[:d])
        zt[d] = 1.0
    elif covariance_type == "diag":
        xc = zt[d : 2 * d]
        np.subtract(x.T, center[:, None], out=xc)
        np.multiply(xc, xc, out=zt[:d])
        zt[2 * d] = 1.0
    else:
        xc = zt[1 : d + 1]
        np.subtract(x.T, center[:, None], out=xc)
        np.einsum("ij,ij->j", xc, xc, out=zt[0])
        zt[d + 1] = 1.0
    return zt


def log_prob_const(weights, prec_chol, covariance_type, n_features):
    """``log w_k + log det P_k - d/2 log(2 pi)``, shape (K,), float64."""
    with np.errstate(divide="ignore"):
        const = np.log(weights) + log_det_cholesky(prec_chol, covariance_type, n_features)
    return const - 0.5 * n_features * LOG_2PI


def prepare_log_prob(b, weights, prec_chol, covariance_type, dtype=np.float64):
    """Per-mixture matrices that turn a tile design into log-probabilities.

    Parameters
    ----------
    b : ndarray of shape (K, d)
        Means minus the centring point.
    weights : ndarray of shape (K,)
    prec_chol : ndarray in the covariance type's shape
    dtype : numpy dtype
        The tiles' compute dtype; matrices are built in float64 and cast once.

    Returns
    -------
    tuple
        ``(matrix, const)``; ``matrix`` is (K*d, q) for full (each component's
        transposed precision factor with the offset column ``-P_k^T b_k``), ``(P^T | 0,
        -2 b P, |b P|^2)`` for tied, (K, q) for diag and spherical; ``const`` (K,) is
        ``log w_k + log det P_k - d/2 log(2 pi)``, float64.
    """
    K, d = b.shape
    const = log_prob_const(weights, prec_chol, covariance_type, d)
    if covariance_type == "full":
        m = np.empty((K, d, d + 1))
        m[:, :, :d] = prec_chol.transpose(0, 2, 1)
        m[:, :, d] = -np.einsum("kj,kji->ki", b, prec_chol)
        return m.reshape(K * d, d + 1).astype(dtype), const
    if covariance_type == "tied":
        pt = np.zeros((d, d + 1))
        pt[:, :d] = prec_chol.T
        v = b @ prec_chol
        return (pt.astype(dtype), (-2.0 * v).astype(dtype), np.einsum("ij,ij->i", v, v)), const
    prec = prec_chol**2
    if covariance_type == "diag":
        w = np.concatenate([prec, -2.0 * b * prec, np.sum(b * b * prec, axis=1)[:, None]], 1)
        return w.astype(dtype), const
    w = np.concatenate(
        [prec[:, None], -2.0 * b * prec[:, None], (prec * np.einsum("ij,ij->i", b, b))[:, None]],
        axis=1,
    )
    return w.astype(dtype), const


def tile_log_prob(zt, prepared, covariance_type, out, ybuf):
    """Weighted log-probabilities of a tile, written into ``out`` of shape (K, m).

    Parameters
    ----------
    zt : ndarray of shape (q, m)
        Tile design from :func:`fill_design`.
    prepared : tuple
        From :func:`prepare_log_prob` (same dtype as ``zt``).
    out : ndarray of shape (K, m), same dtype as ``zt``
    ybuf : ndarray of shape (K*d, m) (full) or (d, m) (tied), same dtype
        Scratch space.
    """
    matrix, const = prepared
    K = out.shape[0]
    if covariance_type == "full":
        # All components' whitened rows in one product, then squared norms per component.
        np.matmul(matrix, zt, out=ybuf)
        np.multiply(ybuf, ybuf, out=ybuf)
        np.sum(ybuf.reshape(K, -1, ybuf.shape[1]), axis=1, out=out)
    elif covariance_type == "tied":
        pt, m2v, vv = matrix
        np.matmul(pt, zt, out=ybuf)
        # |y - v_k|^2 = |y|^2 - 2 v_k.y + |v_k|^2: one product for all components.
        np.matmul(m2v, ybuf, out=out)
        out += np.einsum("ij,ij->j", ybuf, ybuf)[None, :]
        out += vv[:, None].astype(out.dtype)
    else:
        np.matmul(matrix, zt, out=out)
    out *= -0.5
    out += const[:, None].astype(out.dtype)
    return out


# exp(-60) = 8.8e-27 (float32), exp(-600) = 2.7e-261 (float64): normal numbers with
# room for products with small values; differences from them are far below rounding.
_EXP_FLOOR = {4: -60.0, 8: -600.0}


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
        # exp(max(l, f)) - exp(f): responsibilities below exp(f) of a row's largest become
        # exactly zero (as exp's own underflow would make them) and the rest move by
        # exp(f), far below what the sums can see. This keeps them and their products
        # out of the subnormal range, where x86 arithmetic is 10-100x slower. NaN stays.
        floor = _EXP_FLOOR[wlp.dtype.itemsize]
        np.maximum(wlp, floor, out=wlp)
        np.exp(wlp, out=wlp)
        wlp -= wlp.dtype.type(np.exp(floor))
        s = wlp.sum(axis=0)
        wlp /= s
        return np.log(s) + m_safe


def new_accumulator(covariance_type, n_components, n_features):
    """Zeroed float64 running sums for :func:`accumulate_moments`."""
    q = design_width(covariance_type, n_features)
    if covariance_type == "full":
        return np.zeros((n_components * q, q))
    if covariance_type == "tied":
        return np.zeros((q + n_components, q))
    return np.zeros((n_components, q))


def moment_buffer_shape(covariance_type, n_components, n_features, m):
    """Shape of the scratch space :func:`accumulate_moments` needs for ``m`` rows."""
    q = design_width(covariance_type, n_features)
    if covariance_type == "full":
        return (n_components * q, m)
    if covariance_type == "tied":
        return (q + n_components, m)
    return (n_components, q)


def accumulate_moments(acc, zt, resp, covariance_type, sample_weight=None, buf=None):
    """Add a tile's weighted moments to the float64 running sums ``acc``.

    Parameters
    ----------
    acc : from :func:`new_accumulator`
    zt : ndarray of shape (q, m)
        Tile design.
    resp : ndarray of shape (K, m)
        Responsibilities already multiplied by the row weights.
    sample_weight : ndarray of shape (m,), optional
        Row weights (the tied pooled scatter needs them on their own).
    buf : ndarray of shape :func:`moment_buffer_shape`, same dtype as ``zt``
        Scratch space.

    The fused E-step's full-covariance moments, taken about each component's mean, are
    built by :func:`dask_em._kernels.full_tile_weigh` (and
    :func:`full_scatter_about_offsets`); this is the plain form about the tile's centre
    (initialisation).
    """
    if covariance_type == "full":
        # Every component's r_k (z - o_k) side by side, times Z: one product with a wide
        # output. A product per component (tiny output, long inner dimension) does not
        # run concurrently in two threads of one process with OpenBLAS; this one does.
        K = resp.shape[0]
        q, m = zt.shape
        w3 = buf.reshape(K, q, m)
        np.multiply(zt[None, :, :], resp[:, None, :], out=w3)
        acc += buf @ zt.T
    elif covariance_type == "tied":
        # Rows [sqrt(w) z ; r]: the pooled Gram matrix (weighted by the row weights) and
        # every component's first moments in one product.
        q = zt.shape[0]
        if sample_weight is None:
            buf[:q] = zt
        else:
            np.multiply(zt, sample_weight[None, :], out=buf[:q])
        buf[q:] = resp
        acc += buf @ zt.T
    else:
        acc += np.matmul(resp, zt.T, out=buf)


def _symmetric_from_upper(a):
    return np.triu(a) + np.triu(a, 1).T


def full_scatter_about_offsets(acc, s1, offsets):
    """Each component's scatter about its offset, from the fused E-step's sums.

    Parameters
    ----------
    acc : ndarray of shape (K*d, d)
        ``sum r_k (z - o_k) z^T`` of every component, stacked (see
        :func:`dask_em._kernels.full_tile_weigh`).
    s1 : ndarray of shape (K, d)
        ``sum r_k (z - o_k)``.
    offsets : ndarray of shape (K, d)
        The ``o_k``.

    Returns
    -------
    ndarray of shape (K, d, d)
        ``sum r_k (z - o_k)(z - o_k)^T``, symmetrised.
    """
    K, d = s1.shape
    m = acc.reshape(K, d, d) - s1[:, :, None] * offsets[:, None, :]
    return 0.5 * (m + m.transpose(0, 2, 1))


def finish_moments(acc, covariance_type, n_features):
    """Moments ``(nk, s1, s2)`` (see :class:`dask_em.SuffStats`) from running sums."""
    d = n_features
    q = acc.shape[1]
    if covariance_type == "full":
        m = acc.reshape(-1, q, q)
        m = 0.5 * (m + m.transpose(0, 2, 1))
        return m[:, d, d].copy(), m[:, :d, d].copy(), m[:, :d, :d].copy()
    if covariance_type == "tied":
        g = acc[:q]
        g = 0.5 * (g + g.T)
        ra = acc[q:]
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
