"""Faults with real processes: a worker SIGKILLed mid-fit, the runner SIGKILLed mid-run.

Every process is bound to 127.0.0.1 on free ports and stopped in a ``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    free_port,
    local_cluster_client,
    make_blobs,
    project_env,
    run_cli,
    start_dask_processes,
    stop_processes,
)

from dask_em import GaussianMixture
from dask_em.io import load_npz

RUN = [sys.executable, "-m", "dask_em", "run"]
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


@pytest.fixture()
def two_process_client():
    with local_cluster_client() as client:
        yield client


def _estimator():
    return GaussianMixture(
        n_components=4,
        covariance_type="full",
        tol=1e-12,
        max_iter=8,
        init_params="random_from_data",
        random_state=0,
        persist=True,
    )


@pytest.mark.filterwarnings("ignore::dask_em.mixture._gaussian.ConvergenceWarning")
def test_worker_sigkill_mid_fit_gives_the_undisturbed_parameters(two_process_client):
    import dask.array as da

    client = two_process_client
    X, _ = make_blobs(n=80_000, d=4, k=4, seed=5)
    x = da.from_array(X, chunks=5_000)

    reference = _estimator().fit(x)

    killed: list[int] = []
    killers: list[threading.Thread] = []

    mid_pass: list[bool] = []

    def kill_one(during_pass: bool) -> None:
        pids = client.run(os.getpid)  # worker address -> pid
        address = sorted(pids)[len(killed) % len(pids)]
        pid = pids[address]

        def go():
            if during_pass:  # wait until that worker is running tasks of the next pass
                deadline = time.monotonic() + 10
                while not client.processing().get(address) and time.monotonic() < deadline:
                    time.sleep(0.001)
                mid_pass.append(bool(client.processing().get(address)))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        killers.append(t)

    def callback(progress):
        if progress.iteration == 2:
            kill_one(during_pass=False)  # between passes: its persisted blocks are lost
        elif progress.iteration == 5:
            kill_one(during_pass=True)  # while it runs tasks of the next pass

    disturbed = _estimator().fit(x, callback=callback)
    for t in killers:
        t.join(10)
    assert len(killed) == 2
    assert mid_pass == [True], "the second kill did not land during a pass"
    assert disturbed.n_iter_ == reference.n_iter_ == 8
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(disturbed, name), getattr(reference, name), rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(
        disturbed.lower_bounds_, reference.lower_bounds_, rtol=1e-12, atol=0
    )
    # the nannies brought the cluster back to two workers
    client.wait_for_workers(2, timeout=30)


# ------------------------------------------------------------------------ runner SIGKILL


def _job(tmp_path: Path, out: Path) -> Path:
    doc = {
        "cluster": {
            "local": {
                "processes": False,
                "n_workers": 1,
                "threads_per_worker": 2,
                "dashboard_address": None,
            }
        },
        "data": {
            "source": "synthetic",
            "synthetic": {
                "n_samples": 60_000,
                "n_features": 3,
                "n_components": 5,
                "seed": 11,
                "separation": 1.5,
            },
            "chunk_rows": 10_000,
        },
        "model": {
            "n_components": 5,
            "init_params": "random_from_data",
            "tol": 1e-12,
            "max_iter": 30,
            "random_state": 0,
        },
        "output": {"dir": str(out), "plots": False, "labels": True},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _checkpoint_iteration(path: Path) -> int:
    """The checkpoint's iteration; every read must succeed (writes are atomic)."""
    if not path.is_file():
        return 0
    return int(load_npz(path)["em_iteration"])


def test_runner_sigkill_then_resume(tmp_path):
    run = tmp_path / "run"
    staging = tmp_path / ".run.partial"
    path = _job(tmp_path, run)
    cmd = [sys.executable, "-m", "dask_em", "run", str(path)]
    proc = subprocess.Popen(
        cmd,
        env=project_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reads = 0
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            it = _checkpoint_iteration(staging / "checkpoint.npz")
            reads += it > 0
            if it >= 2:
                break
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert reads > 0
    # nothing half-written: only complete files, no temporaries; the checkpoint loads
    assert not run.exists()
    leftovers = sorted(p.name for p in staging.iterdir())
    assert leftovers == [".dask-em.json", "checkpoint.npz"], leftovers
    assert _checkpoint_iteration(staging / "checkpoint.npz") >= 2

    resumed = run_cli([*cmd[3:], "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after iteration" in resumed.stderr
    assert not staging.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    reference = run_cli([*cmd[3:], "--output", tmp_path / "reference"])
    assert reference.returncode == 0, reference.stderr
    a = load_npz(run / "model.npz")
    b = load_npz(tmp_path / "reference" / "model.npz")
    for key in ("weights", "means", "covariances", "precisions_cholesky", "lower_bounds"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12, err_msg=key)
    import json

    import dask.array as da

    for name in ("model.json", "metrics.json"):
        json.loads((run / name).read_text())
    labels = da.from_zarr(str(run / "labels.zarr")).compute()
    ref_labels = da.from_zarr(str(tmp_path / "reference" / "labels.zarr")).compute()
    np.testing.assert_array_equal(labels, ref_labels)


# ------------------------------------------------------------------------ scheduler lost


def _start_scheduler_and_worker(work: Path):
    """`dask scheduler` + one 2-thread `dask worker` on 127.0.0.1: (address, procs)."""
    return start_dask_processes(work, nthreads=2)


def _stop(procs) -> None:
    stop_processes(procs, grace=0, kill=True)


def test_scheduler_lost_mid_run_fails_fast_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    staging = tmp_path / ".run.partial"
    path = _job(tmp_path, run)
    first, procs = _start_scheduler_and_worker(tmp_path)
    runner = None
    try:
        cmd = [*RUN, str(path), "--set", "cluster.timeout=5", "--set", "model.max_iter=8"]
        runner = subprocess.Popen(
            [*cmd, "--scheduler", first],
            env=project_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while _checkpoint_iteration(staging / "checkpoint.npz") < 2:
            assert runner.poll() is None, runner.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
        procs[0].send_signal(signal.SIGKILL)  # the scheduler
        t0 = time.monotonic()
        _, err = runner.communicate(timeout=90)
        assert time.monotonic() - t0 < 60
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
            runner.wait()
        _stop(procs)
    assert runner.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert "scheduler" in last and last.startswith("error:"), last
    assert "checkpoint is kept" in err
    assert "Traceback" not in err
    assert not run.exists()
    kept = _checkpoint_iteration(staging / "checkpoint.npz")
    assert kept >= 2

    # A new scheduler: --resume continues from the kept checkpoint and ends with the
    # numbers of an uninterrupted run on the same cluster.
    second, procs = _start_scheduler_and_worker(tmp_path)
    try:
        kw = dict(env=project_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)
        resumed = subprocess.run([*cmd, "--scheduler", second, "--resume"], timeout=300, **kw)
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming after iteration {kept}" in resumed.stderr
        ref = tmp_path / "reference"
        reference = subprocess.run(
            [*cmd, "--scheduler", second, "--output", str(ref)], timeout=300, **kw
        )
        assert reference.returncode == 0, reference.stderr
    finally:
        _stop(procs)
    a, b = load_npz(run / "model.npz"), load_npz(ref / "model.npz")
    for key in ("weights", "means", "covariances", "lower_bounds"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_unreachable_scheduler_is_bad_input_within_the_timeout(tmp_path):
    """Nothing listens: exit 2 within about cluster.timeout, one line, nothing written."""
    from typer.testing import CliRunner

    from dask_em.jobs.cli import app

    address = f"tcp://127.0.0.1:{free_port()}"
    path = _job(tmp_path, tmp_path / "run")
    t0 = time.monotonic()
    result = CliRunner().invoke(
        app, ["run", str(path), "--scheduler", address, "--set", "cluster.timeout=1"]
    )
    assert time.monotonic() - t0 < 15
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "cluster.address" in last and address in last and "dask scheduler" in last
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()
