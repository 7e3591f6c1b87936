"""The limits a high-dimensional full-covariance iteration is held against (suite highd).

- FLOP limit: ``N K d^2`` multiply-adds (the triangular E-step solve, ``d^2 / 2`` per row
  and component, and the symmetric scatter, ``d^2 / 2``) at the rate of a large square
  GEMM measured in the same run.
- BLAS limit: the products one iteration needs, each timed alone on the same data at its
  best shape among the usual ones: the E-step as K GEMMs ``X P_k`` or K TRMMs, the scatter
  as K SYRKs or K GEMMs of ``sqrt(r_k) (X - mu_k)``; BLAS with its default threads.
- Shape options beyond those (one wide GEMM ``X [P_1 ... P_K]`` in row tiles), reported
  next to them: the shapes that can beat the BLAS limit.
- The kernel's feature block: one block's statistics on one thread for several block
  sizes (thread CPU time, so that other processes on the machine count less).
"""

from __future__ import annotations

import time

import numpy as np

# Rows per tile of the wide product (its output, K*d columns, stays ~16-32 MB).
_WIDE_TILE_ROWS = 8192


def _best(func, repeats: int) -> float:
    """Min seconds of ``func()`` over ``repeats`` calls, after one untimed call."""
    func()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_rate(dtype="float64", n: int = 3072, repeats: int = 3) -> float:
    """FLOP/s of a square ``n x n x n`` GEMM (BLAS default threads)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, n)).astype(dtype)
    b = rng.normal(size=(n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    return 2.0 * n**3 / _best(lambda: np.matmul(a, b, out=out), repeats)


def flop_limit(n: int, d: int, k: int, rate: float) -> float:
    """Seconds of ``N K d^2`` multiply-adds at ``rate`` FLOP/s."""
    return 2.0 * n * k * d * d / rate


def _weighted_rows(x, params):
    """``sqrt(r_k) (x - mu_k)`` of every component (responsibilities from the model)."""
    from scipy.special import logsumexp

    from dask_em.engine._stats import log_prob_block

    logp = log_prob_block(x, params)
    r = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
    return [np.sqrt(r[:, k])[:, None] * (x - params.means[k]) for k in range(r.shape[1])]


def e_step_products(x, params, repeats: int) -> dict:
    """Seconds of the E-step products: K GEMMs, K TRMMs, one wide GEMM in row tiles."""
    from scipy.linalg.blas import dtrmm

    chol = np.ascontiguousarray(params.precisions_cholesky)
    k, d = params.means.shape
    out = np.empty((x.shape[0], d))
    xt = np.asfortranarray(x.T)  # (d, N), F-ordered: TRMM works on it in place
    work = np.empty_like(xt, order="F")

    def gemms():
        for p in chol:
            np.matmul(x, p, out=out)

    def trmms():
        t = 0.0
        for p in chol:
            np.copyto(work, xt)  # TRMM overwrites its input; the copy is not timed
            t0 = time.perf_counter()
            dtrmm(1.0, np.asfortranarray(p), work, lower=0, trans_a=1, overwrite_b=1)
            t += time.perf_counter() - t0
        return t

    wide = np.ascontiguousarray(chol.transpose(1, 0, 2).reshape(d, k * d))
    tile = np.empty((_WIDE_TILE_ROWS, k * d))

    def wide_gemm():
        for a in range(0, x.shape[0], _WIDE_TILE_ROWS):
            b = min(x.shape[0], a + _WIDE_TILE_ROWS)
            np.matmul(x[a:b], wide, out=tile[: b - a])

    trmms()
    return {
        "K GEMMs": _best(gemms, repeats),
        "K TRMMs": min(trmms() for _ in range(repeats)),
        "one wide GEMM (row tiles)": _best(wide_gemm, repeats),
    }


def scatter_products(x, params, repeats: int) -> dict:
    """Seconds of the K scatters ``A_k^T A_k``, ``A_k = sqrt(r_k) (x - mu_k)``: SYRK, GEMM."""
    from scipy.linalg.blas import dsyrk

    rows = [np.asfortranarray(a.T) for a in _weighted_rows(x, params)]  # (d, N) each
    d = x.shape[1]
    out = np.empty((d, d))

    def syrks():
        for a in rows:
            dsyrk(1.0, a, trans=0)

    def gemms():
        for a in rows:
            np.matmul(a, a.T, out=out)

    return {"K SYRKs": _best(syrks, repeats), "K GEMMs": _best(gemms, repeats)}


def blas_limit(x, params, repeats: int) -> dict:
    """The BLAS limit (best E-step form + best scatter form) and every form's time."""
    e = e_step_products(x, params, repeats)
    s = scatter_products(x, params, repeats)
    thin_e = min(e["K GEMMs"], e["K TRMMs"])
    return {
        "limit": thin_e + min(s.values()),
        "e_step": e,
        "scatter": s,
        # The wide E-step product with the best scatter: what a change of shape allows.
        "wide_limit": min(e.values()) + min(s.values()),
    }


def kernel_block_times(x, params, blocks, repeats: int = 3) -> dict:
    """Thread CPU seconds of one block's statistics on one thread (BLAS at 1 thread)
    for each feature block size (``d`` itself: one block, the plain wide products), in
    ``x``'s dtype."""
    from threadpoolctl import threadpool_limits

    from dask_em.engine import _fused
    from dask_em.engine._stats import block_statistics

    saved = _fused.feature_block
    out = {}
    try:
        with threadpool_limits(1, "blas"):
            for _ in range(repeats):
                for b in blocks:
                    _fused.feature_block = lambda d, k, itemsize=8, b=b: min(b, d)
                    # The factor blocks are cached per parameters object: built anew
                    # for each size, or every size after the first reuses its blocks.
                    _fused._FACTORS.pop(params, None)
                    block_statistics(x[:256], [params])
                    t0 = time.thread_time()
                    block_statistics(x, [params])
                    t = time.thread_time() - t0
                    out[b] = min(out.get(b, np.inf), t)
    finally:
        _fused.feature_block = saved
        _fused._FACTORS.pop(params, None)
    return out
