"""Block size for a cluster: scheduling stays under 5% of a pass where the data allows,
every thread gets a block, blocks stay within memory, and the job's own chunk_rows wins."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import THREADS

from dask_em.jobs._blocks import (
    MAX_BLOCK_BYTES,
    MIN_ROWS,
    TASK_SECONDS,
    choose_chunk_rows,
    row_seconds,
)
from dask_em.jobs.config import load_job
from dask_em.jobs.runner import run_job

pytestmark = pytest.mark.usefixtures("no_global_dask_state")


def _pass_shares(n_rows, rows, d, k, cov, threads):
    """Scheduling's share of one pass, counted as the scheduler sees it: every block a
    task of TASK_SECONDS in turn, the rows computed by ``threads`` in parallel."""
    blocks = math.ceil(n_rows / rows)
    scheduling = blocks * TASK_SECONDS
    compute = n_rows * row_seconds(d, k, cov) / threads
    return scheduling / (scheduling + compute)


CASES = [
    (d, k, cov, threads)
    for d, k in [(2, 3), (8, 4), (16, 8), (64, 16)]
    for cov in ("full", "diag")
    for threads in (1, 2, 8, 64, 800)
]


@pytest.mark.parametrize("d, k, cov, threads", CASES)
def test_scheduling_stays_under_5_percent_unless_the_data_or_memory_caps_it(d, k, cov, threads):
    n_rows = 10**12 // (8 * d)  # ~1 TB of float64
    rows = choose_chunk_rows(n_rows, d, k, cov, threads)
    capped = rows * d * 8 > MAX_BLOCK_BYTES - 8 * d
    assert rows * d * 8 <= MAX_BLOCK_BYTES
    assert rows >= MIN_ROWS or capped
    if not capped:
        # (+1e-4: the last, partial block)
        assert _pass_shares(n_rows, rows, d, k, cov, threads) <= 0.05 + 1e-4
        # ... and not far beyond what it takes (no needlessly huge blocks)
        if rows > MIN_ROWS:
            assert _pass_shares(n_rows, rows // 2, d, k, cov, threads) > 0.05 - 1e-3


@pytest.mark.parametrize("threads", [1, 2, 7, 64])
def test_every_thread_gets_a_block_of_small_data(threads):
    n_rows = 120_000
    rows = choose_chunk_rows(n_rows, 4, 3, "full", threads)
    assert math.ceil(n_rows / rows) == min(threads, n_rows)
    assert choose_chunk_rows(5, 4, 3, "full", threads) <= 5


def test_unknown_row_count_is_capped_by_memory_only():
    assert choose_chunk_rows(math.nan, 4, 3, "diag", 800) == MAX_BLOCK_BYTES // (4 * 8)
    for threads in (1, 8):
        assert choose_chunk_rows(math.nan, 4, 3, "diag", threads) == choose_chunk_rows(
            1e15, 4, 3, "diag", threads
        )


def test_float32_blocks_may_hold_twice_the_rows():
    d = 4096  # memory caps blocks below MIN_ROWS rows
    assert choose_chunk_rows(1e9, d, 8, "full", 800, itemsize=4) == MAX_BLOCK_BYTES // (4 * d)
    assert choose_chunk_rows(1e9, d, 8, "full", 800, itemsize=8) == MAX_BLOCK_BYTES // (8 * d)


def _job(tmp_path, **data):
    doc = {
        "cluster": THREADS,  # two threads
        "data": {
            "source": "synthetic",
            "synthetic": {"n_samples": 40_000, "n_features": 2, "n_components": 2, "seed": 1},
            **data,
        },
        "model": {"n_components": 2, "max_iter": 3},
        "output": {"dir": str(tmp_path / f"run{len(data)}"), "plots": False},
    }
    path = tmp_path / f"job{len(data)}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_job(path)


def test_the_job_chooses_blocks_for_its_cluster_unless_it_sets_chunk_rows(tmp_path):
    chosen = run_job(_job(tmp_path)).path
    summary = json.loads((chosen / "model.json").read_text())["data"]
    assert summary["chunk_rows"] == 20_000 and summary["n_chunks"] == 2  # one per thread
    given = run_job(_job(tmp_path, chunk_rows=5_000)).path
    summary = json.loads((given / "model.json").read_text())["data"]
    assert summary["chunk_rows"] == 5_000 and summary["n_chunks"] == 8
