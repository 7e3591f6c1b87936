"""The work a k-means pass does on one block: tiles of centred rows and per-run tasks.

A pass runs several tasks (one per unfinished run, see :mod:`dask_em.init._kmeans_runs`)
over the same tiles of a block; each task turns a tile into one of the additive values of
:mod:`dask_em.init._kmeans_values`. :func:`block_chunk` is the block function handed to
:func:`dask_em.engine._reduce.compute_pass`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.engine._errors import raise_non_finite
from dask_em.engine._stats import SuffStats
from dask_em.init._kmeans_random import exponentials
from dask_em.init._kmeans_values import LloydPart, PlusPlusPart, Race, Sample, StatsPart


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


def cluster_sums(labels, values, w, k, weighted):
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


def centred(centers, ref):
    cc = np.asarray(centers, np.float64) - ref
    return cc, np.einsum("ij,ij->i", cc, cc)


@dataclass(frozen=True, eq=False)
class FirstTask:
    """First centre with probability proportional to the row weight."""

    key: int

    def tile(self, t):
        with np.errstate(divide="ignore"):
            keys = exponentials(self.key, t.index) / t.w
        return Race.of(keys[:, None], t.index, t.x)

    def zero(self, d):
        return Race.empty(1, d)


@dataclass(frozen=True, eq=False)
class MomentsTask:
    """Weight sum, and sums of w xc and w xc^2 about the reference (for Lloyd's tol)."""

    def tile(self, t):
        wx = t.xc * t.w[:, None]
        return np.concatenate([[t.w.sum()], wx.sum(axis=0), np.einsum("ij,ij->j", wx, t.xc)])

    def zero(self, d):
        return np.zeros(2 * d + 1)


@dataclass(frozen=True, eq=False)
class RoundTask:
    """One k-means|| round: ``cap`` rows drawn in proportion to w D^2."""

    cc: np.ndarray
    c_sq: np.ndarray
    key: int
    cap: int

    def tile(self, t):
        d2 = _min_sq_dist(t, self.cc, self.c_sq)
        with np.errstate(divide="ignore"):
            keys = exponentials(self.key, t.index) / (t.w * d2)
        return Sample.of(self.cap, keys, t.index, t.x, np.empty((t.m, 0)))

    def zero(self, d):
        return Sample.empty(self.cap, d)


@dataclass(frozen=True, eq=False)
class WeighTask:
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
    return Sample.of(n_far, keys, t.index, t.x, extra)


@dataclass(frozen=True, eq=False)
class LloydTask:
    """One Lloyd pass: weight sums and sums of w xc per nearest centre."""

    cc: np.ndarray
    c_sq: np.ndarray

    def tile(self, t):
        k = self.cc.shape[0]
        labels = _nearest(t, self.cc, self.c_sq)
        counts, sums = cluster_sums(labels, t.xc, t.w, k, t.weighted)
        return LloydPart(counts, sums, 0.0, None)

    def zero(self, d):
        k = self.cc.shape[0]
        return LloydPart(np.zeros(k), np.zeros((k, d)), 0.0, None)


@dataclass(frozen=True, eq=False)
class FarTask:
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
        return Sample.empty(self.cc.shape[0], d, 2)


def _onehot_scatter_full(dev, w, labels, k, weighted):
    a = dev * np.sqrt(w)[:, None] if weighted else dev
    d = dev.shape[1]
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
    return s2


def _onehot_scatter_tied(dev, w, labels, k, weighted):
    a = dev * np.sqrt(w)[:, None] if weighted else dev
    return a.T @ a


def _onehot_scatter_diag(dev, w, labels, k, weighted):
    return cluster_sums(labels, dev * dev, w, k, weighted)[1]


def _onehot_scatter_spherical(dev, w, labels, k, weighted):
    sq = np.einsum("ij,ij->i", dev, dev)
    return np.bincount(labels, weights=sq * w if weighted else sq, minlength=k)


# The scatter of one-hot responsibilities in the shape each covariance type's
# statistics hold: (K, d, d), (d, d), (K, d), (K,).
_ONEHOT_SCATTER = {
    "full": _onehot_scatter_full,
    "tied": _onehot_scatter_tied,
    "diag": _onehot_scatter_diag,
    "spherical": _onehot_scatter_spherical,
}


def _onehot_statistics(dev, w, labels, nk, s1, centers, covariance_type, n_rows, weighted):
    """SuffStats of one-hot responsibilities, moments about each row's own centre.

    ``nk`` and ``s1`` are the per-cluster weight sums and sums of ``w * dev``.
    """
    s2 = _ONEHOT_SCATTER[covariance_type](dev, w, labels, s1.shape[0], weighted)
    total = float(w.sum()) if weighted else float(n_rows)
    return SuffStats(covariance_type, centers, nk, s1, s2, 0.0, int(n_rows), total)


@dataclass(frozen=True, eq=False)
class StatsTask:
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
        counts, sums = cluster_sums(labels, dev, t.w, k, t.weighted)
        stats = tuple(
            _onehot_statistics(dev, t.w, labels, counts, sums, self.centers, ct, t.m, t.weighted)
            for ct in self.covariance_types
        )
        lloyd = LloydPart(counts, sums, float(t.w @ mind), _far_sample(t, mind, labels, k))
        return StatsPart(lloyd, stats)

    def zero(self, d):
        k = self.cc.shape[0]
        return StatsPart(
            LloydPart(np.zeros(k), np.zeros((k, d)), 0.0, Sample.empty(k, d, 2)),
            tuple(SuffStats.zero(ct, self.centers) for ct in self.covariance_types),
        )


@dataclass(frozen=True, eq=False)
class PlusPlusTask:
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
            e = np.stack([exponentials(k, t.index) for k in self.keys], axis=1)
            with np.errstate(divide="ignore"):
                keys = e[:, None, :] / (t.w[:, None, None] * hyp[:, :, None])
            race = Race.of(keys.reshape(t.m, -1), t.index, t.x)
        return PlusPlusPart(pots, race)

    def zero(self, d):
        h = self.trials.shape[0]
        race = Race.empty(max(h, 1) * len(self.keys), d) if self.keys else None
        return PlusPlusPart(np.zeros(h), race)


def block_chunk(x, spec, row_offset, block_index, w=None):
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
            if acc[i] is None:
                acc[i] = part
            else:
                # Tiles' statistics parts add into the block's first one (its own
                # buffers; K d^2 each at full covariances), the other parts with +.
                add_into = getattr(acc[i], "add_into", None)
                acc[i] = add_into(part) if add_into is not None else acc[i] + part
    return tuple(task.zero(d) if v is None else v for task, v in zip(tasks, acc, strict=True))
