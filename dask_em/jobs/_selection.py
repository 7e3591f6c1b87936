"""A job's ``selection`` section: the grid of candidates fitted by
:func:`dask_em.select_model` in shared passes, their metrics and files."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_em.data.writers import (
    atomic_savez,
    atomic_write_json,
)
from dask_em.jobs._checkpoints import _GridProgress, _read_selection_checkpoint
from dask_em.jobs._fit import _job_error
from dask_em.jobs._outputs import _metrics, _table_scores
from dask_em.jobs.config import (
    JobConfig,
    JobError,
)

log = logging.getLogger("dask_em.jobs.runner")


def _combos(config: JobConfig) -> list[tuple[str, dict]]:
    base = config.model.estimator_params()
    sel = config.selection
    types = sel.covariance_type or [config.model.covariance_type]
    return [
        (f"{t}-k{k}", {**base, "n_components": k, "covariance_type": t})
        for t in types
        for k in sel.n_components
    ]


def _selection_params(config: JobConfig) -> dict[str, Any]:
    """The model section as :func:`dask_em.select_model` keywords.

    Every estimator setting that ``select_model`` accepts is passed on; one it does not
    know is refused unless it has its default, so no setting is silently dropped.
    """
    import inspect

    from dask_em.jobs.config import ModelConfig
    from dask_em.mixture._selection import select_model

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
    from dask_em.mixture._selection import select_model

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
