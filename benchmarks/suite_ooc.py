"""Suite ooc: out of core, EM over a zarr store on local disk that is not persisted.

Each EM iteration against the larger of a plain read pass over the store and the
in-memory iteration scaled to N, with the page cache warm and cold; and the workers' peak
memory at three sizes, which should not grow with N.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import harness as h
import measure
from suite import Settings, ratio, row, target, timing_table

CASES = [("diag", 4), ("full", 8)]


@dataclass(frozen=True)
class _Sizes:
    """Rows of the store, of the smaller stores for the memory figures and of the
    in-memory run; block size and repeats."""

    n: int
    chunk: int
    n_small: int
    n_mid: int
    n_mem: int
    repeats: int
    d: int = 16

    @classmethod
    def of(cls, s: Settings) -> _Sizes:
        n, chunk = s.n(2e7, 2e6), 250_000
        if s.max_rows:
            chunk = min(chunk, max(1000, n // 8))
        n_small = max(4 * chunk, n // 10)
        return cls(
            n=n,
            chunk=chunk,
            n_small=n_small,
            n_mid=max(n_small, n // 2),
            n_mem=min(n, s.n(2e6, 5e5)),
            repeats=max(1, min(s.repeats, 3)),
        )


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
    from dask_em.io import load_data
    from dask_em.jobs.config import DataConfig

    return load_data(DataConfig(source="zarr", path=str(path), chunk_rows=chunk_rows))


def _write_parts(z: _Sizes, path: Path, tmp: Path) -> dict:
    """N -> store: the memory runs at smaller N read stores of their own (the same
    rows), since a row slice of the array would not be read the way a job reads its
    data."""
    parts = {z.n: path}
    for n_part in dict.fromkeys((z.n_small, z.n_mid)):
        if n_part != z.n:
            parts[n_part] = tmp / f"x_{n_part}x{z.d}.zarr"
            write_zarr(parts[n_part], n_part, z.d, 8, z.chunk)
    return parts


def _read_pass_rows(s: Settings, x, path: Path, repeats: int) -> list:
    rows = []
    for cache in ("warm", "cold"):
        times = []
        for _ in range(repeats + 1):
            if cache == "cold":
                _evict(path)
            t, _ = h.timed(lambda: x.sum().compute())
            times.append(t)
        rows.append(row("read pass", f"da.from_zarr(p).sum(), cache {cache}", times[1:]))
        s.say(f"[ooc] read pass, {cache}: {min(times[1:]):.2f} s")
    return rows


def _in_memory_row(client, x, start, name, z: _Sizes) -> dict:
    """EM on the first ``n_mem`` rows persisted on the same cluster, scaled to N."""
    from distributed import wait

    xm = client.persist(x[: z.n_mem])
    wait(xm)
    mem = measure.daskem_fit(xm, start, z.repeats + 1, persist=False)
    _release(client, xm)
    del xm
    scale = z.n / z.n_mem
    tool = f"in memory at N={h.fmt_n(z.n_mem)}, × {scale:g}"
    return row(name, tool, [t * scale for t in mem["times"]])


def _memory_row(client, run_fit, name, tool, n_rows, *, timed=True) -> dict:
    """The row of ``run_fit()`` (a dask-em fit) with the workers' memory sampled
    throughout; its times unless ``timed`` is false (a memory figure only)."""
    with h.WorkerMemory(client) as wm:
        fit = run_fit()
    return row(
        name,
        tool,
        fit["times"] if timed else [],
        peak_worker_rss=wm.peak,
        baseline_worker_rss=wm.baseline,
        n_rows=n_rows,
    )


def _cache_rows(s: Settings, client, xe, path, start, name, z: _Sizes) -> list:
    """EM from the store, page cache warm, then cold (dropped before every pass)."""
    rows = []
    for cache in ("warm", "cold"):
        s.say(f"[ooc] {name}: EM from zarr, cache {cache}")

        def evict(_state, cache=cache):
            if cache == "cold":
                _evict(path)

        def run_fit(evict=evict):
            return measure.daskem_fit(xe, start, z.repeats + 1, persist=False, callback=evict)

        if cache == "cold":
            _evict(path)
        rows.append(_memory_row(client, run_fit, name, f"EM from zarr, cache {cache}", z.n))
    return rows


def _memory_rows(s: Settings, client, parts, start, name, z: _Sizes) -> list:
    """Peak memory at three sizes, each over the same number of iterations (a longer
    run samples more and so peaks higher by chance), smallest first; run after the
    timed fits, which have paid the workers' one-time costs."""
    rows = []
    for n_part in dict.fromkeys((z.n_small, z.n_mid, z.n)):
        s.say(f"[ooc] {name}: EM from zarr at N={h.fmt_n(n_part)} (memory)")

        def run_fit(n_part=n_part):
            return measure.daskem_fit(_job_zarr(parts[n_part], z.chunk), start, 2, persist=False)

        tool = f"EM from zarr at N={h.fmt_n(n_part)} (memory only)"
        rows.append(_memory_row(client, run_fit, name, tool, n_part, timed=False))
    return rows


def _measure(s: Settings, z: _Sizes, path: Path, parts: dict) -> list:
    import dask.array as da

    head = h.make_data(min(z.n, h.START_ROWS), z.d, 8)
    with h.local_cluster(2, 1, memory_limit="1GiB") as client:
        # The read pass is plain dask; EM reads the store as a job does (dask-em's
        # zarr source, whose blocks are read inside the statistics tasks).
        x = da.from_zarr(str(path))
        xe = _job_zarr(parts[z.n], z.chunk)
        rows = _read_pass_rows(s, x, path, z.repeats)
        for ct, k in CASES:
            name = f"{ct} K={k}"
            start = h.make_start(head, k, ct)
            rows.append(_in_memory_row(client, x, start, name, z))
            rows += _cache_rows(s, client, xe, path, start, name, z)
            rows += _memory_rows(s, client, parts, start, name, z)
    return rows


def _targets(z: _Sizes, rows) -> list:
    """The targets; also each EM-from-zarr row's ``vs_bound``."""
    by = {(r_["case"], r_["tool"]): r_ for r_ in rows}
    read_warm = by[("read pass", "da.from_zarr(p).sum(), cache warm")]["min"]
    read_cold = by[("read pass", "da.from_zarr(p).sum(), cache cold")]["min"]
    targets = []
    for ct, k in CASES:
        name = f"{ct} K={k}"
        mem = next(r_ for r_ in rows if r_["case"] == name and r_["tool"].startswith("in m"))
        for cache, read in (("warm", read_warm), ("cold", read_cold)):
            em = by[(name, f"EM from zarr, cache {cache}")]
            bound = max(read, mem["min"])
            em["vs_bound"] = ratio(em["min"], bound)
            targets.append(
                target(
                    f"{name}, cache {cache}: iteration / max(read pass, in-memory × N)",
                    em["vs_bound"],
                    "<=",
                    1.2,
                )
            )
        big = by[(name, f"EM from zarr at N={h.fmt_n(z.n)} (memory only)")]
        for n_part in dict.fromkeys((z.n_small, z.n_mid)):
            part = by[(name, f"EM from zarr at N={h.fmt_n(n_part)} (memory only)")]
            targets.append(
                target(
                    f"{name}: peak worker memory at N={h.fmt_n(z.n)} / at N={h.fmt_n(n_part)}",
                    ratio(big["peak_worker_rss"], part["peak_worker_rss"]),
                    "<=",
                    1.2,
                    note="does not grow with N",
                )
            )
    return targets


def _note(z: _Sizes, write_seconds: float) -> str:
    return (
        f"{h.fmt_n(z.n)}×{z.d} float64, uncompressed zarr, {z.chunk}-row chunks "
        f"({z.chunk * z.d * 8 / 2**20:.0f} MiB), written in {write_seconds:.1f} s; "
        "LocalCluster 2 workers × 1 thread, 1 GiB each, data not persisted; EM opens the "
        "store with dask-em's zarr source (`dask_em.io.load_data`), as a job does, the "
        "read pass with `da.from_zarr`. 'cold' drops the store's files from the page cache "
        "(posix_fadvise) before every pass. Peak memory: resident size of the worker "
        "processes sampled every 0.2 s."
    )


def _table(rows) -> str:
    columns = [
        ("÷ max(read, in-memory)", lambda r_: h.fmt_ratio(r_.get("vs_bound"))),
        (
            "peak worker MiB",
            lambda r_: (
                f"{r_['peak_worker_rss'] / 2**20:.0f}" if r_.get("peak_worker_rss") else "-"
            ),
        ),
    ]
    return timing_table(rows, columns, names=("case", "measure", "min s", "median s"))


def suite_ooc(s: Settings) -> dict:
    """EM from a zarr store (not persisted) against a read pass and the in-memory
    iteration; the workers' peak memory at three sizes."""
    z = _Sizes.of(s)
    base = Path(s.data_dir or tempfile.gettempdir())
    tmp = Path(tempfile.mkdtemp(prefix="dask-em-bench-", dir=base))
    path = tmp / f"x_{z.n}x{z.d}.zarr"
    try:
        s.say(f"[ooc] writing {h.fmt_n(z.n)}×{z.d} float64 to {path}")
        write_seconds = write_zarr(path, z.n, z.d, 8, z.chunk)
        parts = _write_parts(z, path, tmp)
        rows = _measure(s, z, path, parts)
    finally:
        if s.keep_data:
            s.say(f"[ooc] data kept at {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    targets = _targets(z, rows)  # before the table: it adds the rows' vs_bound
    return {
        "title": f"Out of core (zarr on local disk, N={h.fmt_n(z.n)}, d={z.d})",
        "rows": rows,
        "targets": targets,
        "notes": [_note(z, write_seconds)],
        "markdown": _table(rows),
    }
