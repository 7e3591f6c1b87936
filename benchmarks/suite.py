"""What the suites of ``run.py`` share: their settings and the parts of their results.

A suite is a function ``suite_<name>(settings) -> dict`` with ``title``, ``rows`` (one per
case and tool, each a :func:`row`), ``targets`` (each a :func:`target`), ``notes`` and
``markdown``; or ``title``, ``skipped`` (the reason), ``rows`` and ``targets`` when it
cannot run here. ``report.render_markdown`` puts them together.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import harness as h


@dataclass
class Settings:
    """The command line's choices, as every suite reads them."""

    quick: bool = False
    repeats: int = 5
    max_rows: int | None = None
    malloc_trim: str = "both"
    keep_data: bool = False
    data_dir: str | None = None
    spark_rdd: bool = False
    sklearn_1thread: bool = True
    log: object = field(default=sys.stderr, repr=False)

    def n(self, full: float, quick: float) -> int:
        """Rows of a data set: ``full`` or, with ``--quick``, ``quick``; at most
        ``--max-rows``."""
        n = int(quick if self.quick else full)
        return min(n, self.max_rows) if self.max_rows else n

    def say(self, msg: str):
        print(msg, file=self.log, flush=True)


def row(case, tool, times, **extra) -> dict:
    """One line of a suite's results: its case, tool, the summary of ``times`` and
    ``extra`` fields."""
    return {"case": case, "tool": tool, **h.summary(times), **extra}


def ratio(num, den):
    """``num / den``, or None where either is missing or ``den`` is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def target(what, value, op, goal, note="") -> dict:
    """A goal for a figure (``op`` is ">=" or "<="); ``ok`` None where there is no
    figure."""
    ok = None
    if value is not None:
        ok = bool(value >= goal) if op == ">=" else bool(value <= goal)
    return {"what": what, "value": value, "target": f"{op} {goal:g}", "ok": ok, "note": note}


def timing_table(rows, columns=(), names=("case", "tool", "min s/iter", "median s/iter")) -> str:
    """Markdown table of ``rows``: case, tool, min and median seconds, then one column
    per ``(header, cell)`` in ``columns``, ``cell(row)`` giving the text."""
    header = [*names, *(name for name, _ in columns)]
    table = [
        [
            r["case"],
            r["tool"],
            h.fmt_seconds(r["min"]),
            h.fmt_seconds(r["median"]),
            *(cell(r) for _, cell in columns),
        ]
        for r in rows
    ]
    return h.md_table(header, table)
