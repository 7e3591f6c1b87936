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

from dask_em.engine import _mstep_kernels

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
# Per covariance type: shape of the covariances (also of ``precisions_cholesky`` and of
# the second moments ``SuffStats.s2``) and the number of free covariance parameters.
_COV_SHAPE = {
    "full": lambda k, d: (k, d, d),
    "tied": lambda k, d: (d, d),
    "diag": lambda k, d: (k, d),
    "spherical": lambda k, d: (k,),
}
_N_COV_PARAMS = {
    "full": lambda k, d: k * d * (d + 1) // 2,
    "tied": lambda k, d: d * (d + 1) // 2,
    "diag": lambda k, d: k * d,
    "spherical": lambda k, d: k,
}


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of ``covariances`` (and of ``precisions_cholesky`` and the second moments
    ``SuffStats.s2``) for a covariance type."""
    return _COV_SHAPE[covariance_type](n_components, n_features)


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters of a mixture (as used by BIC and AIC)."""
    d, k = n_features, n_components
    return int(_N_COV_PARAMS[covariance_type](k, d) + k * d + k - 1)


def scaled_identity_covariances(covariance_type, n_components, n_features, scale):
    """Covariances ``scale * I`` for every component, in the covariance type's shape
    (a start on single rows: their scatter is zero, the covariance is ``reg_covar``)."""
    return _SCALED_IDENTITY[covariance_type](n_components, n_features, scale)


_SCALED_IDENTITY = {
    "full": lambda k, d, s: np.broadcast_to(s * np.eye(d), (k, d, d)).copy(),
    "tied": lambda k, d, s: s * np.eye(d),
    "diag": lambda k, d, s: np.full((k, d), float(s)),
    "spherical": lambda k, d, s: np.full(k, float(s)),
}


def _chol_full(cov: np.ndarray, component: int | None) -> np.ndarray:
    where = "" if component is None else f" (component {component})"
    try:
        cov_chol = linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError:
        raise ValueError(_ILL_DEFINED + where) from None
    # The inverse of the triangular factor, as scikit-learn's
    # ``solve_triangular(cov_chol, eye)`` (to ~1e-16) in half its work: LAPACK's trtri
    # took 2.8 ms against 7 ms at d=512 (one thread), per component and M-step.
    inv, info = linalg.lapack.get_lapack_funcs("trtri", (cov_chol,))(cov_chol, lower=1)
    if info != 0:
        raise ValueError(_ILL_DEFINED + where)
    return inv.T


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
    return _PRECISION_CHOLESKY[covariance_type](covariances)


def _precision_cholesky_full(covariances):
    return np.stack([_chol_full(c, k) for k, c in enumerate(covariances)])


def _precision_cholesky_tied(covariances):
    return _chol_full(covariances, None)


def _precision_cholesky_diagonal(covariances):
    if np.any(np.less_equal(covariances, 0.0)) or not np.all(np.isfinite(covariances)):
        raise ValueError(_ILL_DEFINED)
    return 1.0 / np.sqrt(covariances)


_PRECISION_CHOLESKY = {
    "full": _precision_cholesky_full,
    "tied": _precision_cholesky_tied,
    "diag": _precision_cholesky_diagonal,
    "spherical": _precision_cholesky_diagonal,
}


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str):
    """Cholesky factors of given precision matrices (scikit-learn's ``precisions_init``)."""
    return _CHOLESKY_OF_PRECISIONS[covariance_type](precisions)


_CHOLESKY_OF_PRECISIONS = {
    "full": lambda p: np.stack([linalg.cholesky(pk, lower=True) for pk in p]),
    "tied": lambda p: linalg.cholesky(p, lower=True),
    "diag": np.sqrt,
    "spherical": np.sqrt,
}


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices ``P @ P.T`` (full, tied) or ``P**2`` (diag, spherical)."""
    return _PRECISIONS[covariance_type](prec_chol)


_PRECISIONS = {
    "full": lambda p: np.matmul(p, p.transpose(0, 2, 1)),
    "tied": lambda p: p @ p.T,
    "diag": lambda p: p**2,
    "spherical": lambda p: p**2,
}


def _inv_from_chol(p: np.ndarray) -> np.ndarray:
    # cov = (P P^T)^-1 = P^-T P^-1; P is upper triangular after an M-step but lower
    # triangular when it came from precisions_init, so do not assume either.
    p_inv = linalg.inv(p)
    return p_inv.T @ p_inv


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision Cholesky factors (used for ``precisions_init`` starts)."""
    return _COVARIANCES_OF_CHOLESKY[covariance_type](prec_chol)


_COVARIANCES_OF_CHOLESKY = {
    "full": lambda p: np.stack([_inv_from_chol(pk) for pk in p]),
    "tied": _inv_from_chol,
    "diag": lambda p: 1.0 / p**2,
    "spherical": lambda p: 1.0 / p**2,
}


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int):
    """Log-determinant of the precision Cholesky factors, shape (K,) or scalar."""
    return _LOG_DET[covariance_type](prec_chol, n_features)


_LOG_DET = {
    "full": lambda p, d: np.sum(np.log(np.diagonal(p, axis1=1, axis2=2)), axis=1),
    "tied": lambda p, d: np.sum(np.log(np.diag(p))),
    "diag": lambda p, d: np.sum(np.log(p), axis=1),
    "spherical": lambda p, d: d * np.log(p),
}


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
# kernels drop the ones row and carry the offsets themselves: see dask_em.engine._kernels.)
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
    _FILL_DESIGN[covariance_type](zt, x, center, x.shape[1])
    return zt


def _fill_design_matrix(zt, x, center, d):
    np.subtract(x.T, center[:, None], out=zt[:d])
    zt[d] = 1.0


def _fill_design_diag(zt, x, center, d):
    xc = zt[d : 2 * d]
    np.subtract(x.T, center[:, None], out=xc)
    np.multiply(xc, xc, out=zt[:d])
    zt[2 * d] = 1.0


def _fill_design_spherical(zt, x, center, d):
    xc = zt[1 : d + 1]
    np.subtract(x.T, center[:, None], out=xc)
    np.einsum("ij,ij->j", xc, xc, out=zt[0])
    zt[d + 1] = 1.0


_FILL_DESIGN = {
    "full": _fill_design_matrix,
    "tied": _fill_design_matrix,
    "diag": _fill_design_diag,
    "spherical": _fill_design_spherical,
}


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
    const = log_prob_const(weights, prec_chol, covariance_type, b.shape[1])
    return _LOG_PROB_MATRIX[covariance_type](b, prec_chol, dtype), const


def _log_prob_matrix_full(b, prec_chol, dtype):
    K, d = b.shape
    m = np.empty((K, d, d + 1))
    m[:, :, :d] = prec_chol.transpose(0, 2, 1)
    m[:, :, d] = -np.matmul(b[:, None, :], prec_chol)[:, 0, :]
    return m.reshape(K * d, d + 1).astype(dtype)


def _log_prob_matrix_tied(b, prec_chol, dtype):
    d = b.shape[1]
    pt = np.zeros((d, d + 1))
    pt[:, :d] = prec_chol.T
    v = b @ prec_chol
    return (pt.astype(dtype), (-2.0 * v).astype(dtype), np.einsum("ij,ij->i", v, v))


def _log_prob_matrix_diag(b, prec_chol, dtype):
    prec = prec_chol**2
    w = np.concatenate([prec, -2.0 * b * prec, np.sum(b * b * prec, axis=1)[:, None]], 1)
    return w.astype(dtype)


def _log_prob_matrix_spherical(b, prec_chol, dtype):
    prec = prec_chol**2
    w = np.concatenate(
        [prec[:, None], -2.0 * b * prec[:, None], (prec * np.einsum("ij,ij->i", b, b))[:, None]],
        axis=1,
    )
    return w.astype(dtype)


_LOG_PROB_MATRIX = {
    "full": _log_prob_matrix_full,
    "tied": _log_prob_matrix_tied,
    "diag": _log_prob_matrix_diag,
    "spherical": _log_prob_matrix_spherical,
}


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
    _TILE_DISTANCES[covariance_type](zt, matrix, out, ybuf)
    out *= -0.5
    out += const[:, None].astype(out.dtype)
    return out


def _tile_distances_full(zt, matrix, out, ybuf):
    # All components' whitened rows in one product, then squared norms per component.
    np.matmul(matrix, zt, out=ybuf)
    np.multiply(ybuf, ybuf, out=ybuf)
    np.sum(ybuf.reshape(out.shape[0], -1, ybuf.shape[1]), axis=1, out=out)


def _tile_distances_tied(zt, matrix, out, ybuf):
    pt, m2v, vv = matrix
    np.matmul(pt, zt, out=ybuf)
    # |y - v_k|^2 = |y|^2 - 2 v_k.y + |v_k|^2: one product for all components.
    np.matmul(m2v, ybuf, out=out)
    out += np.einsum("ij,ij->j", ybuf, ybuf)[None, :]
    out += vv[:, None].astype(out.dtype)


def _tile_distances_diagonal(zt, matrix, out, ybuf):
    np.matmul(matrix, zt, out=out)


# Squared Mahalanobis distances of a tile, (K, m), written into ``out``.
_TILE_DISTANCES = {
    "full": _tile_distances_full,
    "tied": _tile_distances_tied,
    "diag": _tile_distances_diagonal,
    "spherical": _tile_distances_diagonal,
}


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


# Rows of the running sums of :func:`accumulate_moments` (K components, design width q):
# full every component's (q, q) block stacked, tied the pooled Gram matrix then one row
# of first moments per component, diag and spherical one row per component.
_MOMENT_ROWS = {
    "full": lambda k, q: k * q,
    "tied": lambda k, q: q + k,
    "diag": lambda k, q: k,
    "spherical": lambda k, q: k,
}


_MOMENT_BUFFER = {
    "full": lambda k, q, m: (k * q, m),
    "tied": lambda k, q, m: (q + k, m),
    "diag": lambda k, q, m: (k, q),
    "spherical": lambda k, q, m: (k, q),
}


def new_accumulator(covariance_type, n_components, n_features):
    """Zeroed float64 running sums for :func:`accumulate_moments`."""
    q = design_width(covariance_type, n_features)
    return np.zeros((_MOMENT_ROWS[covariance_type](n_components, q), q))


def moment_buffer_shape(covariance_type, n_components, n_features, m):
    """Shape of the scratch space :func:`accumulate_moments` needs for ``m`` rows."""
    q = design_width(covariance_type, n_features)
    return _MOMENT_BUFFER[covariance_type](n_components, q, m)


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
    built by :func:`dask_em.engine._kernels.full_tile_weigh` and
    :func:`~dask_em.engine._kernels.full_pack_block`; this is the plain form about the
    tile's centre (initialisation).
    """
    _ACCUMULATE[covariance_type](acc, zt, resp, sample_weight, buf)


def _accumulate_full(acc, zt, resp, sample_weight, buf):
    # Every component's r_k (z - o_k) side by side, times Z: one product with a wide
    # output. A product per component (tiny output, long inner dimension) does not
    # run concurrently in two threads of one process with OpenBLAS; this one does.
    K = resp.shape[0]
    q, m = zt.shape
    w3 = buf.reshape(K, q, m)
    np.multiply(zt[None, :, :], resp[:, None, :], out=w3)
    acc += buf @ zt.T


def _accumulate_tied(acc, zt, resp, sample_weight, buf):
    # Rows [sqrt(w) z ; r]: the pooled Gram matrix (weighted by the row weights) and
    # every component's first moments in one product.
    q = zt.shape[0]
    if sample_weight is None:
        buf[:q] = zt
    else:
        np.multiply(zt, sample_weight[None, :], out=buf[:q])
    buf[q:] = resp
    acc += buf @ zt.T


def _accumulate_diagonal(acc, zt, resp, sample_weight, buf):
    acc += np.matmul(resp, zt.T, out=buf)


_ACCUMULATE = {
    "full": _accumulate_full,
    "tied": _accumulate_tied,
    "diag": _accumulate_diagonal,
    "spherical": _accumulate_diagonal,
}


def _symmetric_from_upper(a):
    return np.triu(a) + np.triu(a, 1).T


def finish_moments(acc, covariance_type, n_features):
    """Moments ``(nk, s1, s2)`` (see :class:`dask_em.SuffStats`) from running sums."""
    return _FINISH_MOMENTS[covariance_type](acc, n_features)


def _finish_moments_full(acc, d):
    q = acc.shape[1]
    m = acc.reshape(-1, q, q)
    m = 0.5 * (m + m.transpose(0, 2, 1))
    return m[:, d, d].copy(), m[:, :d, d].copy(), m[:, :d, :d].copy()


def _finish_moments_tied(acc, d):
    q = acc.shape[1]
    g = acc[:q]
    g = 0.5 * (g + g.T)
    ra = acc[q:]
    return ra[:, d].copy(), ra[:, :d].copy(), g[:d, :d].copy()


def _finish_moments_diag(acc, d):
    return acc[:, 2 * d].copy(), acc[:, d : 2 * d].copy(), acc[:, :d].copy()


def _finish_moments_spherical(acc, d):
    return acc[:, d + 1].copy(), acc[:, 1 : d + 1].copy(), acc[:, 0].copy()


_FINISH_MOMENTS = {
    "full": _finish_moments_full,
    "tied": _finish_moments_tied,
    "diag": _finish_moments_diag,
    "spherical": _finish_moments_spherical,
}


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
    s1, s2 : moments about ``c`` (see :class:`dask_em.SuffStats`)
    delta : ndarray of shape (K, d)
        New means minus ``c`` (``s1 / nk``).
    reg_covar : float
        Added to the diagonal after dividing, as scikit-learn does.

    Returns
    -------
    covariances : ndarray in the covariance type's shape
    """
    return _COVARIANCES_FROM_MOMENTS[covariance_type](nk_raw, nk, s1, s2, delta, reg_covar)


def _covariances_full(nk_raw, nk, s1, s2, delta, reg_covar):
    # sum r (x - mu)(x - mu)^T = S2 - s1 delta^T - delta s1^T + nk delta delta^T, each
    # entry formed for (i, j) and (j, i) and averaged, in one compiled loop (numpy's
    # temporaries took 34 ms of every M-step at d=512, K=8).
    f64 = [np.asarray(a, dtype=np.float64) for a in (nk_raw, nk, s1, s2, delta)]
    cov = np.empty(f64[3].shape)
    _mstep_kernels.full_covariances(*f64, float(reg_covar), cov)
    return cov


def _covariances_tied(nk_raw, nk, s1, s2, delta, reg_covar):
    d = s1.shape[1]
    cross = s1.T @ delta
    scatter = s2 - cross - cross.T + (delta.T * nk_raw) @ delta
    cov = scatter / nk.sum()
    cov = 0.5 * (cov + cov.T)
    cov[np.arange(d), np.arange(d)] += reg_covar
    return cov


def _covariances_diag(nk_raw, nk, s1, s2, delta, reg_covar):
    scatter = s2 - 2.0 * s1 * delta + nk_raw[:, None] * delta * delta
    # The true scatter is never negative; clip what cancellation leaves below zero.
    return np.maximum(scatter, 0.0) / nk[:, None] + reg_covar


def _covariances_spherical(nk_raw, nk, s1, s2, delta, reg_covar):
    d = s1.shape[1]
    scatter = s2 - 2.0 * np.sum(s1 * delta, axis=1) + nk_raw * np.sum(delta * delta, axis=1)
    return np.maximum(scatter, 0.0) / (nk * d) + reg_covar


_COVARIANCES_FROM_MOMENTS = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}
