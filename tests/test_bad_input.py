"""Bad input gives a clear ValueError naming the problem, never NaN parameters; where
scikit-learn's GaussianMixture has the case, the same exception and message."""

import re
import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils._param_validation import InvalidParameterError

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
    """In dask data, a NaN is found by the first pass that reads it (no extra pass), and
    the message tells what to do; in-memory data is checked first, as scikit-learn does."""
    Xb = X.copy()
    Xb[5, 0] = np.nan
    with pytest.raises(ValueError, match="Remove or impute"):
        GaussianMixture(2, random_state=0).fit(da.from_array(Xb, chunks=(100, 3)))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GaussianMixture(2, random_state=0).fit(Xb)


@pytest.mark.parametrize(
    "data",
    [np.arange(10.0), np.zeros((1, 3)), np.zeros((5, 0)), np.array([["a", "b"], ["c", "d"]])],
    ids=["1d", "one_row", "no_features", "strings"],
)
def test_bad_shapes_and_dtypes_as_scikit_learn(data):
    with pytest.raises(ValueError) as expected:
        SkGaussianMixture(1).fit(data)
    with pytest.raises(ValueError) as info:
        GaussianMixture(1).fit(data)
    assert str(info.value) == str(expected.value)


def test_fewer_rows_than_components(X):
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(10).fit(X[:5])


@pytest.mark.parametrize(
    "params",
    [
        dict(covariance_type="banana"),
        dict(reg_covar=-1.0),
        dict(tol=-1e-3),
        dict(n_components=0),
        dict(n_components=2.5),
        dict(max_iter=-1),
        dict(n_init=0),
        dict(init_params="nope"),
        dict(random_state="seed"),
        dict(weights_init=[0.5, 0.4]),
        dict(weights_init=[0.5, 0.5, 0.0]),
        dict(means_init=np.zeros((2, 2))),
        dict(precisions_init=np.zeros((2, 3, 3))),
        dict(precisions_init=-np.ones((2, 3)), covariance_type="diag"),
    ],
    ids=str,
)
def test_bad_parameters_as_scikit_learn(X, params):
    """scikit-learn's exception (``InvalidParameterError`` for the scalars) and message."""
    with pytest.raises(ValueError) as expected:
        SkGaussianMixture(**{"n_components": 2, **params}).fit(X)
    with pytest.raises(type(expected.value)) as info:
        GaussianMixture(**{"n_components": 2, **params}).fit(X)
    assert _options_sorted(str(info.value)) == _options_sorted(str(expected.value))


def _options_sorted(message):
    """The message with the options listed in braces sorted: they come from a set, whose
    order differs between processes (and between scikit-learn's set and ours)."""
    return re.sub(
        r"\{([^{}]*)\}", lambda m: "{" + ", ".join(sorted(m.group(1).split(", "))) + "}", message
    )


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(persist="maybe"), r"'persist' parameter .* str among \{'auto'\} or .*bool"),
        (dict(split_every=1), r"'split_every' parameter .* range \[2, inf\) or None"),
        (dict(missing="drop"), r"'missing' parameter .* str among"),
        (dict(compute_dtype="float16"), r"'compute_dtype' parameter .* str among"),
    ],
)
def test_bad_parameters_of_our_own(X, params, match):
    with pytest.raises(InvalidParameterError, match=match):
        GaussianMixture(**{"n_components": 2, **params}).fit(X)


def test_wrong_feature_count_at_predict(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(2, max_iter=3, random_state=0).fit(X)
    message = "X has 2 features, but GaussianMixture is expecting 3 features as input."
    with pytest.raises(ValueError, match=message):
        gm.predict(X[:, :2])
    with pytest.raises(ValueError, match=message):
        gm.score_samples(da.from_array(X[:, :2]))


def test_unfitted_model_says_so(X):
    with pytest.raises(NotFittedError, match="not fitted yet"):
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
