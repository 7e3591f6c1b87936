"""dask-em side by side with its peers, in one run.

    python benchmarks/run.py [--quick] [--only NAME ...] [--repeats R] [--out DIR]

Suites (``--only``): em, spark, ooc, scaling, float32, bayesian, accel, highd. Every figure
is seconds per EM iteration unless said; each is the min and the median over repeats, and
every ratio is taken between figures of the same run (the machines these run on are
noisy). The run
writes ``benchmark-<time>.json`` (every figure, the environment, load averages) and
``benchmark-<time>.md`` (the tables) into ``--out`` and prints the tables.

This file is the command line only: each suite is a module of its own
(``suite_<name>.py``); what they share is in ``suite.py`` (settings, rows, targets,
tables), ``measure.py`` (dask-em's fits and the block limit), ``peers.py`` (scikit-learn,
Spark), ``harness.py`` (data, timing, environment, cluster) and ``report.py`` (the
Markdown report).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
import measure  # noqa: E402
import peers  # noqa: E402
from measure import (  # noqa: E402
    block_limit,
    daskem_default_fit,
    daskem_fit,
    engine_chunk_rows,
    max_rel_diff,
)
from report import render_markdown, strip  # noqa: E402
from suite import Settings  # noqa: E402
from suite_accel import suite_accel  # noqa: E402
from suite_bayesian import suite_bayesian  # noqa: E402
from suite_em import suite_em  # noqa: E402
from suite_float32 import suite_float32  # noqa: E402
from suite_highd import suite_highd  # noqa: E402
from suite_ooc import suite_ooc, write_zarr  # noqa: E402
from suite_scaling import equal_work_windows, suite_scaling  # noqa: E402
from suite_spark import suite_spark  # noqa: E402

# What this module held before the suites had modules of their own; tests and scripts
# reach them here.
__all__ = [
    "Settings",
    "block_limit",
    "daskem_default_fit",
    "daskem_fit",
    "engine_chunk_rows",
    "equal_work_windows",
    "h",
    "main",
    "max_rel_diff",
    "measure",
    "parse_args",
    "peers",
    "render_markdown",
    "suite_bayesian",
    "suite_accel",
    "suite_em",
    "suite_float32",
    "suite_ooc",
    "suite_scaling",
    "suite_spark",
    "write_zarr",
]

SUITES = ("em", "spark", "ooc", "scaling", "float32", "bayesian", "accel", "highd")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RUNNERS = {
    "em": suite_em,
    "spark": suite_spark,
    "ooc": suite_ooc,
    "scaling": suite_scaling,
    "float32": suite_float32,
    "bayesian": suite_bayesian,
    "accel": suite_accel,
    "highd": suite_highd,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for development")
    p.add_argument(
        "--only",
        nargs="+",
        choices=SUITES,
        metavar="NAME",
        help=f"suites to run ({', '.join(SUITES)}); default all",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats (iterations) per figure; default 5, 3 with --quick",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and Markdown"
    )
    p.add_argument("--keep-data", action="store_true", help="keep the out-of-core zarr data")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the out-of-core data goes (a temp "
        "folder inside it); default the system temp folder",
    )
    p.add_argument(
        "--malloc-trim",
        choices=("dask", "unset", "both"),
        default="both",
        help="LocalCluster variants in the em suite: dask's worker environment "
        "(MALLOC_TRIM_THRESHOLD_=65536), the variable unset, or both",
    )
    p.add_argument(
        "--spark-rdd",
        action="store_true",
        help="also run Spark's RDD-based API from the benchmark start (slow)",
    )
    p.add_argument(
        "--no-sklearn-1thread",
        action="store_true",
        help="leave out the em suite's extra scikit-learn row with BLAS at 1 thread",
    )
    p.add_argument("--max-rows", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = Settings(
        quick=args.quick,
        repeats=args.repeats or (3 if args.quick else 5),
        max_rows=args.max_rows,
        malloc_trim=args.malloc_trim,
        keep_data=args.keep_data,
        data_dir=args.data_dir,
        spark_rdd=args.spark_rdd,
        sklearn_1thread=not args.no_sklearn_1thread,
    )
    names = [n for n in SUITES if not args.only or n in args.only]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"benchmark-{stamp}.json"
    md_path = args.out / f"benchmark-{stamp}.md"
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": command.strip(),
        "settings": {k: v for k, v in vars(settings).items() if k != "log"},
        "environment": h.environment(),
        "load_start": h.loadavg(),
        "suites": {},
    }
    settings.say(f"load average {result['load_start']}; suites: {', '.join(names)}")
    for name in names:
        load0, t0 = h.loadavg(), time.perf_counter()
        try:
            suite = RUNNERS[name](settings)
        except Exception as exc:  # keep the other suites' figures
            import traceback

            traceback.print_exc()
            suite = {"title": name, "error": f"{type(exc).__name__}: {exc}", "rows": []}
        suite["load"] = [load0, h.loadavg()]
        suite["seconds"] = time.perf_counter() - t0
        result["suites"][name] = strip(suite)
        result["load_end"] = h.loadavg()
        h.write_json(json_path, result)
        md_path.write_text(render_markdown(result))
    md = render_markdown(result)
    print(md)
    settings.say(f"wrote {json_path} and {md_path}")
    result["paths"] = {"json": str(json_path), "markdown": str(md_path)}
    return result


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
