"""High-dimensional data: the feature-blocked full-covariance kernel against independent
references, scikit-learn parity at d = 128 and 256, and combine nodes bounded in memory."""

import gc
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import COV_TYPES, make_blobs
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SKGaussianMixture
from test_parity import assert_same_model

from dask_em import GaussianMixture
from dask_em.engine import _fused, _memory, _reduce
from dask_em.engine._params import MixtureParams
from dask_em.engine._stats import SuffStats, block_statistics


def _full_params(d, k, seed, lower):
    """A full-covariance mixture with upper (an M-step's) or lower (``precisions_init``'s)
    triangular precision factors."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, size=(k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    precs = np.linalg.inv(covs)
    if lower:
        chol = np.linalg.cholesky(precs)
    else:
        chol = np.stack([np.linalg.inv(np.linalg.cholesky(c)).T for c in covs])
    weights = rng.dirichlet(np.full(k, 3.0))
    return MixtureParams(weights, means, covs, chol, "full")


def _reference_statistics(x, params, w):
    """Row by row from scipy's densities: nk, s1, s2 about each mean, sum w log p."""
    logp = np.stack(
        [
            np.log(wk) + multivariate_normal(mu, c).logpdf(x)
            for wk, mu, c in zip(params.weights, params.means, params.covariances, strict=True)
        ],
        axis=1,
    )
    top = logp.max(axis=1, keepdims=True)
    norm = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
    r = np.exp(logp - norm[:, None]) * w[:, None]
    diffs = x[None, :, :] - params.means[:, None, :]
    s1 = np.einsum("nk,knd->kd", r, diffs)
    s2 = np.einsum("nk,knd,kne->kde", r, diffs, diffs)
    return r.sum(axis=0), s1, s2, float(w @ norm)


@pytest.mark.parametrize("packed", [False, True], ids=["square", "packed"])
@pytest.mark.parametrize("lower", [False, True], ids=["upper", "lower"])
@pytest.mark.parametrize("d", [150, 4])
def test_full_statistics_by_feature_blocks_equal_row_by_row(d, lower, packed):
    # d = 150: blocks of 16, the last of 6 features; d = 4: one block (the small-d path).
    params = _full_params(d, 3, seed=d, lower=lower)
    rng = np.random.default_rng(1)
    x = params.means[rng.integers(0, 3, 900)] + rng.normal(size=(900, d))
    w = rng.uniform(0.5, 2.0, 900)
    (got,) = block_statistics(x, [params], sample_weight=w, packed=packed)
    nk, s1, s2, loglik = _reference_statistics(x, params, w)
    np.testing.assert_allclose(got.nk, nk, rtol=1e-10)
    np.testing.assert_allclose(got.s1, s1, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.loglik, loglik, rtol=1e-12)
    if packed:
        # The lower triangles, row by row (numpy.tril_indices' order).
        assert got.s2.shape == (3, d * (d + 1) // 2)
        rows, cols = np.tril_indices(d)
        np.testing.assert_allclose(got.s2, s2[:, rows, cols], rtol=1e-9, atol=1e-8)
        return
    np.testing.assert_allclose(got.s2, s2, rtol=1e-9, atol=1e-8)
    assert np.array_equal(got.s2, got.s2.transpose(0, 2, 1))


@pytest.mark.parametrize("d", [160, 520])
def test_float32_feature_blocks_stay_close_to_float64(d):
    # d = 520: float32's blocks of 32 features, the last of 8.
    params = _full_params(d, 4, seed=3, lower=False)
    rng = np.random.default_rng(2)
    x = params.means[rng.integers(0, 4, 3000)] + rng.normal(size=(3000, d))
    (f64,) = block_statistics(x, [params])
    (f32,) = block_statistics(x.astype(np.float32), [params])
    assert f32.s2.dtype == np.float64
    np.testing.assert_allclose(f32.loglik, f64.loglik, rtol=1e-6)
    np.testing.assert_allclose(f32.s2, f64.s2, rtol=1e-3, atol=0.05)


def test_feature_blocks_from_d():
    assert [_fused.feature_block(d, 8) for d in (3, 4, 16, 40, 64, 768)] == [3, 4, 4, 10, 16, 16]
    # float32 tiles take blocks of 32 from d = 512 (measured in benchmarks/suite_highd).
    f32 = [_fused.feature_block(d, 8, itemsize=4) for d in (16, 64, 256, 511, 512, 768)]
    assert f32 == [4, 16, 16, 16, 32, 32]


@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("ct", COV_TYPES)
def test_high_d_equals_sklearn(ct, d):
    # Ten rows a feature: every component well determined (its precision too).
    X, _ = make_blobs(n=10 * d, d=d, k=3, seed=d)
    sk_start = SKGaussianMixture(
        3, covariance_type=ct, init_params="kmeans", random_state=0, max_iter=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_start.fit(X)
        start = dict(
            weights_init=sk_start.weights_,
            means_init=sk_start.means_,
            precisions_init=sk_start.precisions_,
        )
        common = dict(covariance_type=ct, max_iter=4, tol=0, **start)
        sk = SKGaussianMixture(3, **common).fit(X)
        ours = GaussianMixture(3, **common).fit(da.from_array(X, chunks=(400, d)))
    assert_same_model(ours, sk, lb_rtol=1e-10, rtol=1e-6)


def test_fan_in_bounds_a_node_by_the_memory_it_may_take():
    gib = 2**30
    # K=16, d=768 full statistics on a worker thread of 1 GiB: two inputs a node.
    assert _memory.fan_in(16 * 768 * 768 * 8, 16, memory=gib) == 2
    # Small statistics keep the fan-in asked for, without asking the scheduler.
    assert _memory.fan_in(8 * 16 * 16 * 8, 16, memory=1) == 16
    # (f + 1) values of 10 MiB in a quarter of 400 MiB: f = 9.
    assert _memory.fan_in(10 * 2**20, 16, memory=400 * 2**20) == 9
    assert _memory.fan_in(10 * 2**20, 4, memory=400 * 2**20) == 4


def _large_chunk(block, shared, row_offset, block_index, w=None):
    return (np.full(2**20, float(block.shape[0])),)


def test_every_reduction_uses_the_fan_in_that_fits(monkeypatch):
    x = da.ones((100, 2), chunks=(5, 2))
    # 8 MiB values on threads that may use 64 MiB: nodes of (1 + 1) x 8 MiB <= 16 MiB.
    monkeypatch.setattr(_memory, "memory_per_thread", lambda: 64 * 2**20)
    graph = _reduce.tree_reduce(x, _large_chunk, None, split_every=8)
    nodes = [v for k, v in dict(graph.dask).items() if "combine" in str(k) or "result" in str(k)]
    assert max(len(task) - 1 for task in nodes) == 2
    with dask.config.set(scheduler="sync"):
        (total,) = _reduce.compute_pass(x, _large_chunk, None, split_every=8)
    np.testing.assert_array_equal(total, np.full(2**20, 100.0))


def test_sums_are_added_into_one_buffer_and_equal_pairwise_sums():
    params = _full_params(5, 2, seed=0, lower=False)
    rng = np.random.default_rng(0)
    parts = [block_statistics(rng.normal(size=(50, 5)), [params])[0] for _ in range(4)]
    total = SuffStats.sum_of(parts)
    chained = parts[0] + parts[1] + parts[2] + parts[3]
    for name in ("nk", "s1", "s2"):
        np.testing.assert_allclose(getattr(total, name), getattr(chained, name), rtol=1e-14)
        assert getattr(total, name) is not getattr(parts[0], name)
    assert total.n_rows == 200 and total.loglik == pytest.approx(chained.loglik, rel=1e-14)
    a = np.arange(3.0)
    out = _reduce.add_values([a, a, a])
    assert out is not a and np.array_equal(out, 3 * a) and np.array_equal(a, np.arange(3.0))
    assert _reduce.add_tuples((1, a), (2, a))[0] == 3


def test_factor_blocks_are_built_once_per_parameters_and_dtype():
    params = _full_params(40, 3, seed=5, lower=False)
    first = _fused.factor_blocks(params, params.center, np.dtype(np.float64))
    assert _fused.factor_blocks(params, params.center, np.dtype(np.float64)) is first
    single = _fused.factor_blocks(params, params.center, np.dtype(np.float32))
    assert single is not first and single[0].matrix.dtype == np.float32
    # Equal values in another object are another entry, and entries go with their object.
    twin = _full_params(40, 3, seed=5, lower=False)
    assert _fused.factor_blocks(twin, twin.center, np.dtype(np.float64)) is not first
    n = len(_fused._FACTORS)
    del params, twin
    gc.collect()
    assert len(_fused._FACTORS) == n - 2
