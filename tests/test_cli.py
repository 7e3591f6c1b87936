"""The ``dask-em`` command line: exit codes, one-line errors, and the commands end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import THREADS, free_port, run_cli
from typer.testing import CliRunner

from dask_em.jobs.cli import app
from dask_em.jobs.config import PROJECT_ROOT

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("no_global_dask_state")


def job_file(tmp_path: Path, data: dict | None = None, name: str = "job", **sections) -> Path:
    doc = {
        "cluster": THREADS,
        "data": data
        or {
            "source": "synthetic",
            "synthetic": {"n_samples": 4000, "n_features": 2, "n_components": 2, "seed": 1},
            "chunk_rows": 1000,
        },
        "model": {
            "n_components": 2,
            "max_iter": 50,
            "random_state": 0,
            "init_params": "random_from_data",
        },
        "output": {"dir": str(tmp_path / "runs" / name), "plot_sample": 300},
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(result, *words: str):
    """Exit 2, the last line of stderr names the problem, no traceback.

    (Lines before it are progress, e.g. which run folder the job was going to write.)
    """
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err
    return err


@pytest.fixture()
def table_files(tmp_path):
    df = pd.DataFrame(np.random.default_rng(0).standard_normal((300, 2)), columns=["a", "b"])
    df["city"] = "x"
    df.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path


def test_main_is_the_console_entry_point():
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "dask_em", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0
    for command in ("run", "validate", "predict", "plot", "info", "make-data"):
        assert command in out.stdout


def test_validate_shipped_files():
    files = sorted((PROJECT_ROOT / "jobs").glob("*.yaml")) + sorted(
        (PROJECT_ROOT / "configs").rglob("*.yaml")
    )
    result = invoke("validate", *files)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(": ok") == len(files)


def test_validate_lists_every_problem(tmp_path):
    path = job_file(tmp_path, model={"n_components": 0, "tol": "x"})
    result = invoke("validate", path)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: model.") for line in lines)


def test_validate_check_data(tmp_path, table_files):
    path = job_file(
        tmp_path, {"source": "csv", "path": str(table_files / "t.csv"), "columns": ["a", "nope"]}
    )
    assert invoke("validate", path).exit_code == 0
    assert_bad_input(invoke("validate", "--check-data", path), "data.columns", "'nope'")


BAD_RUNS = {
    "yaml_syntax": ("name: x\ndata: {source: npy\n", ["line 3", "YAML"]),
    "unknown_key": (None, ["model.n_componnets", "did you mean"]),
    "wrong_type": (None, ["model.max_iter", "valid integer"]),
    "missing_file": (None, ["data.path", "missing.npy", "not found"]),
    "missing_column": (None, ["data.columns", "'zz'"]),
    "non_numeric_column": (None, ["data.columns", "'city'", "non-numeric"]),
    "not_a_mapping": ("[1, 2]\n", ["mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_input_exits_2_with_one_line(tmp_path, table_files, case):
    text, words = BAD_RUNS[case]
    csv = str(table_files / "t.csv")
    if text is not None:
        path = tmp_path / "job.yaml"
        path.write_text(text)
    elif case == "unknown_key":
        path = job_file(tmp_path, model={"n_componnets": 2})
    elif case == "wrong_type":
        path = job_file(tmp_path, model={"max_iter": "many"})
    elif case == "missing_file":
        path = job_file(tmp_path, {"source": "npy", "path": str(tmp_path / "missing.npy")})
    elif case == "missing_column":
        path = job_file(tmp_path, {"source": "csv", "path": csv, "columns": ["a", "zz"]})
    else:
        path = job_file(tmp_path, {"source": "csv", "path": csv})
    err = assert_bad_input(invoke("run", path), *words)
    assert err.startswith(str(path))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unreachable_scheduler(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    path = job_file(tmp_path)
    result = invoke("run", path, "--scheduler", address, "--set", "cluster.timeout=2")
    assert_bad_input(result, "cluster.address", address, "within 2 s")


def test_missing_job_and_bad_set(tmp_path):
    assert_bad_input(invoke("run", tmp_path / "nope.yaml"), "nope.yaml", "not found")
    assert_bad_input(invoke("run", job_file(tmp_path), "--set", "model.tol"), "key.path=value")
    assert_bad_input(invoke("run", job_file(tmp_path), "--resume"), "nothing to resume")


def test_existing_output_needs_overwrite(tmp_path):
    path = job_file(tmp_path, model={"n_components": 2, "max_iter": 3})
    first = invoke("run", path)
    assert first.exit_code == 0, first.output
    assert "iter    1" in first.stderr and "s/iter" in first.stderr  # progress lines
    assert_bad_input(invoke("run", path), "output.dir", "--overwrite")
    assert invoke("run", path, "--overwrite").exit_code == 0


def test_debug_shows_the_traceback(tmp_path):
    path = job_file(tmp_path, {"source": "npy", "path": str(tmp_path / "missing.npy")})
    result = invoke("run", path, "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_predict_info_plot(tmp_path):
    path = job_file(tmp_path, output={"dir": str(tmp_path / "run"), "plots": True})
    assert invoke("run", path).exit_code == 0
    run = tmp_path / "run"
    x = np.random.default_rng(2).standard_normal((500, 2))
    np.save(tmp_path / "new.npy", x)
    out = tmp_path / "pred"
    result = invoke(
        "predict", run, "--data", tmp_path / "new.npy", "--output", out, "--chunk-rows", "128"
    )
    assert result.exit_code == 0, result.output
    import dask.array as da

    from dask_em.jobs.runner import load_model

    labels = da.from_zarr(str(out / "labels.zarr"))
    np.testing.assert_array_equal(labels.compute(), load_model(run).predict(x))
    assert_bad_input(
        invoke("predict", run, "--data", tmp_path / "new.npy", "--output", out), "--overwrite"
    )
    assert_bad_input(
        invoke("predict", run, "--data", tmp_path / "x.xlsx", "--output", tmp_path / "p2"),
        "suffix",
    )

    info = invoke("info", run / "model.npz")
    assert info.exit_code == 0 and "2 components" in info.stdout
    as_json = json.loads(invoke("info", run, "--json").stdout)
    assert as_json["n_components"] == 2
    np.savez(tmp_path / "evil.npz", weights=np.array([object()], dtype=object))
    assert_bad_input(invoke("info", tmp_path / "evil.npz"), "object arrays")

    (run / "plots" / "density.png").unlink()
    assert invoke("plot", run).exit_code == 0
    assert (run / "plots" / "density.png").exists()


def test_quickstart_end_to_end(tmp_path):
    """The README's main command on the shipped job (LocalCluster, 2 worker processes)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = tmp_path / "quickstart"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dask_em",
            "run",
            "jobs/quickstart.yaml",
            "--output",
            str(out),
            "--set",
            "cluster.local.dashboard_address=127.0.0.1:0",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Local cluster: 2 worker(s)" in proc.stderr
    assert proc.stdout.strip() == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["converged"] and metrics["n_iter"] == len(metrics["iterations"])
    # The job's components overlap so that its convergence plot shows EM at work.
    assert metrics["n_iter"] >= 10
    assert (out / "plots" / "density.png").stat().st_size > 10_000
    assert not (PROJECT_ROOT / "runs" / ".quickstart.partial").exists()


def test_resume_after_sigkill(tmp_path):
    """Kill the runner process mid-fit; `run --resume` ends with the same numbers."""
    import signal
    import time

    data = {
        "source": "synthetic",
        "synthetic": {
            "n_samples": 100_000,
            "n_features": 4,
            "n_components": 6,
            "seed": 3,
            "separation": 1.5,
        },
        "chunk_rows": 25_000,
    }
    model = {"n_components": 6, "init_params": "random_from_data", "tol": 1e-12, "max_iter": 25}
    path = job_file(
        tmp_path, data, model=model, output={"dir": str(tmp_path / "run"), "plots": False}
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, "-m", "dask_em", "run", str(path)]
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            deadline = time.monotonic() + 120
            while "iter    5" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not (tmp_path / "run").exists()
    resumed = run_cli([*cmd[3:], "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after iteration" in resumed.stderr
    reference = invoke("run", path, "--output", tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    a = np.load(tmp_path / "run" / "model.npz", allow_pickle=False)
    b = np.load(tmp_path / "reference" / "model.npz", allow_pickle=False)
    for key in ("weights", "means", "covariances", "lower_bounds"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)


def test_distributed_logs_no_traceback_in_the_driver_without_debug():
    import io
    import logging

    from dask_em.jobs.cli import _setup_logging

    # As distributed's logging config sets it up in a driver: its own handler.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    top = logging.getLogger("distributed")
    top.addHandler(handler)
    log = logging.getLogger("distributed.batched")
    try:
        for debug in (False, True):
            _setup_logging(debug)
            try:
                raise OSError("stream closed")
            except OSError:
                log.error("Error in batched write", exc_info=True)
            text, _ = stream.getvalue(), stream.truncate(0)
            stream.seek(0)
            assert "Error in batched write" in text
            assert ("Traceback" in text) == debug
    finally:
        top.removeHandler(handler)
        _setup_logging(False)


def test_the_traceback_filter_sits_on_the_handler_distributed_makes_at_import():
    # In a fresh process, as the command line starts: distributed is not imported yet.
    code = (
        "import logging, sys\n"
        "from dask_em.jobs.cli import _setup_logging\n"
        "assert 'distributed' not in sys.modules\n"
        "_setup_logging(False)\n"
        "log = logging.getLogger('distributed.batched')\n"
        "try:\n"
        "    raise OSError('stream closed')\n"
        "except OSError:\n"
        "    log.error('Error in batched write', exc_info=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, out.stderr
    assert "Error in batched write" in out.stderr
    assert "Traceback" not in out.stderr
