"""Distributed k-means for initialisation: k-means|| and k-means++ seeding, then Lloyd.

Every pass over the data is one tree reduction (:func:`dask_em.engine._reduce.tree_reduce`) whose
leaves return small additive values (counts, sums, a few sampled rows); the rows never
reach the driver. Many runs (restarts and, in model selection, several numbers of
clusters) advance together: each pass serves every unfinished run at whatever stage it
has reached, so R runs cost the passes of the longest one, not R times as many.

Passes of one k-means run with K > 1 clusters
---------------------------------------------
1. Only with sample weights: the first centre, drawn with probability proportional to
   the row weight (the smallest key ``E_i / w_i``, ``E_i`` exponential). Without weights
   the first centre is a row index drawn on the driver; reading that row is not a pass.
2. ``n_rounds`` k-means|| rounds (Bahmani et al., 2012). Each round adds ``ell = 2 K``
   rows drawn without replacement with probability proportional to ``w_i D_i^2`` (``D_i``
   the distance to the nearest candidate so far): the ``ell`` smallest keys
   ``E_i / (w_i D_i^2)`` (Efraimidis and Spirakis). Unlike Bahmani's independent draws
   with probability ``min(1, ell w_i D_i^2 / phi)`` this needs no earlier pass for the
   total cost ``phi``, so a round is one pass.
3. One pass weights every candidate by the rows nearest to it; the driver reduces that
   small weighted set to K centres by greedy k-means++ and weighted Lloyd, keeping the
   best (lowest weighted inertia) of ``local_n_init`` such runs (default 10). One run
   often settles in a poor optimum of the candidates, which Lloyd passes over the data
   do not leave, and EM from it then stays in a worse optimum too; the restarts cost no
   pass.
4. Up to ``max_iter`` Lloyd passes (per-cluster weight sums and row sums), stopping like
   scikit-learn's ``KMeans`` once the summed squared centre shift is at most ``tol``
   times the mean feature variance. The default of 10 (scikit-learn runs up to 300)
   makes a start for EM, not a converged clustering: EM itself finishes the job.
5. One statistics pass: labels under the final centres (scikit-learn's final E-step) and
   the one-hot sufficient statistics of every covariance type asked for.

'k-means++' (scikit-learn's greedy variant, ``2 + log K`` local trials per centre) takes
one pass per centre: the pass that scores the trials for centre c also draws the trials
for centre c + 1 under each of them, and the driver keeps those of the winner.

Determinism
-----------
Every random number is a counter-based hash (SplitMix64) of a stream key and the global
row index, so it depends on neither the chunking nor where a block runs. Sampled rows
are merged by the total order (key, global row index), so any reduction tree gives the
same set; sums are reduced in the fixed tree order of :func:`tree_reduce`.

Empty clusters
--------------
As in scikit-learn's ``KMeans``: after a Lloyd pass, an empty cluster is re-seeded on
the row farthest from its centre (the worst-explained row), which leaves its old
cluster; only then does one more pass find the K farthest rows. If the final labels
still leave a cluster empty, its centre is re-seeded the same way and the statistics
pass is repeated. Centres are cluster means or data rows, so they lie inside the data's range,
and a row at distance zero from a centre is never drawn, so they are distinct, unless
the data hold fewer than K distinct rows of positive weight: then the surplus centres
repeat existing ones, those components start (and stay) empty, and a
:class:`DuplicateCentersWarning` says to decrease ``n_components``.

Round-off
---------
Rows are centred on a point near the data, and distances come from one GEMM,
``|x|^2 + |c_k|^2 - 2 x.c_k``. Where that is within round-off of zero, the distance that
drives sampling is recomputed as ``|x - c_k|^2``, so a row equal to a centre has
distance exactly zero and is never drawn again. The statistics use ``x - c_label``
directly, about each cluster's own centre.

Modules
-------
This module holds the public functions and the driver that advances the runs together;
:mod:`~dask_em.init._kmeans_runs` the runs (one state machine per run, a table of small
methods per phase), :mod:`~dask_em.init._kmeans_tasks` the work a pass does on a tile,
:mod:`~dask_em.init._kmeans_values` the additive values blocks return,
:mod:`~dask_em.init._kmeans_local` the in-memory k-means on the candidates and
:mod:`~dask_em.init._kmeans_random` the counter-based random numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dask_em.engine._reduce import compute_pass
from dask_em.init._kmeans_local import LOCAL_N_INIT
from dask_em.init._kmeans_random import stream_key, uniforms
from dask_em.init._kmeans_runs import DuplicateCentersWarning, KMeansRun, PlusPlusRun
from dask_em.init._kmeans_tasks import MomentsTask, block_chunk

__all__ = [
    "LOCAL_N_INIT",
    "MAX_ITER",
    "N_ROUNDS",
    "OVERSAMPLING_FACTOR",
    "TOL",
    "DuplicateCentersWarning",
    "KMeansResult",
    "kmeans",
    "kmeans_plusplus",
    "reference_point",
    "stream_key",
    "uniforms",
]

logger = logging.getLogger(__name__)

N_ROUNDS = 5
OVERSAMPLING_FACTOR = 2.0
MAX_ITER = 10
TOL = 1e-4


# --------------------------------------------------------------------------------------
# Driver: runs as small state machines, all advanced by the same passes
# --------------------------------------------------------------------------------------
class _Context:
    """What the runs of one batch share: the data, the reference point, Lloyd's tol."""

    def __init__(self, x, weights, split_every, prefix):
        self.x = x
        self.weights = weights
        self.split_every = split_every
        self.prefix = prefix
        self.ref = reference_point(x)
        self.tol_scale = None  # mean feature variance, from the first pass
        self.n_passes = 0

    def run_pass(self, tasks):
        out = compute_pass(
            self.x,
            block_chunk,
            (self.ref, tuple(tasks)),
            weights=self.weights,
            split_every=self.split_every,
            prefix=self.prefix,
            # Every task's value is sums and copied rows, never a view of the block.
            fuse_reads=True,
        )
        self.n_passes += 1
        return out


def reference_point(x) -> np.ndarray:
    """A point near the data to centre rows on: the mean of the finite first rows.

    The same point :func:`dask_em.init._init.random_resp` centres on; reading up to 1024 rows
    is not a pass over the data.
    """
    head = np.asarray(x[: min(x.shape[0], 1024)].compute(), dtype=np.float64)
    finite = head[np.all(np.isfinite(head), axis=1)]
    return finite.mean(axis=0) if finite.size else np.zeros(x.shape[1])


def _drive(ctx, runs, *, need_moments):
    """Advance all runs together until every one is done, one pass per step."""
    _first_centres(ctx, runs)
    first = True
    while True:
        work = [(r, r.task()) for r in runs if not r.done]
        work = [(r, t) for r, t in work if t is not None]
        if not work:
            break
        tasks = [t for _, t in work]
        moments = first and need_moments
        if moments:
            tasks.append(MomentsTask())
        t0 = time.perf_counter()
        out = ctx.run_pass(tasks)
        if moments:
            m = out[-1]
            d = (m.size - 1) // 2
            mean = m[1 : d + 1] / m[0]
            ctx.tol_scale = float(np.mean(np.maximum(m[d + 1 :] / m[0] - mean**2, 0.0)))
        first = False
        for (r, _), res in zip(work, out, strict=False):
            r.receive(res)
        logger.debug(
            "%s pass %d: %d run(s), %.3f s",
            ctx.prefix,
            ctx.n_passes,
            len(work),
            time.perf_counter() - t0,
        )


def _first_centres(ctx, runs):
    """Without weights, the first centres are uniform row draws: read those rows only."""
    if ctx.weights is not None:
        return
    n = ctx.x.shape[0]
    want = [r for r in runs if r.phase == "first"]
    if not want:
        return
    picks = [min(n - 1, int(uniforms(r.first_key(), np.zeros(1, np.int64))[0] * n)) for r in want]
    uniq = np.unique(picks)
    rows = np.asarray(ctx.x[uniq].compute(), dtype=np.float64)
    for r, i in zip(want, picks, strict=True):
        row = rows[np.searchsorted(uniq, i)]
        if not np.all(np.isfinite(row)):
            # Let the first pass name the block and row, as every pass does.
            row = np.where(np.isfinite(row), row, 0.0)
        r.set_first(row, i)


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """The outcome of one k-means run.

    Attributes
    ----------
    centers : ndarray of shape (K, d)
        The centres the final labels were taken under.
    statistics : dict of str to SuffStats
        One-hot statistics of the final labels, per covariance type asked for.
    n_iter : int
        Lloyd passes run.
    converged : bool
    inertia : float
        Weighted sum of squared distances of the rows to their final centres.
    """

    centers: np.ndarray
    statistics: dict
    n_iter: int
    converged: bool
    inertia: float


def kmeans(
    x,
    runs: Sequence[tuple],
    *,
    weights=None,
    split_every=None,
    n_rounds=N_ROUNDS,
    oversampling_factor=OVERSAMPLING_FACTOR,
    max_iter=MAX_ITER,
    tol=TOL,
    local_n_init=LOCAL_N_INIT,
) -> list[KMeansResult]:
    """k-means|| seeding then Lloyd for several runs at once, sharing every pass.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
        Rows chunked, features in one chunk.
    runs : sequence of (n_clusters, seed, covariance_types)
        One entry per run; ``covariance_types`` lists the types whose one-hot statistics
        the final pass computes.
    weights : dask.array.Array of shape (n,), optional
        Row weights chunked like ``x``.
    split_every : int, optional
        Fan-in of every tree reduction.
    n_rounds : int
        k-means|| rounds.
    oversampling_factor : float
        Rows drawn per round, as a multiple of the run's number of clusters.
    max_iter : int
        Lloyd passes at most.
    tol : float
        Relative tolerance on the squared centre shift (scikit-learn's meaning).
    local_n_init : int
        Runs of the in-memory k-means on the weighted candidates (the best is kept).

    Returns
    -------
    list of KMeansResult, one per run
    """
    ctx = _Context(x, weights, split_every, "init-kmeans")
    states = [
        KMeansRun(ctx, k, seed, cts, n_rounds, oversampling_factor, max_iter, tol, local_n_init)
        for k, seed, cts in runs
    ]
    _drive(ctx, states, need_moments=any(s.k > 1 for s in states))
    return [
        KMeansResult(s.centers, s.statistics, s.n_iter, bool(s.converged or s.k == 1), s.inertia)
        for s in states
    ]


def kmeans_plusplus(
    x, runs: Sequence[tuple], *, weights=None, split_every=None, n_local_trials=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy k-means++ seeding (scikit-learn's) for several runs, one pass per centre.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    runs : sequence of (n_clusters, seed)
    weights : dask.array.Array of shape (n,), optional
    split_every : int, optional
    n_local_trials : int, optional
        Trials per centre; default ``2 + int(log(n_clusters))`` as in scikit-learn.

    Returns
    -------
    list of (centers, indices)
        ``centers`` (K, d) are rows of ``x``; ``indices`` (K,) their global row indices.
    """
    ctx = _Context(x, weights, split_every, "init-kmeanspp")
    states = [PlusPlusRun(ctx, k, seed, n_local_trials) for k, seed in runs]
    _drive(ctx, states, need_moments=False)
    return [(np.array(s.chosen), np.array(s.index, dtype=np.int64)) for s in states]
