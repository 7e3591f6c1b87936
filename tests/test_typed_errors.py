"""Failures carry their data as attributes; one pass primitive runs every pass."""

import pickle

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs

from dask_em import GaussianMixture, NonFiniteError, StartError
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
