"""Shared pieces of the benchmarks: seeded data, the common start, timing summaries, the
environment record, a LocalCluster with a worker-memory sampler, and the output writers.

Nothing here is timed by the test suite; ``tests/test_benchmarks.py`` only checks that the
harness still runs end to end on a tiny problem.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Rows per generation block: row i of a data set depends only on (seed, d, i // GEN_BLOCK),
# so every tool, chunking and size sees the same rows, and a larger N extends a smaller one.
GEN_BLOCK = 250_000
SEED = 20240601
# The start is built from the first rows only, so it is the same for every N.
START_ROWS = 100_000


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def true_mixture(d: int, k: int, seed: int = SEED):
    """The generating mixture: weights (k,), means (k, d), covariance factors (k, d, d)."""
    rng = np.random.default_rng([seed, d, k, 0])
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(0.0, 2.0, size=(k, d))
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ a.transpose(0, 2, 1) + 0.3 * np.eye(d)
    return weights, means, np.linalg.cholesky(covs)


def _gen_block(d: int, k: int, seed: int, index: int) -> np.ndarray:
    weights, means, chols = true_mixture(d, k, seed)
    rng = np.random.default_rng([seed, d, k, 1, index])
    labels = rng.choice(k, size=GEN_BLOCK, p=weights)
    z = rng.standard_normal((GEN_BLOCK, d))
    out = np.empty((GEN_BLOCK, d))
    for j in range(k):
        rows = np.flatnonzero(labels == j)
        out[rows] = means[j] + z[rows] @ chols[j].T
    return out


def data_rows(start: int, stop: int, d: int, k: int, *, seed: int = SEED, dtype="float64"):
    """Rows ``start:stop`` of the seeded data set (d features, k generating components)."""
    first, last = start // GEN_BLOCK, (stop - 1) // GEN_BLOCK
    parts = [_gen_block(d, k, seed, i) for i in range(first, last + 1)]
    block = np.concatenate(parts) if len(parts) > 1 else parts[0]
    off = first * GEN_BLOCK
    return np.ascontiguousarray(block[start - off : stop - off], dtype=dtype)


def make_data(n: int, d: int, k: int, *, seed: int = SEED, dtype="float64") -> np.ndarray:
    """The first ``n`` rows of the seeded data set, in memory."""
    out = np.empty((n, d), dtype=dtype)
    for a in range(0, n, GEN_BLOCK):
        b = min(n, a + GEN_BLOCK)
        out[a:b] = data_rows(a, b, d, k, seed=seed)
    return out


def _dask_block(d, k, seed, dtype, block_info=None):
    (a, b), _ = block_info[None]["array-location"]
    return data_rows(a, b, d, k, seed=seed, dtype=dtype)


def dask_data(n: int, d: int, k: int, chunk_rows: int, *, seed: int = SEED, dtype="float64"):
    """The same rows as :func:`make_data`, generated lazily block by block (for zarr)."""
    import dask.array as da

    chunks = ((chunk_rows,) * (n // chunk_rows) + ((n % chunk_rows,) if n % chunk_rows else ()),)
    return da.map_blocks(
        _dask_block,
        d,
        k,
        seed,
        dtype,
        chunks=chunks + ((d,),),
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
    )


@dataclass(frozen=True)
class Start:
    """One initial mixture given to every tool (``weights_init``, ``means_init``,
    ``precisions_init``)."""

    weights: np.ndarray
    means: np.ndarray
    precisions: np.ndarray
    covariance_type: str

    def kwargs(self) -> dict:
        return {
            "weights_init": self.weights,
            "means_init": self.means,
            "precisions_init": self.precisions,
        }

    def covariances(self) -> np.ndarray:
        if self.covariance_type == "full":
            return np.linalg.inv(self.precisions)
        return 1.0 / self.precisions


def make_start(x: np.ndarray, k: int, covariance_type: str, *, seed: int = SEED) -> Start:
    """Equal weights, ``k`` seeded rows as means, and the data's own covariance for every
    component (the ``random_from_data`` idea, made deterministic and tool-independent)."""
    head = np.asarray(x[:START_ROWS], dtype=np.float64)
    rng = np.random.default_rng([seed, 2])
    means = head[rng.choice(head.shape[0], size=k, replace=False)]
    cov = np.cov(head, rowvar=False) + 1e-6 * np.eye(head.shape[1])
    if covariance_type == "full":
        prec = np.repeat(np.linalg.inv(cov)[None], k, axis=0)
    elif covariance_type == "diag":
        prec = np.repeat((1.0 / np.diag(cov))[None], k, axis=0)
    else:
        raise ValueError(f"benchmarks use full or diag, not {covariance_type!r}")
    return Start(np.full(k, 1.0 / k), means, prec, covariance_type)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
def summary(times) -> dict:
    """Min, median and all values of a list of seconds."""
    times = [float(t) for t in times]
    if not times:
        return {"min": None, "median": None, "n": 0, "all": []}
    return {
        "min": min(times),
        "median": statistics.median(times),
        "n": len(times),
        "all": times,
    }


def timed(func, *args, **kwargs):
    t0 = time.perf_counter()
    out = func(*args, **kwargs)
    return time.perf_counter() - t0, out


def after_first(times) -> list:
    """Per-iteration seconds without the first iteration, unless it is the only one.

    The first iteration also pays one-time costs (imports, a warm-up, data a cluster
    is still receiving), so it is left out of every per-iteration figure.
    """
    return times[1:] if len(times) > 1 else times


def quiet_fit(model, x, warning, **kwargs) -> float:
    """Seconds of ``model.fit(x, **kwargs)`` with the ``warning`` category silenced (a
    fit of a fixed number of iterations warns that it did not converge)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", warning)
        t0 = time.perf_counter()
        model.fit(x, **kwargs)
        return time.perf_counter() - t0


def loadavg() -> list:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------
def _version(name: str):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def java_version() -> str | None:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stderr or out.stdout).strip().splitlines()
    return text[0] if text else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def environment() -> dict:
    """Machine, BLAS and versions; enough to tell two result files apart."""
    import psutil
    from threadpoolctl import threadpool_info

    blas = [
        {
            key: info.get(key)
            for key in (
                "internal_api",
                "version",
                "num_threads",
                "threading_layer",
                "architecture",
                "filepath",
            )
        }
        for info in threadpool_info()
    ]
    versions = {
        name: _version(name)
        for name in (
            "dask-em",
            "numpy",
            "scipy",
            "dask",
            "distributed",
            "scikit-learn",
            "zarr",
            "threadpoolctl",
            "pyspark",
        )
    }
    versions["python"] = platform.python_version()
    status = _git("status", "--porcelain", "--untracked-files=no", "dask_em")
    try:
        import dask_em

        engine_path = str(Path(dask_em.__file__).resolve().parent)
    except ImportError:  # pragma: no cover - the benchmarks need the package
        engine_path = None
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cores": cores(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "blas": blas,
        "versions": versions,
        "java": java_version(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # Uncommitted changes to the engine in this checkout; the package actually
        # imported may be another copy (e.g. a snapshot on PYTHONPATH): see engine_path.
        "engine_modified": bool(status),
        "engine_path": engine_path,
    }


# --------------------------------------------------------------------------------------
# LocalCluster
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def local_cluster(n_workers=2, threads_per_worker=1, memory_limit="auto", malloc_trim="dask"):
    """A LocalCluster of worker processes on 127.0.0.1, closed on exit.

    ``malloc_trim``: "dask" keeps dask's ``MALLOC_TRIM_THRESHOLD_=65536`` for the
    workers (what a user's own ``LocalCluster()`` gets); None unsets it (what
    ``dask-em run`` does by default).
    """
    from distributed import Client, LocalCluster

    from dask_em.jobs.cluster import worker_environment

    environ = {} if malloc_trim == "dask" else {"MALLOC_TRIM_THRESHOLD_": malloc_trim}
    with worker_environment(environ):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            memory_limit=memory_limit,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
        )
    try:
        with Client(cluster) as client:
            client.wait_for_workers(n_workers, timeout=120)
            yield client
    finally:
        cluster.close()


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class WorkerMemory:
    """Samples every worker's resident memory from a background thread.

    ``with WorkerMemory(client) as mem: ...`` then ``mem.peak`` (bytes, max over workers
    and samples) and ``mem.baseline`` (max over workers before the block ran).
    """

    def __init__(self, client, interval: float = 0.2):
        self.client = client
        self.interval = interval
        self.samples: list[dict] = []
        self.baseline = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self):
        try:
            values = self.client.run(_rss)
        except Exception:
            return None
        self.samples.append(values)
        return values

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        first = self._sample() or {}
        self.baseline = max(first.values(), default=0)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False

    @property
    def peak(self) -> int:
        return max((max(s.values(), default=0) for s in self.samples), default=0)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def write_json(path: Path, obj) -> Path:
    # dask_em's atomic writer: numpy values as plain numbers, a temporary of a fresh
    # random name (never a file of the user's), then a rename
    from dask_em.io import atomic_write_json

    return atomic_write_json(path, obj)


def fmt_seconds(v) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(v, digits=2) -> str:
    return "-" if v is None else f"{v:.{digits}f}×"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in r) + " |")
    return "\n".join(lines)


def fmt_n(n: int) -> str:
    """1000000 -> '1e6', 2500000 -> '2.5e6'."""
    exp = int(np.floor(np.log10(n))) if n > 0 else 0
    mant = n / 10**exp
    return f"{mant:g}e{exp}"
