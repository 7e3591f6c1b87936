"""dask_em.GaussianMixture as a scikit-learn estimator: scikit-learn's own estimator
checks, its tools (Pipeline, GridSearchCV, cross_val_score, clone, the HTML repr), and
its behaviour where a user meets it (exceptions, warnings, input checks and messages),
compared with ``sklearn.mixture.GaussianMixture`` directly where it has the case."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sklearn
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import estimator_html_repr
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks
from sklearn.utils.fixes import parse_version
from sklearn.utils.validation import check_is_fitted

import dask_em
from dask_em import GaussianMixture

# Why a check of scikit-learn's cannot pass; the README lists the same, under
# "scikit-learn compatibility".
WEIGHTS_FROM_DIFFERENT_STARTS = (
    "with n_components >= 2 the starts are drawn row by row (random responsibilities, "
    "drawn rows, k-means seeding), so repeating a row draws differently from weighting "
    "it: integer sample_weight equals repeated rows only from the same start"
)


def expected_failed_checks(estimator):
    if estimator.n_components >= 2:
        return {"check_sample_weight_equivalence_on_dense_data": WEIGHTS_FROM_DIFFERENT_STARTS}
    return {}


# The default; NaN as missing values; and two components from drawn rows, so that the
# checks also see a mixture (diag: the cheapest).
CHECKED = [
    GaussianMixture(),
    GaussianMixture(missing="em"),
    GaussianMixture(n_components=2, covariance_type="diag", init_params="random_from_data"),
]


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", ["GaussianMixture", "BayesianGaussianMixture"])
def test_array_api_check_passes_where_scipy_allows_it(estimator):
    """scikit-learn skips ``check_array_api_input`` unless SCIPY_ARRAY_API=1 was set before
    scipy was imported: run every check in a fresh process that sets it."""
    script = (
        "import json, warnings\n"
        "from sklearn.utils.estimator_checks import check_estimator\n"
        f"from dask_em import {estimator}\n"
        "warnings.simplefilter('ignore')\n"
        f"res = check_estimator({estimator}(), on_fail=None)\n"
        "print(json.dumps([[r['check_name'], r['status']] for r in res]))\n"
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    # (scikit-learn before 1.8 runs array API checks only for estimators that declare
    # array API support, which this one does not.)
    assert {status for _, status in results} == {"passed"}, results


def test_parameter_validation_as_scikit_learn():
    # scikit-learn's own test of _parameter_constraints: every parameter, bad values, every
    # method that validates.
    check_param_validation("GaussianMixture", GaussianMixture())


# ------------------------------------------------------------------------- user's tools
@pytest.fixture(scope="module")
def X():
    rng = np.random.RandomState(0)
    return np.vstack([rng.randn(150, 2), rng.randn(150, 2) * 0.5 + [6.0, 3.0]])


@pytest.fixture(params=["numpy", "dask"])
def kind(request):
    return request.param


def as_kind(X, kind):
    return da.from_array(X, chunks=(100, -1)) if kind == "dask" else X


def test_pipeline_with_a_scaler(X, kind):
    Xk = as_kind(X, kind)
    pipe = Pipeline([("scale", StandardScaler()), ("gmm", GaussianMixture(2, random_state=0))])
    with warnings.catch_warnings():
        # dask: StandardScaler brings a dask array into memory (dask warns about it)
        warnings.simplefilter("ignore", FutureWarning)
        labels = pipe.fit(Xk).predict(Xk)
        score = pipe.score(Xk)
    Z = StandardScaler().fit_transform(X)
    alone = GaussianMixture(2, random_state=0).fit(Z)
    np.testing.assert_array_equal(np.asarray(labels), alone.predict(Z))
    assert score == pytest.approx(alone.score(Z), rel=1e-12)


def test_pipeline_keeps_dask_lazy(X):
    Xd = as_kind(X, "dask")
    pipe = Pipeline([("gmm", GaussianMixture(2, random_state=0))]).fit(Xd)
    labels = pipe.predict(Xd)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), pipe.predict(X))


def test_grid_search_gives_scikit_learn_scores(X, kind):
    """Starts from drawn rows are scikit-learn's for a seed, so every cross-validated
    score is scikit-learn's (to round-off)."""
    grid = {"n_components": [1, 2, 3], "covariance_type": ["full", "diag"]}
    common = dict(init_params="random_from_data", random_state=0)
    ours = GridSearchCV(GaussianMixture(**common), grid, cv=3).fit(as_kind(X, kind))
    theirs = GridSearchCV(SkGaussianMixture(**common), grid, cv=3).fit(X)
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"], rtol=1e-9
    )
    assert ours.best_params_ == theirs.best_params_
    assert isinstance(ours.best_estimator_, GaussianMixture)


def test_cross_val_score(X, kind):
    common = dict(n_components=2, init_params="random_from_data", random_state=0)
    ours = cross_val_score(GaussianMixture(**common), as_kind(X, kind), cv=3)
    theirs = cross_val_score(SkGaussianMixture(**common), X, cv=3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_clone_and_set_params(X):
    gm = GaussianMixture(3, covariance_type="tied", persist=False, means_init=np.zeros((3, 2)))
    copy = clone(gm)
    assert copy is not gm
    assert copy.get_params()["covariance_type"] == "tied"
    assert copy.get_params()["persist"] is False
    np.testing.assert_array_equal(copy.means_init, gm.means_init)
    gm.fit(X)
    assert not hasattr(clone(gm), "means_")
    assert copy.set_params(n_components=2, split_every=4) is copy
    assert (copy.n_components, copy.split_every) == (2, 4)
    with pytest.raises(ValueError, match="Invalid parameter 'banana' for estimator"):
        copy.set_params(banana=1)
    assert set(GaussianMixture().get_params()) == set(SkGaussianMixture().get_params()) | {
        "persist",
        "split_every",
        "missing",
        "compute_dtype",
        "algorithm",
        "learning_decay",
        "learning_offset",
    }


def test_repr_and_html_repr(X):
    gm = GaussianMixture(3, covariance_type="diag", missing="em")
    assert repr(gm) == "GaussianMixture(covariance_type='diag', missing='em', n_components=3)"
    for html in (gm._repr_html_(), estimator_html_repr(gm)):
        assert "GaussianMixture" in html and "missing" in html
        assert "Not fitted" in html
    assert "Fitted" in GaussianMixture(2, random_state=0).fit(X)._repr_html_()


# --------------------------------------------------------------- exceptions and warnings
@pytest.mark.parametrize(
    "call",
    ["predict", "predict_proba", "score_samples", "score", "bic", "aic", "impute"],
)
def test_unfitted_model_raises_not_fitted_error(X, call):
    message = "This GaussianMixture instance is not fitted yet"
    with pytest.raises(NotFittedError, match=message):
        getattr(GaussianMixture(), call)(X)
    if call != "impute":
        with pytest.raises(NotFittedError, match=message):
            getattr(SkGaussianMixture(), call)(X)


def test_unfitted_model_other_entry_points(X):
    for call in (lambda gm: gm.sample(1), lambda gm: gm.fitted_arrays(), check_is_fitted):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(GaussianMixture())
    check_is_fitted(GaussianMixture(2, random_state=0).fit(X))


def test_a_failed_fit_leaves_the_model_unfitted(X):
    gm = GaussianMixture(2, means_init=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="The parameter 'means'"):
        gm.fit(X)
    with pytest.raises(NotFittedError):
        gm.predict(X)


def test_convergence_warning_is_scikit_learns(X):
    assert dask_em.ConvergenceWarning is ConvergenceWarning
    assert dask_em.mixture._gaussian.ConvergenceWarning is ConvergenceWarning
    message = "Best performing initialization did not converge"
    with pytest.warns(ConvergenceWarning, match=message):
        GaussianMixture(2, max_iter=1, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        GaussianMixture(2, max_iter=1, random_state=0).fit(X)


def test_runner_logs_scikit_learns_convergence_warning(X, caplog):
    from dask_em.jobs._fit import _fit

    params = {"n_components": 2, "max_iter": 1, "random_state": 0}
    Xd = as_kind(X, "dask")
    # The CLI's logging setup stops dask_em's records from propagating to the root logger
    # (where caplog listens) once a CLI test has run: listen on the runner's logger.
    log = logging.getLogger("dask_em.jobs.runner")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="dask_em.jobs.runner"):
            gm, _, _ = _fit(params, Xd, checkpoint=None, resume=False, fingerprint="", hook=None)
    finally:
        log.removeHandler(caplog.handler)
    assert not gm.converged_
    assert any("did not converge" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------- input checks
def _bad(X, where, value):
    Xb = X.copy()
    Xb[where] = value
    return Xb


def _sklearn_error(method, X, fitted_on):
    sk = SkGaussianMixture(2, random_state=0).fit(fitted_on)
    with pytest.raises(Exception) as info:
        getattr(sk, method)(X)
    return info.value


PREDICTING = ["predict", "predict_proba", "score_samples", "score"]


@pytest.mark.parametrize("method", PREDICTING)
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_values_at_predict_are_errors(X, kind, method, value):
    gm = GaussianMixture(2, random_state=0).fit(X)
    Xb = _bad(X, (17, 1), value)
    expected = _sklearn_error(method, Xb, X)
    with pytest.raises(ValueError) as info:
        out = getattr(gm, method)(as_kind(Xb, kind))
        if isinstance(out, da.Array):  # dask: found as the block is read
            out.compute()
    assert str(info.value) == str(expected)


@pytest.mark.parametrize("method", PREDICTING)
def test_missing_em_predicts_with_nan_but_not_infinity(X, kind, method):
    gm = GaussianMixture(2, random_state=0, missing="em").fit(X)
    out = getattr(gm, method)(as_kind(_bad(X, (17, 1), np.nan), kind))
    out = np.asarray(out.compute() if isinstance(out, da.Array) else out)
    assert np.all(np.isfinite(out))
    with pytest.raises(ValueError, match=re.escape("Input X contains infinity")):
        out = getattr(gm, method)(as_kind(_bad(X, (17, 1), np.inf), kind))
        if isinstance(out, da.Array):
            out.compute()


@pytest.mark.parametrize("method", [*PREDICTING, "bic", "aic"])
def test_feature_count_mismatch_message(X, kind, method):
    gm = GaussianMixture(2, random_state=0).fit(X)
    X3 = np.hstack([X, X[:, :1]])
    message = "X has 3 features, but GaussianMixture is expecting 2 features as input."
    assert str(_sklearn_error(method, X3, X)) == message
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(gm, method)(as_kind(X3, kind))


def test_object_arrays_of_numbers_are_converted(X, kind):
    Xo = X.astype(object)
    gm = GaussianMixture(2, random_state=0).fit(as_kind(Xo, kind))
    ref = GaussianMixture(2, random_state=0).fit(X)
    # (dask: three blocks add up in another order than numpy's one)
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-12)
    labels = gm.predict(as_kind(Xo, kind))
    np.testing.assert_array_equal(np.asarray(labels), ref.predict(X))


@pytest.mark.parametrize("fmt", ["csr_matrix", "csr_array"])
def test_sparse_input_is_refused_with_a_sparse_message(X, fmt):
    Xs = getattr(sp, fmt)(X)
    with pytest.raises(TypeError) as expected:
        SkGaussianMixture(2).fit(Xs)
    assert "Sparse data was passed" in str(expected.value)
    with pytest.raises(TypeError) as info:
        GaussianMixture(2).fit(Xs)
    assert str(info.value) == str(expected.value)
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(TypeError, match="Sparse data was passed"):
        gm.predict(Xs)


@pytest.mark.parametrize(
    "data, params",
    [
        (np.zeros((1, 2)), {"n_components": 1}),
        (np.zeros((0, 2)), {}),
        (np.ones((5, 2), dtype=complex), {}),
        (None, {"means_init": np.zeros((3, 2))}),
        (None, {"precisions_init": np.ones((3, 2, 2))}),
        (None, {"precisions_init": np.ones((3, 2)), "covariance_type": "diag"}),
        (None, {"weights_init": [0.5, 0.2]}),
    ],
    ids=[
        "one_sample",
        "empty",
        "complex",
        "means_init_shape",
        "precisions_init_shape",
        "diag_precisions_init_shape",
        "weights_init_sum",
    ],
)
def test_error_texts_as_scikit_learn(X, data, params):
    data = X if data is None else data
    params = {"n_components": 2, **params}
    with pytest.raises(ValueError) as expected:
        SkGaussianMixture(**params).fit(data)
    with pytest.raises(ValueError) as info:
        GaussianMixture(**params).fit(data)
    assert str(info.value) == str(expected.value)


def test_sample_zero_as_scikit_learn(X):
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="Invalid value for 'n_samples'"):
        gm.sample(0)
    with pytest.raises(ValueError, match="Invalid value for 'n_samples'"):
        SkGaussianMixture(2, random_state=0).fit(X).sample(0)


def test_feature_names_are_recorded_and_checked(X):
    frame = pd.DataFrame(X, columns=["a", "b"])
    gm = GaussianMixture(2, random_state=0).fit(frame)
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b"])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        gm.predict(X)
    with pytest.raises(ValueError, match="The feature names should match"):
        gm.predict(frame.rename(columns={"a": "c"}))
    again = GaussianMixture.from_fitted_arrays(gm.fitted_arrays())
    np.testing.assert_array_equal(again.feature_names_in_, ["a", "b"])
    np.testing.assert_array_equal(again.predict(frame), gm.predict(frame))


def test_dask_dataframe_feature_names(X):
    import dask.dataframe as dd

    frame = dd.from_pandas(pd.DataFrame(X, columns=["a", "b"]), npartitions=3)
    gm = GaussianMixture(2, random_state=0).fit(frame)
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b"])
    assert isinstance(gm.predict(frame), da.Array)


# ---------------------------------------------------------------------------- float32
@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_float32_input_gives_float64_fitted_arrays(X, ct):
    """On purpose unlike scikit-learn 1.9 (whose fitted arrays follow a float32 input):
    the statistics and the M-step are float64, and the fitted arrays keep those digits,
    so a warm start or resume continues from the numbers the fit reached."""
    X32 = X.astype(np.float32)
    gm = GaussianMixture(2, covariance_type=ct, random_state=0).fit(X32)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(gm, name).dtype == np.float64, name
    assert gm.predict_proba(X32).dtype == np.float64
    assert gm.score_samples(X32).dtype == np.float64
    assert gm.predict_proba(da.from_array(X32)).dtype == np.float64
    # scikit-learn's follow float32 input since 1.7 (its PR #30415); 1.6's were float64.
    sk = SkGaussianMixture(2, covariance_type=ct, random_state=0).fit(X32)
    newer = parse_version(sklearn.__version__) >= parse_version("1.7")
    assert sk.means_.dtype == (np.float32 if newer else np.float64)
