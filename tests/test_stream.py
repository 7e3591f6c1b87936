"""Jobs with a ``stream`` section: partial_fit on files as they arrive in a folder."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import yaml
from test_runner import THREADS

from dask_em import GaussianMixture
from dask_em.errors import JobError
from dask_em.jobs._stream import arrivals
from dask_em.jobs.config import StreamConfig, load_job
from dask_em.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("no_global_dask_state")

MODEL = {"n_components": 3, "random_state": 0, "learning_decay": 0.7}


def batches(n_files=4, rows=800, seed=0):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    return [
        rng.normal(size=(rows, 2)) + means[rng.integers(0, 3, size=rows)] for _ in range(n_files)
    ]


def put(folder, name, x):
    """Write like a careful producer: a name the glob does not match, then a rename."""
    tmp = folder / f".{name}.part"
    with open(tmp, "wb") as f:
        np.save(f, x)
    os.replace(tmp, folder / name)


def stream_job(tmp_path, incoming, name="stream", **stream):
    doc = {
        "cluster": THREADS,
        "data": {"source": "npy", "path": str(incoming / "*.npy"), "chunk_rows": 400},
        "model": MODEL,
        "stream": {"poll_seconds": 0.05, "settle_seconds": 0.0, "idle_seconds": 0.0, **stream},
        "output": {"dir": str(tmp_path / "runs" / name), "plot_sample": 200},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_job(path)


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_arrivals_waits_for_a_file_to_settle_and_stops_when_idle(tmp_path):
    t = FakeTime()
    (tmp_path / "b.npy").write_bytes(b"12")
    (tmp_path / "a.npy").write_bytes(b"1")
    os.utime(tmp_path / "a.npy", (0, t.now - 10))  # settled long ago
    os.utime(tmp_path / "b.npy", (0, t.now))  # just written
    cfg = StreamConfig(poll_seconds=1.0, settle_seconds=2.5, idle_seconds=5.0)
    seen = []
    for p in arrivals(str(tmp_path / "*.npy"), cfg, clock=t.clock, sleep=t.sleep, wall=t.clock):
        seen.append((p.name, t.now))
        if p.name == "b.npy":
            # a growing file is not taken until it has stopped changing
            (tmp_path / "c.npy").write_bytes(b"1")
            os.utime(tmp_path / "c.npy", (0, t.now))
    assert [n for n, _ in seen] == ["a.npy", "b.npy", "c.npy"]
    assert seen[0][1] == 1000.0 and seen[1][1] >= 1002.5 and seen[2][1] - seen[1][1] >= 2.5
    assert t.now - seen[2][1] >= 5.0  # idle for idle_seconds after the last file


def test_arrivals_restarts_the_settle_clock_when_a_file_changes(tmp_path):
    t = FakeTime()
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    os.utime(f, (0, t.now))
    cfg = StreamConfig(poll_seconds=1.0, settle_seconds=2.0, idle_seconds=3.0, max_files=1)

    def sleep(s):
        t.sleep(s)
        if t.now == 1001.0:  # the producer appends a row after the first listing
            f.write_text("x\n1\n2\n")
            os.utime(f, (0, t.now))

    got = list(arrivals(str(tmp_path / "*.csv"), cfg, clock=t.clock, sleep=sleep, wall=t.clock))
    assert [p.name for p in got] == ["a.csv"]
    assert t.now >= 1003.0  # settled two seconds after the change, not after the first sight


def test_stream_job_equals_partial_fit_over_the_files_in_order(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    xs = batches()
    for i, x in enumerate(xs[:2]):
        put(incoming, f"part-{i}.npy", x)

    def producer():  # two more files while the job runs
        for i, x in enumerate(xs[2:], start=2):
            time.sleep(0.3)
            put(incoming, f"part-{i}.npy", x)

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        result = run_job(stream_job(tmp_path, incoming, idle_seconds=2.0))
    finally:
        thread.join()
    ref = GaussianMixture(**MODEL)
    for x in xs:
        ref.partial_fit(x)
    np.testing.assert_allclose(result.model.means_, ref.means_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.model.covariances_, ref.covariances_, rtol=0, atol=1e-12)
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics["n_files"] == 4 and metrics["n_rows"] == 3200
    assert [r["file"] for r in metrics["iterations"]] == [f"part-{i}.npy" for i in range(4)]
    assert metrics["lower_bound"] == pytest.approx(ref.lower_bound_, abs=1e-12)
    model = json.loads((result.path / "model.json").read_text())
    assert model["data"]["stream"]["files"] == [f"part-{i}.npy" for i in range(4)]
    assert (result.path / "plots" / "lower_bound.png").is_file()
    assert sorted(p.name for p in incoming.iterdir()) == [f"part-{i}.npy" for i in range(4)]


def test_stream_job_stops_after_max_files(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    for i, x in enumerate(batches(3)):
        put(incoming, f"{i}.npy", x)
    result = run_job(stream_job(tmp_path, incoming, max_files=2, idle_seconds=30.0))
    assert result.metrics["n_files"] == 2


def test_a_bad_file_names_itself_and_the_run_resumes_once_it_is_fixed(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    xs = batches(2)
    put(incoming, "0.npy", xs[0])
    put(incoming, "1.npy", np.full((50, 3), 1.0))  # three columns, not two
    config = stream_job(tmp_path, incoming)
    with pytest.raises(JobError, match=r"1\.npy"):
        run_job(config)
    assert not (tmp_path / "runs" / "stream").exists()  # no half-written run
    put(incoming, "1.npy", xs[1])  # the producer writes it again
    result = run_job(config, resume=True)
    assert [r["file"] for r in result.metrics["iterations"]] == ["0.npy", "1.npy"]


def test_no_file_at_all_is_an_error_naming_the_glob(tmp_path):
    incoming = tmp_path / "empty"
    incoming.mkdir()
    with pytest.raises(JobError, match=r"no file matching .*\*\.npy"):
        run_job(stream_job(tmp_path, incoming))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"source": "zarr", "path": "in/*.zarr"}}, "data.source must be one of"),
        ({"selection": {"n_components": [2, 3]}}, "remove the 'selection' section"),
        ({"model": {"kind": "bayesian"}}, "model.kind: gaussian"),
        ({"output": {"labels": True}}, "output.labels: false"),
        ({"data": {"source": "npy", "path": "s3://bucket/*.npy"}}, "local path"),
    ],
)
def test_stream_config_errors_name_what_to_change(tmp_path, change, message):
    doc = {
        "data": {"source": "npy", "path": "in/*.npy"},
        "model": {"n_components": 2},
        "stream": {},
        "output": {"dir": str(tmp_path / "out")},
    }
    for key, value in change.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(JobError, match=message):
        load_job(path)


def test_the_run_folder_may_not_be_where_the_glob_looks(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    put(incoming, "0.npy", batches(1)[0])
    config = stream_job(tmp_path, incoming)
    config.output.dir = str(incoming / "run")
    with pytest.raises(JobError, match="where the stream's glob"):
        run_job(config)
    assert sorted(p.name for p in incoming.iterdir()) == ["0.npy"]


class Stop(Exception):
    pass


def test_a_stopped_stream_resumes_after_its_last_file(tmp_path):
    """Stopped after two of four files, ``--resume`` skips those two (even if they are
    gone by then) and ends with the model of the uninterrupted run, bit for bit."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    xs = batches()
    for i, x in enumerate(xs):
        put(incoming, f"{i}.npy", x)
    full = run_job(stream_job(tmp_path, incoming, name="full"))

    def stop_after_two(gm):
        if gm.n_iter_ == 2:
            raise Stop

    config = stream_job(tmp_path, incoming, name="parts")
    with pytest.raises(Stop):
        run_job(config, on_iteration=stop_after_two)
    assert not (tmp_path / "runs" / "parts").exists()  # only the staging folder is kept
    (incoming / "0.npy").unlink()  # a consumer may clear what was fitted
    resumed = run_job(config, resume=True)
    np.testing.assert_array_equal(resumed.model.means_, full.model.means_)
    np.testing.assert_array_equal(resumed.model.covariances_, full.model.covariances_)
    assert resumed.model.n_passes_ == full.model.n_passes_
    assert [r["file"] for r in resumed.metrics["iterations"]] == [f"{i}.npy" for i in range(4)]
    assert resumed.metrics["iterations"][1]["lower_bound"] == pytest.approx(
        full.metrics["iterations"][1]["lower_bound"], abs=0
    )


def test_a_resumed_stream_with_nothing_new_writes_the_run(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    put(incoming, "0.npy", batches(1)[0])
    config = stream_job(tmp_path, incoming)
    with pytest.raises(Stop):
        run_job(config, on_iteration=lambda gm: (_ for _ in ()).throw(Stop()))
    result = run_job(config, resume=True)
    assert result.metrics["n_files"] == 1
    assert (result.path / "plots" / "density.png").is_file()
