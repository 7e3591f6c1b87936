"""The local cluster a job starts (dask_em.jobs.cluster)."""

import os

from dask_em.jobs.cluster import connect, worker_environment
from dask_em.jobs.config import ClusterConfig, LocalClusterConfig


def _local(**kw):
    local = dict(n_workers=1, threads_per_worker=1, memory_limit="1GiB", dashboard_address=None)
    return ClusterConfig(local=LocalClusterConfig(**{**local, **kw}))


def _worker_value(client):
    return set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())


def test_local_workers_run_without_the_trim_threshold_left_by_an_earlier_cluster(monkeypatch):
    # What a nanny of an earlier cluster in this process leaves in os.environ.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with connect(_local()) as client:
        assert _worker_value(client) == {None}
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # put back
    with connect(_local(malloc_trim_threshold=131072)) as client:
        assert _worker_value(client) == {"131072"}


def test_worker_environment_restores_this_process(monkeypatch):
    monkeypatch.setenv("DASK_EM_TEST_VAR", "kept")
    monkeypatch.delenv("DASK_EM_TEST_OTHER", raising=False)
    import dask

    with worker_environment({"DASK_EM_TEST_VAR": None, "DASK_EM_TEST_OTHER": "1"}):
        assert "DASK_EM_TEST_VAR" not in os.environ
        environ = dask.config.get("distributed.nanny.pre-spawn-environ")
        assert environ["DASK_EM_TEST_VAR"] is None and environ["DASK_EM_TEST_OTHER"] == "1"
        os.environ["DASK_EM_TEST_VAR"] = "written by a nanny"
    assert os.environ["DASK_EM_TEST_VAR"] == "kept"
    assert "DASK_EM_TEST_OTHER" not in os.environ


def test_a_threads_only_cluster_logs_a_dashboard_link_that_answers(caplog):
    """Its scheduler is in-process (inproc://), so dask names the machine in the link;
    the dashboard listens on 127.0.0.1, and the logged link must point there."""
    import logging
    import re
    import urllib.request

    with caplog.at_level(logging.INFO, logger="dask_em"):
        with connect(_local(processes=False, dashboard_address="127.0.0.1:0")):
            (link,) = re.findall(r"Dashboard: (\S+)", caplog.text)
            assert link.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(link, timeout=10) as page:
                assert page.status == 200
