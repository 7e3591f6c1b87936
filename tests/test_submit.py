"""`dask-em submit` / `status` / `logs` / `cancel` / `wait` against a real `dask scheduler`
and two `dask worker` processes on 127.0.0.1: the job runs on the cluster without the
submitting process, ends with the numbers of `dask-em run`, survives the loss of its
driver's worker, and stops cleanly when cancelled."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import environ, run_cli, shutdown_dask_processes, start_dask_processes
from typer.testing import CliRunner

from dask_em.data.folders import MARKER, read_marker
from dask_em.data.writers import load_npz
from dask_em.jobs._jobstate import driver_key
from dask_em.jobs.cli import app
from dask_em.jobs.config import load_job
from dask_em.jobs.runner import run_job
from dask_em.jobs.submit import (
    cancel_job,
    describe,
    follow_job,
    job_log,
    job_records,
    scheduler_client,
    submit_job,
)

# A tiny job that still runs long enough to be stopped in the middle: tol 0 runs every
# one of max_iter iterations, 12 blocks make each a real pass.
JOB = {
    "name": "tiny",
    "data": {
        "source": "synthetic",
        "synthetic": {"n_samples": 6000, "n_features": 2, "n_components": 3, "seed": 1},
        "chunk_rows": 500,
    },
    "model": {
        "n_components": 3,
        "tol": 0.0,
        "max_iter": 40,
        "random_state": 0,
        "init_params": "random_from_data",
    },
    "output": {"plots": False, "labels": True},
}
ALLOWED_FAILURES = "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"
KEYS = ("weights", "means", "covariances", "precisions_cholesky", "lower_bounds")


def _job(folder: Path, name: str = "job", **model) -> Path:
    doc = {**JOB, "model": {**JOB["model"], **model}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def s3(request):
    """The session's S3 test server (moto on 127.0.0.1), or None where moto or s3fs is
    not installed (only the s3:// test then skips)."""
    try:
        return request.getfixturevalue("s3_server")
    except pytest.skip.Exception:
        return None


def _s3_env(s3) -> dict:
    """The variables a process needs to reach the test server: its fake credentials and,
    as botocore reads it, the endpoint (never the user's profile or AWS itself)."""
    return {} if s3 is None else {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint_url}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """(address, work folder): a `dask scheduler` and two 1-thread `dask worker`s
    (with nannies, which restart a killed worker), stopped also on failure. The workers
    can reach the S3 test server when there is one."""
    from distributed import Client

    work = tmp_path_factory.mktemp("submit-cluster")
    # One restart of a task whose worker died, not three: a driver killed twice is given up.
    with environ({ALLOWED_FAILURES: "1", **_s3_env(s3)}):
        address, procs = start_dask_processes(work, n_workers=2)
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, work
    finally:
        shutdown_dask_processes(address, procs)


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """`dask-em run` of the job on the same cluster: the model arrays, labels."""
    address, _ = cluster
    folder = tmp_path_factory.mktemp("reference")
    result = run_job(load_job(_job(folder), scheduler=address, output=folder / "run"))
    return _model(result.path)


def _model(run) -> dict:
    import dask.array as da

    arrays = load_npz(Path(run) / "model.npz")
    arrays["labels"] = da.from_zarr(str(Path(run) / "labels.zarr")).compute()
    return arrays


def _assert_same(a: dict, b: dict) -> None:
    for key in KEYS:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12, err_msg=key)
    np.testing.assert_array_equal(a["labels"], b["labels"])


def _wait_until(address: str, job_id: str, ready, timeout: float = 120.0) -> dict:
    """Poll the job's record until ``ready(record)``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with scheduler_client(address) as client:
        while True:
            (record,) = job_records(client, address, job_id, reconcile=False)
            if ready(record):
                return record
            assert record["state"] in ("queued", "running"), describe(record)
            assert time.monotonic() < deadline, f"timed out: {describe(record)}"
            time.sleep(0.05)


def _at_iteration(n: int):
    return lambda r: (r.get("progress") or {}).get("iteration", 0) >= n


def test_submit_exits_job_finishes_status_from_a_new_process(cluster, reference, tmp_path):
    """Two jobs at once: one from a `dask-em submit` process that has exited, one to a
    file:// URL; both end with the numbers of `dask-em run`."""
    address, _ = cluster
    path = _job(tmp_path)
    submitted = run_cli(["submit", path, "--scheduler", address, "--output", tmp_path / "a"])
    assert submitted.returncode == 0, submitted.stderr
    first = submitted.stdout.strip()
    assert first.startswith("tiny-")
    url = (tmp_path / "url" / "b").as_uri()
    second = submit_job(load_job(path, scheduler=address, output=url))
    for job_id in (first, second):
        lines: list[str] = []
        record = follow_job(address, job_id, on_line=lines.append, poll=0.1)
        assert record["state"] == "finished", describe(record)
        assert any("iter   40" in line for line in lines), lines
    status = run_cli(["status", first, "--scheduler", address])
    assert status.returncode == 0, status.stderr
    assert status.stdout.split()[:2] == [first, "finished"], status.stdout
    _assert_same(_model(tmp_path / "a"), reference)
    _assert_same(_model(tmp_path / "url" / "b"), reference)
    # the URL's folder: marked complete with the list of its files, no staging left
    marker = read_marker(tmp_path / "url" / "b")
    assert marker["complete"] and "model.npz" in marker["files"]
    assert sorted(p.name for p in (tmp_path / "url").iterdir()) == ["b"]
    assert job_log(address, first) == log_of(address, first)
    # ended: the scheduler keeps the record, not the driver task (whose result, lost
    # with a worker, it would otherwise run again)
    with scheduler_client(address) as client:
        assert not {driver_key(first), driver_key(second)} & set(client.list_datasets())


def log_of(address: str, job_id: str) -> list[str]:
    result = CliRunner().invoke(app, ["logs", job_id, "--scheduler", address])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_cancel_mid_run_keeps_the_checkpoint_and_resume_finishes(cluster, reference, tmp_path):
    """Cancelled at a URL: only the marked staging prefix with its checkpoint stays;
    ``--resume`` continues from it to the numbers of an undisturbed run."""
    address, _ = cluster
    url = (tmp_path / "runs" / "c").as_uri()
    config = load_job(_job(tmp_path), scheduler=address, output=url)
    job_id = submit_job(config)
    _wait_until(address, job_id, _at_iteration(3))
    record = cancel_job(address, job_id, timeout=60)
    assert record["state"] == "cancelled", describe(record)
    staging = tmp_path / "runs" / ".c.partial"
    assert sorted(p.name for p in staging.iterdir()) == [MARKER, "checkpoint.npz"]
    assert not (tmp_path / "runs" / "c").exists()
    kept = int(load_npz(staging / "checkpoint.npz")["em_iteration"])
    assert 3 <= kept < 40
    assert str(staging.name) in record["note"]

    resumed = submit_job(config, resume=True)
    lines: list[str] = []
    record = follow_job(address, resumed, on_line=lines.append, poll=0.1)
    assert record["state"] == "finished", describe(record)
    assert any(f"resuming after iteration {kept}" in line for line in lines), lines
    _assert_same(_model(tmp_path / "runs" / "c"), reference)
    assert not staging.exists()


def test_output_to_s3_is_published_complete_with_the_marker_last(cluster, reference, s3, tmp_path):
    """A run folder at s3:// (moto on 127.0.0.1): the numbers of `dask-em run`, exactly
    the marker's files plus the marker, no staging prefix left, and readers load it."""
    import dask.array as da

    from dask_em.jobs.runner import load_model

    if s3 is None:
        pytest.skip("moto's server or s3fs is not installed (pip install dask-em[test])")
    address, _ = cluster
    bucket = s3.make_bucket("submit")
    url = f"s3://{bucket}/runs/t"
    job_id = submit_job(load_job(_job(tmp_path), scheduler=address, output=url))
    record = follow_job(address, job_id, on_line=lambda line: None, poll=0.1)
    assert record["state"] == "finished", describe(record)
    with environ(_s3_env(s3)):
        fs = s3.filesystem()
        marker = json.loads(fs.cat(f"{bucket}/runs/t/{MARKER}"))
        assert marker["complete"] and marker["kind"] == "run"
        listed = {p.split("/runs/t/", 1)[1] for p in fs.find(f"{bucket}/runs/t")}
        assert listed == {*marker["files"], MARKER}
        assert not fs.exists(f"{bucket}/runs/.t.partial")
        model = load_model(url)
        labels = da.from_zarr(f"{url}/labels.zarr").compute()
    for key in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(
            getattr(model, key + "_"), reference[key], rtol=1e-12, atol=1e-12
        )
    np.testing.assert_array_equal(labels, reference["labels"])
    assert s3.CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in describe(record)


def test_driver_worker_killed_mid_run_restarts_from_the_checkpoint(cluster, reference, tmp_path):
    address, _ = cluster
    out = tmp_path / "k"
    job_id = submit_job(load_job(_job(tmp_path), scheduler=address, output=out))
    record = _wait_until(address, job_id, _at_iteration(3))
    line = describe(record)
    for word in (job_id, "running", "iteration", "lower bound", "passes", "s/iter"):
        assert word in line, line
    os.kill(int(record["pid"]), signal.SIGKILL)
    lines: list[str] = []
    record = follow_job(address, job_id, on_line=lines.append, poll=0.1)
    assert record["state"] == "finished", describe(record)
    assert record["attempt"] == 2
    assert any("Driver restarted" in line for line in lines), lines
    assert any("resuming after iteration" in line for line in lines), lines
    _assert_same(_model(out), reference)


def test_a_driver_that_cannot_be_restarted_is_reported_failed(cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "f"
    job_id = submit_job(load_job(_job(tmp_path, max_iter=400), scheduler=address, output=out))
    first = _wait_until(address, job_id, _at_iteration(2))
    os.kill(int(first["pid"]), signal.SIGKILL)
    again = _wait_until(
        address, job_id, lambda r: r.get("attempt") == 2 and r["pid"] != first["pid"]
    )
    os.kill(int(again["pid"]), signal.SIGKILL)
    record = follow_job(address, job_id, on_line=lambda _: None, poll=0.1)
    assert record["state"] == "failed", describe(record)
    assert record["error"].startswith("its driver could not be restarted"), record["error"]
    assert driver_key(job_id) in record["error"] and "died" in record["error"]
    assert "Traceback" not in record["error"] and "\n" not in record["error"]
    # its checkpoint stays for `submit --resume`; no run folder appeared
    assert not out.exists() and (tmp_path / ".f.partial" / "checkpoint.npz").is_file()


def test_bad_job_is_refused_before_anything_reaches_the_cluster(cluster, tmp_path):
    address, work = cluster
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**JOB, "model": {**JOB["model"], "n_components": 0}}))
    runner = CliRunner()
    with scheduler_client(address) as client:
        before = job_records(client, address)
    result = runner.invoke(app, ["submit", str(bad), "--scheduler", address])
    assert result.exit_code == 2, result.output
    assert "model.n_components" in result.stderr and "Traceback" not in result.output
    # data the workers cannot read: refused by the workers' check, nothing started
    missing = _job(tmp_path, "missing")
    result = runner.invoke(
        app,
        [
            "submit",
            str(missing),
            "--scheduler",
            address,
            "--set",
            "data={source: npy, path: nowhere.npy}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "nowhere.npy" in result.stderr and "checked on the worker" in result.stderr
    with scheduler_client(address) as client:
        assert job_records(client, address) == before


def test_unknown_job_id_is_exit_2(cluster):
    address, _ = cluster
    for command in (["status"], ["logs"], ["cancel"], ["wait"], ["run", "--attach"]):
        result = CliRunner().invoke(app, [*command, "no-such-job", "--scheduler", address])
        assert result.exit_code == 2, (command, result.output)
        assert "no job no-such-job" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_relative_paths_become_absolute_for_the_workers(tmp_path, monkeypatch):
    """The workers do not run in the submitting folder: data, a weights file and the
    output are resolved against it before the job leaves; URLs stay as they are."""
    from dask_em.jobs.submit import for_the_cluster

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "w.npy", np.ones(4))
    doc = {**JOB, "data": {"source": "npy", "path": "d/x.npy", "weights": "w.npy"}}
    doc["output"] = {"dir": "runs/x"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    address = "tcp://127.0.0.1:8786"
    config = for_the_cluster(load_job("job.yaml", scheduler=address))
    assert config.data.path == str(tmp_path / "d" / "x.npy")
    assert config.data.weights == str(tmp_path / "w.npy")
    assert config.output.dir == str(tmp_path / "runs" / "x")
    assert config.source == Path("job.yaml")  # resolved when the job is sent
    url = for_the_cluster(load_job("job.yaml", scheduler=address, output="s3://b/runs/x"))
    assert url.output.dir == "s3://b/runs/x"
