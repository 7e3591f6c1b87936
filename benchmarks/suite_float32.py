"""Suite float32: dask-em on float32 against float64 (threads), speed and log-likelihood.

The same rows rounded to float32 and the same start; the fits and the block limit of
each dtype.
"""

from __future__ import annotations

import harness as h
import measure
import numpy as np
from suite import Settings, ratio, row, target, timing_table

DTYPES = ("float64", "float32")


def _fits(s: Settings, name, data: dict, start, n_iter: int, rounds: int):
    """Each dtype's last fit and its times over all rounds.

    The dtypes take turns, a fit each per round, so that a slow spell of this (shared,
    noisy) machine falls on both rather than on one.
    """
    fits, times = {}, {dtype: [] for dtype in DTYPES}
    for i in range(rounds):
        for dtype in DTYPES:
            s.say(f"[float32] {name}: {dtype}, round {i + 1}/{rounds}")
            fits[dtype] = measure.daskem_fit(data[dtype], start, n_iter)
            times[dtype] += fits[dtype]["times"]
    return fits, times


def _case_rows(s: Settings, ct, data: dict, k: int, n_iter: int, rounds: int):
    """One covariance type's rows (fits, then block limits) and its two targets."""
    n, d = data["float64"].shape
    start = h.make_start(data["float64"], k, ct)
    name = f"{ct} N={h.fmt_n(n)} d={d} K={k}"
    fits, times = _fits(s, name, data, start, n_iter, rounds)
    rows = [
        row(
            name,
            f"dask-em threads {dtype}",
            times[dtype],
            final_loglik_mean=fits[dtype]["lower_bound"],
            n_iter=n_iter,
        )
        for dtype in DTYPES
    ]
    chunk = measure.engine_chunk_rows(n, d)
    for dtype in DTYPES:
        lim = measure.block_limit(data[dtype], fits[dtype]["model"]._params(), chunk, 3)
        lim.pop("alone")
        rows.append(row(name, f"block limit {dtype}", lim.pop("times"), **lim))
    # The kernel's own gain, apart from the per-iteration fixed cost.
    rows[3]["speedup_vs_float64"] = ratio(rows[2]["min"], rows[3]["min"])
    speed = ratio(rows[0]["min"], rows[1]["min"])
    ll64, ll32 = fits["float64"]["lower_bound"], fits["float32"]["lower_bound"]
    rel = abs(ll32 - ll64) / abs(ll64)
    rows[1]["speedup_vs_float64"] = speed
    rows[1]["rel_loglik_change"] = rel
    targets = [
        target(f"{name}: float32 speed-up over float64", speed, ">=", 1.8),
        target(f"{name}: relative change of the final log-likelihood", rel, "<=", 1e-6),
    ]
    return rows, targets


def suite_float32(s: Settings) -> dict:
    """float32 against float64 for full and diag covariances."""
    n, d, k = s.n(1e6, 2e5), 16, 8
    n_iter = max(s.repeats + 1, 10 if s.quick else 20)
    # A float32 iteration is half as long as a float64 one, so its minimum is the more
    # likely to fall in one of this machine's fast (or slow) spells: 6 rounds, not 3.
    rounds = 1 if s.quick else 6
    x64 = h.make_data(n, d, k)
    data = {"float64": x64, "float32": x64.astype(np.float32)}
    rows, targets = [], []
    for ct in ("full", "diag"):
        case_rows, case_targets = _case_rows(s, ct, data, k, n_iter, rounds)
        rows += case_rows
        targets += case_targets
    columns = [
        ("speed-up", lambda r_: h.fmt_ratio(r_.get("speedup_vs_float64"))),
        (
            "rel. LL change",
            lambda r_: f"{r_['rel_loglik_change']:.1e}" if "rel_loglik_change" in r_ else "-",
        ),
    ]
    return {
        "title": "float32 vs float64 (dask-em threads)",
        "rows": rows,
        "targets": targets,
        "notes": [
            f"Same rows rounded to float32, same start, {n_iter} iterations a fit (tol=0), "
            f"{rounds} round(s) of one fit per dtype, taking turns; times over all rounds "
            "(first iteration of each fit left out); log-likelihood compared after the last "
            "iteration."
        ],
        "markdown": timing_table(rows, columns),
    }
