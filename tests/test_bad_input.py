"""Bad input gives a clear ValueError naming the problem, never NaN parameters."""

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs

from dask_em import GaussianMixture, NonFiniteError


@pytest.fixture(scope="module")
def X():
    return make_blobs(n=600)[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value_names_block_row_and_column(X, bad):
    Xb = X.copy()
    Xb[437, 2] = bad
    Xd = da.from_array(Xb, chunks=(100, 3))
    gm = GaussianMixture(2, random_state=0, init_params="random")
    with pytest.raises(
        NonFiniteError, match=r"block 4 \(rows 400-499\), first at row 437, column 2"
    ):
        gm.fit(Xd)
    assert not hasattr(gm, "means_")


def test_non_finite_value_found_in_the_first_em_pass(X):
    """random_from_data reads only K rows before EM; the NaN is found by the EM pass
    itself (no extra pass), and the message tells what to do."""
    Xb = X.copy()
    Xb[5, 0] = np.nan
    with pytest.raises(ValueError, match="Remove or impute"):
        GaussianMixture(2, random_state=0).fit(Xb)


@pytest.mark.parametrize(
    "data, match",
    [
        (np.arange(10.0), "Expected a 2-D array"),
        (np.zeros((1, 3)), "at least 2 are required"),
        (np.zeros((5, 0)), "0 features"),
        (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
    ],
)
def test_bad_shapes_and_dtypes(data, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(1).fit(data)


def test_fewer_rows_than_components(X):
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(10).fit(X[:5])


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(covariance_type="banana"), "covariance_type"),
        (dict(reg_covar=-1.0), "reg_covar must be >= 0"),
        (dict(tol=-1e-3), "tol must be >= 0"),
        (dict(n_components=0), "n_components must be >= 1"),
        (dict(n_components=2.5), "n_components must be an integer"),
        (dict(max_iter=-1), "max_iter must be >= 0"),
        (dict(n_init=0), "n_init must be >= 1"),
        (dict(init_params="nope"), "init_params"),
        (dict(persist="maybe"), "persist"),
        (dict(weights_init=[0.5, 0.4]), "normalized"),
        (dict(weights_init=[0.5, 0.5, 0.0]), r"weights_init has shape \(3,\)"),
        (dict(means_init=np.zeros((2, 2))), "means_init has shape"),
        (dict(precisions_init=np.zeros((2, 3, 3))), "positive-definite"),
        (dict(precisions_init=-np.ones((2, 3)), covariance_type="diag"), "must be positive"),
    ],
)
def test_bad_parameters(X, params, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"n_components": 2, **params}).fit(X)


def test_wrong_feature_count_at_predict(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(2, max_iter=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="has 2 features, but the model was fitted with 3"):
        gm.predict(X[:, :2])
    with pytest.raises(ValueError, match="has 2 features"):
        gm.score_samples(da.from_array(X[:, :2]))


def test_unfitted_model_says_so(X):
    with pytest.raises(AttributeError, match="not fitted yet"):
        GaussianMixture(2).predict(X)


def test_unknown_chunk_sizes_are_named(X):
    Xd = da.from_array(X, chunks=(100, 3))
    Xd = Xd[Xd[:, 0] > -1e9]  # unknown row counts
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        GaussianMixture(2).fit(Xd)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_degenerate_data_gives_finite_parameters(ct):
    """Duplicates, a constant feature, more components than distinct points."""
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(3, 2)), 50, axis=0)
    X = np.hstack([X, np.full((150, 1), 7.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(5, covariance_type=ct, random_state=0, reg_covar=1e-6).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    assert np.isfinite(gm.score(X))


def test_zero_reg_covar_on_collapsed_component_is_a_clear_error():
    X = np.vstack([np.zeros((50, 2)), np.ones((50, 2))])
    with pytest.raises(ValueError, match="increase reg_covar"):
        GaussianMixture(2, reg_covar=0.0, random_state=0).fit(X)
