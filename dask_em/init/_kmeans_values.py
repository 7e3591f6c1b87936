"""Additive values the k-means passes return from blocks, merged up the reduction tree.

Each is a frozen value with ``+``: per-cluster sums add, sampled rows merge by the total
order (key, global row index), so any reduction tree gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _bottom(keys, idx, cap):
    """Positions of the ``cap`` smallest (key, index) pairs, in that order."""
    cand = np.arange(keys.size)
    if keys.size > cap:
        kth = np.partition(keys, cap - 1)[cap - 1]
        cand = np.flatnonzero(keys <= kth)
    return cand[np.lexsort((idx[cand], keys[cand]))][:cap]


@dataclass(frozen=True, eq=False)
class Sample:
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
        return Sample(
            self.cap,
            keys[pos],
            index[pos],
            np.concatenate([self.rows, other.rows])[pos],
            np.concatenate([self.extra, other.extra])[pos],
        )


@dataclass(frozen=True, eq=False)
class Race:
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
        return Race(
            np.where(take, other.keys, self.keys),
            np.where(take, other.index, self.index),
            np.where(take[:, None], other.rows, self.rows),
        )


@dataclass(frozen=True, eq=False)
class LloydPart:
    """Per-cluster weight sums and sums of ``w (x - base_k)``, cost, farthest rows.

    ``far`` is None in a plain Lloyd pass (see :class:`FarTask`).
    """

    counts: np.ndarray
    sums: np.ndarray
    inertia: float
    far: Sample | None

    def __add__(self, other):
        return LloydPart(
            self.counts + other.counts,
            self.sums + other.sums,
            self.inertia + other.inertia,
            None if self.far is None else self.far + other.far,
        )


@dataclass(frozen=True, eq=False)
class StatsPart:
    lloyd: LloydPart
    stats: tuple

    def __add__(self, other):
        return StatsPart(
            self.lloyd + other.lloyd,
            tuple(a + b for a, b in zip(self.stats, other.stats, strict=True)),
        )

    def add_into(self, other):
        """``self + other`` adding the scatters into this part's own (a block's running
        sum, see :func:`dask_em.init._kmeans_tasks.block_chunk`)."""
        return StatsPart(
            self.lloyd + other.lloyd,
            tuple(a.add_into(b) for a, b in zip(self.stats, other.stats, strict=True)),
        )

    def packed(self):
        """With full scatters packed for the tree (:meth:`SuffStats.packed`)."""
        return StatsPart(self.lloyd, tuple(s.packed() for s in self.stats))

    def unpacked(self):
        return StatsPart(self.lloyd, tuple(s.unpacked() for s in self.stats))


@dataclass(frozen=True, eq=False)
class PlusPlusPart:
    pots: np.ndarray
    race: Race | None

    def __add__(self, other):
        race = None if self.race is None else self.race + other.race
        return PlusPlusPart(self.pots + other.pots, race)


# --------------------------------------------------------------------------------------
