"""Exact EM for rows with missing values (Ghahramani & Jordan, 1994), one block at a time.

A value is missing when it is NaN; infinity is still an error. Missing values are taken
to be missing at random, each row with its own set ``m`` of missing features and ``o`` of
observed ones. For component ``k`` with mean ``mu`` and precision ``L`` (the inverse
covariance), the E-step needs

- the marginal density of the observed features, ``N(x_o; mu_o, Sigma_oo)``, for the
  responsibilities and the (observed-data) log-likelihood;
- the conditional law of the missing features, ``x_m | x_o ~ N(x_hat_m, C)``, for the
  expected sufficient statistics: ``E[x] = x_hat`` and ``E[x x^T] = x_hat x_hat^T + C``
  with ``C`` zero outside the missing block.

Full and tied covariances work from the precision, where everything reduces to the small
missing block ``L_mm`` (``|m| x |m|``, usually a handful of features):

- ``C = inv(L_mm)`` and ``x_hat_m = mu_m - C L_mo (x_o - mu_o)``;
- ``log det Sigma_oo = log det Sigma + log det L_mm``;
- with ``e`` the row minus ``mu`` and zeros at the missing features,
  ``x_hat_m - mu_m = -C (L e)_m``;
- ``(x_o - mu_o)^T inv(Sigma_oo) (x_o - mu_o) = (x_hat - mu)^T L (x_hat - mu)``: completing
  ``x_m`` by ``x_hat_m`` minimises the full quadratic form, and the minimum is the
  marginal one (a sum of squares, ``|P^T (x_hat - mu)|^2``, with no cancellation).

So per (missingness pattern, component) a block factorises one ``|m| x |m|`` matrix,
batched over all patterns with the same ``|m|``, and per row the work is two small GEMMs
like the complete-data E-step (``L e`` and ``P^T (x_hat - mu)`` with ``P P^T = L``)
plus a ``|m|``-sized product. Diagonal and spherical covariances need no factorisation at all: the
missing features are independent of the observed ones, so the observed mask enters the
tile design as extra columns and everything stays one GEMM per tile.

Complete rows go through the complete-data fused kernel
(:func:`dask_em.engine._stats.block_statistics`) unchanged; the statistics of the incomplete
rows are taken about the same references and simply added. Rows with no observed value
carry no information: they are skipped (counted in ``n_rows`` but not in
``weight_total``, so the lower bound is the observed-data log-likelihood per used row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas

from dask_em.engine import _math
from dask_em.engine._errors import NonFiniteError
from dask_em.engine._math import LOG_2PI, normalize_log_prob
from dask_em.engine._missing_scan import (  # noqa: F401 (the pass before fitting, re-exported)
    MissingSummary,
    missing_summary,
    prepare_fit,
    raise_infinite,
)
from dask_em.engine._stats import (
    SuffStats,
    block_statistics,
    component_reference,
    log_prob_block,
)

MISSING_OPTIONS = ("error", "em")

# Rows per tile for the incomplete rows: each per-component temporary (K x d x rows
# float64) stays near 1 MB, so a tile's working set fits in L2.
_TILE_BYTES = 2**20


def _tile_rows(n_components, n_features):
    return int(min(4096, max(128, _TILE_BYTES // (8 * n_components * max(n_features, 1)))))


# --------------------------------------------------------------------------------------
# Layout of a block: complete rows, incomplete rows grouped by pattern, skipped rows
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PatternGroup:
    """Incomplete rows of a block that miss the same number ``j`` of features.

    Attributes
    ----------
    rows : ndarray of shape (n_g,)
        Row indices in the block, sorted by pattern.
    pattern : ndarray of shape (n_g,)
        Index of each row's pattern in ``missing``.
    missing : ndarray of shape (U, j)
        Missing features of each pattern, ascending.
    """

    rows: np.ndarray
    pattern: np.ndarray
    missing: np.ndarray


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Which rows of a block are complete, incomplete or without any observed value.

    Attributes
    ----------
    complete : ndarray of shape (n_c,) or None
        Indices of complete rows; None when every row is complete.
    incomplete : ndarray of shape (n_i,)
        Rows with at least one observed and one missing value (ascending).
    skipped : ndarray of shape (n_s,)
        Rows with no observed value.
    groups : tuple of PatternGroup
        The incomplete rows, by number of missing features.
    """

    complete: np.ndarray | None
    incomplete: np.ndarray
    skipped: np.ndarray
    groups: tuple

    @property
    def all_complete(self) -> bool:
        return self.complete is None


def _pattern_codes(miss):
    """One sortable key per row of a boolean (n, d) mask: uint64 for d <= 64."""
    n, d = miss.shape
    width = -(-d // 8)
    if d % 8:
        padded = np.zeros((n, 8 * width), dtype=bool)
        padded[:, :d] = miss
        miss = padded
    # Packing the flat array is some 50x faster than packing along rows.
    packed = np.packbits(np.ascontiguousarray(miss).reshape(-1), bitorder="little")
    packed = packed.reshape(n, width)
    if width <= 8:
        wide = np.zeros((n, 8), dtype=np.uint8)
        wide[:, :width] = packed
        return wide.view(np.uint64).ravel()
    return packed.view(np.dtype((np.void, width))).ravel()


def block_layout(x, row_offset=0, block_index=0) -> BlockLayout:
    """Split the rows of a block by missingness (NaN) and group them by pattern.

    Parameters
    ----------
    x : ndarray of shape (n, d)
    row_offset, block_index : int
        Where the block sits (for error messages).

    Returns
    -------
    BlockLayout

    Raises
    ------
    NonFiniteError
        If the block holds infinity.
    """
    n, d = x.shape
    nan = np.isnan(x)
    empty = np.empty(0, dtype=np.intp)
    if not nan.any():
        # Infinity, if any, is reported by the complete-data kernel.
        return BlockLayout(None, empty, empty, ())
    if np.isinf(x).any():
        raise_infinite(x, block_index, row_offset)
    codes = _pattern_codes(nan)
    if d <= 64 and hasattr(np, "bitwise_count"):
        n_miss = np.bitwise_count(codes).astype(np.int64)
    else:
        n_miss = nan.sum(axis=1)
    incomplete = np.flatnonzero((n_miss > 0) & (n_miss < d))
    groups = []
    if incomplete.size:
        # One sort by (number missing, pattern) makes every group, and every pattern
        # within it, a contiguous run of rows.
        n_inc = n_miss[incomplete]
        if d <= 58:
            key = codes[incomplete].astype(np.int64) | (n_inc << d)
        else:
            _, inverse = np.unique(codes[incomplete], return_inverse=True)
            key = inverse.ravel().astype(np.int64) | (n_inc << 32)
        order = np.argsort(key)
        rows, key = incomplete[order], key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        label = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, rows.size]))
        pattern_j = n_miss[rows[starts]]
        pattern_mask = nan[rows[starts]]
        bounds = np.flatnonzero(np.r_[True, pattern_j[1:] != pattern_j[:-1], True])
        for p0, p1 in zip(bounds[:-1], bounds[1:], strict=True):
            r0 = starts[p0]
            r1 = starts[p1] if p1 < starts.size else rows.size
            groups.append(
                PatternGroup(
                    rows[r0:r1],
                    label[r0:r1] - p0,
                    np.nonzero(pattern_mask[p0:p1])[1].reshape(p1 - p0, int(pattern_j[p0])),
                )
            )
    return BlockLayout(
        np.flatnonzero(n_miss == 0), incomplete, np.flatnonzero(n_miss == d), tuple(groups)
    )


# --------------------------------------------------------------------------------------
# Full and tied: per (pattern, component) factorisation of the missing precision block
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _DenseModel:
    means: np.ndarray  # (K, d)
    offsets: np.ndarray  # (K, d, 1), means minus the centre
    precision: np.ndarray  # (K, d, d)
    chol_t: np.ndarray  # (K, d, d), P^T with P P^T the precision
    const: np.ndarray  # (K,) log w + log det P - d/2 log 2 pi

    @classmethod
    def of(cls, params):
        K, d = params.means.shape
        # One factor per component: tied's shared (d, d) factor broadcast, full's as is.
        P = np.broadcast_to(params.precisions_cholesky, (K, d, d))
        with np.errstate(divide="ignore"):
            const = np.log(params.weights) + _math.log_det_cholesky(P, "full", d)
        means = np.asarray(params.means, dtype=np.float64)
        return cls(
            means,
            (means - params.center)[:, :, None],
            np.matmul(P, P.transpose(0, 2, 1)),
            np.ascontiguousarray(np.swapaxes(P, 1, 2)),
            const - 0.5 * d * LOG_2PI,
        )


def spd_inverse(a):
    """Inverses and log-determinants of many small symmetric positive definite matrices.

    Gauss-Jordan elimination without pivoting, vectorised over the stack: ``j`` steps of
    whole-array operations, where LAPACK would cost a call per tiny matrix. The pivots
    of a positive definite matrix are the leading entries of its Schur complements, all
    positive, so no pivoting is needed; their logarithms sum to the log-determinant.
    The matrix axes come first so that every operation runs over contiguous stacks.

    Parameters
    ----------
    a : ndarray of shape (j, j, ...)

    Returns
    -------
    inverse : ndarray of shape (j, j, ...)
    log_det : ndarray of shape (...)
    """
    a = np.array(a, dtype=np.float64, order="C", copy=True)
    log_det = np.zeros(a.shape[2:])
    for p in range(a.shape[0]):
        piv = a[p, p].copy()
        log_det += np.log(piv)
        a[p, p] = 1.0
        a[p] /= piv
        f = a[:, p].copy()
        f[p] = 0.0
        a[:, p] = 0.0
        a[p, p] = 1.0 / piv
        a -= f[:, None] * a[p][None]
    return 0.5 * (a + np.swapaxes(a, 0, 1)), log_det


def _factor_patterns(model, missing):
    """Conditional covariances and log-density corrections of each (component, pattern).

    Parameters
    ----------
    model : _DenseModel
    missing : ndarray of shape (U, j)

    Returns
    -------
    cond_cov : ndarray of shape (j, j, K, U)
        ``inv(L_mm)``, the covariance of the missing features given the observed ones.
    corr : ndarray of shape (K, U)
        ``(j log 2 pi - log det L_mm) / 2``, added to the log-density to marginalise.
    """
    j = missing.shape[1]
    m = missing.T
    lmm = model.precision.transpose(1, 2, 0)[m[:, None, :], m[None, :, :]]  # (j, j, U, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov, log_det = spd_inverse(lmm.transpose(0, 1, 3, 2))
    if not np.all(np.isfinite(log_det)):
        raise ValueError(_math._ILL_DEFINED)
    return cov, 0.5 * (j * LOG_2PI - log_det)


def _dense_tile(x_rows, center, model, mi, cov_rows, corr_rows):
    """Marginal log-densities and conditional means of a tile of rows missing ``j`` values.

    Per-component arrays are laid out (K, d, rows), so that elementwise work runs along
    the rows in long contiguous loops.

    Parameters
    ----------
    x_rows : ndarray of shape (n, d)
        Rows with NaN at the missing features.
    center : ndarray of shape (d,)
    model : _DenseModel
    mi : ndarray of shape (n, j)
        Missing features of each row.
    cov_rows : ndarray of shape (j, j, K, n)
        Conditional covariance of each row's missing features under each component.
    corr_rows : ndarray of shape (K, n)

    Returns
    -------
    log_prob : ndarray of shape (K, n)
        Weighted log-densities of the observed features.
    dev : ndarray of shape (K, d, n)
        ``x_hat_k - mu_k``: each row minus each component's mean, its missing features
        completed by their conditional expectation under that component.
    """
    K, d = model.means.shape
    n, j = mi.shape
    # The shared centre first, so that x - mu keeps its digits when both are large.
    xc = np.empty((d, n))
    np.subtract(x_rows.T, center[:, None], out=xc)
    dev = np.empty((K, d, n))
    np.subtract(xc[None], model.offsets, out=dev)
    # Flat positions of the missing entries in dev, shape (j, K, n).
    at_missing = (np.arange(K) * (d * n))[None, :, None] + (mi.T * n + np.arange(n))[:, None, :]
    flat = dev.reshape(-1)
    flat[at_missing] = 0.0
    # With e = dev, zeros at the missing features: x_hat_m - mu_m = -C (L e)_m.
    h = np.take(np.matmul(model.precision, dev).reshape(-1), at_missing)
    flat[at_missing] = -np.einsum("abkn,bkn->akn", cov_rows, h)
    # The marginal quadratic form is the full one at x_hat, its minimum over x_m: a sum
    # of squares, where e^T L e - h^T C h would cancel badly for ill-conditioned L, and
    # first-order errors in x_hat do not change it.
    w = np.matmul(model.chol_t, dev)
    log_prob = corr_rows - 0.5 * np.einsum("kdn,kdn->kn", w, w)
    log_prob += model.const[:, None]
    return log_prob, dev


def _iter_dense(x, layout, params):
    """Yield ``(group, a, b, cond_cov, log_prob, dev)`` per tile ``rows[a:b]`` of a group."""
    K, d = params.means.shape
    step = _tile_rows(K, d)
    model = _DenseModel.of(params)
    center = params.center
    for g in layout.groups:
        cond_cov, corr = _factor_patterns(model, g.missing)
        for a in range(0, g.rows.size, step):
            b = min(g.rows.size, a + step)
            rows, pat = g.rows[a:b], g.pattern[a:b]
            log_prob, dev = _dense_tile(
                x[rows], center, model, g.missing[pat], cond_cov[..., pat], corr[:, pat]
            )
            yield g, a, b, cond_cov, log_prob, dev


# --------------------------------------------------------------------------------------
# Diagonal and spherical: the observed mask as design columns
# --------------------------------------------------------------------------------------
def _fold_diag(a):
    """Per-feature values (rows, d) in the design's square columns: unchanged."""
    return a


def _fold_spherical(a):
    """Per-feature values (rows, d) in the single square column: their sum, (rows, 1)."""
    return a.sum(axis=1, keepdims=True)


# How per-feature squares enter the design: one column per feature for diag, their sum
# (the squared norm) for spherical, whose precision is one number per component.
_FOLD = {"diag": _fold_diag, "spherical": _fold_spherical}


def _diagonal_design(x_rows, center, covariance_type):
    """Tile design ``[xc**2 or |xc|^2, xc, missing mask, 1]`` with zeros at missing xc."""
    n = x_rows.shape[0]
    miss = np.isnan(x_rows)
    xc = np.subtract(x_rows, center)
    xc[miss] = 0.0
    squares = _FOLD[covariance_type](xc * xc)
    return np.concatenate([squares, xc, miss, np.ones((n, 1))], axis=1)


def _diagonal_cholesky(params):
    """Precision Cholesky as (K, 1) for spherical and (K, d) for diag: both broadcast
    against per-feature (K, d) arrays and match the design's square columns."""
    return params.precisions_cholesky.reshape(params.means.shape[0], -1)


def _diagonal_matrix(params):
    """(K, q) matrix turning the design into ``-2 (log p - log w)``, and ``log w``."""
    b = params.means - params.center
    P = _diagonal_cholesky(params)
    with np.errstate(divide="ignore"):
        log_w = np.log(params.weights)
    prec = P**2
    # Per observed feature: prec (x - mu)^2 + log 2 pi - 2 log P. The constant parts
    # sum over all features, minus those of the missing ones (the mask columns).
    per_feature = prec * b * b + LOG_2PI - 2.0 * np.log(P)
    matrix = np.concatenate(
        [prec, -2.0 * prec * b, -per_feature, per_feature.sum(axis=1, keepdims=True)], axis=1
    )
    return matrix, log_w


def _diagonal_log_prob(z, matrix, log_w):
    out = matrix @ z.T
    out *= -0.5
    out += log_w[:, None]
    return out


# --------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------
def _check_log_norm(log_norm, rows, block_index, row_offset, n):
    if not np.all(np.isfinite(log_norm)):
        row = int(rows[np.flatnonzero(~np.isfinite(log_norm))[0]])
        raise NonFiniteError(
            f"Numerical overflow in the E-step: block {block_index} (rows {row_offset}-"
            f"{row_offset + n - 1}), row {row_offset + row} has a non-finite observed-data "
            "log-likelihood. Scale the input data or increase reg_covar.",
            kind="overflow",
            block=block_index,
            row=row_offset + row,
        )


def _responsibilities(log_prob, rows, sample_weight, where):
    """Turn a tile's (K, n) log-densities into weighted responsibilities, in place.

    Parameters
    ----------
    log_prob : ndarray of shape (K, n)
    rows : ndarray of shape (n,)
        The tile's rows within the block.
    sample_weight : ndarray of shape (block rows,) or None
    where : tuple of (block_index, row_offset, block rows)
        For the error naming a row whose log-likelihood is not finite.

    Returns
    -------
    loglik : float
        The tile's (weighted) observed-data log-likelihood.
    weight : float
        The tile's weight (its row count without weights).
    """
    log_norm = normalize_log_prob(log_prob)
    block_index, row_offset, n = where
    _check_log_norm(log_norm, rows, block_index, row_offset, n)
    if sample_weight is None:
        return float(log_norm.sum()), float(rows.size)
    sw = sample_weight[rows]
    log_prob *= sw
    return float(sw @ log_norm), float(sw.sum())


def _about_means(params, nk, s1, s2, reference):
    """Full: the moments already are about each component's mean."""
    return s1, s2


def _about_shared_reference(params, nk, s1, s2, reference):
    """Tied: moments about the means moved to the shared reference c and summed,
    with x - c = (x - mu_k) + (mu_k - c)."""
    b = params.means - reference
    cross = s1[:, :, None] * b[:, None, :]
    s2 = (
        s2 + cross + cross.transpose(0, 2, 1) + nk[:, None, None] * (b[:, :, None] * b[:, None, :])
    )
    return s1 + nk[:, None] * b, s2.sum(axis=0)


_DENSE_REFERENCE = {"full": _about_means, "tied": _about_shared_reference}


def _dense_statistics(x, layout, params, sample_weight, where):
    """Statistics of the incomplete rows, full and tied (see :func:`_diagonal_statistics`)."""
    K, d = params.means.shape
    # Moments of each component about its current mean, like the complete-data kernel
    # for full covariances; tied ones are moved to the shared reference at the end.
    nk = np.zeros(K)
    s1 = np.zeros((K, d))
    s2 = [np.zeros((d, d), order="F") for _ in range(K)]
    cond = np.zeros(K * d * d)
    loglik = weight_total = 0.0
    group = pattern_weight = group_cov = None
    for g, a, b, cond_cov, resp, dev in _iter_dense(x, layout, params):
        if g is not group:
            _add_conditional_covariance(cond, group, pattern_weight, group_cov, d)
            group, group_cov = g, cond_cov
            pattern_weight = np.zeros((K, g.missing.shape[0]))
        tile_loglik, tile_weight = _responsibilities(resp, g.rows[a:b], sample_weight, where)
        loglik += tile_loglik
        weight_total += tile_weight
        nk += resp.sum(axis=1)
        # r (x_hat x_hat^T) = (sqrt(r) x_hat)(sqrt(r) x_hat)^T: a rank update per component.
        root = np.sqrt(resp)
        dev *= root[:, None, :]
        s1 += np.matmul(dev, root[:, :, None])[:, :, 0]
        for k in range(K):
            s2[k] = blas.dsyrk(1.0, dev[k].T, beta=1.0, c=s2[k], trans=1, overwrite_c=1)
        # Rows are sorted by pattern: the weight of each pattern is a segmented sum.
        pat = g.pattern[a:b]
        first = np.flatnonzero(np.r_[True, pat[1:] != pat[:-1]])
        pattern_weight[:, pat[first]] += np.add.reduceat(resp, first, axis=1)
    _add_conditional_covariance(cond, group, pattern_weight, group_cov, d)
    s2 = np.stack([_math._symmetric_from_upper(s) for s in s2]) + cond.reshape(K, d, d)
    reference = component_reference(params)
    s1, s2 = _DENSE_REFERENCE[params.covariance_type](params, nk, s1, s2, reference)
    return nk, s1, s2, reference, loglik, weight_total


def _add_conditional_covariance(cond, group, pattern_weight, cond_cov, d):
    """``cond[k] += sum_p weight[k, p] * C_kp`` placed at pattern p's missing block."""
    if group is None:
        return
    K, U = pattern_weight.shape
    m = group.missing
    cells = (m[:, :, None] * d + m[:, None, :]).transpose(1, 2, 0)  # (j, j, U)
    index = cells[:, :, None, :] + (np.arange(K) * d * d)[None, None, :, None]
    cond += np.bincount(index.ravel(), (cond_cov * pattern_weight).ravel(), minlength=K * d * d)


def _diagonal_statistics(x, layout, params, sample_weight, where):
    """Statistics of the incomplete rows, diag and spherical.

    Returns
    -------
    nk, s1, s2, reference, loglik, weight_total
        The fields of :class:`SuffStats` for these rows (``s2`` in the covariance
        type's shape).
    """
    ct = params.covariance_type
    K, d = params.means.shape
    c = params.center
    matrix, log_w = _diagonal_matrix(params)
    rows_all = layout.incomplete
    step = _tile_rows(K, d)
    acc = np.zeros((K, matrix.shape[1]))
    loglik = weight_total = 0.0
    for a in range(0, rows_all.size, step):
        rows = rows_all[a : a + step]
        z = _diagonal_design(x[rows], c, ct)
        resp = _diagonal_log_prob(z, matrix, log_w)
        tile_loglik, tile_weight = _responsibilities(resp, rows, sample_weight, where)
        loglik += tile_loglik
        weight_total += tile_weight
        acc += resp @ z
    b = params.means - c
    var = 1.0 / _diagonal_cholesky(params) ** 2
    first = acc.shape[1] - 2 * d - 1  # the square columns: d for diag, 1 for spherical
    nk = acc[:, -1].copy()
    n_missing = acc[:, first + d : first + 2 * d]
    # A missing feature contributes its conditional mean mu_kf and variance.
    s1 = acc[:, first : first + d] + n_missing * b
    s2 = acc[:, :first] + _FOLD[ct](n_missing * (b * b + var))
    s2 = s2.reshape(_math.covariance_shape(ct, K, d))
    return nk, s1, s2, component_reference(params), loglik, weight_total


# The statistics of a block's incomplete rows, per covariance type.
_STATISTICS = {
    "full": _dense_statistics,
    "tied": _dense_statistics,
    "diag": _diagonal_statistics,
    "spherical": _diagonal_statistics,
}


def missing_block_statistics(
    x, params_list, row_offset=0, block_index=0, sample_weight=None, compute_dtype=None
):
    """The E-step of one block whose rows may hold NaN (missing values).

    A drop-in kernel for :func:`dask_em.engine._em.run_em`: the same :class:`SuffStats`, about
    the same references, as :func:`dask_em.engine._stats.block_statistics`, with expected
    sufficient statistics for the missing values and the observed-data log-likelihood.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        One block of rows, float32 or float64; NaN marks a missing value.
    params_list : sequence of MixtureParams
    row_offset : int
        Global index of the block's first row (for error messages).
    block_index : int
    sample_weight : ndarray of shape (n,), optional
    compute_dtype : {None, 'auto', 'float32', 'float64'}
        Arithmetic of the complete rows (see :func:`dask_em.engine._stats.block_statistics`);
        incomplete rows are always float64.

    Returns
    -------
    tuple of SuffStats, one per candidate
        ``n_rows`` counts every row of the block; ``weight_total`` and ``loglik`` only
        rows with at least one observed value.

    Raises
    ------
    NonFiniteError
        If the block holds infinity, or the E-step overflows.
    """
    layout = block_layout(x, row_offset, block_index)
    if layout.all_complete:
        return block_statistics(
            x, params_list, row_offset, block_index, sample_weight, compute_dtype
        )
    sw_complete = None if sample_weight is None else sample_weight[layout.complete]
    try:
        complete = block_statistics(
            x[layout.complete], params_list, row_offset, block_index, sw_complete, compute_dtype
        )
    except NonFiniteError:
        # Row numbers in the subset are not the block's: say where, without them.
        raise NonFiniteError(
            f"Numerical overflow in the E-step: block {block_index} (rows {row_offset}-"
            f"{row_offset + x.shape[0] - 1}). Scale the input data or increase reg_covar.",
            kind="overflow",
            block=block_index,
        ) from None
    out = []
    n_other = layout.incomplete.size + layout.skipped.size
    for params, st in zip(params_list, complete, strict=True):
        ct = params.covariance_type
        nk, s1, s2, reference, loglik, weight_total = _STATISTICS[ct](
            x, layout, params, sample_weight, (block_index, row_offset, x.shape[0])
        )
        out.append(st + SuffStats(ct, reference, nk, s1, s2, loglik, n_other, float(weight_total)))
    return tuple(out)


# --------------------------------------------------------------------------------------
# Inference: marginal log-densities and conditional expectations
# --------------------------------------------------------------------------------------
def _dense_incomplete_log_prob(x, layout, params, out, cond):
    """Fill ``out`` (and ``cond`` unless None) for full and tied covariances."""
    index = np.empty(x.shape[0], dtype=np.intp)
    index[layout.incomplete] = np.arange(layout.incomplete.size)
    for g, a, b, _, log_prob, dev in _iter_dense(x, layout, params):
        pos = index[g.rows[a:b]]
        out[pos] = log_prob.T
        if cond is not None:
            cond[:, pos] = dev.transpose(0, 2, 1) + params.means[:, None, :]


def _diagonal_incomplete_log_prob(x, layout, params, out, cond):
    """Fill ``out`` (and ``cond`` unless None) for diag and spherical covariances."""
    matrix, log_w = _diagonal_matrix(params)
    step = _tile_rows(*params.means.shape)
    for a in range(0, layout.incomplete.size, step):
        rows = layout.incomplete[a : a + step]
        z = _diagonal_design(x[rows], params.center, params.covariance_type)
        out[a : a + rows.size] = _diagonal_log_prob(z, matrix, log_w).T
    if cond is not None:
        xi = np.asarray(x[layout.incomplete], dtype=np.float64)
        cond[:] = xi
        miss = np.isnan(xi)
        # Given the component, a missing feature is independent of the others.
        cond[:, miss] = np.broadcast_to(params.means[:, None, :], cond.shape)[:, miss]


_INCOMPLETE_LOG_PROB = {
    "full": _dense_incomplete_log_prob,
    "tied": _dense_incomplete_log_prob,
    "diag": _diagonal_incomplete_log_prob,
    "spherical": _diagonal_incomplete_log_prob,
}


def _incomplete_log_prob(x, layout, params, want_dev=False):
    """Per-component log-densities of the incomplete rows, and conditional means.

    Returns
    -------
    log_prob : ndarray of shape (n_i, K)
        In the order of ``layout.incomplete``.
    cond_means : ndarray of shape (K, n_i, d) or None
        Each row completed by its conditional expectation under each component.
    """
    K, d = params.means.shape
    out = np.empty((layout.incomplete.size, K))
    cond = np.empty((K, layout.incomplete.size, d)) if want_dev else None
    _INCOMPLETE_LOG_PROB[params.covariance_type](x, layout, params, out, cond)
    return out, cond


def log_prob_missing(x, params):
    """Weighted log-densities of the observed features of each row, shape (n, K).

    A row with no observed value has the mixture weights' logarithms (the density of an
    empty observation is one), so its responsibilities are the mixture weights.
    """
    layout = block_layout(x)
    if layout.all_complete:
        return log_prob_block(x, params)
    out = np.empty((x.shape[0], params.n_components))
    if layout.complete.size:
        out[layout.complete] = log_prob_block(x[layout.complete], params)
    if layout.incomplete.size:
        out[layout.incomplete] = _incomplete_log_prob(x, layout, params)[0]
    with np.errstate(divide="ignore"):
        out[layout.skipped] = np.log(params.weights)
    return out


def impute_block(x, params):
    """Conditional expectation of the missing values of a block under a mixture.

    ``E[x_m | x_o] = sum_k r_k(x_o) E_k[x_m | x_o]`` with ``r_k(x_o)`` the
    responsibilities from the observed features; a row with no observed value gets the
    mixture mean. Observed values are returned unchanged.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        One block; NaN marks a missing value.
    params : MixtureParams
        The fitted mixture the missing values are conditioned on.

    Returns
    -------
    ndarray of shape (n, d), float64
        ``x`` with its missing values filled in.
    """
    layout = block_layout(x)
    out = np.array(x, dtype=np.float64, copy=True)
    if layout.all_complete:
        return out
    if layout.incomplete.size:
        log_prob, cond = _incomplete_log_prob(x, layout, params, want_dev=True)
        resp = log_prob.T
        normalize_log_prob(resp)
        filled = np.einsum("kn,knd->nd", resp, cond)
        rows = layout.incomplete
        miss = np.isnan(out[rows])
        part = out[rows]
        part[miss] = filled[miss]
        out[rows] = part
    if layout.skipped.size:
        out[layout.skipped] = params.weights @ params.means
    return out
