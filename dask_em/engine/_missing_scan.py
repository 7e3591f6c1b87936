"""The pass before a fit with missing values: what is missing, and what initialisation sees.

One tree reduction counts the missing values per feature and the incomplete and empty
rows (infinity is an error: only NaN is missing); initialisation then sees each missing
value replaced by its feature's observed mean (see :func:`prepare_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from dask_em.engine._errors import NonFiniteError
from dask_em.engine._reduce import compute_pass


def raise_infinite(x, block_index, row_offset):
    """Raise the NonFiniteError naming the first infinite value of a block."""
    inf_rows = np.isinf(x).any(axis=1)
    row = int(np.flatnonzero(inf_rows)[0])
    col = int(np.flatnonzero(np.isinf(x[row]))[0])
    where = f"block {block_index} (rows {row_offset}-{row_offset + x.shape[0] - 1})"
    raise NonFiniteError(
        f"Input contains infinity: {where}, first at row {row_offset + row}, column {col} "
        f"({x[row, col]!r}), {int(inf_rows.sum())} bad row(s) in this block. "
        "missing='em' treats only NaN as missing; remove or clip infinite values.",
        kind="input",
        block=block_index,
        row=row_offset + row,
        column=col,
        value=float(x[row, col]),
        n_bad_rows=int(inf_rows.sum()),
    )


# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MissingSummary:
    """Counts of missing values over the whole input.

    Attributes
    ----------
    column_means : ndarray of shape (d,)
        Mean of the observed values of each feature (NaN where none is observed).
    n_observed : ndarray of shape (d,)
        Observed values per feature.
    n_incomplete : int
        Rows with at least one missing value (skipped rows included).
    n_skipped : int
        Rows with no observed value.
    """

    column_means: np.ndarray
    n_observed: np.ndarray
    n_incomplete: int
    n_skipped: int


def _summary_chunk(x, _shared, row_offset, block_index, w=None):
    nan = np.isnan(x)
    inf = np.isinf(x)
    if inf.any():
        raise_infinite(x, block_index, row_offset)
    n_nan = nan.sum(axis=1)
    col_sum = np.where(nan, 0.0, x).sum(axis=0, dtype=np.float64)
    return (
        col_sum,
        (~nan).sum(axis=0),
        int(np.count_nonzero(n_nan)),
        int(np.count_nonzero(n_nan == x.shape[1])),
    )


def missing_summary(x, split_every=None) -> MissingSummary:
    """Count the missing values of a dask array in one pass (a tree reduction)."""
    col_sum, n_obs, n_incomplete, n_skipped = compute_pass(
        x, _summary_chunk, None, split_every=split_every, prefix="missing-scan"
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        means = col_sum / n_obs
    return MissingSummary(means, n_obs, int(n_incomplete), int(n_skipped))


def prepare_fit(x, weights=None, split_every=None):
    """Count what is missing, and what initialisation should see instead of ``x``.

    Initialisation (a few chosen rows, or random responsibilities) has no model to
    condition on, so it sees each missing value replaced by its feature's observed mean
    and the rows without any observed value at weight zero. EM itself never sees these.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    weights : dask.array.Array of shape (n,), optional

    Returns
    -------
    x_init : dask.array.Array of shape (n, d)
        ``x`` itself when nothing is missing.
    weights_init : dask.array.Array of shape (n,) or None
        ``weights`` itself when no row is entirely missing.
    summary : MissingSummary

    Raises
    ------
    ValueError
        If a feature or every row has no observed value.
    """
    summary = missing_summary(x, split_every)
    n = x.shape[0]
    if summary.n_skipped == n:
        raise ValueError("Every row of X is entirely missing (NaN); there is nothing to fit.")
    empty = np.flatnonzero(summary.n_observed == 0)
    if empty.size:
        raise ValueError(
            f"Feature {int(empty[0])} of X has no observed value (all NaN); drop it before "
            "fitting."
        )
    if summary.n_incomplete == 0:
        return x, weights, summary
    x_init = da.where(da.isnan(x), summary.column_means.astype(x.dtype), x)
    if summary.n_skipped:
        keep = ~da.isnan(x).all(axis=1)
        weights = keep.astype(np.float64) if weights is None else weights * keep
    return x_init, weights, summary
