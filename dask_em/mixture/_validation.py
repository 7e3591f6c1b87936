"""Input checking: numpy, dask arrays and dask DataFrames in; a row-chunked dask array out."""

from __future__ import annotations

import dask.array as da
import numpy as np
from sklearn.utils import assert_all_finite
from sklearn.utils import check_array as _sk_check_array
from sklearn.utils.validation import validate_data

from dask_em.engine import _math
from dask_em.engine._errors import NonFiniteError, ParameterValueError
from dask_em.engine._memory import active_client, total_threads

# ~12 MB float64 blocks: large enough that BLAS runs at speed and scheduling costs <3%,
# small enough that a block's temporaries stay in cache-friendly sizes.
_TARGET_BLOCK_BYTES = 12 * 2**20
# On a distributed cluster a task costs its worker several ms between blocks (the event
# loop hands the next block to the thread; measured 5-7 ms a task with both cores
# busy, against ~0.3 ms on the threads scheduler), so in-memory data goes there in
# larger blocks. The E-step works tile by tile, so a block's size does not change its
# scratch memory.
_TARGET_BLOCK_BYTES_CLUSTER = 64 * 2**20
_MIN_BLOCK_ROWS = 4096


def auto_chunk_rows(
    n_rows: int,
    n_features: int,
    itemsize: int = 8,
    n_threads: int | None = None,
    cluster: bool | None = None,
) -> int:
    """Rows per block for in-memory input: about 12 MB per block (64 MB on a distributed
    cluster), at least 4096 rows.

    The blocks are then evened out so that their number is a multiple of the threads
    that will run them (``n_threads``, default: those of the current scheduler): 11
    blocks on 2 threads would leave one thread idle for a twelfth of every pass; and
    data smaller than one block is still split between the threads.

    Parameters
    ----------
    cluster : bool, optional
        Whether the blocks run on a distributed cluster; default: whether a distributed
        Client is the current scheduler.
    """
    if cluster is None:
        cluster = active_client() is not None
    per_block = _TARGET_BLOCK_BYTES_CLUSTER if cluster else _TARGET_BLOCK_BYTES
    target = per_block // max(1, n_features * itemsize)
    rows = int(max(_MIN_BLOCK_ROWS, min(target, max(n_rows, 1))))
    n_blocks = -(-max(n_rows, 1) // rows)
    threads = total_threads() if n_threads is None else n_threads
    if threads > 1:
        most = max(1, n_rows // _MIN_BLOCK_ROWS)  # blocks of at least the minimum
        # A block for every thread where the rows allow it, evened out where they allow.
        n_blocks = max(n_blocks, min(threads, most))
        evened = -(-n_blocks // threads) * threads
        if evened > most:
            # Too few rows for more blocks of the minimum: fewer, larger ones (50,000
            # rows at d=512 made 12 blocks of 4,096 and one of 848 rows; now 12 of 4,167).
            evened = max(threads, n_blocks // threads * threads)
        if evened <= most:
            n_blocks = evened
        if n_blocks > 1:
            rows = max(_MIN_BLOCK_ROWS, -(-n_rows // n_blocks))
    return int(rows)


def _is_dask_dataframe(X) -> bool:
    try:
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - dask[dataframe] is a dependency
        return False
    return isinstance(X, dd.DataFrame)


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype.kind in "biuf":
        return np.dtype(np.float64)
    raise ValueError(
        f"X has dtype {dtype}, which is not numeric. Select numeric columns or convert "
        "them (e.g. X.astype('float64'))."
    )


def _is_numeric(dtype) -> bool:
    """Whether a (pandas or numpy) column dtype is numeric; extension dtypes such as
    pandas' ``StringDtype`` are not numpy dtypes and make ``np.issubdtype`` raise."""
    try:
        return bool(np.issubdtype(dtype, np.number))
    except TypeError:
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        return bool(is_numeric_dtype(dtype)) and not is_bool_dtype(dtype)


def _dask_rows(X, name="X"):
    """A dask array or DataFrame as a dask array with known row chunks, features in one
    chunk; the dtype is left alone (see :func:`_float_dtype`)."""
    if _is_dask_dataframe(X):
        bad = [c for c, t in X.dtypes.items() if not _is_numeric(t)]
        if bad:
            raise ValueError(f"{name} has non-numeric columns {bad}; select numeric columns only.")
        X = X.to_dask_array(lengths=True)
    if X.ndim >= 1 and (any(np.isnan(c) for c in X.chunks[0]) or np.isnan(X.shape[0])):
        raise ValueError(
            f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() or "
            "build it with known lengths (e.g. to_dask_array(lengths=True))."
        )
    if X.ndim == 2 and X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X


def check_array(X, *, name="X", min_rows=1, n_features=None, chunk_rows=None):
    """Turn the input into a dask array with rows chunked and features in one chunk.

    The checks of :func:`dask_em.select_model`; the estimator checks its input with
    :func:`check_input` (scikit-learn's rules and messages).

    Parameters
    ----------
    X : ndarray, dask.array.Array or dask.dataframe.DataFrame, shape (n, d)
    min_rows : int
        Fewest rows accepted.
    n_features : int, optional
        Expected number of features (for data given to a fitted model).
    chunk_rows : int, optional
        Rows per block for numpy input (default: see :func:`auto_chunk_rows`).

    Returns
    -------
    X : dask.array.Array of shape (n, d), float32 or float64
    from_numpy : bool
        Whether the input was an in-memory array.
    """
    from_numpy = False
    if _is_dask_dataframe(X) or isinstance(X, da.Array):
        X = _dask_rows(X, name)
    else:
        if hasattr(X, "dtypes") and hasattr(X, "to_numpy"):  # pandas DataFrame
            bad = [c for c, t in X.dtypes.items() if not _is_numeric(t)]
            if bad:
                raise ValueError(
                    f"{name} has non-numeric columns {bad}; select numeric columns only."
                )
            X = X.to_numpy()
        try:
            X = np.asarray(X)
        except ValueError:  # ragged nested lists
            raise ValueError(
                f"{name} is not a rectangular array (rows of different lengths); pass a "
                "2-D array with the same number of features in every row."
            ) from None
        from_numpy = True
    if X.ndim != 2:
        raise ValueError(
            f"Expected a 2-D array for {name}, got {X.ndim}-D with shape {X.shape}. "
            "Reshape your data with X.reshape(-1, 1) for a single feature or "
            "X.reshape(1, -1) for a single sample."
        )
    dtype = _float_dtype(X.dtype)
    if from_numpy:
        X = to_blocks(np.asarray(X, dtype=dtype), chunk_rows)
    elif X.dtype != dtype:
        X = X.astype(dtype)
    n, d = X.shape
    if d < 1:
        raise ValueError(f"{name} has 0 features; at least one is required.")
    if n < min_rows:
        raise ValueError(f"{name} has {n} row(s); at least {min_rows} are required.")
    if n_features is not None and d != n_features:
        raise ValueError(
            f"{name} has {d} features, but the model was fitted with {n_features} features."
        )
    return X, from_numpy


def to_blocks(x, chunk_rows=None):
    """An in-memory array as a dask array of row blocks (views of ``x``).

    Parameters
    ----------
    x : ndarray of shape (n, d)
    chunk_rows : int, optional
        Rows per block (default: see :func:`auto_chunk_rows`).

    Returns
    -------
    dask.array.Array of shape (n, d)
    """
    rows = chunk_rows or auto_chunk_rows(x.shape[0], x.shape[1], 8)
    return da.from_array(x, chunks=(rows, -1))


def is_lazy(X) -> bool:
    """Whether ``X`` is a dask array or dask DataFrame (kept lazy) rather than in memory."""
    return isinstance(X, da.Array) or _is_dask_dataframe(X)


def check_input(estimator, X, *, reset, fit=False, allow_nan=False):
    """Check the data given to an estimator, by scikit-learn's rules and in its words.

    In-memory input (numpy, lists, pandas; anything but dask) goes through scikit-learn's
    ``validate_data`` exactly as ``sklearn.mixture.GaussianMixture`` calls it: object
    arrays of numbers are converted, sparse matrices, complex numbers, NaN and infinity
    refused with its messages, feature names and counts recorded (``reset``) or checked.
    Dask input keeps its row blocks; its shape, dtype, feature names and count get the
    same checks and messages without reading it; values are checked later, in the pass
    that reads them.

    Parameters
    ----------
    estimator : BaseEstimator
    X : array-like, dask.array.Array or dask.dataframe.DataFrame of shape (n, d)
    reset : bool
        Record ``n_features_in_`` (and ``feature_names_in_``) rather than check them.
    fit : bool
        At least 2 rows are required, and in-memory data is cast to float64 or float32
        (as scikit-learn's ``fit``); otherwise numeric data is cast afterwards.
    allow_nan : bool
        In-memory data may hold NaN (not infinity).

    Returns
    -------
    X : ndarray or dask.array.Array of shape (n, d), float32 or float64
        numpy for in-memory input, else a dask array with features in one chunk.
    lazy : bool
        Whether ``X`` is a dask array.
    """
    name = type(estimator).__name__
    min_rows = 2 if fit else 1
    if is_lazy(X):
        Xd = _dask_rows(X)
        _check_dask_shape(Xd, name, min_rows)
        # Feature names and counts without reading X: a dask DataFrame's columns as an
        # empty pandas frame (scikit-learn takes names from pandas, not from dask).
        if _is_dask_dataframe(X):
            import pandas as pd

            X = pd.DataFrame(columns=X.columns)
        validate_data(estimator, X, reset=reset, skip_check_array=True)
        # Object arrays of numbers are converted, as scikit-learn converts them in memory.
        dtype = np.dtype(np.float64) if Xd.dtype.kind == "O" else _float_dtype(Xd.dtype)
        return (Xd if Xd.dtype == dtype else Xd.astype(dtype)), True
    x = validate_data(
        estimator,
        X,
        reset=reset,
        dtype=[np.float64, np.float32] if fit else "numeric",
        ensure_min_samples=min_rows,
        ensure_all_finite="allow-nan" if allow_nan else True,
    )
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return x, False


def _check_dask_shape(X, name, min_rows):
    """scikit-learn's ``check_array`` messages for a dask array's shape and dtype."""
    if X.ndim != 2:
        what = {0: "scalar array", 1: "1D array"}.get(X.ndim)
        if what is None:
            raise ValueError(
                f"Found array with dim {X.ndim}, while dim <= 2 is required by {name}."
            )
        raise ValueError(
            f"Expected 2D array, got {what} instead: a dask array of shape {X.shape}. "
            "Reshape your data either using array.reshape(-1, 1) if your data has a single "
            "feature or array.reshape(1, -1) if it contains a single sample."
        )
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: a dask array of dtype {X.dtype}.")
    n, d = X.shape
    if n < min_rows:
        raise ValueError(
            f"Found array with {n} sample(s) (shape={X.shape}) while a minimum of "
            f"{min_rows} is required by {name}."
        )
    if d < 1:
        raise ValueError(
            f"Found array with {d} feature(s) (shape={X.shape}) while a minimum of 1 is "
            f"required by {name}."
        )


def finite_then(x, params, kernel, allow_nan, estimator_name):
    """``kernel(x, params)`` after scikit-learn's check of ``x``'s values (a dask block at
    prediction time: NaN and infinity raise its ``ValueError`` when the block is read)."""
    try:
        assert_all_finite(x, allow_nan=allow_nan, estimator_name=estimator_name, input_name="X")
    except ValueError as exc:
        # scikit-learn's message, typed so that callers need not read it.
        bad = float("nan") if not allow_nan and np.isnan(x).any() else float("inf")
        raise NonFiniteError(str(exc), kind="input", value=bad) from None
    return kernel(x, params)


def _bad_weights(message):
    return ParameterValueError(message, parameter="sample_weight")


def check_weights_like(sample_weight, X):
    """Row weights for the rows of ``X``; non-negative, finite, not all zero.

    Parameters
    ----------
    sample_weight : array-like or dask.array.Array of shape (n,)
    X : ndarray or dask.array.Array of shape (n, d)

    Returns
    -------
    ndarray or dask.array.Array of shape (n,), float64
        numpy for numpy ``X``, else a dask array chunked like ``X`` (whose values, if
        lazy, :func:`check_weight_values` checks).
    """
    n = X.shape[0]
    if isinstance(sample_weight, da.Array):
        w = sample_weight.astype(np.float64)
        if w.ndim != 1 or w.shape[0] != n:
            raise _bad_weights(f"sample_weight has shape {w.shape}; expected ({n},).")
        if not isinstance(X, da.Array):
            w = w.compute()
        else:
            return w.rechunk((X.chunks[0],))
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise _bad_weights(f"sample_weight has shape {w.shape}; expected ({n},).")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise _bad_weights("sample_weight must be finite and non-negative.")
    if not np.any(w > 0):
        raise _bad_weights("sample_weight is all zero; at least one row needs weight.")
    return da.from_array(w, chunks=(X.chunks[0],)) if isinstance(X, da.Array) else w


def check_weight_values(w):
    """Check the values of lazy row weights in one pass (numpy weights are checked eagerly
    by :func:`check_weights_like`).

    Parameters
    ----------
    w : dask.array.Array of shape (n,)

    Raises
    ------
    ParameterValueError
        If a weight is negative or not finite, or all are zero.
    """
    import dask

    finite, low, high = dask.compute(da.isfinite(w).all(), w.min(), w.max())
    if not finite or low < 0:
        raise _bad_weights("sample_weight must be finite and non-negative.")
    if not high > 0:
        raise _bad_weights("sample_weight is all zero; at least one row needs weight.")


# The initial parameters are checked as scikit-learn's GaussianMixture checks them (its
# ``_check_weights``, ``_check_means``, ``_check_precisions``), with its messages, except
# that NaN or infinity are named by the parameter ("Input means_init contains NaN." where
# scikit-learn says "Input contains NaN.") and that an out-of-range weight reports the
# maximum and minimum the right way round (scikit-learn's message swaps them). They are
# returned as float64, the precision of the M-step.
def _check_shape(param, shape, name, parameter):
    if param.shape != shape:
        raise ParameterValueError(
            f"The parameter '{name}' should have the shape of {shape}, but got {param.shape}",
            parameter=parameter,
        )


def _init_array(value, parameter, **kwargs):
    """scikit-learn's ``check_array`` of an initial array, its errors typed."""
    try:
        return _sk_check_array(
            value, dtype=[np.float64, np.float32], ensure_2d=False, input_name=parameter, **kwargs
        )
    except ValueError as exc:
        raise ParameterValueError(str(exc), parameter=parameter) from exc


def check_weights_init(weights, n_components):
    """``weights_init`` as float64, shape (n_components,): in [0, 1] and summing to 1."""
    w = _init_array(weights, "weights_init")
    _check_shape(w, (n_components,), "weights", "weights_init")
    if np.any(w < 0.0) or np.any(w > 1.0):
        raise ParameterValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max value "
            f"{np.max(w):.5f}, min value {np.min(w):.5f}",
            parameter="weights_init",
        )
    atol = 1e-6 if w.dtype == np.float32 else 1e-8
    if not np.allclose(abs(1.0 - np.sum(w)), 0.0, atol=atol):
        raise ParameterValueError(
            "The parameter 'weights' should be normalized, but got sum(weights) = "
            f"{np.sum(w):.5f}",
            parameter="weights_init",
        )
    return w.astype(np.float64)


def check_means_init(means, n_components, n_features):
    """``means_init`` as float64, shape (n_components, n_features)."""
    m = _init_array(means, "means_init")
    _check_shape(m, (n_components, n_features), "means", "means_init")
    return m.astype(np.float64)


def check_precisions_init(precisions, covariance_type, n_components, n_features):
    """``precisions_init`` as float64 in the shape of ``covariance_type``: positive
    (diag, spherical) or symmetric positive-definite matrices (full, tied)."""
    p = _init_array(precisions, "precisions_init", allow_nd=covariance_type == "full")
    name = f"{covariance_type} precision"
    shape = _math.covariance_shape(covariance_type, n_components, n_features)
    _check_shape(p, shape, name, "precisions_init")
    if covariance_type in ("diag", "spherical"):
        if np.any(p <= 0.0):
            raise ParameterValueError(f"'{name}' should be positive", parameter="precisions_init")
        return p.astype(np.float64)
    for m in p if covariance_type == "full" else p[None]:
        if not (np.allclose(m, m.T) and np.all(np.linalg.eigvalsh(m) > 0.0)):
            raise ParameterValueError(
                f"'{name}' should be symmetric, positive-definite", parameter="precisions_init"
            )
    return p.astype(np.float64)
