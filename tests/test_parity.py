"""Given the same start, dask-em's numbers equal scikit-learn's to round-off."""

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import COV_TYPES, make_blobs
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from dask_em import GaussianMixture


def _start(ct, X, k=3, seed=1):
    """A reasonable start: scikit-learn's own random_from_data, then one EM step."""
    sk = SKGaussianMixture(
        k, covariance_type=ct, init_params="random_from_data", random_state=seed, max_iter=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)


def _fit_both(ct, X, Xin=None, ours_kw=None, **kw):
    start = _start(ct, X)
    common = dict(covariance_type=ct, max_iter=10, tol=0, **start, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SKGaussianMixture(3, **common).fit(X)
        ours = GaussianMixture(3, **common, **(ours_kw or {})).fit(X if Xin is None else Xin)
    return sk, ours


def assert_same_model(ours, sk, lb_rtol=1e-10, rtol=1e-8):
    assert ours.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=lb_rtol, atol=0)
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=lb_rtol)
    np.testing.assert_allclose(ours.weights_, sk.weights_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(ours.precisions_, sk.precisions_, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(
        ours.precisions_cholesky_, sk.precisions_cholesky_, rtol=rtol, atol=1e-10
    )
    assert ours.converged_ == sk.converged_


@pytest.mark.parametrize("ct", COV_TYPES)
def test_ten_iterations_equal_sklearn(ct, blobs):
    X, _ = blobs
    sk, ours = _fit_both(ct, X)
    assert len(ours.lower_bounds_) == 10
    assert_same_model(ours, sk)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_dask_input_with_tiny_uneven_chunks_equals_sklearn(ct, blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=((7,) * 285 + (5,), 3))
    sk, ours = _fit_both(ct, X, Xin=Xd, ours_kw={"split_every": 3})
    assert_same_model(ours, sk)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_until_convergence_equals_sklearn(ct, blobs):
    X, _ = blobs
    start = _start(ct, X)
    sk = SKGaussianMixture(3, covariance_type=ct, tol=1e-6, max_iter=500, **start).fit(X)
    ours = GaussianMixture(3, covariance_type=ct, tol=1e-6, max_iter=500, **start).fit(X)
    assert ours.converged_ and sk.converged_
    assert_same_model(ours, sk, lb_rtol=1e-10, rtol=1e-7)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_inference_equals_sklearn(ct, blobs):
    X, _ = blobs
    sk, ours = _fit_both(ct, X)
    Xnew, _ = make_blobs(n=500, seed=5)
    np.testing.assert_array_equal(ours.predict(Xnew), sk.predict(Xnew))
    np.testing.assert_allclose(ours.predict_proba(Xnew), sk.predict_proba(Xnew), atol=1e-9)
    np.testing.assert_allclose(ours.score_samples(Xnew), sk.score_samples(Xnew), rtol=1e-9)
    np.testing.assert_allclose(ours.score(Xnew), sk.score(Xnew), rtol=1e-10)
    np.testing.assert_allclose(ours.bic(Xnew), sk.bic(Xnew), rtol=1e-10)
    np.testing.assert_allclose(ours.aic(Xnew), sk.aic(Xnew), rtol=1e-10)
    assert ours._n_parameters() == sk._n_parameters()


@pytest.mark.parametrize("ct", COV_TYPES)
def test_sample_equals_sklearn(ct, blobs):
    X, _ = blobs
    sk, ours = _fit_both(ct, X, random_state=7)
    xs, ys = ours.sample(300)
    xk, yk = sk.sample(300)
    np.testing.assert_array_equal(ys, yk)
    np.testing.assert_allclose(xs, xk, rtol=1e-7, atol=1e-9)


# Not tied: scikit-learn's tied start from one-hot responsibilities on K rows uses
# X^T X over *all* rows (its tied formula assumes each row's responsibilities sum to
# one), i.e. the whole data's scatter divided by K; ours is the one-row scatter (zero)
# plus reg_covar like the other types. Both are valid starts; the paths then differ.
@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
def test_random_from_data_draws_the_rows_sklearn_draws(ct, blobs):
    """Same seed, same rows. scikit-learn leaves these starting weights unnormalised
    (they sum to K/n), which shifts only its first lower bound by log(K/n); the
    responsibilities, and so every later number, are the same.

    Its starting covariances are reg_covar (1e-6) plus a one-row scatter that should be
    exactly zero; for tied, diag and spherical it computes that scatter from raw moments
    (x^2 - 2 x mean + mean^2), leaving ~1e-14 of round-off, i.e. 1e-8 of the covariance.
    Ours is exactly zero, so the first bound agrees to 1e-7 there and to 1e-10 for full.
    """
    X, _ = blobs
    kw = dict(covariance_type=ct, init_params="random_from_data", max_iter=8, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SKGaussianMixture(3, random_state=3, n_init=3, **kw).fit(X)
        ours = GaussianMixture(3, random_state=3, n_init=3, **kw).fit(X)
    np.testing.assert_allclose(ours.lower_bounds_[1:], sk.lower_bounds_[1:], rtol=1e-10)
    np.testing.assert_allclose(
        ours.lower_bounds_[0] + np.log(3 / X.shape[0]),
        sk.lower_bounds_[0],
        rtol=1e-10 if ct == "full" else 1e-7,
    )
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-8)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-8)


@pytest.mark.parametrize("ct", ["full", "diag"])
@pytest.mark.parametrize("compute_dtype", ["float64", "auto"])
def test_float32_input_keeps_its_digits_under_a_large_offset(ct, compute_dtype):
    """float32 rows with mean 1e4 and unit spread (their own resolution is 1e-3):
    statistics are accumulated in float64 about a centre near the data, so in float64
    arithmetic the fit equals scikit-learn's float64 fit of the very same (float32-
    rounded) numbers, and float32 arithmetic (the default for float32 input) stays
    within single precision of it instead of losing the digits to the offset."""
    X, _ = make_blobs(n=3000, spread=3.0, offset=1e4, dtype=np.float32)
    X64 = X.astype(np.float64)
    start = _start(ct, X64)
    kw = dict(covariance_type=ct, max_iter=10, tol=0, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SKGaussianMixture(3, **kw).fit(X64)
        ours = GaussianMixture(3, compute_dtype=compute_dtype, **kw).fit(X)
    exact = compute_dtype == "float64"
    # (In float64 the one difference left is scikit-learn's 10 * eps weight guard,
    # which takes eps from the input's dtype: float32's here.)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-8 if exact else 1e-6)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-10 if exact else 1e-8)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-5 if exact else 1e-4)
