"""Typed failures: what went wrong travels as attributes, not only as message text.

Callers route on the type and the attributes (``NonFiniteError.kind``,
``StartError.start``); the messages stay what users read. Both pickle with their
attributes (``BaseException`` pickles ``__dict__``), so they survive a distributed worker.
"""

from __future__ import annotations

import numpy as np


class NonFiniteError(ValueError):
    """The input holds NaN or infinity, or the E-step overflowed on a row.

    Attributes
    ----------
    kind : {'input', 'overflow'} or None
        'input': a value of the data is NaN or infinite (``column`` and ``value`` say
        which); 'overflow': a finite row has a non-finite log-likelihood.
    block : int or None
        Index of the row block.
    row : int or None
        Global index of the first bad row (None when the block's rows were a subset).
    column : int or None
    value : float or None
    n_bad_rows : int or None
        Bad rows in the block.
    """

    def __init__(
        self,
        message="",
        *,
        kind=None,
        block=None,
        row=None,
        column=None,
        value=None,
        n_bad_rows=None,
    ):
        super().__init__(message)
        self.kind = kind
        self.block = block
        self.row = row
        self.column = column
        self.value = value
        self.n_bad_rows = n_bad_rows


class StartError(ValueError):
    """One start (restart) of EM failed: its M-step raised or gave non-finite parameters.

    Attributes
    ----------
    start : int
        Index of the start.
    iteration : int
        The EM iteration whose M-step failed (0: initialisation).
    reason : str
        What failed, without the start and iteration.
    """

    def __init__(self, message="", *, start=None, iteration=None, reason=None):
        super().__init__(message)
        self.start = start
        self.iteration = iteration
        self.reason = reason

    @classmethod
    def at(cls, reason: str, start: int, iteration: int, hint: str = "") -> StartError:
        """The error of ``start`` at ``iteration``; the message names both, then ``hint``."""
        return cls(
            f"{reason} (start {start}, iteration {iteration}){hint}",
            start=start,
            iteration=iteration,
            reason=reason,
        )


class ParameterValueError(ValueError):
    """A value given to ``fit`` is invalid: the row weights or an initial array.

    Attributes
    ----------
    parameter : str
        One of 'sample_weight', 'weights_init', 'means_init', 'precisions_init' or a prior of
        ``BayesianGaussianMixture`` ('mean_prior', 'covariance_prior', 'degrees_of_freedom_prior').
        The parameter whose value is invalid, whatever name the message uses for it
        (scikit-learn's checks say 'weights', 'means' or 'full precision').
    """

    def __init__(self, message="", *, parameter=None):
        super().__init__(message)
        self.parameter = parameter


def raise_non_finite(x, bad_rows, block_index, row_offset):
    """Raise the :class:`NonFiniteError` for the first of ``bad_rows`` of block ``x``.

    A row with a NaN or infinite value is bad input; a finite row among ``bad_rows``
    overflowed (its log-likelihood is not finite).
    """
    row = int(bad_rows[0])
    cols = np.flatnonzero(~np.isfinite(x[row]))
    where = f"block {block_index} (rows {row_offset}-{row_offset + x.shape[0] - 1})"
    if cols.size:
        column, value = int(cols[0]), float(x[row, cols[0]])
        raise NonFiniteError(
            f"Input contains NaN or infinity: {where}, first at row {row_offset + row}, "
            f"column {column} ({value}), {bad_rows.size} bad row(s) in "
            "this block. Remove or impute these values before fitting.",
            kind="input",
            block=block_index,
            row=row_offset + row,
            column=column,
            value=value,
            n_bad_rows=int(bad_rows.size),
        )
    raise NonFiniteError(
        f"Numerical overflow in the E-step: {where}, row {row_offset + row} has a "
        "non-finite log-likelihood. Scale the input data or increase reg_covar.",
        kind="overflow",
        block=block_index,
        row=row_offset + row,
    )
