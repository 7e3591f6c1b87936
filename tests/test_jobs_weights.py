"""Jobs with row weights (``data.weights``) and with ``model.missing: em``, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import THREADS
from typer.testing import CliRunner

from dask_em.io import load_weighted
from dask_em.jobs.cli import app
from dask_em.jobs.config import JobConfig, load_job
from dask_em.jobs.runner import run_job

runner = CliRunner()

MODEL = {
    "n_components": 2,
    "max_iter": 30,
    "tol": 1e-8,
    "random_state": 0,
    "init_params": "random_from_data",
}
OUTPUT = {"plots": False, "checkpoint": False}


def _blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [5.0, 4.0]])
    labels = rng.integers(0, 2, n)
    return centers[labels] + rng.standard_normal((n, 2))


def _job(tmp_path: Path, data: dict, name: str = "job", model: dict | None = None) -> Path:
    doc = {
        "cluster": THREADS,
        "data": data,
        "model": {**MODEL, **(model or {})},
        "output": {**OUTPUT, "dir": str(tmp_path / "runs" / name)},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(path: Path):
    return run_job(load_job(path))


def _bad_input(path: Path, *words: str) -> str:
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in last, last
    return last


@pytest.fixture()
def weighted(tmp_path):
    """600 rows, integer weights 0..3, as parquet (column ``w``), csv and npy + weights.npy."""
    x = _blobs()
    w = np.random.default_rng(1).integers(0, 4, len(x)).astype(float)
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "w": w, "name": ["r"] * len(x)})
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    return x, w


def _params(result):
    gm = result.model
    return {k: np.asarray(getattr(gm, k)) for k in ("weights_", "means_", "covariances_")}


def _assert_same(a, b, tol=1e-10):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


# ------------------------------------------------------------------------------------ loading


def test_table_weights_are_chunked_like_the_features_and_left_out_of_them(tmp_path, weighted):
    x, w = weighted
    data = {"source": "parquet", "path": str(tmp_path / "t.parquet"), "chunk_rows": 128}
    cfg = load_job(_job(tmp_path, {**data, "columns": ["a", "b"], "weights": "w"})).data
    xd, wd = load_weighted(cfg)
    assert xd.chunks[0] == wd.chunks[0] and max(xd.chunks[0]) <= 128
    np.testing.assert_array_equal(xd.compute(), x)
    np.testing.assert_array_equal(wd.compute(), w)
    # columns omitted: every numeric column but the weights ('name' is not numeric, so list)
    csv = {"source": "csv", "path": str(tmp_path / "t.csv"), "chunk_rows": 100}
    df = pd.read_csv(tmp_path / "t.csv").drop(columns="name")
    df.to_csv(tmp_path / "n.csv", index=False)
    cfg = load_job(_job(tmp_path, {**csv, "path": str(tmp_path / "n.csv"), "weights": "w"})).data
    xd, wd = load_weighted(cfg)
    assert xd.shape == (600, 2) and xd.chunks[0] == wd.chunks[0]
    np.testing.assert_allclose(xd.compute(), x, rtol=1e-15)
    np.testing.assert_array_equal(wd.compute(), w)


# -------------------------------------------------------------------------------- weighted jobs


def test_parquet_weights_column_equals_the_estimator_and_its_bic(tmp_path, weighted):
    x, w = weighted
    path = _job(
        tmp_path,
        {"source": "parquet", "path": str(tmp_path / "t.parquet"), "columns": ["a", "b"]}
        | {"weights": "w", "chunk_rows": 150},
    )
    result = _run(path)
    gm = result.model
    m = json.loads((result.path / "metrics.json").read_text())
    assert m["total_weight"] == pytest.approx(w.sum(), rel=1e-15)
    assert m["n_samples"] == 600 and m["n_rows_skipped"] == 0
    xd = da.from_array(x, chunks=150)
    wd = da.from_array(w, chunks=150)
    # the runner's one scoring pass equals the estimator's weighted criteria
    assert m["bic"] == pytest.approx(gm.bic(xd, sample_weight=wd), rel=1e-12)
    assert m["aic"] == pytest.approx(gm.aic(xd, sample_weight=wd), rel=1e-12)
    assert m["bic"] == pytest.approx(gm.bic(x, sample_weight=w), rel=1e-12)
    # ... and its fit equals fitting the estimator directly with the weights
    from dask_em import GaussianMixture

    direct = GaussianMixture(**{**MODEL, "persist": False}).fit(xd, sample_weight=wd)
    _assert_same(_params(result), {k: getattr(direct, k) for k in _params(result)}, 1e-12)
    assert json.loads((result.path / "model.json").read_text())["data"]["weights"] == "w"


def test_npy_weights_file_and_integer_weights_equal_repeated_rows(tmp_path, weighted):
    x, w = weighted
    data = {"source": "npy", "path": str(tmp_path / "x.npy"), "chunk_rows": 200}
    rep = np.repeat(x, w.astype(int), axis=0)
    np.save(tmp_path / "rep.npy", rep)
    # the same start for both (a data-drawn start would see different rows)
    start = {"means_init": [[0.5, 0.5], [4.5, 3.5]], "tol": 0.0, "max_iter": 12}
    weighted_run = _run(
        _job(tmp_path, {**data, "weights": str(tmp_path / "w.npy")}, "wt2", model=start)
    )
    repeated = _run(
        _job(tmp_path, {**data, "path": str(tmp_path / "rep.npy")}, "rep", model=start)
    )
    _assert_same(_params(weighted_run), _params(repeated), 1e-10)
    mw = json.loads((weighted_run.path / "metrics.json").read_text())
    mr = json.loads((repeated.path / "metrics.json").read_text())
    assert mw["total_weight"] == mr["n_samples"] == len(rep)
    assert mw["bic"] == pytest.approx(mr["bic"], rel=1e-10)
    assert mw["aic"] == pytest.approx(mr["aic"], rel=1e-10)
    assert mw["n_iter"] == mr["n_iter"]


def test_hdf5_weights_may_be_a_dataset_in_the_same_file(tmp_path, weighted):
    h5py = pytest.importorskip("h5py")
    x, w = weighted
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["w"] = x, w
    data = {"source": "hdf5", "path": str(tmp_path / "d.h5"), "dataset": "x", "chunk_rows": 200}
    cfg = load_job(_job(tmp_path, {**data, "weights": "w"})).data
    xd, wd = load_weighted(cfg)
    assert xd.chunks[0] == wd.chunks[0]
    np.testing.assert_array_equal(wd.compute(), w)


# ---------------------------------------------------------------------------------- bad input


def test_bad_weights_exit_2_naming_data_weights(tmp_path, weighted):
    pq = {"source": "parquet", "path": str(tmp_path / "t.parquet"), "columns": ["a", "b"]}
    _bad_input(_job(tmp_path, {**pq, "weights": "nope"}, "missing"), "data.weights", "'nope'")
    _bad_input(_job(tmp_path, {**pq, "weights": "name"}, "text"), "data.weights", "numeric")
    _bad_input(_job(tmp_path, {**pq, "weights": "a"}, "feature"), "data.weights", "data.columns")
    npy = {"source": "npy", "path": str(tmp_path / "x.npy")}
    _bad_input(
        _job(tmp_path, {**npy, "weights": str(tmp_path / "absent.npy")}, "nofile"),
        "data.weights",
        "not found",
    )
    np.save(tmp_path / "short.npy", np.ones(599))
    err = _bad_input(
        _job(tmp_path, {**npy, "weights": str(tmp_path / "short.npy")}, "short"),
        "data.weights",
    )
    assert "599" in err and "600" in err
    np.save(tmp_path / "neg.npy", -np.ones(600))
    _bad_input(
        _job(tmp_path, {**npy, "weights": str(tmp_path / "neg.npy")}, "neg"), "data.weights"
    )
    synthetic = {
        "source": "synthetic",
        "synthetic": {"n_samples": 100, "n_features": 2, "n_components": 2},
        "weights": "w",
    }
    _bad_input(_job(tmp_path, synthetic, "syn"), "data.weights", "synthetic")
    # `validate --check-data` catches the file problems without a fit
    result = runner.invoke(app, ["validate", "--check-data", str(tmp_path / "short.yaml")])
    assert result.exit_code == 2 and "data.weights" in result.stderr


# ------------------------------------------------------------------------------- missing data


def test_missing_em_job_on_a_csv_with_nan_records_skipped_rows(tmp_path):
    x = _blobs(400, seed=3)
    x[::10, 0] = np.nan
    x[5:8] = np.nan  # three rows with no observed value
    pd.DataFrame(x, columns=["a", "b"]).to_csv(tmp_path / "m.csv", index=False)
    data = {"source": "csv", "path": str(tmp_path / "m.csv"), "chunk_rows": 100}
    path = _job(tmp_path, data, "nan")
    err = _bad_input(path, "model.missing: em")
    assert "Remove or impute these values" in err
    result = _run(_job(tmp_path, data, "em", model={"missing": "em"}))
    m = json.loads((result.path / "metrics.json").read_text())
    assert m["n_rows_skipped"] == 3 == result.model.n_rows_skipped_
    assert m["bic"] is not None and m["total_weight"] == 400


def test_job_config_weights_round_trips(tmp_path, weighted):
    cfg = load_job(_job(tmp_path, {"source": "npy", "path": "x.npy", "weights": "w.npy"}, "rt"))
    again = JobConfig.model_validate(cfg.model_dump())
    assert again.data.weights == "w.npy"


def test_zarr_weights_array_is_chunked_like_the_data(tmp_path, weighted):
    x, w = weighted
    da.to_zarr(da.from_array(x, chunks=(250, 2)), str(tmp_path / "x.zarr"))
    da.to_zarr(da.from_array(w, chunks=77), str(tmp_path / "w.zarr"))
    data = {"source": "zarr", "path": str(tmp_path / "x.zarr"), "chunk_rows": 200}
    xd, wd = load_weighted(
        load_job(_job(tmp_path, {**data, "weights": str(tmp_path / "w.zarr")})).data
    )
    assert xd.chunks[0] == wd.chunks[0] == (200, 200, 200)
    np.testing.assert_array_equal(wd.compute(), w)


def test_model_selection_with_weights_scores_each_candidate_weighted(tmp_path, weighted):
    x, w = weighted
    data = {"source": "npy", "path": str(tmp_path / "x.npy"), "chunk_rows": 200}
    doc = yaml.safe_load(
        _job(tmp_path, {**data, "weights": str(tmp_path / "w.npy")}, "sel").read_text()
    )
    doc["selection"] = {"n_components": [1, 2], "covariance_type": ["diag"]}
    path = tmp_path / "sel.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = _run(path)
    table = json.loads((result.path / "selection.json").read_text())["candidates"]
    assert [r["n_components"] for r in table] == [1, 2]
    assert result.model.n_components == 2
    assert result.metrics["bic"] == pytest.approx(result.model.bic(x, sample_weight=w), rel=1e-12)
    assert result.metrics["total_weight"] == pytest.approx(w.sum())
