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
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.distance import cdist

from dask_em.engine._errors import raise_non_finite
from dask_em.engine._reduce import compute_pass
from dask_em.engine._stats import SuffStats

logger = logging.getLogger(__name__)

N_ROUNDS = 5
OVERSAMPLING_FACTOR = 2.0
MAX_ITER = 10
TOL = 1e-4
_LOCAL_MAX_ITER = 300
# Runs of the in-memory k-means that reduces the k-means|| candidates to K centres. A
# single run lands in a poor local optimum of the candidates often enough to decide
# which optimum EM ends in; restarts here cost no pass over the data.
LOCAL_N_INIT = 10

# Stream purposes: part of every stream key, so no two uses share random numbers.
_FIRST, _ROUND, _PLUSPLUS, _LOCAL, _FIRST_RACE = 1, 2, 3, 4, 5


class DuplicateCentersWarning(UserWarning):
    """The data hold fewer distinct rows (of positive weight) than clusters asked for."""


# --------------------------------------------------------------------------------------
# Counter-based random numbers: a pure function of (stream key, global row index)
# --------------------------------------------------------------------------------------
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _mix_int(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, which is what SplitMix64 wants.
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def stream_key(*parts: int) -> int:
    """A 64-bit stream key from small integers (seed, purpose, round, trial...)."""
    h = 0x6A09E667F3BCC908
    for p in parts:
        h = _mix_int(h ^ _mix_int(int(p) + _GOLDEN))
    return h


def uniforms(key: int, rows: np.ndarray) -> np.ndarray:
    """Uniform numbers in (0, 1), one per global row index.

    Parameters
    ----------
    key : int
        Stream key from :func:`stream_key`.
    rows : ndarray of shape (m,), int
        Global row indices.

    Returns
    -------
    ndarray of shape (m,), float64
    """
    z = np.asarray(rows).astype(np.uint64)
    z *= np.uint64(_GOLDEN)
    z += np.uint64(key)
    z = _mix(z)
    # A second keyed round: two streams never yield shifted copies of each other.
    z ^= np.uint64(_mix_int(key ^ 0xD1B54A32D192ED03))
    z = _mix(z)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _exponentials(key, rows):
    return -np.log(uniforms(key, rows))


# --------------------------------------------------------------------------------------
# Additive values returned by blocks
# --------------------------------------------------------------------------------------
def _bottom(keys, idx, cap):
    """Positions of the ``cap`` smallest (key, index) pairs, in that order."""
    cand = np.arange(keys.size)
    if keys.size > cap:
        kth = np.partition(keys, cap - 1)[cap - 1]
        cand = np.flatnonzero(keys <= kth)
    return cand[np.lexsort((idx[cand], keys[cand]))][:cap]


@dataclass(frozen=True, eq=False)
class _Sample:
    """Rows with the ``cap`` smallest keys (ties by global row index); additive by merge.

    Attributes
    ----------
    keys : ndarray of shape (s,)
    index : ndarray of shape (s,), int64
        Global row indices.
    rows : ndarray of shape (s, d), float64
    extra : ndarray of shape (s, e)
        Per-row values carried along (label and weight for relocation).
    """

    cap: int
    keys: np.ndarray
    index: np.ndarray
    rows: np.ndarray
    extra: np.ndarray

    @classmethod
    def empty(cls, cap, d, e=0):
        return cls(cap, np.empty(0), np.empty(0, np.int64), np.empty((0, d)), np.empty((0, e)))

    @classmethod
    def of(cls, cap, keys, index, rows, extra):
        keep = np.isfinite(keys)
        if not keep.all():
            keys, index, rows, extra = keys[keep], index[keep], rows[keep], extra[keep]
        pos = _bottom(keys, index, cap)
        return cls(cap, keys[pos], index[pos], np.asarray(rows[pos], np.float64), extra[pos])

    def __add__(self, other):
        keys = np.concatenate([self.keys, other.keys])
        index = np.concatenate([self.index, other.index])
        pos = _bottom(keys, index, self.cap)
        return _Sample(
            self.cap,
            keys[pos],
            index[pos],
            np.concatenate([self.rows, other.rows])[pos],
            np.concatenate([self.extra, other.extra])[pos],
        )


@dataclass(frozen=True, eq=False)
class _Race:
    """S independent draws: per slot, the row with the smallest (key, global index)."""

    keys: np.ndarray
    index: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, keys, index, rows):
        """From a (m, S) key matrix of one tile."""
        if keys.shape[0] == 0:
            return cls.empty(keys.shape[1], rows.shape[1])
        j = np.argmin(keys, axis=0)  # the first minimum: the smaller row index on ties
        return cls(keys[j, np.arange(keys.shape[1])], index[j], np.asarray(rows[j], np.float64))

    @classmethod
    def empty(cls, s, d):
        return cls(np.full(s, np.inf), np.full(s, -1, np.int64), np.zeros((s, d)))

    def __add__(self, other):
        take = (other.keys < self.keys) | ((other.keys == self.keys) & (other.index < self.index))
        return _Race(
            np.where(take, other.keys, self.keys),
            np.where(take, other.index, self.index),
            np.where(take[:, None], other.rows, self.rows),
        )


@dataclass(frozen=True, eq=False)
class _LloydPart:
    """Per-cluster weight sums and sums of ``w (x - base_k)``, cost, farthest rows.

    ``far`` is None in a plain Lloyd pass (see :class:`_FarTask`).
    """

    counts: np.ndarray
    sums: np.ndarray
    inertia: float
    far: _Sample | None

    def __add__(self, other):
        return _LloydPart(
            self.counts + other.counts,
            self.sums + other.sums,
            self.inertia + other.inertia,
            None if self.far is None else self.far + other.far,
        )


@dataclass(frozen=True, eq=False)
class _StatsPart:
    lloyd: _LloydPart
    stats: tuple

    def __add__(self, other):
        return _StatsPart(
            self.lloyd + other.lloyd,
            tuple(a + b for a, b in zip(self.stats, other.stats, strict=True)),
        )


@dataclass(frozen=True, eq=False)
class _PlusPlusPart:
    pots: np.ndarray
    race: _Race | None

    def __add__(self, other):
        race = None if self.race is None else self.race + other.race
        return _PlusPlusPart(self.pots + other.pots, race)


# --------------------------------------------------------------------------------------
# One tile of a block, and the per-run tasks a pass runs on it
# --------------------------------------------------------------------------------------
class _Tile:
    """A tile of rows centred on the pass's reference point, with global indices."""

    def __init__(self, x, ref, row0, w):
        self.x = x
        self.m, d = x.shape
        # z = [xc, 1]: one GEMM with [-2 c, |c|^2] gives |c|^2 - 2 xc.c for every centre.
        self.z = np.empty((self.m, d + 1))
        self.xc = self.z[:, :d]
        np.subtract(x, ref, out=self.xc, dtype=np.float64)
        self.z[:, d] = 1.0
        self.index = np.arange(row0, row0 + self.m, dtype=np.int64)
        self.weighted = w is not None
        self.w = np.ones(self.m) if w is None else np.asarray(w, dtype=np.float64)
        self._xx = None
        self._x64 = None

    @property
    def xx(self):
        if self._xx is None:
            self._xx = np.einsum("ij,ij->i", self.xc, self.xc)
        return self._xx

    @property
    def x64(self):
        if self._x64 is None:
            self._x64 = np.asarray(self.x, dtype=np.float64)
        return self._x64


def _tile_rows(d: int) -> int:
    # ~2 MB of centred rows: large enough that per-tile Python overhead is small against
    # the GEMM, small enough that every temporary stays in cache-friendly sizes.
    return int(min(65536, max(1024, 2**21 // (8 * max(d, 1)))))


# Above this many clusters, per-cluster sums use bincount rather than a one-hot GEMM.
_ONE_HOT_MAX = 32


def _affine(cc, c_sq):
    """``[-2 c, |c|^2]`` (K, d+1): the design ``[xc, 1]`` times its transpose is
    ``|c|^2 - 2 xc.c``, the squared distance less ``|xc|^2``."""
    return np.concatenate([-2.0 * cc, c_sq[:, None]], axis=1)


def _nearest(t, cc, c_sq):
    """Label of each row's nearest centre (ties to the first), one GEMM and an argmin."""
    if cc.shape[0] == 1:
        return np.zeros(t.m, np.intp)
    return np.argmin(t.z @ _affine(cc, c_sq).T, axis=1)


def _min_sq_dist(t, cc, c_sq):
    """Squared distance of each row to its nearest centre, exactly zero on a centre.

    The expanded form ``|xc|^2 + min_k (|c_k|^2 - 2 xc.c_k)`` (a GEMM and a minimum
    along contiguous rows, no labels) is off by round-off of order
    ``eps (|xc|^2 + |c|^2)``; where it is that small it is recomputed as
    ``min_k |xc - c_k|^2``, so a row equal to a centre gets exactly zero.
    """
    if cc.shape[0] == 1:
        d2 = t.xx + t.z @ _affine(cc, c_sq)[0]
    else:
        d2 = t.xx + (_affine(cc, c_sq) @ t.z.T).min(axis=0)
    slack = 8.0 * (cc.shape[1] + 2) * np.finfo(np.float64).eps
    near = np.flatnonzero(d2 <= slack * (t.xx + c_sq.max()))
    if near.size:
        dev = t.xc[near][:, None, :] - cc[None, :, :]
        d2[near] = np.einsum("ikj,ikj->ik", dev, dev).min(axis=1)
    return d2


def _cluster_sums(labels, values, w, k, weighted):
    """Per-cluster weight sums (k,) and sums of ``w * values`` (k, d)."""
    counts = np.bincount(labels, weights=w if weighted else None, minlength=k).astype(np.float64)
    if k <= _ONE_HOT_MAX:
        # A one-hot GEMM: several times faster than bincount over every value.
        onehot = np.equal(labels, np.arange(k)[:, None]).astype(np.float64)
        if weighted:
            onehot *= w
        return counts, onehot @ values
    m, d = values.shape
    wv = values * w[:, None] if weighted else values
    flat = (labels[:, None] * d + np.arange(d)).ravel()
    return counts, np.bincount(flat, weights=wv.ravel(), minlength=k * d).reshape(k, d)


def _centred(centers, ref):
    cc = np.asarray(centers, np.float64) - ref
    return cc, np.einsum("ij,ij->i", cc, cc)


@dataclass(frozen=True, eq=False)
class _FirstTask:
    """First centre with probability proportional to the row weight."""

    key: int

    def tile(self, t):
        with np.errstate(divide="ignore"):
            keys = _exponentials(self.key, t.index) / t.w
        return _Race.of(keys[:, None], t.index, t.x)

    def zero(self, d):
        return _Race.empty(1, d)


@dataclass(frozen=True, eq=False)
class _MomentsTask:
    """Weight sum, and sums of w xc and w xc^2 about the reference (for Lloyd's tol)."""

    def tile(self, t):
        wx = t.xc * t.w[:, None]
        return np.concatenate([[t.w.sum()], wx.sum(axis=0), np.einsum("ij,ij->j", wx, t.xc)])

    def zero(self, d):
        return np.zeros(2 * d + 1)


@dataclass(frozen=True, eq=False)
class _RoundTask:
    """One k-means|| round: ``cap`` rows drawn in proportion to w D^2."""

    cc: np.ndarray
    c_sq: np.ndarray
    key: int
    cap: int

    def tile(self, t):
        d2 = _min_sq_dist(t, self.cc, self.c_sq)
        with np.errstate(divide="ignore"):
            keys = _exponentials(self.key, t.index) / (t.w * d2)
        return _Sample.of(self.cap, keys, t.index, t.x, np.empty((t.m, 0)))

    def zero(self, d):
        return _Sample.empty(self.cap, d)


@dataclass(frozen=True, eq=False)
class _WeighTask:
    """Weight of the rows nearest to each candidate."""

    cc: np.ndarray
    c_sq: np.ndarray

    def tile(self, t):
        labels = _nearest(t, self.cc, self.c_sq)
        return np.bincount(labels, weights=t.w, minlength=self.cc.shape[0])

    def zero(self, d):
        return np.zeros(self.cc.shape[0])


def _far_sample(t, mind, labels, n_far):
    with np.errstate(divide="ignore"):
        keys = np.where(t.w > 0, -mind, np.inf)
    extra = np.stack([labels.astype(np.float64), t.w], axis=1)
    return _Sample.of(n_far, keys, t.index, t.x, extra)


@dataclass(frozen=True, eq=False)
class _LloydTask:
    """One Lloyd pass: weight sums and sums of w xc per nearest centre."""

    cc: np.ndarray
    c_sq: np.ndarray

    def tile(self, t):
        k = self.cc.shape[0]
        labels = _nearest(t, self.cc, self.c_sq)
        counts, sums = _cluster_sums(labels, t.xc, t.w, k, t.weighted)
        return _LloydPart(counts, sums, 0.0, None)

    def zero(self, d):
        k = self.cc.shape[0]
        return _LloydPart(np.zeros(k), np.zeros((k, d)), 0.0, None)


@dataclass(frozen=True, eq=False)
class _FarTask:
    """The rows farthest from their nearest centre (to re-seed empty clusters).

    Only run after a Lloyd pass left a cluster empty, so the common pass stays lean.
    """

    cc: np.ndarray
    c_sq: np.ndarray

    def tile(self, t):
        labels = _nearest(t, self.cc, self.c_sq)
        dev = t.xc - self.cc[labels]
        return _far_sample(t, np.einsum("ij,ij->i", dev, dev), labels, self.cc.shape[0])

    def zero(self, d):
        return _Sample.empty(self.cc.shape[0], d, 2)


def _onehot_statistics(dev, w, labels, nk, s1, centers, covariance_type, n_rows, weighted):
    """SuffStats of one-hot responsibilities, moments about each row's own centre.

    ``nk`` and ``s1`` are the per-cluster weight sums and sums of ``w * dev``.
    """
    k, d = s1.shape
    if covariance_type in ("full", "tied"):
        a = dev * np.sqrt(w)[:, None] if weighted else dev
        if covariance_type == "tied":
            s2 = a.T @ a
        else:
            s2 = np.zeros((k, d, d))
            # A counting sort of small labels, then one GEMM per cluster on its rows.
            small = labels.astype(np.uint8 if k < 256 else np.uint16)
            order = np.argsort(small, kind="stable")
            bounds = np.searchsorted(small[order], np.arange(k + 1))
            a = a[order]
            for j in range(k):
                rows = a[bounds[j] : bounds[j + 1]]
                if rows.shape[0]:
                    s2[j] = rows.T @ rows
    elif covariance_type == "diag":
        _, s2 = _cluster_sums(labels, dev * dev, w, k, weighted)
    else:
        sq = np.einsum("ij,ij->i", dev, dev)
        s2 = np.bincount(labels, weights=sq * w if weighted else sq, minlength=k)
    total = float(w.sum()) if weighted else float(n_rows)
    return SuffStats(covariance_type, centers, nk, s1, s2, 0.0, int(n_rows), total)


@dataclass(frozen=True, eq=False)
class _StatsTask:
    """Final labels under ``centers`` and their one-hot statistics per covariance type.

    Moments are taken about each cluster's centre (rows minus their own centre), so the
    scatter keeps its digits however far apart the clusters are.
    """

    centers: np.ndarray
    cc: np.ndarray
    c_sq: np.ndarray
    covariance_types: tuple

    def tile(self, t):
        k = self.cc.shape[0]
        labels = _nearest(t, self.cc, self.c_sq)
        dev = t.x64 - self.centers[labels]
        mind = np.einsum("ij,ij->i", dev, dev)
        counts, sums = _cluster_sums(labels, dev, t.w, k, t.weighted)
        stats = tuple(
            _onehot_statistics(dev, t.w, labels, counts, sums, self.centers, ct, t.m, t.weighted)
            for ct in self.covariance_types
        )
        lloyd = _LloydPart(counts, sums, float(t.w @ mind), _far_sample(t, mind, labels, k))
        return _StatsPart(lloyd, stats)

    def zero(self, d):
        k = self.cc.shape[0]
        return _StatsPart(
            _LloydPart(np.zeros(k), np.zeros((k, d)), 0.0, _Sample.empty(k, d, 2)),
            tuple(SuffStats.zero(ct, self.centers) for ct in self.covariance_types),
        )


@dataclass(frozen=True, eq=False)
class _PlusPlusTask:
    """Score the pending trials for one centre; draw the next trials under each.

    ``pots[h]`` is the cost ``sum w min(D^2, |x - trial_h|^2)`` if trial h were chosen;
    the race slot ``(h, j)`` is trial j of the next centre drawn in proportion to that
    ``w min(D^2, |x - trial_h|^2)``; with no pending trials there is one hypothesis,
    the chosen centres alone.
    """

    cc: np.ndarray
    c_sq: np.ndarray
    trials: np.ndarray
    keys: tuple

    def tile(self, t):
        d2 = _min_sq_dist(t, self.cc, self.c_sq)
        h = self.trials.shape[0]
        if h:
            t_sq = np.einsum("ij,ij->i", self.trials, self.trials)
            hyp = np.empty((t.m, h))
            for i in range(h):
                one = slice(i, i + 1)
                np.minimum(d2, _min_sq_dist(t, self.trials[one], t_sq[one]), out=hyp[:, i])
            pots = t.w @ hyp
        else:
            hyp, pots = d2[:, None], np.zeros(0)
        race = None
        if self.keys:
            e = np.stack([_exponentials(k, t.index) for k in self.keys], axis=1)
            with np.errstate(divide="ignore"):
                keys = e[:, None, :] / (t.w[:, None, None] * hyp[:, :, None])
            race = _Race.of(keys.reshape(t.m, -1), t.index, t.x)
        return _PlusPlusPart(pots, race)

    def zero(self, d):
        h = self.trials.shape[0]
        race = _Race.empty(max(h, 1) * len(self.keys), d) if self.keys else None
        return _PlusPlusPart(np.zeros(h), race)


def _chunk(x, spec, row_offset, block_index, w=None):
    ref, tasks = spec
    n, d = x.shape
    acc = [None] * len(tasks)
    step = _tile_rows(d)
    for a in range(0, n, step):
        b = min(n, a + step)
        t = _Tile(x[a:b], ref, row_offset + a, None if w is None else w[a:b])
        finite = np.isfinite(t.xc)
        if not finite.all():
            bad = np.flatnonzero(~finite.all(axis=1)) + a
            raise_non_finite(x, bad, block_index, row_offset)
        for i, task in enumerate(tasks):
            part = task.tile(t)
            acc[i] = part if acc[i] is None else acc[i] + part
    return tuple(task.zero(d) if v is None else v for task, v in zip(tasks, acc, strict=True))


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
            _chunk,
            (self.ref, tuple(tasks)),
            weights=self.weights,
            split_every=self.split_every,
            prefix=self.prefix,
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


def _sq_dists(a, b):
    """Squared distances between the rows of a (p, d) and b (q, d): (p, q), from the
    differences (exactly zero between equal rows)."""
    return cdist(a, b, "sqeuclidean")


def _warn_duplicates(n_distinct, n_clusters):
    warnings.warn(
        f"k-means initialisation found only {n_distinct} distinct row(s) of positive "
        f"weight, fewer than n_components={n_clusters}; the surplus components start on "
        "repeated centres and stay empty. Decrease n_components.",
        DuplicateCentersWarning,
        stacklevel=4,
    )


def _fill_duplicates(rows, n_clusters):
    """Repeat the distinct rows found until there are ``n_clusters`` of them."""
    reps = -(-n_clusters // rows.shape[0])
    return np.tile(rows, (reps, 1))[:n_clusters]


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
        sums = _cluster_sums(labels, points, weights, n_clusters, True)[1]
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
    return np.random.default_rng([seed, _LOCAL] if run == 0 else [seed, _LOCAL, run])


def _local_kmeans(points, weights, n_clusters, seed, n_init=LOCAL_N_INIT):
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


def _relocate(part, centers, base):
    """New centres from Lloyd sums, re-seeding empty clusters on the farthest rows.

    Parameters
    ----------
    part : _LloydPart
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
    far = part.far if empty.size else _Sample.empty(0, centers.shape[1], 2)
    for k, row, (label, wt) in zip(empty, far.rows, far.extra, strict=False):
        donor = int(label)
        counts[donor] -= wt
        sums[donor] -= wt * (row - base[donor])
        counts[k] = wt
        sums[k] = wt * (row - base[k])
    safe = np.where(counts > 0, counts, 1.0)
    new = np.where((counts > 0)[:, None], base + sums / safe[:, None], centers)
    return new, int(empty.size)


class _KMeansRun:
    """One k-means|| + Lloyd run; ``task()`` gives its next pass's work."""

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

    def first_key(self):
        return stream_key(self.seed, _FIRST)

    def set_first(self, row):
        self.candidates = np.asarray(row, np.float64)[None, :]
        self.phase = "round" if self.n_rounds > 0 else "weigh"

    def task(self):
        ref = self.ctx.ref
        if self.phase == "first":
            return _FirstTask(stream_key(self.seed, _FIRST_RACE))
        if self.phase == "round":
            key = stream_key(self.seed, _ROUND, self.round)
            return _RoundTask(*_centred(self.candidates, ref), key, self.cap)
        if self.phase == "weigh":
            return _WeighTask(*_centred(self.candidates, ref))
        if self.phase == "lloyd":
            return _LloydTask(*_centred(self.centers, ref))
        if self.phase == "far":
            return _FarTask(*_centred(self.centers, ref))
        if self.phase == "stats":
            return _StatsTask(self.centers, *_centred(self.centers, ref), self.covariance_types)
        return None

    def _update(self, part):
        """Lloyd's update from a pass's sums; empty clusters re-seeded from ``part.far``."""
        base = np.broadcast_to(self.ctx.ref, self.centers.shape)
        new, _ = _relocate(part, self.centers, base)
        shift = float(np.sum((new - self.centers) ** 2))
        self.centers = new
        self.n_iter += 1
        self.converged = shift <= self.tol * self.ctx.tol_scale
        self.phase = "stats" if self.converged or self.n_iter >= self.max_iter else "lloyd"

    def receive(self, result):
        if self.phase == "first":
            if not np.isfinite(result.keys[0]):
                raise ValueError("Every sample weight is zero; give some rows positive weight.")
            self.set_first(result.rows[0])
        elif self.phase == "round":
            self.round += 1
            if result.keys.size:
                self.candidates = np.concatenate([self.candidates, result.rows])
            # No new row means every row of positive weight already is a candidate.
            if self.round >= self.n_rounds or result.keys.size == 0:
                self.phase = "weigh"
        elif self.phase == "weigh":
            keep = result > 0
            points, wts = self.candidates[keep], result[keep]
            if points.shape[0] < self.k:
                _warn_duplicates(points.shape[0], self.k)
                self.centers = _fill_duplicates(points, self.k)
                self.phase = "stats"
            else:
                self.centers = _local_kmeans(points, wts, self.k, self.seed, self.local_n_init)
                self.phase = "lloyd" if self.max_iter > 0 else "stats"
        elif self.phase == "lloyd":
            if np.any(result.counts <= 0):
                # Rare: re-seeding an empty cluster needs the farthest rows, one more pass.
                self._pending = result
                self.phase = "far"
            else:
                self._update(result)
        elif self.phase == "far":
            self._update(replace(self._pending, far=result))
            self._pending = None
        elif self.phase == "stats":
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


class _PlusPlusRun:
    """One greedy k-means++ run: one pass per centre."""

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

    def first_key(self):
        return stream_key(self.seed, _FIRST)

    def set_first(self, row, index):
        self.chosen.append(np.asarray(row, np.float64))
        self.index.append(int(index))
        self.phase = "steps"
        self._check_done()

    def _check_done(self):
        if len(self.chosen) == self.k:
            self.done = True
            self.phase = "done"

    def _needs_draw(self):
        after = len(self.chosen) + (self.pending is not None)
        return after < self.k

    def task(self):
        if self.phase == "first":
            return _FirstTask(stream_key(self.seed, _FIRST_RACE))
        if self.done:
            return None
        cc, c_sq = _centred(np.array(self.chosen), self.ctx.ref)
        trials = (
            np.zeros((0, cc.shape[1])) if self.pending is None else self.pending[0] - self.ctx.ref
        )
        keys = ()
        if self._needs_draw():
            keys = tuple(
                stream_key(self.seed, _PLUSPLUS, self.step, j) for j in range(self.n_trials)
            )
        return _PlusPlusTask(cc, c_sq, trials, keys)

    def receive(self, result):
        if self.phase == "first":
            if not np.isfinite(result.keys[0]):
                raise ValueError("Every sample weight is zero; give some rows positive weight.")
            self.set_first(result.rows[0], result.index[0])
            return
        hyp = 0
        if self.pending is not None:
            # scikit-learn's greedy rule: the trial that lowers the cost most (first on ties).
            hyp = int(np.argmin(result.pots))
            self.chosen.append(self.pending[0][hyp])
            self.index.append(int(self.pending[1][hyp]))
            self.pending = None
        if result.race is not None:
            sl = slice(hyp * self.n_trials, (hyp + 1) * self.n_trials)
            keys, rows, idx = result.race.keys[sl], result.race.rows[sl], result.race.index[sl]
            valid = np.isfinite(keys)
            if valid.any():
                self.pending = (rows[valid], idx[valid])
            else:
                # Every row of positive weight sits on a chosen centre.
                _warn_duplicates(len(self.chosen), self.k)
                rows_ = _fill_duplicates(np.array(self.chosen), self.k)
                idx_ = _fill_duplicates(np.array(self.index)[:, None], self.k)[:, 0]
                self.chosen, self.index = list(rows_), [int(i) for i in idx_]
        self.step += 1
        self._check_done()


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
            tasks.append(_MomentsTask())
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
        if isinstance(r, _PlusPlusRun):
            r.set_first(row, i)
        else:
            r.set_first(row)


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
        _KMeansRun(ctx, k, seed, cts, n_rounds, oversampling_factor, max_iter, tol, local_n_init)
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
    states = [_PlusPlusRun(ctx, k, seed, n_local_trials) for k, seed in runs]
    _drive(ctx, states, need_moments=False)
    return [(np.array(s.chosen), np.array(s.index, dtype=np.int64)) for s in states]
