"""Several hosts: the scheduler, each worker and the job's driver run in Linux network
namespaces of their own, with their own addresses on a veth bridge this test builds.

A job runs across them; one worker's link is cut mid-fit and the fit ends with the
parameters of an undisturbed run; with every worker cut off the job fails in one line and
keeps its checkpoint, from which ``--resume`` finishes it.

Needs root (network namespaces); skipped with the reason where they cannot be made.
Traffic stays inside the namespaces (10.77.0.0/24 exists only on the bridge). Every
process, namespace, link and bridge is removed at the end, also on failure, and leftovers
of an earlier run that died are removed by their name prefix.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import THREADS, project_env, stop_processes

from dask_em.io import load_npz
from dask_em.jobs.config import load_job
from dask_em.jobs.runner import run_job

PREFIX = "dask-em-t"  # every namespace this test makes: dask-em-t<pid>-<role>
SUBNET = "10.77.0"
SCHEDULER = f"tcp://{SUBNET}.1:8786"
HOSTS = {"sched": 1, "w0": 10, "w1": 11, "driver": 20}
WORKERS = ("w0", "w1")

# Lost hosts are found quickly: a worker that stops heartbeating for 15 s is removed and
# its tasks (and persisted blocks) go elsewhere (dask's default is 5 minutes; under 15 s
# a busy worker compiling the numba kernels, its event loop blocked, was taken for lost).
# Connects give up in 5 s.
FAST_FAILURE = {
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "15s",
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "12s",  # distributed needs 11 s or more
}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", *args], check=check, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def _remove_leftovers() -> None:
    """Namespaces of earlier runs whose process is gone (links and bridges go with them)."""
    listed = _ip("netns", "list", check=False).stdout.split()
    for name in listed:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", name, check=False)


def _can_make_namespaces() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces are not permitted here ({made.stderr.strip()})"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """The namespaces, their bridge and the dask processes in them."""

    def __init__(self, work: Path):
        self.work = work
        self.tag = f"{PREFIX}{os.getpid()}"
        self.net = f"{self.tag}-net"
        self.made: list[str] = []
        self.procs: dict[str, subprocess.Popen] = {}

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def build(self) -> None:
        """The bridge in a namespace of its own; each host a veth pair into it."""
        for name in (self.net, *map(self.ns, HOSTS)):
            _ip("netns", "add", name)
            self.made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", self.net, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.net, "link", "set", "br0", "up")
        for host, last in HOSTS.items():
            # the pair is made inside the namespaces: no name in this host's namespace
            _ip("link", "add", "eth0", "netns", self.ns(host), "type", "veth",
                "peer", "name", host, "netns", self.net)  # fmt: skip
            _ip("-n", self.net, "link", "set", host, "master", "br0")
            _ip("-n", self.net, "link", "set", host, "up")
            _ip("-n", self.ns(host), "addr", "add", f"{SUBNET}.{last}/24", "dev", "eth0")
            _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """Take the host's port on the bridge down: it stays up but hears nothing."""
        _ip("-n", self.net, "link", "set", host, "down")

    def popen(self, host: str, cmd: list[str], **kw) -> subprocess.Popen:
        env = {**project_env(), **FAST_FAILURE}
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *cmd],
            env=env,
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            **kw,
        )

    def start_dask(self) -> None:
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dask = [sys.executable, "-m", "distributed.cli"]
        host = f"{SUBNET}.{HOSTS['sched']}"
        self.procs["sched"] = self.popen(
            "sched",
            [*dask[:2], "distributed.cli.dask_scheduler", "--host", host, "--port", "8786",
             "--dashboard-address", f"{host}:8787"],
            **quiet,
        )  # fmt: skip
        for w in WORKERS:
            self.procs[w] = self.popen(
                w,
                [*dask[:2], "distributed.cli.dask_worker", SCHEDULER,
                 "--host", f"{SUBNET}.{HOSTS[w]}", "--nthreads", "1", "--no-nanny",
                 "--memory-limit", "1GiB", "--no-dashboard",
                 "--local-directory", str(self.work / w)],
                **quiet,
            )  # fmt: skip

    def close(self) -> None:
        stop_processes(list(self.procs.values()), grace=0, kill=True)
        for name in reversed(self.made):
            _ip("netns", "del", name, check=False)


_CANNOT = _can_make_namespaces()
pytestmark = pytest.mark.skipif(_CANNOT is not None, reason=str(_CANNOT))


@pytest.fixture
def hosts(tmp_path):
    _remove_leftovers()
    h = Hosts(tmp_path)
    try:
        h.build()
        h.start_dask()
        yield h
    finally:
        h.close()
    assert not [n for n in _ip("netns", "list").stdout.split() if n.startswith(h.tag)]


def _job(tmp_path: Path, out: str, cluster) -> Path:
    doc = {
        "cluster": cluster,
        "data": {
            "source": "synthetic",
            "synthetic": {"n_samples": 120_000, "n_features": 4, "n_components": 4, "seed": 2},
            "chunk_rows": 10_000,
        },
        "model": {
            "n_components": 4,
            "init_params": "random_from_data",
            "tol": 1e-12,
            "max_iter": 10,
            "random_state": 0,
        },
        "output": {"dir": str(tmp_path / out), "plots": False},
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _remote(tmp_path: Path, out: str) -> Path:
    cluster = {
        "address": SCHEDULER,
        "timeout": 30,
        "wait_for_workers": 2,
        "workers_timeout": 8,
    }
    return _job(tmp_path, out, cluster)


def _iteration(checkpoint: Path) -> int:
    return int(load_npz(checkpoint)["em_iteration"]) if checkpoint.is_file() else 0


def _run_and_cut(hosts: Hosts, job: Path, staging: Path, cut: tuple[str, ...]):
    """Run ``job`` from the driver's namespace; cut ``cut`` after the 2nd checkpoint.
    Returns the exit code and what it wrote to stderr."""
    log = job.with_suffix(".stderr")
    with open(log, "w") as err:
        runner = hosts.popen(
            "driver",
            [sys.executable, "-m", "dask_em", "run", str(job)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 180
            while _iteration(staging / "checkpoint.npz") < 2:
                assert runner.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"no checkpoint after 180 s: {log.read_text()}"
                time.sleep(0.02)
            for host in cut:
                hosts.cut(host)
            runner.wait(timeout=240)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    return runner.returncode, log.read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same job undisturbed, on threads in this process: its run folder."""
    folder = tmp_path_factory.mktemp("reference")
    return run_job(load_job(_job(folder, "reference", THREADS))).path


def _same_parameters(a: Path, b: Path) -> None:
    a, b = load_npz(a / "model.npz"), load_npz(b / "model.npz")
    for key in ("weights", "means", "covariances", "precisions_cholesky", "lower_bounds"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_a_job_across_hosts_survives_losing_a_worker_link(hosts, tmp_path, reference):
    code, err = _run_and_cut(
        hosts, _remote(tmp_path, "hosts"), tmp_path / ".hosts.partial", ("w1",)
    )
    assert code == 0, err
    # the driver linked the scheduler's dashboard at the scheduler's own address
    assert f"Dashboard: http://{SUBNET}.1:8787/status" in err
    _same_parameters(tmp_path / "hosts", reference)


def test_no_worker_left_fails_in_one_line_and_resumes(hosts, tmp_path, reference, caplog):
    job = _remote(tmp_path, "lost")
    staging = tmp_path / ".lost.partial"
    code, err = _run_and_cut(hosts, job, staging, WORKERS)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: NoWorkersError: no worker left on the cluster"), last
    assert "--resume" in last and "Traceback" not in err
    assert "checkpoint is kept" in err
    kept = _iteration(staging / "checkpoint.npz")
    assert kept >= 2

    # back on a working cluster (threads on this host), --resume finishes the run
    with caplog.at_level(logging.INFO, logger="dask_em"):
        run_job(load_job(_job(tmp_path, "lost", THREADS)), resume=True)
    assert f"resuming after iteration {kept}" in caplog.text
    _same_parameters(tmp_path / "lost", reference)
