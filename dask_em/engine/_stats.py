"""Additive sufficient statistics of a Gaussian mixture, and the fused per-block E-step.

One block of rows and the current parameters go in; a small :class:`SuffStats` comes out.
Statistics of disjoint blocks add up to the statistics of their union, so a cluster only
ever moves these small values, never the rows or the N x K responsibilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.engine import _kernels, _math
from dask_em.engine._errors import raise_non_finite
from dask_em.engine._scratch import thread_array


@dataclass(frozen=True, eq=False)
class SuffStats:
    """Sufficient statistics of a set of rows under one mixture.

    Component k's moments are taken about a reference point ``reference[k]``, the same
    for every block of one E-step, so that they add exactly; a reference near the data
    keeps the digits of data with a large offset. Full covariances use each component's
    current mean (exact like scikit-learn's ``X - mean``, however far apart the components
    are); the other types share one point near the data's mean.

    Attributes
    ----------
    covariance_type : str
    reference : ndarray of shape (K, d)
    nk : ndarray of shape (K,)
        Responsibility sums.
    s1 : ndarray of shape (K, d)
        ``sum_i r_ik (x_i - reference[k])``.
    s2 : ndarray
        Second moments about the references: full (K, d, d), tied (d, d) pooled over
        components (all references equal), diag (K, d), spherical (K,).
    loglik : float
        ``sum_i w_i log p(x_i)`` under the parameters of the E-step.
    n_rows : int
        Rows seen.
    weight_total : float
        Sum of row weights (equals ``n_rows`` without weights).
    """

    covariance_type: str
    reference: np.ndarray
    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    loglik: float
    n_rows: int
    weight_total: float

    @classmethod
    def zero(cls, covariance_type, reference):
        n_components, d = reference.shape
        s2_shape = _math.covariance_shape(covariance_type, n_components, d)
        return cls(
            covariance_type,
            reference,
            np.zeros(n_components),
            np.zeros((n_components, d)),
            np.zeros(s2_shape),
            0.0,
            0,
            0.0,
        )

    def __add__(self, other: SuffStats) -> SuffStats:
        if not isinstance(other, SuffStats):
            return NotImplemented
        if self.covariance_type != other.covariance_type or not np.array_equal(
            self.reference, other.reference
        ):
            raise ValueError("cannot add statistics taken about different references or types")
        return SuffStats(
            self.covariance_type,
            self.reference,
            self.nk + other.nk,
            self.s1 + other.s1,
            self.s2 + other.s2,
            self.loglik + other.loglik,
            self.n_rows + other.n_rows,
            self.weight_total + other.weight_total,
        )


# Rows per tile: the widest per-tile scratch array stays near this many bytes, so a
# tile's temporaries live in the core's cache.
_TILE_BYTES = 2**20


def tile_rows(covariance_type: str, n_components: int, n_features: int, itemsize: int = 8) -> int:
    """Rows per tile for a mixture's shape and the compute dtype's item size."""
    q = _math.design_width(covariance_type, n_features)
    widest = {
        "full": n_components * max(q, n_features),
        "tied": q + n_components,
    }.get(covariance_type, max(q, n_components))
    return int(min(8192, max(256, _TILE_BYTES // (itemsize * widest))))


class _Tiles:
    """Scratch buffers for one block, reused by every tile (no page faults per tile)."""

    def __init__(self, n_rows, n_features, n_components, covariance_type, dtype=np.float64):
        dtype = np.dtype(dtype)
        self.q = _math.design_width(covariance_type, n_features)
        self.m = tile_rows(covariance_type, n_components, n_features, dtype.itemsize)
        m = min(self.m, max(n_rows, 1))
        self.z = np.empty((self.q, m), dtype)
        self.w = np.empty((n_components, m), dtype)
        y_rows = n_components * n_features if covariance_type == "full" else n_features
        self.y = np.empty((y_rows, m), dtype)
        shape = _math.moment_buffer_shape(covariance_type, n_components, n_features, m)
        self.buf = np.empty(shape, dtype)

    def ranges(self, n_rows):
        for start in range(0, n_rows, self.m):
            stop = min(n_rows, start + self.m)
            yield start, stop, stop - start

    def design(self, m):
        return self.z[:, :m]

    def scratch(self, covariance_type, m):
        """(log-probabilities, y scratch, moment scratch) views for a tile of m rows."""
        buf = self.buf if covariance_type in ("diag", "spherical") else self.buf[:, :m]
        return self.w[:, :m], self.y[:, :m], buf


def compute_dtype_for(x_dtype, compute_dtype=None) -> np.dtype:
    """The tiles' arithmetic dtype: float32 for float32 input unless told otherwise.

    Parameters
    ----------
    x_dtype : numpy dtype of the data
    compute_dtype : {None, 'auto', 'float32', 'float64'} or numpy dtype
    """
    if compute_dtype is None or (isinstance(compute_dtype, str) and compute_dtype == "auto"):
        return np.dtype(np.float32 if np.dtype(x_dtype) == np.float32 else np.float64)
    dt = np.dtype(compute_dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(
            f"compute_dtype must be 'auto', 'float32' or 'float64', got {compute_dtype!r}"
        )
    return dt


def component_reference(params):
    """Points the moments of each component are taken about, shape (K, d)."""
    if params.covariance_type == "full":
        return np.array(params.means, dtype=np.float64)
    return np.broadcast_to(params.center, params.means.shape).copy()


def log_prob_block(x, params):
    """Weighted log-probabilities of one block under one mixture, in float64.

    Parameters
    ----------
    x : ndarray of shape (n, d)
    params : MixtureParams

    Returns
    -------
    ndarray of shape (n, K), float64
    """
    n, d = x.shape
    ct = params.covariance_type
    c = params.center
    prepared = _math.prepare_log_prob(
        params.means - c, params.weights, params.precisions_cholesky, ct
    )
    tiles = _Tiles(n, d, params.n_components, ct)
    out = np.empty((params.n_components, n))
    for a, b, m in tiles.ranges(n):
        z = _math.fill_design(tiles.design(m), x[a:b], c, ct)
        _, y, _ = tiles.scratch(ct, m)
        _math.tile_log_prob(z, prepared, ct, out[:, a:b], y)
    return out.T


def block_statistics(
    x, params_list, row_offset=0, block_index=0, sample_weight=None, compute_dtype=None
):
    """The fused E-step of one block for one or more candidate mixtures.

    Tile by tile, computes log-densities, their log-sum-exp and the responsibilities, and
    folds them at once into running moments, so the responsibilities never outlive a
    tile and never leave this call.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        One block of rows, float32 or float64.
    params_list : sequence of MixtureParams
        Candidates that all use this block while it is in memory.
    row_offset : int
        Global index of the block's first row (for error messages).
    block_index : int
        The block's index (for error messages).
    sample_weight : ndarray of shape (n,), optional
    compute_dtype : {None, 'auto', 'float32', 'float64'}
        Arithmetic of the tiles (see :func:`compute_dtype_for`; tied covariances always
        use float64); sums across tiles, the log-likelihood and the returned
        statistics are float64 either way.

    Returns
    -------
    tuple of SuffStats, one per candidate

    Raises
    ------
    NonFiniteError
        If the block holds NaN or infinity.
    """
    n, d = x.shape
    out = []
    for params in params_list:
        ct, c, K = params.covariance_type, params.center, params.n_components
        dtype = compute_dtype_for(x.dtype, compute_dtype)
        if ct != "tied":
            out.append(
                _compiled_block_statistics(
                    x, params, dtype, sample_weight, row_offset, block_index
                )
            )
            continue
        # Tied: numpy tiles, always float64. The pooled scatter is taken about one point
        # for all components; in single precision it can cancel to a non-positive-
        # definite matrix when the components are far apart relative to their spread.
        # Tied is cheap anyway.
        dtype = np.dtype(np.float64)
        prepared = _math.prepare_log_prob(
            params.means - c, params.weights, params.precisions_cholesky, ct, dtype
        )
        tiles = _Tiles(n, d, K, ct, dtype)
        acc = _math.new_accumulator(ct, K, d)
        reference = component_reference(params)
        loglik = 0.0
        for a, b, m in tiles.ranges(n):
            z = _math.fill_design(tiles.design(m), x[a:b], c, ct)
            w, y, buf = tiles.scratch(ct, m)
            w = _math.tile_log_prob(z, prepared, ct, w, y)
            log_norm = _math.normalize_log_prob(w)
            if not np.all(np.isfinite(log_norm)):
                bad = np.flatnonzero(~np.isfinite(log_norm)) + a
                raise_non_finite(x, bad, block_index, row_offset)
            sw = None
            if sample_weight is not None:
                sw = sample_weight[a:b]
                w *= sw
                loglik += float(np.dot(sw, log_norm))
            else:
                loglik += float(np.sum(log_norm))
            _math.accumulate_moments(acc, z, w, ct, sw, buf)
        nk, s1, s2 = _math.finish_moments(acc, ct, d)
        total = float(n if sample_weight is None else sample_weight.sum())
        out.append(SuffStats(ct, reference, nk, s1, s2, loglik, n, total))
    return tuple(out)


def _compiled_block_statistics(x, params, dtype, sample_weight, row_offset, block_index):
    """:func:`block_statistics` of one full, diag or spherical mixture, with the compiled
    kernels of :mod:`dask_em.engine._kernels` (no GIL held outside BLAS and ``exp``)."""
    n, d = x.shape
    ct, c, K = params.covariance_type, params.center, params.n_components
    const = _math.log_prob_const(params.weights, params.precisions_cholesky, ct, d)
    const = const.astype(dtype)
    floor = dtype.type(_math._EXP_FLOOR[dtype.itemsize])
    exp_floor = dtype.type(np.exp(floor))
    m_max = min(tile_rows(ct, K, d, dtype.itemsize), max(n, 1))
    center = np.ascontiguousarray(c, dtype=np.float64)
    # The tiles' scratch stays with the thread for its next block (see _scratch).
    lp = thread_array("lp", (K, m_max), dtype)
    mx = thread_array("mx", m_max, dtype)
    s = thread_array("s", m_max, dtype)
    # Each row's log-sum-exp in the tiles' dtype: float32's error there (~1e-7 of log K)
    # is far below what the float64 sums across rows keep; its SIMD log is twice as fast.
    log_s = thread_array("log_s", m_max, dtype)
    use_w = sample_weight is not None
    w_all = np.ascontiguousarray(sample_weight, dtype=np.float64) if use_w else s
    reference = component_reference(params)
    if ct == "full":
        prepared, _ = _math.prepare_log_prob(
            params.means - c, params.weights, params.precisions_cholesky, ct
        )
        # The offset column goes to the log-density kernel as a bias (see _kernels).
        matrix = np.ascontiguousarray(prepared[:, :d], dtype=dtype)
        bias = np.ascontiguousarray(prepared[:, d], dtype=dtype)
        offsets = reference - c
        off = offsets.astype(dtype)
        zt = thread_array("zt", (d, m_max), dtype)
        y = thread_array("y", (K * d, m_max), dtype)
        wbuf = thread_array("wbuf", (K * d, m_max), dtype)
        prod = thread_array("prod", (K * d, d), dtype)
        acc = thread_array("acc", (K * d, d), np.float64)
        acc.fill(0.0)
        nk, s1 = np.zeros(K), np.zeros((K, d))

        def tile(a, m, w):
            _kernels.full_tile_design(x, a, m, center, zt)
            z = zt[:, :m]
            np.matmul(matrix, z, out=y[:, :m])
            _kernels.full_tile_log_prob(y, m, bias, const, floor, lp, mx)
            np.exp(lp[:, :m], out=lp[:, :m])
            _kernels.tile_row_sums(lp, m, exp_floor, s)
            np.log(s[:m], out=log_s[:m])
            ll = _kernels.full_tile_weigh(lp, mx, log_s, zt, m, w, use_w, off, s, wbuf, nk, s1)
            np.add(acc, np.matmul(wbuf[:, :m], z.T, out=prod), out=acc)
            return ll

    else:
        prec = np.asarray(params.precisions_cholesky, dtype=np.float64) ** 2
        if ct == "spherical":
            prec = np.repeat(prec[:, None], d, axis=1)
        prec = prec.astype(dtype)
        b = np.ascontiguousarray(params.means - c, dtype=dtype)
        xt = thread_array("xt", (d, m_max), dtype)
        nk, s1, s2 = np.zeros(K), np.zeros((K, d)), np.zeros((K, d))

        def tile(a, m, w):
            _kernels.diag_tile_log_prob(x, a, m, center, b, prec, const, floor, xt, lp, mx)
            np.exp(lp[:, :m], out=lp[:, :m])
            _kernels.tile_row_sums(lp, m, exp_floor, s)
            np.log(s[:m], out=log_s[:m])
            return _kernels.diag_tile_moments(lp, mx, log_s, xt, m, w, use_w, s, nk, s1, s2)

    loglik = 0.0
    # Non-finite input turns into NaN/inf in the products; it is reported below.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for a in range(0, n, m_max):
            m = min(m_max, n - a)
            ll = tile(a, m, w_all[a : a + m] if use_w else w_all)
            if not np.isfinite(ll):
                # Rare: every bad row of the block for the message (float64 may not
                # overflow where the tile dtype did; then this tile's rows).
                rows = np.flatnonzero(~np.isfinite(row_log_likelihood(x, params)))
                if rows.size == 0:
                    rows = a + np.flatnonzero(~np.isfinite(mx[:m]))
                raise_non_finite(x, rows, block_index, row_offset)
            loglik += ll
    if ct == "full":
        s2 = _math.full_scatter_about_offsets(acc, s1, offsets)
    elif ct == "spherical":
        s2 = s2.sum(axis=1)
    total = float(n if sample_weight is None else sample_weight.sum())
    return SuffStats(ct, reference, nk, s1, s2, loglik, n, total)


def row_log_likelihood(x, params):
    """``log p(x_i)`` of every row of one block, shape (n,), float64 (not finite where a
    row holds NaN or infinity)."""
    return _math.normalize_log_prob(log_prob_block(x, params).T)


def responsibility_statistics(
    x, resp, center, covariance_type, sample_weight=None, row_offset=0, block_index=0
):
    """Statistics of one block for given responsibilities (used by initialisation).

    Parameters
    ----------
    x : ndarray of shape (n, d)
    resp : ndarray of shape (n, K)
    center : ndarray of shape (d,)
    row_offset, block_index : int
        Where the block sits (for error messages).

    Returns
    -------
    SuffStats
        With ``loglik`` zero: no mixture produced these responsibilities.
    """
    n, d = x.shape
    K = resp.shape[1]
    tiles = _Tiles(n, d, K, covariance_type)
    acc = _math.new_accumulator(covariance_type, K, d)
    for a, b, m in tiles.ranges(n):
        z = _math.fill_design(tiles.design(m), x[a:b], center, covariance_type)
        if not np.all(np.isfinite(z)):
            bad = np.flatnonzero(~np.isfinite(z).all(axis=0)) + a
            raise_non_finite(x, bad, block_index, row_offset)
        r = np.array(resp[a:b].T, dtype=np.float64)
        sw = None
        if sample_weight is not None:
            sw = sample_weight[a:b]
            r *= sw
        if covariance_type == "tied":
            # The pooled scatter weighs each row by its total responsibility, which
            # need not be one here (e.g. responsibilities on a few chosen rows).
            sw = r.sum(axis=0)
        _, _, buf = tiles.scratch(covariance_type, m)
        _math.accumulate_moments(acc, z, r, covariance_type, sw, buf)
    nk, s1, s2 = _math.finish_moments(acc, covariance_type, d)
    total = float(n if sample_weight is None else sample_weight.sum())
    reference = np.broadcast_to(np.asarray(center, dtype=np.float64), (K, d)).copy()
    return SuffStats(covariance_type, reference, nk, s1, s2, 0.0, n, total)
