"""A catalogue of bad input through the CLI and the Python API.

Every CLI case: exit code 2, the last line of stderr names the problem (and, where there is
one, what to do), no traceback, and no partial output: neither the run folder nor its
staging folder exists afterwards. API cases: a ``ValueError`` whose message is one line.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from dask_em import GaussianMixture
from dask_em.data.folders import write_marker
from dask_em.jobs.cli import app

runner = CliRunner()

THREADS = {
    "local": {
        "processes": False,
        "n_workers": 1,
        "threads_per_worker": 1,
        "dashboard_address": None,
    }
}
MODEL = {"n_components": 2, "max_iter": 5, "random_state": 0, "init_params": "random_from_data"}
GOOD = np.random.default_rng(0).standard_normal((200, 2))


def _npy(tmp: Path, x) -> dict:
    np.save(tmp / "x.npy", x, allow_pickle=False)
    return {"source": "npy", "path": str(tmp / "x.npy")}


def _csv(tmp: Path, text: str) -> dict:
    (tmp / "x.csv").write_text(text)
    return {"source": "csv", "path": str(tmp / "x.csv")}


def _good_csv(tmp: Path) -> str:
    return "a,b\n" + "".join(f"{a},{b}\n" for a, b in GOOD)


def _corrupt_zarr(tmp: Path) -> dict:
    import zarr

    path = tmp / "x.zarr"
    zarr.save_array(str(path), GOOD)
    for meta in ("zarr.json", ".zarray"):
        if (path / meta).exists():
            (path / meta).write_text("{ this is not json")
    return {"source": "zarr", "path": str(path)}


def _zarr_chunks_missing(tmp: Path) -> dict:
    """Metadata fine, data chunk files garbage: found when the blocks are read."""
    import zarr

    path = tmp / "x.zarr"
    z = zarr.open_array(str(path), mode="w", shape=GOOD.shape, chunks=(50, 2), dtype="f8")
    z[:] = GOOD
    for f in path.rglob("*"):
        if f.is_file() and f.name not in ("zarr.json", ".zarray", ".zattrs"):
            f.write_bytes(b"garbage")
    return {"source": "zarr", "path": str(path)}


def _hdf5(tmp: Path, name: str = "data") -> dict:
    import h5py

    with h5py.File(tmp / "x.h5", "w") as f:
        f.create_dataset(name, data=GOOD)
    return {"source": "hdf5", "path": str(tmp / "x.h5"), "dataset": "X"}


def _garbage(tmp: Path, name: str, source: str, **extra) -> dict:
    (tmp / name).write_bytes(b"\x00\x01 definitely not " + source.encode())
    return {"source": source, "path": str(tmp / name), **extra}


def _parquet_strings(tmp: Path) -> dict:
    pd.DataFrame({"a": GOOD[:, 0], "s": ["x"] * len(GOOD)}).to_parquet(tmp / "x.parquet")
    return {"source": "parquet", "path": str(tmp / "x.parquet")}


def _nan_rows() -> np.ndarray:
    x = GOOD.copy()
    x[17, 1] = np.nan
    return x


def _inf_rows() -> np.ndarray:
    x = GOOD.copy()
    x[3, 0] = np.inf
    return x


# case -> (data maker or None for the good npy, model overrides, words in the message)
CASES: dict[str, tuple] = {
    "nan_without_missing_em": (
        lambda t: _npy(t, _nan_rows()),
        {},
        ["NaN", "impute", "missing: em"],
    ),
    "inf": (lambda t: _npy(t, _inf_rows()), {}, ["inf"]),
    "inf_with_missing_em": (lambda t: _npy(t, _inf_rows()), {"missing": "em"}, ["inf"]),
    "empty_npy": (lambda t: _npy(t, np.zeros((0, 2))), {}, ["x.npy", "no rows"]),
    "one_row": (lambda t: _npy(t, GOOD[:1]), {"n_components": 1}, ["1 sample", "minimum of 2"]),
    "no_features": (lambda t: _npy(t, np.zeros((10, 0))), {}, ["no columns"]),
    "three_d_npy": (lambda t: _npy(t, np.zeros((4, 3, 2))), {}, ["shape", "2-D"]),
    "string_npy": (lambda t: _npy(t, np.array([["a", "b"]] * 9)), {}, ["dtype", "numeric"]),
    "complex_npy": (lambda t: _npy(t, GOOD.astype(complex)), {}, ["complex", "numeric"]),
    "object_npy": (
        lambda t: (
            np.save(t / "x.npy", np.array([[1, "a"]] * 5, dtype=object)),
            {"source": "npy", "path": str(t / "x.npy")},
        )[1],
        {},
        ["pickle"],
    ),
    "garbage_npy": (lambda t: _garbage(t, "x.npy", "npy"), {}, ["x.npy"]),
    "string_columns_csv": (lambda t: _csv(t, "a,b\nx,y\nz,w\n"), {}, ["non-numeric", "'a'"]),
    "mixed_dtype_csv": (
        lambda t: _csv(t, _good_csv(t) + "oops,1.0\n"),
        {},
        ["'a'", "x.csv", "non-numeric", "oops"],
    ),
    "ragged_csv": (
        lambda t: _csv(t, _good_csv(t) + "1.0,2.0,3.0\n"),
        {},
        ["x.csv", "line 202", "not as many as the header"],
    ),
    "header_only_csv": (lambda t: _csv(t, "a,b\n"), {}, ["x.csv", "no rows"]),
    "parquet_string_column": (_parquet_strings, {}, ["non-numeric", "'s'"]),
    "corrupt_zarr_metadata": (_corrupt_zarr, {}, ["x.zarr", "zarr"]),
    "corrupt_zarr_chunks": (_zarr_chunks_missing, {}, ["x.zarr", "rows", "damaged"]),
    "wrong_hdf5_dataset": (_hdf5, {}, ["'X'", "available: data"]),
    "not_hdf5": (lambda t: _garbage(t, "x.h5", "hdf5", dataset="d"), {}, ["HDF5"]),
    "n_components_zero": (None, {"n_components": 0}, ["model.n_components"]),
    "n_components_above_rows": (None, {"n_components": 500}, ["n_components", "n_samples"]),
    "negative_tol": (None, {"tol": -1.0}, ["model.tol"]),
    "negative_reg_covar": (None, {"reg_covar": -1e-6}, ["model.reg_covar"]),
    "means_init_wrong_shape": (None, {"means_init": [[0.0, 0.0, 0.0]] * 2}, ["means_init"]),
    "weights_init_wrong_length": (None, {"weights_init": [1.0]}, ["weights_init"]),
    "weights_init_not_summing_to_one": (None, {"weights_init": [0.5, 0.4]}, ["weights_init"]),
    "precisions_init_not_pd": (
        None,
        {"precisions_init": [[[1.0, 2.0], [2.0, 1.0]]] * 2},
        ["precisions_init", "positive"],
    ),
    "precisions_init_wrong_shape": (
        None,
        {"precisions_init": [[[1.0]]] * 2},
        ["precisions_init"],
    ),
    "unknown_covariance_type": (None, {"covariance_type": "banana"}, ["covariance_type"]),
}


def _write_job(tmp: Path, case: str) -> Path:
    make, model, _ = CASES[case]
    data = make(tmp) if make is not None else _npy(tmp, GOOD)
    data.setdefault("chunk_rows", 50)
    doc = {
        "cluster": THREADS,
        "data": data,
        "model": {**MODEL, **model},
        "output": {"dir": str(tmp / "run"), "plots": False},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def assert_bad_input(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    err = result.stderr.strip().splitlines()[-1]
    for w in words:
        assert w.lower() in err.lower(), err
    return err


def assert_nothing_written(tmp: Path) -> None:
    assert not (tmp / "run").exists()
    assert not (tmp / ".run.partial").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_run_bad_input(tmp_path, case):
    path = _write_job(tmp_path, case)
    result = runner.invoke(app, ["run", str(path)])
    assert_bad_input(result, *CASES[case][2])
    assert_nothing_written(tmp_path)


YAML_CASES = {
    "list": ("[1, 2]\n", ["mapping"]),
    "scalar": ("hello\n", ["mapping"]),
    "empty_file": ("", ["mapping"]),
    "python_tag": ("!!python/object/apply:os.system ['echo hi']\n", ["YAML"]),
    "import_path_cluster": (
        yaml.safe_dump(
            {
                "cluster": {"jobqueue": {"kind": "os.system"}},
                "data": {"source": "npy", "path": "x.npy"},
                "model": MODEL,
            }
        ),
        ["cluster.jobqueue.kind"],
    ),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_cli_bad_yaml(tmp_path, case):
    text, words = YAML_CASES[case]
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["run", str(path), "--output", str(tmp_path / "run")])
    assert_bad_input(result, *words)
    assert_nothing_written(tmp_path)


def _evil_model(tmp: Path) -> Path:
    """A model.npz whose arrays are objects: loading it would need pickle."""
    path = tmp / "model" / "model.npz"
    path.parent.mkdir()
    np.savez(
        path,
        weights=np.array([0.5, 0.5]),
        means=np.array([[0.0, 0.0], object()], dtype=object),
        covariances=np.array([np.eye(2)] * 2),
    )
    return path


@pytest.mark.parametrize("command", ["info", "predict", "plot"])
def test_model_file_with_object_arrays_is_refused(tmp_path, command, monkeypatch):
    import pickle

    path = _evil_model(tmp_path)

    def no_unpickling(*args, **kwargs):  # pragma: no cover - fails the test if reached
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    np.save(tmp_path / "new.npy", GOOD)
    # A run folder is read only when its marker says it is a finished one of ours (an
    # unmarked folder is refused before any file in it is opened).
    write_marker(path.parent, "run", complete=True)
    args = {
        "info": ["info", str(path)],
        "predict": [
            "predict",
            str(path),
            "--data",
            str(tmp_path / "new.npy"),
            "--output",
            str(tmp_path / "pred"),
        ],
        "plot": ["plot", str(path.parent)],
    }[command]
    assert_bad_input(runner.invoke(app, args), "object arrays")
    assert not (tmp_path / "pred").exists()


def test_predict_with_the_wrong_feature_count(tmp_path):
    path = _write_job(tmp_path, "negative_tol")  # any job; make a good run first
    doc = yaml.safe_load(path.read_text())
    doc["model"]["tol"] = 1e-3
    path.write_text(yaml.safe_dump(doc))
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    np.save(tmp_path / "three.npy", np.zeros((20, 3)))
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "three.npy"), "-o", out]
    )
    assert_bad_input(result, "3 feature(s)", "fitted on 2")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]


@pytest.mark.parametrize(
    "bad, words",
    [(_nan_rows, ["--data", "contains NaN", "missing: em"]), (_inf_rows, ["infinity"])],
    ids=["nan", "inf"],
)
def test_predict_with_non_finite_values(tmp_path, bad, words):
    """NaN is an error at predict time unless the model was fitted with missing: em."""
    path = _write_job(tmp_path, "negative_tol")  # any job; make a good run first
    doc = yaml.safe_load(path.read_text())
    doc["model"]["tol"] = 1e-3
    path.write_text(yaml.safe_dump(doc))
    assert runner.invoke(app, ["run", str(path)]).exit_code == 0
    np.save(tmp_path / "bad.npy", bad())
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "bad.npy"), "-o", out]
    )
    assert_bad_input(result, *words)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]


# ------------------------------------------------------------------------------ Python API

# In-memory input and scikit-learn's parameters: the error is scikit-learn's, type and
# message (``sklearn.mixture.GaussianMixture`` fitted on the same input).
API_CASES = {
    "empty": (np.zeros((0, 2)), {}),
    "one_row": (np.zeros((1, 2)), {"n_components": 1}),
    "no_features": (np.zeros((5, 0)), {}),
    "strings": (np.array([["a", "b"]] * 5), {}),
    "mixed_object": (np.array([[1.0, "a"]] * 5, dtype=object), {}),
    "ragged_lists": ([[1.0, 2.0], [3.0]], {}),
    "frame_with_strings": (pd.DataFrame({"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"]}), {}),
    "complex": (GOOD.astype(complex), {}),
    "nan": (_nan_rows(), {}),
    "inf": (_inf_rows(), {}),
    "one_dimensional": (GOOD[:, 0], {}),
    "three_dimensional": (np.zeros((4, 3, 2)), {}),
    "n_components_above_rows": (GOOD[:3], {"n_components": 4}),
    "negative_reg_covar": (GOOD, {"reg_covar": -1.0}),
    "negative_tol": (GOOD, {"tol": -1.0}),
    "weights_init_sum": (GOOD, {"weights_init": [0.7, 0.7]}),
    "weights_init_shape": (GOOD, {"weights_init": [1.0]}),
    "means_init_shape": (GOOD, {"means_init": np.zeros((3, 2))}),
    "precisions_init_shape": (GOOD, {"precisions_init": np.ones((2, 3, 3))}),
    "precisions_init_not_pd": (
        GOOD,
        {"precisions_init": np.array([[[1.0, 2.0], [2.0, 1.0]]] * 2)},
    ),
    "precisions_init_diag_negative": (
        GOOD,
        {"precisions_init": -np.ones((2, 2)), "covariance_type": "diag"},
    ),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_bad_input_as_scikit_learn(case):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X, params = API_CASES[case]
    with pytest.raises(Exception) as expected:
        SkGaussianMixture(**{**MODEL, **params}).fit(X)
    gm = GaussianMixture(**{**MODEL, **params})
    with pytest.raises(type(expected.value)) as info:
        gm.fit(X)
    assert str(info.value) == str(expected.value)
    assert not hasattr(gm, "means_")


# Ours alone: messages of one line naming the problem.
OWN_API_CASES = {
    "inf_with_missing_em": (_inf_rows(), {"missing": "em"}, "infinity"),
    "weights_init_negative": (GOOD, {"weights_init": [1.5, -0.5]}, "range [0, 1]"),
    "precisions_init_nan": (
        GOOD,
        {"precisions_init": np.full((2, 2, 2), np.nan)},
        "precisions_init contains NaN",
    ),
    "persist": (GOOD, {"persist": "maybe"}, "'persist' parameter"),
    # dask input: scikit-learn's words where it has them, checked without reading the data
    "dask_empty": (da.zeros((0, 2)), {}, "0 sample(s)"),
    "dask_one_row": (da.zeros((1, 2)), {"n_components": 1}, "1 sample(s)"),
    "dask_no_features": (da.zeros((5, 0)), {}, "0 feature(s)"),
    "dask_one_dimensional": (da.zeros(5), {}, "Expected 2D array, got 1D array"),
    "dask_complex": (da.from_array(GOOD.astype(complex)), {}, "Complex data not supported"),
    "dask_strings": (da.from_array(np.array([["a", "b"]] * 5)), {}, "not numeric"),
    "dask_nan": (da.from_array(_nan_rows(), chunks=50), {}, "row 17, column 1"),
    "dask_frame_with_strings": (
        dd.from_pandas(pd.DataFrame({"a": [1.0, 2.0, 3.0], "s": ["x", "y", "z"]}), 1),
        {},
        "non-numeric columns",
    ),
}


@pytest.mark.parametrize("case", sorted(OWN_API_CASES))
def test_api_bad_input(case):
    X, params, match = OWN_API_CASES[case]
    gm = GaussianMixture(**{**MODEL, **params})
    with pytest.raises(ValueError) as info:
        gm.fit(X)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    assert "\n" not in message.strip(), message
    assert not hasattr(gm, "means_")
