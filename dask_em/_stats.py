"""Additive sufficient statistics of a Gaussian mixture, and the fused per-block E-step.

One block of rows and the current parameters go in; a small :class:`SuffStats` comes out.
Statistics of disjoint blocks add up to the statistics of their union, so a cluster only
ever moves these small values, never the rows or the N x K responsibilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _math


class NonFiniteError(ValueError):
    """The input holds NaN or infinity (the message names the block and the row)."""


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
        s2_shape = {
            "full": (n_components, d, d),
            "tied": (d, d),
            "diag": (n_components, d),
            "spherical": (n_components,),
        }[covariance_type]
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


# Rows per tile: the tile's design matrix (rows x q float64) stays near 256 KB.
_TILE_BYTES = 2**18


def tile_rows(q: int) -> int:
    return int(min(8192, max(256, _TILE_BYTES // (8 * q))))


def _raise_non_finite(x, bad_rows, block_index, row_offset):
    row = int(bad_rows[0])
    cols = np.flatnonzero(~np.isfinite(x[row]))
    where = f"block {block_index} (rows {row_offset}-{row_offset + x.shape[0] - 1})"
    if cols.size:
        raise NonFiniteError(
            f"Input contains NaN or infinity: {where}, first at row {row_offset + row}, "
            f"column {int(cols[0])} ({float(x[row, cols[0]])}), {bad_rows.size} bad row(s) in "
            "this block. Remove or impute these values before fitting."
        )
    raise NonFiniteError(
        f"Numerical overflow in the E-step: {where}, row {row_offset + row} has a "
        "non-finite log-likelihood. Scale the input data or increase reg_covar."
    )


class _Tiles:
    """Scratch buffers for one block, reused by every tile (no page faults per tile)."""

    def __init__(self, n_rows, n_features, n_components, covariance_type):
        self.q = _math.design_width(covariance_type, n_features)
        self.m = tile_rows(self.q)
        m = min(self.m, max(n_rows, 1))
        self.z = np.empty((m, self.q))
        self.w = np.empty((n_components, m))
        self.y = np.empty((m, n_features))
        self.buf = np.empty((m, self.q))

    def ranges(self, n_rows):
        for start in range(0, n_rows, self.m):
            stop = min(n_rows, start + self.m)
            yield start, stop, stop - start


def component_reference(params):
    """Points the moments of each component are taken about, shape (K, d)."""
    if params.covariance_type == "full":
        return np.array(params.means, dtype=np.float64)
    return np.broadcast_to(params.center, params.means.shape).copy()


def log_prob_block(x, params):
    """Weighted log-probabilities of one block under one mixture.

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
        z = _math.fill_design(tiles.z[:m], x[a:b], c, ct)
        _math.tile_log_prob(z, prepared, ct, out[:, a:b], tiles.y[:m])
    return out.T


def block_statistics(x, params_list, row_offset=0, block_index=0, sample_weight=None):
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
        prepared = _math.prepare_log_prob(
            params.means - c, params.weights, params.precisions_cholesky, ct
        )
        tiles = _Tiles(n, d, K, ct)
        acc = _math.new_accumulator(ct, K, d)
        reference = component_reference(params)
        offsets = reference - c if ct == "full" else None
        loglik = 0.0
        for a, b, m in tiles.ranges(n):
            z = _math.fill_design(tiles.z[:m], x[a:b], c, ct)
            w = _math.tile_log_prob(z, prepared, ct, tiles.w[:, :m], tiles.y[:m])
            log_norm = _math.normalize_log_prob(w)
            if not np.all(np.isfinite(log_norm)):
                bad = np.flatnonzero(~np.isfinite(log_norm)) + a
                _raise_non_finite(x, bad, block_index, row_offset)
            sw = None
            if sample_weight is not None:
                sw = sample_weight[a:b]
                w *= sw
                loglik += float(sw @ log_norm)
            else:
                loglik += float(log_norm.sum())
            _math.accumulate_moments(acc, z, w, ct, sw, tiles.buf[:m], offsets)
        nk, s1, s2 = _math.finish_moments(acc, ct, d)
        total = float(n if sample_weight is None else sample_weight.sum())
        out.append(SuffStats(ct, reference, nk, s1, s2, loglik, n, total))
    return tuple(out)


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
        z = _math.fill_design(tiles.z[:m], x[a:b], center, covariance_type)
        if not np.all(np.isfinite(z)):
            bad = np.flatnonzero(~np.isfinite(z).all(axis=1)) + a
            _raise_non_finite(x, bad, block_index, row_offset)
        r = np.array(resp[a:b].T, dtype=np.float64)
        sw = None
        if sample_weight is not None:
            sw = sample_weight[a:b]
            r *= sw
        if covariance_type == "tied":
            # The pooled scatter weighs each row by its total responsibility, which
            # need not be one here (e.g. responsibilities on a few chosen rows).
            sw = r.sum(axis=0)
        _math.accumulate_moments(acc, z, r, covariance_type, sw, tiles.buf[:m])
    nk, s1, s2 = _math.finish_moments(acc, covariance_type, d)
    total = float(n if sample_weight is None else sample_weight.sum())
    reference = np.broadcast_to(np.asarray(center, dtype=np.float64), (K, d)).copy()
    return SuffStats(covariance_type, reference, nk, s1, s2, 0.0, n, total)
