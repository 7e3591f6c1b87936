"""dask-em side by side with its peers, in one run.

    python benchmarks/run.py [--quick] [--only NAME ...] [--repeats R] [--out DIR]

Suites (``--only``): em, spark, ooc, scaling, float32. Every figure is seconds per EM
iteration unless said; each is the min and the median over repeats, and every ratio is
taken between figures of the same run (the machines these run on are noisy). The run
writes ``benchmark-<time>.json`` (every figure, the environment, load averages) and
``benchmark-<time>.md`` (the tables) into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
import peers  # noqa: E402

SUITES = ("em", "spark", "ooc", "scaling", "float32")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass
class Settings:
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
        n = int(quick if self.quick else full)
        return min(n, self.max_rows) if self.max_rows else n

    def say(self, msg: str):
        print(msg, file=self.log, flush=True)


# --------------------------------------------------------------------------------------
# dask-em measurements
# --------------------------------------------------------------------------------------
def daskem_fit(
    x, start: h.Start, n_iter: int, *, tol=0.0, persist="auto", callback=None, **kwargs
) -> dict:
    """Fit dask-em from ``start`` and record every iteration's wall time (the
    ``EMProgress.seconds`` the engine reports: E-step pass, reduction and M-step).
    ``callback(state)`` runs after each iteration, outside the timed part."""
    import dask_em

    seconds = []

    def record(state):
        seconds.append(state.seconds)
        if callback is not None:
            callback(state)

    gm = dask_em.GaussianMixture(
        start.means.shape[0],
        covariance_type=start.covariance_type,
        max_iter=n_iter,
        tol=tol,
        persist=persist,
        **start.kwargs(),
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
        t0 = time.perf_counter()
        gm.fit(x, callback=record)
        total = time.perf_counter() - t0
    return {
        "seconds": seconds,
        # The first iteration also waits for data a LocalCluster is still receiving
        # (persist is asynchronous) and for the workers' first imports; leave it out.
        "times": seconds[1:] if len(seconds) > 1 else seconds,
        "first_iteration": seconds[0] if seconds else None,
        "fit_seconds": total,
        "lower_bounds": list(gm.lower_bounds_),
        "lower_bound": float(gm.lower_bound_),
        "n_iter": int(gm.n_iter_),
        "converged": bool(gm.converged_),
        "model": gm,
    }


def daskem_default_fit(x, k: int, max_iter: int, tol: float, **kwargs) -> dict:
    """Fit dask-em with its default initialisation (as a user would)."""
    import dask_em

    gm = dask_em.GaussianMixture(k, covariance_type="full", max_iter=max_iter, tol=tol, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
        t0 = time.perf_counter()
        gm.fit(x)
        total = time.perf_counter() - t0
    return {
        "fit_seconds": total,
        "lower_bound": float(gm.lower_bound_),
        "n_iter": int(gm.n_iter_),
        "converged": bool(gm.converged_),
        "model": gm,
    }


def engine_chunk_rows(n: int, d: int) -> int:
    from dask_em._validation import auto_chunk_rows

    return auto_chunk_rows(n, d, 8)


def block_limit(
    x, params, chunk_rows: int, repeats: int, alone_repeats: int | None = None
) -> dict:
    """One block's fused E+M time (BLAS at 1 thread) x blocks / cores: the floor of a
    design that runs one block per core, with nothing between the blocks.

    Each sample is one pass's worth of work done that way: every core runs its share of
    the pass's own blocks back to back in a plain thread (no scheduler, no reduction,
    no M-step), each block timed; the sample is the sum of the block times / cores.
    So the floor is taken under the pass's conditions (the other cores busy, each block
    read from memory once) and over a pass's length of time, as the passes it is
    compared with are; a minimum of short samples would catch this machine's fast
    spells more often than a minimum of whole passes. ``alone`` keeps the old reading:
    the first block again and again on one thread, the other cores idle, the block in
    cache. ``repeats`` pass samples (at least 3 unless ``alone_repeats`` is given) and
    ``alone_repeats`` (default as many) single blocks.
    """
    import threading

    from threadpoolctl import threadpool_limits

    from dask_em._stats import block_statistics

    bounds = [(a, min(a + chunk_rows, x.shape[0])) for a in range(0, x.shape[0], chunk_rows)]
    cores = h.cores()
    samples, walls, per_block, alone = [], [], [], []

    def run_share(share, out):
        for a, b in share:
            t, _ = h.timed(block_statistics, x[a:b], [params])
            out.append(t)

    if alone_repeats is None:
        repeats = alone_repeats = max(3, repeats)
    with threadpool_limits(limits=1, user_api="blas"):
        if alone_repeats:
            block = np.ascontiguousarray(x[: bounds[0][1]])
            block_statistics(block, [params])
        for _ in range(alone_repeats):
            alone.append(h.timed(block_statistics, block, [params])[0])
        for _ in range(repeats):
            outs = [[] for _ in range(cores)]
            threads = [
                threading.Thread(target=run_share, args=(bounds[c::cores], outs[c]))
                for c in range(cores)
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            walls.append(time.perf_counter() - t0)
            times = [t for out in outs for t in out]
            per_block += times
            samples.append(sum(times) / cores)
    return {
        "block_rows": int(bounds[0][1] - bounds[0][0]),
        "n_blocks": len(bounds),
        "cores": cores,
        "block": h.summary(per_block),
        # Wall time of the threads above: the pass with a perfect scheduler (the last
        # block's core finishing last).
        "ideal_pass": h.summary(walls),
        "alone": {
            **h.summary(alone),
            "scaled": [t * x.shape[0] / (bounds[0][1] - bounds[0][0]) / cores for t in alone],
        },
        "times": samples,
    }


def max_rel_diff(a, b) -> float | None:
    n = min(len(a), len(b))
    if n == 0:
        return None
    a, b = np.asarray(a[:n]), np.asarray(b[:n])
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _row(case, tool, times, **extra) -> dict:
    return {"case": case, "tool": tool, **h.summary(times), **extra}


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def _target(what, value, op, goal, note="") -> dict:
    ok = None
    if value is not None:
        ok = bool(value >= goal) if op == ">=" else bool(value <= goal)
    return {"what": what, "value": value, "target": f"{op} {goal:g}", "ok": ok, "note": note}


def _cluster_variants(settings: Settings):
    variants = {
        "dask": ("LocalCluster 2×1", "dask"),
        "unset": ("LocalCluster 2×1, MALLOC_TRIM unset", None),
    }
    keys = ["dask", "unset"] if settings.malloc_trim == "both" else [settings.malloc_trim]
    return [variants[k] for k in keys]


# --------------------------------------------------------------------------------------
# Suite 1: in memory, per iteration, vs scikit-learn and the block limit
# --------------------------------------------------------------------------------------
def suite_em(s: Settings) -> dict:
    cases = [
        ("full", s.n(1e6, 2e5), 16, 8),
        ("diag", s.n(1e6, 2e5), 16, 8),
        ("full", s.n(2e6, 4e5), 32, 16),
    ]
    r = s.repeats
    rows, targets, notes, state = [], [], [], []
    sk_lbs, threads_lbs = {}, {}
    for ct, n, d, k in cases:
        name = f"{ct} N={h.fmt_n(n)} d={d} K={k}"
        x = h.make_data(n, d, k)
        start = h.make_start(x, k, ct)
        s.say(f"[em] {name}: scikit-learn")
        sk = peers.sklearn_iterations(x, start, r + 1)
        sk_times = sk["times"][1:] if len(sk["times"]) > 1 else sk["times"]
        rows.append(_row(name, "scikit-learn", sk_times, method=sk["method"]))
        sk_lbs[name] = sk["lower_bounds"]
        if s.sklearn_1thread:
            # OpenBLAS's own threads spin-wait, so the default figure suffers badly
            # from any other load on the machine; one BLAS thread is the steady one.
            s.say(f"[em] {name}: scikit-learn, BLAS 1 thread")
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1, user_api="blas"):
                sk1 = peers.sklearn_iterations(x, start, r + 1)
            rows.append(
                _row(
                    name,
                    "scikit-learn, BLAS 1 thread",
                    sk1["times"][1:] if len(sk1["times"]) > 1 else sk1["times"],
                    method=sk1["method"],
                )
            )
        state.append((name, x, start))

    # dask-em's rows take turns over rounds (threads and the block limit for every case,
    # then each LocalCluster for every case), so that a slow spell of this noisy machine
    # falls on all of them rather than on one; times are pooled over the rounds.
    rounds = 1 if s.quick else 3
    pooled: dict = {}
    ideal_walls: dict = {}  # case -> wall times of the limit's threads, over the rounds

    def pool(name, tool, times, **extra):
        row = pooled.setdefault((name, tool), {"times": [], "extra": {}})
        row["times"] += times
        row["extra"].update(extra)

    for i in range(rounds):
        for name, x, start in state:
            s.say(f"[em] {name}: dask-em threads and block limit, round {i + 1}/{rounds}")
            chunk = engine_chunk_rows(*x.shape)
            # One limit sample right after each iteration (the callback is outside the
            # timed part), so that both see the same moment of this machine's speed.
            samples, walls = [], ideal_walls.setdefault(name, [])

            def limit_sample(progress, x=x, chunk=chunk, samples=samples, walls=walls):
                # The first iteration is left out of the threads figure; so is its sample.
                if progress.iteration > 1:
                    params = progress.candidates[0].params
                    one = block_limit(x, params, chunk, 1, alone_repeats=0)
                    samples.extend(one["times"])
                    walls.extend(one["ideal_pass"]["all"])

            th = daskem_fit(x, start, r + 1, callback=limit_sample)
            if i == 0:
                threads_lbs[name] = th["lower_bounds"]
            pool(
                name,
                "dask-em threads",
                th["times"],
                chunk_rows=chunk,
                first_iteration=th["first_iteration"],
                lower_bounds_vs_sklearn=max_rel_diff(th["lower_bounds"], sk_lbs[name]),
            )
            lim = block_limit(x, th["model"]._params(), chunk, 0, alone_repeats=r)
            alone = lim.pop("alone")
            pool(
                name,
                "block limit",
                samples,
                block_rows=lim["block_rows"],
                n_blocks=lim["n_blocks"],
                cores=lim["cores"],
                ideal_pass=h.summary(walls),
            )
            pool(name, "one block alone × blocks ÷ cores", alone["scaled"], block=alone)
        for label, trim in _cluster_variants(s):
            s.say(f"[em] starting {label}, round {i + 1}/{rounds}")
            with h.local_cluster(2, 1, malloc_trim=trim):
                for name, x, start in state:
                    s.say(f"[em] {name}: dask-em {label}, round {i + 1}/{rounds}")
                    cl = daskem_fit(x, start, r + 1)
                    pool(
                        name,
                        f"dask-em {label}",
                        cl["times"],
                        # What the engine chose for numpy input on this cluster.
                        chunk_rows=engine_chunk_rows(*x.shape),
                        first_iteration=cl["first_iteration"],
                        lower_bounds_vs_threads=max_rel_diff(
                            cl["lower_bounds"], threads_lbs[name]
                        ),
                    )
    state.clear()
    for (name, tool), row in pooled.items():
        rows.append(_row(name, tool, row["times"], **row["extra"]))

    # Ratios against the peers of the same case.
    by_case: dict = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["tool"]] = row
    for case, tools in by_case.items():
        sk, lim = tools["scikit-learn"], tools["block limit"]
        sk1 = tools.get("scikit-learn, BLAS 1 thread")
        for row in tools.values():
            if row["tool"].startswith("dask-em"):
                if sk1 is not None:
                    row["speedup_vs_sklearn_1thread"] = _ratio(sk1["min"], row["min"])
                row["speedup_vs_sklearn"] = _ratio(sk["min"], row["min"])
                row["speedup_vs_sklearn_median"] = _ratio(sk["median"], row["median"])
                row["of_block_limit"] = _ratio(lim["min"], row["min"])
        full = case.startswith("full")
        th = tools["dask-em threads"]
        goal = 3.5 if full else 3.0
        targets.append(
            _target(f"{case}: threads vs scikit-learn", th["speedup_vs_sklearn"], ">=", goal)
        )
        if full:
            cl = next((v for t, v in tools.items() if t.startswith("dask-em LocalCluster")), None)
            if cl is not None:
                targets.append(
                    _target(
                        f"{case}: {cl['tool'][8:]} vs scikit-learn",
                        cl["speedup_vs_sklearn"],
                        ">=",
                        3.0,
                    )
                )
            targets.append(
                _target(
                    f"{case}: threads, fraction of block limit", th["of_block_limit"], ">=", 0.8
                )
            )
            if cl is not None:
                targets.append(
                    _target(
                        f"{case}: {cl['tool'][8:]}, fraction of block limit",
                        cl["of_block_limit"],
                        ">=",
                        0.8,
                    )
                )
        lb = th.get("lower_bounds_vs_sklearn")
        notes.append(
            f"{case}: lower bounds of dask-em (threads) and scikit-learn from the same start "
            f"agree to {lb:.1e} relative over {r + 1} iterations."
            if lb is not None
            else f"{case}: no lower bounds to compare"
        )
    notes.append(
        "scikit-learn: one `_e_step` + `_m_step` per iteration (the body of its `fit` loop), "
        "BLAS at its default threads (the ratios' reference) and, in its own row, at 1 thread "
        "(OpenBLAS threads spin-wait, so the default figure swings with other load). "
        "dask-em: `EMProgress.seconds` from `fit(callback=...)` (pass, reduction and M-step), "
        "first iteration left out; dask-em's rows over "
        f"{rounds} round(s) taking turns (threads and block limit for every case, then each "
        "LocalCluster for every case), times pooled. Block limit: `block_statistics` on "
        "the blocks of the threads scheduler's size, BLAS 1 thread, one plain thread per "
        "core running its share of a pass's blocks back to back; each sample is the sum "
        "of the block times ÷ cores (one block's time × blocks ÷ cores, measured with every "
        "core busy, over a pass's length of time), one sample right after each dask-em "
        "threads iteration (from the fit's callback, outside the timed part). 'one block "
        "alone' is the first block repeated on one thread with the other cores idle (in "
        "cache) × blocks ÷ cores. On a cluster dask-em puts numpy input in larger blocks "
        "(64 MiB)."
    )

    header = ["case", "tool", "min s/iter", "median s/iter", "vs scikit-learn", "of block limit"]
    if s.sklearn_1thread:
        header.insert(5, "vs scikit-learn 1 thread")
    table = []
    for row in rows:
        cells = [
            row["case"],
            row["tool"],
            h.fmt_seconds(row["min"]),
            h.fmt_seconds(row["median"]),
            h.fmt_ratio(row.get("speedup_vs_sklearn"), 1),
            h.fmt_ratio(row.get("of_block_limit")),
        ]
        if s.sklearn_1thread:
            cells.insert(5, h.fmt_ratio(row.get("speedup_vs_sklearn_1thread"), 1))
        table.append(cells)
    order = list(by_case)
    table.sort(key=lambda t: order.index(t[0]))  # stable: tools keep their order
    return {
        "title": "In memory, per EM iteration (same data, same start)",
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "markdown": h.md_table(header, table),
    }


# --------------------------------------------------------------------------------------
# Suite 2: Spark MLlib
# --------------------------------------------------------------------------------------
def suite_spark(s: Settings) -> dict:
    n, d, k = s.n(1e6, 1e5), 16, 8
    n_iter = 5 if s.quick else 10
    tol_mean, max_iter = 1e-6, 300
    # From a default start, which optimum a fit ends in is a draw (this data has several
    # within 1% of each other); 3 seeds made the medians flip between machines.
    seeds = [h.SEED % 2**31 + i for i in range(2 if s.quick else 10)]
    restarts = 3
    name = f"full N={h.fmt_n(n)} d={d} K={k}"
    missing = peers.spark_missing()
    if missing:
        s.say(f"[spark] skipped: {missing}")
        return {"title": "Spark MLlib", "skipped": missing, "rows": [], "targets": []}
    x = h.make_data(n, d, k)
    start = h.make_start(x, k, "full")
    rows, targets, notes, conv = [], [], [], []

    def record(tool, start_label, seed, fit, params, own=None):
        conv.append(
            {
                "tool": tool,
                "start": start_label,
                "seed": seed,
                "n_iter": fit["n_iter"],
                "converged": fit["n_iter"] < max_iter,
                "own_loglik_mean": own,
                # Every final model scored by one function on the same float64 rows.
                "scored": peers.mean_loglik(x, *params),
                "seconds": fit.get("fit_seconds", fit.get("seconds")),
            }
        )

    def default_fits(tool, xi, **kwargs):
        for seed in seeds:
            s.say(f"[spark] {tool}: to convergence, default init, random_state={seed}")
            c = daskem_default_fit(xi, k, max_iter, tol_mean, random_state=seed, **kwargs)
            gm = c["model"]
            record(
                tool,
                f"default ({gm.init_params})",
                seed,
                c,
                (gm.weights_, gm.means_, gm.covariances_),
                c["lower_bound"],
            )

    for dtype in ("float64", "float32"):
        xi = x if dtype == "float64" else x.astype(np.float32)
        tool = f"dask-em threads {dtype}"
        s.say(f"[spark] {tool}: {n_iter} iterations")
        fit = daskem_fit(xi, start, n_iter)
        rows.append(_row(name, tool, fit["times"], n_iter=n_iter))
        if s.spark_rdd:  # the same-start comparison partner of Spark's RDD API
            s.say(f"[spark] {tool}: to convergence from the benchmark start")
            c = daskem_fit(xi, start, max_iter, tol=tol_mean)
            gm = c["model"]
            record(
                tool,
                "benchmark start",
                None,
                c,
                (gm.weights_, gm.means_, gm.covariances_),
                c["lower_bound"],
            )
        default_fits(tool, xi)
    # scikit-learn's lever against a bad draw, as a user would pull it: restarts, which
    # dask-em runs in the same passes.
    default_fits(f"dask-em threads float64, n_init={restarts}", x, n_init=restarts)

    s.say("[spark] starting Spark local[2]")
    runner = peers.SparkRunner(cores=2)
    try:
        s.say(
            f"[spark] JVM + session {runner.start_seconds:.1f} s, MLlib's BLAS "
            f"{runner.blas}; building the DataFrame"
        )
        runner.load(x)
        s.say(f"[spark] DataFrame {runner.frame_seconds:.1f} s; per-iteration fits")
        sp = runner.per_iteration(k, n_iter, max(1, min(s.repeats, 3)), seed=seeds[0])
        rows.append(
            _row(
                name,
                "Spark MLlib local[2]",
                sp.pop("times"),
                jvm_start_seconds=runner.start_seconds,
                dataframe_seconds=runner.frame_seconds,
                blas=runner.blas,
                **sp,
            )
        )
        for seed in seeds:
            s.say(f"[spark] Spark to convergence, its random start, seed={seed}")
            f = runner.fit(k, max_iter, tol_mean * n, seed)
            record(
                "Spark MLlib local[2]",
                "default (random)",
                seed,
                f,
                (f["weights"], f["means"], f["covariances"]),
                f["loglik_mean"],
            )
        if s.spark_rdd:
            s.say("[spark] building the RDD (RDD-based API)")
            runner.load_rdd(x)
            s.say(f"[spark] RDD {runner.rdd_seconds:.1f} s; RDD API from the benchmark start")
            f = runner.fit_rdd(start, max_iter, tol_mean * n, seeds[0])
            rows.append(
                _row(
                    name,
                    "Spark MLlib local[2], RDD API",
                    f["iteration_times"][1:],
                    rdd_seconds=runner.rdd_seconds,
                    fit_seconds=f["seconds"],
                )
            )
            record(
                "Spark MLlib local[2], RDD API",
                "benchmark start",
                None,
                f,
                (f["weights"], f["means"], f["covariances"]),
            )
    finally:
        runner.stop()

    spark_row = next(r_ for r_ in rows if r_["tool"] == "Spark MLlib local[2]")
    for row in rows:
        if row["tool"].startswith("dask-em"):
            row["speedup_vs_spark"] = _ratio(spark_row["min"], row["min"])
            row["speedup_vs_spark_median"] = _ratio(spark_row["median"], row["median"])
    f64, f32 = rows[0], rows[1]
    targets.append(
        _target("float64: dask-em vs Spark, per iteration", f64["speedup_vs_spark"], ">=", 3.0)
    )
    targets.append(
        _target("float32: dask-em vs Spark, per iteration", f32["speedup_vs_spark"], ">=", 5.0)
    )

    def median_scored(tool, start_prefix):
        vals = [
            c["scored"] for c in conv if c["tool"] == tool and c["start"].startswith(start_prefix)
        ]
        return float(np.median(vals)) if vals else None

    spark_ll = median_scored("Spark MLlib local[2]", "default")
    for dtype in ("float64", "float32"):
        ours = median_scored(f"dask-em threads {dtype}", "default")
        diff = None if ours is None or spark_ll is None else ours - spark_ll
        targets.append(
            _target(
                f"{dtype}: median final mean log-likelihood over {len(seeds)} seeds, "
                "dask-em (default init) − Spark (default init)",
                diff,
                ">=",
                -1e-6 * abs(spark_ll or 1.0),
                note="equal or better at convergence",
            )
        )
    # How the draws fell, per tool: the best optimum any fit found is the reference.
    from_default = [c for c in conv if c["start"].startswith("default")]
    best_ll = max((c["scored"] for c in from_default), default=None)
    seed_summary = []
    for tool in dict.fromkeys(c["tool"] for c in from_default):
        vals = [c["scored"] for c in from_default if c["tool"] == tool]
        secs = [c["seconds"] for c in from_default if c["tool"] == tool]
        seed_summary.append(
            {
                "tool": tool,
                "seeds": len(vals),
                "median": float(np.median(vals)),
                "mean": float(np.mean(vals)),
                "best": max(vals),
                "worst": min(vals),
                # Within 1e-5 of the best mean log-likelihood: the same optimum.
                "at_best": sum(v >= best_ll - 1e-5 for v in vals),
                "median_fit_seconds": float(np.median(secs)),
            }
        )
    notes.append(
        f"Per iteration: dask-em from `fit(callback=...)` over {n_iter} iterations (first left "
        f"out); Spark (`pyspark.ml.clustering.GaussianMixture`) from its job records (one job "
        f"per EM iteration; the gap between consecutive completions) over fits of {n_iter} "
        "iterations after a warm-up fit, first iteration of each left out. Spark's JVM start, "
        "DataFrame build and each fit's caching, random start and summary pass are not in "
        "the per-iteration figures."
    )
    notes.append(
        f"Convergence: tol {tol_mean:g} on the change of the mean log-likelihood for all "
        f"(Spark's tol is on the total, so it gets tol × N), at most {max_iter} iterations, "
        f"seeds {seeds}. Spark's ml API takes no initial model. 'scored' is the mean "
        "log-likelihood of each final model on the same float64 rows by one scorer (scipy); "
        "Spark's own figure is higher because its E-step adds machine epsilon to every "
        "weighted density (rows whose density is below ~1e-15 get uniform "
        "responsibilities and a floored log-likelihood)."
    )
    header = ["case", "tool", "min s/iter", "median s/iter", "Spark / dask-em"]
    table = [
        [
            r_["case"],
            r_["tool"],
            h.fmt_seconds(r_["min"]),
            h.fmt_seconds(r_["median"]),
            h.fmt_ratio(r_.get("speedup_vs_spark"), 1),
        ]
        for r_ in rows
    ]
    conv_table = [
        [
            c["tool"],
            c["start"] + ("" if c["seed"] is None else f", seed {c['seed']}"),
            c["n_iter"],
            "yes" if c["converged"] else "no",
            "-" if c["own_loglik_mean"] is None else f"{c['own_loglik_mean']:.5f}",
            f"{c['scored']:.5f}",
            h.fmt_seconds(c["seconds"]),
        ]
        for c in conv
    ]
    md = h.md_table(header, table)
    md += "\n\n" + h.md_table(
        [
            "to convergence",
            "start",
            "iterations",
            "converged",
            "own lower bound",
            "scored",
            "fit s",
        ],
        conv_table,
    )
    md += "\n\n" + h.md_table(
        [
            f"default starts, {len(seeds)} seeds",
            "median",
            "mean",
            "best",
            "worst",
            "at the best optimum",
            "median fit s",
        ],
        [
            [
                r_["tool"],
                f"{r_['median']:.5f}",
                f"{r_['mean']:.5f}",
                f"{r_['best']:.5f}",
                f"{r_['worst']:.5f}",
                f"{r_['at_best']}/{r_['seeds']}",
                h.fmt_seconds(r_["median_fit_seconds"]),
            ]
            for r_ in seed_summary
        ],
    )
    md += (
        f"\n\nSpark fixed costs: JVM + session {runner.start_seconds:.1f} s, DataFrame build "
        f"{runner.frame_seconds:.1f} s, per fit outside the iterations "
        f"{h.fmt_seconds(spark_row['fit_outside_iterations']['min'])} s"
        + (f", RDD build {runner.rdd_seconds:.1f} s" if runner.rdd_seconds else "")
        + f"; MLlib's BLAS: {runner.blas}."
    )
    return {
        "title": "Spark MLlib GaussianMixture (pyspark, local[2])",
        "rows": rows,
        "convergence": conv,
        "seed_summary": seed_summary,
        "spark_blas": runner.blas,
        "targets": targets,
        "notes": notes,
        "markdown": md,
    }


# --------------------------------------------------------------------------------------
# Suite 3: out of core
# --------------------------------------------------------------------------------------
def _evict(path: Path):
    """Drop one store's files from the page cache (theirs only; no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def _release(client, arr, timeout: float = 30.0):
    """Forget a persisted array on the cluster and wait until its chunks are gone, so
    that the next memory figure does not include them."""
    from distributed import futures_of

    keys = {f.key for f in futures_of(arr)}
    client.cancel(arr)

    def held(dask_scheduler, keys=keys):
        return sum(1 for key in keys if key in dask_scheduler.tasks)

    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(held) and time.monotonic() < deadline:
        time.sleep(0.1)
    client.run(gc.collect)


def write_zarr(path: Path, n: int, d: int, k: int, chunk_rows: int) -> float:
    """The seeded data as uncompressed zarr (written on the threaded scheduler)."""
    import dask
    import dask.array as da
    import zarr

    x = h.dask_data(n, d, k, chunk_rows)
    nocompress = (
        {"compressors": None} if int(zarr.__version__.split(".")[0]) >= 3 else {"compressor": None}
    )
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        da.to_zarr(x, str(path), overwrite=True, **nocompress)
    return time.perf_counter() - t0


def _job_zarr(path: Path, chunk_rows: int):
    """A zarr store opened as a job's ``data: {source: zarr}`` section opens it."""
    from dask_em.config import DataConfig
    from dask_em.io import load_data

    return load_data(DataConfig(source="zarr", path=str(path), chunk_rows=chunk_rows))


def suite_ooc(s: Settings) -> dict:
    import dask.array as da

    n, d, chunk = s.n(2e7, 2e6), 16, 250_000
    if s.max_rows:
        chunk = min(chunk, max(1000, n // 8))
    n_small = max(4 * chunk, n // 10)
    n_mid = max(n_small, n // 2)
    n_mem = min(n, s.n(2e6, 5e5))
    r = max(1, min(s.repeats, 3))
    cases = [("diag", 4), ("full", 8)]
    rows, targets, notes = [], [], []
    base = Path(s.data_dir or tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="dask-em-bench-", dir=base))
    path = tmp / f"x_{n}x{d}.zarr"
    try:
        s.say(f"[ooc] writing {h.fmt_n(n)}×{d} float64 to {path}")
        write_seconds = write_zarr(path, n, d, 8, chunk)
        # The memory runs at smaller N read stores of their own (the same rows): a row
        # slice of the array would not be read the way a job reads its data.
        parts = {n: path}
        for n_part in dict.fromkeys((n_small, n_mid)):
            if n_part != n:
                parts[n_part] = tmp / f"x_{n_part}x{d}.zarr"
                write_zarr(parts[n_part], n_part, d, 8, chunk)
        head = h.make_data(min(n, h.START_ROWS), d, 8)
        with h.local_cluster(2, 1, memory_limit="1GiB") as client:
            # The read pass is plain dask; EM reads the store as a job does (dask-em's
            # zarr source, whose blocks are read inside the statistics tasks).
            x = da.from_zarr(str(path))
            xe = _job_zarr(parts[n], chunk)
            for cache in ("warm", "cold"):
                times = []
                for _ in range(r + 1):
                    if cache == "cold":
                        _evict(path)
                    t, _ = h.timed(lambda: x.sum().compute())
                    times.append(t)
                rows.append(_row("read pass", f"da.from_zarr(p).sum(), cache {cache}", times[1:]))
                s.say(f"[ooc] read pass, {cache}: {min(times[1:]):.2f} s")
            for ct, k in cases:
                name = f"{ct} K={k}"
                start = h.make_start(head, k, ct)
                # In memory on the same cluster, scaled to N.
                xm = client.persist(x[:n_mem])
                from distributed import wait

                wait(xm)
                mem = daskem_fit(xm, start, r + 1, persist=False)
                _release(client, xm)
                del xm
                scale = n / n_mem
                rows.append(
                    _row(
                        name,
                        f"in memory at N={h.fmt_n(n_mem)}, × {scale:g}",
                        [t * scale for t in mem["times"]],
                    )
                )
                for cache in ("warm", "cold"):
                    s.say(f"[ooc] {name}: EM from zarr, cache {cache}")

                    def evict(_state, cache=cache):
                        if cache == "cold":
                            _evict(path)

                    if cache == "cold":
                        _evict(path)
                    with h.WorkerMemory(client) as wm:
                        fit = daskem_fit(xe, start, r + 1, persist=False, callback=evict)
                    rows.append(
                        _row(
                            name,
                            f"EM from zarr, cache {cache}",
                            fit["times"],
                            peak_worker_rss=wm.peak,
                            baseline_worker_rss=wm.baseline,
                            n_rows=n,
                        )
                    )
                # Peak memory at three sizes, each over the same number of iterations
                # (a longer run samples more and so peaks higher by chance), smallest
                # first, after the runs above have paid the workers' one-time costs.
                for n_part in dict.fromkeys((n_small, n_mid, n)):
                    s.say(f"[ooc] {name}: EM from zarr at N={h.fmt_n(n_part)} (memory)")
                    with h.WorkerMemory(client) as wm:
                        daskem_fit(_job_zarr(parts[n_part], chunk), start, 2, persist=False)
                    rows.append(
                        _row(
                            name,
                            f"EM from zarr at N={h.fmt_n(n_part)} (memory only)",
                            [],
                            peak_worker_rss=wm.peak,
                            baseline_worker_rss=wm.baseline,
                            n_rows=n_part,
                        )
                    )
    finally:
        if s.keep_data:
            s.say(f"[ooc] data kept at {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    by = {(row["case"], row["tool"]): row for row in rows}
    read_warm = by[("read pass", "da.from_zarr(p).sum(), cache warm")]["min"]
    read_cold = by[("read pass", "da.from_zarr(p).sum(), cache cold")]["min"]
    for ct, k in cases:
        name = f"{ct} K={k}"
        mem = next(row for row in rows if row["case"] == name and row["tool"].startswith("in m"))
        for cache, read in (("warm", read_warm), ("cold", read_cold)):
            em = by[(name, f"EM from zarr, cache {cache}")]
            bound = max(read, mem["min"])
            em["vs_bound"] = _ratio(em["min"], bound)
            targets.append(
                _target(
                    f"{name}, cache {cache}: iteration / max(read pass, in-memory × N)",
                    em["vs_bound"],
                    "<=",
                    1.2,
                )
            )
        big = by[(name, f"EM from zarr at N={h.fmt_n(n)} (memory only)")]
        for n_part in dict.fromkeys((n_small, n_mid)):
            part = by[(name, f"EM from zarr at N={h.fmt_n(n_part)} (memory only)")]
            targets.append(
                _target(
                    f"{name}: peak worker memory at N={h.fmt_n(n)} / at N={h.fmt_n(n_part)}",
                    _ratio(big["peak_worker_rss"], part["peak_worker_rss"]),
                    "<=",
                    1.2,
                    note="does not grow with N",
                )
            )
    notes.append(
        f"{h.fmt_n(n)}×{d} float64, uncompressed zarr, {chunk}-row chunks "
        f"({chunk * d * 8 / 2**20:.0f} MiB), written in {write_seconds:.1f} s; LocalCluster 2 "
        "workers × 1 thread, 1 GiB each, data not persisted; EM opens the store with "
        "dask-em's zarr source (`dask_em.io.load_data`), as a job does, the read pass with "
        "`da.from_zarr`. 'cold' drops the store's files "
        "from the page cache (posix_fadvise) before every pass. Peak memory: resident size "
        "of the worker processes sampled every 0.2 s."
    )
    header = ["case", "measure", "min s", "median s", "÷ max(read, in-memory)", "peak worker MiB"]
    table = [
        [
            row["case"],
            row["tool"],
            h.fmt_seconds(row["min"]),
            h.fmt_seconds(row["median"]),
            h.fmt_ratio(row.get("vs_bound")),
            f"{row['peak_worker_rss'] / 2**20:.0f}" if row.get("peak_worker_rss") else "-",
        ]
        for row in rows
    ]
    return {
        "title": f"Out of core (zarr on local disk, N={h.fmt_n(n)}, d={d})",
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "markdown": h.md_table(header, table),
    }


# --------------------------------------------------------------------------------------
# Suite 4: scaling in N
# --------------------------------------------------------------------------------------
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


def suite_scaling(s: Settings) -> dict:
    d, k = 16, 8
    sizes = [s.n(v, v / 4) for v in (1e6, 2e6, 4e6, 8e6)]
    sizes = sorted(set(sizes))
    x_all = h.make_data(sizes[-1], d, k)
    start = h.make_start(x_all, k, "full")
    rows = []
    # Sizes take turns, a few iterations each per round, so that a slow spell of this
    # (shared, noisy) machine falls on every N rather than on one. Its speed moves by
    # a third within a minute (seen at N=8e6: 3.0 s per iteration for two rounds, then
    # 2.1 s), so the rounds are many and short.
    rounds = 1 if s.quick else 6
    # Every sample covers the same work: ``window[n]`` consecutive iterations at N=n
    # process as many rows as one iteration at the largest N, and their mean is one
    # sample. The minimum of many short samples is lower than the minimum of a few
    # long ones on a machine whose speed wanders (a short sample can fall wholly in a
    # fast spell; a long one averages over spells), so minimums of single iterations
    # favour the small N. Those are reported beside, not used for the target.
    window = {n: max(1, round(sizes[-1] / n)) for n in sizes}
    samples = s.repeats if s.quick else max(2, s.repeats // 2)
    n_iter = {n: 1 + samples * window[n] for n in sizes}
    times: dict = {n: [] for n in sizes}
    windows: dict = {n: [] for n in sizes}
    # Each round's mean time per row at each N: how far the sizes of one round (a
    # minute or so of the machine) drift apart.
    round_ns: dict = {n: [] for n in sizes}
    for i in range(rounds):
        # Every other round runs the sizes in reverse, so that no N always follows the
        # same one (the largest fit's 1 GiB of pages, or a first fit's imports).
        for n in sizes if i % 2 == 0 else sizes[::-1]:
            s.say(f"[scaling] round {i + 1}/{rounds}: N={h.fmt_n(n)}")
            t = daskem_fit(x_all[:n], start, n_iter[n])["times"]
            times[n] += t
            windows[n] += equal_work_windows(t, window[n])
            round_ns[n].append(float(np.mean(t)) / n * 1e9)
    for n in sizes:
        row = _row(f"full N={h.fmt_n(n)} d={d} K={k}", "dask-em threads", windows[n], n_rows=n)
        row["window_iterations"] = window[n]
        row["iterations"] = times[n]
        row["ns_per_row"] = row["min"] / n * 1e9
        row["ns_per_row_median"] = row["median"] / n * 1e9
        row["ns_per_row_single_iteration_min"] = min(times[n]) / n * 1e9
        row["ns_per_row_by_round"] = round_ns[n]
        rows.append(row)

    def spread(values):
        return max(values) / min(values) - 1.0

    spread_of_minimums = spread([row["ns_per_row"] for row in rows])
    spread_of_medians = spread([row["ns_per_row_median"] for row in rows])
    spread_of_single = spread([row["ns_per_row_single_iteration_min"] for row in rows])
    by_round = [spread([round_ns[n][i] for n in sizes]) for i in range(rounds)]
    targets = [
        _target(
            "per-row time, (max − min) / min over N (min over equal-work samples)",
            spread_of_minimums,
            "<=",
            0.15,
            note=f"medians {spread_of_medians:.3f}; single-iteration minimums "
            f"{spread_of_single:.3f}; median of the rounds' spreads {np.median(by_round):.3f}",
        )
    ]
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
            h.fmt_n(row["n_rows"]),
            str(row["window_iterations"]),
            h.fmt_seconds(row["min"]),
            h.fmt_seconds(row["median"]),
            f"{row['ns_per_row']:.0f}",
            f"{row['ns_per_row_median']:.0f}",
            f"{row['ns_per_row_single_iteration_min']:.0f}",
            " / ".join(f"{v:.0f}" for v in row["ns_per_row_by_round"]),
        ]
        for row in rows
    ]
    return {
        "title": f"Scaling in N (full, d={d}, K={k}, dask-em threads)",
        "rows": rows,
        "targets": targets,
        "notes": [
            f"{rounds} round(s), the sizes in reverse order every other round; in each, "
            "every N runs one fit from the same start, of "
            + ", ".join(f"{n_iter[n]} iterations at N={h.fmt_n(n)}" for n in sizes)
            + " (first left out). A sample is the mean over consecutive iterations that "
            f"together process {h.fmt_n(sizes[-1])} rows, {samples} per fit; min and "
            "median over all rounds' samples. Per round, the mean per-row time of each "
            "N, and their spread: "
            + ", ".join(f"{v:.3f}" for v in by_round)
            + f" (median {np.median(by_round):.3f}).",
        ],
        "spread_by_round": by_round,
        "spread_of_minimums": spread_of_minimums,
        "spread_of_medians": spread_of_medians,
        "spread_of_single_iteration_minimums": spread_of_single,
        "markdown": h.md_table(header, table),
    }


# --------------------------------------------------------------------------------------
# Suite 5: float32 vs float64
# --------------------------------------------------------------------------------------
def suite_float32(s: Settings) -> dict:
    n, d, k = s.n(1e6, 2e5), 16, 8
    n_iter = max(s.repeats + 1, 10 if s.quick else 20)
    # A float32 iteration is half as long as a float64 one, so its minimum is the more
    # likely to fall in one of this machine's fast (or slow) spells: 6 rounds, not 3.
    rounds = 1 if s.quick else 6
    x64 = h.make_data(n, d, k)
    x32 = x64.astype(np.float32)
    rows, targets = [], []
    for ct in ("full", "diag"):
        start = h.make_start(x64, k, ct)
        name = f"{ct} N={h.fmt_n(n)} d={d} K={k}"
        # The dtypes take turns, a fit each per round, so that a slow spell of this
        # (shared, noisy) machine falls on both rather than on one.
        fits, times = {}, {"float64": [], "float32": []}
        for i in range(rounds):
            for dtype, x in (("float64", x64), ("float32", x32)):
                s.say(f"[float32] {name}: {dtype}, round {i + 1}/{rounds}")
                fits[dtype] = daskem_fit(x, start, n_iter)
                times[dtype] += fits[dtype]["times"]
        for dtype in ("float64", "float32"):
            rows.append(
                _row(
                    name,
                    f"dask-em threads {dtype}",
                    times[dtype],
                    final_loglik_mean=fits[dtype]["lower_bound"],
                    n_iter=n_iter,
                )
            )
        chunk = engine_chunk_rows(n, d)
        lims = {}
        for dtype, x in (("float64", x64), ("float32", x32)):
            lim = block_limit(x, fits[dtype]["model"]._params(), chunk, 3)
            lim.pop("alone")
            rows.append(_row(name, f"block limit {dtype}", lim.pop("times"), **lim))
            lims[dtype] = rows[-1]
        # The kernel's own gain, apart from the per-iteration fixed cost.
        lims["float32"]["speedup_vs_float64"] = _ratio(
            lims["float64"]["min"], lims["float32"]["min"]
        )
        speed = _ratio(rows[-4]["min"], rows[-3]["min"])
        ll64, ll32 = fits["float64"]["lower_bound"], fits["float32"]["lower_bound"]
        rel = abs(ll32 - ll64) / abs(ll64)
        rows[-3]["speedup_vs_float64"] = speed
        rows[-3]["rel_loglik_change"] = rel
        targets.append(_target(f"{name}: float32 speed-up over float64", speed, ">=", 1.8))
        targets.append(
            _target(f"{name}: relative change of the final log-likelihood", rel, "<=", 1e-6)
        )
    header = ["case", "tool", "min s/iter", "median s/iter", "speed-up", "rel. LL change"]
    table = [
        [
            row["case"],
            row["tool"],
            h.fmt_seconds(row["min"]),
            h.fmt_seconds(row["median"]),
            h.fmt_ratio(row.get("speedup_vs_float64")),
            f"{row['rel_loglik_change']:.1e}" if "rel_loglik_change" in row else "-",
        ]
        for row in rows
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
        "markdown": h.md_table(header, table),
    }


RUNNERS = {
    "em": suite_em,
    "spark": suite_spark,
    "ooc": suite_ooc,
    "scaling": suite_scaling,
    "float32": suite_float32,
}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def _engine_note(env) -> str:
    repo_engine = Path(__file__).resolve().parent.parent / "dask_em"
    path = env.get("engine_path")
    return "" if path is None or Path(path) == repo_engine else f", engine from {path}"


def render_markdown(result: dict) -> str:
    env = result["environment"]
    blas = ", ".join(
        f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['num_threads']} threads)"
        for b in env["blas"]
    )
    v = env["versions"]
    lines = [
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
    for name, suite in result["suites"].items():
        lines += ["", f"## {name}: {suite['title']}", ""]
        if suite.get("skipped"):
            lines.append(f"skipped: {suite['skipped']}")
            continue
        if suite.get("error"):
            lines.append(f"failed: {suite['error']}")
            continue
        lines.append(suite["markdown"])
        lines.append("")
        lines.append(
            f"Load average at start {suite['load'][0]}, at end {suite['load'][1]}; "
            f"{suite['seconds']:.0f} s."
        )
        if suite.get("targets"):
            lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
            for t in suite["targets"]:
                val = t["value"]
                shown = "-" if val is None else (f"{val:.3g}" if abs(val) < 1e3 else f"{val:.4g}")
                met = {True: "yes", False: "**no**", None: "-"}[t["ok"]]
                lines.append(f"| {t['what']} | {shown} | {t['target']} | {met} |")
        if suite.get("notes"):
            lines.append("")
            lines += [f"- {note}" for note in suite["notes"]]
    return "\n".join(lines) + "\n"


def _strip(obj):
    """Drop non-serialisable objects (fitted models) from suite results."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "model"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


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
        result["suites"][name] = _strip(suite)
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
