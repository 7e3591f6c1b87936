"""Suite scaling: dask-em's time per row over N (full, d=16, K=8, threads).

The time per row should not depend on N; samples of equal work compare the sizes like
with like on a machine whose speed wanders.
"""

from __future__ import annotations

import harness as h
import measure
import numpy as np
from suite import Settings, row, target

D, K = 16, 8


def equal_work_windows(times, window: int) -> list[float]:
    """Mean seconds per iteration over consecutive runs of ``window`` iterations.

    Parameters
    ----------
    times : sequence of float, shape (n_iter,)
        One fit's per-iteration seconds, in order.
    window : int
        Iterations per sample; a trailing run shorter than ``window`` is dropped.

    Returns
    -------
    list of float, shape (n_iter // window,)
    """
    times = [float(t) for t in times]
    return [sum(times[i : i + window]) / window for i in range(0, len(times) - window + 1, window)]


def _spread(values) -> float:
    return max(values) / min(values) - 1.0


class _Plan:
    """Sizes, rounds and the iterations of each fit.

    Every sample covers the same work: ``window[n]`` consecutive iterations at N=n
    process as many rows as one iteration at the largest N, and their mean is one
    sample. The minimum of many short samples is lower than the minimum of a few long
    ones on a machine whose speed wanders (a short sample can fall wholly in a fast
    spell; a long one averages over spells), so minimums of single iterations favour
    the small N. Those are reported beside, not used for the target.
    """

    def __init__(self, s: Settings):
        self.sizes = sorted(set(s.n(v, v / 4) for v in (1e6, 2e6, 4e6, 8e6)))
        # Its speed moves by a third within a minute (seen at N=8e6: 3.0 s per
        # iteration for two rounds, then 2.1 s), so the rounds are many and short.
        self.rounds = 1 if s.quick else 6
        self.window = {n: max(1, round(self.sizes[-1] / n)) for n in self.sizes}
        self.samples = s.repeats if s.quick else max(2, s.repeats // 2)
        self.n_iter = {n: 1 + self.samples * self.window[n] for n in self.sizes}


def _measure(s: Settings, p: _Plan) -> dict:
    """Every round's fits; per N the single iterations' times, the equal-work samples
    and each round's mean ns per row."""
    x_all = h.make_data(p.sizes[-1], D, K)
    start = h.make_start(x_all, K, "full")
    out = {key: {n: [] for n in p.sizes} for key in ("times", "windows", "round_ns")}
    # Sizes take turns, a few iterations each per round, so that a slow spell of this
    # (shared, noisy) machine falls on every N rather than on one.
    for i in range(p.rounds):
        # Every other round runs the sizes in reverse, so that no N always follows the
        # same one (the largest fit's 1 GiB of pages, or a first fit's imports).
        for n in p.sizes if i % 2 == 0 else p.sizes[::-1]:
            s.say(f"[scaling] round {i + 1}/{p.rounds}: N={h.fmt_n(n)}")
            t = measure.daskem_fit(x_all[:n], start, p.n_iter[n])["times"]
            out["times"][n] += t
            out["windows"][n] += equal_work_windows(t, p.window[n])
            # The round's mean time per row: how far the sizes of one round (a minute
            # or so of the machine) drift apart.
            out["round_ns"][n].append(float(np.mean(t)) / n * 1e9)
    return out


def _rows(p: _Plan, m: dict) -> list:
    rows = []
    for n in p.sizes:
        r_ = row(f"full N={h.fmt_n(n)} d={D} K={K}", "dask-em threads", m["windows"][n], n_rows=n)
        r_["window_iterations"] = p.window[n]
        r_["iterations"] = m["times"][n]
        r_["ns_per_row"] = r_["min"] / n * 1e9
        r_["ns_per_row_median"] = r_["median"] / n * 1e9
        r_["ns_per_row_single_iteration_min"] = min(m["times"][n]) / n * 1e9
        r_["ns_per_row_by_round"] = m["round_ns"][n]
        rows.append(r_)
    return rows


def _table(rows) -> str:
    header = [
        "N",
        "iterations per sample",
        "min s/iter",
        "median s/iter",
        "ns/row (min)",
        "ns/row (median)",
        "ns/row (min of single iterations)",
        "ns/row per round (mean)",
    ]
    table = [
        [
            h.fmt_n(r_["n_rows"]),
            str(r_["window_iterations"]),
            h.fmt_seconds(r_["min"]),
            h.fmt_seconds(r_["median"]),
            f"{r_['ns_per_row']:.0f}",
            f"{r_['ns_per_row_median']:.0f}",
            f"{r_['ns_per_row_single_iteration_min']:.0f}",
            " / ".join(f"{v:.0f}" for v in r_["ns_per_row_by_round"]),
        ]
        for r_ in rows
    ]
    return h.md_table(header, table)


def _note(p: _Plan, by_round) -> str:
    return (
        f"{p.rounds} round(s), the sizes in reverse order every other round; in each, "
        "every N runs one fit from the same start, of "
        + ", ".join(f"{p.n_iter[n]} iterations at N={h.fmt_n(n)}" for n in p.sizes)
        + " (first left out). A sample is the mean over consecutive iterations that "
        f"together process {h.fmt_n(p.sizes[-1])} rows, {p.samples} per fit; min and "
        "median over all rounds' samples. Per round, the mean per-row time of each "
        "N, and their spread: "
        + ", ".join(f"{v:.3f}" for v in by_round)
        + f" (median {np.median(by_round):.3f})."
    )


def suite_scaling(s: Settings) -> dict:
    """dask-em's time per row at four N, from equal-work samples over rounds."""
    p = _Plan(s)
    m = _measure(s, p)
    rows = _rows(p, m)
    spread_of_minimums = _spread([r_["ns_per_row"] for r_ in rows])
    spread_of_medians = _spread([r_["ns_per_row_median"] for r_ in rows])
    spread_of_single = _spread([r_["ns_per_row_single_iteration_min"] for r_ in rows])
    by_round = [_spread([m["round_ns"][n][i] for n in p.sizes]) for i in range(p.rounds)]
    targets = [
        target(
            "per-row time, (max − min) / min over N (min over equal-work samples)",
            spread_of_minimums,
            "<=",
            0.15,
            note=f"medians {spread_of_medians:.3f}; single-iteration minimums "
            f"{spread_of_single:.3f}; median of the rounds' spreads {np.median(by_round):.3f}",
        )
    ]
    return {
        "title": f"Scaling in N (full, d={D}, K={K}, dask-em threads)",
        "rows": rows,
        "targets": targets,
        "notes": [_note(p, by_round)],
        "spread_by_round": by_round,
        "spread_of_minimums": spread_of_minimums,
        "spread_of_medians": spread_of_medians,
        "spread_of_single_iteration_minimums": spread_of_single,
        "markdown": _table(rows),
    }
