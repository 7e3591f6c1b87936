import contextlib

import numpy as np
import pytest

COV_TYPES = ["full", "tied", "diag", "spherical"]


def make_blobs(n=2000, d=3, k=3, seed=0, spread=6.0, offset=0.0, dtype=np.float64):
    """Seeded Gaussian blobs with unequal, correlated covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, size=(k, d))
    labels = rng.integers(0, k, size=n)
    mixing = [np.eye(d) + 0.3 * rng.normal(size=(d, d)) for _ in range(k)]
    X = np.stack([centers[c] + mixing[c] @ rng.normal(size=d) for c in labels])
    return (X + offset).astype(dtype), labels


@pytest.fixture(autouse=True)
def _package_logger_restored():
    """Each test sees the ``dask_em`` logger as the process started with it: the CLI run
    in-process (CliRunner) gives it a stderr handler and stops propagation, which would
    hide every later test's log lines from ``caplog``."""
    import logging

    logger = logging.getLogger("dask_em")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture(scope="session")
def blobs():
    return make_blobs()


@contextlib.contextmanager
def local_cluster_client(dashboards: bool = False, n_workers: int = 2):
    """A client of a LocalCluster of ``n_workers`` 1-thread worker processes (nannies
    restart a killed worker) bound to 127.0.0.1, closed on exit also on failure; its
    cluster is ``client.cluster``."""
    from distributed import Client, LocalCluster

    board = "127.0.0.1:0" if dashboards else None
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=board,
        worker_dashboard_address=board,
        # Without a dashboard the scheduler still serves HTTP (health, metrics), by
        # default on port 8787: keep it on a free loopback port too.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        memory_limit="1GiB",
    )
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def client():
    """A real distributed cluster with two worker processes, bound to 127.0.0.1."""
    with local_cluster_client(dashboards=True) as c:
        yield c


# One process, threads: a job cluster that starts in about a second.
THREADS = {
    "local": {
        "processes": False,
        "n_workers": 1,
        "threads_per_worker": 2,
        "dashboard_address": None,
    }
}


def self_signed_cert(folder):
    """Write a throwaway key.pem / cert.pem for 127.0.0.1 into ``folder`` (openssl)."""
    import subprocess

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------- processes and clusters


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_env() -> dict:
    """The environment for a subprocess that must import this checkout of dask_em."""
    import os

    from dask_em.jobs.config import PROJECT_ROOT

    path = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)}


def start_dask_processes(
    work, *, n_workers: int = 1, nthreads: int = 1, extra=(), scheme: str = "tcp"
):
    """`dask scheduler` and ``n_workers`` `dask worker` processes on 127.0.0.1 (free port,
    no dashboards, 1 GiB per worker, local folders under ``work``).

    Returns
    -------
    address : str
    procs : list of subprocess.Popen
        The scheduler first; stop them with :func:`stop_processes` or
        :func:`shutdown_dask_processes`, also on failure.
    """
    import subprocess
    import sys
    from pathlib import Path

    dask_exe = Path(sys.executable).with_name("dask")
    base = [str(dask_exe)] if dask_exe.exists() else [sys.executable, "-m", "dask"]
    port = free_port()
    address = f"{scheme}://127.0.0.1:{port}"
    quiet = dict(
        cwd=work,
        env=project_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    scheduler = [*base, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    # --no-dashboard still starts an HTTP server (health, metrics): on a free loopback port
    no_board = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    procs = [subprocess.Popen([*scheduler, *no_board, *extra], **quiet)]
    for i in range(n_workers):
        worker = [*base, "worker", address, "--host", "127.0.0.1", "--nthreads", str(nthreads)]
        worker += ["--memory-limit", "1GiB", *no_board, "--name", f"w{i}"]
        worker += ["--local-directory", str(Path(work) / f"w{i}"), *extra]
        procs.append(subprocess.Popen(worker, **quiet))
    return address, procs


def stop_processes(procs, grace: float = 6.0, kill: bool = False) -> None:
    """Wait up to ``grace`` seconds for ``procs`` to exit, then SIGTERM (SIGKILL with
    ``kill``) the rest and reap them all."""
    import signal
    import subprocess
    import time

    # After client.shutdown() they exit by themselves within a few seconds; a SIGTERM on
    # top makes a nanny wait for the (gone) scheduler instead.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def shutdown_dask_processes(address: str, procs, security=None) -> None:
    """Ask the scheduler to shut the cluster down, then stop whatever is left."""
    import dask
    from distributed import Client

    # A scheduler-initiated shutdown is quicker than signalling each process. The outer
    # config.set undoes Client.shutdown() leaving scheduler="dask.distributed" set
    # globally (distributed 2026.8), which would break later tests' computes.
    with dask.config.set(scheduler="sync"):
        try:
            with Client(address, timeout=5, security=security) as client:
                client.shutdown()
        except Exception:
            pass
    stop_processes(procs)


@pytest.fixture
def no_global_dask_state():
    """Jobs must leave dask's scheduler setting as they found it (a leaked
    scheduler="dask.distributed" breaks every later compute in the process)."""
    import dask

    before = dask.config.get("scheduler", None)
    yield
    assert dask.config.get("scheduler", None) == before


def run_cli(args, timeout: float = 300, env: dict | None = None):
    """``python -m dask_em ARGS`` in a subprocess (this checkout, no stdin; ``env``: its
    whole environment, default :func:`project_env`): the result."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "dask_em", *map(str, args)],
        env=env if env is not None else project_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------ S3-compatible server


@contextlib.contextmanager
def environ(variables: dict):
    """This process's ``os.environ`` with ``variables`` set, restored on exit (also on
    failure)."""
    import os

    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class S3Server:
    """moto's S3 server on 127.0.0.1 (a free port), for tests that read or write
    ``s3://`` URLs. Nothing is sent anywhere else: the fake credentials are moto's, the
    EC2 metadata lookup is off, and the user's own AWS profile files are never read.

    Attributes
    ----------
    endpoint_url : str
        ``http://127.0.0.1:PORT``; give it as ``storage_options={"endpoint_url": ...}``
        (see :attr:`storage_options`).
    env : dict of str
        Variables for a process that talks to the server: fake credentials, region,
        metadata lookup off, profile files that do not exist. Merge into a subprocess's
        environment (``{**project_env(), **server.env}``) or use :meth:`environment`.
    """

    CREDENTIALS = {
        "AWS_ACCESS_KEY_ID": "dask-em-test-access-key",
        "AWS_SECRET_ACCESS_KEY": "dask-em-test-SECRET-never-printed",
    }

    def __init__(self, endpoint_url: str, folder):
        self.endpoint_url = endpoint_url
        missing = str(folder / "no-such-aws-file")
        self.env = {
            **self.CREDENTIALS,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
        }
        self._buckets = 0

    @property
    def storage_options(self) -> dict:
        """fsspec options that point s3fs at this server (no credentials in them)."""
        return {"endpoint_url": self.endpoint_url}

    def without_credentials(self) -> dict:
        """:attr:`env` less the access key and secret (no other source of them is left)."""
        return {k: v for k, v in self.env.items() if k not in self.CREDENTIALS}

    def environment(self):
        """This process's ``os.environ`` with :attr:`env` set, restored on exit."""
        return environ(self.env)

    def filesystem(self):
        """A fresh ``s3fs.S3FileSystem`` on the server, with the fake credentials."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=self.CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint_url},
            skip_instance_cache=True,
        )

    def make_bucket(self, prefix: str = "bucket") -> str:
        """Create a new, empty bucket with a unique name; returns the name."""
        self._buckets += 1
        name = f"{prefix}-{self._buckets}"
        self.filesystem().mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A :class:`S3Server`: moto's S3 server on 127.0.0.1, started once per session and
    stopped at its end (also on failure)."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install dask-em[test])")
    server_mod = pytest.importorskip(
        "moto.server", reason="moto's server is not installed (pip install 'moto[server]')"
    )
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("s3"))
    finally:
        server.stop()
