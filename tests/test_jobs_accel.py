"""Jobs with ``model.algorithm``: accelerated runs resume exactly and report passes."""

from __future__ import annotations

import json
import logging

import pytest
from test_runner import Stop, assert_same_model, job_file, stop_after

from dask_em.io import load_npz
from dask_em.jobs.config import load_job
from dask_em.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("no_global_dask_state")

MODEL = {"algorithm": "accelerated", "tol": 1e-10, "init_params": "k-means++"}
# Components 1.5 standard deviations apart: EM takes many passes.
DATA = {
    "synthetic": {
        "n_samples": 6000,
        "n_features": 2,
        "n_components": 3,
        "seed": 1,
        "separation": 1.5,
    }
}


def test_accelerated_job_resumes_exactly_and_reports_passes(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dask_em"):
        full = run_job(load_job(job_file(tmp_path, "full", model=MODEL, data=DATA)))
    assert any(" pass " in r.getMessage() for r in caplog.records)
    config = load_job(job_file(tmp_path, "parts", model=MODEL, data=DATA))
    with pytest.raises(Stop):
        run_job(config, on_iteration=stop_after(3))
    result = run_job(config, resume=True)
    a, b = load_npz(full.path / "model.npz"), load_npz(result.path / "model.npz")
    assert_same_model(a, b, tol=1e-12)
    m_full = json.loads((full.path / "metrics.json").read_text())
    m_res = json.loads((result.path / "metrics.json").read_text())
    # k-means passes come first: more passes than EM iterations, the same after resuming
    assert m_full["n_passes"] > m_full["n_iter"] > 3
    assert m_res["n_passes"] == m_full["n_passes"]
