"""dask-em never deletes or changes what it did not write, and refuses ill-shaped data.

Every refusal is checked from the outside: exit code 2, one line naming the key, no
cluster started, and every file under the user's folders byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import zarr
from conftest import THREADS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dask_em.jobs.runner
from dask_em.folders import MARKER, RunFolder, check_output_location, write_marker
from dask_em.io import load_data, write_zarrs
from dask_em.jobs.cli import app
from dask_em.jobs.config import DataConfig, JobError, load_job
from dask_em.jobs.runner import predict_job, run_job

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` with a hash of its bytes (or link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@contextlib.contextmanager
def cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def write_job(path: Path, data: dict, out: str | None = None, **model) -> Path:
    doc = {
        "cluster": THREADS,
        "data": data,
        "model": {"n_components": 2, "max_iter": 5, "random_state": 0, **model},
        "output": {"plots": False, **({"dir": out} if out else {})},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's folder: data with weights, other files, a job; HOME and the working
    folder are inside it, so every guarded place is in the tree that is hashed."""
    home = tmp_path / "home"
    (home / "w" / "project" / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (150, 2)), rng.normal(6, 1, (150, 2))])
    np.save(home / "w" / "project" / "data" / "x.npy", x)
    np.save(home / "w" / "project" / "data" / "w.npy", np.ones(len(x)))
    (home / "w" / "project" / "data" / "notes.txt").write_text("my notes\n")
    (home / "w" / "project" / "thesis.tex").write_text("\\documentclass{article}\n")
    zarr.save_array(str(home / "w" / "project" / "x.zarr"), x)
    data = {"source": "npy", "path": "data/x.npy", "weights": "data/w.npy", "chunk_rows": 100}
    write_job(home / "w" / "project" / "jobs" / "job.yaml", data)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "w" / "project")
    return home


def assert_refused(result, key: str, *words: str, up_front: bool = True) -> str:
    """Exit 2 and a one-line error; ``up_front``: nothing else was printed before it."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or not up_front, lines
    assert "Traceback" not in result.output
    line = lines[-1]
    assert key in line, line
    for w in words:
        assert w in line, line
    return line


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a command starts a cluster (refusals come before that)."""

    def connect(*a, **k):
        raise AssertionError("a cluster was started before the output was checked")

    monkeypatch.setattr(dask_em.jobs.runner, "connect", connect)


REFUSED_RUN = {
    # --output value -> words the one line must hold
    "data folder": ("data", "contains the data"),
    "data file": ("data/x.npy", "is the data"),
    "inside the data": ("data/x.npy/run", "is inside the data"),
    "weights file": ("data/w.npy", "is the weights"),
    "folder of the job file": ("jobs", "contains the job file"),
    "job file": ("jobs/job.yaml", "is the job file"),
    "working folder": (".", "is the working folder"),
    "parent of the working folder": ("..", "contains the working folder"),
    "home folder": ("~", "is the home folder"),
    "parent of the home folder": ("../../..", "contains the home folder"),
    "filesystem root": ("/", "is the filesystem root"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_RUN))
def test_run_refuses_an_output_that_overlaps_an_input(user, no_cluster, case):
    out, words = REFUSED_RUN[case]
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/job.yaml", "--output", out, "--overwrite"])
    line = assert_refused(result, "output.dir", words)
    assert "choose a new folder" in line
    assert snapshot(user) == before


def test_run_refuses_an_output_holding_the_weights(user, no_cluster, tmp_path):
    # weights apart from the data: the weights' own folder is refused
    (user / "w" / "wts").mkdir()
    np.save(user / "w" / "wts" / "w.npy", np.ones(300))
    data = {"source": "npy", "path": "data/x.npy", "weights": "../wts/w.npy", "chunk_rows": 100}
    write_job(user / "w" / "project" / "jobs" / "w.yaml", data)
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/w.yaml", "--output", "../wts", "--overwrite"])
    assert_refused(result, "output.dir", "contains the weights")
    assert snapshot(user) == before


def test_run_refuses_an_output_inside_zarr_data(user, no_cluster):
    data = {"source": "zarr", "path": "x.zarr", "chunk_rows": 100}
    write_job(user / "w" / "project" / "jobs" / "z.yaml", data)
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/z.yaml", "--output", "x.zarr/runs/a"])
    assert_refused(result, "output.dir", "is inside the data")
    assert snapshot(user) == before


def test_run_refuses_output_dir_from_the_job_file(user, no_cluster):
    data = {"source": "npy", "path": "data/x.npy", "chunk_rows": 100}
    write_job(user / "w" / "project" / "jobs" / "d.yaml", data, out="data")
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/d.yaml", "--overwrite"])
    assert_refused(result, "jobs/d.yaml: output.dir", "contains the data")
    assert snapshot(user) == before


@pytest.mark.parametrize("content", ["user files", "dask-em-looking files", "empty"])
def test_overwrite_refuses_a_folder_dask_em_did_not_write(user, no_cluster, content):
    folder = user / "w" / "project" / "results"
    folder.mkdir()
    if content == "user files":
        (folder / "table.csv").write_text("a,b\n1,2\n")
    elif content == "dask-em-looking files":
        for name in ("model.npz", "model.json", "metrics.json"):
            (folder / name).write_text("{}")
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/job.yaml", "--output", "results", "--overwrite"])
    assert_refused(result, "output.dir", "was not written by dask-em", MARKER)
    assert snapshot(user) == before


def test_overwrite_refuses_a_user_file_named_like_the_marker(user, no_cluster):
    folder = user / "w" / "project" / "results"
    folder.mkdir()
    (folder / MARKER).write_text("my own notes, not a marker\n")
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/job.yaml", "--output", "results", "--overwrite"])
    assert_refused(result, "output.dir", "was not written by dask-em")
    assert snapshot(user) == before


def test_a_foreign_folder_in_the_staging_place_is_left_alone(user, no_cluster):
    (user / "w" / "project" / ".out.partial").mkdir()
    (user / "w" / "project" / ".out.partial" / "keep.txt").write_text("mine")
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/job.yaml", "--output", "out"])
    assert_refused(result, "output.dir", ".out.partial", "was not written by dask-em")
    assert snapshot(user) == before


def test_a_folder_of_another_kind_is_not_replaced(user, no_cluster):
    folder = user / "w" / "project" / "labels"
    folder.mkdir()
    write_marker(folder, "prediction", complete=True)
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/job.yaml", "--output", "labels", "--overwrite"])
    assert_refused(result, "output.dir", "as a run folder")
    assert snapshot(user) == before


def test_rerun_over_its_own_run_folder_replaces_only_it(user):
    args = ["run", "jobs/job.yaml", "--output", "runs/a"]
    assert runner.invoke(app, args).exit_code == 0
    (user / "w" / "project" / "runs" / "mine.txt").write_text("next to the run")
    before = {k: v for k, v in snapshot(user).items() if not k.startswith("w/project/runs/a")}
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    after = snapshot(user)
    assert {k: v for k, v in after.items() if not k.startswith("w/project/runs/a")} == before
    marker = json.loads((user / "w" / "project" / "runs" / "a" / MARKER).read_text())
    assert marker["kind"] == "run" and marker["complete"]
    assert sorted(p.name for p in (user / "w" / "project" / "runs").iterdir()) == ["a", "mine.txt"]


def test_predict_refuses_an_output_over_its_inputs(user, no_cluster):
    run = user / "w" / "project" / "runs" / "a"
    run.mkdir(parents=True)
    write_marker(run, "run", complete=True)
    before = snapshot(user)
    cases = [
        ("runs/a", "is the model"),
        ("runs", "contains the model"),
        ("runs/a/labels", "is inside the model"),
        ("data", "contains the data"),
        (".", "is the working folder"),
    ]
    for out, words in cases:
        args = ["predict", "runs/a", "--data", "data/x.npy", "--output", out, "--overwrite"]
        result = runner.invoke(app, args)
        assert_refused(result, "--output", words)
    assert snapshot(user) == before


def test_predict_overwrites_only_its_own_prediction_folders(user):
    assert runner.invoke(app, ["run", "jobs/job.yaml", "--output", "runs/a"]).exit_code == 0
    (user / "w" / "project" / "labels").mkdir()
    (user / "w" / "project" / "labels" / "mine.txt").write_text("x")
    before = snapshot(user)
    args = ["predict", "runs/a", "--data", "data/x.npy", "--overwrite"]
    assert_refused(runner.invoke(app, [*args, "--output", "labels"]), "--output", "not written")
    assert snapshot(user) == before
    assert runner.invoke(app, [*args, "--output", "pred"]).exit_code == 0
    marker = json.loads((user / "w" / "project" / "pred" / MARKER).read_text())
    assert marker["kind"] == "prediction" and "labels.zarr/zarr.json" in marker["files"]
    assert runner.invoke(app, [*args, "--output", "pred"]).exit_code == 0


def test_python_api_applies_the_same_rules(user, no_cluster):
    config = load_job(user / "w" / "project" / "jobs" / "job.yaml", output=Path("data"))
    before = snapshot(user)
    with pytest.raises(JobError, match="contains the data") as info:
        run_job(config, overwrite=True)
    assert info.value.key == "output.dir"
    data = DataConfig(source="npy", path="data/x.npy")
    with pytest.raises(JobError, match="contains the data"):
        predict_job("runs/a", data, "data", overwrite=True)
    with pytest.raises(JobError, match="is the working folder"):
        check_output_location(".", key="output.dir")
    assert snapshot(user) == before


def test_make_data_never_replaces_a_zarr_it_did_not_write(user, no_cluster):
    spec = {"n_samples": 100, "n_features": 2, "n_components": 2, "seed": 0}
    data = {"source": "zarr", "path": "x.zarr", "synthetic": spec, "chunk_rows": 50}
    write_job(user / "w" / "project" / "jobs" / "m.yaml", data)
    before = snapshot(user)
    result = runner.invoke(app, ["make-data", "jobs/m.yaml", "--overwrite"])
    assert_refused(result, "data.path", "not written by dask-em")
    with pytest.raises(JobError, match="not written by dask-em"):
        write_zarrs({"x.zarr": load_data(DataConfig(source="npy", path="data/x.npy"))},
                    overwrite=True)  # fmt: skip
    assert snapshot(user) == before


def test_plot_writes_only_into_a_run_folder(user):
    assert runner.invoke(app, ["run", "jobs/job.yaml", "--output", "runs/a"]).exit_code == 0
    copy = user / "w" / "project" / "copy"
    copy.mkdir()
    (copy / "model.npz").write_bytes(
        (user / "w" / "project" / "runs" / "a" / "model.npz").read_bytes()
    )
    before = snapshot(user)
    assert_refused(runner.invoke(app, ["plot", "copy"]), "copy", "not a dask-em run folder")
    assert snapshot(user) == before


def test_failed_run_removes_only_its_staging_folder(user, monkeypatch):
    def boom(*a, **k):
        raise JobError("the cluster is gone", key="cluster")

    monkeypatch.setattr(dask_em.jobs.runner, "connect", boom)
    before = snapshot(user)
    result = runner.invoke(app, ["run", "jobs/job.yaml", "--output", "out"])
    assert_refused(result, "cluster", "the cluster is gone", up_front=False)
    assert snapshot(user) == before


def test_run_folder_commit_rechecks_the_owner(tmp_path):
    folder = RunFolder(tmp_path / "run", overwrite=True)
    folder.prepare()
    (tmp_path / "run").mkdir()  # someone's folder appears while the run writes
    (tmp_path / "run" / "theirs.txt").write_text("x")
    with pytest.raises(JobError, match="not written by dask-em"):
        folder.commit()
    assert (tmp_path / "run" / "theirs.txt").read_text() == "x"


# ------------------------------------------------------------------------ ill-shaped data


def _npy(p: Path, a):
    np.save(p, a)


def _zarr(p: Path, a):
    zarr.save_array(str(p), a)


def _h5(p: Path, a):
    with h5py.File(p, "w") as f:
        f["x"] = a


@pytest.mark.parametrize(
    ("source", "name", "write"), [("npy", "a.npy", _npy), ("zarr", "a.zarr", _zarr),
                                  ("hdf5", "a.h5", _h5)]
)  # fmt: skip
@pytest.mark.parametrize(
    ("shape", "hint"), [((50,), "x.reshape(-1, 1)"), ((10, 5, 2), "x.reshape(x.shape[0], -1)")]
)
def test_data_that_is_not_2d_is_refused(tmp_path, source, name, write, shape, hint):
    path = tmp_path / name
    write(path, np.arange(float(np.prod(shape))).reshape(shape))
    dataset = "x" if source == "hdf5" else None
    with pytest.raises(JobError) as info:
        load_data(DataConfig(source=source, path=str(path), dataset=dataset, chunk_rows=10))
    text = str(info.value)
    assert info.value.key == "data.path"
    assert f"shape {shape}" in text and hint in text and "rows x features" in text


def test_data_that_is_not_2d_is_refused_by_the_cli(user, no_cluster):
    np.save(user / "w" / "project" / "data" / "one.npy", np.arange(300.0))
    write_job(
        user / "w" / "project" / "jobs" / "one.yaml", {"source": "npy", "path": "data/one.npy"}
    )
    result = runner.invoke(app, ["run", "jobs/one.yaml", "--output", "runs/one"])
    assert_refused(result, "data.path", "shape (300,)", "x.reshape(-1, 1)", up_front=False)
    runs = user / "w" / "project" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    ("rows", "line", "found"),
    [
        ("1,2,3\n4,5\n6,7,8\n", 3, 2),  # short: pandas would fill a NaN
        ("1,2,3\n4,5,6\n6,7,8,9\n", 4, 4),  # long: pandas would count lines per block
        ('1,2,3\n"4",5\n6,7,8\n', 3, 2),  # quoted fields: counted by the csv module
        ("1,2,3\r\n\r\n4,5\r\n", 4, 2),  # CRLF, and a blank line that pandas skips
    ],
)
def test_csv_rows_with_the_wrong_number_of_fields_name_their_line(tmp_path, rows, line, found):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + rows, newline="")
    with pytest.raises(JobError, match=f"line {line} of .*t.csv has {found} field") as info:
        load_data(DataConfig(source="csv", path=str(path), chunk_rows=2))
    assert info.value.key == "data.path"


def test_csv_empty_fields_are_missing_values_not_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,,3\n4,5,6\n\n7,8,\n")
    x = load_data(DataConfig(source="csv", path=str(path), chunk_rows=2)).compute()
    np.testing.assert_array_equal(np.isnan(x), [[0, 1, 0], [0, 0, 0], [0, 0, 1]])


def test_csv_line_numbers_count_across_files_blocks(tmp_path, monkeypatch):
    import dask_em.data.tables

    monkeypatch.setattr(dask_em.data.tables, "_CSV_CHECK_BLOCK", 64)  # many blocks per file
    good = "".join(f"{i},{i + 1},{i + 2}\n" for i in range(40))
    (tmp_path / "a.csv").write_text("a,b,c\n" + good)
    (tmp_path / "b.csv").write_text("a,b,c\n" + good + "1,2\n" + good)
    with pytest.raises(JobError, match=r"line 42 of .*b\.csv has 2 field"):
        load_data(DataConfig(source="csv", path=str(tmp_path / "*.csv"), chunk_rows=7))


# --------------------------------------------------------------------------------- property


def _tree(draw) -> tuple[list[str], list[str]]:
    names = st.sampled_from(["a", "b", "c", "d"])
    dirs = [""]
    for _ in range(draw(st.integers(1, 6))):
        parent = draw(st.sampled_from(dirs))
        child = os.path.join(parent, draw(names))
        if child not in dirs:
            dirs.append(child)
    files = [os.path.join(draw(st.sampled_from(dirs)), f"f{i}.txt") for i in range(3)]
    return dirs, files


@st.composite
def layouts(draw):
    dirs, files = _tree(draw)
    data_dir, job_dir, cwd_dir = (draw(st.sampled_from(dirs)) for _ in range(3))
    kind = draw(st.sampled_from(["dir", "file", "new", "dot", "dotdot", "data", "job"]))
    target = {
        "dir": draw(st.sampled_from(dirs)),
        "file": draw(st.sampled_from(files)),
        "new": os.path.join(draw(st.sampled_from(dirs)), "new-run"),
        "data": os.path.join(data_dir, "x.npy"),
        "job": os.path.join(job_dir, "job.yaml"),
    }.get(kind)
    relative = draw(st.booleans())
    return dirs, files, data_dir, job_dir, cwd_dir, kind, target, relative


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=layouts())
def test_run_overwrite_never_loses_a_user_file(tmp_path_factory, layout):
    dirs, files, data_dir, job_dir, cwd_dir, kind, target, relative = layout
    root = tmp_path_factory.mktemp("tree")
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        if not (root / f).exists():
            (root / f).write_bytes(os.urandom(16) + bytes([i]))
    rng = np.random.default_rng(1)
    np.save(root / data_dir / "x.npy", rng.normal(size=(200, 2)))
    data = {"source": "npy", "path": str(root / data_dir / "x.npy"), "chunk_rows": 100}
    job = write_job(root / job_dir / "job.yaml", data)
    here = root / cwd_dir
    if kind == "dot":
        out = "."
    elif kind == "dotdot":
        out = ".."
    else:
        out = os.path.relpath(root / target, here) if relative else str(root / target)
    before = snapshot(root)
    with cwd(here):
        args = ["run", str(job), "--output", out, "--overwrite"]
        first = runner.invoke(app, args)
        assert first.exit_code in (0, 2), first.output
        after = snapshot(root)
        lost = {k for k in before if k not in after or after[k] != before[k]}
        assert not lost, (out, first.output, lost)
        if first.exit_code == 0:
            again = runner.invoke(app, args)  # over its own earlier run folder
            assert again.exit_code == 0, again.output
            assert {k: snapshot(root).get(k) for k in before} == before
