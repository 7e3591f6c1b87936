"""A job's ``stream`` section: ``partial_fit`` on files as they arrive in a folder.

:func:`arrivals` watches a glob and yields each matching file once it has settled;
:func:`fit_stream` fits them one by one and returns what the run folder gets. The
online update itself is the estimator's (:meth:`dask_em.GaussianMixture.partial_fit`),
so a stream job and a loop of ``partial_fit`` calls over the same files in the same
order give the same model.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dask_em.data.base import is_url
from dask_em.data.sources import load_weighted
from dask_em.errors import JobError
from dask_em.jobs._blocks import sized_for_cluster
from dask_em.jobs._checkpoints import _load_checkpoint, _write_checkpoint
from dask_em.jobs._fit import _estimator, _job_error
from dask_em.jobs.config import JobConfig, StreamConfig
from dask_em.mixture._partial import online_arrays, restore_online

log = logging.getLogger("dask_em.jobs.runner")

# What a stream fits file by file: one array or table per file, not folders or URLs.
STREAM_SOURCES = ("npy", "hdf5", "parquet", "csv")


def check_stream_job(job: JobConfig) -> None:
    """A ``stream`` section's demands on the rest of the job (ValueError names the key)."""
    data, out = job.data, job.output
    if data.source not in STREAM_SOURCES:
        raise ValueError(
            f"stream fits one file at a time: data.source must be one of "
            f"{', '.join(STREAM_SOURCES)}, got {data.source}"
        )
    if is_url(data.path):
        raise ValueError("stream watches a local folder: data.path must be a local path or glob")
    if data.weights is not None and data.source == "npy":
        raise ValueError(
            "stream: data.weights must be in each file (a parquet/csv column, an hdf5 "
            "dataset), not one weights file for all of them"
        )
    if job.selection is not None:
        raise ValueError("stream fits one model: remove the 'selection' section")
    if job.model.kind != "gaussian":
        raise ValueError("stream needs model.kind: gaussian (partial_fit is online EM)")
    for key in ("labels", "probabilities"):
        if getattr(out, key):
            raise ValueError(
                f"output.{key} needs a fixed data set, and a stream's files may be gone: "
                f"set output.{key}: false"
            )


def arrivals(
    pattern: str,
    stream: StreamConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], float] = time.time,
    skip: Iterable[str] = (),
) -> Iterator[Path]:
    """Files matching ``pattern``, each once, as they settle.

    A file settles when its size and modification time have not changed for
    ``stream.settle_seconds`` (a file already that old when first listed is settled at
    once). Files settling in the same listing come in name order. Stops when no file
    has come for ``stream.idle_seconds`` or after ``stream.max_files``.

    Parameters
    ----------
    pattern : str
        A local glob (``~`` expanded).
    stream : StreamConfig
    clock, sleep, wall : callable
        Monotonic time, sleeping, and the time file modification times are in (tests
        pass fakes).
    skip : iterable of str
        Files already taken (as this function yields them), e.g. before a resume; they
        count towards ``max_files``.
    """
    pattern = os.path.expanduser(pattern)
    seen: dict[str, tuple[tuple[int, int], float]] = {}  # path -> (signature, since)
    taken: set[str] = set(skip)
    last = clock()
    while True:
        now = clock()
        ready = []
        for name in sorted(glob.glob(pattern)):
            if name in taken or not os.path.isfile(name):
                continue
            try:
                st = os.stat(name)
            except FileNotFoundError:  # renamed or removed since the listing
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if name not in seen or seen[name][0] != sig:
                age = max(0.0, wall() - st.st_mtime)
                seen[name] = (sig, now - min(age, stream.settle_seconds))
            if now - seen[name][1] >= stream.settle_seconds:
                ready.append(name)
        for name in ready:
            taken.add(name)
            yield Path(name)
            last = clock()
            if stream.max_files is not None and len(taken) >= stream.max_files:
                return
        if not ready and clock() - last >= stream.idle_seconds:
            return
        sleep(stream.poll_seconds)


@dataclass
class StreamFit:
    """What a stream hands on to the run folder.

    Attributes
    ----------
    gm : GaussianMixture
        After the last file's update.
    metrics : dict
        ``metrics.json``: one row per file (its mean log-likelihood under the model before
        its update, rows, seconds) and totals.
    last_rows : dask.array.Array
        The last file's rows (the pictures' sample comes from them).
    files : list of str
    """

    gm: object
    metrics: dict
    last_rows: object
    files: list


def fit_stream(
    config: JobConfig,
    client,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    on_file: Callable | None = None,
) -> StreamFit:
    """Fit ``partial_fit`` on every file of ``config.data.path`` as it arrives.

    Parameters
    ----------
    config : JobConfig
        A job with a ``stream`` section.
    client : distributed.Client
    checkpoint : Path, optional
        Written after every file: the online state and the files fitted.
    resume : bool
        Go on from ``checkpoint`` (if it exists), skipping the files it lists.
    fingerprint : str
        The job's, stored in and checked against the checkpoint.
    on_file : callable, optional
        ``on_file(path, gm)`` after each file's update and checkpoint.

    Raises
    ------
    JobError
        A file that cannot be read or fitted (named), or no file at all.
    """
    gm = _estimator(config.model.estimator_params())
    rows, chunk_rows = [], None
    if resume and checkpoint is not None and checkpoint.is_file():
        rows, chunk_rows = _restore(gm, checkpoint, fingerprint)
        log.info("Stream: resuming after %d file(s)", len(rows))
    x, t0 = None, time.perf_counter()
    for path in arrivals(config.data.path, config.stream, skip=[r["path"] for r in rows]):
        t = time.perf_counter()
        data = config.data.model_copy(update={"path": str(path)})
        try:
            if chunk_rows is None:  # blocks sized once, by the first file
                data = sized_for_cluster(data, config.model, client)
                chunk_rows = data.chunk_rows
            data = data.model_copy(update={"chunk_rows": chunk_rows})
            x, w = load_weighted(data)
            gm.partial_fit(x, sample_weight=w)
        except JobError as exc:
            raise JobError(f"{exc.message} (stream file {path.name})", key=exc.key) from exc
        except ValueError as exc:
            err = _job_error(exc, config.model.missing)
            raise JobError(f"{err.message} (stream file {path.name})", key=err.key) from exc
        rows.append(_file_row(len(rows) + 1, path, x.shape[0], gm, time.perf_counter() - t))
        log.info(
            "Stream file %d: %s, %d rows, mean log-likelihood %.6g before its update",
            len(rows),
            path.name,
            x.shape[0],
            gm.lower_bound_,
        )
        if checkpoint is not None:
            _save(checkpoint, gm, rows, chunk_rows, fingerprint)
        if on_file is not None:
            on_file(path, gm)
    if not rows:
        raise JobError(
            f"no file matching {config.data.path} arrived within stream.idle_seconds "
            f"({config.stream.idle_seconds:g} s)",
            key="data.path",
        )
    if x is None:  # resumed after the last file: the pictures sample that file
        x = _last_rows(config, rows[-1]["path"], chunk_rows)
    metrics = _metrics(gm, rows, time.perf_counter() - t0)
    return StreamFit(gm, metrics, x, [r["file"] for r in rows])


_ROW_KEYS = ("path", "file", "rows", "lower_bound", "seconds")


def _save(path: Path, gm, rows: list[dict], chunk_rows: int, fingerprint: str) -> None:
    arrays = online_arrays(gm)
    for key in _ROW_KEYS:
        arrays[f"stream_{key}"] = np.asarray([r[key] for r in rows])
    arrays["stream_chunk_rows"] = np.asarray(chunk_rows)
    _write_checkpoint(path, arrays, fingerprint, {})


def _restore(gm, path: Path, fingerprint: str) -> tuple[list[dict], int]:
    arrays = _load_checkpoint(path, fingerprint)
    restore_online(gm, arrays)
    columns = [arrays[f"stream_{key}"].tolist() for key in _ROW_KEYS]
    rows = [
        {"iteration": i, **dict(zip(_ROW_KEYS, values, strict=True))}
        for i, values in enumerate(zip(*columns, strict=True), start=1)
    ]
    return rows, int(arrays["stream_chunk_rows"])


def _last_rows(config: JobConfig, path: str, chunk_rows: int):
    data = config.data.model_copy(update={"path": path, "chunk_rows": chunk_rows})
    return load_weighted(data)[0]


def _file_row(i: int, path: Path, n: int, gm, seconds: float) -> dict:
    return {
        "iteration": i,
        "path": str(path),
        "file": path.name,
        "rows": int(n),
        "lower_bound": float(gm.lower_bound_),
        "seconds": round(seconds, 6),
    }


def _metrics(gm, rows: list[dict], seconds: float) -> dict:
    prev = None
    for r in rows:
        r["change"] = None if prev is None else r["lower_bound"] - prev
        prev = r["lower_bound"]
    return {
        "stream": True,
        "n_files": len(rows),
        "n_rows": sum(r["rows"] for r in rows),
        "n_iter": int(gm.n_iter_),
        "n_passes": int(gm.n_passes_),
        "converged": False,
        "lower_bound": float(gm.lower_bound_),
        "mean_log_likelihood": None,
        "bic": None,
        "aic": None,
        "fit_seconds": round(seconds, 6),
        "seconds_per_iteration": [r["seconds"] for r in rows],
        "iterations": rows,
    }
