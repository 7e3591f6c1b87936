"""Sufficient statistics are an additive value."""

import numpy as np
import pytest
from conftest import COV_TYPES, make_blobs

from dask_em import GaussianMixture, SuffStats
from dask_em.engine._stats import block_statistics, tile_rows


def _params(ct, X):
    gm = GaussianMixture(3, covariance_type=ct, max_iter=2, random_state=0, tol=0)
    with pytest.warns(UserWarning):
        gm.fit(X)
    return gm._params()


def _assert_stats_equal(a, b, rtol=1e-12):
    np.testing.assert_array_equal(a.reference, b.reference)
    np.testing.assert_allclose(a.nk, b.nk, rtol=rtol)
    np.testing.assert_allclose(a.s1, b.s1, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(a.s2, b.s2, rtol=rtol)
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=rtol)
    assert a.n_rows == b.n_rows
    assert a.weight_total == b.weight_total


@pytest.mark.parametrize("ct", COV_TYPES)
def test_statistics_of_a_union_are_the_sum(ct):
    X, _ = make_blobs(n=7000)
    p = _params(ct, X)
    # Split points off the tile grid, including a one-row and an empty part.
    cuts = [0, 1, 1, 2500, 2500 + tile_rows(ct, 3, X.shape[1]) + 3, 7000]
    parts = [block_statistics(X[a:b], [p])[0] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    (whole,) = block_statistics(X, [p])
    total = SuffStats.zero(ct, whole.reference)
    for s in parts:
        total = total + s
    _assert_stats_equal(total, whole)


def test_statistics_of_several_candidates_equal_separate_calls():
    X, _ = make_blobs(n=3000)
    ps = [_params(ct, X) for ct in ("full", "diag")]
    together = block_statistics(X, ps)
    for p, s in zip(ps, together, strict=True):
        _assert_stats_equal(s, block_statistics(X, [p])[0], rtol=0)


def test_adding_statistics_about_different_centres_is_refused():
    a = SuffStats.zero("diag", np.zeros((2, 2)))
    b = SuffStats.zero("diag", np.ones((2, 2)))
    with pytest.raises(ValueError, match="different references"):
        a + b


def test_float32_block_in_float64_arithmetic_equals_the_float64_block():
    X, _ = make_blobs(n=3000)
    p = _params("full", X)
    X32 = X.astype(np.float32)
    (s32,) = block_statistics(X32, [p], compute_dtype="float64")
    (s64,) = block_statistics(X32.astype(np.float64), [p])
    assert s32.s2.dtype == np.float64
    _assert_stats_equal(s32, s64, rtol=0)


@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_float32_arithmetic_gives_float64_statistics_within_single_precision(ct, offset):
    """float32 tiles (the default for float32 input) round each product once; every sum
    across tiles is float64, so the statistics stay within a few float32 ulps, also
    for data far from the origin (the design is centred in float64 first)."""
    X, _ = make_blobs(n=20000, offset=offset)
    p = _params(ct, X)
    X32 = X.astype(np.float32)
    (fast,) = block_statistics(X32, [p])
    (slow,) = block_statistics(X32, [p], compute_dtype="float64")
    assert fast.s2.dtype == np.float64 and isinstance(fast.loglik, float)
    # tied always computes in float64; the others really run in float32
    assert np.array_equal(fast.s2, slow.s2) == (ct == "tied")
    np.testing.assert_allclose(fast.nk, slow.nk, rtol=1e-5)
    # Judged on what the M-step makes of them: the means within 1e-5 of the data's
    # spread (first moments about the current means are near zero, so no relative
    # test), second moments within 1e-5 of each component's largest entry.
    means = [st.reference + st.s1 / st.nk[:, None] for st in (fast, slow)]
    np.testing.assert_allclose(means[0], means[1], rtol=0, atol=1e-5 * X.std())
    scale = np.abs(slow.s2).reshape(len(slow.nk), -1).max(axis=1) if ct != "tied" else None
    if ct == "tied":
        scale = np.abs(slow.s2).max()
    elif ct != "spherical":
        scale = scale.reshape((-1,) + (1,) * (slow.s2.ndim - 1))
    worst = float(np.max(np.abs(fast.s2 - slow.s2) / scale))
    assert worst <= 2e-6, worst
    np.testing.assert_allclose(fast.loglik, slow.loglik, rtol=1e-6)
    # float32 arithmetic for float64 input, on request
    (asked,) = block_statistics(X32.astype(np.float64), [p], compute_dtype="float32")
    _assert_stats_equal(asked, fast, rtol=0)


def test_unknown_compute_dtype_is_refused():
    X, _ = make_blobs(n=100)
    p = _params("diag", X)
    with pytest.raises(ValueError, match="compute_dtype"):
        block_statistics(X, [p], compute_dtype="float16")


def _scipy_reference(X, p, w):
    """Statistics of a mixture from scipy's normal log-densities, about the same
    reference points as the engine (component means for full, the centre otherwise)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal, norm

    d = X.shape[1]
    X = X.astype(np.float64)
    if p.covariance_type == "full":
        pairs = zip(p.means, p.covariances, strict=True)
        dens = [multivariate_normal(mu, cov).logpdf(X) for mu, cov in pairs]
        lp = np.log(p.weights) + np.stack(dens, axis=1).reshape(len(X), -1)
    else:
        var = p.covariances
        if p.covariance_type == "spherical":
            var = np.repeat(var[:, None], d, 1)
        lp = np.log(p.weights) + norm.logpdf(X[:, None, :], p.means, np.sqrt(var)).sum(axis=2)
    ln = logsumexp(lp, axis=1)
    r = np.exp(lp - ln[:, None]) * w[:, None]
    if p.covariance_type == "full":
        xc = X[:, None, :] - p.means  # (n, K, d)
        s1 = np.einsum("nk,nkd->kd", r, xc)
        s2 = np.einsum("nk,nkd,nke->kde", r, xc, xc)
    else:
        xc = X - p.center
        s1 = r.T @ xc
        s2 = r.T @ xc**2
        s2 = s2 if p.covariance_type == "diag" else s2.sum(1)
    return r.sum(0), s1, s2, w @ ln


@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_kernels_match_scipy(ct, d, dtype, weighted):
    """The compiled tile kernels (feature loops unrolled by 4 and by 2 with remainders,
    rows transposed 16 at a time with a remainder; several tiles and a short last one)
    against scipy's log-densities."""
    n = 2 * tile_rows(ct, 4, d, np.dtype(dtype).itemsize) + 37
    X, _ = make_blobs(n=n, d=d, k=4, seed=d, offset=50.0)
    p = GaussianMixture(4, covariance_type=ct, max_iter=2, random_state=0, tol=0)
    with pytest.warns(UserWarning):
        p.fit(X[:3000])
    p = p._params()
    w = np.random.default_rng(1).uniform(0.5, 2.0, n) if weighted else np.ones(n)
    X = X.astype(dtype)
    (got,) = block_statistics(X, [p], sample_weight=w if weighted else None)
    nk, s1, s2, ll = _scipy_reference(X, p, w)
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got.nk, nk, rtol=rtol)
    # First moments about the current means are near zero: judged against the scatter.
    scale = np.sqrt(np.abs(s2).max() * nk.max())
    np.testing.assert_allclose(got.s1, s1, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(got.s2, s2, rtol=rtol, atol=rtol * np.abs(s2).max())
    np.testing.assert_allclose(got.loglik, ll, rtol=rtol)
    assert got.weight_total == pytest.approx(w.sum())


@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compiled_kernels_name_the_first_non_finite_value(ct, dtype, bad):
    from dask_em import NonFiniteError

    X, _ = make_blobs(n=20000)
    p = _params(ct, X)
    X = X.astype(dtype)
    X[[15000, 17000], 1] = bad
    with pytest.raises(
        NonFiniteError,
        match=r"block 3 \(rows 100-20099\), first at row 15100, column 1 .* 2 bad row",
    ):
        block_statistics(X, [p], row_offset=100, block_index=3)


@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
def test_compiled_kernels_report_overflow_of_finite_rows(ct):
    from dask_em import NonFiniteError

    X, _ = make_blobs(n=5000)
    p = _params(ct, X)
    X[4321] = 1e200  # finite, but its squared distance is not
    with pytest.raises(NonFiniteError, match=r"Numerical overflow.*row 4321"):
        block_statistics(X, [p])


def test_packed_full_statistics_add_and_unpack_exactly():
    # What travels through a tree reduction: full scatters as lower triangles only.
    rng = np.random.default_rng(3)
    k, d = 4, 7

    def stats():
        a = rng.normal(size=(k, 20, d))
        s2 = np.einsum("kni,knj->kij", a, a)
        s2 = np.tril(s2) + np.tril(s2, -1).transpose(0, 2, 1)  # exactly symmetric
        return SuffStats("full", rng.normal(size=(k, d)), rng.uniform(1, 2, k),
                         rng.normal(size=(k, d)), s2, -3.5, 20, 20.0)  # fmt: skip

    a, b = stats(), stats()
    b = SuffStats("full", a.reference, b.nk, b.s1, b.s2, b.loglik, b.n_rows, b.weight_total)
    packed = a.packed() + b.packed()
    assert packed.s2.shape == (k, d * (d + 1) // 2)
    np.testing.assert_array_equal(packed.unpacked().s2, (a + b).s2)
    np.testing.assert_array_equal(packed.nk, (a + b).nk)
    unpacked = packed.unpacked()
    assert unpacked.unpacked() is unpacked and unpacked.packed().s2.shape == packed.s2.shape
    diag = SuffStats.zero("diag", a.reference)
    assert diag.packed() is diag and diag.unpacked() is diag
