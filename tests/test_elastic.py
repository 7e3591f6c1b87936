"""Elastic clusters and the dashboard: workers added and removed mid-fit change nothing,
a job can ask for adaptive scaling, and the dashboard it links to shows ``em-*`` tasks.

Every cluster binds 127.0.0.1 on free ports and is closed in a ``finally``.
"""

from __future__ import annotations

import logging
import urllib.request

import numpy as np
import pytest
import yaml
from conftest import (
    THREADS,
    local_cluster_client,
    make_blobs,
    shutdown_dask_processes,
    start_dask_processes,
)

from dask_em import GaussianMixture
from dask_em.jobs.cluster import dashboard_link
from dask_em.jobs.config import ConfigError, load_job
from dask_em.jobs.runner import run_job

pytestmark = [
    pytest.mark.usefixtures("no_global_dask_state"),
    pytest.mark.filterwarnings("ignore::dask_em.mixture._gaussian.ConvergenceWarning"),
]

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _estimator():
    return GaussianMixture(
        n_components=3,
        tol=1e-12,
        max_iter=7,
        init_params="random_from_data",
        random_state=0,
        persist=True,
    )


def test_workers_added_and_removed_mid_fit_change_nothing():
    import dask.array as da

    X, _ = make_blobs(n=40_000, d=4, k=3, seed=8)
    x = da.from_array(X, chunks=4_000)
    with local_cluster_client(dashboards=True, n_workers=1) as client:
        cluster = client.cluster
        reference = _estimator().fit(x)
        counts: list[int] = []

        def callback(progress):
            counts.append(len(client.scheduler_info()["workers"]))
            if progress.iteration == 2:
                cluster.scale(3)  # grow: the next passes spread over new workers
                client.wait_for_workers(3, timeout=60)
            elif progress.iteration == 4:
                # shrink: retired workers hand their persisted blocks over first
                cluster.scale(1)

        elastic = _estimator().fit(x, callback=callback)
    assert max(counts) == 3 and counts[-1] == 1, counts
    assert elastic.n_iter_ == reference.n_iter_ == 7
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(elastic, name), getattr(reference, name), rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(elastic.lower_bounds_, reference.lower_bounds_, rtol=1e-12)


def _job(tmp_path, cluster: dict, name: str):
    doc = {
        "cluster": cluster,
        "data": {
            "source": "synthetic",
            "synthetic": {"n_samples": 30_000, "n_features": 3, "n_components": 3, "seed": 4},
            "chunk_rows": 3_000,
        },
        "model": {"n_components": 3, "tol": 1e-12, "max_iter": 6, "random_state": 0},
        "output": {"dir": str(tmp_path / name), "plots": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_job(path)


def test_adaptive_job_links_its_dashboard_and_fits_as_on_threads(tmp_path, caplog):
    cluster = {
        "local": {
            "n_workers": 1,
            "threads_per_worker": 1,
            "memory_limit": "1GiB",
            "dashboard_address": "127.0.0.1:0",
        },
        "adapt": {"minimum": 1, "maximum": 2, "interval": 0.2},
    }
    seen: dict = {}

    def on_iteration(progress):
        if progress.iteration == 2:  # mid-fit: the dashboard answers, tasks named em-*
            from distributed import get_client

            link = get_client().dashboard_link
            with urllib.request.urlopen(link, timeout=10) as page:
                seen["status"] = page.status
            seen["prefixes"] = get_client().run_on_scheduler(
                lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)
            )
            seen["link"] = link

    with caplog.at_level(logging.INFO, logger="dask_em"):
        adaptive = run_job(_job(tmp_path, cluster, "adaptive"), on_iteration=on_iteration)
    reference = run_job(_job(tmp_path, THREADS, "threads"))
    assert "Adaptive scaling: 1 to 2 worker(s)" in caplog.text
    assert f"Dashboard: {seen['link']}" in caplog.text
    assert seen["link"].startswith("http://127.0.0.1:")
    assert seen["status"] == 200
    # readable names on the dashboard: the statistics of each block and their sum
    assert {"em-stats", "em-result"} <= set(seen["prefixes"]), seen["prefixes"]
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(adaptive.model, name), getattr(reference.model, name), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize(
    "adapt, words",
    [
        ({"minimum": 3, "maximum": 2}, "maximum (2) is below minimum (3)"),
        ({"minimum": 0, "maximum": 2}, "greater than or equal to 1"),
        ({"maximum": 2, "every": 1}, "unknown key"),
    ],
)
def test_adapt_settings_are_checked(tmp_path, adapt, words):
    with pytest.raises(ConfigError, match=r"cluster\.adapt") as info:
        _job(tmp_path, {"local": {"n_workers": 1}, "adapt": adapt}, "bad")
    assert words in str(info.value)


def test_adapt_is_refused_for_a_scheduler_address(tmp_path):
    with pytest.raises(ConfigError, match="scaled by whoever started it"):
        _job(tmp_path, {"address": "tcp://127.0.0.1:8786", "adapt": {"maximum": 2}}, "bad")


def test_a_remote_scheduler_without_a_dashboard_says_so(tmp_path, caplog):
    from dask_em.jobs.cluster import connect
    from dask_em.jobs.config import ClusterConfig

    address, procs = start_dask_processes(tmp_path)  # scheduler with --no-dashboard
    try:
        with caplog.at_level(logging.INFO, logger="dask_em"):
            with connect(ClusterConfig(address=address, timeout=30)) as client:
                assert dashboard_link(client) is None
    finally:
        shutdown_dask_processes(address, procs)
    assert "Dashboard: not served by this scheduler" in caplog.text
