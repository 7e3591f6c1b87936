"""Failures carry their data as attributes; one pass primitive runs every pass."""

import pickle

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from sklearn.utils import assert_all_finite

from dask_em import GaussianMixture, NonFiniteError, ParameterValueError, StartError
from dask_em.engine import _em as em_module
from dask_em.engine._reduce import compute_pass
from dask_em.init._init import from_arrays

EPS = float(np.finfo(np.float64).eps)


def test_non_finite_input_names_block_row_column_and_value():
    X, _ = make_blobs()
    X[437, 2] = np.inf
    with pytest.raises(NonFiniteError) as info:
        GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=(100, -1)))
    exc = info.value
    assert (exc.kind, exc.block, exc.row, exc.column, exc.value) == ("input", 4, 437, 2, np.inf)
    assert exc.n_bad_rows == 1
    again = pickle.loads(pickle.dumps(exc))  # as a distributed worker sends it
    assert (again.kind, again.row, str(again)) == ("input", 437, str(exc))


def _doomed_and_fine():
    X0, _ = make_blobs()
    X = np.vstack([X0, np.full((40, 3), 40.0)])
    doomed = from_arrays(
        np.array([0.5, 0.5]), np.array([X0.mean(0), [40.0] * 3]), np.stack([np.eye(3)] * 2), "full"
    )
    fine = from_arrays(np.ones(1), X.mean(0)[None], np.eye(3)[None], "full")
    return da.from_array(X, chunks=(500, 3)), doomed, fine


def test_run_em_raises_a_start_error_naming_the_start():
    x, doomed, fine = _doomed_and_fine()
    kw = dict(tol=1e-6, max_iter=10, reg_covar=0.0, eps=EPS)
    with pytest.raises(StartError) as info:
        em_module.run_em(x, [fine, doomed], **kw)
    assert (info.value.start, info.value.iteration) == (1, 1)
    assert "reg_covar" in info.value.reason and "(start 1, iteration 1)" in str(info.value)


def test_run_em_drops_a_failing_start_and_the_others_are_unchanged():
    x, doomed, fine = _doomed_and_fine()
    kw = dict(tol=1e-6, max_iter=10, reg_covar=0.0, eps=EPS)
    seen = []
    state = em_module.run_em(x, [doomed, fine], on_start_error="drop", callback=seen.append, **kw)
    alone = em_module.run_em(x, [fine], **kw)
    dropped, kept = state.candidates
    assert isinstance(dropped.error, StartError) and dropped.error.start == 0
    assert not dropped.active and not dropped.converged and dropped.n_iter == 0
    assert kept.error is None and kept.lower_bounds == alone.candidates[0].lower_bounds
    assert [p.iteration for p in seen] == list(range(1, state.iteration + 1))


def test_compute_pass_rejects_weights_chunked_unlike_the_rows():
    x = da.ones((100, 2), chunks=(50, 2))
    w = da.ones(100, chunks=25)
    with pytest.raises(ValueError, match="chunked like the rows"):
        compute_pass(x, lambda b, s, o, i, w: (b.shape[0],), None, weights=w)
    assert compute_pass(x, lambda b, s, o, i, w: (b.shape[0],), None) == (100,)


@pytest.mark.parametrize(
    "kwargs, fit_kwargs, parameter, message",
    [
        ({}, {"sample_weight": -np.ones(200)}, "sample_weight", "finite and non-negative"),
        ({}, {"sample_weight": np.ones(7)}, "sample_weight", "has shape (7,)"),
        ({"weights_init": [0.2, 0.2]}, {}, "weights_init", "should be normalized"),
        ({"weights_init": [np.nan, 1.0]}, {}, "weights_init", "Input weights_init contains NaN"),
        ({"means_init": np.zeros((3, 3))}, {}, "means_init", "'means' should have the shape"),
        ({"precisions_init": -np.ones((2, 3))}, {}, "precisions_init", "should be positive"),
    ],
)
def test_bad_fit_arguments_raise_a_typed_error_naming_the_parameter(
    kwargs, fit_kwargs, parameter, message
):
    X, _ = make_blobs(n=200)
    ct = "diag" if "precisions_init" in kwargs else "full"
    gm = GaussianMixture(2, covariance_type=ct, random_state=0, **kwargs)
    with pytest.raises(ParameterValueError) as info:
        gm.fit(da.from_array(X, chunks=(100, -1)), **fit_kwargs)
    assert info.value.parameter == parameter
    assert message in str(info.value)


@pytest.mark.parametrize("bad, value", [(np.nan, "nan"), (np.inf, "inf")])
def test_bad_values_at_predict_are_a_non_finite_error_with_scikit_learns_message(bad, value):
    X, _ = make_blobs(n=200)
    gm = GaussianMixture(2, random_state=0).fit(X)
    Xb = X.copy()
    Xb[150, 1] = bad
    with pytest.raises(NonFiniteError) as info:
        gm.predict(da.from_array(Xb, chunks=(100, -1))).compute()
    exc = info.value
    assert exc.kind == "input" and repr(exc.value) == value
    with pytest.raises(ValueError) as sk:  # scikit-learn's words, unchanged
        assert_all_finite(Xb, estimator_name="GaussianMixture", input_name="X")
    assert str(exc) == str(sk.value)
