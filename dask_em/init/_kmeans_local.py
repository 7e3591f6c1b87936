"""In-memory weighted k-means on the k-means|| candidates (no pass over the data).

The driver reduces the small weighted candidate set to K centres by greedy k-means++ and
weighted Lloyd, keeping the best of ``n_init`` runs: one run often settles in a poor
optimum of the candidates, which Lloyd passes over the data do not leave.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from dask_em.init._kmeans_random import LOCAL
from dask_em.init._kmeans_tasks import cluster_sums

_LOCAL_MAX_ITER = 300
# Runs of the in-memory k-means that reduces the k-means|| candidates to K centres. A
# single run lands in a poor local optimum of the candidates often enough to decide
# which optimum EM ends in; restarts here cost no pass over the data.
LOCAL_N_INIT = 10


def _sq_dists(a, b):
    """Squared distances between the rows of a (p, d) and b (q, d): (p, q), from the
    differences (exactly zero between equal rows)."""
    return cdist(a, b, "sqeuclidean")


def _local_kmeans_run(points, weights, n_clusters, rng):
    """One weighted greedy k-means++ seeding then weighted Lloyd; (centres, inertia)."""
    p = points.shape[0]
    n_trials = 2 + int(np.log(n_clusters))
    chosen = [int(rng.choice(p, p=weights / weights.sum()))]
    closest = _sq_dists(points[chosen], points)[0]
    pot = float(closest @ weights)
    for _ in range(1, n_clusters):
        cum = np.cumsum(weights * closest)
        cand = np.searchsorted(cum, rng.uniform(size=n_trials) * pot)
        cand = np.minimum(cand, p - 1)
        dist = np.minimum(closest, _sq_dists(points[cand], points))
        pots = dist @ weights
        best = int(np.argmin(pots))
        chosen.append(int(cand[best]))
        closest, pot = dist[best], float(pots[best])
    centers = points[chosen].copy()
    labels = None
    for _ in range(_LOCAL_MAX_ITER):
        dist = _sq_dists(points, centers)
        new = np.argmin(dist, axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, weights=weights, minlength=n_clusters)
        sums = cluster_sums(labels, points, weights, n_clusters, True)[1]
        for k in np.flatnonzero(counts == 0):
            # Empty cluster: re-seed on the point worst explained by its centre.
            far = int(np.argmax(dist[np.arange(p), labels] * (counts[labels] > weights)))
            donor = labels[far]
            counts[donor] -= weights[far]
            sums[donor] -= weights[far] * points[far]
            counts[k], sums[k] = weights[far], weights[far] * points[far]
            labels[far] = k
        centers = np.where(
            counts[:, None] > 0, sums / np.maximum(counts, 1e-300)[:, None], centers
        )
    inertia = float(_sq_dists(points, centers).min(axis=1) @ weights)
    return centers, inertia


def _local_rng(seed, run):
    """The random stream of in-memory run ``run``; run 0 keeps a single run's old stream."""
    return np.random.default_rng([seed, LOCAL] if run == 0 else [seed, LOCAL, run])


def local_kmeans(points, weights, n_clusters, seed, n_init=LOCAL_N_INIT):
    """The best of ``n_init`` weighted k-means runs on a small in-memory set.

    Each run is greedy k-means++ then weighted Lloyd; the run of lowest weighted
    inertia (the first of equals) is kept.

    Parameters
    ----------
    points : ndarray of shape (p, d), distinct rows
    weights : ndarray of shape (p,), positive
    n_clusters : int, at most p
    seed : int
    n_init : int, at least 1

    Returns
    -------
    ndarray of shape (n_clusters, d)
    """
    best, best_inertia = None, np.inf
    for r in range(n_init):
        centers, inertia = _local_kmeans_run(points, weights, n_clusters, _local_rng(seed, r))
        if best is None or inertia < best_inertia:
            best, best_inertia = centers, inertia
    return best
