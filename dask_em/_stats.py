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

    Moments are taken about ``center`` (the same point for every block of one E-step) so
    that they add exactly and keep their digits when the data has a large offset.

    Attributes
    ----------
    covariance_type : str
    center : ndarray of shape (d,)
    nk : ndarray of shape (K,)
        Responsibility sums.
    s1 : ndarray of shape (K, d)
        ``sum_i r_ik (x_i - center)``.
    s2 : ndarray
        Second moments about ``center``: full (K, d, d), tied (d, d) pooled over
        components, diag (K, d), spherical (K,).
    loglik : float
        ``sum_i w_i log p(x_i)`` under the parameters of the E-step.
    n_rows : int
        Rows seen.
    weight_total : float
        Sum of row weights (equals ``n_rows`` without weights).
    """

    covariance_type: str
    center: np.ndarray
    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    loglik: float
    n_rows: int
    weight_total: float

    @classmethod
    def zero(cls, covariance_type, center, n_components):
        d = center.shape[0]
        s2_shape = {
            "full": (n_components, d, d),
            "tied": (d, d),
            "diag": (n_components, d),
            "spherical": (n_components,),
        }[covariance_type]
        return cls(
            covariance_type,
            center,
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
            self.center, other.center
        ):
            raise ValueError("cannot add statistics taken about different centres or types")
        return SuffStats(
            self.covariance_type,
            self.center,
            self.nk + other.nk,
            self.s1 + other.s1,
            self.s2 + other.s2,
            self.loglik + other.loglik,
            self.n_rows + other.n_rows,
            self.weight_total + other.weight_total,
        )


def _centred(x, center):
    # Subtracting in float64 upcasts float32 blocks in the same pass.
    return np.subtract(x, center, dtype=np.float64)


def _raise_non_finite(x, bad_rows, block_index, row_offset):
    row = int(bad_rows[0])
    cols = np.flatnonzero(~np.isfinite(x[row]))
    where = f"block {block_index} (rows {row_offset}-{row_offset + x.shape[0] - 1})"
    if cols.size:
        raise NonFiniteError(
            f"Input contains NaN or infinity: {where}, first at row {row_offset + row}, "
            f"column {int(cols[0])} ({x[row, cols[0]]!r}), {bad_rows.size} bad row(s) in "
            "this block. Remove or impute these values before fitting."
        )
    raise NonFiniteError(
        f"Numerical overflow in the E-step: {where}, row {row_offset + row} has a "
        "non-finite log-likelihood. Scale the input data or increase reg_covar."
    )


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
    c = params.center
    return _math.weighted_log_prob(
        _centred(x, c),
        params.means - c,
        params.weights,
        params.precisions_cholesky,
        params.covariance_type,
    )


def block_statistics(x, params_list, row_offset=0, block_index=0, sample_weight=None):
    """The fused E-step of one block for one or more candidate mixtures.

    Computes log-densities, their log-sum-exp and the responsibilities, and reduces them
    at once to statistics, so the responsibilities never leave this call.

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
    out = []
    for params in params_list:
        c = params.center
        xc = _centred(x, c)
        wlp = _math.weighted_log_prob(
            xc,
            params.means - c,
            params.weights,
            params.precisions_cholesky,
            params.covariance_type,
        )
        log_norm, resp = _math.normalize_log_prob(wlp)
        finite = np.isfinite(log_norm)
        if not finite.all():
            _raise_non_finite(x, np.flatnonzero(~finite), block_index, row_offset)
        out.append(_statistics(xc, resp, log_norm, c, params.covariance_type, sample_weight))
    return tuple(out)


def responsibility_statistics(x, resp, center, covariance_type, sample_weight=None):
    """Statistics of one block for given responsibilities (used by initialisation).

    Parameters
    ----------
    x : ndarray of shape (n, d)
    resp : ndarray of shape (n, K)
    center : ndarray of shape (d,)

    Returns
    -------
    SuffStats
        With ``loglik`` zero: no mixture produced these responsibilities.
    """
    xc = _centred(x, center)
    if not np.all(np.isfinite(xc)):
        bad = np.flatnonzero(~np.isfinite(xc).all(axis=1))
        _raise_non_finite(x, bad, 0, 0)
    return _statistics(xc, resp, None, center, covariance_type, sample_weight)


def _statistics(xc, resp, log_norm, center, covariance_type, sample_weight):
    if sample_weight is not None:
        resp = resp * sample_weight[:, None]
        loglik = float(sample_weight @ log_norm) if log_norm is not None else 0.0
        weight_total = float(sample_weight.sum())
    else:
        loglik = float(log_norm.sum()) if log_norm is not None else 0.0
        weight_total = float(xc.shape[0])
    nk, s1, s2 = _math.moments(xc, resp, covariance_type, sample_weight)
    return SuffStats(covariance_type, center, nk, s1, s2, loglik, xc.shape[0], weight_total)
