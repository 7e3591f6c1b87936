"""Batch systems: the SLURM/PBS job script dask-jobqueue makes from a job's cluster
section carries every setting of it. No batch system is needed: the cluster is made, its
script read, and it is closed without submitting anything (its scheduler binds
127.0.0.1 through ``interface: lo``)."""

from __future__ import annotations

import re

import pytest
from dask.utils import parse_bytes

from dask_em.jobs.cluster import jobqueue_cluster
from dask_em.jobs.config import ClusterConfig

pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (dask-em[test])")

COMMON = {
    "cores": 8,
    "memory": "32GiB",
    "processes": 2,
    "queue": "compute",
    "account": "proj-42",
    "walltime": "02:30:00",
    "interface": "lo",
    "dashboard_address": "127.0.0.1:0",
}


def _script(kind: str, **extra) -> tuple[str, str]:
    cfg = ClusterConfig.model_validate({"jobqueue": {"kind": kind, **COMMON, **extra}})
    cluster = jobqueue_cluster(cfg)
    try:
        return cluster.job_script(), cluster.scheduler_address
    finally:
        cluster.close()


def _worker_command(script: str) -> str:
    line = next(x for x in script.splitlines() if "distributed.cli.dask_worker" in x)
    return line


def _assert_worker(script: str, address: str) -> None:
    cmd = _worker_command(script)
    assert address in cmd and address.startswith("tcp://127.0.0.1:")
    assert "--nworkers 2" in cmd
    assert "--nthreads 4" in cmd  # 8 cores shared by 2 worker processes
    limit = re.search(r"--memory-limit (\S+)", cmd).group(1)
    # 32 GiB shared by 2 processes (dask-jobqueue writes e.g. 16.00GiB)
    assert abs(parse_bytes(limit) - 16 * 2**30) < 0.01 * 2**30, limit
    assert "--interface lo" in cmd


def test_slurm_script_follows_the_config():
    script, address = _script("slurm", job_extra_directives=["--exclusive"])
    directives = [x for x in script.splitlines() if x.startswith("#SBATCH")]
    assert "#SBATCH -p compute" in directives
    assert "#SBATCH -A proj-42" in directives
    assert "#SBATCH -t 02:30:00" in directives
    assert "#SBATCH --cpus-per-task=8" in directives
    assert "#SBATCH --exclusive" in directives
    mem = next(x for x in directives if x.startswith("#SBATCH --mem="))
    assert parse_bytes(mem.split("=")[1].replace("G", "GiB")) == 32 * 2**30, mem
    _assert_worker(script, address)


def test_pbs_script_follows_the_config():
    script, address = _script("pbs", job_extra_directives=["-m abe"])
    directives = [x for x in script.splitlines() if x.startswith("#PBS")]
    assert "#PBS -q compute" in directives
    assert "#PBS -A proj-42" in directives
    assert "#PBS -l walltime=02:30:00" in directives
    assert "#PBS -m abe" in directives
    select = next(x for x in directives if x.startswith("#PBS -l select="))
    assert "ncpus=8" in select and "mem=" in select, select
    _assert_worker(script, address)
