"""The per-covariance-type math against scipy.stats and plain numpy."""

import numpy as np
import pytest
from conftest import COV_TYPES
from scipy import stats

from dask_em import MixtureParams
from dask_em.engine import _math
from dask_em.engine._params import m_step
from dask_em.engine._stats import (
    block_statistics,
    component_reference,
    log_prob_block,
    responsibility_statistics,
)


def _random_params(ct, k=3, d=4, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 3 + offset
    weights = rng.dirichlet(np.ones(k))
    if ct == "full":
        a = rng.normal(size=(k, d, d))
        cov = a @ a.transpose(0, 2, 1) + np.eye(d)
    elif ct == "tied":
        a = rng.normal(size=(d, d))
        cov = a @ a.T + np.eye(d)
    elif ct == "diag":
        cov = rng.uniform(0.5, 2.0, size=(k, d))
    else:
        cov = rng.uniform(0.5, 2.0, size=k)
    return MixtureParams(weights, means, cov, _math.precision_cholesky(cov, ct), ct)


def _dense_cov(params, j):
    cov, ct, d = params.covariances, params.covariance_type, params.n_features
    return {
        "full": lambda: cov[j],
        "tied": lambda: cov,
        "diag": lambda: np.diag(cov[j]),
        "spherical": lambda: np.eye(d) * cov[j],
    }[ct]()


@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_log_prob_matches_scipy(ct, offset):
    params = _random_params(ct, offset=offset)
    rng = np.random.default_rng(1)
    # More rows than one tile, so tile boundaries are crossed.
    x = rng.normal(size=(9000, 4)) * 3 + offset
    got = log_prob_block(x, params)
    want = np.stack(
        [
            np.log(params.weights[j])
            + stats.multivariate_normal(params.means[j], _dense_cov(params, j)).logpdf(x)
            for j in range(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_statistics_match_numpy(ct):
    params = _random_params(ct)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 4)) * 3
    (st,) = block_statistics(x, [params])
    lp = log_prob_block(x, params)
    log_norm = np.logaddexp.reduce(lp, axis=1)
    resp = np.exp(lp - log_norm[:, None])
    # Component k's moments are about reference[k]: its mean (full) or a shared point.
    ref = component_reference(params)
    xk = x[None, :, :] - ref[:, None, :]  # (K, n, d)
    np.testing.assert_allclose(st.reference, ref)
    np.testing.assert_allclose(st.loglik, log_norm.sum(), rtol=1e-12)
    np.testing.assert_allclose(st.nk, resp.sum(0), rtol=1e-12)
    np.testing.assert_allclose(st.s1, np.einsum("nk,knd->kd", resp, xk), rtol=1e-10, atol=1e-9)
    want_s2 = {
        "full": np.einsum("nk,kni,knj->kij", resp, xk, xk),
        "tied": xk[0].T @ xk[0],
        "diag": np.einsum("nk,knd->kd", resp, xk**2),
        "spherical": np.einsum("nk,kn->k", resp, np.sum(xk**2, axis=2)),
    }[ct]
    np.testing.assert_allclose(st.s2, want_s2, rtol=1e-10)
    assert st.n_rows == 5000 and st.weight_total == 5000.0


@pytest.mark.parametrize("ct", COV_TYPES)
def test_m_step_matches_numpy_weighted_covariance(ct):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 4)) @ rng.normal(size=(4, 4)) + 50.0
    resp = rng.dirichlet(np.ones(3), size=3000)
    st = responsibility_statistics(x, resp, x[:10].mean(0), ct)
    reg = 1e-3
    eps = np.finfo(np.float64).eps
    p = m_step(st, reg, eps)
    nk = resp.sum(0) + 10 * eps
    np.testing.assert_allclose(p.weights, nk / nk.sum(), rtol=1e-14)
    means = resp.T @ x / nk[:, None]
    np.testing.assert_allclose(p.means, means, rtol=1e-12)
    full = np.stack(
        [
            np.cov(x.T, aweights=resp[:, j], bias=True) * (resp[:, j].sum() / nk[j])
            for j in range(3)
        ]
    )
    d = 4
    want = {
        "full": full + reg * np.eye(d),
        "tied": np.einsum("k,kij->ij", nk, full) / nk.sum() + reg * np.eye(d),
        "diag": np.diagonal(full, axis1=1, axis2=2) + reg,
        "spherical": np.diagonal(full, axis1=1, axis2=2).mean(1) + reg,
    }[ct]
    np.testing.assert_allclose(p.covariances, want, rtol=1e-9)
    # The precision factor really is the inverse covariance's Cholesky factor.
    prec = _math.precisions_from_cholesky(p.precisions_cholesky, ct)
    if ct in ("full", "tied"):
        eye = np.eye(d) if ct == "tied" else np.stack([np.eye(d)] * 3)
        np.testing.assert_allclose(prec @ p.covariances, eye, atol=1e-9)
    else:
        np.testing.assert_allclose(prec * p.covariances, 1.0, rtol=1e-12)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_n_parameters_matches_sklearn(ct):
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(4, covariance_type=ct)
    gm.means_ = np.zeros((4, 5))
    assert _math.n_parameters(ct, 4, 5) == gm._n_parameters()


def test_ill_defined_covariance_is_a_clear_error():
    with pytest.raises(ValueError, match="increase reg_covar"):
        _math.precision_cholesky(np.zeros((2, 3, 3)), "full")
    with pytest.raises(ValueError, match="increase reg_covar"):
        _math.precision_cholesky(np.zeros((2, 3)), "diag")


def test_compiled_full_covariances_equal_the_numpy_expression_bit_for_bit():
    # The compiled M-step must round exactly as the plain expression it replaced, so
    # that fits (and resumes) do not move by a last digit with the driver's code path.
    rng = np.random.default_rng(11)
    k, d = 3, 37
    nk_raw = rng.uniform(5, 50, k)
    nk = nk_raw + 1e-12
    s1, delta = rng.normal(size=(k, d)), rng.normal(size=(k, d))
    a = rng.normal(size=(k, 60, d))
    s2 = np.einsum("kni,knj->kij", a, a) + rng.normal(scale=1e-9, size=(k, d, d))
    cross = s1[:, :, None] * delta[:, None, :]
    scatter = s2 - cross - cross.transpose(0, 2, 1)
    scatter = scatter + nk_raw[:, None, None] * delta[:, :, None] * delta[:, None, :]
    scatter /= nk[:, None, None]
    want = (scatter + scatter.transpose(0, 2, 1)) * 0.5
    want[:, np.arange(d), np.arange(d)] += 1e-6
    got = _math.covariances_from_moments(nk_raw, nk, s1, s2, delta, 1e-6, "full")
    np.testing.assert_array_equal(got, want)
    # float32 moments are promoted, as numpy would promote them against float64 counts.
    s2_32 = s2.astype(np.float32)
    got32 = _math.covariances_from_moments(nk_raw, nk, s1, s2_32, delta, 1e-6, "full")
    want32 = _math.covariances_from_moments(
        nk_raw, nk, s1, s2_32.astype(np.float64), delta, 1e-6, "full"
    )
    np.testing.assert_array_equal(got32, want32)
