"""The state of submitted jobs, kept on the scheduler (not on the submitting machine).

Each job is a record in the scheduler's metadata under ``("dask-em", "jobs", JOB_ID)``,
written in separate sub-keys so that the submitting process, the driver and ``cancel``
never overwrite each other's fields:

``job``       what was submitted (name, output, time), written once by ``submit``
``state``     queued / running / finished / failed / cancelled
``attempt``   how many times a driver started (> 1: restarted after its worker died)
``worker``, ``pid``  where the current driver runs
``progress``  iteration, lower bound, passes, seconds of the last iteration
``log``       the progress lines, one sub-key per line (``"000017"``)
``error``     the one-line reason of a failure
``result``    the run folder and a summary of the fit
``cancel``    set by ``dask-em cancel``; the driver stops at its next iteration

The driver task itself is kept by the scheduler as a published dataset named
:func:`driver_key`, so that a driver which could not be restarted (its workers kept dying)
is still known, with the scheduler's reason, after every client has gone.
"""

from __future__ import annotations

import datetime as _dt
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FINAL", "ROOT", "STATES", "JobState", "captured_lines", "driver_key", "new_job_id"]

ROOT = ("dask-em", "jobs")
STATES = ("queued", "running", "finished", "failed", "cancelled")
FINAL = frozenset({"finished", "failed", "cancelled"})
#: Progress lines kept per job (a job with more keeps its first ones and a note).
MAX_LOG_LINES = 5000


def driver_key(job_id: str) -> str:
    """The task key (and published dataset name) of a job's driver."""
    return f"dask-em-driver-{job_id}"


def new_job_id(name: str) -> str:
    """A fresh job id: the job's name and 8 random hex digits."""
    return f"{name}-{secrets.token_hex(4)}"


def now() -> str:
    """The time for a record (UTC, ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class JobState:
    """One job's record on the scheduler, read and written through a client.

    Parameters
    ----------
    client : distributed.Client
    job_id : str
    """

    def __init__(self, client, job_id: str):
        self.client = client
        self.job_id = job_id
        self._lines = 0
        self._lock = threading.Lock()

    def set(self, *keys: str, value) -> None:
        """Set one field (``keys`` below the job's record)."""
        self.client.set_metadata([*ROOT, self.job_id, *keys], value)

    def get(self, *keys: str, default=None):
        """One field, or the whole record without ``keys`` (``default`` if missing)."""
        return self.client.get_metadata([*ROOT, self.job_id, *keys], default=default)

    # ------------------------------------------------------------------------ the driver

    def begin(self, worker: str, pid: int) -> int:
        """Record that a driver started on ``worker``; return its attempt number (1, 2...).

        Only one driver of a job runs at a time (the scheduler runs its task once), so
        reading then writing the attempt count is safe.
        """
        attempt = int(self.get("attempt", default=0) or 0) + 1
        self._lines = len(self.get("log", default={}) or {})
        self.set("attempt", value=attempt)
        self.set("worker", value=worker)
        self.set("pid", value=pid)
        self.set("started", value=now())
        self.set("state", value="running")
        return attempt

    def cancel_requested(self) -> bool:
        return bool(self.get("cancel", default=False))

    def log(self, line: str) -> None:
        """Append a progress line (from the driver's thread)."""
        with self._lock:
            n = self._lines
            self._lines += 1
        if n < MAX_LOG_LINES:
            self.set("log", f"{n:06d}", value=line)
        elif n == MAX_LOG_LINES:
            self.set("log", f"{n:06d}", value=f"(more than {MAX_LOG_LINES} lines; not kept)")

    def progress(self, progress, passes: int) -> None:
        """Record the fit's progress after an iteration (the best start's lower bound)."""
        bounds = [c.lower_bounds[-1] for c in progress.candidates if c.lower_bounds]
        self.set(
            "progress",
            value={
                "iteration": int(progress.iteration),
                "lower_bound": float(max(bounds)) if bounds else None,
                "passes": int(passes),
                "seconds_per_iteration": float(progress.seconds),
            },
        )

    def finish(self, state: str, **fields) -> None:
        """Record the job's end: ``state`` and fields such as ``error`` or ``result``."""
        for name, value in fields.items():
            self.set(name, value=value)
        self.set("ended", value=now())
        self.set("state", value=state)


class _RecordLines(logging.Handler):
    """Sends the dask_em log lines of one thread (the driver's) to the job's record."""

    def __init__(self, state: JobState, thread: int):
        super().__init__(logging.INFO)
        self.state, self.thread = state, thread
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # Several drivers may share a worker; each keeps the lines of its own thread.
        if record.thread != self.thread:
            return
        try:
            self.state.log(self.format(record))
        except Exception:  # pragma: no cover - a lost line must not stop the job
            self.handleError(record)


@contextmanager
def captured_lines(state: JobState) -> Iterator[None]:
    """Inside the block, dask_em's INFO lines of this thread go to the job's record."""
    logger = logging.getLogger("dask_em")
    handler = _RecordLines(state, threading.get_ident())
    # Left at INFO afterwards: another driver on this worker may be logging (the worker
    # process has no handler that prints dask_em's INFO lines).
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
