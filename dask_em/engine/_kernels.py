"""Compiled tile kernels of the fused E-step (full, diagonal and spherical covariances).

Done as a dozen short numpy calls per tile, the elementwise part of the E-step gave up
and re-took the GIL on every call, and on a virtual machine every hand-over costs about
as much as a short call: two threads of one process ran the diag kernel no faster than
one. These kernels run the elementwise work of a tile without the GIL (numba,
``nogil``), so the threads scheduler keeps every core busy; the matrix products stay
with BLAS and ``exp`` with numpy, whose SIMD ``exp`` is several times faster than a
scalar one.

Diagonal and spherical covariances, around that ``exp``:

1. :func:`diag_tile_log_prob` centres the rows (feature-major, ``xt`` (d, m)), writes
   the weighted log-densities minus each row's largest, clamped at ``floor``, into
   ``lp`` (K, m), and the largest into ``mx`` (m,).
2. numpy's ``exp``, :func:`tile_row_sums` (each row's sum) and numpy's ``log`` of the
   sums.
3. :func:`tile_responsibilities` turns ``exp(lp)`` into responsibilities, adds their
   sums into ``nk`` and returns the tile's log-likelihood; :func:`diag_tile_moments`
   adds ``sum r (x - c)`` and ``sum r (x - c)**2`` into float64 accumulators.

Full covariances, by feature blocks (see :mod:`dask_em.engine._fused`):
:func:`full_tile_design` writes ``Z^T = x - c`` (feature-major); per block of features BLAS
the whitened rows ``Y_i = M_i Z^T`` of every component at once and
:func:`full_tile_add_squares` adds the squared norms of ``Y_i + bias``; then
:func:`tile_finish_log_prob` (shifted and clamped as above), numpy the ``exp`` (and, with
:func:`tile_row_sums`, the ``log`` of each row's sum), :func:`tile_responsibilities`;
per block of features again :func:`full_tile_weigh` writes the wide left factor
``[r_1 (Z_i - o_1); ...; r_K (Z_i - o_K)]`` of the block's rows of the scatter, which BLAS
then multiplies by the columns of ``Z`` up to the block's last. The offsets and the
weight sums stay out of the products: a column of ones makes both inner (or outer)
dimensions d + 1, and OpenBLAS ran the products of 17 about a quarter slower than those
of 16.

Arithmetic inside a tile is in the tiles' dtype (float32 or float64); the centring
subtraction is float64 and every sum across tiles is float64, as in
:mod:`dask_em.engine._math`. Diagonal squared distances use ``p (x - b)**2`` rather than the
expanded form, so they keep their digits when a component is far from the centre.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Reassociation lets LLVM vectorise the reductions over rows. No 'nnan'/'ninf': the
# kernels must see NaN and infinity to report the rows that hold them. numpy's error model:
# a row of NaN divides by a zero sum (and is reported), it does not raise mid-tile.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def _centre_rows(x, start, m, center, xt):  # pragma: no cover
    """``xt[:d, :m] = (x[start:start+m] - center).T``, the subtraction in float64."""
    d = x.shape[1]
    # Transposed 16 rows at a time: their cache lines stay in L1 across the features
    # (a whole feature per sweep re-read every line of the tile d times; 2x slower).
    m16 = m - m % 16
    for i0 in range(0, m16, 16):
        for j in range(d):
            cj = center[j]
            for ii in range(16):
                xt[j, i0 + ii] = x[start + i0 + ii, j] - cj
    for j in range(d):
        cj = center[j]
        for i in range(m16, m):
            xt[j, i] = x[start + i, j] - cj


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def _shift_and_clamp(lp, m, floor, mx):  # pragma: no cover
    """``mx = max_k lp``; ``lp = max(lp - mx, floor)`` (see ``_math._EXP_FLOOR``)."""
    n_components = lp.shape[0]
    for i in range(m):
        mx[i] = lp[0, i]
    for k in range(1, n_components):
        for i in range(m):
            v = lp[k, i]
            # A NaN in row 0 stays: comparisons with NaN are false.
            mx[i] = v if v > mx[i] else mx[i]
    for k in range(n_components):
        for i in range(m):
            v = lp[k, i] - mx[i]
            lp[k, i] = v if v > floor else floor


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def tile_row_sums(e, m, exp_floor, s):  # pragma: no cover
    """``e = exp(lp) - exp_floor`` in place (clamped entries become exact zeros) and
    ``s = sum_k e``, each row's likelihood relative to its largest term."""
    n_components = e.shape[0]
    zero = e.dtype.type(0.0)
    for i in range(m):
        s[i] = zero
    for k in range(n_components):
        for i in range(m):
            v = e[k, i] - exp_floor
            e[k, i] = v
            s[i] += v


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def tile_responsibilities(e, mx, log_s, m, w, use_w, s, nk):  # pragma: no cover
    """Responsibilities times row weights, in place, and their sums added to ``nk``.

    Parameters
    ----------
    e : ndarray of shape (K, >= m)
        From :func:`tile_row_sums` (``exp`` of the clamped ``lp``, less ``exp(floor)``);
        overwritten with the responsibilities (times the row weights).
    mx : ndarray of shape (>= m,)
        Each row's largest weighted log-density; overwritten with each row's
        ``log p(x_i)`` (kept for the caller's check: fast-math folds an ``isfinite``
        test away here).
    log_s : ndarray of shape (>= m,)
        ``log`` of :func:`tile_row_sums`' ``s`` (numpy's vectorised ``log``: a scalar
        ``log`` per row cost a tenth of the diag kernel).
    w : ndarray of shape (>= m,), float64
        Row weights of the tile (read only when ``use_w``).
    s : ndarray of shape (>= m,)
        :func:`tile_row_sums`' ``s``; overwritten.
    nk : ndarray of shape (K,), float64
        ``sum r_k`` is added here.

    Returns
    -------
    float
        ``sum_i w_i log p(x_i)`` over the tile (float64); not finite if a row's
        ``log p(x_i)`` is not (``mx`` then holds every row's, in the tile dtype).
    """
    n_components = e.shape[0]
    zero = e.dtype.type(0.0)
    loglik = 0.0
    for i in range(m):
        ln = np.float64(log_s[i]) + np.float64(mx[i])
        mx[i] = ln
        if use_w:
            loglik += w[i] * ln
            s[i] = w[i] / s[i]
        else:
            loglik += ln
            s[i] = 1.0 / s[i]
    for k in range(n_components):
        acc = zero
        for i in range(m):
            r = e[k, i] * s[i]
            e[k, i] = r
            acc += r
        nk[k] += acc
    return loglik


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def tile_finish_log_prob(lp, m, const, floor, mx):  # pragma: no cover
    """``lp = const - lp / 2`` (``lp`` the squared distances), then each row's largest
    into ``mx`` and ``lp = max(lp - mx, floor)`` (see ``_math._EXP_FLOOR``)."""
    n_components = lp.shape[0]
    for k in range(n_components):
        ck = const[k]
        for i in range(m):
            lp[k, i] = ck - 0.5 * lp[k, i]
    _shift_and_clamp(lp, m, floor, mx)


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def diag_tile_log_prob(x, start, m, center, b, prec, const, floor, xt, lp, mx):  # pragma: no cover
    """Shifted, clamped weighted log-densities of rows ``x[start:start+m]``.

    Parameters
    ----------
    x : ndarray of shape (n, d)
    start, m : int
        First row and number of rows of the tile.
    center : ndarray of shape (d,), float64
    b : ndarray of shape (K, d)
        Means minus ``center``, tile dtype.
    prec : ndarray of shape (K, d)
        Precisions (diag) or each component's precision repeated (spherical).
    const : ndarray of shape (K,)
        ``log w_k + log det P_k - d/2 log(2 pi)``.
    floor : scalar
        Lower clamp of ``lp - mx`` (see ``_math._EXP_FLOOR``).
    xt : ndarray of shape (d, >= m)
        Out: centred rows, feature-major.
    lp : ndarray of shape (K, >= m)
        Out: ``max(log p_k - mx, floor)``.
    mx : ndarray of shape (>= m,)
        Out: each row's largest weighted log-density (NaN where a row holds NaN,
        -inf where it holds infinity).
    """
    n_components, d = b.shape
    _centre_rows(x, start, m, center, xt)
    # Four features per sweep over the rows: a quarter of the loads and stores of lp.
    d4 = d - d % 4
    for k in range(n_components):
        for i in range(m):
            lp[k, i] = 0.0
        for j in range(0, d4, 4):
            b0, b1, b2, b3 = b[k, j], b[k, j + 1], b[k, j + 2], b[k, j + 3]
            p0, p1, p2, p3 = prec[k, j], prec[k, j + 1], prec[k, j + 2], prec[k, j + 3]
            for i in range(m):
                t0 = xt[j, i] - b0
                t1 = xt[j + 1, i] - b1
                t2 = xt[j + 2, i] - b2
                t3 = xt[j + 3, i] - b3
                lp[k, i] += (p0 * t0 * t0 + p1 * t1 * t1) + (p2 * t2 * t2 + p3 * t3 * t3)
        for j in range(d4, d):
            bj, pj = b[k, j], prec[k, j]
            for i in range(m):
                t = xt[j, i] - bj
                lp[k, i] += pj * t * t
    tile_finish_log_prob(lp, m, const, floor, mx)


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def diag_tile_moments(e, xt, m, s1, s2):  # pragma: no cover
    """First and second moments of a tile's responsibilities, added to ``s1``, ``s2``.

    Parameters
    ----------
    e : ndarray of shape (K, >= m)
        Responsibilities (times the row weights), from :func:`tile_responsibilities`.
    xt : ndarray of shape (d, >= m)
        Centred rows, feature-major, from :func:`diag_tile_log_prob`.
    s1, s2 : ndarray of shape (K, d), float64
        ``sum r (x - c)`` and ``sum r (x - c)**2`` are added here.
    """
    n_components = e.shape[0]
    d = xt.shape[0]
    zero = e.dtype.type(0.0)
    for k in range(n_components):
        # Two features per sweep: each responsibility is loaded once for both.
        for j in range(0, d - 1, 2):
            a1, a2, c1, c2 = zero, zero, zero, zero
            for i in range(m):
                r = e[k, i]
                u = r * xt[j, i]
                v = r * xt[j + 1, i]
                a1 += u
                a2 += u * xt[j, i]
                c1 += v
                c2 += v * xt[j + 1, i]
            s1[k, j] += a1
            s2[k, j] += a2
            s1[k, j + 1] += c1
            s2[k, j + 1] += c2
        if d % 2:
            j = d - 1
            a1, a2 = zero, zero
            for i in range(m):
                u = e[k, i] * xt[j, i]
                a1 += u
                a2 += u * xt[j, i]
            s1[k, j] += a1
            s2[k, j] += a2


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def full_tile_design(x, start, m, center, zt):  # pragma: no cover
    """``zt[:, :m] = (x[start:start+m] - center).T``, shape (d, m)."""
    _centre_rows(x, start, m, center, zt)


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def full_tile_add_squares(y, m, bias, lp):  # pragma: no cover
    """Add the squared norms of one feature block's whitened rows to ``lp``.

    Parameters
    ----------
    y : ndarray of shape (K*b, >= m)
        Rows ``(k, j)`` (component-major within the block of b features): component
        k's whitened feature j of every row, ``(P_k^T (x - c))_j`` (one BLAS product).
    bias : ndarray of shape (K*b,)
        ``-(P_k^T (mu_k - c))_j`` in the same order: ``y + bias`` is ``P_k^T (x - mu_k)``.
    lp : ndarray of shape (K, >= m)
        ``sum_j (y + bias)**2`` over the block's features is added here.
    """
    n_components = lp.shape[0]
    b = y.shape[0] // n_components
    for k in range(n_components):
        for j in range(b):
            row = k * b + j
            bj = bias[row]
            for i in range(m):
                v = y[row, i] + bj
                lp[k, i] += v * v


@njit(nogil=True, fastmath=_FASTMATH, error_model="numpy", cache=True)
def full_tile_weigh(e, zt, m, j0, offsets, wbuf, s1):  # pragma: no cover
    """One feature block's left factor of the scatter product, and its first moments.

    Parameters
    ----------
    e : ndarray of shape (K, >= m)
        Responsibilities (times the row weights), from :func:`tile_responsibilities`.
    zt : ndarray of shape (d, >= m)
        From :func:`full_tile_design`.
    j0 : int
        The block's first feature.
    offsets : ndarray of shape (K, d)
        Component k's rows are taken about ``c + offsets[k]`` (its current mean).
    wbuf : ndarray of shape (K*b, >= m)
        Out: ``r_k (z_j - o_kj)`` for the block's features j, rows ``(k, j)``.
    s1 : ndarray of shape (K, d), float64
        ``sum r_k (z_j - o_kj)`` is added here.
    """
    n_components = e.shape[0]
    b = wbuf.shape[0] // n_components
    zero = e.dtype.type(0.0)
    for k in range(n_components):
        for jj in range(b):
            j = j0 + jj
            o = offsets[k, j]
            row = k * b + jj
            acc = zero
            for i in range(m):
                v = (zt[j, i] - o) * e[k, i]
                wbuf[row, i] = v
                acc += v
            s1[k, j] += acc


# No fastmath: each entry is ``sum - s1_j o_c`` with the product rounded before the
# subtraction (no fused multiply-add), as numpy's ``s2 - outer(s1, o)`` on the square
# scatters rounded it before this kernel packed them directly.
@njit(nogil=True, error_model="numpy", cache=True)
def full_pack_block(acc, j0, s1, offsets, out):  # pragma: no cover
    """One feature block's rows of every component's scatter, packed and centred.

    Parameters
    ----------
    acc : ndarray of shape (K*b, >= j0 + b), float64
        Rows ``(k, jj)``: ``sum r_k (z_j - o_kj) z^T`` for the block's features
        ``j = j0 + jj`` (see :func:`full_tile_weigh`); only columns ``<= j`` are read.
    j0 : int
        The block's first feature.
    s1 : ndarray of shape (K, d), float64
        ``sum r_k (z - o_k)``.
    offsets : ndarray of shape (K, d), float64
        The ``o_k``.
    out : ndarray of shape (K, d (d + 1) / 2), float64
        Rows ``j`` of the lower triangles (row-major, ``numpy.tril_indices`` order) are
        written: ``sum r_k (z_j - o_kj)(z_c - o_kc)`` for ``c <= j``.
    """
    n_components = s1.shape[0]
    b = acc.shape[0] // n_components
    for k in range(n_components):
        for jj in range(b):
            j = j0 + jj
            row = k * b + jj
            start = j * (j + 1) // 2
            sj = s1[k, j]
            for c in range(j + 1):
                out[k, start + c] = acc[row, c] - sj * offsets[k, c]
