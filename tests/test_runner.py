"""The job runner end to end: outputs, checkpoints and resume, selection, predict, clusters."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    THREADS,
    free_port,
    self_signed_cert,
    shutdown_dask_processes,
    start_dask_processes,
)

from dask_em.io import load_npz
from dask_em.jobs.config import JobError, load_job
from dask_em.jobs.runner import (
    data_config_for,
    load_model,
    make_data,
    model_info,
    plot_run,
    predict_job,
    run_job,
)

pytestmark = pytest.mark.usefixtures("no_global_dask_state")


def job_file(tmp_path: Path, name: str = "job", **sections) -> Path:
    doc = {
        "cluster": THREADS,
        "data": {
            "source": "synthetic",
            "synthetic": {"n_samples": 6000, "n_features": 2, "n_components": 3, "seed": 1},
            "chunk_rows": 1500,
        },
        # random starts: enough iterations to stop and resume in the middle
        "model": {
            "n_components": 3,
            "tol": 1e-5,
            "max_iter": 200,
            "random_state": 0,
            "init_params": "random_from_data",
        },
        "output": {"dir": str(tmp_path / "runs" / name), "plot_sample": 500},
    }
    for key, value in sections.items():
        if key != "cluster" and isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Stop(Exception):
    pass


def stop_after(n: int):
    def hook(progress):
        if progress.iteration >= n:
            raise Stop(f"stopped after iteration {progress.iteration}")

    return hook


def assert_same_model(a: dict, b: dict, tol: float = 1e-12):
    for key in ("weights", "means", "covariances", "precisions_cholesky", "lower_bounds"):
        np.testing.assert_allclose(a[key], b[key], rtol=tol, atol=tol, err_msg=key)
    assert int(a["n_iter"]) == int(b["n_iter"])


def test_run_writes_the_run_folder(tmp_path):
    config = load_job(job_file(tmp_path, output={"labels": True, "probabilities": True}))
    result = run_job(config)
    run = result.path
    assert run == tmp_path / "runs" / "job"
    names = {p.name for p in run.iterdir()}
    assert names == {
        "model.npz",
        "model.json",
        "metrics.json",
        "sample.npz",
        "plots",
        "labels.zarr",
        "probabilities.zarr",
        ".dask-em.json",
    }
    marker = json.loads((run / ".dask-em.json").read_text())
    assert marker["kind"] == "run" and marker["complete"] is True
    written = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert set(marker["files"]) == written - {".dask-em.json"}
    assert {p.name for p in (run / "plots").iterdir()} == {"lower_bound.png", "density.png"}
    # nothing left behind next to the run folder
    assert sorted(p.name for p in run.parent.iterdir()) == ["job"]

    arrays = np.load(run / "model.npz", allow_pickle=False)
    gm = load_model(run)
    np.testing.assert_array_equal(arrays["means"], gm.means_)

    meta = json.loads((run / "model.json").read_text())
    assert meta["model"]["n_components"] == 3 and meta["data"]["shape"] == [6000, 2]
    assert meta["config"]["model"]["tol"] == 1e-5
    assert meta["data"]["fingerprint"].startswith("sha256:")
    assert {"numpy", "dask", "distributed", "python"} <= set(meta["versions"])

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_iter"] == gm.n_iter_ == len(metrics["iterations"])
    assert metrics["converged"] is True
    first, second = metrics["iterations"][:2]
    assert first["change"] is None
    assert second["change"] == pytest.approx(second["lower_bound"] - first["lower_bound"])
    assert all(r["seconds"] > 0 for r in metrics["iterations"])
    # BIC/AIC from one scoring pass equal the estimator's own
    from dask_em.io import load_data

    x = load_data(config.data)
    assert metrics["bic"] == pytest.approx(gm.bic(x), rel=1e-10)
    assert metrics["aic"] == pytest.approx(gm.aic(x), rel=1e-10)

    import dask.array as da

    labels = da.from_zarr(str(run / "labels.zarr")).compute()
    np.testing.assert_array_equal(labels, gm.predict(x).compute())
    proba = da.from_zarr(str(run / "probabilities.zarr"))
    assert proba.shape == (6000, 3)


def test_existing_output_needs_overwrite(tmp_path):
    config = load_job(job_file(tmp_path, model={"max_iter": 2}))
    run_job(config)
    stamp = (config.output_dir / "model.json").stat().st_mtime_ns
    with pytest.raises(JobError) as info:
        run_job(config)
    assert info.value.key == "output.dir"
    assert str(info.value).startswith(str(config.source))
    assert (config.output_dir / "model.json").stat().st_mtime_ns == stamp
    run_job(config, overwrite=True)


def test_resume_equals_uninterrupted_run(tmp_path):
    full = run_job(load_job(job_file(tmp_path, "full", model={"n_init": 2})))
    config = load_job(job_file(tmp_path, "parts", model={"n_init": 2}))
    seen = []
    with pytest.raises(Stop):
        run_job(config, on_iteration=lambda p: (seen.append(p.iteration), stop_after(3)(p)))
    assert seen == [1, 2, 3]
    # a stopped run leaves no run folder, only the resumable staging folder
    assert not config.output_dir.exists()
    staging = config.output_dir.parent / ".parts.partial"
    checkpoint = load_npz(staging / "checkpoint.npz")
    assert int(checkpoint["em_iteration"]) == 3

    resumed_from = []
    result = run_job(config, resume=True, on_iteration=lambda p: resumed_from.append(p.iteration))
    assert resumed_from[0] == 4
    assert not staging.exists()
    assert_same_model(load_npz(full.path / "model.npz"), load_npz(result.path / "model.npz"))
    m_full = json.loads((full.path / "metrics.json").read_text())
    m_res = json.loads((result.path / "metrics.json").read_text())
    assert [r["lower_bound"] for r in m_full["iterations"]] == pytest.approx(
        [r["lower_bound"] for r in m_res["iterations"]], rel=1e-12
    )
    assert all(r["seconds"] is not None for r in m_res["iterations"])  # history kept


def test_resume_refuses_a_different_job(tmp_path):
    config = load_job(job_file(tmp_path))
    with pytest.raises(Stop):
        run_job(config, on_iteration=stop_after(2))
    changed = load_job(config.source, overrides=["model.tol=0.5"])
    with pytest.raises(JobError, match="different"):
        run_job(changed, resume=True)
    with pytest.raises(JobError, match="nothing to resume"):
        run_job(load_job(job_file(tmp_path, "fresh")), resume=True)


def test_bad_input_leaves_nothing_behind(tmp_path):
    config = load_job(
        job_file(tmp_path, data={"source": "npy", "path": "missing.npy", "synthetic": None})
    )
    with pytest.raises(JobError) as info:
        run_job(config)
    assert str(info.value).startswith(f"{config.source}: data.path: file not found")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_estimator_rejections_are_bad_input(tmp_path):
    config = load_job(job_file(tmp_path, model={"n_components": 7000}))
    with pytest.raises(JobError) as info:
        run_job(config)
    assert info.value.key == "model" and "n_components" in str(info.value)


@pytest.mark.parametrize("d,picture", [(1, "density.png"), (4, "pca.png")])
def test_plots_for_other_dimensions(tmp_path, d, picture):
    synthetic = {"n_samples": 3000, "n_features": d, "n_components": 2, "seed": 3}
    config = load_job(
        job_file(
            tmp_path,
            data={"synthetic": synthetic},
            model={"n_components": 2, "covariance_type": "diag"},
        )
    )
    run = run_job(config).path
    assert (run / "plots" / picture).stat().st_size > 1000
    (run / "plots" / picture).unlink()
    written = plot_run(run)
    assert run / "plots" / picture in written and (run / "plots" / picture).exists()


def test_plot_axes_come_from_the_model():
    from dask_em.plots import mixture_principal_axes

    rng = np.random.default_rng(0)
    w = np.array([0.3, 0.7])
    means = rng.standard_normal((2, 3)) * 3
    covs = np.stack([np.diag([1.0, 2.0, 0.5]), np.eye(3)])
    labels = rng.random(200_000) < w[1]
    x = np.where(
        labels[:, None],
        rng.multivariate_normal(means[1], covs[1], 200_000),
        rng.multivariate_normal(means[0], covs[0], 200_000),
    )
    center, axes, var = mixture_principal_axes(w, means, covs)
    vals, vecs = np.linalg.eigh(np.cov(x.T))
    np.testing.assert_allclose(center, x.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(var, vals[::-1][:2], rtol=0.03)
    assert abs(abs(axes[:, 0] @ vecs[:, -1]) - 1) < 1e-2


def test_model_selection_picks_the_lowest_bic(tmp_path):
    config = load_job(
        job_file(
            tmp_path,
            model={"max_iter": 40, "tol": 1e-3},
            selection={"n_components": [1, 3], "covariance_type": ["full", "spherical"]},
        )
    )
    result = run_job(config)
    run = result.path
    sel = json.loads((run / "selection.json").read_text())
    assert len(sel["candidates"]) == 4
    best = min(sel["candidates"], key=lambda r: r["bic"])
    assert sel["best"]["label"] == best["label"] and best["n_components"] == 3
    assert result.model.n_components == 3
    assert (run / "plots" / "selection.png").exists()
    assert {p.name for p in (run / "candidates").iterdir()} == {
        "full-k1",
        "full-k3",
        "spherical-k1",
        "spherical-k3",
    }
    assert not (run / "checkpoints").exists()


def test_model_selection_resumes(tmp_path):
    extra = {
        "model": {"max_iter": 30},
        "selection": {"n_components": [2, 3], "covariance_type": ["full", "diag"]},
    }
    labels = ["full-k2", "full-k3", "diag-k2", "diag-k3"]
    full = run_job(load_job(job_file(tmp_path, "full", **extra)))
    config = load_job(job_file(tmp_path, "parts", **extra))
    seen = []
    with pytest.raises(Stop):
        run_job(config, on_iteration=lambda p: (seen.append(p.iteration), stop_after(2)(p)))
    # the grid advances together: one sequence of iterations, every candidate in each
    assert seen == [1, 2]
    staging = config.output_dir.parent / ".parts.partial"
    checkpoint = load_npz(staging / "checkpoints" / "selection.npz")
    assert int(checkpoint["em_iteration"]) == 2
    assert checkpoint["selection_owner"].tolist() == [0, 1, 2, 3]

    resumed_from = []
    result = run_job(config, resume=True, on_iteration=lambda p: resumed_from.append(p.iteration))
    assert resumed_from[0] == 3
    assert not staging.exists() and not (result.path / "checkpoints").exists()
    assert_same_model(load_npz(full.path / "model.npz"), load_npz(result.path / "model.npz"))
    for label in labels:
        a, b = full.path / "candidates" / label, result.path / "candidates" / label
        assert_same_model(load_npz(a / "model.npz"), load_npz(b / "model.npz"))
        m_full = json.loads((a / "metrics.json").read_text())
        m_res = json.loads((b / "metrics.json").read_text())
        assert [r["lower_bound"] for r in m_res["iterations"]] == pytest.approx(
            [r["lower_bound"] for r in m_full["iterations"]], rel=1e-12
        )
        assert all(r["seconds"] is not None for r in m_res["iterations"])  # history kept
        for key in ("bic", "aic", "mean_log_likelihood", "lower_bound"):
            assert m_res[key] == pytest.approx(m_full[key], rel=1e-12), key
    s_full = json.loads((full.path / "selection.json").read_text())
    s_res = json.loads((result.path / "selection.json").read_text())
    assert [r["label"] for r in s_res["candidates"]] == labels
    assert s_res["best"]["label"] == s_full["best"]["label"]
    for a, b in zip(s_full["candidates"], s_res["candidates"], strict=True):
        assert a.keys() == b.keys()
        assert (a["n_iter"], a["converged"]) == (b["n_iter"], b["converged"])
        for key in ("bic", "aic", "lower_bound"):
            assert b[key] == pytest.approx(a[key], rel=1e-12), key


def test_model_selection_reads_the_data_once_per_iteration_for_the_whole_grid(
    tmp_path, monkeypatch
):
    """Four candidates: the EM passes are those of the slowest one (each pass serving
    every live candidate), plus one shared scoring pass; no per-candidate scoring."""
    from dask_em.engine import _em
    from dask_em.jobs import _outputs as _job_outputs
    from dask_em.jobs import _selection as _job_selection
    from dask_em.jobs import runner
    from dask_em.mixture import _selection as selection

    passes, scorings, per_candidate = [], [], []
    real_pass, real_final = _em.em_pass, selection.final_log_likelihoods
    real_scores = runner._scores

    def em_pass(x, params_list, **kw):
        passes.append(len(params_list))
        return real_pass(x, params_list, **kw)

    def final_log_likelihoods(x, params_list, **kw):
        scorings.append(len(params_list))
        return real_final(x, params_list, **kw)

    def scores(*args, **kw):
        per_candidate.append(args)
        return real_scores(*args, **kw)

    monkeypatch.setattr(_em, "em_pass", em_pass)
    monkeypatch.setattr(selection, "final_log_likelihoods", final_log_likelihoods)
    # wherever a job module looks the scoring function up
    for module in (runner, _job_outputs, _job_selection):
        monkeypatch.setattr(module, "_scores", scores, raising=False)
    config = load_job(
        job_file(
            tmp_path,
            model={"max_iter": 40, "tol": 1e-4},
            selection={"n_components": [1, 3], "covariance_type": ["full", "spherical"]},
            output={"plots": False},
        )
    )
    result = run_job(config)
    n_iter = [r["n_iter"] for r in result.selection]
    assert len(n_iter) == 4 and sum(n_iter) > max(n_iter)  # one after another would differ
    assert len(passes) == max(n_iter)
    assert passes[0] == 4  # every candidate in the first pass
    assert scorings == [4] and per_candidate == []
    assert len(passes) + len(scorings) == max(n_iter) + 1
    for row in result.selection:
        metrics = json.loads(
            (result.path / "candidates" / row["label"] / "metrics.json").read_text()
        )
        assert metrics["bic"] == row["bic"] and metrics["n_iter"] == row["n_iter"]
        assert len(metrics["iterations"]) == row["n_iter"]


def test_a_failing_candidate_is_reported_and_the_others_are_ranked(tmp_path):
    """With reg_covar=0, 40 identical rows leave the 2-component start without a
    covariance: that candidate fails at initialisation, the job still picks k=1."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", np.vstack([rng.normal(size=(300, 2)), np.full((40, 2), 30.0)]))
    config = load_job(
        job_file(
            tmp_path,
            data={"source": "npy", "path": str(tmp_path / "x.npy"), "synthetic": None},
            model={"reg_covar": 0.0, "init_params": "kmeans", "max_iter": 20},
            selection={"n_components": [1, 2], "covariance_type": ["full"]},
            output={"plot_sample": 200},
        )
    )
    result = run_job(config)
    ok, bad = result.selection
    assert ok["bic"] is not None and bad["bic"] is None and bad["n_iter"] == 0
    assert result.model.n_components == 1
    failed = result.path / "candidates" / "full-k2"
    assert not (failed / "model.npz").exists()
    assert "reg_covar" in json.loads((failed / "metrics.json").read_text())["error"]
    assert (result.path / "plots" / "selection.png").exists()


def test_model_selection_passes_every_setting_on_or_refuses_it(tmp_path, monkeypatch):
    import inspect

    from dask_em.jobs._selection import _selection_params
    from dask_em.mixture import _selection as selection

    config = load_job(
        job_file(
            tmp_path,
            model={"split_every": 4, "n_init": 2},
            selection={"n_components": [1, 2]},
        )
    )
    params = _selection_params(config)
    assert params["split_every"] == 4 and params["n_init"] == 2
    assert "n_components" not in params and "covariance_type" not in params

    def without_split_every(*args, **kw):
        raise AssertionError("not called")

    sig = inspect.signature(selection.select_model)
    without_split_every.__signature__ = sig.replace(
        parameters=[p for name, p in sig.parameters.items() if name != "split_every"]
    )
    monkeypatch.setattr(selection, "select_model", without_split_every)
    with pytest.raises(JobError) as info:
        _selection_params(config)
    assert info.value.key == "model.split_every"
    # a setting left at its default is not an error
    assert "split_every" not in _selection_params(
        load_job(job_file(tmp_path, "d", selection={"n_components": [1, 2]}))
    )


def test_predict_writes_labels(tmp_path):
    import dask.array as da

    run = run_job(load_job(job_file(tmp_path))).path
    x = np.random.default_rng(1).standard_normal((700, 2)) * 4
    np.save(tmp_path / "new.npy", x)
    data = data_config_for(str(tmp_path / "new.npy"), model_path=run, chunk_rows=200)
    cluster = load_job(job_file(tmp_path, "c")).cluster
    out = predict_job(run, data, tmp_path / "pred", cluster=cluster, probabilities=True)
    labels = da.from_zarr(str(out / "labels.zarr"))
    assert labels.chunks == ((200, 200, 200, 100),)
    np.testing.assert_array_equal(labels.compute(), load_model(run).predict(x))
    summary = json.loads((out / "predict.json").read_text())
    assert sum(summary["counts"]) == 700
    # default data: the training data recorded in model.json
    training = data_config_for(None, model_path=run)
    assert training.source == "synthetic" and training.synthetic.n_samples == 6000
    with pytest.raises(JobError, match="feature"):
        np.save(tmp_path / "wide.npy", np.zeros((10, 5)))
        predict_job(
            run,
            data_config_for(str(tmp_path / "wide.npy"), model_path=run),
            tmp_path / "pred2",
            cluster=cluster,
        )
    assert not (tmp_path / "pred2").exists()


def test_model_info(tmp_path):
    run = run_job(load_job(job_file(tmp_path))).path
    info = model_info(run)
    assert info["n_components"] == 3 and info["bic"] is not None
    assert model_info(run / "model.npz")["weights"] == info["weights"]


def test_make_data_writes_the_jobs_zarr(tmp_path):
    spec = {"n_samples": 5000, "n_features": 3, "n_components": 2, "seed": 9}
    path = tmp_path / "data" / "x.zarr"
    config = load_job(
        job_file(
            tmp_path,
            data={"source": "zarr", "path": str(path), "synthetic": spec, "chunk_rows": 2000},
        )
    )
    with pytest.raises(JobError, match="make-data"):
        run_job(config)
    make_data(config)
    from dask_em.io import load_data, synthetic_array

    np.testing.assert_array_equal(
        load_data(config.data).compute(), synthetic_array(config.data.synthetic, 2000).compute()
    )
    with pytest.raises(JobError, match="exists"):
        make_data(config)
    assert run_job(config).model.n_features_in_ == 3


# ------------------------------------------------------------------------ real clusters


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    from distributed import Client

    address, procs = start_dask_processes(tmp_path_factory.mktemp("dask-cluster"), n_workers=2)
    try:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        shutdown_dask_processes(address, procs)


def test_job_on_a_real_scheduler_and_two_workers(tmp_path, dask_cluster):
    config = load_job(job_file(tmp_path, output={"labels": True}), scheduler=dask_cluster)
    assert config.cluster.kind == "address"
    result = run_job(config)
    threads = run_job(load_job(job_file(tmp_path, "threads")))
    # same data, same start, same tree: same numbers wherever the blocks ran
    assert_same_model(
        load_npz(result.path / "model.npz"), load_npz(threads.path / "model.npz"), tol=1e-10
    )
    assert (result.path / "labels.zarr").exists()


def test_unreachable_scheduler_fails_fast(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    config = load_job(job_file(tmp_path, cluster={"address": address, "timeout": 2}))
    t0 = time.perf_counter()
    with pytest.raises(JobError) as info:
        run_job(config)
    assert time.perf_counter() - t0 < 15
    assert info.value.key == "cluster.address" and address in str(info.value)
    assert not config.output_dir.exists()
    assert not (config.output_dir.parent / ".job.partial").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_job_over_tls(tmp_path):
    """A scheduler that requires TLS, reached with the certificate files from the config."""
    from distributed import Client

    from dask_em.jobs.cluster import security_from_config

    self_signed_cert(tmp_path)
    files = ["--tls-ca-file", "cert.pem", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]
    tls = {
        "ca_file": str(tmp_path / "cert.pem"),
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
    }
    address, procs = start_dask_processes(tmp_path, extra=files, scheme="tls")
    config = load_job(job_file(tmp_path, cluster={"address": address, "tls": tls, "timeout": 20}))
    security = security_from_config(config.cluster)
    try:
        with Client(address, timeout=30, security=security) as client:
            client.wait_for_workers(1, timeout=60)
        result = run_job(config)
        assert result.metrics["converged"]
        plain = load_job(job_file(tmp_path, "plain", cluster={"address": address}))
        with pytest.raises(JobError) as info:
            run_job(plain)
        assert info.value.key == "cluster.tls"
    finally:
        shutdown_dask_processes(address, procs, security)


def test_tls_settings_become_security(tmp_path):
    from dask_em.jobs.cluster import security_from_config

    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    tls = {
        "ca_file": str(tmp_path / "ca.pem"),
        "cert": str(tmp_path / "client.pem"),
        "key": str(tmp_path / "client.key"),
    }
    config = load_job(job_file(tmp_path, cluster={"address": "tls://127.0.0.1:1", "tls": tls}))
    sec = security_from_config(config.cluster)
    assert sec.require_encryption and sec.tls_ca_file == tls["ca_file"]
    assert sec.tls_client_cert == tls["cert"] and sec.tls_client_key == tls["key"]
    (tmp_path / "ca.pem").unlink()
    with pytest.raises(JobError) as info:
        security_from_config(config.cluster)
    assert info.value.key == "cluster.tls.ca_file"


def test_jobqueue_kinds_are_an_allow_list():
    from dask_em.jobs.cluster import JOBQUEUE_KINDS
    from dask_em.jobs.config import JobqueueConfig

    assert set(JOBQUEUE_KINDS) == set(JobqueueConfig.model_fields["kind"].annotation.__args__)
    assert all(v.endswith("Cluster") and "." not in v for v in JOBQUEUE_KINDS.values())
