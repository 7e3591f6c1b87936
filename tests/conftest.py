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


@pytest.fixture(scope="session")
def blobs():
    return make_blobs()


@pytest.fixture(scope="module")
def client():
    """A real distributed cluster with two worker processes, bound to 127.0.0.1."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
        memory_limit="1GiB",
    )
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()


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
