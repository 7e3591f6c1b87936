"""dask_em.BayesianGaussianMixture against scikit-learn's BayesianGaussianMixture.

Parity: scikit-learn's model after one iteration is copied into ours by hand, then both
continue with ``warm_start`` for ten iterations at ``tol=0``: the lower bounds of every
iteration and every fitted attribute must agree to round-off, whatever the chunking,
scheduler or covariance and prior type.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SkBayesian
from sklearn.utils.estimator_checks import parametrize_with_checks

from dask_em import BayesianGaussianMixture
from dask_em.engine import _em
from dask_em.mixture._bayesian import WARM_START_ATTRIBUTES
from tests.test_sklearn_compat import expected_failed_checks

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
# What one iteration of scikit-learn leaves, and what ours is started from.
STATE = WARM_START_ATTRIBUTES
FITTED = (
    "weights_",
    "means_",
    "covariances_",
    "precisions_",
    "precisions_cholesky_",
    "mean_precision_",
    "degrees_of_freedom_",
    "weight_concentration_prior_",
    "mean_precision_prior_",
    "mean_prior_",
    "degrees_of_freedom_prior_",
    "covariance_prior_",
)


@pytest.fixture(scope="module")
def blobs():
    """Three blobs of unequal size and spread in 3-D, far from the origin."""
    rng = np.random.default_rng(0)
    parts = [
        rng.normal(size=(300, 3)) + [5.0, 0.0, 0.0],
        rng.normal(size=(200, 3)) * 0.5,
        rng.normal(size=(100, 3)) * [1.0, 2.0, 0.5] - [0.0, 4.0, 1.0],
    ]
    return np.vstack(parts) + 100.0


def _quiet(fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit()


def _pair(X, covariance_type, prior_type, n_iter=10):
    """scikit-learn's model and ours, both continued ``n_iter`` iterations from
    scikit-learn's state after one; ours fitted on ``X`` (numpy or dask)."""
    Xn = np.asarray(X)
    kw = dict(
        n_components=4,
        covariance_type=covariance_type,
        weight_concentration_prior_type=prior_type,
        random_state=0,
        tol=0.0,
    )
    sk = _quiet(lambda: SkBayesian(max_iter=1, **kw).fit(Xn))
    ours = BayesianGaussianMixture(max_iter=n_iter, warm_start=True, **kw)
    for name in STATE:  # set by hand: warm_start continues from them
        setattr(ours, name, getattr(sk, name))
    _quiet(lambda: ours.fit(X))
    _quiet(lambda: sk.set_params(max_iter=n_iter, warm_start=True).fit(Xn))
    return sk, ours


def assert_parity(sk, ours):
    expected = np.ravel(sk.lower_bounds_)  # scikit-learn's tied bound is a 1-array
    np.testing.assert_allclose(ours.lower_bounds_, expected, rtol=1e-10, atol=0)
    assert ours.n_iter_ == sk.n_iter_
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(ours, name), getattr(sk, name), rtol=1e-8, atol=1e-12, err_msg=name
        )
    for a, b in zip(ours.weight_concentration_, sk.weight_concentration_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_with_scikit_learn(blobs, covariance_type, prior_type):
    # Uneven chunks (the last one short) on the threaded scheduler.
    X = da.from_array(blobs, chunks=(170, 3))
    sk, ours = _pair(X, covariance_type, prior_type)
    assert_parity(sk, ours)
    # Predictions use the variational E-step, as scikit-learn's.
    np.testing.assert_allclose(ours.predict_proba(blobs), sk.predict_proba(blobs), atol=1e-10)
    np.testing.assert_allclose(ours.score_samples(blobs), sk.score_samples(blobs), rtol=1e-10)
    assert np.array_equal(ours.predict(blobs), sk.predict(blobs))


@pytest.mark.parametrize(("chunks", "scheduler"), [(600, "sync"), (37, "threads")])
def test_parity_on_any_chunking_and_scheduler(blobs, chunks, scheduler):
    with dask.config.set(scheduler=scheduler):
        sk, ours = _pair(da.from_array(blobs, chunks=(chunks, 3)), "full", "dirichlet_process")
    assert_parity(sk, ours)


def test_parity_on_a_local_cluster(blobs, client):
    sk, ours = _pair(blobs, "diag", "dirichlet_distribution")
    assert_parity(sk, ours)


def test_random_from_data_start_is_scikit_learns(blobs):
    """The whole fit, start included: scikit-learn's draw of rows, its one-hot start."""
    kw = dict(n_components=3, init_params="random_from_data", random_state=3, max_iter=5)
    sk = _quiet(lambda: SkBayesian(**kw).fit(blobs))
    ours = _quiet(lambda: BayesianGaussianMixture(**kw).fit(blobs))
    assert_parity(sk, ours)


def test_dirichlet_process_prunes_superfluous_components():
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    X = np.vstack([rng.normal(size=(500, 2)) + c for c in centers])
    bgm = BayesianGaussianMixture(n_components=10, max_iter=500, random_state=0).fit(X)
    assert bgm.converged_
    assert (bgm.weights_ > 0.01).sum() == 3
    assert np.array_equal(bgm.effective_components(0.01), np.flatnonzero(bgm.weights_ > 0.01))
    kept = np.sort(bgm.means_[bgm.weights_ > 0.01], axis=0)
    np.testing.assert_allclose(kept, np.sort(centers, axis=0), atol=0.15)


def test_dask_input_gives_lazy_outputs(blobs):
    X = da.from_array(blobs, chunks=(200, 3))
    bgm = _quiet(lambda: BayesianGaussianMixture(n_components=3, max_iter=5).fit(X))
    for out in (bgm.predict(X), bgm.predict_proba(X), bgm.score_samples(X)):
        assert isinstance(out, da.Array)
    np.testing.assert_allclose(bgm.predict_proba(X).compute(), bgm.predict_proba(blobs))
    assert bgm.score(X) == pytest.approx(bgm.score(blobs), rel=1e-12)


def test_integer_weights_equal_repeated_rows(blobs):
    """From the same start, weight 2 is the row twice and weight 0 no row at all."""
    w = np.random.default_rng(2).integers(0, 3, size=len(blobs)).astype(float)
    repeated = np.repeat(blobs, w.astype(int), axis=0)
    sk = _quiet(lambda: SkBayesian(n_components=3, max_iter=1, random_state=0).fit(repeated))
    fits = []
    for X, weights in ((blobs, w), (repeated, None)):
        bgm = BayesianGaussianMixture(n_components=3, max_iter=8, tol=0.0, warm_start=True)
        for name in STATE:
            setattr(bgm, name, getattr(sk, name))
        fits.append(_quiet(lambda: bgm.fit(X, sample_weight=weights)))  # noqa: B023
    weighted, plain = fits
    np.testing.assert_allclose(weighted.lower_bounds_, plain.lower_bounds_, rtol=1e-10)
    for name in FITTED:
        np.testing.assert_allclose(getattr(weighted, name), getattr(plain, name), rtol=1e-8)


def test_float32_input_agrees_with_float64(blobs):
    kw = dict(n_components=3, random_state=0, max_iter=20, tol=0.0)
    a = _quiet(lambda: BayesianGaussianMixture(**kw).fit(blobs))
    b = _quiet(lambda: BayesianGaussianMixture(**kw).fit(blobs.astype(np.float32)))
    assert b.means_.dtype == np.float64
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=1e-5)
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-5)


def test_starts_share_passes(blobs, monkeypatch):
    passes = []
    real = _em.em_pass

    def counting(x, params_list, **kw):
        passes.append(len(params_list))
        return real(x, params_list, **kw)

    monkeypatch.setattr(_em, "em_pass", counting)
    bgm = _quiet(
        lambda: BayesianGaussianMixture(n_components=3, n_init=3, max_iter=6, random_state=0).fit(
            blobs
        )
    )
    # one pass per iteration for all live starts, not one per start
    assert passes[0] == 3 and len(passes) == max(c.n_iter for c in bgm.fit_state_.candidates)
    best = max(bgm.fit_state_.candidates, key=lambda c: c.lower_bound)
    assert bgm.lower_bound_ == best.lower_bound


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fitted_arrays_round_trip(blobs, covariance_type, tmp_path):
    bgm = _quiet(
        lambda: BayesianGaussianMixture(
            n_components=3, covariance_type=covariance_type, random_state=0, max_iter=5
        ).fit(blobs)
    )
    np.savez(tmp_path / "m.npz", **bgm.fitted_arrays())
    with np.load(tmp_path / "m.npz", allow_pickle=False) as arrays:
        back = BayesianGaussianMixture.from_fitted_arrays(dict(arrays))
    assert back.get_params() == bgm.get_params()
    for name in (*FITTED, "lower_bounds_", "n_iter_", "converged_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(bgm, name), err_msg=name)
    np.testing.assert_array_equal(back.predict_proba(blobs), bgm.predict_proba(blobs))
    np.testing.assert_array_equal(back.sample(5)[0], bgm.sample(5)[0])


def test_prior_checks_speak_like_scikit_learn(blobs):
    with pytest.raises(ValueError, match="'degrees_of_freedom_prior' should be greater than 2"):
        BayesianGaussianMixture(degrees_of_freedom_prior=1.0).fit(blobs)
    with pytest.raises(ValueError, match="The parameter 'means' should have the shape"):
        BayesianGaussianMixture(mean_prior=[0.0, 0.0]).fit(blobs)
    with pytest.raises(ValueError, match="'full precision' should be symmetric"):
        BayesianGaussianMixture(covariance_prior=-np.eye(3)).fit(blobs)


def test_nan_is_an_error_at_predict_time(blobs):
    bgm = _quiet(lambda: BayesianGaussianMixture(n_components=2, max_iter=3).fit(blobs))
    bad = blobs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bgm.predict(bad)


@parametrize_with_checks(
    [BayesianGaussianMixture()], expected_failed_checks=expected_failed_checks
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
