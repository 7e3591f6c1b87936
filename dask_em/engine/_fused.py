"""The fused E-step's tile loops, one class per covariance type, picked from one table.

:func:`dask_em.engine._stats.block_statistics` walks a block tile by tile; per tile, the
class of the covariance type writes each row's shifted, clamped weighted log-densities
into the shared ``lp`` (:meth:`_DiagonalTiles.log_prob`), the shared tail turns them into
responsibilities (:meth:`_Tail.responsibilities`), and the class adds the tile's moments
(:meth:`_DiagonalTiles.moments`). :data:`TILE_LOOPS` maps a covariance type to its class.

Full covariances at high dimension: the products dominate (``K d^2`` multiply-adds per
row each for the E-step and the scatter), and OpenBLAS runs thin shapes far below its
square-matrix rate. So the features go in blocks of ``b`` (:func:`feature_block`), and
each product is one wide GEMM over all components of a block:

- E-step: rows ``(k, j)`` of block i of ``P_k^T`` times ``Z^T`` restricted to the columns
  where some ``P_k^T`` of the block is not zero. ``P_k`` is triangular, so that skips
  about half of the work for many blocks (``(nb + 1) / (2 nb)`` of it is left for nb
  blocks), whichever of upper or lower it is (a start from ``precisions_init`` is lower).
- Scatter: rows ``(k, j)`` of block i of ``r_k (z - o_k)`` times the columns of ``Z`` up to
  the block's last feature: the lower triangle (and the diagonal blocks) of every
  component's scatter, mirrored at the end. Also ``(nb + 1) / (2 nb)`` of the work.

From d = 64 on, blocks thinner than 16 features only thinned the products further; below,
a quarter of d did best; at d <= 4 there is one block (the plain wide product). float32
tiles take blocks of 32 from d = 512. Per-block
scratch is ``K b`` rows of the tile, whatever d is; the running sums are the lower block
triangle, ``K d (d + b) / 2`` float64.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import numpy as np

from dask_em.engine import _kernels, _math
from dask_em.engine._scratch import thread_array

# Features per block of the full-covariance products (see feature_block), measured as
# benchmarks/highd_limits.kernel_block_times does (table in docs/user_guide/performance.rst):
# one block's statistics on one thread, float64, thread CPU time, blocks of
# 4/8/16/32/d features. 16 was best or within noise of it from d = 64 to 256 (d=256 K=8:
# 16 -> 294-327 ms, 32 -> 301, 64 -> 335, one block -> 554; d=128 K=16: 16 -> 172-197,
# 128 -> 312-617); below d = 64 a quarter of d was (d=32 K=16: 8 -> 68, 16 -> 80,
# 32 -> 91; d=16 K=8: 4 -> 31, 8 -> 34, 16 -> 46). At d = 4 one block tied with two.
_FEATURE_BLOCK = 16
_SMALLEST_BLOCK = 4
# float32 tiles from d = 512 on take blocks of 32: two block tasks at once on 2 threads
# (2 x 25000 rows, BLAS 1 thread each, seconds per pair) d=512 K=8 16 -> 0.87-0.96,
# 32 -> 0.79-0.88; K=16 (12000 rows) 0.84-0.85 -> 0.80-0.83; d=768 K=8 (12000 rows)
# 1.00-1.14 -> 0.89-0.95. Below, 32 was no better (d=256 K=8 and d=384 K=8 within 3%)
# or worse (d=128 K=16: 0.55-0.57 -> 0.58-0.60); float64 did not gain at d=512 or 768.
_WIDE_FLOAT32_FROM = 512


def feature_block(n_features: int, n_components: int, itemsize: int = 8) -> int:
    """Features per block of the full-covariance products: a quarter of d between 4 and
    16 (so one block up to d = 4, 16 from d = 64 on), and 32 for float32 tiles (an
    ``itemsize`` of 4) from d = 512 on. ``n_components`` did not move the best block size
    in the range measured (K = 8 to 16)."""
    widest = _FEATURE_BLOCK
    if itemsize == 4 and n_features >= _WIDE_FLOAT32_FROM:
        widest = 2 * _FEATURE_BLOCK
    return int(min(n_features, max(_SMALLEST_BLOCK, min(widest, n_features // 4))))


class _Tail:
    """What every type's tile shares: the log-density scratch, ``exp``, each row's
    log-sum-exp and the responsibilities (times the row weights)."""

    def __init__(self, n_components, m_max, dtype, const):
        self.lp = thread_array("lp", (n_components, m_max), dtype)
        self.mx = thread_array("mx", m_max, dtype)
        self.s = thread_array("s", m_max, dtype)
        # Each row's log-sum-exp in the tiles' dtype: float32's error there (~1e-7 of
        # log K) is far below what the float64 sums across rows keep; its SIMD log is
        # twice as fast.
        self.log_s = thread_array("log_s", m_max, dtype)
        self.const = const.astype(dtype)
        self.floor = dtype.type(_math._EXP_FLOOR[dtype.itemsize])
        self.exp_floor = dtype.type(np.exp(self.floor))

    def responsibilities(self, m, w, use_w, nk) -> float:
        """From ``lp`` (shifted and clamped) to responsibilities in ``lp``; their sums
        go into ``nk``; returns the tile's ``sum_i w_i log p(x_i)``."""
        lp = self.lp
        np.exp(lp[:, :m], out=lp[:, :m])
        _kernels.tile_row_sums(lp, m, self.exp_floor, self.s)
        np.log(self.s[:m], out=self.log_s[:m])
        return _kernels.tile_responsibilities(
            lp, self.mx, self.log_s, m, w if use_w else self.s, use_w, self.s, nk
        )


class _DiagonalTiles:
    """Diagonal and spherical covariances: everything in the compiled kernels."""

    def __init__(self, x, params, dtype, m_max, center, tail):
        K, d = params.n_components, params.n_features
        prec = np.asarray(params.precisions_cholesky, dtype=np.float64) ** 2
        if params.covariance_type == "spherical":
            prec = np.repeat(prec[:, None], d, axis=1)
        self.spherical = params.covariance_type == "spherical"
        self.prec = prec.astype(dtype)
        self.b = np.ascontiguousarray(params.means - center, dtype=dtype)
        self.x, self.center, self.tail = x, center, tail
        self.xt = thread_array("xt", (d, m_max), dtype)
        self.s1, self.s2 = np.zeros((K, d)), np.zeros((K, d))

    def log_prob(self, a, m):
        t = self.tail
        _kernels.diag_tile_log_prob(
            self.x, a, m, self.center, self.b, self.prec, t.const, t.floor, self.xt, t.lp, t.mx
        )

    def moments(self, m):
        _kernels.diag_tile_moments(self.tail.lp, self.xt, m, self.s1, self.s2)

    def finish(self):
        """``(s1, s2)`` in the covariance type's shapes."""
        return self.s1, self.s2.sum(axis=1) if self.spherical else self.s2


class _FullTiles:
    """Full covariances: wide products by feature blocks (see the module docstring)."""

    def __init__(self, x, params, dtype, m_max, center, tail):
        K, d = params.n_components, params.n_features
        self.blocks = factor_blocks(params, center, dtype)
        # The scratch follows the blocks' own width (the first block is the widest).
        b = self.blocks[0].j1 - self.blocks[0].j0
        self.offsets = component_offsets(params, center)
        self.off = self.offsets.astype(dtype)
        self.x, self.center, self.tail, self.dtype = x, center, tail, dtype
        self.zt = thread_array("zt", d * m_max, dtype)
        self.y = thread_array("y", K * b * m_max, dtype)
        self.wbuf = thread_array("wbuf", K * b * m_max, dtype)
        # float32 products go through this scratch into the float64 sums.
        self.prod = thread_array("prod", K * b * d, dtype)
        # The lower block triangle of every component's scatter, block by block (not
        # scratch: a fresh block of statistics, K d (d + b) / 2 float64).
        self.acc = [np.zeros((K * (blk.j1 - blk.j0), blk.j1)) for blk in self.blocks]
        self.s1 = np.zeros((K, d))

    def _tile_design(self, m):
        return self.zt[: self.offsets.shape[1] * m].reshape(-1, m)

    def log_prob(self, a, m):
        t = self.tail
        zt = self._tile_design(m)
        _kernels.full_tile_design(self.x, a, m, self.center, zt)
        t.lp[:, :m] = 0.0
        for blk in self.blocks:
            y = self.y[: blk.matrix.shape[0] * m].reshape(-1, m)
            np.matmul(blk.matrix, zt[blk.lo : blk.hi], out=y)
            _kernels.full_tile_add_squares(y, m, blk.bias, t.lp)
        _kernels.tile_finish_log_prob(t.lp, m, t.const, t.floor, t.mx)

    def moments(self, m):
        zt = self._tile_design(m)
        for blk, acc in zip(self.blocks, self.acc, strict=True):
            wbuf = self.wbuf[: acc.shape[0] * m].reshape(-1, m)
            _kernels.full_tile_weigh(self.tail.lp, zt, m, blk.j0, self.off, wbuf, self.s1)
            prod = self.prod[: acc.size].reshape(acc.shape)
            np.add(acc, np.matmul(wbuf, zt[: blk.j1].T, out=prod), out=acc)

    def finish(self):
        """``(s1, s2)``: each component's scatter about its offset, packed (its lower
        triangle, shape (K, d (d + 1) / 2), :meth:`~dask_em.engine._stats.SuffStats.packed`'s
        layout) straight from the blocks: the d x d scatters are never built in the task
        (75 MB at K=16, d=768; mirroring and packing them took 23 ms of every block task
        at d=512, K=8, a tenth of a float32 one)."""
        K, d = self.s1.shape
        # Each block's sums go as they are packed.
        starts = [blk.j0 for blk in self.blocks]
        self.blocks = None
        s2 = np.empty((K, d * (d + 1) // 2))
        for j0 in starts:
            _kernels.full_pack_block(self.acc.pop(0), j0, self.s1, self.offsets, s2)
        return self.s1, s2


# E-step factor blocks by mixture and tile dtype. Every block task of a pass gets the
# same parameters object (one per worker on a cluster, where they travel once under their
# own key), and building the blocks took 12 ms of each block task at d=512, K=8 (a
# twentieth of a float32 one). An entry goes with its parameters object.
_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FACTORS_LOCK = threading.Lock()


def factor_blocks(params, center, dtype) -> list:
    """The :class:`_Block` list of a full mixture's E-step for tiles of ``dtype``,
    centred on ``center`` (``params.center``), built once per parameters object."""
    key = np.dtype(dtype).str
    with _FACTORS_LOCK:
        cached = _FACTORS.get(params, {}).get(key)
    if cached is None:
        cached = _build_factor_blocks(params, center, dtype)
        with _FACTORS_LOCK:
            _FACTORS.setdefault(params, {})[key] = cached
    return cached


def _build_factor_blocks(params, center, dtype) -> list:
    d = params.n_features
    b = feature_block(d, params.n_components, np.dtype(dtype).itemsize)
    # Built block by block from the factors (the stacked (K*d, d+1) matrix of
    # _math.prepare_log_prob would be 2 x K d^2 float64 more at once: 150 MB at
    # K=16, d=768 on a worker of 1 GiB).
    chol = params.precisions_cholesky
    # Batched products, not einsum: einsum's loop took 88 ms of every block task at
    # d=512, K=8 (a tenth of a pass).
    bias = -np.matmul((params.means - center)[:, None, :], chol)[:, 0, :]  # (K, d)
    return [_Block.of(chol, bias, j0, min(d, j0 + b), dtype) for j0 in range(0, d, b)]


class _Block(NamedTuple):
    """One feature block of the E-step product (see :class:`_FullTiles`).

    Attributes
    ----------
    j0, j1 : int
        Its first and one past its last feature.
    lo, hi : int
        The columns where some component's ``P_k^T`` row of the block is not zero.
    matrix : ndarray of shape (K*(j1 - j0), hi - lo)
        Those rows and columns, rows ``(k, j)``, tile dtype.
    bias : ndarray of shape (K*(j1 - j0),)
        The rows' offsets ``-(P_k^T (mu_k - c))_j``, tile dtype.
    """

    j0: int
    j1: int
    lo: int
    hi: int
    matrix: np.ndarray
    bias: np.ndarray

    @classmethod
    def of(cls, chol, bias, j0, j1, dtype):
        """Block ``j0:j1`` from the precision factors ``chol`` (K, d, d) and the offsets
        ``bias`` (K, d) of the whitened rows."""
        K, d, _ = chol.shape
        # Rows (k, j) of P_k^T are columns j of P_k.
        block = chol[:, :, j0:j1].transpose(0, 2, 1).reshape(K * (j1 - j0), d)
        nonzero = np.flatnonzero(np.any(block != 0.0, axis=0))
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, d)
        matrix = np.ascontiguousarray(block[:, lo:hi], dtype=dtype)
        return cls(
            j0, j1, lo, hi, matrix, np.ascontiguousarray(bias[:, j0:j1].reshape(-1), dtype=dtype)
        )


def component_offsets(params, center):
    """Each component's reference point minus the block's centre, shape (K, d)."""
    return component_reference(params) - center


def component_reference(params):
    """Points the moments of each component are taken about, shape (K, d)."""
    if params.covariance_type == "full":
        return np.array(params.means, dtype=np.float64)
    return np.broadcast_to(params.center, params.means.shape).copy()


# The compiled tile loop of each covariance type (tied runs numpy tiles in _stats).
TILE_LOOPS = {"full": _FullTiles, "diag": _DiagonalTiles, "spherical": _DiagonalTiles}
