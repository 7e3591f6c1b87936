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
    (``checkpoints/selection.npz``), one shared scoring pass at the end.

    Returns
    -------
    gm, metrics, rows, best_row
        The best candidate's estimator and metrics, one summary row per candidate and
        the best one's.
    """
    combos = _combos(config)
    labels = [label for label, _ in combos]
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
    result = _select(config, x, w, combos, callback, state)
    # Every candidate shared the passes: its fit time is the grid's.
    secs = time.perf_counter() - t0
    crit = config.selection.criterion
    rows, fitted = [], []
    for (label, p), trow, gm in zip(combos, result.table, result.models, strict=True):
        assert (trow["n_components"], trow["covariance_type"]) == (
            p["n_components"],
            p["covariance_type"],
        )
        scores = _table_scores(trow, int(x.shape[0]), result.n_samples)
        cand_dir = staging / "candidates" / label
        metrics = _candidate_metrics(cand_dir, gm, trow, scores, history, secs)
        if gm is None:
            log.warning("[%s] failed: %s", label, trow["error"])
        row = {"label": label, "n_components": p["n_components"]}
        row["covariance_type"] = p["covariance_type"]
        row.update({k: metrics[k] for k in _ROW_METRICS})
        rows.append(row)
        fitted.append((gm, metrics))
        value = f"{row[crit]:.6g}" if row[crit] is not None else "n/a"
        log.info("[%s] %s %s", label, crit.upper(), value)
    i = result.best_index
    gm, metrics = fitted[i]
    log.info("Best by %s: %s", crit.upper(), rows[i]["label"])
    return gm, metrics, rows, rows[i]


# A candidate's metrics that its row of selection.json repeats.
_ROW_METRICS = ("bic", "aic", "lower_bound", "n_iter", "converged")


def _select(config: JobConfig, x, w, combos, callback, state):
    """:func:`dask_em.select_model` over the grid, its warnings logged, its bad-input
    errors turned into :class:`JobError`."""
    from dask_em.mixture._selection import select_model

    sel = config.selection
    types = list(dict.fromkeys(p["covariance_type"] for _, p in combos))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = select_model(
                x,
                list(sel.n_components),
                types,
                criterion=sel.criterion,
                sample_weight=w,
                callback=callback,
                resume=state,
                **_selection_params(config),
            )
        except ValueError as exc:
            raise _job_error(exc, config.model.missing) from exc
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            log.warning("%s", warning.message)
    return result


def _candidate_metrics(cand_dir: Path, gm, trow: dict, scores: dict, history, secs) -> dict:
    """One candidate's metrics (and model, if it was fitted) in its own folder."""
    if gm is None:
        metrics = {
            "error": trow["error"],
            "n_iter": 0,
            "converged": False,
            "lower_bound": None,
            **scores,
        }
    else:
        metrics = _metrics(gm, history, scores, secs)
        atomic_savez(cand_dir / "model.npz", gm.fitted_arrays())
    atomic_write_json(cand_dir / "metrics.json", metrics)
    return metrics
