"""Counter-based random numbers for k-means: a pure function of (stream key, global row).

Every random number is a SplitMix64 hash of a stream key and the global row index, so it
depends on neither the chunking nor where a block runs (see :mod:`dask_em.init._kmeans`).
"""

from __future__ import annotations

import numpy as np

# Stream purposes: part of every stream key, so no two uses share random numbers.
FIRST, ROUND, PLUSPLUS, LOCAL, FIRST_RACE = 1, 2, 3, 4, 5

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix_int(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, which is what SplitMix64 wants.
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def stream_key(*parts: int) -> int:
    """A 64-bit stream key from small integers (seed, purpose, round, trial...)."""
    h = 0x6A09E667F3BCC908
    for p in parts:
        h = _mix_int(h ^ _mix_int(int(p) + _GOLDEN))
    return h


def uniforms(key: int, rows: np.ndarray) -> np.ndarray:
    """Uniform numbers in (0, 1), one per global row index.

    Parameters
    ----------
    key : int
        Stream key from :func:`stream_key`.
    rows : ndarray of shape (m,), int
        Global row indices.

    Returns
    -------
    ndarray of shape (m,), float64
    """
    z = np.asarray(rows).astype(np.uint64)
    z *= np.uint64(_GOLDEN)
    z += np.uint64(key)
    z = _mix(z)
    # A second keyed round: two streams never yield shifted copies of each other.
    z ^= np.uint64(_mix_int(key ^ 0xD1B54A32D192ED03))
    z = _mix(z)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def exponentials(key, rows):
    """Standard exponential numbers, one per global row index (see :func:`uniforms`)."""
    return -np.log(uniforms(key, rows))
