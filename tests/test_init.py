"""Initialisation: distributed k-means, k-means++, restarts, determinism, *_init overrides."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import COV_TYPES, make_blobs
from sklearn.cluster import KMeans as SKKMeans
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from dask_em import ConvergenceWarning, GaussianMixture, NonFiniteError
from dask_em.engine._params import m_step
from dask_em.engine._stats import responsibility_statistics
from dask_em.init import _kmeans, _kmeans_local, _kmeans_runs, _kmeans_values
from dask_em.init._starts import StartRequest, make_starts

INITS = ["kmeans", "k-means++", "random", "random_from_data"]
EPS = float(np.finfo(np.float64).eps)


@pytest.fixture(scope="module")
def separated():
    """Four well-separated blobs and the means of their true labels (sorted)."""
    X, y = make_blobs(n=3000, k=4, d=3, seed=4, spread=10)
    truth = np.array([X[y == j].mean(0) for j in range(4)])
    return X, y, truth[np.argsort(truth[:, 0])]


@pytest.fixture(scope="module")
def overlapping():
    """Six overlapping blobs: restarts land on different optima."""
    return make_blobs(n=1500, k=6, d=2, seed=8, spread=2.5)[0]


def _fit(X, sample_weight=None, **kw):
    params = dict(n_components=4, random_state=0)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(**params).fit(X, sample_weight=sample_weight)


def _sorted(means):
    return means[np.argsort(means[:, 0])]


def assert_same_params(a, b, rtol=1e-12):
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(a.means_, b.means_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol)


# --------------------------------------------------------------------------------------
# Recovery and agreement with scikit-learn
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_every_init_recovers_the_true_means(init, separated):
    X, _, truth = separated
    # One start from uniform random responsibilities puts every component near the
    # global mean, where EM may stay stuck (as in scikit-learn); restarts fix that.
    n_init, tol = (3, 1e-4) if init == "random" else (1, 1e-6)
    gm = _fit(X, init_params=init, n_init=n_init, tol=tol, max_iter=300)
    np.testing.assert_allclose(_sorted(gm.means_), truth, atol=0.01)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_kmeans_start_equals_sklearns_kmeans_start(ct, separated):
    """max_iter=0 keeps the start. Both k-means find the true partition here, so the
    starts agree to round-off although the seeding draws differ."""
    X, _, _ = separated
    ours = _fit(X, covariance_type=ct, max_iter=0)
    sk = SKGaussianMixture(4, covariance_type=ct, random_state=0, max_iter=0).fit(X)
    o, s = np.argsort(ours.means_[:, 0]), np.argsort(sk.means_[:, 0])
    np.testing.assert_allclose(ours.means_[o], sk.means_[s], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.weights_[o], sk.weights_[s], rtol=1e-12)
    ours_p = ours.precisions_ if ct == "tied" else ours.precisions_[o]
    sk_p = sk.precisions_ if ct == "tied" else sk.precisions_[s]
    # scikit-learn's diag/spherical scatter uses raw moments (x^2 - 2 x mu + mu^2).
    np.testing.assert_allclose(ours_p, sk_p, rtol=1e-10 if ct in ("full", "tied") else 1e-9)


def test_kmeans_centres_equal_sklearn_kmeans(separated):
    X, _, _ = separated
    (res,) = _kmeans.kmeans(da.from_array(X, chunks=(700, 3)), [(4, 3, ("full",))])
    sk = SKKMeans(4, n_init=1, random_state=0).fit(X)
    np.testing.assert_allclose(
        _sorted(res.centers), _sorted(sk.cluster_centers_), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(res.inertia, sk.inertia_, rtol=1e-10)
    assert res.converged


@pytest.mark.parametrize("ct", COV_TYPES)
def test_one_hot_statistics_equal_responsibility_statistics(ct, blobs):
    """The k-means statistics pass (moments about each cluster's centre, grouped by
    label) gives the M-step that dense one-hot responsibilities give."""
    X, _ = blobs
    (res,) = _kmeans.kmeans(da.from_array(X, chunks=(300, 3)), [(3, 1, (ct,))])
    labels = np.argmin(((X[:, None, :] - res.centers[None]) ** 2).sum(-1), axis=1)
    dense = responsibility_statistics(X, np.eye(3)[labels], X.mean(0), ct)
    a, b = m_step(res.statistics[ct], 1e-6, EPS), m_step(dense, 1e-6, EPS)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-13)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-10, atol=1e-13)


def test_kmeanspp_start_is_distinct_rows_like_sklearns_one_hot_start(separated):
    X, _, _ = separated
    gm = _fit(X, init_params="k-means++", covariance_type="diag", max_iter=0)
    rows = {tuple(r) for r in X}
    assert all(tuple(m) in rows for m in gm.means_)
    assert len({tuple(m) for m in gm.means_}) == 4
    np.testing.assert_allclose(gm.weights_, 0.25)
    np.testing.assert_allclose(gm.covariances_, 1e-6)
    ((centers, index),) = _kmeans.kmeans_plusplus(da.from_array(X, chunks=(500, 3)), [(4, 0)])
    np.testing.assert_array_equal(centers, X[index])


@pytest.mark.parametrize("init", ["kmeans", "k-means++"])
def test_initial_means_inside_the_data_range_and_distinct(init):
    """Structureless data, many seeds: no start leaves the data's box or repeats."""
    X = np.random.default_rng(1).uniform(-1, 1, size=(400, 2)) ** 3
    Xd = da.from_array(X, chunks=(128, 2))
    reqs = [StartRequest(7, "diag", 4, np.random.RandomState(s)) for s in range(3)]
    for group in make_starts(Xd, reqs, init, reg_covar=1e-6, eps=EPS):
        for p in group:
            assert np.all(p.means >= X.min(0)) and np.all(p.means <= X.max(0))
            assert len({tuple(m) for m in p.means}) == 7


# --------------------------------------------------------------------------------------
# Restarts
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_n_init_draws_distinct_starts_from_one_random_state(init):
    """Structureless data, where different seeds give different k-means optima."""
    X = np.random.default_rng(1).uniform(size=(1500, 2))
    for seed in (0, 1):
        one = _fit(X, n_components=6, init_params=init, random_state=seed, max_iter=0)
        five = _fit(X, n_components=6, init_params=init, random_state=seed, n_init=5, max_iter=0)
        means = [_sorted(c.params.means) for c in five.fit_state_.candidates]
        # Drawn start after start from one RandomState: the first start is n_init=1's.
        np.testing.assert_array_equal(means[0], _sorted(one.fit_state_.candidates[0].params.means))
        assert len({m.tobytes() for m in means}) == 5


@pytest.mark.parametrize("init", INITS)
def test_n_init_5_is_never_worse_than_n_init_1(init, overlapping):
    for seed in (0, 1):
        kw = dict(n_components=6, init_params=init, random_state=seed, max_iter=30)
        one, five = _fit(overlapping[:1000], **kw), _fit(overlapping[:1000], n_init=5, **kw)
        assert five.lower_bound_ >= one.lower_bound_


def test_restarts_share_kmeans_passes(overlapping, monkeypatch):
    passes = []
    real = _kmeans._Context.run_pass

    def counting(self, tasks):
        passes.append(len(tasks))
        return real(self, tasks)

    monkeypatch.setattr(_kmeans._Context, "run_pass", counting)
    _fit(overlapping, n_components=6, n_init=1, max_iter=0)
    single = len(passes)
    passes.clear()
    _fit(overlapping, n_components=6, n_init=5, max_iter=0)
    # Five runs advance in the same passes: as many passes as the longest run, not 5x.
    assert len(passes) <= single + _kmeans.MAX_ITER
    assert len(passes) < 2 * single
    assert max(passes) >= 5


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------
CHUNKINGS = [(-1, None), ((111, 300, 1, 288), 3), (100, 2)]


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random"])
def test_same_start_and_fit_for_every_chunking(init, overlapping):
    X = overlapping[:700]
    w = np.random.default_rng(0).integers(0, 3, size=700).astype(float)
    ref = None
    for rows, split_every in CHUNKINGS:
        Xd = da.from_array(X, chunks=(rows, -1))
        wd = da.from_array(w, chunks=(Xd.chunks[0],))
        kw = dict(n_components=5, init_params=init, n_init=2, max_iter=10, tol=0)
        fits = (
            _fit(Xd, split_every=split_every, **kw),
            _fit(Xd, split_every=split_every, sample_weight=wd, **kw),
        )
        if ref is None:
            ref = fits
        else:
            for a, b in zip(fits, ref, strict=True):
                assert_same_params(a, b)


@pytest.mark.parametrize("init", ["kmeans", "k-means++"])
def test_distributed_equals_threaded(init, overlapping, client):
    X = overlapping
    Xd = da.from_array(X, chunks=(400, -1))
    w = da.from_array(np.linspace(0.5, 2.0, X.shape[0]), chunks=(400,))
    kw = dict(n_components=5, init_params=init, n_init=2, max_iter=10, tol=0)
    with dask.config.set(scheduler="threads"):
        threaded = (_fit(Xd, **kw), _fit(Xd, sample_weight=w, **kw))
    distributed = (_fit(Xd, **kw), _fit(Xd, sample_weight=w, **kw))
    for a, b in zip(distributed, threaded, strict=True):
        assert_same_params(a, b)


def test_uniforms_depend_on_the_row_index_only():
    key = _kmeans.stream_key(7, 2, 0)
    rows = np.arange(10_000)
    u = _kmeans.uniforms(key, rows)
    np.testing.assert_array_equal(u[1234:5678], _kmeans.uniforms(key, rows[1234:5678]))
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    other = _kmeans.uniforms(_kmeans.stream_key(7, 2, 1), rows)
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.05


# --------------------------------------------------------------------------------------
# Overrides, weights, empty clusters, bad data
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ct", ["full", "diag"])
@pytest.mark.parametrize("given", ["weights", "means", "precisions"])
def test_init_overrides_like_sklearn(ct, given, separated):
    """scikit-learn still runs k-means for the parts not given (e.g. covariances stay
    those of the k-means labels around the k-means means)."""
    X, _, truth = separated
    rng = np.random.default_rng(0)
    arrays = {
        "weights": np.array([0.1, 0.2, 0.3, 0.4]),
        "means": truth + rng.normal(0, 0.5, truth.shape),
        "precisions": (
            np.stack([np.eye(3) * (1 + j) for j in range(4)])
            if ct == "full"
            else 1.0 + rng.random((4, 3))
        ),
    }
    kw = {f"{given}_init": arrays[given]}
    ours = _fit(X, covariance_type=ct, max_iter=0, **kw)
    sk = _sklearn_start(X, ct, **kw)
    # The k-means label order differs between the two; take it from the plain starts.
    base, sk_base = _fit(X, covariance_type=ct, max_iter=0), _sklearn_start(X, ct)
    o, s = np.argsort(base.means_[:, 0]), np.argsort(sk_base.means_[:, 0])
    for name, rtol in (("weights", 1e-12), ("means", 1e-12), ("precisions_cholesky", 1e-9)):
        a, b = getattr(ours, name + "_"), getattr(sk, name + "_")
        if name.startswith(given):
            np.testing.assert_allclose(a, b, rtol=1e-12)
            if given != "precisions":
                np.testing.assert_array_equal(a, arrays[given])
        else:
            np.testing.assert_allclose(a[o], b[s], rtol=rtol, atol=1e-12)


def _sklearn_start(X, ct, **kw):
    """scikit-learn's start itself: its fit with max_iter=0 and precisions_init fails
    (covariances_ is never set), so call the initialisation it runs."""
    sk = SKGaussianMixture(4, covariance_type=ct, **kw)
    sk._initialize_parameters(X, np.random.RandomState(0))
    return sk


def test_zero_weight_rows_never_become_centres(separated):
    X, _, truth = separated
    outliers = np.full((30, 3), 1e3)
    Xo = np.vstack([X, outliers])
    w = np.r_[np.ones(len(X)), np.zeros(30)]
    for init in ("kmeans", "k-means++"):
        gm = _fit(Xo, init_params=init, max_iter=0, sample_weight=w)
        assert np.all(np.abs(gm.means_) < 100)
        gm = _fit(Xo, init_params=init, sample_weight=w, tol=1e-6, max_iter=300)
        np.testing.assert_allclose(_sorted(gm.means_), truth, atol=0.01)


def test_empty_cluster_is_reseeded_on_the_farthest_row():
    far = _kmeans_values.Sample(
        3,
        np.array([-9.0, -4.0, -1.0]),
        np.array([5, 1, 2]),
        np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]]),
        np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]),
    )
    part = _kmeans_values.LloydPart(
        np.array([4.0, 1.0, 0.0]), np.array([[6.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), 0.0, far
    )
    base = np.zeros((3, 2))
    old = np.array([[1.0, 0.0], [1.0, 0.0], [9.0, 9.0]])
    new, n_empty = _kmeans_runs._relocate(part, old, base)
    assert n_empty == 1
    np.testing.assert_allclose(new[2], [3.0, 0.0])  # the farthest row
    np.testing.assert_allclose(new[0], [1.0, 0.0])  # (6 - 3) / (4 - 1): it left cluster 0
    np.testing.assert_allclose(new[1], [1.0, 0.0])


def test_candidate_reduction_keeps_the_run_of_lowest_inertia():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(60, 2)) + rng.integers(0, 4, size=(60, 1)) * 3.0
    weights = rng.uniform(1.0, 5.0, size=60)
    runs = [
        _kmeans_local._local_kmeans_run(points, weights, 5, _kmeans_local._local_rng(9, r))
        for r in range(8)
    ]
    inertias = [inertia for _, inertia in runs]
    assert max(inertias) > min(inertias)  # the runs differ, so the choice matters
    best = _kmeans_local.local_kmeans(points, weights, 5, 9, n_init=8)
    np.testing.assert_array_equal(best, runs[int(np.argmin(inertias))][0])
    np.testing.assert_array_equal(
        _kmeans_local.local_kmeans(points, weights, 5, 9, n_init=1), runs[0][0]
    )


def test_kmeans_restarts_on_the_candidates_reach_the_best_clustering_from_every_seed():
    """Eight blobs that overlap in pairs: one in-memory run on the k-means|| candidates
    leaves about half the seeds in a clustering 20% worse; the default's restarts
    reach the best from all of them (still no more passes over the data)."""
    X, _ = make_blobs(n=4000, d=4, k=8, seed=0, spread=4.0)
    xd = da.from_array(X, chunks=(1000, 4))
    runs = [(8, seed, ("full",)) for seed in range(8)]
    one = [r.inertia for r in _kmeans.kmeans(xd, runs, local_n_init=1)]
    default = [r.inertia for r in _kmeans.kmeans(xd, runs)]
    best = min(one + default)
    assert max(one) > 1.1 * best
    assert max(default) < 1.001 * best


def test_kmeans_with_empty_clusters_midway_gives_k_non_empty_clusters():
    """Two tight groups and one far row: k=3 needs the far row as its own cluster."""
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2)) * 0.01, [[50.0, 50.0]]])
    X = X + np.random.default_rng(0).normal(0, 1e-3, X.shape)
    for res in _kmeans.kmeans(
        da.from_array(X, chunks=(40, 2)), [(3, s, ("diag",)) for s in range(4)]
    ):
        assert np.all(res.statistics["diag"].nk > 0)


@pytest.mark.parametrize("init", ["kmeans", "k-means++"])
def test_fewer_distinct_rows_than_components_warns_and_stays_finite(init):
    X = np.repeat(np.random.default_rng(0).normal(size=(3, 2)), 40, axis=0)
    with pytest.warns(_kmeans.DuplicateCentersWarning, match="Decrease n_components"):
        gm = _fit(X, n_components=5, init_params=init, max_iter=5)
    for name in ("weights_", "means_", "covariances_"):
        assert np.all(np.isfinite(getattr(gm, name)))


@pytest.mark.parametrize("init", ["kmeans", "k-means++"])
def test_nan_in_the_data_is_named_by_the_init_pass(init):
    X = make_blobs(n=600)[0]
    X[437, 2] = np.nan
    with pytest.raises(NonFiniteError, match=r"block 4 \(rows 400-499\), first at row 437"):
        _fit(da.from_array(X, chunks=(100, 3)), n_components=2, init_params=init)
