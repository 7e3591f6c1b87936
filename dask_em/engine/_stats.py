"""Additive sufficient statistics of a Gaussian mixture, and the fused per-block E-step.

One block of rows and the current parameters go in; a small :class:`SuffStats` comes out.
Statistics of disjoint blocks add up to the statistics of their union, so a cluster only
ever moves these small values, never the rows or the N x K responsibilities.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from dask_em.engine import _math, _mstep_kernels
from dask_em.engine._errors import raise_non_finite
from dask_em.engine._fused import TILE_LOOPS, _Tail, component_reference, feature_block

__all__ = ["SuffStats", "block_statistics", "component_reference", "responsibility_statistics"]


@functools.lru_cache(maxsize=8)
def _tril(d: int):
    """Row and column indices of the lower triangle of a d x d matrix, row by row."""
    return np.tril_indices(d)


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

    def packed(self) -> SuffStats:
        """These statistics with a full type's scatter as its lower triangles, shape
        (K, d (d + 1) / 2): half the bytes of every copy a tree reduction holds and
        sends (75 MB -> 38 MB at K=16, d=768). Other types, and packed ones, as they are.
        Packed statistics add like unpacked ones; :meth:`unpacked` undoes it exactly.
        """
        if self.covariance_type != "full" or self.s2.ndim != 3:
            return self
        rows, cols = _tril(self.s2.shape[-1])
        return dataclasses.replace(self, s2=self.s2[:, rows, cols])

    def unpacked(self) -> SuffStats:
        """The inverse of :meth:`packed` (the upper triangles mirror the lower)."""
        if self.covariance_type != "full" or self.s2.ndim != 2:
            return self
        d = self.reference.shape[1]
        s2 = np.empty((self.s2.shape[0], d, d))
        _mstep_kernels.unpack_lower(np.ascontiguousarray(self.s2), s2)
        return dataclasses.replace(self, s2=s2)

    def _check_addable(self, other: SuffStats) -> None:
        if other.covariance_type != self.covariance_type or not np.array_equal(
            other.reference, self.reference
        ):
            raise ValueError("cannot add statistics taken about different references or types")

    def add_into(self, other: SuffStats) -> SuffStats:
        """``self + other``, with ``other``'s second moments added into ``self.s2``
        itself (the caller owns that buffer: a running sum) and the small arrays anew.
        A running sum of K=16, d=768 full statistics then holds two scatters, not three.
        """
        self._check_addable(other)
        return SuffStats(
            self.covariance_type,
            self.reference,
            self.nk + other.nk,
            self.s1 + other.s1,
            np.add(self.s2, other.s2, out=self.s2),
            self.loglik + other.loglik,
            self.n_rows + other.n_rows,
            self.weight_total + other.weight_total,
        )

    def __add__(self, other: SuffStats) -> SuffStats:
        if not isinstance(other, SuffStats):
            return NotImplemented
        return SuffStats.sum_of((self, other))

    @classmethod
    def sum_of(cls, values) -> SuffStats:
        """The sum of several statistics, their arrays added into one new buffer each
        (a tree node holds its inputs and one sum, not a chain of partial sums)."""
        first = values[0]
        for v in values[1:]:
            first._check_addable(v)
        arrays = [np.array(getattr(first, name), dtype=np.float64) for name in _ARRAYS]
        for v in values[1:]:
            for acc, name in zip(arrays, _ARRAYS, strict=True):
                acc += getattr(v, name)
        scalars = [sum(getattr(v, name) for v in values) for name in _SCALARS]
        return cls(first.covariance_type, first.reference, *arrays, *scalars)


# The fields :meth:`SuffStats.sum_of` adds, in the constructor's order.
_ARRAYS = ("nk", "s1", "s2")
_SCALARS = ("loglik", "n_rows", "weight_total")


# Rows per tile: the widest per-tile scratch array stays near this many bytes, so a
# tile's temporaries live in the core's cache.
_TILE_BYTES = 2**20


# Full covariances from d = 64 on (features in blocks of 16, see _fused.feature_block):
# the widest scratch is one feature block's rows of every component (K * 16 rows) or the
# tile's design (d rows), and tiles of ~2 MiB of those in float64 did best: one block's
# statistics on one thread (thread CPU time, benchmarks' start), rows per tile
# 256 / 512 / 1024 / 2048: d=128 K=16 0.378 / 0.351 / 0.351 / 0.384 s (2e4 rows);
# d=256 K=8 0.337 / 0.314 / 0.282 / 0.292 s (1e4 rows); d=512 K=8 flat within 5%;
# float32 at d=128 K=16 flat (0.149-0.160 s). Below d = 64 the 1 MiB rule above stays
# best (d=16 K=8: 963 rows 0.050 s, 512 0.058, 2048 0.058; d=32 K=16: 256 rows 0.141 s,
# 1024 0.157). At most 1024 float64 rows: d=64 K=8 was within noise from 256 to 2048.
_FULL_HIGH_D_TILE_BYTES = 2**21


def tile_rows(covariance_type: str, n_components: int, n_features: int, itemsize: int = 8) -> int:
    """Rows per tile for a mixture's shape and the compute dtype's item size."""
    b = feature_block(n_features, n_components, itemsize)
    if covariance_type == "full" and b >= 16:
        widest = max(n_components * b, n_features)
        # Bytes, not rows: float32 tiles get twice float64's rows. One block on one
        # thread could not tell them apart, but whole iterations on 2 threads (N=2e5,
        # d=128, K=16) took 0.806-0.876 s at 2048 rows against 0.887-0.913 at 1024, and
        # 0.896 against 1.034 s in two runs of the benchmark; at d=256 and 512 within
        # noise (0.87-0.93 s against 0.85-1.00; 1.63-1.70 against 1.63-1.75).
        rows = _FULL_HIGH_D_TILE_BYTES // (itemsize * widest)
        return int(min(8192 // itemsize, max(2048 // itemsize, rows)))
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


def log_prob_block(x, params):
    """Weighted log-probabilities ``log w_k + log p_k(x_i)`` of one block's rows
    ``x`` (n, d) under one mixture ``params``: shape (n, K), float64."""
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
    x,
    params_list,
    row_offset=0,
    block_index=0,
    sample_weight=None,
    compute_dtype=None,
    packed=False,
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
    packed : bool
        Return full covariances' scatters packed (:meth:`SuffStats.packed`), as a pass
        sends them: the kernel builds them so, and unpacking costs a copy.

    Returns
    -------
    tuple of SuffStats, one per candidate

    Raises
    ------
    NonFiniteError
        If the block holds NaN or infinity.
    """
    dtype = compute_dtype_for(x.dtype, compute_dtype)
    where = (sample_weight, row_offset, block_index)
    stats = (
        _BLOCK_STATISTICS[params.covariance_type](x, params, dtype, *where)
        for params in params_list
    )
    return tuple(s.packed() if packed else s.unpacked() for s in stats)


def _tied_block_statistics(x, params, dtype, sample_weight, row_offset, block_index):
    """:func:`block_statistics` of one tied mixture: numpy tiles, always float64.

    The pooled scatter is taken about one point for all components; in single precision
    it can cancel to a non-positive-definite matrix when the components are far apart
    relative to their spread. Tied is cheap anyway (one d x d scatter).
    """
    n, d = x.shape
    ct, c, K = params.covariance_type, params.center, params.n_components
    prepared = _math.prepare_log_prob(
        params.means - c, params.weights, params.precisions_cholesky, ct
    )
    tiles = _Tiles(n, d, K, ct)
    acc = _math.new_accumulator(ct, K, d)
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
    return _block_result(params, nk, s1, s2, loglik, n, sample_weight)


def _compiled_block_statistics(x, params, dtype, sample_weight, row_offset, block_index):
    """:func:`block_statistics` of one full, diag or spherical mixture, with the compiled
    tile loops of :mod:`dask_em.engine._fused` (no GIL held outside BLAS and ``exp``)."""
    n, d = x.shape
    ct, K = params.covariance_type, params.n_components
    const = _math.log_prob_const(params.weights, params.precisions_cholesky, ct, d)
    m_max = min(tile_rows(ct, K, d, dtype.itemsize), max(n, 1))
    center = np.ascontiguousarray(params.center, dtype=np.float64)
    # The tiles' scratch stays with the thread for its next block (see _scratch).
    tail = _Tail(K, m_max, dtype, const)
    loop = TILE_LOOPS[ct](x, params, dtype, m_max, center, tail)
    use_w = sample_weight is not None
    w_all = np.ascontiguousarray(sample_weight, dtype=np.float64) if use_w else None
    nk = np.zeros(K)
    loglik = 0.0
    # Non-finite input turns into NaN/inf in the products; it is reported below.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for a in range(0, n, m_max):
            m = min(m_max, n - a)
            loop.log_prob(a, m)
            ll = tail.responsibilities(m, w_all[a : a + m] if use_w else None, use_w, nk)
            if not np.isfinite(ll):
                # Rare: every bad row of the block for the message (float64 may not
                # overflow where the tile dtype did; then this tile's rows).
                rows = np.flatnonzero(~np.isfinite(row_log_likelihood(x, params)))
                if rows.size == 0:
                    rows = a + np.flatnonzero(~np.isfinite(tail.mx[:m]))
                raise_non_finite(x, rows, block_index, row_offset)
            loop.moments(m)
            loglik += ll
    s1, s2 = loop.finish()
    return _block_result(params, nk, s1, s2, loglik, n, sample_weight)


def _block_result(params, nk, s1, s2, loglik, n, sample_weight) -> SuffStats:
    total = float(n if sample_weight is None else sample_weight.sum())
    reference = component_reference(params)
    return SuffStats(params.covariance_type, reference, nk, s1, s2, loglik, n, total)


# The fused E-step of one mixture, by covariance type.
_BLOCK_STATISTICS = {
    "full": _compiled_block_statistics,
    "diag": _compiled_block_statistics,
    "spherical": _compiled_block_statistics,
    "tied": _tied_block_statistics,
}


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
