"""Jobs with ``model.kind: bayesian``: the run folder, pictures, checkpoints, ``info``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_bad_input, invoke
from test_runner import Stop, job_file, stop_after

from dask_em import BayesianGaussianMixture
from dask_em.io import load_npz
from dask_em.jobs.config import JobError, load_job
from dask_em.jobs.runner import load_model, run_job

# Three well-separated blobs, six components allowed: the Dirichlet process prior leaves
# three.
BAYES = {
    "kind": "bayesian",
    "n_components": 6,
    "init_params": "kmeans",
    "max_iter": 100,
    "tol": 1e-3,
    "weight_threshold": 0.02,
}
BLOBS = {
    "source": "synthetic",
    "synthetic": {"n_samples": 3000, "n_features": 2, "n_components": 3, "seed": 1},
    "chunk_rows": 1000,
}
BLOBS["synthetic"]["separation"] = 10.0


def _bayes_job(tmp_path, name="bayes", **model):
    return load_job(job_file(tmp_path, name, data=BLOBS, model={**BAYES, **model}))


def test_bayesian_job_reports_its_effective_components(tmp_path):
    result = run_job(_bayes_job(tmp_path))
    assert isinstance(result.model, BayesianGaussianMixture)
    metrics = json.loads((result.path / "metrics.json").read_text())
    weights = result.model.weights_
    assert metrics["weight_threshold"] == 0.02
    assert metrics["n_effective_components"] == int(np.sum(weights > 0.02)) == 3
    assert metrics["pruned_components"] == np.flatnonzero(weights <= 0.02).tolist()
    assert metrics["bic"] is None and metrics["mean_log_likelihood"] is not None
    doc = json.loads((result.path / "model.json").read_text())
    assert doc["model"]["kind"] == "bayesian" and doc["model"]["n_effective_components"] == 3
    # the model file loads back as the Bayesian estimator, with its predictions
    back = load_model(result.path)
    assert isinstance(back, BayesianGaussianMixture)
    sample = load_npz(result.path / "sample.npz")["sample"]
    np.testing.assert_array_equal(back.predict_proba(sample), result.model.predict_proba(sample))
    assert (result.path / "plots" / "density.png").stat().st_size > 0
    # dask-em info describes it
    out = invoke("info", result.path)
    assert out.exit_code == 0
    assert "bayesian mixture: 6 components" in out.stdout
    assert "3 effective component(s) with weight above 0.02" in out.stdout
    as_json = json.loads(invoke("info", result.path, "--json").stdout)
    assert as_json["n_effective_components"] == 3 and as_json["kind"] == "bayesian"


def test_pictures_mark_pruned_components(tmp_path, monkeypatch):
    from dask_em import plots

    seen = []
    real = plots.plot_data

    def recording(model, sample, title="", pruned=()):
        seen.append(list(pruned))
        return real(model, sample, title, pruned)

    monkeypatch.setattr(plots, "plot_data", recording)
    result = run_job(_bayes_job(tmp_path))
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert seen == [metrics["pruned_components"]] and len(seen[0]) == 3


def test_bayesian_job_resumes_to_the_same_model(tmp_path):
    config = _bayes_job(tmp_path, init_params="random_from_data")
    with pytest.raises(Stop):
        run_job(config, on_iteration=stop_after(3))
    resumed = run_job(config, resume=True)
    whole = run_job(_bayes_job(tmp_path, "whole", init_params="random_from_data"))
    a, b = resumed.model, whole.model
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"kind": "gaussian", "mean_precision_prior": 2.0}, ["mean_precision_prior"]),
        ({**BAYES, "missing": "em"}, ["missing", "bayesian"]),
        ({**BAYES, "weight_threshold": 1.5}, ["weight_threshold"]),
    ],
)
def test_settings_of_the_other_kind_are_refused(tmp_path, model, words):
    path = job_file(tmp_path, model=model)
    with pytest.raises(JobError) as info:
        load_job(path)
    assert all(w in str(info.value) for w in words)
    assert_bad_input(invoke("validate", path), *words)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"mean_prior": [0.0, 0.0, 0.0]}, "model.mean_prior"),
        ({"covariance_prior": [[1.0, 0.0], [0.0, -1.0]]}, "model.covariance_prior"),
        ({"covariance_prior": [1.0, 2.0, 3.0]}, "model.covariance_prior"),
        ({"degrees_of_freedom_prior": 0.5}, "model.degrees_of_freedom_prior"),
    ],
)
def test_bad_priors_name_their_setting(tmp_path, model, key):
    with pytest.raises(JobError) as info:
        run_job(_bayes_job(tmp_path, **model))
    assert info.value.key == key


def test_bayesian_with_selection_is_refused(tmp_path):
    path = job_file(tmp_path, model=BAYES, selection={"n_components": [1, 2]})
    with pytest.raises(JobError, match="model.kind: gaussian"):
        load_job(path)
