"""What a run writes besides the model's arrays: scores, metrics, ``model.json``, the
data sample and the pictures (the parts of :mod:`dask_em.jobs.runner` that record a result)."""

from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from dask_em.data.writers import (
    atomic_savez,
    atomic_write_bytes,
    atomic_write_json,
)
from dask_em.engine._math import n_parameters as _n_parameters
from dask_em.jobs.config import JobConfig

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


DEFAULT_WEIGHT_THRESHOLD = 0.01


def is_bayesian(gm) -> bool:
    """A variational Bayesian mixture (it has no BIC/AIC; its weights prune components)."""
    return hasattr(gm, "weight_concentration_")


def effective_components(gm, threshold: float | None) -> dict[str, Any]:
    """For a Bayesian mixture: its components with a weight above ``threshold`` (the
    effective ones) and the others (pruned); nothing for a Gaussian mixture."""
    if not is_bayesian(gm):
        return {}
    t = DEFAULT_WEIGHT_THRESHOLD if threshold is None else float(threshold)
    weights = np.asarray(gm.weights_)
    return {
        "weight_threshold": t,
        "n_effective_components": int(np.sum(weights > t)),
        "effective_components": np.flatnonzero(weights > t).tolist(),
        "pruned_components": np.flatnonzero(weights <= t).tolist(),
    }


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
    # A variational mixture has no maximum-likelihood criteria (scikit-learn gives none).
    bayes = is_bayesian(gm)
    return {
        "n_samples": int(n),
        "total_weight": _finite(total),
        "n_parameters": int(p),
        "mean_log_likelihood": _finite(mean_ll),
        "bic": None if bayes else _finite(-2 * loglik + p * math.log(total)),
        "aic": None if bayes else _finite(-2 * loglik + 2 * p),
    }


def _metrics(
    gm, history: dict[int, float], scores: dict, fit_seconds: float, threshold=None
) -> dict:
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
        "n_passes": int(getattr(gm, "n_passes_", gm.n_iter_)),
        "converged": bool(gm.converged_),
        "lower_bound": _finite(gm.lower_bound_),
        **scores,
        "n_rows_skipped": int(getattr(gm, "n_rows_skipped_", 0) or 0),
        "fit_seconds": round(fit_seconds, 6),
        "seconds_per_iteration": [r["seconds"] for r in rows],
        "iterations": rows,
        "candidates": candidates,
        **effective_components(gm, threshold),
    }


def _model_summary(gm, threshold: float | None = None) -> dict:
    k, d = gm.means_.shape
    out = {
        "kind": "bayesian" if is_bayesian(gm) else "gaussian",
        "n_components": int(k),
        "n_features": int(d),
        "covariance_type": gm.covariance_type,
        "converged": bool(gm.converged_),
        "n_iter": int(gm.n_iter_),
        "n_passes": int(getattr(gm, "n_passes_", gm.n_iter_)),
        "lower_bound": _finite(gm.lower_bound_),
        "weights": [float(w) for w in gm.weights_],
        **effective_components(gm, threshold),
    }
    if is_bayesian(gm):
        out["weight_concentration_prior_type"] = gm.weight_concentration_prior_type
    if k * d <= 4096:  # keep model.json readable; model.npz has everything
        out["means"] = np.asarray(gm.means_).tolist()
    return out


def _write_model(
    folder: Path, gm, config: JobConfig | None, data: dict | None, extra: dict | None = None
) -> None:
    atomic_savez(folder / "model.npz", gm.fitted_arrays())
    threshold = None if config is None else config.model.weight_threshold
    doc = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_summary(gm, threshold),
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
        pruned = metrics.get("pruned_components") or ()
        written.append(
            atomic_write_bytes(plot_dir / name, plots.plot_data(gm, sample, pruned=pruned))
        )
    # candidates that failed have no criterion to plot
    scored = [r for r in selection or () if r.get(criterion) is not None]
    if scored:
        written.append(
            atomic_write_bytes(plot_dir / "selection.png", plots.plot_selection(scored, criterion))
        )
    return written


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
