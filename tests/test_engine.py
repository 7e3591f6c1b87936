"""The engine: chunking, schedulers, graphs, restarts, resume, warm starts."""

import logging
import warnings

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from conftest import COV_TYPES, make_blobs

from dask_em import ConvergenceWarning, EMProgress, GaussianMixture
from dask_em.engine._em import em_pass
from dask_em.engine._reduce import tree_reduce
from dask_em.mixture._validation import auto_chunk_rows, check_array


def _fit(X, ct="full", callback=None, resume=None, **kw):
    params = dict(n_components=3, covariance_type=ct, max_iter=15, tol=0, random_state=0)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(**params).fit(X, callback=callback, resume=resume)


def assert_same_fit(a, b, rtol=1e-12):
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol)
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(a.means_, b.means_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=rtol, atol=1e-12)
    assert a.n_iter_ == b.n_iter_


# (row chunks, split_every): one block, even, uneven with a one-row block, tiny blocks.
CHUNKINGS = [
    (-1, None),
    (250, 2),
    ((111, 300, 1, 288), 3),
    (7, 2),
    (7, 16),
]


@pytest.mark.parametrize("ct", COV_TYPES)
def test_same_result_for_every_chunking_and_split_every(ct, blobs):
    X = blobs[0][:700]
    ref = _fit(X, ct)
    for rows, split_every in CHUNKINGS:
        Xd = da.from_array(X, chunks=(rows, -1))
        got = _fit(Xd, ct, split_every=split_every)
        try:
            assert_same_fit(got, ref)
        except AssertionError as exc:  # pragma: no cover - message only
            raise AssertionError(f"chunks {Xd.chunks[0][:5]}..., {split_every}: {exc}") from None


def test_empty_chunks_are_harmless(blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=((0, 900, 0, 1100), 3))
    assert 0 in Xd.chunks[0]
    assert_same_fit(_fit(Xd), _fit(X))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_distributed_equals_threaded(ct, blobs, client):
    X, _ = blobs
    Xd = da.from_array(X, chunks=(300, 3))
    with dask.config.set(scheduler="threads"):
        threaded = _fit(Xd, ct, n_init=2)
    distributed = _fit(Xd, ct, n_init=2)  # the client fixture is the default scheduler
    assert_same_fit(distributed, threaded)


def test_distributed_numpy_input_is_scattered_once(blobs, client):
    X, _ = blobs
    gm = _fit(X, "diag")
    assert_same_fit(gm, _fit(da.from_array(X, chunks=(500, 3)), "diag"))


def test_numpy_blocks_are_spread_evenly_over_the_workers_with_their_weights(client):
    from collections import Counter

    from dask_em.mixture._base import place_data as _prepare_data

    X, _ = make_blobs(n=1300, seed=2)
    w = np.linspace(0.5, 1.5, X.shape[0])
    Xd = _prepare_data(da.from_array(X, chunks=(100, 3)), "auto", True)
    wd = _prepare_data(da.from_array(w, chunks=(100,)), "auto", True)
    x_owner = _owners(client, Xd, [(i, 0) for i in range(13)])
    # 13 blocks over 2 workers x 1 thread; each weights block sits with its rows.
    assert sorted(Counter(x_owner).values()) == [6, 7]
    assert x_owner == _owners(client, wd, [(i,) for i in range(13)])
    np.testing.assert_array_equal(Xd.compute(), X)
    np.testing.assert_array_equal(wd.compute(), w)
    kw = dict(n_components=3, max_iter=10, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(**kw).fit(X, sample_weight=w)
        with dask.config.set(scheduler="threads"):
            ref = GaussianMixture(**kw).fit(da.from_array(X, chunks=(100, 3)), sample_weight=w)
    assert_same_fit(gm, ref)


def test_auto_blocks_suit_the_scheduler():
    # Threads: ~12 MiB blocks, their number a multiple of the threads.
    assert auto_chunk_rows(10**6, 16, 8, n_threads=2, cluster=False) == 83334
    assert auto_chunk_rows(10**6, 16, 8, n_threads=3, cluster=False) == 83334
    assert auto_chunk_rows(10**6, 16, 8, n_threads=5, cluster=False) == 66667
    # A cluster's tasks cost more each: ~64 MiB blocks.
    assert auto_chunk_rows(10**6, 16, 8, n_threads=2, cluster=True) == 500000
    assert auto_chunk_rows(2 * 10**6, 32, 8, n_threads=2, cluster=True) == 250000
    # Less than a block of data is still split between the threads, not below 4096 rows.
    assert auto_chunk_rows(90000, 16, 8, n_threads=2, cluster=False) == 45000
    assert auto_chunk_rows(90000, 16, 8, n_threads=4, cluster=True) == 22500
    assert auto_chunk_rows(10000, 16, 8, n_threads=4, cluster=True) == 5000  # not 4 short ones
    assert auto_chunk_rows(6000, 4, 8, n_threads=2) == 6000
    assert auto_chunk_rows(0, 4, 8, n_threads=2) == 4096
    # Rows for 12.2 blocks of the minimum on 2 threads: 12 equal ones, not 12 and a stub.
    assert auto_chunk_rows(50000, 512, 8, n_threads=2, cluster=False) == 4167


def test_numpy_input_on_a_cluster_gets_the_clusters_block_size(client):
    X = np.zeros((20000, 200))  # 32 MB: 4 blocks on threads, 2 on the cluster
    assert check_array(X)[0].chunks[0] == (10000, 10000)
    with dask.config.set(scheduler="threads", num_workers=2):
        assert check_array(X)[0].chunks[0] == (5000,) * 4


def _owners(client, arr, indices):
    where = {}
    for key, workers in client.who_has(arr).items():
        where[str(key)] = next(iter(workers))
    return [where[str((arr.name, *index))] for index in indices]


@pytest.mark.parametrize("ct", COV_TYPES)
def test_lower_bound_never_decreases(ct):
    X, _ = make_blobs(n=3000, k=4, seed=3)
    gm = _fit(X, ct, n_components=4, max_iter=60, init_params="random")
    lb = np.asarray(gm.lower_bounds_)
    assert np.all(np.diff(lb) >= -1e-9 * np.abs(lb[1:]))


def test_each_pass_builds_a_fresh_graph_of_the_same_size(blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=(100, 3)).persist()
    gm = _fit(Xd, max_iter=2)
    p1 = gm._params()
    gm2 = _fit(Xd, max_iter=3)
    p2 = gm2._params()
    g1 = tree_reduce(Xd, lambda *a: a, (p1,), split_every=4)
    g2 = tree_reduce(Xd, lambda *a: a, (p2,), split_every=4)
    assert len(g1.dask) == len(g2.dask)
    assert g1.key != g2.key
    names = {k[0] if isinstance(k, tuple) else k for k in g1.dask}
    assert any(str(n).startswith("em-stats-") for n in names)
    assert any(str(n).startswith("em-combine-") for n in names)
    # Every pass gets keys of its own, equal inputs included.
    again = tree_reduce(Xd, lambda *a: a, (p1,), split_every=4)
    assert again.key != g1.key and len(again.dask) == len(g1.dask)
    assert len(em_pass(Xd, [p1, p2])) == 2


def test_passes_with_equal_parameters_on_a_cluster_compute_each_time(blobs, client):
    # Equal parameters once gave equal keys: the next pass asked for the keys whose
    # futures the one before was releasing, and the scheduler logged "Couldn't gather
    # keys" and rescheduled them.
    X, _ = blobs
    Xd = client.persist(da.from_array(X, chunks=(250, 3)))
    p = _fit(X, max_iter=2)._params()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("distributed")  # its records need not reach the root
    logger.addHandler(handler)
    try:
        first = em_pass(Xd, [p])
        results = [em_pass(Xd, [p]) for _ in range(10)]
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if "gather" in m.lower()], messages
    for stats in results:
        assert stats[0].loglik == first[0].loglik
        assert np.array_equal(stats[0].s2, first[0].s2)
    assert len({tree_reduce(Xd, _sum_chunk, (p,)).key for _ in range(3)}) == 3


def _sum_chunk(block, shared, row_offset, block_index, w=None):
    return (float(block.sum()) + float(shared[0][:1].sum()),)


def test_small_parameters_travel_inside_the_block_tasks(blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=(100, 3))  # 20 blocks

    def names(graph):
        return {str(k[0] if isinstance(k, tuple) else k) for k in graph.dask}

    small = tree_reduce(Xd, _sum_chunk, (np.ones(1000),))
    assert not any(n.startswith("em-params-") for n in names(small))
    # 20 copies of 256 KiB would be 5 MiB a pass: stored once under its own key.
    large = tree_reduce(Xd, _sum_chunk, (np.ones(2**15),))
    assert any(n.startswith("em-params-") for n in names(large))
    (a,), (b,) = dask.compute(small, large)
    assert a == pytest.approx(X.sum() + 20) and b == a


def test_statistics_tree_has_logarithmic_depth(blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=(10, 3))  # 200 blocks
    gm = _fit(X, max_iter=1)
    graph = tree_reduce(Xd, lambda *a: a, (gm._params(),), split_every=4)
    combine = [k for k in graph.dask if isinstance(k, tuple) and "combine" in str(k[0])]
    levels = {k[1] for k in combine}
    assert len(levels) == 3  # 200 -> 50 -> 13 -> 4 -> root


def test_dask_dataframe_input(blobs):
    X, _ = blobs
    df = dd.from_pandas(pd.DataFrame(X, columns=list("abc")), npartitions=4)
    assert_same_fit(_fit(df), _fit(X))


def test_dask_input_gives_lazy_outputs_and_numpy_input_numpy(blobs):
    X, _ = blobs
    gm = _fit(X)
    Xd = da.from_array(X, chunks=(700, 3))
    for method in ("predict", "predict_proba", "score_samples"):
        lazy = getattr(gm, method)(Xd)
        eager = getattr(gm, method)(X)
        assert isinstance(lazy, da.Array) and isinstance(eager, np.ndarray)
        np.testing.assert_allclose(lazy.compute(), eager)
    assert gm.predict_proba(Xd).chunks == (Xd.chunks[0], (3,))
    np.testing.assert_allclose(gm.predict_proba(X).sum(1), 1.0)


def test_fit_predict_equals_fit_then_predict(blobs):
    X, _ = blobs
    kw = dict(n_components=3, random_state=0, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = GaussianMixture(**kw).fit_predict(X)
        np.testing.assert_array_equal(labels, GaussianMixture(**kw).fit(X).predict(X))


def test_float32_input_in_float64_arithmetic_fits_like_float64(blobs):
    X, _ = blobs
    X32 = X.astype(np.float32)
    a, b = _fit(X32, compute_dtype="float64"), _fit(X32.astype(np.float64))
    # Only scikit-learn's 10*eps weight guard uses the input dtype's epsilon (1.2e-6 for
    # float32), visible on near-empty components.
    assert_same_fit(a, b, rtol=1e-5)
    assert a.means_.dtype == np.float64


@pytest.mark.parametrize("ct", COV_TYPES)
def test_float32_arithmetic_stays_within_single_precision_of_float64(blobs, ct):
    X, _ = blobs
    X32 = X.astype(np.float32)
    fast = _fit(X32, ct)
    slow = _fit(X32, ct, compute_dtype="float64")
    assert fast.means_.dtype == np.float64 and fast.covariances_.dtype == np.float64
    np.testing.assert_allclose(fast.lower_bounds_, slow.lower_bounds_, rtol=1e-6)
    np.testing.assert_allclose(fast.weights_, slow.weights_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast.means_, slow.means_, rtol=0, atol=1e-4 * X.std())
    np.testing.assert_allclose(fast.covariances_, slow.covariances_, rtol=1e-3, atol=1e-5)
    # float32 arithmetic is used (tied always computes in float64)
    assert np.array_equal(fast.lower_bounds_, slow.lower_bounds_) == (ct == "tied")
    # float32 arithmetic on float64 input, on request
    asked = _fit(X32.astype(np.float64), ct, compute_dtype="float32")
    np.testing.assert_allclose(asked.lower_bounds_, slow.lower_bounds_, rtol=1e-6)


def test_unknown_compute_dtype_is_refused(blobs):
    with pytest.raises(ValueError, match="compute_dtype"):
        _fit(blobs[0], compute_dtype="float16")


def test_restarts_keep_the_best_and_match_separate_fits(blobs):
    X, _ = blobs
    many = _fit(X, "full", n_init=4, init_params="random", max_iter=30, tol=1e-4)
    rng = np.random.RandomState(0)
    singles = []
    from dask_em.init import _init

    starts = _init.random_resp(
        da.from_array(X, chunks=(X.shape[0], 3)), 4, 3, "full", 1e-6, np.finfo(float).eps, rng
    )
    for s in starts:
        start = dict(
            weights_init=s.weights,
            means_init=s.means,
            precisions_init=np.linalg.inv(s.covariances),
        )
        singles.append(_fit(X, "full", max_iter=30, tol=1e-4, **start))
    best = max(singles, key=lambda g: g.lower_bound_)
    np.testing.assert_allclose(many.lower_bound_, best.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(many.means_, best.means_, rtol=1e-7, atol=1e-9)
    assert many.lower_bound_ >= max(g.lower_bound_ for g in singles) - 1e-12


def test_convergence_warning_and_converged_flag(blobs):
    X, _ = blobs
    with pytest.warns(ConvergenceWarning):
        gm = GaussianMixture(3, max_iter=2, random_state=0).fit(X)
    assert not gm.converged_ and gm.n_iter_ == 2
    gm = GaussianMixture(3, max_iter=200, tol=1e-3, random_state=0).fit(X)
    assert gm.converged_ and gm.n_iter_ < 200
    assert abs(gm.lower_bounds_[-1] - gm.lower_bounds_[-2]) < 1e-3


def test_warm_start_continues_the_same_path(blobs):
    X, _ = blobs
    full = _fit(X, max_iter=10)
    warm = _fit(X, max_iter=4, warm_start=True)
    warm.set_params(max_iter=6)
    warm = warm.fit(X)
    np.testing.assert_allclose(warm.means_, full.means_, rtol=1e-12)
    np.testing.assert_allclose(warm.lower_bounds_, full.lower_bounds_[4:], rtol=1e-12)


def test_resume_from_a_saved_progress_equals_an_uninterrupted_fit(blobs, tmp_path):
    X, _ = blobs
    uninterrupted = _fit(X, n_init=2, max_iter=12)

    class Stop(Exception):
        pass

    def stop_after_3(progress):
        np.savez(tmp_path / "ckpt.npz", **progress.to_arrays())
        if progress.iteration == 3:
            raise Stop

    with pytest.raises(Stop):
        _fit(X, n_init=2, max_iter=12, callback=stop_after_3)
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        progress = EMProgress.from_arrays(dict(f))
    assert progress.iteration == 3
    resumed = _fit(X, n_init=2, max_iter=12, resume=progress)
    assert_same_fit(resumed, uninterrupted, rtol=0)


def test_callback_sees_every_iteration(blobs):
    X, _ = blobs
    seen = []
    _fit(X, max_iter=5, callback=seen.append)
    assert [p.iteration for p in seen] == [1, 2, 3, 4, 5]
    assert all(p.seconds > 0 for p in seen)
    assert len(seen[-1].candidates[0].lower_bounds) == 5


def test_fitted_arrays_round_trip(blobs, tmp_path):
    X, _ = blobs
    gm = _fit(X, "diag")
    np.savez(tmp_path / "m.npz", **gm.fitted_arrays())
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        back = GaussianMixture.from_fitted_arrays(dict(f))
    np.testing.assert_array_equal(back.predict(X), gm.predict(X))
    np.testing.assert_allclose(back.score(X), gm.score(X), rtol=0)
    assert back.covariance_type == "diag" and back.n_components == 3


@pytest.mark.parametrize("persist", [True, False, "auto"])
def test_persist_option_does_not_change_numbers(persist, blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=(400, 3)) * 1.0  # a lazy graph, not a plain array
    assert_same_fit(_fit(Xd, persist=persist), _fit(X))


def test_sklearn_clone_and_params():
    from sklearn.base import clone

    gm = GaussianMixture(4, covariance_type="diag", tol=1e-4)
    c = clone(gm)
    assert c.get_params() == gm.get_params()
    assert "covariance_type='diag'" in repr(gm)


def test_bic_and_aic_accept_every_input_kind(blobs):
    X, _ = blobs
    gm = _fit(X, "diag")
    df = dd.from_pandas(pd.DataFrame(X, columns=list("abc")), npartitions=3)
    want = gm.bic(X)
    np.testing.assert_allclose(gm.bic(da.from_array(X, chunks=(300, 3))), want, rtol=1e-12)
    # Named columns scored by a model fitted without names: scikit-learn's warning.
    with pytest.warns(UserWarning, match="fitted without feature names"):
        np.testing.assert_allclose(gm.bic(df), want, rtol=1e-12)
    with pytest.warns(UserWarning, match="fitted without feature names"):
        np.testing.assert_allclose(gm.aic(df), gm.aic(X), rtol=1e-12)


def test_progress_of_mixed_covariance_types_round_trips(blobs, tmp_path):
    """A model-selection grid checkpoints starts of different types and sizes."""
    X, _ = blobs
    from dask_em.engine._em import run_em

    starts = [
        _fit(X, ct, n_components=k, max_iter=1)._params() for ct, k in [("full", 2), ("diag", 3)]
    ]
    state = run_em(
        da.from_array(X, chunks=(500, 3)), starts, tol=0, max_iter=2, reg_covar=1e-6, eps=1e-16
    )
    np.savez(tmp_path / "p.npz", **state.to_arrays())
    with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
        back = EMProgress.from_arrays(dict(f))
    for a, b in zip(state.candidates, back.candidates, strict=True):
        assert a.params.covariance_type == b.params.covariance_type
        np.testing.assert_array_equal(a.params.means, b.params.means)
        assert a.lower_bounds == b.lower_bounds


def test_m_step_runs_with_blas_at_one_thread(blobs, monkeypatch):
    """OpenBLAS threads spin after a threaded call and take cores from the next pass."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from dask_em.engine import _params as _em  # GaussianEM.m_step calls it

    seen = []
    real = _em.m_step

    def recording(*args, **kwargs):
        seen.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")
        return real(*args, **kwargs)

    monkeypatch.setattr(_em, "m_step", recording)
    # Two BLAS threads outside the fit, whatever this machine's default.
    with threadpool_limits(limits=2, user_api="blas"):
        _fit(blobs[0], max_iter=3)
        outside = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert seen and set(seen) == {1}
    assert set(outside) == {2}  # restored after the fit
