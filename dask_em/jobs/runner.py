"""Run jobs: the only module that imports both the job config and the estimator.

:func:`run_job` takes a validated :class:`~dask_em.jobs.config.JobConfig`, connects to the
cluster, reads the data, fits (checkpointing after every iteration), and writes the run
folder atomically. :func:`predict_job`, :func:`plot_run`, :func:`model_info` and
:func:`make_data` back the other CLI commands. All of them raise
:class:`~dask_em.jobs.config.JobError` for bad input.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dask_em.data.folders import (
    MARKER,
    RunFolder,
    check_output_location,
    is_owned,
    write_marker,
)
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
    write_zarr,
    write_zarrs,
)
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
from dask_em.jobs.cluster import connect
from dask_em.jobs.config import (
    ClusterConfig,
    DataConfig,
    JobConfig,
    JobError,
    job_fingerprint,
    load_job,
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
    path : Path
        The run folder.
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
        candidates advance together); an exception it raises stops the run (the
        checkpoint stays resumable).

    Returns
    -------
    RunResult

    Raises
    ------
    JobError
        Bad input (config, data, cluster, existing output); the message names the job file.
    """
    try:
        return _run_job(config, resume=resume, overwrite=overwrite, on_iteration=on_iteration)
    except JobError as exc:
        raise exc.in_file(config.source) from exc.__cause__


def _run_folder(config: JobConfig, *, resume: bool, overwrite: bool) -> RunFolder:
    """The job's run folder, refused up front (before any cluster or pass over the data)
    where writing it could replace or delete an input or other files of the user's."""
    folder = RunFolder(config.output_dir, kind="run", overwrite=overwrite, resume=resume)
    inputs = [*config.data.input_files(), ("job file", config.source)]
    if resume:
        inputs.append(("checkpoint being resumed", folder.staging))
    check_output_location(folder.path, key="output.dir", inputs=inputs)
    folder.check()
    return folder


def _run_job(
    config: JobConfig, *, resume: bool, overwrite: bool, on_iteration: Callable | None
) -> RunResult:
    folder = _run_folder(config, resume=resume, overwrite=overwrite)
    staging = folder.prepare()
    fingerprint = job_fingerprint(config)
    out = config.output
    ok = False
    t_start = time.perf_counter()
    try:
        log.info("Job %s -> %s", config.job_name, folder.path)
        if config.cluster.kind == "local":
            # Fail on a missing file or column before starting a cluster. Not for remote
            # clusters: their workers may see paths this machine does not.
            check_data(config.data)
        with connect(config.cluster) as client:
            x, w = load_weighted(config.data)
            log.info(
                "Data: %s, %d rows x %d features, %s, %d chunk(s)",
                config.data.source,
                x.shape[0],
                x.shape[1],
                x.dtype,
                len(x.chunks[0]),
            )
            x, w = _place(x, w, config.model.persist, client)
            summary = data_summary(config.data, x)
            selection: list = []
            extra = {}
            if config.selection is not None:
                gm, metrics, selection, best_row = _run_selection(
                    config,
                    x,
                    staging,
                    resume=resume,
                    fingerprint=fingerprint,
                    hook=on_iteration,
                    w=w,
                )
                extra = {
                    "selection": {
                        "criterion": config.selection.criterion,
                        "best": best_row["label"],
                    }
                }
                atomic_write_json(
                    staging / "selection.json",
                    {
                        "criterion": config.selection.criterion,
                        "best": best_row,
                        "candidates": selection,
                    },
                )
            else:
                ckpt = folder.checkpoint if out.checkpoint else None
                gm, history, secs = _fit(
                    config.model.estimator_params(),
                    x,
                    checkpoint=ckpt,
                    resume=resume,
                    fingerprint=fingerprint,
                    hook=on_iteration,
                    sample_weight=w,
                    kind=config.model.kind,
                )
            stores = {}
            if out.labels:
                stores[staging / "labels.zarr"] = gm.predict(x)
            if out.probabilities:
                stores[staging / "probabilities.zarr"] = gm.predict_proba(x)
            if config.selection is None:
                # labels, probabilities and the score share one read of the data
                terms = write_zarrs(stores, overwrite=True, also=_score_terms(gm, x, w))
                scores = _scores(gm, x, terms, w)
                metrics = _metrics(gm, history, scores, secs, config.model.weight_threshold)
            else:
                write_zarrs(stores, overwrite=True)
            log.info(
                "Fitted: %d iteration(s), converged=%s, lower bound %.10g, BIC %.6g",
                metrics["n_iter"],
                metrics["converged"],
                metrics["lower_bound"] or math.nan,
                metrics["bic"] if metrics["bic"] is not None else math.nan,
            )
            _write_model(staging, gm, config, summary, extra)
            if out.plots:
                sample = _sample_rows(x, out.plot_sample)
                atomic_savez(staging / "sample.npz", {"sample": sample})
                crit = config.selection.criterion if config.selection else "bic"
                _draw_plots(staging, gm, metrics, sample, config.model.tol, selection, crit)
        metrics["total_seconds"] = round(time.perf_counter() - t_start, 6)
        atomic_write_json(staging / "metrics.json", metrics)
        path = folder.commit()
        ok = True
        log.info("Wrote %s", path)
        return RunResult(path, gm, metrics, selection)
    finally:
        if not ok:
            _keep_or_clean(folder)


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


def load_model(path: str | Path):
    """A fitted ``GaussianMixture`` or ``BayesianGaussianMixture`` from ``model.npz`` or a
    run folder holding one.

    Raises
    ------
    JobError
        Missing file, or arrays that are not a fitted model (object arrays are never
        unpickled).
    """
    from dask_em import BayesianGaussianMixture, GaussianMixture

    path = Path(path)
    if path.is_dir():
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
    model_path: Path,
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
        meta = (model_path if model_path.is_dir() else model_path.parent) / "model.json"
        if not meta.is_file():
            raise JobError(
                "give --data (no model.json with the training data next to the model)",
                key="--data",
            )
        raw = json.loads(meta.read_text())["config"]["data"]
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
        raise JobError(first["msg"].removeprefix("Value error, "), key=key) from None


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
    model = Path(model)
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
    and its advice for scikit-learn users) as bad input, with the advice for a job; None
    for any other error."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    if not first.startswith("Input X contains"):
        return None
    if "NaN" in first and missing == "error":
        first += (
            " The model was fitted with model.missing: error; impute or remove the missing "
            "values, or fit with model.missing: em to predict from the observed features."
        )
    return JobError(first, key="--data")


def plot_run(run_dir: str | Path) -> list[Path]:
    """Redraw a run folder's pictures from its ``model.npz``, metrics and saved sample."""
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
    path = Path(path)
    gm = load_model(path)
    metrics_file = (path if path.is_dir() else path.parent) / "metrics.json"
    m = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    info = _model_summary(gm, m.get("weight_threshold"))
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
