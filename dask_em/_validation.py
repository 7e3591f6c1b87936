"""Input checking: numpy, dask arrays and dask DataFrames in; a row-chunked dask array out."""

from __future__ import annotations

import numbers

import dask.array as da
import numpy as np

from . import _math

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
    threads = scheduler_threads() if n_threads is None else n_threads
    if threads > 1:
        most = max(1, n_rows // _MIN_BLOCK_ROWS)  # blocks of at least the minimum
        # A block for every thread where the rows allow it, evened out where they allow.
        n_blocks = max(n_blocks, min(threads, most))
        evened = -(-n_blocks // threads) * threads
        if evened <= most:
            n_blocks = evened
        if n_blocks > 1:
            rows = max(_MIN_BLOCK_ROWS, -(-n_rows // n_blocks))
    return int(rows)


def active_client():
    """The distributed Client that ``dask.compute`` would use now, or None."""
    import dask

    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def scheduler_threads() -> int:
    """Threads that run tasks on the current Dask scheduler (all workers' for a Client)."""
    import dask

    client = active_client()
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT)


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


def check_array(X, *, name="X", min_rows=1, n_features=None, chunk_rows=None):
    """Turn the input into a dask array with rows chunked and features in one chunk.

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
    if _is_dask_dataframe(X):
        bad = [c for c, t in X.dtypes.items() if not _is_numeric(t)]
        if bad:
            raise ValueError(f"{name} has non-numeric columns {bad}; select numeric columns only.")
        X = X.to_dask_array(lengths=True)
    elif not isinstance(X, da.Array):
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
        X = np.asarray(X, dtype=dtype)
        rows = chunk_rows or auto_chunk_rows(X.shape[0], X.shape[1], 8)
        X = da.from_array(X, chunks=(rows, -1))
    else:
        if any(np.isnan(c) for c in X.chunks[0]) or np.isnan(X.shape[0]):
            raise ValueError(
                f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() or "
                "build it with known lengths (e.g. to_dask_array(lengths=True))."
            )
        if X.dtype != dtype:
            X = X.astype(dtype)
        if X.numblocks[1] != 1:
            X = X.rechunk({1: -1})
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


def check_weights_like(sample_weight, X):
    """Row weights as a dask array chunked like ``X``; non-negative, finite, not all zero."""
    n = X.shape[0]
    if isinstance(sample_weight, da.Array):
        w = sample_weight.astype(np.float64)
        if w.ndim != 1 or w.shape[0] != n:
            raise ValueError(f"sample_weight has shape {w.shape}; expected ({n},).")
        w = w.rechunk((X.chunks[0],))
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != n:
            raise ValueError(f"sample_weight has shape {w.shape}; expected ({n},).")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("sample_weight must be finite and non-negative.")
        if not np.any(w > 0):
            raise ValueError("sample_weight is all zero; at least one row needs weight.")
        w = da.from_array(w, chunks=(X.chunks[0],))
    return w


def check_weight_values(w):
    """Check the values of lazy row weights in one pass (numpy weights are checked eagerly
    by :func:`check_weights_like`).

    Parameters
    ----------
    w : dask.array.Array of shape (n,)

    Raises
    ------
    ValueError
        If a weight is negative or not finite, or all are zero.
    """
    import dask

    finite, low, high = dask.compute(da.isfinite(w).all(), w.min(), w.max())
    if not finite or low < 0:
        raise ValueError("sample_weight must be finite and non-negative.")
    if not high > 0:
        raise ValueError("sample_weight is all zero; at least one row needs weight.")


def check_scalar(value, name, kind, low=None, low_inclusive=True):
    """Check a scalar hyper-parameter and name it in the error."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == "int" and not is_int:
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if kind == "real" and not is_real:
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if kind == "real" and not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if low is not None:
        bad = value < low if low_inclusive else value <= low
        if bad:
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"{name} must be {op} {low}, got {value!r}.")


def check_weights_init(weights, n_components):
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_components,):
        raise ValueError(f"weights_init has shape {w.shape}; expected ({n_components},).")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise ValueError("weights_init must be finite and in [0, 1].")
    if not np.allclose(w.sum(), 1.0, rtol=0, atol=1e-6):
        raise ValueError(f"weights_init must be normalized (sum to 1), but sums to {w.sum():.5f}.")
    return w


def check_means_init(means, n_components, n_features):
    m = np.asarray(means, dtype=np.float64)
    if m.shape != (n_components, n_features):
        raise ValueError(
            f"means_init has shape {m.shape}; expected ({n_components}, {n_features})."
        )
    if not np.all(np.isfinite(m)):
        raise ValueError("means_init contains NaN or infinity.")
    return m


def check_precisions_init(precisions, covariance_type, n_components, n_features):
    p = np.asarray(precisions, dtype=np.float64)
    shape = _math.covariance_shape(covariance_type, n_components, n_features)
    if p.shape != shape:
        raise ValueError(
            f"precisions_init has shape {p.shape}; expected {shape} for "
            f"covariance_type='{covariance_type}'."
        )
    if not np.all(np.isfinite(p)):
        raise ValueError("precisions_init contains NaN or infinity.")
    if covariance_type in ("diag", "spherical"):
        if np.any(p <= 0):
            raise ValueError(f"precisions_init for '{covariance_type}' must be positive.")
        return p
    mats = p if covariance_type == "full" else p[None]
    for k, m in enumerate(mats):
        if not np.allclose(m, m.T) or np.any(np.linalg.eigvalsh(m) <= 0):
            which = f" (component {k})" if covariance_type == "full" else ""
            raise ValueError(
                f"precisions_init for '{covariance_type}' must be symmetric, "
                f"positive-definite{which}."
            )
    return p
