"""The driver of a submitted job: a task on a worker that runs the job to its end.

:func:`run_driver` is what ``dask-em submit`` hands the scheduler, with the validated
config as plain JSON-like data (never pickled user code; the function itself travels by
reference to this module). It secedes from the worker's thread pool
(``worker_client``), runs :func:`~dask_em.jobs.runner.run_job` on the worker's client, and
keeps the job's record on the scheduler up to date (:mod:`dask_em.jobs._jobstate`).

If its worker dies, the scheduler runs the task again on another worker; that attempt
resumes from the last checkpoint, which lives at the output location (the staging
folder of a path the workers share, or the staging prefix of a URL). :func:`probe` is the
check ``submit`` runs on every worker before it hands over the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from dask_em.data.base import is_url
from dask_em.data.folders import RunFolder, is_owned
from dask_em.data.remote import RemoteRunFolder, check_url_output
from dask_em.data.sources import check_data
from dask_em.jobs._jobstate import FINAL, JobState, captured_lines, driver_key
from dask_em.jobs.config import JobConfig, JobError

__all__ = ["JobCancelled", "probe", "run_driver"]

log = logging.getLogger("dask_em.jobs.runner")


class JobCancelled(Exception):
    """Raised by the progress hook when ``dask-em cancel`` asked the job to stop."""


def _config(raw: dict, source: str | None) -> JobConfig:
    config = JobConfig.model_validate(raw)
    config._source = None if source is None else Path(source)
    return config


def one_line(exc: BaseException) -> str:
    """An exception as one line: a :class:`JobError` as it prints, others with their type."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, JobError) else f"{type(exc).__name__}: {text}"


def probe(raw: dict, source: str | None, resume: bool, overwrite: bool) -> tuple | None:
    """Check, on a worker, that it can read the job's data and write its output.

    Returns
    -------
    tuple of (str, str) or None
        ``(key, message)`` of the first problem, None if there is none (returned, not
        raised, so the worker logs no traceback for bad input).
    """
    from dask_em.jobs.runner import _run_folder

    try:
        config = _config(raw, source)
        check_data(config.data)
        if is_url(config.output.dir or ""):
            inputs = [*config.data.input_files(), ("job file", config.source)]
            check_url_output(config.output.dir, key="output.dir", inputs=inputs)
            RemoteRunFolder(config.output.dir, overwrite=overwrite).check(resume=resume)
        else:
            folder = _run_folder(config, resume=resume, overwrite=overwrite)
            _check_writable(folder.path.parent)
    except JobError as exc:
        return exc.key or "", exc.message
    return None


def _check_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise JobError(f"cannot write to {existing}", key="output.dir")


class _Hook:
    """The job's ``on_iteration``: the progress record, then the cancel check (after the
    iteration's checkpoint, so a cancelled job keeps it)."""

    def __init__(self, state: JobState, passes: int):
        self.state, self.passes = state, passes

    def __call__(self, progress) -> None:
        self.passes += 1
        self.state.progress(progress, self.passes)
        if self.state.cancel_requested():
            raise JobCancelled


def run_driver(raw: dict, job_id: str, source: str | None, resume: bool, overwrite: bool):
    """Run a submitted job on this worker; the task ``dask-em submit`` starts.

    Parameters
    ----------
    raw : dict
        The validated job config as JSON-like data (``JobConfig.model_dump(mode="json")``,
        local paths absolute).
    job_id : str
    source : str or None
        The job file the config came from (for messages and ``model.json``).
    resume, overwrite : bool
        As ``dask-em run``'s options, for the first attempt; a restarted attempt resumes
        from the checkpoint the earlier one left.

    Returns
    -------
    str
        The job's final state (also recorded on the scheduler with its details).
    """
    from distributed import get_worker, worker_client

    worker = get_worker()
    scratch = worker.local_directory
    with worker_client() as client:
        state = JobState(client, job_id)
        ended = state.get("state")
        if ended in FINAL:
            # Run again although the job has ended: the scheduler lost this task's result
            # with a worker and recomputes it for someone who still holds it.
            return ended
        attempt = state.begin(worker.address, os.getpid())
        with captured_lines(state):
            if attempt > 1:
                log.info(
                    "Driver restarted on %s (attempt %d): its previous worker was lost",
                    worker.address,
                    attempt,
                )
            ended = _drive(client, state, raw, source, resume, overwrite, attempt > 1, scratch)
        # The record now says how the job ended; the scheduler need not keep the task.
        with contextlib.suppress(KeyError):
            client.unpublish_dataset(driver_key(job_id))
        return ended


def _drive(client, state, raw, source, resume, overwrite, restarted, scratch) -> str:
    if state.cancel_requested():
        state.finish("cancelled", note="cancelled before it started")
        return "cancelled"
    progress = state.get("progress", default=None) or {}
    hook = _Hook(state, int(progress.get("passes", 0)))
    kept = []
    try:
        config = _config(raw, source)
        args = (config, client, hook, resume, restarted, overwrite)
        if is_url(config.output.dir or ""):
            where, result = _run_to_url(*args, scratch=scratch, kept=kept)
        else:
            where, result = _run_to_path(*args, kept=kept)
    except JobCancelled:
        note = f"checkpoint kept in {kept[0]}" if kept else "no checkpoint was written"
        log.info("Cancelled; %s", note)
        state.finish("cancelled", note=note)
        return "cancelled"
    except Exception as exc:
        state.finish("failed", error=one_line(exc))
        return "failed"
    m = result.metrics
    summary = {k: m.get(k) for k in ("n_iter", "converged", "lower_bound", "bic", "aic")}
    state.finish("finished", result={"path": where, **summary})
    return "finished"


def _run_to_path(config, client, hook, resume, restarted, overwrite, *, kept):
    """The job into a folder the workers share: run_job as ``dask-em run`` would."""
    from dask_em.jobs.runner import run_job

    folder = RunFolder(config.output_dir)
    if restarted:
        resume = is_owned(folder.staging, "run")
    try:
        result = run_job(
            config, resume=resume, overwrite=overwrite, on_iteration=hook, client=client
        )
    except BaseException:
        if folder.staging.exists():  # run_job keeps it only for its checkpoint
            kept.append(str(folder.staging))
        raise
    return str(result.path), result


def _run_to_url(config, client, hook, resume, restarted, overwrite, *, scratch, kept):
    """The job into a folder at an fsspec URL (through a scratch folder of the worker)."""
    from dask_em.jobs._url_runs import run_at_url

    remote = RemoteRunFolder(config.output.dir, overwrite=overwrite)
    if restarted:
        resume = remote.has_checkpoint()
    try:
        result = run_at_url(
            config,
            resume=resume,
            overwrite=overwrite,
            on_iteration=hook,
            client=client,
            scratch=scratch,
        )
    except BaseException:
        if remote.has_checkpoint():
            kept.append(remote.staging_url)
        raise
    return result.path, result
