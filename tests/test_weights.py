"""Sample weights: integer weights repeat rows, zero weights remove them."""

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import COV_TYPES, make_blobs

from dask_em import GaussianMixture

MISSING = ["error", "em"]


@pytest.fixture(scope="module")
def data():
    X, _ = make_blobs(n=400, d=3, k=3, seed=7)
    rng = np.random.default_rng(0)
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.15] = np.nan
    Xm[5] = np.nan  # nothing observed
    counts = rng.integers(0, 4, size=len(X))  # zeros included
    counts[:3] = [1, 2, 3]
    return {"error": X, "em": Xm}, counts


def _start(ct, k=3):
    X = make_blobs(n=400, d=3, k=3, seed=7)[0]
    d = X.shape[1]
    prec = np.linalg.inv(np.cov(X.T) + 0.1 * np.eye(d))
    precisions = {
        "full": np.stack([prec] * k),
        "tied": prec,
        "diag": np.tile(np.diag(prec), (k, 1)),
        "spherical": np.full(k, np.trace(prec) / d),
    }[ct]
    return dict(
        weights_init=np.full(k, 1.0 / k),
        means_init=X[[0, 50, 100]],
        precisions_init=precisions,
    )


_START = {ct: _start(ct) for ct in COV_TYPES}


def _fit(X, ct, missing, sample_weight=None, max_iter=6):
    # The same start for every variant of the data: the fixture's own rows.
    gm = GaussianMixture(
        3,
        covariance_type=ct,
        missing=missing,
        max_iter=max_iter,
        tol=0,
        **_START[ct],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(X, sample_weight=sample_weight)


def assert_same_model(a, b, rtol=1e-10):
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol)
    np.testing.assert_allclose(a.weights_, b.weights_, rtol=rtol)
    np.testing.assert_allclose(a.means_, b.means_, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=rtol, atol=1e-10)


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("ct", COV_TYPES)
def test_integer_weights_equal_repeated_rows(ct, missing, data):
    Xs, counts = data
    X = Xs[missing]
    weighted = _fit(da.from_array(X, chunks=(90, -1)), ct, missing, counts.astype(float))
    repeated = _fit(np.repeat(X, counts, axis=0), ct, missing)
    assert_same_model(weighted, repeated)


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("ct", COV_TYPES)
def test_zero_weights_equal_removed_rows(ct, missing, data):
    Xs, counts = data
    X = Xs[missing]
    keep = counts > 0
    zeroed = _fit(X, ct, missing, keep.astype(float))
    removed = _fit(X[keep], ct, missing)
    assert_same_model(zeroed, removed)


def test_dask_weights_equal_numpy_weights_and_scale_does_not_matter(data):
    Xs, counts = data
    X = Xs["em"]
    w = counts + 0.5
    a = _fit(X, "full", "em", w)
    b = _fit(da.from_array(X, chunks=(70, -1)), "full", "em", da.from_array(w, chunks=33))
    assert_same_model(a, b, rtol=1e-12)
    c = _fit(X, "full", "em", 7.0 * w)
    np.testing.assert_allclose(c.means_, a.means_, rtol=1e-12)
    np.testing.assert_allclose(c.covariances_, a.covariances_, rtol=1e-12)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "bad, match",
    [
        (-1.0, "finite and non-negative"),
        (np.nan, "finite and non-negative"),
        (np.inf, "finite and non-negative"),
        (None, "all zero"),
    ],
)
def test_bad_weights_are_clear_errors(bad, match, lazy, data):
    Xs, _ = data
    X = Xs["error"]
    w = np.ones(len(X))
    if bad is None:
        w[:] = 0.0
    else:
        w[123] = bad
    if lazy:
        w = da.from_array(w, chunks=100)
    gm = GaussianMixture(2, random_state=0)
    with pytest.raises(ValueError, match=match):
        gm.fit(X, sample_weight=w)
    assert not hasattr(gm, "means_")


def test_weights_of_the_wrong_shape(data):
    Xs, _ = data
    X = Xs["error"]
    with pytest.raises(ValueError, match=r"sample_weight has shape \(399,\)"):
        GaussianMixture(2).fit(X, sample_weight=np.ones(len(X) - 1))
    with pytest.raises(ValueError, match="sample_weight has shape"):
        GaussianMixture(2).fit(X, sample_weight=da.ones((len(X), 2), chunks=100))


@pytest.mark.parametrize("missing", MISSING)
def test_weighted_bic_uses_the_total_weight(missing, data):
    Xs, counts = data
    X = Xs[missing]
    gm = _fit(X, "full", missing, counts.astype(float))
    repeated = np.repeat(X, counts, axis=0)
    np.testing.assert_allclose(gm.bic(X, sample_weight=counts), gm.bic(repeated), rtol=1e-10)
    np.testing.assert_allclose(gm.aic(X, sample_weight=counts), gm.aic(repeated), rtol=1e-10)
    lazy = gm.bic(da.from_array(X, chunks=(100, -1)), sample_weight=da.from_array(counts))
    np.testing.assert_allclose(lazy, gm.bic(repeated), rtol=1e-10)
