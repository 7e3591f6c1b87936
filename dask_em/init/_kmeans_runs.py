"""k-means runs as small state machines, all advanced by the same passes.

A run says what its next pass must compute (``task()``, one of the tasks of
:mod:`dask_em.init._kmeans_tasks`) and takes that pass's result (``receive()``); the
driver in :mod:`dask_em.init._kmeans` runs every unfinished run's task in one pass. Each
phase of a run is a pair of small methods picked from the tables ``_TASKS`` and
``_RECEIVE`` by the run's ``phase``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np

from dask_em.init._kmeans_local import LOCAL_N_INIT, local_kmeans
from dask_em.init._kmeans_random import FIRST, FIRST_RACE, PLUSPLUS, ROUND, stream_key
from dask_em.init._kmeans_tasks import (
    FarTask,
    FirstTask,
    LloydTask,
    PlusPlusTask,
    RoundTask,
    StatsTask,
    WeighTask,
    centred,
)
from dask_em.init._kmeans_values import Sample


class DuplicateCentersWarning(UserWarning):
    """The data hold fewer distinct rows (of positive weight) than clusters asked for."""


def _warn_duplicates(n_distinct, n_clusters):
    warnings.warn(
        f"k-means initialisation found only {n_distinct} distinct row(s) of positive "
        f"weight, fewer than n_components={n_clusters}; the surplus components start on "
        "repeated centres and stay empty. Decrease n_components.",
        DuplicateCentersWarning,
        stacklevel=5,
    )


def _fill_duplicates(rows, n_clusters):
    """Repeat the distinct rows found until there are ``n_clusters`` of them."""
    reps = -(-n_clusters // rows.shape[0])
    return np.tile(rows, (reps, 1))[:n_clusters]


def _relocate(part, centers, base):
    """New centres from Lloyd sums, re-seeding empty clusters on the farthest rows.

    Parameters
    ----------
    part : LloydPart
        Sums of ``w (x - base[label])``.
    centers : ndarray of shape (K, d)
        Centres the labels were taken under (kept for clusters left with no weight).
    base : ndarray of shape (K, d)

    Returns
    -------
    new_centers : ndarray of shape (K, d)
    n_empty : int
        Clusters that had no weight (before re-seeding).
    """
    counts, sums = part.counts.copy(), part.sums.copy()
    empty = np.flatnonzero(counts <= 0)
    # scikit-learn's _relocate_empty_clusters: the farthest rows move to empty clusters.
    far = part.far if empty.size else Sample.empty(0, centers.shape[1], 2)
    for k, row, (label, wt) in zip(empty, far.rows, far.extra, strict=False):
        donor = int(label)
        counts[donor] -= wt
        sums[donor] -= wt * (row - base[donor])
        counts[k] = wt
        sums[k] = wt * (row - base[k])
    safe = np.where(counts > 0, counts, 1.0)
    new = np.where((counts > 0)[:, None], base + sums / safe[:, None], centers)
    return new, int(empty.size)


class _Run:
    """What both kinds of run share: the first centre and the phase tables' dispatch.

    Subclasses set ``seed``, ``phase``, ``done`` and the tables ``_TASKS`` (phase to a
    method giving the next pass's task) and ``_RECEIVE`` (phase to a method taking that
    pass's result); a phase missing from ``_TASKS`` needs no pass.
    """

    _TASKS: dict = {}
    _RECEIVE: dict = {}

    def first_key(self):
        """Stream key of the uniform draw of the first centre (without weights)."""
        return stream_key(self.seed, FIRST)

    def task(self):
        """The task this run's next pass must run on every tile, or None."""
        make = self._TASKS.get(self.phase)
        return None if make is None else make(self)

    def receive(self, result):
        """Advance on the reduced result of this run's task."""
        self._RECEIVE[self.phase](self, result)

    def _task_first(self):
        return FirstTask(stream_key(self.seed, FIRST_RACE))

    def _receive_first(self, result):
        if not np.isfinite(result.keys[0]):
            raise ValueError("Every sample weight is zero; give some rows positive weight.")
        self.set_first(result.rows[0], result.index[0])


class KMeansRun(_Run):
    """One k-means|| + Lloyd run; phases first, round, weigh, lloyd (far), stats, done."""

    def __init__(
        self,
        ctx,
        n_clusters,
        seed,
        covariance_types,
        n_rounds,
        oversampling,
        max_iter,
        tol,
        local_n_init=LOCAL_N_INIT,
    ):
        self.ctx = ctx
        self.k = int(n_clusters)
        self.seed = int(seed)
        self.covariance_types = tuple(covariance_types)
        self.n_rounds = int(n_rounds)
        self.cap = max(1, int(math.ceil(oversampling * self.k)))
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.local_n_init = int(local_n_init)
        self.round = 0
        self.n_iter = 0
        self.converged = False
        self.relocations = 0
        self._pending = None
        self.candidates = None
        self.centers = None
        self.statistics = None
        self.inertia = None
        self.done = False
        if self.k == 1:
            # One cluster: every row is in it, whatever the centre.
            self.phase = "stats"
            self.centers = ctx.ref[None, :].copy()
        else:
            self.phase = "first"

    def set_first(self, row, index=None):
        """Start from the first centre ``row`` (its index is not needed here)."""
        self.candidates = np.asarray(row, np.float64)[None, :]
        self.phase = "round" if self.n_rounds > 0 else "weigh"

    def _task_round(self):
        key = stream_key(self.seed, ROUND, self.round)
        return RoundTask(*centred(self.candidates, self.ctx.ref), key, self.cap)

    def _task_weigh(self):
        return WeighTask(*centred(self.candidates, self.ctx.ref))

    def _task_lloyd(self):
        return LloydTask(*centred(self.centers, self.ctx.ref))

    def _task_far(self):
        return FarTask(*centred(self.centers, self.ctx.ref))

    def _task_stats(self):
        cc, c_sq = centred(self.centers, self.ctx.ref)
        return StatsTask(self.centers, cc, c_sq, self.covariance_types)

    def _update(self, part):
        """Lloyd's update from a pass's sums; empty clusters re-seeded from ``part.far``."""
        base = np.broadcast_to(self.ctx.ref, self.centers.shape)
        new, _ = _relocate(part, self.centers, base)
        shift = float(np.sum((new - self.centers) ** 2))
        self.centers = new
        self.n_iter += 1
        self.converged = shift <= self.tol * self.ctx.tol_scale
        self.phase = "stats" if self.converged or self.n_iter >= self.max_iter else "lloyd"

    def _receive_round(self, result):
        self.round += 1
        if result.keys.size:
            self.candidates = np.concatenate([self.candidates, result.rows])
        # No new row means every row of positive weight already is a candidate.
        if self.round >= self.n_rounds or result.keys.size == 0:
            self.phase = "weigh"

    def _receive_weigh(self, result):
        keep = result > 0
        points, wts = self.candidates[keep], result[keep]
        if points.shape[0] < self.k:
            _warn_duplicates(points.shape[0], self.k)
            self.centers = _fill_duplicates(points, self.k)
            self.phase = "stats"
        else:
            self.centers = local_kmeans(points, wts, self.k, self.seed, self.local_n_init)
            self.phase = "lloyd" if self.max_iter > 0 else "stats"

    def _receive_lloyd(self, result):
        if np.any(result.counts <= 0):
            # Rare: re-seeding an empty cluster needs the farthest rows, one more pass.
            self._pending = result
            self.phase = "far"
        else:
            self._update(result)

    def _receive_far(self, result):
        self._update(replace(self._pending, far=result))
        self._pending = None

    def _receive_stats(self, result):
        lloyd = result.lloyd
        n_empty = int(np.sum(lloyd.counts <= 0))
        distinct = lloyd.far.keys.size and lloyd.far.keys[0] < 0
        if n_empty and distinct and self.relocations < self.k:
            # A cluster the final labels leave empty: re-seed it and label again.
            self.relocations += 1
            self.centers, _ = _relocate(lloyd, self.centers, self.centers)
            return
        self.statistics = dict(zip(self.covariance_types, result.stats, strict=True))
        self.inertia = lloyd.inertia
        self.phase = "done"
        self.done = True

    _TASKS = {
        "first": _Run._task_first,
        "round": _task_round,
        "weigh": _task_weigh,
        "lloyd": _task_lloyd,
        "far": _task_far,
        "stats": _task_stats,
    }
    _RECEIVE = {
        "first": _Run._receive_first,
        "round": _receive_round,
        "weigh": _receive_weigh,
        "lloyd": _receive_lloyd,
        "far": _receive_far,
        "stats": _receive_stats,
    }


class PlusPlusRun(_Run):
    """One greedy k-means++ run: one pass per centre; phases first, steps, done."""

    def __init__(self, ctx, n_clusters, seed, n_local_trials=None):
        self.ctx = ctx
        self.k = int(n_clusters)
        self.seed = int(seed)
        self.n_trials = int(n_local_trials or 2 + int(np.log(self.k)))
        self.chosen, self.index = [], []
        self.pending = None  # (rows, indices) of the trials for the next centre
        self.step = 0
        self.done = False
        self.phase = "first"

    def set_first(self, row, index):
        """Start from the first centre ``row``, global row ``index``."""
        self.chosen.append(np.asarray(row, np.float64))
        self.index.append(int(index))
        self.phase = "steps"
        self._check_done()

    def _check_done(self):
        if len(self.chosen) == self.k:
            self.done = True
            self.phase = "done"

    def _task_step(self):
        cc, c_sq = centred(np.array(self.chosen), self.ctx.ref)
        trials = (
            np.zeros((0, cc.shape[1])) if self.pending is None else self.pending[0] - self.ctx.ref
        )
        keys = ()
        if len(self.chosen) + (self.pending is not None) < self.k:
            keys = tuple(
                stream_key(self.seed, PLUSPLUS, self.step, j) for j in range(self.n_trials)
            )
        return PlusPlusTask(cc, c_sq, trials, keys)

    def _receive_step(self, result):
        hyp = 0
        if self.pending is not None:
            # scikit-learn's greedy rule: the trial that lowers the cost most (first on ties).
            hyp = int(np.argmin(result.pots))
            self.chosen.append(self.pending[0][hyp])
            self.index.append(int(self.pending[1][hyp]))
            self.pending = None
        if result.race is not None:
            self._take_trials(result.race, hyp)
        self.step += 1
        self._check_done()

    def _take_trials(self, race, hyp):
        """Keep the next centre's trials drawn under the winning hypothesis ``hyp``."""
        sl = slice(hyp * self.n_trials, (hyp + 1) * self.n_trials)
        keys, rows, idx = race.keys[sl], race.rows[sl], race.index[sl]
        valid = np.isfinite(keys)
        if valid.any():
            self.pending = (rows[valid], idx[valid])
            return
        # Every row of positive weight sits on a chosen centre.
        _warn_duplicates(len(self.chosen), self.k)
        rows_ = _fill_duplicates(np.array(self.chosen), self.k)
        idx_ = _fill_duplicates(np.array(self.index)[:, None], self.k)[:, 0]
        self.chosen, self.index = list(rows_), [int(i) for i in idx_]

    _TASKS = {"first": _Run._task_first, "steps": _task_step}
    _RECEIVE = {"first": _Run._receive_first, "steps": _receive_step}
