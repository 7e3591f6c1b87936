"""What a submitted job costs against ``dask-em run --scheduler`` (issue 24).

Not a test. Starts a `dask scheduler` and two 1-thread `dask worker` processes on
127.0.0.1 (free port; stopped at the end, also on failure), then runs the same synthetic
job both ways, alternating so that load from other processes hits both alike:

- ``run``: :func:`run_job` on this machine's client (the EM loop here);
- ``submit``: :func:`submit_job`, then :func:`follow_job` until it ends (the EM loop in a
  driver task on a worker).

Prints, per mode, the median and minimum seconds per iteration (from ``metrics.json``,
iterations after the first) and the wall time from start to finished run folder; for
``submit`` also how long ``submit_job`` takes to return and one ``status`` call; and the
largest difference between the two modes' fitted means (they should agree to 1e-12).

    python benchmarks/bench_submit.py [--rows 1000000] [--features 8] [--components 4]
        [--iterations 15] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from dask_em.data.writers import load_npz
from dask_em.jobs.config import load_job
from dask_em.jobs.runner import run_job
from dask_em.jobs.submit import follow_job, job_records, scheduler_client, submit_job


def _cluster(work: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            cwd=work,
            **quiet,
        )
    ]
    for i in range(2):
        cmd = [*dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
        cmd += [
            "--no-dashboard",
            "--memory-limit",
            "4GiB",
            "--local-directory",
            str(work / f"w{i}"),
        ]
        procs.append(subprocess.Popen(cmd, cwd=work, **quiet))
    return address, procs


def _job(work: Path, args) -> Path:
    doc = {
        "name": "bench",
        "data": {
            "source": "synthetic",
            "synthetic": {
                "n_samples": args.rows,
                "n_features": args.features,
                "n_components": args.components,
                "seed": 0,
            },
            "chunk_rows": 250_000,
        },
        "model": {"n_components": args.components, "tol": 0.0, "max_iter": args.iterations},
        "output": {"plots": False},
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _per_iteration(run: Path) -> list[float]:
    import json

    rows = json.loads((run / "metrics.json").read_text())["iterations"]
    return [r["seconds"] for r in rows[1:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--components", type=int, default=4)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    address, procs = _cluster(work)
    seen = {"run": [], "submit": []}
    walls = {"run": [], "submit": []}
    extra = {"submit returns": [], "status call": []}
    try:
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        job = _job(work, args)
        for r in range(args.repeats):
            t0 = time.perf_counter()
            run_job(load_job(job, scheduler=address, output=work / f"run{r}"))
            walls["run"].append(time.perf_counter() - t0)
            seen["run"] += _per_iteration(work / f"run{r}")

            t0 = time.perf_counter()
            job_id = submit_job(load_job(job, scheduler=address, output=work / f"sub{r}"))
            extra["submit returns"].append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            with scheduler_client(address) as client:
                job_records(client, address, job_id)
            extra["status call"].append(time.perf_counter() - t1)
            record = follow_job(address, job_id, on_line=lambda _: None, poll=0.2)
            assert record["state"] == "finished", record
            walls["submit"].append(time.perf_counter() - t0)
            seen["submit"] += _per_iteration(work / f"sub{r}")
        diff = max(
            float(np.max(np.abs(load_npz(work / f"run{r}" / "model.npz")["means"]
                                - load_npz(work / f"sub{r}" / "model.npz")["means"])))
            for r in range(args.repeats)
        )  # fmt: skip
    finally:
        try:
            from distributed import Client

            with Client(address, timeout=5) as c:
                c.shutdown()
        except Exception:
            pass
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work)  # this run's own temporary folder
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{args.rows} rows x {args.features}, K={args.components} full, "
        f"{args.iterations} iterations, 2 workers x 1 thread, load average {load}"
    )
    for mode in ("run", "submit"):
        s = seen[mode]
        print(
            f"{mode:>7}: s/iter median {statistics.median(s):.4f} min {min(s):.4f}; "
            f"wall median {statistics.median(walls[mode]):.2f} s"
        )
    for name, values in extra.items():
        print(f"{name}: median {statistics.median(values):.2f} s")
    print(f"largest |means(run) - means(submit)|: {diff:.3g}")


if __name__ == "__main__":
    main()
