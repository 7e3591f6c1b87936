"""Missing values (NaN) under missing='em': the exact EM for incomplete data."""

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import COV_TYPES, make_blobs
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dask_em import GaussianMixture, NonFiniteError, SuffStats
from dask_em.engine._missing import block_layout, missing_block_statistics, spd_inverse
from dask_em.engine._stats import block_statistics


# --------------------------------------------------------------------------------------
# A plain row-by-row reference
# --------------------------------------------------------------------------------------
def _component_cov(covariances, ct, k, d):
    return {
        "full": lambda: covariances[k],
        "tied": lambda: covariances,
        "diag": lambda: np.diag(covariances[k]),
        "spherical": lambda: covariances[k] * np.eye(d),
    }[ct]()


def reference_e_step(X, weights, means, covariances, ct, sample_weight=None):
    """Per row and component, with scipy: marginal log-density of the observed features,
    conditional mean and covariance of the missing ones.

    Returns
    -------
    log_prob : (n, K) weighted log-densities (log w_k for a row with nothing observed)
    x_hat : (n, K, d) rows completed by their conditional mean under each component
    cond : (n, K, d, d) conditional covariance, zero outside the missing block
    """
    n, d = X.shape
    K = len(weights)
    log_prob = np.empty((n, K))
    x_hat = np.empty((n, K, d))
    cond = np.zeros((n, K, d, d))
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        m = ~o
        for k in range(K):
            S = _component_cov(covariances, ct, k, d)
            mu = means[k]
            log_prob[i, k] = np.log(weights[k])
            x_hat[i, k] = x
            if not o.any():
                x_hat[i, k] = mu
                cond[i, k] = S
                continue
            S_oo = S[np.ix_(o, o)]
            log_prob[i, k] += multivariate_normal(mu[o], S_oo).logpdf(x[o])
            if m.any():
                B = S[np.ix_(m, o)] @ np.linalg.inv(S_oo)
                x_hat[i, k, m] = mu[m] + B @ (x[o] - mu[o])
                cond[i, k][np.ix_(m, m)] = S[np.ix_(m, m)] - B @ S[np.ix_(o, m)]
    return log_prob, x_hat, cond


def reference_em(X, start, ct, n_iter, reg_covar, sample_weight=None):
    """EM for incomplete data written plainly; returns parameters and lower bounds."""
    weights, means, covariances = start
    n, d = X.shape
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
    used = ~np.isnan(X).all(axis=1)
    bounds = []
    for _ in range(n_iter):
        log_prob, x_hat, cond = reference_e_step(X, weights, means, covariances, ct)
        log_norm = logsumexp(log_prob, axis=1)
        resp = np.exp(log_prob - log_norm[:, None]) * (sw * used)[:, None]
        bounds.append(float(np.sum((sw * used) * log_norm) / np.sum(sw * used)))
        nk = resp.sum(axis=0)
        weights = nk / nk.sum()
        means = np.einsum("ik,ikd->kd", resp, x_hat) / nk[:, None]
        dev = x_hat - means[None]
        scatter = np.einsum("ik,ika,ikb->kab", resp, dev, dev)
        scatter += np.einsum("ik,ikab->kab", resp, cond)
        eye = np.eye(d)
        if ct == "full":
            covariances = scatter / nk[:, None, None] + reg_covar * eye
        elif ct == "tied":
            covariances = scatter.sum(axis=0) / nk.sum() + reg_covar * eye
        elif ct == "diag":
            covariances = np.diagonal(scatter, axis1=1, axis2=2) / nk[:, None] + reg_covar
        else:
            covariances = np.trace(scatter, axis1=1, axis2=2) / (d * nk) + reg_covar
    return weights, means, covariances, bounds


def _precisions(covariances, ct):
    if ct in ("full", "tied"):
        return np.linalg.inv(covariances)
    return 1.0 / covariances


def _with_missing(X, fraction, seed, n_empty=2):
    rng = np.random.default_rng(seed)
    Xm = X.copy()
    Xm[rng.random(X.shape) < fraction] = np.nan
    Xm[rng.choice(len(X), n_empty, replace=False)] = np.nan  # rows with nothing observed
    return Xm


def _start(X, ct, k=3, seed=0):
    """A start near the data (means from distinct complete rows, the pooled covariance)."""
    rng = np.random.default_rng(seed)
    complete = X[~np.isnan(X).any(axis=1)]
    d = X.shape[1]
    means = complete[rng.choice(len(complete), k, replace=False)]
    pooled = np.cov(complete.T) + 0.1 * np.eye(d)
    cov = {
        "full": np.stack([pooled] * k),
        "tied": pooled,
        "diag": np.tile(np.diag(pooled), (k, 1)),
        "spherical": np.full(k, np.trace(pooled) / d),
    }[ct]
    return np.full(k, 1.0 / k), means, cov


def _fit_em(X, ct, start, max_iter, sample_weight=None, **kw):
    weights, means, cov = start
    gm = GaussianMixture(
        len(weights),
        covariance_type=ct,
        weights_init=weights,
        means_init=means,
        precisions_init=_precisions(cov, ct),
        max_iter=max_iter,
        tol=0,
        missing="em",
        **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(X, sample_weight=sample_weight)


@pytest.fixture(scope="module")
def small():
    X, _ = make_blobs(n=240, d=4, k=3, seed=5)
    Xm = _with_missing(X, 0.25, seed=1)
    Xm[7, 1:] = np.nan  # one observed value
    return Xm


# --------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("init", ["random_from_data", "random"])
def test_without_nan_em_gives_the_complete_data_numbers(ct, init, blobs):
    X, _ = blobs
    Xd = da.from_array(X, chunks=(300, -1))
    kw = dict(covariance_type=ct, init_params=init, random_state=0, max_iter=8, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = GaussianMixture(3, **kw).fit(Xd)
        b = GaussianMixture(3, missing="em", **kw).fit(Xd)
    assert a.lower_bounds_ == b.lower_bounds_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert b.n_rows_skipped_ == 0
    for method in ("score_samples", "predict_proba", "predict"):
        np.testing.assert_array_equal(getattr(a, method)(X), getattr(b, method)(X))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_statistics_equal_a_row_by_row_reference(ct, small):
    X = small
    weights, means, cov = _start(X, ct)
    gm = _fit_em(X, ct, (weights, means, cov), max_iter=0)
    params = gm._params()
    (st,) = missing_block_statistics(X, [params])

    log_prob, x_hat, cond = reference_e_step(X, weights, means, gm.covariances_, ct)
    used = ~np.isnan(X).all(axis=1)
    log_norm = logsumexp(log_prob[used], axis=1)
    resp = np.exp(log_prob[used] - log_norm[:, None])
    dev = x_hat[used] - st.reference[None]
    s2 = np.einsum("ik,ika,ikb->kab", resp, dev, dev) + np.einsum("ik,ikab->kab", resp, cond[used])
    s2 = {
        "full": lambda: s2,
        "tied": lambda: s2.sum(axis=0),
        "diag": lambda: np.diagonal(s2, axis1=1, axis2=2),
        "spherical": lambda: np.trace(s2, axis1=1, axis2=2),
    }[ct]()
    np.testing.assert_allclose(st.nk, resp.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(st.s1, np.einsum("ik,ikd->kd", resp, dev), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(st.s2, s2, rtol=1e-10)
    np.testing.assert_allclose(st.loglik, log_norm.sum(), rtol=1e-12)
    assert st.n_rows == len(X)
    assert st.weight_total == used.sum()


@pytest.mark.parametrize("ct", COV_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_three_iterations_equal_a_row_by_row_reference(ct, weighted, small):
    X = small
    start = _start(X, ct)
    sw = np.random.default_rng(3).uniform(0.2, 3.0, len(X)) if weighted else None
    Xd = da.from_array(X, chunks=(37, -1))  # blocks cut through patterns
    gm = _fit_em(Xd, ct, start, max_iter=3, sample_weight=sw)
    weights, means, cov, bounds = reference_em(X, start, ct, 3, gm.reg_covar, sw)
    np.testing.assert_allclose(gm.lower_bounds_, bounds, rtol=1e-10)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, cov, rtol=1e-10, atol=1e-10)
    assert gm.n_rows_skipped_ == int(np.isnan(X).all(axis=1).sum()) >= 2


@pytest.mark.parametrize("ct", COV_TYPES)
def test_statistics_are_additive_and_independent_of_chunking(ct, small):
    X = small
    gm = _fit_em(X, ct, _start(X, ct), max_iter=2)
    p = gm._params()
    (whole,) = missing_block_statistics(X, [p])
    total = SuffStats.zero(ct, whole.reference)
    for a, b in [(0, 1), (1, 7), (7, 8), (8, 100), (100, 240)]:
        total = total + missing_block_statistics(X[a:b], [p])[0]
    for name in ("nk", "s1", "s2"):
        np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-12)
    np.testing.assert_allclose(total.loglik, whole.loglik, rtol=1e-12)
    assert (total.n_rows, total.weight_total) == (whole.n_rows, whole.weight_total)

    ref = _fit_em(X, ct, _start(X, ct), max_iter=5)
    for chunks in [(7, -1), ((100, 1, 0, 139), -1)]:
        got = _fit_em(da.from_array(X, chunks=chunks), ct, _start(X, ct), max_iter=5)
        np.testing.assert_allclose(got.lower_bounds_, ref.lower_bounds_, rtol=1e-12)
        np.testing.assert_allclose(got.covariances_, ref.covariances_, rtol=1e-10)


def test_complete_rows_use_the_complete_data_kernel(small):
    X = small
    gm = _fit_em(X, "full", _start(X, "full"), max_iter=1)
    p = gm._params()
    complete = ~np.isnan(X).any(axis=1)
    X2 = np.vstack([X[complete], X[~complete]])
    (mixed,) = missing_block_statistics(X2, [p])
    (only_complete,) = block_statistics(X[complete], [p])
    (only_incomplete,) = missing_block_statistics(X[~complete], [p])
    summed = only_complete + only_incomplete
    np.testing.assert_allclose(mixed.s2, summed.s2, rtol=1e-13)
    np.testing.assert_allclose(mixed.loglik, summed.loglik, rtol=1e-13)


# --------------------------------------------------------------------------------------
# Behaviour on data missing completely at random
# --------------------------------------------------------------------------------------
def _truth(d=6, k=3, seed=11):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 5.0, size=(k, d))
    covs = []
    for _ in range(k):
        a = rng.normal(size=(d, d)) * 0.6
        covs.append(a @ a.T + 0.5 * np.eye(d))
    return np.full(k, 1.0 / k), means, np.stack(covs)


def _sample(truth, n, seed):
    weights, means, covs = truth
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), size=n, p=weights)
    chol = np.linalg.cholesky(covs)
    z = rng.normal(size=(n, means.shape[1]))
    return means[labels] + np.einsum("nij,nj->ni", chol[labels], z)


def _param_error(gm, truth):
    _, means, covs = truth
    # Match components to the truth by nearest mean.
    order = [int(np.argmin(((gm.means_ - m) ** 2).sum(axis=1))) for m in means]
    assert len(set(order)) == len(order)
    return float(
        np.linalg.norm(gm.means_[order] - means) + np.linalg.norm(gm.covariances_[order] - covs)
    )


@pytest.mark.parametrize("ct", COV_TYPES)
def test_observed_log_likelihood_never_decreases(ct):
    truth = _truth()
    X = _with_missing(_sample(truth, 2000, seed=1), 0.2, seed=2)
    init = "random" if ct in ("full", "diag") else "random_from_data"
    kw = dict(covariance_type=ct, max_iter=30, tol=0, random_state=0, init_params=init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(3, missing="em", **kw).fit(da.from_array(X, chunks=1000))
    lb = np.asarray(gm.lower_bounds_)
    assert lb[-1] > lb[0] + 0.1
    assert np.all(np.diff(lb) >= -1e-10 * np.abs(lb[1:]))


def test_em_beats_dropping_rows_and_mean_imputation():
    truth = _truth()
    X = _sample(truth, 4000, seed=3)
    Xm = _with_missing(X, 0.2, seed=4, n_empty=0)
    start = dict(means_init=truth[1] + 0.5, tol=1e-8, max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = GaussianMixture(3, missing="em", **start).fit(Xm)
        complete = ~np.isnan(Xm).any(axis=1)
        dropped = GaussianMixture(3, **start).fit(Xm[complete])
        filled = np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm)
        mean_imputed = GaussianMixture(3, **start).fit(filled)
        oracle = GaussianMixture(3, **start).fit(X)
    errors = {
        name: _param_error(gm, truth)
        for name, gm in [("em", em), ("dropped", dropped), ("mean", mean_imputed)]
    }
    assert complete.mean() < 0.3  # dropping loses most rows
    assert errors["em"] < errors["dropped"], errors
    assert errors["em"] < errors["mean"], errors
    assert errors["em"] < 2.0 * _param_error(oracle, truth) + 0.1, errors


# --------------------------------------------------------------------------------------
# Inference: marginal densities and imputation
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=COV_TYPES)
def fitted(request, small):
    ct = request.param
    gm = _fit_em(small, ct, _start(small, ct), max_iter=5)
    return gm, small


def test_score_and_predict_use_the_observed_features(fitted):
    gm, X = fitted
    log_prob, _, _ = reference_e_step(
        X, gm.weights_, gm.means_, gm.covariances_, gm.covariance_type
    )
    # atol: an empty row scores log(sum of weights), 0 to round-off (BLAS-dependent).
    np.testing.assert_allclose(
        gm.score_samples(X), logsumexp(log_prob, axis=1), rtol=1e-12, atol=1e-15
    )
    proba = np.exp(log_prob - logsumexp(log_prob, axis=1)[:, None])
    np.testing.assert_allclose(gm.predict_proba(X), proba, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(gm.predict(X), np.argmax(log_prob, axis=1))
    empty = np.isnan(X).all(axis=1)
    np.testing.assert_allclose(
        gm.predict_proba(X)[empty], np.broadcast_to(gm.weights_, (empty.sum(), 3))
    )
    # The density of an empty observation is one.
    np.testing.assert_allclose(gm.score_samples(X)[empty], 0.0, atol=1e-12)
    Xd = da.from_array(X, chunks=(50, -1))
    for method in ("score_samples", "predict_proba", "predict"):
        lazy = getattr(gm, method)(Xd)
        assert isinstance(lazy, da.Array)
        np.testing.assert_allclose(lazy.compute(), getattr(gm, method)(X), rtol=1e-13)


def test_complete_rows_score_as_on_the_complete_data_path(fitted):
    gm, X = fitted
    complete = ~np.isnan(X).any(axis=1)
    plain = GaussianMixture.from_fitted_arrays(gm.fitted_arrays())
    plain.missing = "error"
    np.testing.assert_array_equal(gm.score_samples(X)[complete], plain.score_samples(X[complete]))


@pytest.mark.parametrize("condition", [1e2, 1e8])
def test_marginal_log_density_keeps_its_digits_for_ill_conditioned_covariances(condition):
    from dask_em.engine._math import precision_cholesky
    from dask_em.engine._missing import log_prob_missing
    from dask_em.engine._params import MixtureParams

    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov = q @ np.diag(np.logspace(0, np.log10(condition), d)) @ q.T
    covs = np.stack([cov, 1.5 * cov])
    covs = 0.5 * (covs + covs.transpose(0, 2, 1))
    means = rng.normal(size=(2, d)) + 1e3
    params = MixtureParams(
        np.array([0.4, 0.6]), means, covs, precision_cholesky(covs, "full"), "full"
    )
    X = _with_missing(rng.multivariate_normal(means[0], cov, 200), 0.3, seed=1, n_empty=0)
    got = log_prob_missing(X, params)
    for i, x in enumerate(X):
        o = ~np.isnan(x)
        for k in range(2):
            # Directly from the observed block's Cholesky factor.
            chol = np.linalg.cholesky(covs[k][np.ix_(o, o)])
            z = np.linalg.solve(chol, x[o] - means[k][o])
            log_det = 2.0 * np.log(np.diag(chol)).sum()
            ref = np.log(params.weights[k]) - 0.5 * (o.sum() * np.log(2 * np.pi) + log_det + z @ z)
            assert abs(got[i, k] - ref) <= 1e-9 * max(1.0, abs(ref)), (i, k)


def test_impute_is_the_conditional_expectation(fitted):
    gm, X = fitted
    log_prob, x_hat, _ = reference_e_step(
        X, gm.weights_, gm.means_, gm.covariances_, gm.covariance_type
    )
    resp = np.exp(log_prob - logsumexp(log_prob, axis=1)[:, None])
    expected = np.einsum("ik,ikd->id", resp, x_hat)
    got = gm.impute(X)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(got[observed], X[observed])
    empty = np.isnan(X).all(axis=1)
    np.testing.assert_allclose(
        got[empty], np.broadcast_to(gm.weights_ @ gm.means_, (empty.sum(), X.shape[1]))
    )
    lazy = gm.impute(da.from_array(X, chunks=(50, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), got, rtol=1e-13)


def test_impute_leaves_complete_data_alone_and_keeps_float32_values(blobs):
    X, _ = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(3, max_iter=3, random_state=0).fit(X)
    np.testing.assert_array_equal(gm.impute(X), X)
    X32 = X[:100].astype(np.float32)
    X32[3, 1] = np.nan
    out = gm.impute(X32)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[~np.isnan(X32)], X32[~np.isnan(X32)].astype(np.float64))


# --------------------------------------------------------------------------------------
# Errors and edge cases
# --------------------------------------------------------------------------------------
def test_nan_with_missing_error_still_names_block_and_row():
    X, _ = make_blobs(n=600)
    X[437, 2] = np.nan
    with pytest.raises(NonFiniteError, match=r"block 4 \(rows 400-499\), first at row 437"):
        GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=(100, 3)))


def test_infinity_is_an_error_under_em():
    X = _with_missing(make_blobs(n=600)[0], 0.1, seed=0)
    X[437, 2] = np.inf
    with pytest.raises(NonFiniteError, match=r"infinity: block 4 \(rows 400-499\).*row 437"):
        GaussianMixture(2, random_state=0, missing="em").fit(da.from_array(X, chunks=(100, 3)))


def test_bad_missing_option_and_hopeless_data():
    X = _with_missing(make_blobs(n=100)[0], 0.1, seed=0)
    with pytest.raises(ValueError, match="The 'missing' parameter of GaussianMixture must be"):
        GaussianMixture(2, missing="drop").fit(X)
    Xc = X.copy()
    Xc[:, 1] = np.nan
    with pytest.raises(ValueError, match="Feature 1 of X has no observed value"):
        GaussianMixture(2, missing="em").fit(Xc)
    with pytest.raises(ValueError, match="Every row of X is entirely missing"):
        GaussianMixture(2, missing="em").fit(np.full((10, 3), np.nan))


@pytest.mark.parametrize("init", ["kmeans", "k-means++", "random_from_data", "random"])
def test_initialisation_copes_with_incomplete_and_empty_rows(init):
    X = _with_missing(make_blobs(n=500, d=5)[0], 0.3, seed=0, n_empty=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(3, missing="em", init_params=init, n_init=3, random_state=0)
        gm.fit(X.astype(np.float32))
    assert gm.n_rows_skipped_ >= 40
    assert np.isfinite(gm.lower_bound_)
    for name in ("weights_", "means_", "covariances_"):
        assert np.all(np.isfinite(getattr(gm, name)))


def test_warm_start_and_parameters_round_trip(small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(3, missing="em", max_iter=2, tol=0, random_state=0).fit(small)
        once = GaussianMixture(3, missing="em", max_iter=4, tol=0, random_state=0).fit(small)
        gm.set_params(warm_start=True).fit(small)
    np.testing.assert_allclose(gm.means_, once.means_, rtol=1e-12)
    back = GaussianMixture.from_fitted_arrays(gm.fitted_arrays())
    assert back.missing == "em"
    np.testing.assert_array_equal(back.predict_proba(small), gm.predict_proba(small))


def test_layout_groups_rows_by_pattern():
    X = np.arange(24.0).reshape(8, 3)
    X[[1, 4], 0] = np.nan
    X[2, [0, 2]] = np.nan
    X[5] = np.nan
    X[6, 2] = np.nan
    layout = block_layout(X)
    np.testing.assert_array_equal(layout.complete, [0, 3, 7])
    np.testing.assert_array_equal(layout.incomplete, [1, 2, 4, 6])
    np.testing.assert_array_equal(layout.skipped, [5])
    one, two = layout.groups
    np.testing.assert_array_equal(one.missing, [[0], [2]])
    np.testing.assert_array_equal(one.rows, [1, 4, 6])
    np.testing.assert_array_equal(one.pattern, [0, 0, 1])
    np.testing.assert_array_equal(two.missing, [[0, 2]])
    assert block_layout(np.ones((4, 2))).all_complete


def test_spd_inverse_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4, 6))
    a = a @ a.transpose(0, 2, 1)
    inv, log_det = spd_inverse(np.moveaxis(a, 0, -1))
    np.testing.assert_allclose(np.moveaxis(inv, -1, 0), np.linalg.inv(a), rtol=1e-9)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(a)[1], rtol=1e-12)


@pytest.mark.slow
def test_distributed_equals_threaded(small, client):
    import dask

    Xd = da.from_array(small, chunks=(60, -1))
    with dask.config.set(scheduler="threads"):
        threaded = _fit_em(Xd, "full", _start(small, "full"), max_iter=4)
    distributed = _fit_em(Xd, "full", _start(small, "full"), max_iter=4)
    np.testing.assert_allclose(distributed.lower_bounds_, threaded.lower_bounds_, rtol=1e-13)
    np.testing.assert_allclose(distributed.covariances_, threaded.covariances_, rtol=1e-13)
