"""Arrays a thread keeps from one block to the next.

A block task allocates the same few scratch arrays (tiles of log-densities, design
rows, a block read from disk) that the previous block on its thread just freed. Where
glibc's trim threshold is set low, as dask's worker processes set it
(``MALLOC_TRIM_THRESHOLD_=65536``), every such array over 128 KiB is a fresh memory map
whose pages fault in again on first use (counted: 533 page faults a block at d=16,
K=8 and 867 at d=32, K=16; the time they cost was within this machine's noise in one
process). Kept per thread, they are allocated once per thread and shape.
"""

from __future__ import annotations

import threading

import numpy as np

_LOCAL = threading.local()


def thread_array(role: str, shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape``, owned by this thread.

    The next call with the same ``role`` on this thread returns the same memory, so a
    caller must be done with the array (and hand out no view of it) before it asks
    again; distinct roles never share memory.

    Parameters
    ----------
    role : str
        What the array is for.
    shape : tuple of int
    dtype : numpy dtype

    Returns
    -------
    ndarray of ``shape`` and ``dtype``
    """
    store = getattr(_LOCAL, "arrays", None)
    if store is None:
        store = _LOCAL.arrays = {}
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    need = int(np.prod(shape, dtype=np.int64))
    buf = store.get(role)
    # Reallocated when too small or much too large (a last, short block reuses it, but
    # a one-off large block does not stay for good).
    if buf is None or buf.dtype != dtype or not need <= buf.size <= 4 * max(need, 1):
        buf = store[role] = np.empty(max(need, 1), dtype)
    return buf[:need].reshape(shape)


def release_thread_arrays() -> None:
    """Drop this thread's arrays (their memory goes when no view of them is left)."""
    _LOCAL.arrays = {}
