"""The Markdown report of one ``run.py`` run, and its results made fit for JSON."""

from __future__ import annotations

from pathlib import Path


def _engine_note(env) -> str:
    repo_engine = Path(__file__).resolve().parent.parent / "dask_em"
    path = env.get("engine_path")
    return "" if path is None or Path(path) == repo_engine else f", engine from {path}"


def _header(result: dict) -> list[str]:
    """Title, command, machine and versions, and the load averages of the run."""
    env = result["environment"]
    blas = ", ".join(
        f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)"
        for b in env["blas"]
    )
    v = env["versions"]
    return [
        "# dask-em benchmarks",
        "",
        f"`{result['command']}`",
        "",
        f"{env['time_utc']} · {env['cores']} cores ({env['cpu_model']}), "
        f"{env['memory_gib']} GiB · BLAS: {blas} · dask-em {v.get('dask-em')} "
        f"(commit {env['git_commit']}{', engine modified' if env['engine_modified'] else ''}"
        f"{_engine_note(env)}) "
        f"· numpy {v.get('numpy')} · dask {v.get('dask')} · scikit-learn "
        f"{v.get('scikit-learn')} · pyspark {v.get('pyspark')} · {env.get('java')}",
        "",
        f"Load average (1, 5, 15 min) at start {result['load_start']}, at end "
        f"{result.get('load_end')}.",
    ]


def _targets(targets: list) -> list[str]:
    lines = ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in targets:
        val = t["value"]
        shown = "-" if val is None else (f"{val:.3g}" if abs(val) < 1e3 else f"{val:.4g}")
        met = {True: "yes", False: "**no**", None: "-"}[t["ok"]]
        lines.append(f"| {t['what']} | {shown} | {t['target']} | {met} |")
    return lines


def _suite(name: str, suite: dict) -> list[str]:
    """One suite's section: its tables, load, targets and notes (or why it did not run)."""
    lines = ["", f"## {name}: {suite['title']}", ""]
    if suite.get("skipped"):
        return lines + [f"skipped: {suite['skipped']}"]
    if suite.get("error"):
        return lines + [f"failed: {suite['error']}"]
    lines += [
        suite["markdown"],
        "",
        f"Load average at start {suite['load'][0]}, at end {suite['load'][1]}; "
        f"{suite['seconds']:.0f} s.",
    ]
    if suite.get("targets"):
        lines += _targets(suite["targets"])
    if suite.get("notes"):
        lines.append("")
        lines += [f"- {note}" for note in suite["notes"]]
    return lines


def render_markdown(result: dict) -> str:
    """The whole run as Markdown: the header, then a section per suite run so far."""
    lines = _header(result)
    for name, suite in result["suites"].items():
        lines += _suite(name, suite)
    return "\n".join(lines) + "\n"


def strip(obj):
    """Drop non-serialisable objects (fitted models) from suite results."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k != "model"}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj
