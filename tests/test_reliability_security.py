"""Security: safe YAML only, no unpickling, cluster classes from an allow-list, and no
secrets (TLS key contents, passwords in addresses) in messages, logs or run files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import project_env, self_signed_cert, start_dask_processes, stop_processes
from typer.testing import CliRunner

from dask_em.jobs.cli import app
from dask_em.jobs.config import PROJECT_ROOT, JobError, load_job

PACKAGE = PROJECT_ROOT / "dask_em"
SOURCES = sorted(PACKAGE.rglob("*.py"))
FORBIDDEN_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "importlib"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                yield node, f"{f.value.id}.{f.attr}"
            elif isinstance(f, ast.Name):
                yield node, f.id


def _where(path: Path, node) -> str:
    return f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"


def test_sources_found():
    assert len(SOURCES) > 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_unsafe_loading_in_the_package(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        # importlib.metadata (package versions) is the one harmless importlib use
        if isinstance(node, ast.ImportFrom) and node.module == "importlib.metadata":
            continue
        problems += [f"{_where(path, node)} imports {n}" for n in names if n in FORBIDDEN_MODULES]
    for node, name in _calls(tree):
        if name in ("eval", "exec", "__import__", "pd.read_pickle", "pandas.read_pickle"):
            problems.append(f"{_where(path, node)} calls {name}")
        if name.startswith("yaml.") and name not in ("yaml.safe_load", "yaml.safe_dump"):
            problems.append(f"{_where(path, node)} calls {name} (use yaml.safe_load)")
        if name in ("np.load", "numpy.load"):
            kw = {k.arg: k.value for k in node.keywords}
            flag = kw.get("allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{_where(path, node)} calls np.load without allow_pickle=False")
        if name == "getattr" and len(node.args) >= 2:
            # attribute names looked up from data must come from an allow-list dict
            arg = node.args[1]
            if isinstance(arg, ast.Attribute):
                problems.append(f"{_where(path, node)} getattr with a config value")
    assert not problems, "\n".join(problems)


def test_yaml_is_read_with_safe_load():
    text = "\n".join(p.read_text() for p in SOURCES)
    assert "yaml.safe_load" in text


@pytest.mark.parametrize(
    "cluster",
    [
        {"jobqueue": {"kind": "distributed.LocalCluster"}},
        {"jobqueue": {"kind": "os.system"}},
        {"class": "distributed.LocalCluster"},
        {"local": {"cluster_class": "dask_jobqueue.SLURMCluster"}},
    ],
)
def test_cluster_classes_come_from_the_allow_list(tmp_path, cluster):
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    doc = {
        "cluster": cluster,
        "data": {"source": "npy", "path": str(tmp_path / "x.npy")},
        "model": {"n_components": 2},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(JobError) as info:
        load_job(path)
    assert "cluster" in str(info.value)


def test_yaml_python_tags_are_rejected_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "job.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert not marker.exists()


@pytest.mark.parametrize("where", ["yaml", "--scheduler"])
def test_a_password_in_the_scheduler_address_is_rejected_and_never_echoed(tmp_path, where):
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    secret = "hunter2-s3cret"
    address = f"tcp://alice:{secret}@127.0.0.1:1"
    doc = {
        "cluster": {"address": address, "timeout": 1} if where == "yaml" else {},
        "data": {"source": "npy", "path": str(tmp_path / "x.npy")},
        "model": {"n_components": 2},
        "output": {"dir": str(tmp_path / "run")},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    args = ["run", str(path)] + (["--scheduler", address] if where != "yaml" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "credentials" in result.stderr.strip().splitlines()[-1]
    assert secret not in result.output
    assert not (tmp_path / "run").exists()


def test_tls_job_writes_no_secret_anywhere(tmp_path):
    """A job over TLS (scheduler and worker processes with a throwaway certificate): the
    key's contents appear in no output, log line, model.json, metrics.json or run file."""
    self_signed_cert(tmp_path)
    key_lines = [
        line
        for line in (tmp_path / "key.pem").read_text().splitlines()
        if line and not line.startswith("-----")
    ]
    tls_args = ["--tls-ca-file", "cert.pem", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]
    address, procs = start_dask_processes(tmp_path, nthreads=2, extra=tls_args, scheme="tls")
    env = project_env()
    doc = {
        "cluster": {
            "address": address,
            "timeout": 20,
            "tls": {
                "ca_file": str(tmp_path / "cert.pem"),
                "cert": str(tmp_path / "cert.pem"),
                "key": str(tmp_path / "key.pem"),
            },
        },
        "data": {
            "source": "synthetic",
            "synthetic": {"n_samples": 3000, "n_features": 2, "n_components": 2, "seed": 1},
            "chunk_rows": 1000,
        },
        "model": {"n_components": 2, "max_iter": 5, "random_state": 0},
        "output": {"dir": str(tmp_path / "run"), "plots": False, "labels": True},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        out = subprocess.run(
            [sys.executable, "-m", "dask_em", "run", str(path), "--debug"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop_processes(procs, grace=0, kill=True)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run"
    texts = {"stdout": out.stdout, "stderr (debug log)": out.stderr}
    for f in run.rglob("*"):
        if f.is_file():
            texts[str(f.relative_to(run))] = f.read_bytes().decode("latin-1")
    assert "model.json" in texts and "metrics.json" in texts
    for name, text in texts.items():
        for line in key_lines:
            assert line not in text, f"TLS key material in {name}"
        assert "PRIVATE KEY" not in text, name
