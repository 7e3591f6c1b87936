"""Compiled kernels of the driver's M-step for full covariances at high d.

The driver's M-step is serial: while it runs, the workers wait. At d=512, K=8 numpy's
unpacking of the root's packed scatters took 14 ms and the covariances from the moments
34 ms (each of them several passes over K d^2 temporaries), against 5 and 6 ms here (one
thread). Both kernels give bit-for-bit the values of the numpy expressions they replace:
no fastmath, so no fused multiply-add, and the same operations in the same order.
"""

from __future__ import annotations

from numba import njit


@njit(nogil=True, error_model="numpy", cache=True)
def unpack_lower(packed, out):  # pragma: no cover - compiled
    """Symmetric matrices from their lower triangles.

    Parameters
    ----------
    packed : ndarray of shape (K, d (d + 1) / 2)
        Row-major lower triangles (``numpy.tril_indices`` order).
    out : ndarray of shape (K, d, d)
        Written in full: both triangles.
    """
    n_matrices, d = out.shape[0], out.shape[1]
    for k in range(n_matrices):
        p = 0
        for i in range(d):
            for j in range(i + 1):
                value = packed[k, p]
                out[k, i, j] = value
                out[k, j, i] = value
                p += 1


@njit(nogil=True, error_model="numpy", cache=True)
def full_covariances(nk_raw, nk, s1, s2, delta, reg_covar, out):  # pragma: no cover
    """Covariances from moments about offsets, as ``_math._covariances_full`` defines them.

    ``scatter = ((s2 - s1 delta^T) - delta s1^T + (nk_raw delta) delta^T) / nk`` is
    formed for ``(i, j)`` and ``(j, i)`` (which round differently), and their mean,
    plus ``reg_covar`` on the diagonal, goes to both places.

    Parameters
    ----------
    nk_raw, nk : ndarray of shape (K,)
    s1, delta : ndarray of shape (K, d)
    s2 : ndarray of shape (K, d, d)
    reg_covar : float
    out : ndarray of shape (K, d, d)
    """
    n_components, d = s1.shape
    for k in range(n_components):
        raw, div = nk_raw[k], nk[k]
        for i in range(d):
            si, di = s1[k, i], delta[k, i]
            for j in range(i + 1):
                sj, dj = s1[k, j], delta[k, j]
                lower = ((s2[k, i, j] - si * dj) - sj * di + (raw * di) * dj) / div
                upper = ((s2[k, j, i] - sj * di) - si * dj + (raw * dj) * di) / div
                value = (lower + upper) * 0.5
                out[k, i, j] = value
                out[k, j, i] = value
            out[k, i, i] += reg_covar
