"""Suite em: in memory, per EM iteration, dask-em against scikit-learn and the block limit.

Same data and same start for every tool; dask-em on the threaded scheduler and on
LocalClusters of two single-threaded workers.
"""

from __future__ import annotations

import harness as h
import measure
import peers
from suite import Settings, ratio, row, target, timing_table

TITLE = "In memory, per EM iteration (same data, same start)"


def _cases(s: Settings) -> list:
    """(covariance type, N, d, K) of each case."""
    return [
        ("full", s.n(1e6, 2e5), 16, 8),
        ("diag", s.n(1e6, 2e5), 16, 8),
        ("full", s.n(2e6, 4e5), 32, 16),
    ]


def _cluster_variants(s: Settings) -> list:
    """(label, MALLOC_TRIM_THRESHOLD_ for the workers) of the LocalClusters to run."""
    variants = {
        "dask": ("LocalCluster 2×1", "dask"),
        "unset": ("LocalCluster 2×1, MALLOC_TRIM unset", None),
    }
    keys = ["dask", "unset"] if s.malloc_trim == "both" else [s.malloc_trim]
    return [variants[k] for k in keys]


def _sklearn_rows(s: Settings, name, x, start):
    """scikit-learn's rows of one case, and its lower bounds (dask-em's are checked
    against them)."""
    s.say(f"[em] {name}: scikit-learn")
    sk = peers.sklearn_iterations(x, start, s.repeats + 1)
    rows = [row(name, "scikit-learn", h.after_first(sk["times"]), method=sk["method"])]
    if s.sklearn_1thread:
        # OpenBLAS's own threads spin-wait, so the default figure suffers badly
        # from any other load on the machine; one BLAS thread is the steady one.
        s.say(f"[em] {name}: scikit-learn, BLAS 1 thread")
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            sk1 = peers.sklearn_iterations(x, start, s.repeats + 1)
        rows.append(
            row(
                name,
                "scikit-learn, BLAS 1 thread",
                h.after_first(sk1["times"]),
                method=sk1["method"],
            )
        )
    return rows, sk["lower_bounds"]


class _Rounds:
    """dask-em's rows, their times pooled over rounds.

    The rows take turns over rounds (threads and the block limit for every case, then
    each LocalCluster for every case), so that a slow spell of this noisy machine falls
    on all of them rather than on one.
    """

    def __init__(self, s: Settings, sklearn_lower_bounds: dict):
        self.s = s
        self.sk_lbs = sklearn_lower_bounds
        self.threads_lbs: dict = {}
        self.ideal_walls: dict = {}  # case -> wall times of the limit's threads, all rounds
        self.pooled: dict = {}

    def pool(self, name, tool, times, **extra):
        pooled = self.pooled.setdefault((name, tool), {"times": [], "extra": {}})
        pooled["times"] += times
        pooled["extra"].update(extra)

    def threads(self, name, x, start, i, rounds):
        """dask-em on threads, and the block limit sampled beside its iterations."""
        s, r = self.s, self.s.repeats
        s.say(f"[em] {name}: dask-em threads and block limit, round {i + 1}/{rounds}")
        chunk = measure.engine_chunk_rows(*x.shape)
        # One limit sample right after each iteration (the callback is outside the
        # timed part), so that both see the same moment of this machine's speed.
        samples, walls = [], self.ideal_walls.setdefault(name, [])

        def limit_sample(progress):
            # The first iteration is left out of the threads figure; so is its sample.
            if progress.iteration > 1:
                params = progress.candidates[0].params
                one = measure.block_limit(x, params, chunk, 1, alone_repeats=0)
                samples.extend(one["times"])
                walls.extend(one["ideal_pass"]["all"])

        th = measure.daskem_fit(x, start, r + 1, callback=limit_sample)
        if i == 0:
            self.threads_lbs[name] = th["lower_bounds"]
        self.pool(
            name,
            "dask-em threads",
            th["times"],
            chunk_rows=chunk,
            first_iteration=th["first_iteration"],
            lower_bounds_vs_sklearn=measure.max_rel_diff(th["lower_bounds"], self.sk_lbs[name]),
        )
        lim = measure.block_limit(x, th["model"]._params(), chunk, 0, alone_repeats=r)
        alone = lim.pop("alone")
        self.pool(
            name,
            "block limit",
            samples,
            block_rows=lim["block_rows"],
            n_blocks=lim["n_blocks"],
            cores=lim["cores"],
            ideal_pass=h.summary(walls),
        )
        self.pool(name, "one block alone × blocks ÷ cores", alone["scaled"], block=alone)

    def cluster(self, label, name, x, start, i, rounds):
        """dask-em on the LocalCluster of the caller's ``with``."""
        self.s.say(f"[em] {name}: dask-em {label}, round {i + 1}/{rounds}")
        cl = measure.daskem_fit(x, start, self.s.repeats + 1)
        self.pool(
            name,
            f"dask-em {label}",
            cl["times"],
            # What the engine chose for numpy input on this cluster.
            chunk_rows=measure.engine_chunk_rows(*x.shape),
            first_iteration=cl["first_iteration"],
            lower_bounds_vs_threads=measure.max_rel_diff(
                cl["lower_bounds"], self.threads_lbs[name]
            ),
        )

    def run(self, state, rounds) -> list:
        """Every round over the cases ``state`` ((name, x, start) each); the rows."""
        for i in range(rounds):
            for name, x, start in state:
                self.threads(name, x, start, i, rounds)
            for label, trim in _cluster_variants(self.s):
                self.s.say(f"[em] starting {label}, round {i + 1}/{rounds}")
                with h.local_cluster(2, 1, malloc_trim=trim):
                    for name, x, start in state:
                        self.cluster(label, name, x, start, i, rounds)
        return [
            row(name, tool, p["times"], **p["extra"]) for (name, tool), p in self.pooled.items()
        ]


def _compare(rows) -> dict:
    """case -> tool -> row; dask-em's rows get their ratios to the peers of their case."""
    by_case: dict = {}
    for r_ in rows:
        by_case.setdefault(r_["case"], {})[r_["tool"]] = r_
    for tools in by_case.values():
        sk, lim = tools["scikit-learn"], tools["block limit"]
        sk1 = tools.get("scikit-learn, BLAS 1 thread")
        for r_ in tools.values():
            if r_["tool"].startswith("dask-em"):
                if sk1 is not None:
                    r_["speedup_vs_sklearn_1thread"] = ratio(sk1["min"], r_["min"])
                r_["speedup_vs_sklearn"] = ratio(sk["min"], r_["min"])
                r_["speedup_vs_sklearn_median"] = ratio(sk["median"], r_["median"])
                r_["of_block_limit"] = ratio(lim["min"], r_["min"])
    return by_case


def _targets(by_case: dict) -> list:
    targets = []
    for case, tools in by_case.items():
        full = case.startswith("full")
        th = tools["dask-em threads"]
        goal = 3.5 if full else 3.0
        targets.append(
            target(f"{case}: threads vs scikit-learn", th["speedup_vs_sklearn"], ">=", goal)
        )
        if not full:
            continue
        cl = next((v for t, v in tools.items() if t.startswith("dask-em LocalCluster")), None)
        if cl is not None:
            targets.append(
                target(
                    f"{case}: {cl['tool'][8:]} vs scikit-learn",
                    cl["speedup_vs_sklearn"],
                    ">=",
                    3.0,
                )
            )
        targets.append(
            target(f"{case}: threads, fraction of block limit", th["of_block_limit"], ">=", 0.8)
        )
        if cl is not None:
            targets.append(
                target(
                    f"{case}: {cl['tool'][8:]}, fraction of block limit",
                    cl["of_block_limit"],
                    ">=",
                    0.8,
                )
            )
    return targets


def _notes(by_case: dict, n_iter: int, rounds: int) -> list:
    notes = []
    for case, tools in by_case.items():
        lb = tools["dask-em threads"].get("lower_bounds_vs_sklearn")
        notes.append(
            f"{case}: lower bounds of dask-em (threads) and scikit-learn from the same start "
            f"agree to {lb:.1e} relative over {n_iter} iterations."
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
    return notes


def _table(s: Settings, rows, by_case: dict) -> str:
    columns = [
        ("vs scikit-learn", lambda r_: h.fmt_ratio(r_.get("speedup_vs_sklearn"), 1)),
        ("of block limit", lambda r_: h.fmt_ratio(r_.get("of_block_limit"))),
    ]
    if s.sklearn_1thread:
        columns.insert(
            1,
            (
                "vs scikit-learn 1 thread",
                lambda r_: h.fmt_ratio(r_.get("speedup_vs_sklearn_1thread"), 1),
            ),
        )
    order = list(by_case)
    # A case's rows together; stable, so its tools keep their order.
    return timing_table(sorted(rows, key=lambda r_: order.index(r_["case"])), columns)


def suite_em(s: Settings) -> dict:
    """In memory, per iteration: scikit-learn, dask-em (threads, LocalClusters) and the
    block limit, case by case."""
    rows, sk_lbs, state = [], {}, []
    for ct, n, d, k in _cases(s):
        name = f"{ct} N={h.fmt_n(n)} d={d} K={k}"
        x = h.make_data(n, d, k)
        start = h.make_start(x, k, ct)
        sk_rows, sk_lbs[name] = _sklearn_rows(s, name, x, start)
        rows += sk_rows
        state.append((name, x, start))
    rounds = 1 if s.quick else 3
    rows += _Rounds(s, sk_lbs).run(state, rounds)
    state.clear()
    by_case = _compare(rows)
    return {
        "title": TITLE,
        "rows": rows,
        "targets": _targets(by_case),
        "notes": _notes(by_case, s.repeats + 1, rounds),
        "markdown": _table(s, rows, by_case),
    }
