"""Submit jobs to a Dask cluster and follow them from any machine that reaches it.

:func:`submit_job` validates a job here, checks from every worker that its data can be
read and its output written, records the job on the scheduler and starts its driver
there (:func:`dask_em.jobs._driver.run_driver`), then returns the job id: the job runs to
its end without this process. :func:`job_records`, :func:`job_log`, :func:`cancel_job` and
:func:`follow_job` read (and, to cancel, write) the job's record on the scheduler; they
back ``dask-em status``, ``logs``, ``cancel`` and ``wait`` / ``run --attach``.

Relative paths in a submitted job are made absolute against this process's working
folder: the workers run elsewhere. The workers must see those paths (a shared
filesystem), or the data and output must be fsspec URLs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from dask_em.data.base import is_url
from dask_em.data.folders import check_output_location
from dask_em.data.remote import RemoteRunFolder, check_url_output
from dask_em.jobs._driver import one_line, probe, run_driver
from dask_em.jobs._jobstate import FINAL, ROOT, JobState, driver_key, new_job_id, now
from dask_em.jobs.cluster import _open_client, connect
from dask_em.jobs.config import ClusterConfig, JobConfig, JobError, validator_message

__all__ = [
    "cancel_job",
    "describe",
    "follow_job",
    "for_the_cluster",
    "job_log",
    "job_records",
    "scheduler_client",
    "submit_job",
]

log = logging.getLogger("dask_em.jobs.submit")

#: A job still ``queued`` this long after submission without a driver task on the
#: scheduler was never handed over (its submitting process stopped first).
HANDOVER_SECONDS = 60.0
#: How often a followed job is checked for a driver the scheduler gave up on.
RECONCILE_SECONDS = 5.0


# -------------------------------------------------------------------------------- submit


def _absolute(path: str) -> str:
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def for_the_cluster(config: JobConfig) -> JobConfig:
    """The job with its local paths absolute (data, weights file, output folder), since
    the workers do not run in this process's working folder."""
    data = config.data
    update = {}
    if data.path is not None:
        update["path"] = _absolute(data.path)
    if data.weights is not None and data.weights in data.weights_files():
        if is_url(data.weights) or Path(data.weights).expanduser().exists():
            update["weights"] = _absolute(data.weights)
    out = config.output.dir
    if out is None or not is_url(out):
        out = _absolute(str(config.output_dir))
    output = config.output.model_copy(update={"dir": out})
    return config.model_copy(update={"data": data.model_copy(update=update), "output": output})


def submit_job(config: JobConfig, *, resume: bool = False, overwrite: bool = False) -> str:
    """Start ``config`` on its cluster's scheduler and return the job id at once.

    Parameters
    ----------
    config : JobConfig
        A validated job whose cluster is a scheduler ``address``.
    resume : bool
        Continue from the checkpoint an earlier (cancelled or failed) run of the same job
        left at the output location.
    overwrite : bool
        Replace an existing run folder (only one dask-em wrote).

    Returns
    -------
    str
        The job id, for ``dask-em status`` / ``logs`` / ``cancel`` / ``wait``.

    Raises
    ------
    JobError
        Bad input, found before the job reaches the cluster (config, output location),
        or by a worker (data it cannot read, output it cannot write), or an unreachable
        scheduler.
    """
    try:
        return _submit(config, resume=resume, overwrite=overwrite)
    except JobError as exc:
        raise exc.in_file(config.source) from None


def _submit(config: JobConfig, *, resume: bool, overwrite: bool) -> str:
    if config.cluster.kind != "address":
        raise JobError(
            "submit needs a running scheduler: give --scheduler ADDR (or cluster.address)",
            key="cluster",
        )
    config = for_the_cluster(config)
    out = config.output.dir
    inputs = [*config.data.input_files(), ("job file", config.source)]
    if is_url(out):
        check_url_output(out, key="output.dir", inputs=inputs)
        RemoteRunFolder(out)  # refuses a bucket's root
    else:
        check_output_location(out, key="output.dir", inputs=inputs)
    raw = config.model_dump(mode="json")
    source = None if config.source is None else str(Path(config.source).resolve())
    job_id = new_job_id(config.job_name)
    with connect(config.cluster) as client:
        _refuse_shared_output(client, out)
        _probe_workers(client, raw, source, resume, overwrite, config.cluster.workers_timeout)
        record = {"name": config.job_name, "file": source, "output": out, "submitted": now()}
        JobState(client, job_id).set(value={"job": record, "state": "queued", "attempt": 0})
        from distributed import fire_and_forget

        key = driver_key(job_id)
        future = client.submit(run_driver, raw, job_id, source, resume, overwrite, key=key)
        # Published, the driver's task and its outcome (also "its workers kept dying")
        # stay on the scheduler after this client leaves; fire_and_forget keeps it
        # running even if someone unpublishes it.
        client.publish_dataset(**{key: future})
        fire_and_forget(future)
    log.info("Submitted %s (output %s)", job_id, out)
    return job_id


def _refuse_shared_output(client, out: str) -> None:
    """Two live jobs writing one folder would delete each other's staging folder."""
    jobs = client.get_metadata(list(ROOT), default={}) or {}
    for job_id, rec in jobs.items():
        if rec.get("state") not in FINAL and (rec.get("job") or {}).get("output") == out:
            raise JobError(
                f"the job {job_id} on this scheduler is writing {out}; wait for it, cancel "
                "it, or choose another output folder",
                key="output.dir",
            )


def _probe_workers(client, raw, source, resume, overwrite, timeout) -> None:
    from distributed import wait

    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before n_workers= listed every worker anyway
        info = client.scheduler_info()
    workers = sorted(info.get("workers", {}))
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            probe,
            raw,
            source,
            resume,
            overwrite,
            workers=[w],
            allow_other_workers=False,
            pure=False,
            key=f"dask-em-probe-{token}-{i}",
        )
        for i, w in enumerate(workers)
    ]
    try:
        wait(futures, timeout=timeout)
    except TimeoutError:
        raise JobError(
            f"the workers did not answer the job's check within {timeout:g} s",
            key="cluster.workers_timeout",
        ) from None
    for worker, answer in zip(workers, client.gather(futures), strict=True):
        if answer is not None:
            key, message = answer
            raise JobError(f"{message} (checked on the worker {worker})", key=key or None)


# ------------------------------------------------------------------------ follow and steer


@contextlib.contextmanager
def scheduler_client(address: str, *, timeout: float = 10.0) -> Iterator:
    """A client of the scheduler at ``address`` (TLS from dask's config), closed on exit.

    Raises
    ------
    JobError
        A malformed address, or no scheduler answers within ``timeout`` seconds.
    """
    from pydantic import ValidationError

    try:
        cfg = ClusterConfig(address=address, timeout=timeout, wait_for_workers=0)
    except ValidationError as exc:
        message = validator_message(exc.errors(include_url=False)[0])
        raise JobError(message, key="--scheduler") from None
    client = _open_client(cfg, None)
    try:
        # current: the driver futures of published datasets attach to the current client
        with client.as_current():
            yield client
    finally:
        client.close()


def _age(record: dict) -> float:
    submitted = (record.get("job") or {}).get("submitted")
    if not submitted:
        return float("inf")
    then = _dt.datetime.fromisoformat(submitted)
    return (_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()


def _reconcile(client, jobs: dict) -> None:
    """Mark failed the live jobs whose driver cannot run any more: its task erred (the
    scheduler gave up restarting it) or is gone. Updates ``jobs`` and the scheduler."""
    from distributed import wait

    futures = {}
    for job_id, rec in jobs.items():
        if rec.get("state") in FINAL:
            continue
        try:
            futures[job_id] = client.get_dataset(driver_key(job_id))
        except KeyError:
            if rec.get("state") == "queued" and _age(rec) < HANDOVER_SECONDS:
                continue  # submit is between recording the job and publishing its driver
            _fail(client, jobs, job_id, "its driver task is gone from the scheduler")
    if not futures:
        return
    with contextlib.suppress(TimeoutError):
        wait(list(futures.values()), timeout=0.5)  # states of finished tasks arrive async
    for job_id, future in futures.items():
        if future.status == "error":
            # Re-read: the driver records its own end before its task finishes.
            state = client.get_metadata([*ROOT, job_id, "state"], default=None)
            if state not in FINAL:
                reason = one_line(future.exception()).split(" Inspecting", 1)[0]
                _fail(client, jobs, job_id, f"its driver could not be restarted: {reason}")
            else:
                jobs[job_id] = client.get_metadata([*ROOT, job_id])
        future.release()


def _fail(client, jobs: dict, job_id: str, reason: str) -> None:
    JobState(client, job_id).finish("failed", error=reason)
    jobs[job_id] = {**jobs[job_id], "state": "failed", "error": reason}


def _fetch(client, address: str, job_id: str | None) -> dict:
    if job_id is None:
        return dict(client.get_metadata(list(ROOT), default={}) or {})
    record = client.get_metadata([*ROOT, job_id], default=None)
    if not isinstance(record, dict):
        raise JobError(
            f"no job {job_id} on the scheduler at {address}; `dask-em status --scheduler "
            f"{address}` lists the jobs it knows",
            key="JOB_ID",
        )
    return {job_id: record}


def job_records(
    client, address: str, job_id: str | None = None, *, reconcile: bool = True
) -> list[dict]:
    """The records of every job the scheduler knows (or of ``job_id``), oldest first,
    each with its ``id``.

    With ``reconcile``, live jobs whose driver is lost are marked failed first (this
    costs up to half a second per call while a job runs).

    Raises
    ------
    JobError
        ``job_id`` is not known to the scheduler.
    """
    jobs = _fetch(client, address, job_id)
    if reconcile:
        _reconcile(client, jobs)
    rows = [{**rec, "id": jid} for jid, rec in jobs.items() if isinstance(rec, dict)]
    return sorted(rows, key=lambda r: ((r.get("job") or {}).get("submitted") or "", r["id"]))


def log_lines(record: dict) -> list[str]:
    """The progress lines of a job record, in order."""
    lines = record.get("log") or {}
    return [lines[k] for k in sorted(lines)]


def job_log(address: str, job_id: str) -> list[str]:
    """The progress lines of ``job_id`` (what ``dask-em logs`` prints)."""
    with scheduler_client(address) as client:
        (record,) = job_records(client, address, job_id)
    return log_lines(record)


def cancel_job(address: str, job_id: str, *, timeout: float = 60.0) -> dict:
    """Ask ``job_id`` to stop and wait up to ``timeout`` seconds for it to.

    The driver stops at its next iteration: the run's partial output is removed, its
    checkpoint kept (``dask-em submit JOB --resume`` continues from it).

    Returns
    -------
    dict
        The job's record: ``state`` is ``cancelled`` once it stopped, a final state it
        reached first, or still ``running``/``queued`` after ``timeout``.
    """
    with scheduler_client(address) as client:
        (record,) = job_records(client, address, job_id)
        if record["state"] in FINAL:
            return record
        JobState(client, job_id).set("cancel", value=True)
        deadline = time.monotonic() + timeout
        polls = _Polls(client, address, job_id)
        while record["state"] not in FINAL and time.monotonic() < deadline:
            time.sleep(0.2)
            record = polls.record()
    return record


class _Polls:
    """A job's record, read again and again: checked for a lost driver every
    :data:`RECONCILE_SECONDS` only (each check waits on the scheduler)."""

    def __init__(self, client, address: str, job_id: str):
        self.client, self.address, self.job_id = client, address, job_id
        self.checked = time.monotonic()

    def record(self) -> dict:
        check = time.monotonic() - self.checked >= RECONCILE_SECONDS
        if check:
            self.checked = time.monotonic()
        (record,) = job_records(self.client, self.address, self.job_id, reconcile=check)
        return record


def follow_job(
    address: str, job_id: str, *, on_line: Callable[[str], None], poll: float = 0.5
) -> dict:
    """Pass each progress line of ``job_id`` to ``on_line`` until the job ends.

    Returns
    -------
    dict
        The job's final record.
    """
    seen = 0
    with scheduler_client(address) as client:
        (record,) = job_records(client, address, job_id)
        polls = _Polls(client, address, job_id)
        while True:
            lines = log_lines(record)
            for line in lines[seen:]:
                on_line(line)
            seen = len(lines)
            if record.get("state") in FINAL:
                return record
            time.sleep(poll)
            record = polls.record()


def describe(record: dict) -> str:
    """One line for ``dask-em status``: id, state and what it is doing or how it ended."""
    state = record.get("state", "?")
    if state == "running":
        p = record.get("progress") or {}
        if p:
            lb = p.get("lower_bound")
            detail = (
                f"iteration {p['iteration']}  lower bound "
                f"{'n/a' if lb is None else format(lb, '.10g')}  passes {p['passes']}  "
                f"{p['seconds_per_iteration']:.3f} s/iter"
            )
        else:
            detail = "starting"
        detail += f"  on {record.get('worker')}"
        if int(record.get("attempt") or 1) > 1:
            detail += f" (driver restarted {int(record['attempt']) - 1}x)"
    elif state == "finished":
        r = record.get("result") or {}
        how = "converged" if r.get("converged") else "not converged"
        detail = f"{r.get('path')}  ({r.get('n_iter')} iteration(s), {how})"
    elif state == "failed":
        detail = record.get("error") or ""
    elif state == "cancelled":
        detail = record.get("note") or ""
    else:
        detail = f"waiting for a worker (output {(record.get('job') or {}).get('output')})"
    return f"{record['id']}  {state:<9}  {detail}".rstrip()
