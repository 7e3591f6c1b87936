"""Run jobs: the only module that imports both the job config and the estimator.

:func:`run_job` takes a validated :class:`~dask_em.jobs.config.JobConfig`, connects to the
cluster, reads the data, fits (checkpointing after every iteration), and writes the run
folder atomically. :func:`predict_job`, :func:`plot_run`, :func:`model_info` and
:func:`make_data` back the other CLI commands. All of them raise
:class:`~dask_em.jobs.config.JobError` for bad input.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dask_em.data.base import is_url
from dask_em.data.folders import (
    MARKER,
    RunFolder,
    check_output_location,
    is_owned,
    read_marker,
    write_marker,
)
from dask_em.data.remote import read_finished_file
from dask_em.data.sources import (
    check_data,
    data_summary,
    load_data,
    load_weighted,
    source_for_suffix,
    suffixes,
    untag_error,
)
from dask_em.data.synthetic import synthetic_array
from dask_em.data.writers import (
    atomic_savez,
    atomic_write_json,
    load_npz,
    load_npz_bytes,
    write_zarr,
    write_zarrs,
)
from dask_em.jobs._blocks import sized_for_cluster
from dask_em.jobs._fit import _fit
from dask_em.jobs._outputs import (
    _draw_plots,
    _metrics,
    _model_summary,
    _sample_rows,
    _score_terms,
    _scores,
    _versions,
    _write_model,
)
from dask_em.jobs._selection import _run_selection
from dask_em.jobs.cluster import connect, use_client
from dask_em.jobs.config import (
    ClusterConfig,
    DataConfig,
    JobConfig,
    JobError,
    job_fingerprint,
    load_job,
    validator_message,
)

__all__ = [
    "RunResult",
    "data_config_for",
    "load_model",
    "make_data",
    "model_info",
    "plot_run",
    "predict_job",
    "run_job",
]

log = logging.getLogger("dask_em.jobs.runner")


@dataclass
class RunResult:
    """What :func:`run_job` produced.

    Attributes
    ----------
    path : Path or str
        The run folder (a str for an fsspec URL ``output.dir``).
    model : GaussianMixture
        The fitted (best, in model selection) model.
    metrics : dict
        The content of ``metrics.json``.
    selection : list of dict
        One row per candidate model (empty without a ``selection`` section).
    """

    path: Path
    model: Any
    metrics: dict
    selection: list = field(default_factory=list)


def _place(x, w, persist, client):
    """The data and weights kept in cluster memory for the fit *and* the passes after it
    (scores, labels, plots), by the estimators' own placement rule."""
    from dask_em.mixture._base import place_data

    x = place_data(x, persist, from_numpy=False, client=client)
    if w is not None:
        w = place_data(w, persist, from_numpy=False, client=client)
    return x, w


def run_job(
    config: JobConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_iteration: Callable | None = None,
    client=None,
) -> RunResult:
    """Run a job end to end and write its run folder.

    Parameters
    ----------
    config : JobConfig
        A validated job (see :func:`dask_em.jobs.config.load_job`).
    resume : bool
        Continue an unfinished run of the same job from its last checkpoint.
    overwrite : bool
        Replace an existing run folder.
    on_iteration : callable, optional
        Called with the estimator's ``EMProgress`` after each iteration's checkpoint is
        written (with a ``selection`` section: the ``EMProgress`` of the whole grid, whose
        candidates advance together; with a ``stream`` section: the estimator, after
        each file); an exception it raises stops the run (the checkpoint stays
        resumable).
    client : distributed.Client, optional
        Run on this connected client instead of the cluster ``config.cluster`` describes
        (the driver of a submitted job runs on its worker's client).

    Returns
    -------
    RunResult

    Raises
    ------
    JobError
        Bad input (config, data, cluster, existing output); the message names the job file.
    """
    run = _run_job
    if config.output.dir is not None and is_url(config.output.dir):
        # through a local scratch folder, published at the URL at the end
        from dask_em.jobs._url_runs import run_at_url as run
    try:
        return run(
            config, resume=resume, overwrite=overwrite, on_iteration=on_iteration, client=client
        )
    except JobError as exc:
        raise exc.in_file(config.source) from exc.__cause__


def _run_folder(config: JobConfig, *, resume: bool, overwrite: bool) -> RunFolder:
    """The job's run folder, refused up front (before any cluster or pass over the data)
    where writing it could replace or delete an input or other files of the user's."""
    folder = RunFolder(config.output_dir, kind="run", overwrite=overwrite, resume=resume)
    inputs = [*config.data.input_files(), ("job file", config.source)]
    if config.stream is not None:
        _check_stream_output(config.data.path, folder.path)
    if resume:
        inputs.append(("checkpoint being resumed", folder.staging))
    check_output_location(folder.path, key="output.dir", inputs=inputs)
    folder.check()
    return folder


def _check_stream_output(pattern: str, out: Path) -> None:
    """Refuse a run folder where the stream's glob looks: files arriving later are inputs
    too, and the run folder (or its staging sibling) must never be listed as one."""
    parts = Path(pattern).expanduser().parts
    fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), parts))
    if len(fixed) == len(parts):
        return  # one named file, already checked as an input
    root = Path(*fixed).resolve() if fixed else Path.cwd()
    out = out.expanduser().resolve()
    depth = len(parts) - len(fixed)  # levels below ``root`` the glob can reach
    if out.is_relative_to(root):
        below = len(out.relative_to(root).parts)
        if "**" in parts or below <= depth:
            raise JobError(
                f"the run folder {out} is where the stream's glob {pattern} looks for new "
                "files; choose an output.dir outside it",
                key="output.dir",
            )


@dataclass
class _Fitted:
    """What a job's fit hands on to the outputs: the model to write and its metrics."""

    gm: Any
    metrics: dict
    selection: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _label_stores(config: JobConfig, staging: Path, gm, x) -> dict:
    """The lazy labels and probabilities the output section asks for, by zarr path."""
    stores = {}
    if config.output.labels:
        stores[staging / "labels.zarr"] = gm.predict(x)
    if config.output.probabilities:
        stores[staging / "probabilities.zarr"] = gm.predict_proba(x)
    return stores


def _fit_single(config: JobConfig, x, w, folder: RunFolder, **kw) -> _Fitted:
    """One estimator; its labels, probabilities and score in one read of the data."""
    ckpt = folder.checkpoint if config.output.checkpoint else None
    model = config.model
    gm, history, secs = _fit(
        model.estimator_params(), x, checkpoint=ckpt, sample_weight=w, kind=model.kind, **kw
    )
    stores = _label_stores(config, folder.staging, gm, x)
    terms = write_zarrs(stores, overwrite=True, also=_score_terms(gm, x, w))
    scores = _scores(gm, x, terms, w)
    return _Fitted(gm, _metrics(gm, history, scores, secs, model.weight_threshold))


def _fit_grid(config: JobConfig, x, w, folder: RunFolder, **kw) -> _Fitted:
    """The selection grid (scored in its own shared pass); the best model's outputs."""
    staging = folder.staging
    gm, metrics, selection, best_row = _run_selection(config, x, staging, w=w, **kw)
    crit = config.selection.criterion
    atomic_write_json(
        staging / "selection.json", {"criterion": crit, "best": best_row, "candidates": selection}
    )
    write_zarrs(_label_stores(config, staging, gm, x), overwrite=True)
    extra = {"selection": {"criterion": crit, "best": best_row["label"]}}
    return _Fitted(gm, metrics, selection, extra)


def _load(config: JobConfig, client):
    """The job's data config (blocks sized for the cluster unless ``data.chunk_rows`` is
    set), rows and weights, kept in cluster memory per ``model.persist``."""
    data = sized_for_cluster(config.data, config.model, client)
    x, w = load_weighted(data)
    log.info(
        "Data: %s, %d rows x %d features, %s, %d chunk(s)",
        data.source,
        x.shape[0],
        x.shape[1],
        x.dtype,
        len(x.chunks[0]),
    )
    x, w = _place(x, w, config.model.persist, client)
    return data, x, w


def _write_outputs(config: JobConfig, staging: Path, fitted: _Fitted, x, summary) -> None:
    """model.npz/model.json and, if asked for, the pictures (metrics.json comes last)."""
    metrics = fitted.metrics
    if metrics.get("stream"):
        log.info(
            "Fitted: %d file(s), %d rows; the last file's mean log-likelihood %.10g",
            metrics["n_files"],
            metrics["n_rows"],
            metrics["lower_bound"],
        )
    else:
        _log_fitted(metrics)
    _write_model(staging, fitted.gm, config, summary, fitted.extra)
    if config.output.plots:
        sample = _sample_rows(x, config.output.plot_sample)
        atomic_savez(staging / "sample.npz", {"sample": sample})
        crit = config.selection.criterion if config.selection else "bic"
        _draw_plots(staging, fitted.gm, metrics, sample, config.model.tol, fitted.selection, crit)


def _log_fitted(metrics: dict) -> None:
    log.info(
        "Fitted: %d iteration(s), converged=%s, lower bound %.10g, BIC %.6g",
        metrics["n_iter"],
        metrics["converged"],
        metrics["lower_bound"] or math.nan,
        metrics["bic"] if metrics["bic"] is not None else math.nan,
    )


def _run_job(
    config: JobConfig, *, resume: bool, overwrite: bool, on_iteration: Callable | None, client
) -> RunResult:
    folder = _run_folder(config, resume=resume, overwrite=overwrite)
    staging = folder.prepare()
    fit = _fit_grid if config.selection is not None else _fit_single
    ok = False
    t_start = time.perf_counter()
    try:
        log.info("Job %s -> %s", config.job_name, folder.path)
        if config.cluster.kind == "local" and config.stream is None:
            # Fail on a missing file or column before starting a cluster. Not for remote
            # clusters: their workers may see paths this machine does not.
            check_data(config.data)
        cluster = connect(config.cluster) if client is None else use_client(client)
        with cluster as client:
            if config.stream is not None:
                fitted, x, summary = _fit_stream(config, client, folder, resume, on_iteration)
            else:
                data, x, w = _load(config, client)
                summary = data_summary(data, x)
                fitted = fit(
                    config,
                    x,
                    w,
                    folder,
                    resume=resume,
                    fingerprint=job_fingerprint(config),
                    hook=on_iteration,
                )
            _write_outputs(config, staging, fitted, x, summary)
        result = _finish(config, folder, fitted, t_start)
        ok = True
        return result
    finally:
        if not ok:
            _keep_or_clean(folder)


def _finish(config: JobConfig, folder: RunFolder, fitted: _Fitted, t_start: float) -> RunResult:
    """metrics.json last, then the staging folder renamed into place."""
    metrics = fitted.metrics
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 6)
    atomic_write_json(folder.staging / "metrics.json", metrics)
    path = folder.commit()
    log.info("Wrote %s", path)
    return RunResult(path, fitted.gm, metrics, fitted.selection)


def _fit_stream(config: JobConfig, client, folder: RunFolder, resume: bool, hook):
    """``partial_fit`` over the files as they arrive: ``(fitted, last file's rows, the
    data summary)``."""
    from dask_em.jobs._stream import fit_stream

    sf = fit_stream(
        config,
        client,
        checkpoint=folder.checkpoint if config.output.checkpoint else None,
        resume=resume,
        fingerprint=job_fingerprint(config),
        on_file=None if hook is None else (lambda path, gm: hook(gm)),
    )
    summary = {
        "source": config.data.source,
        "path": config.data.path,
        "stream": {"files": sf.files, "n_rows": sf.metrics["n_rows"]},
        "n_features": int(sf.gm.n_features_in_),
    }
    return _Fitted(sf.gm, sf.metrics), sf.last_rows, summary


def _keep_or_clean(folder: RunFolder) -> None:
    """After a failure: keep the staging folder if it holds a checkpoint, else remove it."""
    staging = folder.staging
    if not staging.exists():
        return
    has_ckpt = (
        folder.checkpoint.is_file()
        or any((staging / "checkpoints").glob("*.npz"))
        or any((staging / "candidates").glob("*/model.npz"))
    )
    if has_ckpt:
        log.warning("Run stopped; its checkpoint is kept in %s (rerun with --resume)", staging)
    else:
        folder.discard()


# ---------------------------------------------------------------------------- other commands


def _finished_run(folder: Path) -> None:
    """Refuse a folder without a complete run marker (unfinished, or not dask-em's)."""
    doc = read_marker(folder)
    if doc is None or doc["kind"] != "run" or not doc.get("complete"):
        raise JobError(
            f"not a dask-em run folder, or an unfinished one (no complete {MARKER} marker)",
            file=folder,
        )


def _url_parts(url: str) -> tuple[str, str]:
    """``(run folder URL, file name)`` of a run folder or ``.../model.npz`` URL."""
    url = url.rstrip("/")
    if url.endswith(".npz"):
        folder, _, name = url.rpartition("/")
        return folder, name
    return url, "model.npz"


def _run_file_text(model: str | Path, name: str) -> str | None:
    """The text of ``name`` next to a model (in its run folder), None if there is none."""
    if is_url(str(model)):
        folder, _ = _url_parts(str(model))
        try:
            return read_finished_file(folder, name).decode("utf-8")
        except JobError:
            return None
    model = Path(model)
    path = (model if model.is_dir() else model.parent) / name
    return path.read_text() if path.is_file() else None


def load_model(path: str | Path):
    """A fitted ``GaussianMixture`` or ``BayesianGaussianMixture`` from ``model.npz`` or a
    finished run folder holding one (a local path or an fsspec URL).

    Raises
    ------
    JobError
        Missing file, a folder without a complete run marker, or arrays that are not a
        fitted model (object arrays are never unpickled).
    """
    from dask_em import BayesianGaussianMixture, GaussianMixture

    if is_url(str(path)):
        folder, name = _url_parts(str(path))
        path = f"{folder}/{name}"
        arrays = load_npz_bytes(read_finished_file(folder, name), file=path)
    else:
        path = Path(path)
        if path.is_dir():
            _finished_run(path)
            path = path / "model.npz"
        arrays = load_npz(path)
    cls = BayesianGaussianMixture if "weight_concentration" in arrays else GaussianMixture
    try:
        return cls.from_fitted_arrays(arrays)
    except (KeyError, ValueError, TypeError) as exc:
        raise JobError(f"not a dask-em model file ({exc})", file=path) from None


def data_config_for(
    data: str | Path | None,
    *,
    model_path: str | Path,
    dataset: str | None = None,
    columns: list[str] | None = None,
    chunk_rows: int | None = None,
) -> DataConfig:
    """The data to predict on: a file (kind from its suffix), a job file's data section, or,
    with ``data=None``, the data section recorded in the run folder's ``model.json``.

    Raises
    ------
    JobError
    """
    if data is None:
        meta = _run_file_text(model_path, "model.json")
        if meta is None:
            raise JobError(
                "give --data (no model.json with the training data next to the model)",
                key="--data",
            )
        raw = json.loads(meta)["config"]["data"]
    elif str(data).endswith((".yaml", ".yml")):
        raw = load_job(data).data.model_dump()
    else:
        source = source_for_suffix(data)
        if source is None:
            raise JobError(
                f"cannot tell the format of {data} from its suffix (use one of "
                f"{', '.join(sorted(suffixes()))}, or a job .yaml)",
                key="--data",
            )
        raw = {"source": source, "path": str(data)}
    if dataset is not None:
        raw["dataset"] = dataset
    if columns is not None:
        raw["columns"] = columns
    if chunk_rows is not None:
        raw["chunk_rows"] = chunk_rows
    from pydantic import ValidationError

    try:
        return DataConfig.model_validate(raw)
    except ValidationError as exc:
        first = untag_error(exc.errors(include_url=False)[0])
        key = ".".join(str(p) for p in ("data", *first["loc"]))
        raise JobError(validator_message(first), key=key) from None


def predict_job(
    model: str | Path,
    data: DataConfig,
    output: str | Path,
    *,
    cluster: ClusterConfig | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write predicted labels (and optionally probabilities) of ``data`` as zarr.

    The output folder gets ``labels.zarr``, optionally ``probabilities.zarr``, and
    ``predict.json`` (model, data, per-component counts); it appears complete or not at all.

    Returns
    -------
    Path
        The output folder.
    """
    model = model if is_url(str(model)) else Path(model)
    folder = RunFolder(output, kind="prediction", overwrite=overwrite, key="--output")
    inputs = [("model", model), *data.input_files()]
    check_output_location(folder.path, key="--output", inputs=inputs)
    folder.check()
    gm = load_model(model)
    staging = folder.prepare()
    ok = False
    try:
        with connect(cluster or ClusterConfig()):
            x = load_data(data)
            if x.shape[1] != gm.n_features_in_:
                raise JobError(
                    f"the data has {x.shape[1]} feature(s) but the model was fitted "
                    f"on {gm.n_features_in_}",
                    key="--data",
                )
            import dask.array as da

            labels = gm.predict(x)
            stores = {staging / "labels.zarr": labels}
            if probabilities:
                stores[staging / "probabilities.zarr"] = gm.predict_proba(x)
            # one read of the data for the stores and the counts
            try:
                (counts,) = write_zarrs(
                    stores, overwrite=True, also=(da.bincount(labels, minlength=gm.n_components),)
                )
            except ValueError as exc:
                error = _non_finite_at_predict(exc, gm.missing)
                if error is None:
                    raise
                raise error from exc
            atomic_write_json(
                staging / "predict.json",
                {
                    "model": str(model),
                    "data": data.model_dump(mode="json"),
                    "n_rows": int(x.shape[0]),
                    "counts": counts.tolist(),
                    "probabilities": probabilities,
                    "versions": _versions(),
                },
            )
        path = folder.commit()
        ok = True
        log.info("Wrote %s (%d rows)", path, x.shape[0])
        return path
    finally:
        if not ok:
            folder.discard()


def _non_finite_at_predict(exc: ValueError, missing: str) -> JobError | None:
    """The estimator's check of each block's values (scikit-learn's "Input X contains NaN."
    and its advice for scikit-learn users, raised as a NonFiniteError of kind 'input') as
    bad input, with the advice for a job; None for any other error."""
    from dask_em import NonFiniteError

    if not isinstance(exc, NonFiniteError) or exc.kind != "input":
        return None
    first = str(exc).splitlines()[0] if str(exc) else ""
    if exc.value is not None and math.isnan(exc.value) and missing == "error":
        first += (
            " The model was fitted with model.missing: error; impute or remove the missing "
            "values, or fit with model.missing: em to predict from the observed features."
        )
    return JobError(first, key="--data")


def plot_run(run_dir: str | Path) -> list[Path]:
    """Redraw a run folder's pictures from its ``model.npz``, metrics and saved sample."""
    if is_url(str(run_dir)):
        raise JobError(
            "plot redraws the pictures of a local run folder; copy the run folder here "
            "first (its pictures are already in it: plots/)",
            file=run_dir,
        )
    run = Path(run_dir)
    gm = load_model(run)
    if not is_owned(run, "run"):
        # its pictures are rewritten in place: only in a folder dask-em wrote as a run
        raise JobError(f"not a dask-em run folder (no {MARKER} marker)", file=run)
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    sample_file = run / "sample.npz"
    sample = load_npz(sample_file)["sample"] if sample_file.is_file() else None
    meta = run / "model.json"
    tol, selection, crit = None, None, "bic"
    if meta.is_file():
        cfg = json.loads(meta.read_text()).get("config") or {}
        tol = (cfg.get("model") or {}).get("tol")
    sel_file = run / "selection.json"
    if sel_file.is_file():
        sel = json.loads(sel_file.read_text())
        selection, crit = sel["candidates"], sel["criterion"]
    written = _draw_plots(run, gm, metrics, sample, tol, selection, crit)
    write_marker(run, "run", complete=True)  # its list of files includes the new pictures
    return written


def model_info(path: str | Path) -> dict:
    """Summary of a fitted model file or run folder (what ``dask-em info`` prints)."""
    gm = load_model(path)
    metrics = _run_file_text(path, "metrics.json")
    m = json.loads(metrics) if metrics is not None else {}
    info = _model_summary(gm, m.get("weight_threshold"))
    if is_url(str(path)):
        info["file"] = "/".join(_url_parts(str(path)))
    else:
        path = Path(path)
        info["file"] = str(path / "model.npz" if path.is_dir() else path)
    params = gm.get_params()
    info["parameters"] = {
        k: params[k]
        for k in ("tol", "reg_covar", "max_iter", "n_init", "init_params", "random_state")
    }
    if m:
        info.update({k: m.get(k) for k in ("bic", "aic", "n_samples")})
    return info


def make_data(config: JobConfig, *, overwrite: bool = False) -> Path:
    """Write the synthetic data a zarr job describes (``data.synthetic``) to ``data.path``.

    Blocks are generated on the cluster and streamed to disk, so the data may be larger
    than memory.

    Raises
    ------
    JobError
        The job's data is not ``source: zarr`` with a ``synthetic`` spec, or the target
        exists without ``overwrite``.
    """
    try:
        data = config.data
        if data.source != "zarr" or data.synthetic is None:
            raise JobError(
                "make-data needs data.source: zarr and a data.synthetic spec", key="data"
            )
        local = "://" not in data.path
        if local:
            inputs = [("job file", config.source)]
            check_output_location(data.path, key="data.path", inputs=inputs)
        if local and (Path(data.path).exists() or Path(data.path).is_symlink()):
            if not overwrite:
                raise JobError(
                    f"{data.path} already exists; pass --overwrite to replace it",
                    key="data.path",
                )
            if not is_owned(data.path, "zarr"):
                raise JobError(
                    f"{data.path} exists but was not written by dask-em (no {MARKER} "
                    "marker); it is never replaced: choose another data.path, or move it "
                    "away yourself",
                    key="data.path",
                )
        with connect(config.cluster):
            x = synthetic_array(data.synthetic, data.chunk_rows, data.dtype)
            log.info(
                "Writing %d x %d %s (%.3g GB) to %s",
                x.shape[0],
                x.shape[1],
                x.dtype,
                x.nbytes / 1e9,
                data.path,
            )
            t0 = time.perf_counter()
            path = write_zarr(x, data.path, overwrite=overwrite)
            log.info("Wrote %s in %.1f s", path, time.perf_counter() - t0)
        return path
    except JobError as exc:
        raise exc.in_file(config.source) from None
