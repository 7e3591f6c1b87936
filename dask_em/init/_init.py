"""Initial parameters: from chosen rows, from random responsibilities, or given arrays.

Every method draws its random numbers so that the result depends on ``random_state`` and
on the global row order only, never on how the rows are chunked or where blocks run.
"""

from __future__ import annotations

import numpy as np

from dask_em.engine import _math
from dask_em.engine._params import MixtureParams, m_step
from dask_em.engine._reduce import compute_pass
from dask_em.engine._stats import SuffStats, responsibility_statistics

# Random responsibilities are drawn per logical block of this many rows, each from its
# own seeded stream, so that the numbers do not depend on the dask chunking.
LOGICAL_BLOCK_ROWS = 65536


def params_from_stats(stats: SuffStats, reg_covar: float, eps: float) -> MixtureParams:
    """Initial parameters from the statistics of initial responsibilities."""
    return m_step(stats, reg_covar, eps)


def random_from_data(x, n_components, covariance_type, reg_covar, eps, rng):
    """Start each component on a distinct row drawn uniformly (scikit-learn's draw).

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    rng : numpy.random.RandomState
        Advanced exactly as scikit-learn's ``random_from_data`` advances it.

    Returns
    -------
    MixtureParams
        Means on the chosen rows, covariances ``reg_covar * I``, equal weights.
    """
    indices = rng.choice(x.shape[0], size=n_components, replace=False)
    order = np.argsort(indices)
    rows_sorted = np.asarray(x[np.sort(indices)].compute(), dtype=np.float64)
    means = np.empty_like(rows_sorted)
    means[order] = rows_sorted
    # One row per component: its scatter is exactly zero, so the covariance is
    # reg_covar alone (what the one-hot responsibilities give scikit-learn).
    cov = _math.scaled_identity_covariances(covariance_type, n_components, x.shape[1], reg_covar)
    weights = np.full(n_components, 1.0 / n_components)
    prec_chol = _math.precision_cholesky(cov, covariance_type)
    return MixtureParams(weights, means, cov, prec_chol, covariance_type)


def _random_resp(row_offset, n_rows, n_components, seed):
    """Uniform responsibilities, normalised per row, from per-logical-block streams."""
    out = np.empty((n_rows, n_components))
    start, stop = row_offset, row_offset + n_rows
    first = start // LOGICAL_BLOCK_ROWS
    last = (stop - 1) // LOGICAL_BLOCK_ROWS if n_rows else first - 1
    for j in range(first, last + 1):
        lo = j * LOGICAL_BLOCK_ROWS
        block = np.random.default_rng([seed, j]).uniform(size=(LOGICAL_BLOCK_ROWS, n_components))
        a, b = max(start, lo), min(stop, lo + LOGICAL_BLOCK_ROWS)
        out[a - start : b - start] = block[a - lo : b - lo]
    out /= out.sum(axis=1, keepdims=True)
    return out


def _random_chunk(x, spec, row_offset, block_index, w=None):
    seeds, n_components, center, covariance_type = spec
    return tuple(
        responsibility_statistics(
            x,
            _random_resp(row_offset, x.shape[0], n_components, seed),
            center,
            covariance_type,
            w,
            row_offset,
            block_index,
        )
        for seed in seeds
    )


def random_resp(
    x,
    n_starts,
    n_components,
    covariance_type,
    reg_covar,
    eps,
    rng,
    *,
    weights=None,
    split_every=None,
):
    """Starts from uniform random responsibilities (scikit-learn's ``random``), one pass.

    Returns
    -------
    list of MixtureParams, one per start
    """
    seeds = tuple(int(s) for s in rng.randint(0, 2**31 - 1, size=n_starts))
    head = np.asarray(x[: min(x.shape[0], 1024)].compute(), dtype=np.float64)
    # A centre near the data; non-finite rows are left out here and reported by the pass.
    finite = head[np.all(np.isfinite(head), axis=1)]
    center = finite.mean(axis=0) if finite.size else np.zeros(x.shape[1])
    stats = compute_pass(
        x,
        _random_chunk,
        (seeds, n_components, center, covariance_type),
        weights=weights,
        split_every=split_every,
        prefix="init-random",
        fuse_reads=True,  # statistics only, never a view of the block
    )
    return [params_from_stats(s, reg_covar, eps) for s in stats]


def from_arrays(weights, means, precisions, covariance_type):
    """A start given entirely by arrays (scikit-learn's ``*_init``)."""
    prec_chol = _math.precision_cholesky_from_precisions(precisions, covariance_type)
    cov = _math.covariances_from_cholesky(prec_chol, covariance_type)
    return MixtureParams(
        np.asarray(weights, dtype=np.float64),
        np.asarray(means, dtype=np.float64),
        cov,
        prec_chol,
        covariance_type,
    )


def override(params: MixtureParams, weights=None, means=None, precisions=None):
    """Replace parts of a start by given arrays, as scikit-learn's ``_initialize`` does."""
    cov, prec_chol = params.covariances, params.precisions_cholesky
    if precisions is not None:
        prec_chol = _math.precision_cholesky_from_precisions(precisions, params.covariance_type)
        cov = _math.covariances_from_cholesky(prec_chol, params.covariance_type)
    return MixtureParams(
        params.weights if weights is None else np.asarray(weights, dtype=np.float64),
        params.means if means is None else np.asarray(means, dtype=np.float64),
        cov,
        prec_chol,
        params.covariance_type,
    )
