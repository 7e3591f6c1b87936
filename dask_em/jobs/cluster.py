"""Connect a job to its Dask cluster.

:func:`connect` is a context manager that yields a ``distributed.Client`` and tears down
whatever it started: an embedded ``LocalCluster`` on 127.0.0.1 (the default), an existing
scheduler by address (optionally over TLS), or an HPC cluster from an allow-list of
dask-jobqueue kinds. Class names come from that allow-list, never from the config.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dask

from dask_em.jobs.config import ClusterConfig, JobError

__all__ = [
    "JOBQUEUE_KINDS",
    "NoWorkersError",
    "connect",
    "dashboard_link",
    "jobqueue_cluster",
    "security_from_config",
    "use_client",
]

log = logging.getLogger(__name__)

#: The only dask-jobqueue classes a config can ask for.
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


def security_from_config(cfg: ClusterConfig):
    """A ``distributed.security.Security`` for ``cfg.tls`` (``None`` without TLS).

    Raises
    ------
    JobError
        A certificate or key file does not exist.
    """
    if cfg.tls is None:
        return None
    from distributed.security import Security

    tls = cfg.tls
    for name in ("ca_file", "cert", "key"):
        value = getattr(tls, name)
        if value is not None and not Path(value).expanduser().is_file():
            raise JobError(f"file not found: {value}", key=f"cluster.tls.{name}")
    kwargs = {"tls_ca_file": str(Path(tls.ca_file).expanduser())}
    if tls.cert is not None:
        kwargs["tls_client_cert"] = str(Path(tls.cert).expanduser())
        kwargs["tls_client_key"] = str(Path(tls.key).expanduser())
    return Security(require_encryption=tls.require_encryption, **kwargs)


def dashboard_link(client) -> str | None:
    """The URL of the scheduler's dashboard, or None where it serves none.

    For a scheduler reached by address the link uses the host of that address (where this
    process reached it), not the name the scheduler gives itself, and is given only if
    the page answers there.
    """
    cluster = getattr(client, "cluster", None)
    if cluster is not None:
        return getattr(cluster, "dashboard_link", None) or None
    try:
        info = client.scheduler_info()
        port = info.get("services", {}).get("dashboard")
    except Exception:  # an old or unusual scheduler: no dashboard to point at
        return None
    if not port:
        return None
    from distributed.comm import get_address_host

    host = get_address_host(client.scheduler.address)
    host = f"[{host}]" if ":" in host else host
    template = dask.config.get("distributed.dashboard.link", "{scheme}://{host}:{port}/status")
    link = template.format(**{**os.environ, "scheme": "http", "host": host, "port": port})
    return link if _serves(f"http://{host}:{port}/status") else None


def _serves(url: str, timeout: float = 3.0) -> bool:
    """Whether the dashboard page answers: a scheduler started with ``--no-dashboard``
    still reports the HTTP server it keeps for health checks as its "dashboard"."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as page:
            return page.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _dashboard(client, link: str | None = None) -> None:
    link = link or dashboard_link(client)
    if link:
        log.info("Dashboard: %s", link)
    else:
        log.info("Dashboard: not served by this scheduler (start it with a dashboard address)")


def _wait_for_workers(client, cfg: ClusterConfig, where: str) -> None:
    """Wait for ``cfg.wait_for_workers`` workers of ``where``, then log the dashboard."""
    if cfg.wait_for_workers > 0:
        try:
            client.wait_for_workers(cfg.wait_for_workers, timeout=cfg.workers_timeout)
        except (TimeoutError, OSError):
            raise JobError(
                f"{where} has fewer than {cfg.wait_for_workers} worker(s) after "
                f"{cfg.workers_timeout:g} s; start workers or lower cluster.wait_for_workers",
                key="cluster",
            ) from None
    _dashboard(client)


@contextlib.contextmanager
def worker_environment(variables: dict) -> Iterator[None]:
    """Environment variables for the worker processes that nannies spawn inside.

    Parameters
    ----------
    variables : dict
        Name to value; None means the workers run without that variable.

    Notes
    -----
    Added to ``distributed.nanny.pre-spawn-environ``. A nanny takes a variable from
    this process's ``os.environ`` over that setting, and writes the ones it sets into
    ``os.environ`` before it spawns its worker: a cluster started later in the same
    process would get an earlier cluster's values whatever it asks for (the second of
    two LocalClusters kept dask's ``MALLOC_TRIM_THRESHOLD_=65536`` from the first). So
    each variable given here is taken out of ``os.environ`` while the workers start,
    and put back afterwards. A worker that its nanny restarts later spawns with the
    environment of that moment.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.update(variables)
    saved = {name: os.environ.pop(name) for name in variables if name in os.environ}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        for name in variables:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _bound_link(link: str | None, address: str) -> str | None:
    """``link`` with the host the dashboard was bound to. dask builds a threads-only
    cluster's link from the machine's name (its scheduler is ``inproc://``), where a
    dashboard bound to ``127.0.0.1`` does not answer."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if not link or host in ("", "0.0.0.0", "::"):
        return link
    parts = urlsplit(link)
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))


@contextlib.contextmanager
def _local(cfg: ClusterConfig) -> Iterator:
    from distributed import Client, LocalCluster

    lc = cfg.local
    kwargs = dict(
        host="127.0.0.1",
        n_workers=lc.n_workers,
        threads_per_worker=lc.threads_per_worker,
        memory_limit=lc.memory_limit,
        processes=lc.processes,
        # Without a dashboard the scheduler and workers still serve HTTP (health,
        # metrics); keep those on the loopback interface too.
        dashboard_address=lc.dashboard_address or "127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
        # A failed task (e.g. NaN found in a block) is reported once, as one line, by
        # the runner; the workers' own tracebacks are for --debug only.
        silence_logs=logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL,
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not lc.processes:
        # Threads in this process talk over inproc://, which binds no port (and rejects a
        # host); only the dashboard listens, on its explicit 127.0.0.1 address.
        del kwargs["host"]
    with worker_environment({"MALLOC_TRIM_THRESHOLD_": lc.malloc_trim_threshold}):
        cluster = LocalCluster(**kwargs)
    with contextlib.closing(cluster):
        _adapt(cluster, cfg)
        with Client(cluster, set_as_default=False) as client:
            log.info("Local cluster: %d worker(s) on 127.0.0.1", len(cluster.workers))
            if lc.dashboard_address is not None:
                _dashboard(client, _bound_link(cluster.dashboard_link, lc.dashboard_address))
            yield client


def _open_client(cfg: ClusterConfig, security):
    """``Client(address)`` with its failures turned into one-line :class:`JobError`."""
    from distributed import Client

    try:
        return Client(cfg.address, timeout=cfg.timeout, security=security, set_as_default=False)
    except BaseException as exc:
        if isinstance(exc, TypeError) and security is None and cfg.address.startswith("tls://"):
            # distributed's way of saying "no TLS context" for a tls:// address
            raise JobError(
                "a tls:// scheduler needs cluster.tls (ca_file, cert, key)", key="cluster.tls"
            ) from None
        if isinstance(exc, OSError | TimeoutError):
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = "" if reason.startswith("Timed out") else f" ({reason})"
            raise JobError(
                f"cannot reach the scheduler at {cfg.address} within {cfg.timeout:g} s"
                f"{reason}; is `dask scheduler` running there?",
                key="cluster.address",
            ) from None
        raise


@contextlib.contextmanager
def _address(cfg: ClusterConfig) -> Iterator:
    with contextlib.closing(_open_client(cfg, security_from_config(cfg))) as client:
        log.info("Scheduler: %s", cfg.address)
        _wait_for_workers(client, cfg, f"the scheduler at {cfg.address}")
        yield client


def _adapt(cluster, cfg: ClusterConfig) -> None:
    """Turn on adaptive scaling where ``cluster.adapt`` asks for it."""
    if cfg.adapt is None:
        return
    a = cfg.adapt
    cluster.adapt(minimum=a.minimum, maximum=a.maximum, interval=f"{a.interval}s")
    log.info("Adaptive scaling: %d to %d worker(s)", a.minimum, a.maximum)


def jobqueue_cluster(cfg: ClusterConfig):
    """The dask-jobqueue cluster ``cfg.jobqueue`` describes, no job submitted yet.

    Its ``job_script()`` is the batch script each job runs (one ``dask worker`` command
    with ``processes`` workers sharing ``cores`` threads and ``memory``).

    Raises
    ------
    JobError
        dask-jobqueue is not installed.
    """
    jq = cfg.jobqueue
    try:
        import dask_jobqueue
    except ImportError:
        raise JobError(
            "cluster.jobqueue needs dask-jobqueue: pip install 'dask-em[jobqueue]'",
            key="cluster.jobqueue",
        ) from None
    cls = getattr(dask_jobqueue, JOBQUEUE_KINDS[jq.kind])
    kwargs = jq.model_dump(exclude={"kind", "jobs", "dashboard_address"}, exclude_none=True)
    if not kwargs.get("job_extra_directives"):
        kwargs.pop("job_extra_directives", None)
    if jq.dashboard_address is not None:
        kwargs["scheduler_options"] = {"dashboard_address": jq.dashboard_address}
    return cls(**kwargs)


@contextlib.contextmanager
def _jobqueue(cfg: ClusterConfig) -> Iterator:
    from distributed import Client

    jq = cfg.jobqueue
    with contextlib.closing(jobqueue_cluster(cfg)) as cluster:
        cluster.scale(jobs=jq.jobs)
        _adapt(cluster, cfg)
        with Client(cluster, security=security_from_config(cfg), set_as_default=False) as client:
            log.info("%s: %d job(s) requested", JOBQUEUE_KINDS[jq.kind], jq.jobs)
            _wait_for_workers(client, cfg, f"the {jq.kind} cluster")
            yield client


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator:
    """Start or reach the cluster ``cfg`` describes; yield a connected ``Client``.

    The client is the current scheduler inside the ``with`` block (and only there).
    Anything the function started (a local or jobqueue cluster) is closed on exit, also
    on errors.

    Raises
    ------
    JobError
        The scheduler cannot be reached within ``cfg.timeout``, TLS files are missing,
        too few workers joined, or dask-jobqueue is not installed.
    NoWorkersError
        The cluster had no worker for ``cfg.workers_timeout`` seconds inside the block.
    """
    cm = _CONNECT[cfg.kind](cfg)
    # Clients are made with set_as_default=False and made current only inside this block:
    # a default client outlives failures (a Client that fails in __init__ stays
    # registered while its exception is alive) and then stops later clients from
    # restoring dask's scheduler setting when they close.
    with cm as client, client.as_current(), _WorkerWatch(client, cfg.workers_timeout):
        yield client


class NoWorkersError(RuntimeError):
    """Every worker of the cluster was lost (or cut off) for longer than
    ``cluster.workers_timeout`` during the job; the run's checkpoint is kept."""


class _WorkerWatch:
    """Fail the job when the cluster has had no worker for ``timeout`` seconds.

    Dask would wait for workers forever: a pass whose workers all died, or whose hosts
    were cut off, hangs (the scheduler's own ``no-workers-timeout`` is off by default,
    and a scheduler reached by address is not ours to configure). A thread asks the
    scheduler for its workers every ``poll`` seconds; once there have been none for
    ``timeout`` seconds it cancels this client's tasks, which ends the pass, and the
    ``with`` block raises :class:`NoWorkersError` in place of the cancellation.
    """

    def __init__(self, client, timeout: float, poll: float = 0.5):
        import threading

        self.client, self.timeout, self.poll = client, timeout, poll
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dask-em-worker-watch", daemon=True)

    def __enter__(self) -> _WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        if exc is not None and self.fired:
            raise NoWorkersError(
                f"no worker left on the cluster for {self.timeout:g} s (all lost or cut "
                "off); start workers (or raise cluster.workers_timeout), then rerun with "
                "--resume"
            ) from None

    def _run(self) -> None:
        import time

        since = None
        while not self._stop.wait(self.poll):
            try:
                n = len(self.client.nthreads())
            except Exception:  # the scheduler itself is gone: the pass fails on its own
                return
            now = time.monotonic()
            since = None if n else since or now
            if since is not None and now - since >= self.timeout:
                self.fired = True
                log.debug("no workers for %g s: cancelling the pass", now - since)
                self._cancel_all()
                return

    def _cancel_all(self) -> None:
        from distributed import Future

        # ``Client.cancel`` takes futures, not keys: one per key this client holds (a
        # running ``dask.compute`` holds its result's) makes the pass raise.
        futures = [Future(key, self.client) for key in list(self.client.futures)]
        self.client.cancel(futures, force=True, msg="no worker left on the cluster")


@contextlib.contextmanager
def use_client(client) -> Iterator:
    """:func:`connect` for a client someone else opened and closes: it is the current
    scheduler inside the ``with`` block only, and stays open after it."""
    with client.as_current():
        yield client


# One context manager per cluster kind (``ClusterConfig.kind``): a new kind is a config
# section, a function here and an entry in this table.
_CONNECT = {"local": _local, "address": _address, "jobqueue": _jobqueue}
