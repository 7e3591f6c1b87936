"""One pass over a chunked array as a tree reduction, in the manner of dask.array.reduction.

``chunk``: a function of one block (and small shared arguments) returns a small additive
value. ``combine``: ``split_every`` of those are added at each inner node of a tree, into
one buffer (:func:`add_values`), with the fan-in lowered where a node would not fit a
worker thread's memory (:mod:`dask_em.engine._memory`).
The root is a single key, so one ``compute`` brings one small value to the driver.

:func:`compute_pass` is the one way a pass runs: it builds the tree (:func:`tree_reduce`),
checks that row weights are chunked like the rows, and computes with one BLAS thread per
Dask thread (:func:`dask_em.engine._blas.single_threaded_blas`). The block functions raise
:class:`dask_em.engine._errors.NonFiniteError` for NaN, infinity or overflow.

The graph is built afresh for every pass from the (persisted or lazily read) array and
the current numpy parameters, so nothing accumulates from one EM iteration to the next.

Fused reads: an array that a data source registered with :func:`register_block_reader`
(dask-em's own zarr, npy and HDF5 readers) and that is passed on as it is (not persisted,
sliced or cast) can be read inside the statistics task itself, into a buffer that each
thread reuses from block to block. The block then never becomes a task result of its own
(no worker memory to manage, no transfer), and reading it costs no fresh allocation, which
page-faults on every use where glibc's trim threshold is low (dask's workers).
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.sizeof import sizeof

from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._memory import fan_in, read_tasks
from dask_em.engine._scratch import thread_array

# The shared value goes inside every block task while the copies add up to at most this
# many bytes a pass; beyond it, it is stored once under a key of its own. Under its own
# key it is a task that the scheduler runs on one worker before any block can start,
# and the other workers fetch it from there: a round trip each pass (measured 5-10 ms of
# a LocalCluster pass), which small parameters need not pay.
_INLINE_SHARED_BYTES = 4 * 2**20


def _nbytes(obj) -> int:
    """Bytes of the arrays in ``obj``, through tuples, lists, dicts and dataclass instances."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, tuple | list):
        return sum(_nbytes(v) for v in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if dataclasses.is_dataclass(obj) and hasattr(obj, "__dict__"):
        return sum(_nbytes(v) for v in vars(obj).values())
    return int(sizeof(obj))


@dataclass(frozen=True, eq=False)
class _Shared:
    """Opaque holder of the value every block task needs: in each task, or stored once
    under its own key that every block task refers to (see ``_INLINE_SHARED_BYTES``);
    dask leaves its contents alone (no key lookups inside tuples of parameters)."""

    value: Any


def packed(value):
    """``value`` as it travels through the tree: values with a ``packed()`` method (full
    covariance :class:`~dask_em.engine._stats.SuffStats`: lower triangles only) packed,
    through plain tuples."""
    if type(value) is tuple:
        return tuple(packed(v) for v in value)
    pack = getattr(value, "packed", None)
    return pack() if callable(pack) else value


def unpacked(value):
    """The inverse of :func:`packed`, applied to the root's value on the driver."""
    if type(value) is tuple:
        return tuple(unpacked(v) for v in value)
    unpack = getattr(value, "unpacked", None)
    return unpack() if callable(unpack) else value


def _unwrap_call(func, x, shared, row_offset, block_index, w=None):
    return packed(func(x, shared.value, row_offset, block_index, w))


# id(array) -> (weak reference to the array, reader); an entry goes with its array.
_READERS: dict = {}


def register_block_reader(x, reader) -> None:
    """Declare that the row blocks of ``x`` can be read by ``reader`` directly.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
        Rows chunked, features in one chunk, made by a data source from ``reader``.
    reader : object
        Picklable; ``reader.read_rows(start, stop, out)`` returns rows ``start:stop``
        (all columns) as an array equal to ``x[start:stop]``, written into ``out``
        (shape (stop - start, d), ``x.dtype``) when it can; it may return another array.
    """
    key = id(x)
    _READERS[key] = (weakref.ref(x, lambda _ref, key=key: _READERS.pop(key, None)), reader)


def block_reader(x):
    """The reader registered for this very array object, or None (see
    :func:`register_block_reader`; a persisted, sliced or cast copy has none)."""
    entry = _READERS.get(id(x))
    if entry is None or entry[0]() is not x or x.ndim != 2 or x.numblocks[1] != 1:
        return None
    return entry[1]


def _read_and_call(func, combine, reader, blocks, n_features, dtype, shared, w=None):
    """``func`` on each block ``(index, start, stop)`` of ``blocks`` in turn, read into
    the thread's buffer, and the ``combine`` of their (packed) values as they come;
    ``w`` holds the blocks' weights, or is None."""
    total = None
    for j, (block_index, start, stop) in enumerate(blocks):
        x = reader.read_rows(start, stop, thread_array("block", (stop - start, n_features), dtype))
        # ``func`` returns new arrays only (statistics), so the buffer is free again after it.
        value = packed(func(x, shared.value, start, block_index, None if w is None else w[j]))
        total = value if total is None else combine(total, value)
    return total


def add_values(values):
    """The sum of additive values, added into one new buffer as they come.

    A type may define ``sum_of(values)`` (a classmethod, as :class:`SuffStats` does) to
    add many of its values into one buffer; arrays are added in place into a copy of the
    first; anything else with ``+``. A combine node then holds its inputs and one
    output, never a chain of partial sums.
    """
    first = values[0]
    sum_of = getattr(type(first), "sum_of", None)
    if sum_of is not None:
        return sum_of(values)
    if isinstance(first, np.ndarray):
        out = np.array(first, dtype=np.result_type(*values))
        for v in values[1:]:
            out += v
        return out
    return sum(values[1:], first)


def add_tuples(*parts):
    """Element-wise sum of equal-length tuples of additive values (:func:`add_values`)."""
    return tuple(add_values(group) for group in zip(*parts, strict=True))


def default_split_every() -> int:
    return int(dask.config.get("split_every", None) or 16)


def block_offsets(chunks_rows) -> np.ndarray:
    """Global index of each row block's first row."""
    return np.concatenate([[0], np.cumsum(chunks_rows)[:-1]]).astype(np.int64)


def value_nbytes(chunk, x, shared, weights=None) -> int:
    """Bytes of the value ``chunk`` returns for a block of ``x``: measured on an empty
    block, whose statistics have the size of any block's (0 where ``chunk`` cannot take
    an empty block; the fan-in then stays as asked)."""
    empty = np.empty((0, x.shape[1]), dtype=x.dtype)
    w = None if weights is None else np.empty(0, dtype=weights.dtype)
    try:
        with np.errstate(all="ignore"):
            return _nbytes(packed(chunk(empty, shared, 0, 0, w)))
    except Exception:  # noqa: BLE001 - a probe only; the pass itself reports errors
        return 0


def _block_tasks(x, chunk, combine, shared, weights, reader, names, n_tasks):
    """The graph's statistics tasks (and the shared value's key, if it gets one): one a
    block, or with a ``reader`` ``n_tasks`` tasks of consecutive blocks."""
    holder = _Shared(shared)
    if _nbytes(shared) * x.numblocks[0] <= _INLINE_SHARED_BYTES:
        dsk: dict = {}
        shared_arg = holder
    else:
        dsk = {names["shared"]: holder}
        shared_arg = names["shared"]
    offsets = block_offsets(x.chunks[0])
    if reader is None:
        for i in range(x.numblocks[0]):
            task = (_unwrap_call, chunk, (x.name, i, 0), shared_arg, int(offsets[i]), i)
            if weights is not None:
                task = task + ((weights.name, i),)
            dsk[(names["stats"], i)] = task
        return dsk
    for t, group in enumerate(np.array_split(np.arange(x.numblocks[0]), n_tasks)):
        blocks = [(int(i), int(offsets[i]), int(offsets[i] + x.chunks[0][i])) for i in group]
        task = (_read_and_call, chunk, combine, reader, blocks, x.shape[1], x.dtype.str)
        task = task + (shared_arg,)
        if weights is not None:
            task = task + ([(weights.name, int(i)) for i in group],)
        dsk[(names["stats"], t)] = task
    return dsk


def _combine_tasks(keys, combine, split_every, names) -> dict:
    """Tree levels of ``combine`` over ``keys``, ``split_every`` to a node, up to the root."""
    dsk = {}
    for level in itertools.count():
        if len(keys) <= split_every:
            dsk[names["root"]] = (combine, *keys)
            return dsk
        grouped = [keys[j : j + split_every] for j in range(0, len(keys), split_every)]
        keys = []
        for j, group in enumerate(grouped):
            key = (names["combine"], level, j)
            dsk[key] = (combine, *group)
            keys.append(key)


def tree_reduce(
    x,
    chunk,
    shared,
    *,
    combine=add_tuples,
    weights=None,
    split_every=None,
    prefix="em",
    fuse_reads=False,
) -> Delayed:
    """A lazy tree reduction of ``chunk`` over the row blocks of ``x``.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
        Rows chunked, features in one chunk.
    chunk : callable
        ``chunk(block, shared, row_offset, block_index, weights_block)`` returns a small
        additive value (a tuple of them when ``combine`` is :func:`add_tuples`). Where
        ``x`` has several blocks it is called once on an empty block to learn the
        value's size.
    shared : object
        Small value every block needs (parameters): in every task, or once in the graph.
    combine : callable
        ``combine(*values)`` adds values.
    weights : dask.array.Array of shape (n,), optional
        Row weights chunked like ``x``.
    split_every : int, optional
        Most values added per tree node; default from ``dask.config`` ``split_every``
        or 16 (as ``dask.array``'s reductions). Lowered where a node of that fan-in
        would not fit a worker thread's memory (:func:`dask_em.engine._memory.fan_in`).
    prefix : str
        Task name prefix, so the dashboard shows ``{prefix}-stats`` (``{prefix}-stats-read``
        where blocks are read inside the task) and ``{prefix}-combine`` tasks.
    fuse_reads : bool
        Read each block inside its statistics task when ``x`` has a registered reader
        (:func:`register_block_reader`). Only for a ``chunk`` whose result holds no view
        of the block: the block's memory is reused by the thread's next block. Where a
        block's value is large (:func:`dask_em.engine._memory.read_tasks`), a task reads
        several consecutive blocks and adds their values as they come, so the values
        waiting in the tree do not grow with the number of blocks.

    Returns
    -------
    dask.delayed.Delayed
        Computes to the combined value, packed (:func:`packed`: full scatters as lower
        triangles); :func:`compute_pass` unpacks it.
    """
    if x.numblocks[1] != 1:
        raise ValueError("features must be in one chunk; rechunk with x.rechunk({1: -1})")
    # One block has no tree to size and one task to read it: the measuring call would
    # cost a set-up of ``chunk`` per candidate and probe for nothing.
    value = value_nbytes(chunk, x, shared, weights) if x.numblocks[0] > 1 else 0
    split_every = fan_in(value, split_every or default_split_every())
    reader = block_reader(x) if fuse_reads else None
    n_tasks = x.numblocks[0] if reader is None else read_tasks(value, x.numblocks[0])
    # A fresh token for every pass, not one derived from the inputs: two passes with equal
    # parameters (a fit at a fixed point, k-means centres that stopped moving) would
    # otherwise submit the keys whose futures the client is still releasing from the
    # pass before; the distributed scheduler then logs "Couldn't gather keys" and the
    # client reschedules them, or hands back the old result without a pass.
    token = uuid.uuid4().hex
    names = {
        "shared": f"{prefix}-params-{token}",
        "stats": f"{prefix}-stats-{'read-' if reader is not None else ''}{token}",
        "combine": f"{prefix}-combine-{token}",
        "root": f"{prefix}-result-{token}",
    }
    dsk = _block_tasks(x, chunk, combine, shared, weights, reader, names, n_tasks)
    keys = [(names["stats"], i) for i in range(n_tasks)]
    dsk.update(_combine_tasks(keys, combine, split_every, names))
    deps = [] if reader is not None else [x]
    if weights is not None:
        deps.append(weights)
    graph = HighLevelGraph.from_collections(names["root"], dsk, dependencies=deps)
    return Delayed(names["root"], graph)


class PassCounter:
    """Passes run by :func:`compute_pass` while it was active (see :func:`counting_passes`)."""

    def __init__(self):
        self.n = 0


# The counters of the enclosing ``counting_passes`` blocks of this thread or task context.
_COUNTERS: ContextVar[tuple] = ContextVar("dask_em_pass_counters", default=())


@contextmanager
def counting_passes():
    """Count the passes over the data that run inside the block.

    Yields
    ------
    PassCounter
        Its ``n`` grows by one for every :func:`compute_pass` (every full read of the
        array it is given) in this context; nested blocks all count.
    """
    counter = PassCounter()
    token = _COUNTERS.set(_COUNTERS.get() + (counter,))
    try:
        yield counter
    finally:
        _COUNTERS.reset(token)


def compute_pass(x, chunk, shared, *, weights=None, **options):
    """One pass over the row blocks of ``x``: the combined value of ``chunk``.

    Builds the graph with :func:`tree_reduce` (same parameters, ``options`` being its
    keyword arguments) and computes it with BLAS single-threaded, so the Dask threads
    do not oversubscribe the cores.

    Raises
    ------
    ValueError
        If ``weights`` is not chunked like the rows of ``x``, or the features of ``x``
        are not in one chunk.
    NonFiniteError
        From ``chunk``, for NaN, infinity or overflow in a block.
    """
    if weights is not None and tuple(weights.chunks[0]) != tuple(x.chunks[0]):
        raise ValueError(
            "row weights must be chunked like the rows of the data; got "
            f"{len(weights.chunks[0])} weight blocks for {x.numblocks[0]} row blocks"
        )
    graph = tree_reduce(x, chunk, shared, weights=weights, **options)
    with single_threaded_blas():
        (out,) = dask.compute(graph)
    for counter in _COUNTERS.get():
        counter.n += 1
    return unpacked(out)


def compute(*collections):
    """``dask.compute`` with BLAS single-threaded, for a pass built by ``dask.array``."""
    with single_threaded_blas():
        return dask.compute(*collections)
