"""Degenerate data never gives NaN: every fit ends with finite parameters and finite
outputs (scores, probabilities, BIC), or with the documented clear ValueError.

Property-based over small random degenerate data sets (hypothesis), plus fixed cases for a
collapsing component and a huge offset in float32 and float64.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_em import GaussianMixture

COV_TYPES = ["full", "tied", "diag", "spherical"]
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")
# The documented errors for data EM cannot fit (see _math._ILL_DEFINED, _em.run_em).
DOCUMENTED = ("increase reg_covar", "scale the input data", "Scale the input data")


def assert_finite_everywhere(gm, X):
    for name in FITTED:
        value = np.asarray(getattr(gm, name))
        assert np.all(np.isfinite(value)), (name, value)
    assert np.all(np.isfinite(gm.lower_bounds_))
    xd = da.from_array(X, chunks=max(1, len(X) // 3))
    scores = np.asarray(gm.score_samples(xd).compute())
    proba = np.asarray(gm.predict_proba(xd).compute())
    assert np.all(np.isfinite(scores))
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    labels = np.asarray(gm.predict(xd).compute())
    assert labels.min() >= 0 and labels.max() < gm.n_components
    assert np.isfinite(gm.bic(xd)) and np.isfinite(gm.aic(xd))


def fit_or_documented_error(X, **params):
    """Fit; return the estimator, or None after checking the error is the documented one."""
    gm = GaussianMixture(**{"max_iter": 30, "random_state": 0, **params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gm.fit(da.from_array(X, chunks=max(1, len(X) // 3)))
        except ValueError as exc:
            message = str(exc)
            assert any(s in message for s in DOCUMENTED), message
            assert "\n" not in message
            assert not hasattr(gm, "means_")
            return None
    assert_finite_everywhere(gm, X)
    return gm


@st.composite
def degenerate_data(draw):
    """Few distinct points, repeated; maybe a constant feature; maybe one feature."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    d = draw(st.integers(1, 3))
    n_distinct = draw(st.integers(1, 4))
    reps = draw(st.integers(1, 12))
    points = np.round(
        rng.normal(scale=draw(st.sampled_from([1e-3, 1.0, 1e3])), size=(n_distinct, d)), 3
    )
    X = np.repeat(points, reps, axis=0)
    if draw(st.booleans()):
        X[:, draw(st.integers(0, d - 1))] = draw(st.sampled_from([0.0, 7.0, -1e4]))
    if draw(st.booleans()):
        X = X + rng.normal(scale=1e-9, size=X.shape)  # nearly, not exactly, duplicate
    rng.shuffle(X)
    if len(X) < 2:
        X = np.vstack([X, X])
    return X


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    X=degenerate_data(),
    ct=st.sampled_from(COV_TYPES),
    k=st.integers(1, 5),
    init=st.sampled_from(["kmeans", "random", "random_from_data", "k-means++"]),
)
def test_degenerate_data_gives_finite_output(X, ct, k, init):
    k = min(k, len(X))  # n_components > rows is a separate, tested input error
    gm = fit_or_documented_error(X, n_components=k, covariance_type=ct, init_params=init)
    if gm is not None:
        assert gm.n_components == k


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=degenerate_data(), ct=st.sampled_from(COV_TYPES), k=st.integers(1, 3))
def test_zero_reg_covar_is_finite_or_the_documented_error(X, ct, k):
    fit_or_documented_error(X, n_components=min(k, len(X)), covariance_type=ct, reg_covar=0.0)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_more_components_than_distinct_points(ct):
    X = np.repeat(np.array([[0.0, 1.0], [5.0, 5.0]]), 40, axis=0)
    gm = fit_or_documented_error(X, n_components=4, covariance_type=ct)
    assert gm is not None  # the default reg_covar keeps every component well defined


@pytest.mark.parametrize("ct", COV_TYPES)
def test_a_component_collapsing_onto_one_point(ct):
    """A tight cluster of identical rows next to a broad one: the component that takes
    the point collapses to reg_covar, and nothing becomes NaN."""
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(300, 2)), np.full((30, 2), 3.0)])
    gm = fit_or_documented_error(
        X, n_components=2, covariance_type=ct, init_params="random_from_data"
    )
    assert gm is not None
    j = int(np.argmin(np.linalg.norm(gm.means_ - 3.0, axis=1)))
    # a tied covariance is shared, so that component cannot collapse (only move close)
    np.testing.assert_allclose(gm.means_[j], [3.0, 3.0], atol=0.1 if ct == "tied" else 1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ct", COV_TYPES)
def test_huge_offset(ct, dtype):
    """Mean 1e8, unit variance: in float64 the fitted spread is the data's; in float32
    (eps * 1e8 = 12) the data carry no information below ~8, but nothing is NaN."""
    rng = np.random.default_rng(2)
    centers = np.array([[0.0, 0.0], [8.0, 8.0]])
    X = (1e8 + centers[rng.integers(0, 2, 2000)] + rng.normal(size=(2000, 2))).astype(dtype)
    gm = fit_or_documented_error(X, n_components=2, covariance_type=ct, init_params="kmeans")
    assert gm is not None
    if dtype is np.float64:
        order = np.argsort(gm.means_[:, 0])
        np.testing.assert_allclose(gm.means_[order] - 1e8, centers, atol=0.2)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_one_feature_and_a_constant_feature(ct):
    rng = np.random.default_rng(3)
    one = np.concatenate([rng.normal(-4, 1, 200), rng.normal(4, 1, 200)])[:, None]
    assert fit_or_documented_error(one, n_components=2, covariance_type=ct) is not None
    const = np.hstack([one, np.full_like(one, 5.0)])
    gm = fit_or_documented_error(const, n_components=2, covariance_type=ct)
    assert gm is not None
    np.testing.assert_allclose(gm.means_[:, 1], 5.0, atol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    X=degenerate_data(),
    ct=st.sampled_from(COV_TYPES),
    k=st.integers(1, 3),
    frac=st.sampled_from([0.1, 0.3, 0.6]),
    seed=st.integers(0, 2**16),
)
def test_degenerate_data_with_missing_values(X, ct, k, frac, seed):
    """missing='em' on degenerate data with NaN holes (some rows entirely missing)."""
    rng = np.random.default_rng(seed)
    X = X.copy()
    X[rng.random(X.shape) < frac] = np.nan
    if not np.isfinite(X).any(axis=1).sum() >= 2:
        return  # "no observed values" is a separate, tested input error
    gm = GaussianMixture(
        n_components=min(k, len(X)),
        covariance_type=ct,
        missing="em",
        max_iter=20,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gm.fit(da.from_array(X, chunks=max(1, len(X) // 3)))
        except ValueError as exc:
            message = str(exc)
            assert any(s in message for s in DOCUMENTED + ("observed",)), message
            return
    for name in FITTED:
        assert np.all(np.isfinite(np.asarray(getattr(gm, name)))), name
    xd = da.from_array(X, chunks=max(1, len(X) // 3))
    observed = np.isfinite(X).any(axis=1)
    scores = np.asarray(gm.score_samples(xd).compute())
    assert np.all(np.isfinite(scores[observed])), scores
    proba = np.asarray(gm.predict_proba(xd).compute())
    assert np.all(np.isfinite(proba[observed]))
    imputed = np.asarray(gm.impute(xd).compute())
    assert np.all(np.isfinite(imputed))
