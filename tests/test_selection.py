"""Model selection: a grid of candidates in shared passes, ranked by BIC or AIC."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from dask_em import ConvergenceWarning, GaussianMixture, select_model
from dask_em.engine import _em as em_module
from dask_em.init._init import from_arrays
from dask_em.mixture import _base as base_module
from dask_em.mixture._selection import (
    TABLE_COLUMNS,
    SelectionProgress,
    SelectionResult,
    _run_em_dropping_failures,
)

EPS = float(np.finfo(np.float64).eps)


def _select(X, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return select_model(X, *args, **kw)


@pytest.fixture(scope="module")
def full_truth():
    """Three blobs with unequal, correlated covariances."""
    return make_blobs(n=3000, k=3, d=3, seed=1, spread=6)[0]


@pytest.fixture(scope="module")
def spherical_truth():
    rng = np.random.default_rng(5)
    centers = rng.normal(0, 6, size=(4, 3))
    scales = np.array([0.5, 1.0, 1.5, 0.8])
    labels = rng.integers(0, 4, size=3000)
    return centers[labels] + scales[labels, None] * rng.normal(size=(3000, 3))


@pytest.fixture(scope="module")
def grid(full_truth):
    return _select(
        full_truth, [1, 2, 3, 4], ["full", "diag"], n_init=2, random_state=0, max_iter=50
    )


def test_bic_selects_the_true_full_model(grid):
    assert isinstance(grid, SelectionResult)
    assert (grid.best["n_components"], grid.best["covariance_type"]) == (3, "full")


def test_bic_selects_the_true_spherical_model(spherical_truth):
    res = _select(spherical_truth, [2, 3, 4, 5, 6], random_state=0, max_iter=50)
    assert (res.best["n_components"], res.best["covariance_type"]) == (4, "spherical")
    assert res.criterion == "bic" and len(res.table) == 20


def test_table_criteria_are_the_final_parameters_scores(grid, full_truth):
    """log_likelihood is that of the final parameters (one last shared pass), so the
    table agrees with the fitted models' own bic/aic, and with scikit-learn's."""
    X = full_truth
    assert [list(r) for r in grid.table] == [list(TABLE_COLUMNS)] * len(grid.table)
    for row, gm in zip(grid.table, grid.models, strict=True):
        assert (gm.n_components, gm.covariance_type) == (
            row["n_components"],
            row["covariance_type"],
        )
        np.testing.assert_allclose(row["log_likelihood"], gm.score(X) * len(X), rtol=1e-12)
        np.testing.assert_allclose(row["bic"], gm.bic(X), rtol=1e-12)
        np.testing.assert_allclose(row["aic"], gm.aic(X), rtol=1e-12)
        sk = SKGaussianMixture(row["n_components"], covariance_type=row["covariance_type"])
        sk.weights_, sk.means_ = gm.weights_, gm.means_
        sk.precisions_cholesky_, sk.covariances_ = gm.precisions_cholesky_, gm.covariances_
        np.testing.assert_allclose(row["bic"], sk.bic(X), rtol=1e-10)
        assert row["n_parameters"] == sk._n_parameters()
        assert row["n_iter"] == gm.n_iter_ and row["converged"] == gm.converged_
        assert row["lower_bound"] == gm.lower_bound_ and row["error"] is None
    assert grid.best_model is grid.models[grid.best_index]
    assert grid.best["bic"] == min(r["bic"] for r in grid.table)
    df = grid.to_dataframe()
    assert list(df.columns) == list(TABLE_COLUMNS) and len(df) == 8


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random", "random_from_data"])
def test_grid_equals_each_candidate_fitted_alone(init, full_truth):
    X = da.from_array(full_truth[:1500], chunks=(400, -1))
    kw = dict(n_init=2, init_params=init, random_state=3, max_iter=30, tol=1e-4)
    res = _select(X, [2, 3], ["full", "diag", "tied"], **kw)
    for row, gm in zip(res.table, res.models, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            alone = GaussianMixture(
                row["n_components"], covariance_type=row["covariance_type"], **kw
            ).fit(X)
        np.testing.assert_allclose(gm.lower_bounds_, alone.lower_bounds_, rtol=1e-12)
        np.testing.assert_allclose(gm.means_, alone.means_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gm.covariances_, alone.covariances_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gm.weights_, alone.weights_, rtol=1e-12)
        assert gm.n_iter_ == alone.n_iter_ and gm.converged_ == alone.converged_


def test_grid_shares_every_em_pass(full_truth, monkeypatch):
    passes = []
    real = em_module.em_pass

    def counting(x, params_list, **kw):
        passes.append(len(params_list))
        return real(x, params_list, **kw)

    monkeypatch.setattr(em_module, "em_pass", counting)
    res = _select(full_truth, [2, 3, 4], ["full", "diag"], n_init=2, random_state=0, max_iter=30)
    # One pass per iteration of the slowest candidate, each serving every live start.
    assert len(passes) == max(r["n_iter"] for r in res.table)
    assert passes[0] == 12


def test_distributed_equals_threaded(full_truth, client):
    X = da.from_array(full_truth[:1500], chunks=(300, -1))
    kw = dict(random_state=0, max_iter=20, tol=0)
    with dask.config.set(scheduler="threads"):
        threaded = _select(X, [2, 3], ["full", "spherical"], **kw)
    distributed = _select(X, [2, 3], ["full", "spherical"], **kw)
    for a, b in zip(distributed.table, threaded.table, strict=True):
        for key in ("log_likelihood", "bic", "lower_bound"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12)
    for a, b in zip(distributed.models, threaded.models, strict=True):
        np.testing.assert_allclose(a.means_, b.means_, rtol=1e-12, atol=1e-12)


def test_weighted_table_uses_the_total_weight(full_truth):
    X = full_truth[:1000]
    w = np.random.default_rng(0).integers(1, 4, size=len(X)).astype(float)
    res = _select(X, [2], ["diag"], sample_weight=w, random_state=0, max_iter=20)
    row, gm = res.table[0], res.models[0]
    loglik = float(w @ gm.score_samples(X))
    np.testing.assert_allclose(row["log_likelihood"], loglik, rtol=1e-12)
    np.testing.assert_allclose(row["bic"], -2 * loglik + row["n_parameters"] * np.log(w.sum()))
    assert res.n_samples == w.sum()


def test_failing_candidate_gets_nan_and_an_error_the_others_are_ranked():
    """With reg_covar=0, a cluster of identical rows has no covariance: that candidate
    fails at initialisation; the one-component model still fits."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(300, 2)), np.full((40, 2), 30.0)])
    res = _select(X, [1, 2], ["full"], reg_covar=0.0, random_state=0, max_iter=20)
    ok, bad = res.table
    assert np.isfinite(ok["bic"]) and ok["error"] is None
    assert np.isnan(bad["bic"]) and "reg_covar" in bad["error"]
    assert res.models[1] is None and res.best_index == 0


def test_a_start_failing_during_em_is_dropped_and_the_others_go_on(blobs):
    """Start 0 puts a tight component on 40 identical rows: its first M-step fails with
    reg_covar=0. Start 1 carries on exactly as if alone."""
    X0, _ = blobs
    X = np.vstack([X0, np.full((40, 3), 40.0)])
    x = da.from_array(X, chunks=(500, 3))
    doomed = from_arrays(
        np.array([0.5, 0.5]), np.array([X0.mean(0), [40.0] * 3]), np.stack([np.eye(3)] * 2), "full"
    )
    fine = from_arrays(np.ones(1), X.mean(0)[None], np.eye(3)[None], "full")
    kw = dict(tol=1e-6, max_iter=10, reg_covar=0.0, eps=EPS)
    failures = {}
    state = _run_em_dropping_failures(x, [doomed, fine], failures, **kw)
    assert list(failures) == [0] and "reg_covar" in failures[0]
    alone = em_module.run_em(x, [fine], **kw)
    assert state.candidates[1].lower_bounds == alone.candidates[0].lower_bounds
    assert not state.candidates[0].active and not state.candidates[0].converged


def test_plot_bic_writes_a_png(grid, tmp_path):
    path = grid.plot_bic(tmp_path / "bic.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid.plot_bic(tmp_path / "aic.png", criterion="aic")
    assert (tmp_path / "aic.png").stat().st_size > 1000


def test_aic_criterion_and_random_state_forms(full_truth):
    X = full_truth[:800]
    res = _select(X, [1, 2], ["diag"], criterion="aic", random_state=np.random.RandomState(1))
    assert res.best["aic"] == min(r["aic"] for r in res.table)
    again = _select(X, [1, 2], ["diag"], criterion="aic", random_state=res.random_state)
    assert [r["aic"] for r in again.table] == [r["aic"] for r in res.table]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(criterion="icl"), "criterion"),
        (dict(covariance_types=["banana"]), "covariance_type"),
        (dict(n_components=[0, 2]), r"'n_components' parameter .* range \[1, inf\)"),
        (dict(n_components=[]), "at least one"),
        (dict(init_params="nope"), "init_params"),
        (dict(n_components=[5000]), "n_samples >= n_components"),
    ],
)
def test_bad_arguments(kw, match, full_truth):
    with pytest.raises(ValueError, match=match):
        select_model(full_truth[:100], **kw)


def test_missing_values_grid_equals_each_candidate_fitted_alone(full_truth):
    X = full_truth[:1200].copy()
    X[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
    X[7] = np.nan  # a row with nothing observed
    kw = dict(random_state=0, max_iter=15, tol=1e-4, missing="em")
    res = _select(X, [2, 3], ["full", "diag"], **kw)
    for row, gm in zip(res.table, res.models, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            alone = GaussianMixture(
                row["n_components"], covariance_type=row["covariance_type"], **kw
            ).fit(X)
        np.testing.assert_allclose(gm.means_, alone.means_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gm.lower_bounds_, alone.lower_bounds_, rtol=1e-12)
        np.testing.assert_allclose(row["bic"], alone.bic(X), rtol=1e-12)
        assert gm.n_rows_skipped_ == alone.n_rows_skipped_ == 1


# ------------------------------------------------------------------------ interrupt, resume


class Stop(Exception):
    pass


def _interrupted(X, *args, after=2, **kw):
    """Run select_model with a callback that raises after iteration ``after``; return
    every state the callback saw."""
    seen = []

    def callback(progress):
        seen.append(progress)
        if progress.iteration >= after:
            raise Stop

    with pytest.raises(Stop):
        _select(X, *args, callback=callback, **kw)
    return seen


def _through_npz(state, tmp_path):
    np.savez(tmp_path / "state.npz", **state.to_arrays())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as npz:
        return dict(npz)


def assert_same_selection(a, b, tol=1e-12):
    assert len(a.table) == len(b.table)
    for ra, rb in zip(a.table, b.table, strict=True):
        assert list(ra) == list(rb)
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float):
                np.testing.assert_allclose(va, vb, rtol=tol, atol=tol, err_msg=key)
            else:
                assert va == vb, key
    assert a.best_index == b.best_index and a.random_state == b.random_state
    np.testing.assert_allclose(a.n_samples, b.n_samples, rtol=tol)
    for ma, mb in zip(a.models, b.models, strict=True):
        assert (ma is None) == (mb is None)
        if ma is None:
            continue
        for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            np.testing.assert_allclose(
                getattr(ma, attr), getattr(mb, attr), rtol=tol, atol=tol, err_msg=attr
            )
        np.testing.assert_allclose(ma.lower_bounds_, mb.lower_bounds_, rtol=tol, atol=tol)
        assert ma.n_iter_ == mb.n_iter_ and ma.converged_ == mb.converged_


def test_interrupted_grid_resumes_to_the_uninterrupted_result(full_truth, tmp_path):
    X = da.from_array(full_truth[:1500], chunks=(400, -1))
    args = ([2, 3], ["full", "diag"])
    kw = dict(n_init=2, random_state=0, max_iter=25, tol=1e-6)
    full = _select(X, *args, **kw)
    assert max(r["n_iter"] for r in full.table) > 3  # the interruption is mid-run
    seen = _interrupted(X, *args, after=2, **kw)
    assert [p.iteration for p in seen] == [1, 2]
    state = seen[-1]
    assert isinstance(state, SelectionProgress)
    assert state.owner == (0, 0, 1, 1, 2, 2, 3, 3)
    assert state.grid == ((2, "full"), (3, "full"), (2, "diag"), (3, "diag"))
    assert state.n_features == 3 and state.seed == 0 and not state.errors

    passes = []
    real = em_module.em_pass

    def counting(x, params_list, **kw):
        passes.append(len(params_list))
        return real(x, params_list, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(em_module, "em_pass", counting)
        # no initialisation passes on resume: make_starts must not run
        mp.setattr(base_module, "make_starts", None)
        resumed = _select(X, *args, resume=state, **kw)
    assert len(passes) == max(r["n_iter"] for r in full.table) - 2
    assert_same_selection(resumed, full)
    # and from the arrays form (as a checkpoint file holds it), with random_state=None
    arrays = _through_npz(state, tmp_path)
    from_file = _select(X, *args, resume=arrays, **{**kw, "random_state": None})
    assert_same_selection(from_file, full)


def test_a_failed_candidate_resumes_with_the_same_failure_row(tmp_path):
    """The k=2 candidate fails at initialisation (see the test above of that); the
    resumed run carries its error and finishes the others as the uninterrupted one."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(300, 2)), np.full((40, 2), 30.0)])
    args = ([1, 2, 3], ["full", "diag"])
    kw = dict(reg_covar=0.0, random_state=0, max_iter=6, tol=0.0)
    full = _select(X, *args, **kw)
    failed = [r for r in full.table if r["error"] is not None]
    assert any(r["n_components"] == 2 and r["covariance_type"] == "full" for r in failed)
    seen = _interrupted(X, *args, after=2, **kw)
    assert seen[-1].errors and set(seen[-1].errors) == {
        i for i, r in enumerate(full.table) if r["error"] is not None
    }
    resumed = _select(X, *args, resume=_through_npz(seen[-1], tmp_path), **kw)
    assert_same_selection(resumed, full)
    assert [r["error"] for r in resumed.table] == [r["error"] for r in full.table]


def test_a_start_dropped_during_em_stays_dropped_after_resume(blobs, monkeypatch, tmp_path):
    """Candidate k=2 gets a start whose first M-step fails (a tight component on 40
    identical rows, reg_covar=0): it is dropped at iteration 1. Resumed after
    iteration 2, it must still be a failure, not a result from its stale parameters."""
    X0, _ = blobs
    X = np.vstack([X0, np.full((40, 3), 40.0)])
    doomed = from_arrays(
        np.array([0.5, 0.5]), np.array([X0.mean(0), [40.0] * 3]), np.stack([np.eye(3)] * 2), "full"
    )
    real = base_module.make_starts

    def with_a_doomed_start(*args, **kw):
        out = real(*args, **kw)
        out[1] = [doomed]
        return out

    monkeypatch.setattr(base_module, "make_starts", with_a_doomed_start)
    args = ([1, 2], ["full"])
    kw = dict(reg_covar=0.0, random_state=0, max_iter=5, tol=0.0)
    full = _select(X, *args, **kw)
    assert full.models[1] is None and "reg_covar" in full.table[1]["error"]
    seen = _interrupted(X, *args, after=2, **kw)
    assert list(seen[-1].failed_starts) == [1] and not seen[-1].errors
    resumed = _select(X, *args, resume=_through_npz(seen[-1], tmp_path), **kw)
    assert_same_selection(resumed, full)
    assert resumed.models[1] is None and resumed.table[1]["error"] == full.table[1]["error"]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(n_components=[2, 4]), r"grid.*full k=3.*full k=4"),
        (dict(covariance_types=["full", "tied"]), r"grid.*diag k=2.*tied k=2"),
        (dict(n_init=1), "n_init=2"),
        (dict(random_state=5), "random_state=0"),
        (dict(init_params="random"), "init_params='kmeans'"),
        (dict(X_columns=2), "n_features=3, X has n_features=2"),
    ],
)
def test_resume_with_a_mismatched_grid_raises(change, match, full_truth):
    X = full_truth[:600]
    kw = dict(n_components=[2, 3], covariance_types=["full", "diag"], n_init=2, random_state=0)
    state = _interrupted(X, max_iter=10, tol=0.0, after=1, **kw)[-1]
    columns = change.pop("X_columns", None)
    if columns is not None:
        X = X[:, :columns]
    with pytest.raises(ValueError, match=match):
        select_model(X, max_iter=10, tol=0.0, resume=state, **{**kw, **change})


def test_selection_progress_arrays_are_checked(full_truth):
    state = _interrupted(full_truth[:600], [2], ["full"], max_iter=5, tol=0.0, after=1)[-1]
    arrays = state.to_arrays()
    assert not any(np.asarray(v).dtype.hasobject for v in arrays.values())
    back = SelectionProgress.from_arrays(arrays)
    assert back.grid == state.grid and back.owner == state.owner
    del arrays["selection_owner"]
    with pytest.raises(ValueError, match="selection_owner"):
        SelectionProgress.from_arrays(arrays)


def test_a_callback_error_propagates_even_if_it_looks_like_a_start_failure(full_truth):
    calls = []

    def callback(progress):
        calls.append(progress.iteration)
        raise ValueError("boom (start 0, iteration 1)")

    with pytest.raises(ValueError, match=r"^boom"):
        _select(full_truth[:300], [1, 2], ["diag"], callback=callback, max_iter=5)
    assert calls == [1]
