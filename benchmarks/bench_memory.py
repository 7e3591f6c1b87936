"""Out-of-core memory bound (issue 7): a job whose zarr data is >= 4x the workers' memory.

Not a test (too heavy for the suite). Starts a LocalCluster of ``--workers`` processes with
``--memory-limit`` each, writes ``--gib`` GiB of float64 zarr with ``dask-em make-data``'s
code path (on those workers), then runs the job (`run_job`, data not persisted: every EM
iteration streams the file block by block). While it runs, the driver samples every
worker process's RSS with psutil; afterwards it counts worker restarts (new PIDs) and
memory/spill warnings in the worker logs. Prints one JSON object and exits 1 if a worker
restarted or the job failed.

    python benchmarks/bench_memory.py [--gib 8] [--workers 2] [--memory-limit 1GiB]
        [--iters 3] [--dir DIR] [--keep]

A worker holds ~400 MiB before any data (numba and the compiled kernels), so limits
below 768 MiB stall it (dask pauses a worker at 80%): session 1 used 2 GiB on
256 MiB workers, before the kernels were compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dask_em.jobs.config import load_job  # noqa: E402
from dask_em.jobs.runner import make_data, run_job  # noqa: E402

WARNINGS = (  # a line counts once, for the first that matches
    "Unmanaged memory use is high",
    "Memory use is high",
    "Worker is at",
    "Restarting worker",
    "Worker exceeded",
    "spill",
    "paused",
)


class Sampler(threading.Thread):
    """Polls the RSS of every worker process (found by PID through the client)."""

    def __init__(self, client, interval: float = 0.2):
        super().__init__(daemon=True)
        self.client, self.interval = client, interval
        self.peak: dict[int, int] = {}
        self.pids: set[int] = set()
        self.stop = threading.Event()

    def refresh(self) -> None:
        try:
            self.pids |= set(self.client.run(os.getpid, nanny=False).values())
        except Exception:
            pass

    def run(self) -> None:
        last = 0.0
        while not self.stop.is_set():
            if time.monotonic() - last > 2:
                self.refresh()
                last = time.monotonic()
            for pid in list(self.pids):
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.stop.wait(self.interval)


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=8.0, help="size of the zarr data (GiB)")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--chunk-rows", type=int, default=125_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="1GiB")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--dir", default=None, help="work folder (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the zarr data and run folder")
    return p.parse_args(argv)


def _job_doc(args, work: Path, n_rows: int, address: str) -> dict:
    """The job: synthetic data written to zarr in ``work``, fitted on the cluster at
    ``address`` without persisting it."""
    return {
        "name": "bench_memory",
        "cluster": {"address": address, "wait_for_workers": args.workers},
        "data": {
            "source": "zarr",
            "path": str(work / "data.zarr"),
            "chunk_rows": args.chunk_rows,
            "synthetic": {
                "n_samples": n_rows,
                "n_features": args.features,
                "n_components": args.components,
                "separation": 3.0,
                "seed": 2024,
            },
        },
        "model": {
            "n_components": args.components,
            "max_iter": args.iters,
            "tol": 0.0,
            "init_params": "random_from_data",
            "random_state": 0,
            "persist": "auto",
        },
        "output": {"dir": str(work / "run"), "plots": False, "labels": False},
    }


def _make_and_run(config, work: Path, result: dict) -> None:
    """Write the data (unless there) and run the job; their seconds, and the job's
    outcome, into ``result``. run_job connects its own client to the cluster's address."""
    t0 = time.perf_counter()
    if not (work / "data.zarr").exists():
        make_data(config)
    result["make_data_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    try:
        run = run_job(config, overwrite=True)
        result["ok"] = True
        result["n_iter"] = run.metrics["n_iter"]
        result["seconds_per_iteration"] = [
            round(r["seconds"], 2) for r in run.metrics["iterations"]
        ]
    except Exception as exc:  # report, do not hide
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["run_seconds"] = round(time.perf_counter() - t0, 1)


def _log_warnings(client) -> dict:
    """How many worker log lines match each of ``WARNINGS`` (those that occur)."""
    logs = client.get_worker_logs()
    counts = {w: 0 for w in WARNINGS}
    for lines in logs.values():
        for _level, line in lines:
            match = next((w for w in WARNINGS if w.lower() in line.lower()), None)
            if match is not None:
                counts[match] += 1
    return {k: v for k, v in counts.items() if v}


def main(argv=None) -> dict:
    args = _parse_args(argv)

    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    work = Path(args.dir or tempfile.mkdtemp(prefix="dask-em-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    n_rows = int(args.gib * 2**30 / (8 * args.features))
    limit = parse_bytes(args.memory_limit)
    result: dict = {
        "data_gib": round(n_rows * args.features * 8 / 2**30, 3),
        "rows": n_rows,
        "features": args.features,
        "components": args.components,
        "chunk_rows": args.chunk_rows,
        "workers": args.workers,
        "memory_limit_mib": limit / 2**20,
        "data_over_total_memory": round(n_rows * args.features * 8 / (limit * args.workers), 2),
    }
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=args.memory_limit,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=None,
    )
    try:
        client = Client(cluster, set_as_default=False)
        job = work / "job.yaml"
        job.write_text(yaml.safe_dump(_job_doc(args, work, n_rows, cluster.scheduler_address)))
        config = load_job(job)
        sampler = Sampler(client)
        sampler.refresh()
        first_pids = set(sampler.pids)
        sampler.start()
        _make_and_run(config, work, result)
        sampler.stop.set()
        sampler.join()
        sampler.refresh()
        peaks = sorted(sampler.peak.values(), reverse=True)
        result["peak_worker_rss_mib"] = [round(v / 2**20, 1) for v in peaks]
        result["peak_over_limit"] = round(peaks[0] / limit, 3) if peaks else None
        result["worker_restarts"] = len(sampler.pids - first_pids)
        result["worker_log_warnings"] = _log_warnings(client)
        client.close()
    finally:
        cluster.close()
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    r = main()
    sys.exit(0 if r.get("ok") and r.get("worker_restarts") == 0 else 1)
