"""Run jobs: the only module that imports both the job config and the estimator.

:func:`run_job` takes a validated :class:`~dask_em.config.JobConfig`, connects to the
cluster, reads the data, fits (checkpointing after every iteration), and writes the run
folder atomically. :func:`predict_job`, :func:`plot_run`, :func:`model_info` and
:func:`make_data` back the other CLI commands. All of them raise
:class:`~dask_em.config.JobError` for bad input.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import platform
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dask_em._math import n_parameters as _n_parameters
from dask_em.cluster import connect
from dask_em.config import (
    ClusterConfig,
    DataConfig,
    JobConfig,
    JobError,
    job_fingerprint,
    load_job,
)
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
    atomic_write_bytes,
    atomic_write_json,
    load_npz,
    write_zarr,
    write_zarrs,
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

log = logging.getLogger("dask_em.runner")

_VERSIONED = (
    "dask-em",
    "numpy",
    "scipy",
    "dask",
    "distributed",
    "zarr",
    "h5py",
    "pandas",
    "pyarrow",
    "matplotlib",
    "pydantic",
)


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


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            if name == "dask-em":
                import dask_em

                out[name] = getattr(dask_em, "__version__", "unknown")
    return out


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf: write them as null."""
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------ fitting


def _estimator(params: dict):
    from dask_em import GaussianMixture

    return GaussianMixture(**params)


class _Progress:
    """The fit callback: terminal line, checkpoint, then the caller's hook.

    The checkpoint is written before the hook runs, so a hook that stops the fit (tests
    use an exception after iteration 3) leaves that iteration resumable.
    """

    def __init__(
        self,
        checkpoint: Path | None,
        fingerprint: str,
        label: str,
        history: dict[int, float],
        hook: Callable | None,
    ):
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.label = label
        self.history = history  # iteration -> seconds
        self.hook = hook

    def __call__(self, progress) -> None:
        self.history[int(progress.iteration)] = float(progress.seconds)
        # Report the starts this iteration moved (converged ones keep their old bound).
        moved = [c for c in progress.candidates if len(c.lower_bounds) == progress.iteration]
        started = moved or [c for c in progress.candidates if c.lower_bounds]
        best = max(started, key=lambda c: c.lower_bounds[-1])
        lb = best.lower_bounds[-1]
        change = lb - best.lower_bounds[-2] if len(best.lower_bounds) > 1 else float("nan")
        running = sum(bool(c.active) for c in progress.candidates)
        starts = (
            f"  {running}/{len(progress.candidates)} starts running"
            if len(progress.candidates) > 1
            else ""
        )
        log.info(
            "%siter %4d  lower bound %.10g  change %+.3e  %.3f s/iter%s",
            self.label,
            progress.iteration,
            lb,
            change,
            progress.seconds,
            starts,
        )
        if self.checkpoint is not None:
            arrays = {f"em_{k}": v for k, v in progress.to_arrays().items()}
            _write_checkpoint(self.checkpoint, arrays, self.fingerprint, self.history)
        if self.hook is not None:
            self.hook(progress)


def _write_checkpoint(path: Path, arrays: dict, fingerprint: str, history: dict) -> None:
    """Save a run's state with the job's fingerprint and the seconds of each iteration."""
    its = sorted(history)
    arrays["job_fingerprint"] = np.asarray(fingerprint)
    arrays["history_iteration"] = np.asarray(its, dtype=np.int64)
    arrays["history_seconds"] = np.asarray([history[i] for i in its])
    atomic_savez(path, arrays)


def _load_checkpoint(path: Path, fingerprint: str) -> dict:
    """The arrays of a checkpoint written for this job (its fingerprint), else JobError."""
    arrays = load_npz(path)
    if str(arrays.get("job_fingerprint", "")) != fingerprint:
        raise JobError(
            f"the checkpoint {path} was written for a different data/model configuration; "
            "run without --resume to start over",
            key="--resume",
        )
    return arrays


def _read_checkpoint(path: Path, fingerprint: str):
    from dask_em import EMProgress

    arrays = _load_checkpoint(path, fingerprint)
    progress = EMProgress.from_arrays({k[3:]: v for k, v in arrays.items() if k.startswith("em_")})
    history = dict(
        zip(arrays["history_iteration"].tolist(), arrays["history_seconds"].tolist(), strict=True)
    )
    return progress, history


def _fit(
    params: dict,
    x,
    *,
    checkpoint: Path | None,
    resume: bool,
    fingerprint: str,
    hook: Callable | None,
    label: str = "",
    sample_weight=None,
):
    gm = _estimator(params)
    progress, history = None, {}
    if resume and checkpoint is not None and checkpoint.is_file():
        progress, history = _read_checkpoint(checkpoint, fingerprint)
        log.info("%sresuming after iteration %d", label, progress.iteration)
    callback = _Progress(checkpoint, fingerprint, label, history, hook)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gm.fit(x, sample_weight=sample_weight, callback=callback, resume=progress)
        except ValueError as exc:
            raise _job_error(exc, params.get("missing", "error")) from exc
    for w in caught:
        if issubclass(w.category, UserWarning):
            log.warning("%s%s", label, w.message)
    return gm, history, time.perf_counter() - t0


# The initial-array parameter in the estimator's messages: "The parameter 'means' ...",
# "'full precision' should be ...", "Input weights_init contains NaN."
_INIT_ARRAY_NAMES = re.compile(
    r"parameter '(?:(weights)|(means))'|'(?:full|tied|diag|spherical) (precision)s?'"
    r"|Input (weights_init|means_init|precisions_init) "
)
_INIT_ARRAY_KEYS = {
    "weights": "weights_init",
    "means": "means_init",
    "precision": "precisions_init",
    **{name: name for name in ("weights_init", "means_init", "precisions_init")},
}


def _job_error(exc: ValueError, missing: str) -> JobError:
    """The estimator's input checks speak in terms of its parameters/data; attach the
    config section so the one-line message says where to fix it."""
    from dask_em import NonFiniteError

    message, key = str(exc), "model"
    if "sample_weight" in message:
        message, key = message.replace("sample_weight", "the weights"), "data.weights"
    elif match := _INIT_ARRAY_NAMES.search(message):
        # scikit-learn's messages name the initial arrays its own way ('means',
        # 'full precision', ...); the key says which setting of the job it is.
        key = "model." + _INIT_ARRAY_KEYS[next(name for name in match.groups() if name)]
    elif isinstance(exc, NonFiniteError) and exc.kind == "input" and missing == "error":
        message = message.rstrip().rstrip(".") + ", or set model.missing: em."
    return JobError(message, key=key)


def _maybe_persist(x, client, persist) -> Any:
    """Keep the data in cluster memory for the fit *and* the passes after it.

    Mirrors the estimator's ``persist='auto'`` rule (at most half the workers' memory),
    so scoring, labels and plots after the fit do not re-read or regenerate the data.
    """
    if persist is False:
        return x
    if persist == "auto":
        try:
            info = client.scheduler_info(n_workers=-1)
        except TypeError:  # distributed before n_workers= listed every worker anyway
            info = client.scheduler_info()
        limits = [w.get("memory_limit") or 0 for w in info.get("workers", {}).values()]
        if not limits or not all(limits) or x.nbytes > 0.5 * sum(limits):
            return x
    return client.persist(x)


def _sample_rows(x, size: int, seed: int = 0, max_blocks: int = 16) -> np.ndarray:
    """Up to ``size`` random rows (in data order) for the pictures.

    Rows come from at most ``max_blocks`` randomly chosen blocks, so a sample of data on
    disk reads a few blocks, not the whole data set (random rows would touch every block).
    """
    n = x.shape[0]
    if n <= size:
        return np.asarray(x.compute())
    rng = np.random.default_rng(seed)
    sizes = np.asarray(x.chunks[0])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    blocks = np.arange(len(sizes))
    if len(blocks) > max_blocks:
        blocks = np.sort(rng.choice(blocks, size=max_blocks, replace=False))
    pool = np.concatenate([np.arange(starts[b], starts[b] + sizes[b]) for b in blocks])
    idx = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))
    return np.asarray(x[idx].compute())


def _score_terms(gm, x, w=None) -> tuple:
    """Lazy terms of one scoring pass: ``(mean log-likelihood,)`` without weights, else
    ``(weighted log-likelihood, total weight)``; pass their values to :func:`_scores`."""
    s = gm.score_samples(x)
    return (s.mean(),) if w is None else ((w * s).sum(), w.sum())


def _scores(gm, x, terms: tuple | None = None, w=None) -> dict[str, Any]:
    """BIC and AIC from one scoring pass (the estimator's bic/aic would take one each).

    ``terms``, if given, are the computed values of :func:`_score_terms` (e.g. computed
    together with the labels, in the same read of the data). With row weights ``w`` the
    log-likelihood is weighted and n is the total weight, as in ``gm.bic(x, w)``.
    """
    import dask

    n, d = x.shape
    if terms is None:
        terms = dask.compute(*_score_terms(gm, x, w))
    if w is None:
        (mean_ll,) = terms
        loglik, total = float(mean_ll) * n, float(n)
    else:
        loglik, total = float(terms[0]), float(terms[1])
        mean_ll = loglik / total
    p = _n_parameters(gm.covariance_type, gm.n_components, d)
    return {
        "n_samples": int(n),
        "total_weight": _finite(total),
        "n_parameters": int(p),
        "mean_log_likelihood": _finite(mean_ll),
        "bic": _finite(-2 * loglik + p * math.log(total)),
        "aic": _finite(-2 * loglik + 2 * p),
    }


def _metrics(gm, history: dict[int, float], scores: dict, fit_seconds: float) -> dict:
    rows, prev = [], None
    for i, lb in enumerate(gm.lower_bounds_, start=1):
        rows.append(
            {
                "iteration": i,
                "lower_bound": _finite(lb),
                "change": None if prev is None else _finite(lb - prev),
                "seconds": history.get(i),
            }
        )
        prev = lb
    state = getattr(gm, "fit_state_", None)
    candidates = []
    if state is not None:
        candidates = [
            {
                "index": int(c.index),
                "n_iter": len(c.lower_bounds),
                "lower_bound": _finite(c.lower_bounds[-1]) if c.lower_bounds else None,
                "converged": bool(c.converged),
            }
            for c in state.candidates
        ]
    return {
        "n_iter": int(gm.n_iter_),
        "converged": bool(gm.converged_),
        "lower_bound": _finite(gm.lower_bound_),
        **scores,
        "n_rows_skipped": int(getattr(gm, "n_rows_skipped_", 0) or 0),
        "fit_seconds": round(fit_seconds, 6),
        "seconds_per_iteration": [r["seconds"] for r in rows],
        "iterations": rows,
        "candidates": candidates,
    }


def _model_summary(gm) -> dict:
    k, d = gm.means_.shape
    out = {
        "n_components": int(k),
        "n_features": int(d),
        "covariance_type": gm.covariance_type,
        "converged": bool(gm.converged_),
        "n_iter": int(gm.n_iter_),
        "lower_bound": _finite(gm.lower_bound_),
        "weights": [float(w) for w in gm.weights_],
    }
    if k * d <= 4096:  # keep model.json readable; model.npz has everything
        out["means"] = np.asarray(gm.means_).tolist()
    return out


def _write_model(
    folder: Path, gm, config: JobConfig | None, data: dict | None, extra: dict | None = None
) -> None:
    atomic_savez(folder / "model.npz", gm.fitted_arrays())
    doc = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_summary(gm),
        "data": data,
        "versions": _versions(),
    }
    if config is not None:
        doc["job"] = {
            "name": config.job_name,
            "file": None if config.source is None else str(config.source),
        }
        doc["config"] = config.model_dump(mode="json")
    if extra:
        doc.update(extra)
    atomic_write_json(folder / "model.json", doc)


def _draw_plots(
    folder: Path,
    gm,
    metrics: dict,
    sample: np.ndarray | None,
    tol: float | None,
    selection: list | None = None,
    criterion: str = "bic",
) -> list[Path]:
    from dask_em import plots

    written = []
    plot_dir = folder / "plots"
    if metrics.get("iterations"):
        written.append(
            atomic_write_bytes(
                plot_dir / "lower_bound.png", plots.plot_lower_bound(metrics["iterations"], tol)
            )
        )
    if sample is not None and len(sample):
        name = {1: "density.png", 2: "density.png"}.get(sample.shape[1], "pca.png")
        written.append(atomic_write_bytes(plot_dir / name, plots.plot_data(gm, sample)))
    # candidates that failed have no criterion to plot
    scored = [r for r in selection or () if r.get(criterion) is not None]
    if scored:
        written.append(
            atomic_write_bytes(plot_dir / "selection.png", plots.plot_selection(scored, criterion))
        )
    return written


def _combos(config: JobConfig) -> list[tuple[str, dict]]:
    base = config.model.estimator_params()
    sel = config.selection
    types = sel.covariance_type or [config.model.covariance_type]
    return [
        (f"{t}-k{k}", {**base, "n_components": k, "covariance_type": t})
        for t in types
        for k in sel.n_components
    ]


class _GridProgress:
    """The model-selection callback: terminal line, checkpoint of the whole grid, then
    the caller's hook (with the grid's ``EMProgress``).

    As :class:`_Progress`, the checkpoint is written before the hook runs, so a hook that
    stops the run leaves that iteration resumable.
    """

    def __init__(
        self,
        checkpoint: Path | None,
        fingerprint: str,
        labels: list[str],
        history: dict[int, float],
        hook: Callable | None,
    ):
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint
        self.labels = labels
        self.history = history  # iteration -> seconds of the grid's shared pass
        self.hook = hook

    def __call__(self, state) -> None:
        progress = state.progress
        self.history[int(progress.iteration)] = float(progress.seconds)
        starts = [
            (j, c) for j, c in enumerate(progress.candidates) if j not in state.failed_starts
        ]
        # Report the starts this iteration moved (converged ones keep their old bound).
        moved = [(j, c) for j, c in starts if len(c.lower_bounds) == progress.iteration]
        started = moved or [(j, c) for j, c in starts if c.lower_bounds]
        live = {state.owner[j] for j, c in starts if c.active}
        if started:
            j, best = max(started, key=lambda jc: jc[1].lower_bounds[-1])
            best_text = f"{best.lower_bounds[-1]:.10g} [{self.labels[state.owner[j]]}]"
        else:
            best_text = "none"
        log.info(
            "iter %4d  %d/%d candidates running  best lower bound %s  %.3f s/iter",
            progress.iteration,
            len(live),
            len(self.labels),
            best_text,
            progress.seconds,
        )
        if self.checkpoint is not None:
            _write_checkpoint(self.checkpoint, state.to_arrays(), self.fingerprint, self.history)
        if self.hook is not None:
            self.hook(progress)


def _read_selection_checkpoint(path: Path, fingerprint: str):
    from dask_em.selection import SelectionProgress

    arrays = _load_checkpoint(path, fingerprint)
    try:
        state = SelectionProgress.from_arrays(arrays)
    except ValueError as exc:
        raise JobError(
            f"the checkpoint {path} is not a model-selection checkpoint ({exc}); "
            "run without --resume to start over",
            key="--resume",
        ) from None
    history = dict(
        zip(arrays["history_iteration"].tolist(), arrays["history_seconds"].tolist(), strict=True)
    )
    return state, history


def _table_scores(row: dict, n_rows: int, total: float) -> dict[str, Any]:
    """:func:`_scores`' keys from a row of the selection table (its criteria come from
    select_model's one shared scoring pass, so no candidate needs a pass of its own)."""
    loglik = row["log_likelihood"]
    return {
        "n_samples": int(n_rows),
        "total_weight": _finite(total),
        "n_parameters": int(row["n_parameters"]),
        "mean_log_likelihood": _finite(loglik / total),
        "bic": _finite(row["bic"]),
        "aic": _finite(row["aic"]),
    }


def _selection_params(config: JobConfig) -> dict[str, Any]:
    """The model section as :func:`dask_em.select_model` keywords.

    Every estimator setting that ``select_model`` accepts is passed on; one it does not
    know is refused unless it has its default, so no setting is silently dropped.
    """
    import inspect

    from dask_em.config import ModelConfig
    from dask_em.selection import select_model

    accepted = inspect.signature(select_model).parameters
    grid = ("n_components", "covariance_type")  # the grid's, from the selection section
    out = {}
    for name, value in config.model.estimator_params().items():
        if name in grid:
            continue
        if name in accepted:
            out[name] = value
        elif value is not None and value != ModelConfig.model_fields[name].default:
            raise JobError(
                f"model.{name} is not supported with a 'selection' section", key=f"model.{name}"
            )
    return out


def _run_selection(
    config: JobConfig,
    x,
    staging: Path,
    *,
    resume: bool,
    fingerprint: str,
    hook: Callable | None,
    w=None,
):
    """Fit the whole grid with :func:`dask_em.select_model`: one pass over the data per
    EM iteration for every candidate together, one checkpoint of the grid per iteration
    (``checkpoints/selection.npz``), one shared scoring pass at the end."""
    from dask_em.selection import select_model

    sel = config.selection
    crit = sel.criterion
    combos = _combos(config)
    labels = [label for label, _ in combos]
    missing = config.model.missing
    settings = _selection_params(config)
    types = list(dict.fromkeys(p["covariance_type"] for _, p in combos))
    ckpt = staging / "checkpoints" / "selection.npz" if config.output.checkpoint else None
    state, history = None, {}
    if resume and ckpt is not None and ckpt.is_file():
        state, history = _read_selection_checkpoint(ckpt, fingerprint)
        log.info(
            "resuming the selection of %d candidates after iteration %d",
            len(combos),
            state.iteration,
        )
    callback = _GridProgress(ckpt, fingerprint, labels, history, hook)
    log.info("Model selection: %d candidates fitted together (%s)", len(combos), ", ".join(labels))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = select_model(
                x,
                list(sel.n_components),
                types,
                criterion=crit,
                sample_weight=w,
                callback=callback,
                resume=state,
                **settings,
            )
        except ValueError as exc:
            raise _job_error(exc, missing) from exc
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            log.warning("%s", warning.message)
    # Every candidate shared the passes: its fit time is the grid's.
    secs = time.perf_counter() - t0

    rows, fitted = [], []
    n_rows = int(x.shape[0])
    for (label, p), trow, gm in zip(combos, result.table, result.models, strict=True):
        assert (trow["n_components"], trow["covariance_type"]) == (
            p["n_components"],
            p["covariance_type"],
        )
        cand_dir = staging / "candidates" / label
        if gm is None:
            metrics = {
                "error": trow["error"],
                "n_iter": 0,
                "converged": False,
                "lower_bound": None,
                **_table_scores(trow, n_rows, result.n_samples),
            }
            log.warning("[%s] failed: %s", label, trow["error"])
        else:
            metrics = _metrics(gm, history, _table_scores(trow, n_rows, result.n_samples), secs)
            atomic_savez(cand_dir / "model.npz", gm.fitted_arrays())
        atomic_write_json(cand_dir / "metrics.json", metrics)
        row = {
            "label": label,
            "n_components": p["n_components"],
            "covariance_type": p["covariance_type"],
            "bic": metrics["bic"],
            "aic": metrics["aic"],
            "lower_bound": metrics["lower_bound"],
            "n_iter": metrics["n_iter"],
            "converged": metrics["converged"],
        }
        rows.append(row)
        fitted.append((gm, metrics))
        log.info(
            "[%s] %s %s",
            label,
            crit.upper(),
            f"{row[crit]:.6g}" if row[crit] is not None else "n/a",
        )
    i = result.best_index
    gm, metrics = fitted[i]
    log.info("Best by %s: %s", crit.upper(), rows[i]["label"])
    return gm, metrics, rows, rows[i]


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
        A validated job (see :func:`dask_em.config.load_job`).
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
            x = _maybe_persist(x, client, config.model.persist)
            if w is not None:
                w = _maybe_persist(w, client, config.model.persist)
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
                )
            stores = {}
            if out.labels:
                stores[staging / "labels.zarr"] = gm.predict(x)
            if out.probabilities:
                stores[staging / "probabilities.zarr"] = gm.predict_proba(x)
            if config.selection is None:
                # labels, probabilities and the score share one read of the data
                terms = write_zarrs(stores, overwrite=True, also=_score_terms(gm, x, w))
                metrics = _metrics(gm, history, _scores(gm, x, terms, w), secs)
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
    """A fitted ``GaussianMixture`` from ``model.npz`` or a run folder holding one.

    Raises
    ------
    JobError
        Missing file, or arrays that are not a fitted model (object arrays are never
        unpickled).
    """
    from dask_em import GaussianMixture

    path = Path(path)
    if path.is_dir():
        path = path / "model.npz"
    arrays = load_npz(path)
    try:
        return GaussianMixture.from_fitted_arrays(arrays)
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
    info = _model_summary(gm)
    info["file"] = str(path / "model.npz" if path.is_dir() else path)
    params = gm.get_params()
    info["parameters"] = {
        k: params[k]
        for k in ("tol", "reg_covar", "max_iter", "n_init", "init_params", "random_state")
    }
    metrics = (path if path.is_dir() else path.parent) / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
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
