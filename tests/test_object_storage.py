"""Data in object storage: zarr, parquet and CSV read from ``s3://`` URLs on moto's S3
server (127.0.0.1, the session's ``s3_server``), with ``data.storage_options``.

Credentials come from the environment only; the fake secret must never show up in a run
folder, a log or an error. Failures (wrong bucket, no credentials, a damaged object) are
bad input: exit 2 and one line.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import THREADS, make_blobs, project_env, run_cli

from dask_em.data.sources import DataConfig, load_data
from dask_em.errors import JobError
from dask_em.io import load_npz
from dask_em.jobs.config import ConfigError, load_job
from dask_em.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("no_global_dask_state")

N, D = 6_000, 3
SECRET = "dask-em-test-SECRET-never-printed"


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    """A bucket holding the same rows as ``x.zarr`` (uncompressed and zstd chunks),
    ``x.parquet`` and ``x.csv``; also the local copies and the rows themselves."""
    import zarr

    X, _ = make_blobs(n=N, d=D, k=3, seed=3)
    local = tmp_path_factory.mktemp("local")
    z = zarr.create_array(local / "x.zarr", shape=X.shape, chunks=(1000, D), dtype="f8")
    z[:] = X
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame.to_parquet(local / "x.parquet")
    frame.to_csv(local / "x.csv", index=False, float_format="%.17g")
    name = s3_server.make_bucket("data")
    fs = s3_server.filesystem()
    for item in ("x.zarr", "x.parquet", "x.csv"):
        fs.put(str(local / item), f"{name}/{item}", recursive=True)
    return {"name": name, "X": X, "local": local}


def _source(s3_server, bucket, kind: str, **extra) -> dict:
    return {
        "source": kind,
        "path": f"s3://{bucket['name']}/x.{kind}",
        "storage_options": s3_server.storage_options,
        "chunk_rows": 1500,
        **extra,
    }


@pytest.mark.parametrize("kind", ["zarr", "parquet", "csv"])
def test_rows_read_from_s3_are_the_files_rows(s3_server, bucket, kind):
    with s3_server.environment():
        x = load_data(DataConfig(**_source(s3_server, bucket, kind)))
        got = x.compute(scheduler="threads")
    assert x.chunks[0] == (1500,) * 4
    np.testing.assert_array_equal(got, bucket["X"])
    # the graph carries where to read, never the rows: workers read from the store
    assert len(pickle.dumps(dict(x.__dask_graph__()))) < bucket["X"].nbytes / 4


def _job(tmp_path: Path, data: dict, cluster=None, name: str = "job") -> Path:
    doc = {
        "cluster": cluster or THREADS,
        "data": data,
        "model": {"n_components": 3, "max_iter": 20, "tol": 1e-10, "random_state": 0},
        "output": {"dir": str(tmp_path / name), "plots": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_job_on_worker_processes_fits_s3_zarr_as_the_local_file(s3_server, bucket, tmp_path):
    """Worker processes read the blocks from the store (credentials from their
    environment), and the fit equals the one of the local copy; no secret is written."""
    cluster = {
        "local": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB"},
    }
    cluster["local"]["dashboard_address"] = None
    remote = _job(tmp_path, _source(s3_server, bucket, "zarr"), cluster, name="remote")
    local_src = {"source": "zarr", "path": str(bucket["local"] / "x.zarr"), "chunk_rows": 1500}
    local = _job(tmp_path, local_src, name="local")
    done = run_cli(["run", remote], env={**project_env(), **s3_server.env})
    assert done.returncode == 0, done.stderr
    ref = run_job(load_job(local))
    fitted = load_npz(tmp_path / "remote" / "model.npz")
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            fitted[name], getattr(ref.model, f"{name}_"), rtol=1e-12, atol=1e-12
        )
    model = json.loads((tmp_path / "remote" / "model.json").read_text())
    assert model["data"]["path"].startswith("s3://")
    for f in (tmp_path / "remote").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in done.stderr + done.stdout


def _fails(tmp_path, data: dict, env: dict, *words: str) -> str:
    done = run_cli(["run", _job(tmp_path, data)], env={**project_env(), **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def _bad_input(s3_server, data: dict) -> str:
    """The :class:`JobError` of loading and reading ``data`` (as the job would)."""
    with s3_server.environment(), pytest.raises(JobError) as info:
        load_data(DataConfig(**data)).compute(scheduler="sync")
    line = str(info.value)
    assert "\n" not in line and SECRET not in line
    return line


@pytest.mark.parametrize("kind", ["zarr", "parquet", "csv"])
def test_a_wrong_bucket_is_bad_input(s3_server, bucket, kind):
    data = _source(s3_server, bucket, kind) | {"path": f"s3://no-such-bucket-here/x.{kind}"}
    line = _bad_input(s3_server, data)
    assert line.startswith("data.path: not found: s3://no-such-bucket-here/"), line


def test_a_damaged_object_is_bad_input(s3_server, bucket):
    fs = s3_server.filesystem()
    damaged = s3_server.make_bucket("damaged")
    fs.put(str(bucket["local"] / "x.zarr"), f"{damaged}/x.zarr", recursive=True)
    fs.pipe(f"{damaged}/x.zarr/c/2/0", b"not a zarr chunk")
    fs.pipe(f"{damaged}/x.parquet", b"PAR1 this is no parquet file")
    zarr_data = _source(s3_server, bucket, "zarr") | {"path": f"s3://{damaged}/x.zarr"}
    line = _bad_input(s3_server, zarr_data)
    assert f"rows 1500-2999 of s3://{damaged}/x.zarr" in line and "damaged" in line, line
    parquet = _source(s3_server, bucket, "parquet") | {"path": f"s3://{damaged}/x.parquet"}
    line = _bad_input(s3_server, parquet)
    assert f"cannot read s3://{damaged}/x.parquet as parquet" in line, line


def test_the_cli_reports_missing_credentials_and_a_wrong_bucket_in_one_line(
    s3_server, bucket, tmp_path
):
    _fails(
        tmp_path,
        _source(s3_server, bucket, "parquet"),
        s3_server.without_credentials(),
        "data.path",
        "no credentials",
    )
    data = _source(s3_server, bucket, "csv") | {"path": "s3://no-such-bucket-here/x.csv"}
    _fails(tmp_path, data, s3_server.env, "data.path", "not found")


@pytest.mark.parametrize(
    "options", [{"secret": SECRET}, {"client_kwargs": {"aws_secret_access_key": SECRET}}]
)
def test_credentials_in_the_job_file_are_refused_and_never_echoed(tmp_path, options):
    data = {"source": "parquet", "path": "s3://b/x.parquet", "storage_options": options}
    with pytest.raises(ConfigError) as info:
        load_job(_job(tmp_path, data))
    assert "data.storage_options" in str(info.value)
    assert "environment" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_password_in_the_url_is_refused_and_never_echoed(tmp_path):
    data = {"source": "csv", "path": f"https://user:{SECRET}@example.invalid/x.csv"}
    with pytest.raises(ConfigError) as info:
        load_job(_job(tmp_path, data))
    assert "data.path" in str(info.value) and SECRET not in str(info.value)


def test_storage_options_apply_to_url_formats_only(tmp_path):
    data = {"source": "npy", "path": "x.npy", "storage_options": {"anon": True}}
    with pytest.raises(ConfigError, match="storage_options"):
        load_job(_job(tmp_path, data))
