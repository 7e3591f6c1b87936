"""One pass over a chunked array as a tree reduction, in the manner of dask.array.reduction.

``chunk``: a function of one block (and small shared arguments) returns a small additive
value. ``combine``: ``split_every`` of those are added at each inner node of a tree.
The root is a single key, so one ``compute`` brings one small value to the driver.

The graph is built afresh for every pass from the (persisted or lazily read) array and
the current numpy parameters, so nothing accumulates from one EM iteration to the next.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph


@dataclass(frozen=True, eq=False)
class _Shared:
    """Opaque holder: the graph stores it once under its own key and every block task
    refers to that key, so the parameters travel to each worker once per pass."""

    value: Any


def _unwrap_call(func, x, shared, row_offset, block_index, w=None):
    return func(x, shared.value, row_offset, block_index, w)


def add_tuples(*parts):
    """Element-wise sum of equal-length tuples of additive values."""
    return tuple(sum(group[1:], group[0]) for group in zip(*parts, strict=True))


def default_split_every() -> int:
    return int(dask.config.get("split_every", None) or 8)


def block_offsets(chunks_rows) -> np.ndarray:
    """Global index of each row block's first row."""
    return np.concatenate([[0], np.cumsum(chunks_rows)[:-1]]).astype(np.int64)


def tree_reduce(
    x,
    chunk,
    shared,
    *,
    combine=add_tuples,
    weights=None,
    split_every=None,
    prefix="em",
) -> Delayed:
    """A lazy tree reduction of ``chunk`` over the row blocks of ``x``.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
        Rows chunked, features in one chunk.
    chunk : callable
        ``chunk(block, shared, row_offset, block_index, weights_block)`` returns a small
        additive value (a tuple of them when ``combine`` is :func:`add_tuples`).
    shared : object
        Small value every block needs (parameters); stored once in the graph.
    combine : callable
        ``combine(*values)`` adds values.
    weights : dask.array.Array of shape (n,), optional
        Row weights chunked like ``x``.
    split_every : int, optional
        Values added per tree node; default from ``dask.config`` ``split_every`` or 8.
    prefix : str
        Task name prefix, so the dashboard shows ``{prefix}-stats`` and
        ``{prefix}-combine`` tasks.

    Returns
    -------
    dask.delayed.Delayed
        Computes to the combined value.
    """
    if x.numblocks[1] != 1:
        raise ValueError("features must be in one chunk; rechunk with x.rechunk({1: -1})")
    split_every = max(2, int(split_every or default_split_every()))
    token = tokenize(x.name, weights.name if weights is not None else None, shared, chunk)
    shared_key = f"{prefix}-params-{token}"
    stats_name = f"{prefix}-stats-{token}"
    combine_name = f"{prefix}-combine-{token}"
    root = f"{prefix}-result-{token}"
    offsets = block_offsets(x.chunks[0])

    dsk: dict = {shared_key: _Shared(shared)}
    keys = []
    for i in range(x.numblocks[0]):
        key = (stats_name, i)
        task = (_unwrap_call, chunk, (x.name, i, 0), shared_key, int(offsets[i]), i)
        if weights is not None:
            task = task + ((weights.name, i),)
        dsk[key] = task
        keys.append(key)
    for level in itertools.count():
        if len(keys) <= split_every:
            dsk[root] = (combine, *keys)
            break
        grouped = [keys[j : j + split_every] for j in range(0, len(keys), split_every)]
        keys = []
        for j, group in enumerate(grouped):
            key = (combine_name, level, j)
            dsk[key] = (combine, *group)
            keys.append(key)
    deps = [x] if weights is None else [x, weights]
    graph = HighLevelGraph.from_collections(root, dsk, dependencies=deps)
    return Delayed(root, graph)
