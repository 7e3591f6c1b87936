"""Run folders at an fsspec URL (here file://, the same code as s3://): staged under a
temporary prefix, marker listing the files written last, nothing of anyone else's
removed; readers refuse a folder without a complete marker."""

import json

import numpy as np
import pytest

from dask_em.data.folders import MARKER, read_marker, write_marker
from dask_em.data.remote import RemoteRunFolder, read_finished_file
from dask_em.data.writers import atomic_savez
from dask_em.errors import JobError
from dask_em.jobs.runner import load_model, model_info


def _local_run(folder, files: dict) -> object:
    """A finished local run folder holding ``files`` (name -> bytes)."""
    folder.mkdir(parents=True)
    write_marker(folder, "run", complete=False)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    write_marker(folder, "run", complete=True)
    return folder


class _Recording(RemoteRunFolder):
    """Records every write (put or copy) in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes: list[str] = []
        self.fs = _RecordingFS(self.fs, self.writes)

    def _put(self, path, data):
        self.writes.append(path)
        super()._put(path, data)


class _RecordingFS:
    """The filesystem, with its copies recorded."""

    def __init__(self, fs, writes):
        self._fs, self._writes = fs, writes

    def copy(self, src, dst, **kwargs):
        self._writes.append(dst)
        return self._fs.copy(src, dst, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_commit_stages_then_writes_the_marker_last(tmp_path):
    local = _local_run(tmp_path / "local" / "r", {"model.npz": b"m", "plots/a.png": b"p"})
    url = (tmp_path / "out" / "r").as_uri()
    folder = _Recording(url)
    folder.prepare()
    staging = tmp_path / "out" / ".r.partial"
    assert read_marker(staging)["complete"] is False
    assert folder.commit(local) == url
    final = tmp_path / "out" / "r"
    assert folder.writes[-1] == f"{folder.root}/{MARKER}"
    # every file was staged before the first copy into the final prefix
    first_copy = next(i for i, w in enumerate(folder.writes) if w.startswith(folder.root + "/"))
    staged = {w for w in folder.writes[:first_copy] if w.startswith(folder.staging + "/")}
    assert {f"{folder.staging}/model.npz", f"{folder.staging}/plots/a.png"} <= staged
    marker = json.loads((final / MARKER).read_text())
    assert marker["complete"] and sorted(marker["files"]) == ["model.npz", "plots/a.png"]
    assert (final / "plots" / "a.png").read_bytes() == b"p"
    assert not staging.exists()
    assert read_finished_file(url, "model.npz") == b"m"


def test_existing_folders_are_replaced_only_when_ours_and_asked(tmp_path):
    url = (tmp_path / "out" / "r").as_uri()
    first = _local_run(tmp_path / "l1" / "r", {"model.npz": b"1", "old.json": b"{}"})
    RemoteRunFolder(url).prepare()
    RemoteRunFolder(url).commit(first)
    with pytest.raises(JobError, match="already exists"):
        RemoteRunFolder(url).check()
    # ours: --overwrite replaces it; files it listed and the new run lacks are removed,
    # a file of the user's inside it is not
    (tmp_path / "out" / "r" / "notes.txt").write_text("mine")
    second = _local_run(tmp_path / "l2" / "r", {"model.npz": b"2"})
    folder = RemoteRunFolder(url, overwrite=True)
    folder.prepare()
    folder.commit(second)
    final = tmp_path / "out" / "r"
    assert (final / "model.npz").read_bytes() == b"2"
    assert not (final / "old.json").exists()
    assert (final / "notes.txt").read_text() == "mine"
    # not ours: never replaced, also with --overwrite
    foreign = tmp_path / "out" / "theirs"
    foreign.mkdir()
    (foreign / "data.csv").write_text("x")
    with pytest.raises(JobError, match="not written by dask-em"):
        RemoteRunFolder(foreign.as_uri(), overwrite=True).check()
    blocker = tmp_path / "out" / ".other.partial"
    blocker.mkdir()
    (blocker / "keep.txt").write_text("x")
    with pytest.raises(JobError, match="in the way of the staging prefix"):
        RemoteRunFolder((tmp_path / "out" / "other").as_uri()).prepare()
    assert (blocker / "keep.txt").exists()


def test_checkpoints_travel_through_the_staging_prefix(tmp_path):
    url = (tmp_path / "out" / "r").as_uri()
    folder = RemoteRunFolder(url)
    folder.prepare()
    assert not folder.has_checkpoint() and not folder.discard()
    assert not (tmp_path / "out" / ".r.partial").exists()
    folder.prepare()
    src = tmp_path / "src"
    atomic_savez(src / "checkpoint.npz", {"em_iteration": np.asarray(3)})
    folder.push_checkpoints(src)
    assert folder.has_checkpoint() and folder.discard()  # kept: it holds a checkpoint
    again = RemoteRunFolder(url)
    again.prepare(resume=True)
    dst = tmp_path / "dst"
    dst.mkdir()
    again.pull_checkpoints(dst)
    assert (dst / "checkpoint.npz").read_bytes() == (src / "checkpoint.npz").read_bytes()
    with pytest.raises(JobError, match="nothing to resume"):
        RemoteRunFolder((tmp_path / "out" / "q").as_uri()).prepare(resume=True)


def test_urls_with_credentials_or_without_a_folder_are_refused(tmp_path):
    with pytest.raises(JobError) as info:
        RemoteRunFolder("s3://KEY:s3cr3t@bucket/runs/r")
    assert "s3cr3t" not in str(info.value) and "credentials" in str(info.value)
    with pytest.raises(JobError, match="not a folder inside a bucket"):
        RemoteRunFolder("memory://bucket")


@pytest.fixture(scope="module")
def fitted():
    from dask_em import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(6, 1, (100, 2))])
    return GaussianMixture(n_components=2, random_state=0).fit(x)


def test_readers_refuse_a_folder_without_a_complete_marker(tmp_path, fitted):
    run = tmp_path / "run"
    run.mkdir()
    atomic_savez(run / "model.npz", fitted.fitted_arrays())
    for marker in (None, False):  # none at all; an unfinished (interrupted) run
        if marker is not None:
            write_marker(run, "run", complete=marker)
        with pytest.raises(JobError, match="not a dask-em run folder, or an unfinished one"):
            load_model(run)
        with pytest.raises(JobError, match="not a dask-em run folder, or an unfinished one"):
            model_info(run)
    write_marker(run, "run", complete=True)
    np.testing.assert_array_equal(load_model(run).means_, fitted.means_)
    # the same at a URL: refused while unfinished, read once the marker is complete
    url = (tmp_path / "remote" / "run").as_uri()
    folder = RemoteRunFolder(url)
    folder.prepare()
    (tmp_path / "remote" / "run").mkdir()
    (tmp_path / "remote" / "run" / "model.npz").write_bytes((run / "model.npz").read_bytes())
    with pytest.raises(JobError, match="not a dask-em run folder, or an unfinished one"):
        load_model(url)
    (tmp_path / "remote" / "run" / "model.npz").unlink()
    folder.commit(run)
    np.testing.assert_array_equal(load_model(url).means_, fitted.means_)
    assert model_info(url + "/model.npz")["file"] == url + "/model.npz"


def test_outputs_at_urls_never_overlap_an_input(tmp_path):
    from dask_em.data.remote import check_url_output

    data = tmp_path / "data"
    data.mkdir()
    inputs = [("data", str(data / "x.npy")), ("weights", "s3://bucket/in/w.npy")]
    for url, how in (
        ((data / "x.npy").as_uri(), "is the data"),
        (data.as_uri(), "contains the data"),
        ("s3://bucket/in", "contains the weights"),
        ("s3://bucket/in/w.npy/run", "is inside the weights"),
    ):
        with pytest.raises(JobError, match=how):
            check_url_output(url, key="output.dir", inputs=inputs)
    check_url_output("s3://bucket/runs/r", key="output.dir", inputs=inputs)
    check_url_output((tmp_path / "runs" / "r").as_uri(), key="output.dir", inputs=inputs)


def test_run_job_writes_its_run_folder_at_a_url(tmp_path):
    """`dask-em run --output URL`: the numbers of a local run, the URL's folder marked
    complete, no staging prefix or scratch folder left."""
    from conftest import THREADS

    doc = {
        "cluster": THREADS,
        "data": {
            "source": "synthetic",
            "synthetic": {"n_samples": 3000, "n_features": 2, "n_components": 3, "seed": 1},
            "chunk_rows": 1000,
        },
        "model": {"n_components": 3, "tol": 0.0, "max_iter": 8, "random_state": 0},
        "output": {"plots": False},
    }
    import yaml

    from dask_em.jobs.config import load_job
    from dask_em.jobs.runner import run_job

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    url = (tmp_path / "remote" / "run").as_uri()
    result = run_job(load_job(job, output=url))
    assert result.path == url
    local = run_job(load_job(job, output=tmp_path / "local")).path
    a, b = load_model(url), load_model(local)
    for name in ("weights_", "means_", "covariances_", "lower_bounds_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["run"]
    assert sorted(read_marker(tmp_path / "remote" / "run")["files"]) == sorted(
        read_marker(local)["files"]
    )
