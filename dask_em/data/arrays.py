"""Array files: npy, HDF5 and zarr, read per block inside the tasks.

A worker needs the file (local or shared filesystem; zarr also a URL); the driver never
loads the data, and the graph holds a path, not the rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from dask_em.data.base import Source, is_url, storage_error
from dask_em.data.raw_zarr import RawChunks
from dask_em.engine._reduce import register_block_reader
from dask_em.errors import JobError

__all__ = ["Hdf5Source", "NpySource", "ZarrSource"]


def _require_local(path: str, what: str) -> Path:
    if is_url(path):
        raise JobError(f"{what} files must be local paths, not URLs: {path}", key="data.path")
    p = Path(path).expanduser()
    if not p.exists():
        raise JobError(f"file not found: {path}", key="data.path")
    return p


def _file_token(path: Path) -> str:
    """Cheap identity of a file (path, size, mtime) for stable, cache-safe graph names."""
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]


class _LazyRows:
    """Array-like that opens its file per slice, so dask pickles a path, not the data.

    Subclasses set ``shape``/``dtype`` in ``__init__`` and implement ``_read``.
    """

    ndim = 2
    shape: tuple[int, ...]
    dtype: np.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._read(key))

    def _read(self, key: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_rows(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` (all columns), into ``out`` where the format allows (the
        engine's fused reads, :func:`dask_em.engine._reduce.register_block_reader`)."""
        return self[start:stop]


class _NpyRows(_LazyRows):
    def __init__(self, path: Path):
        self.path = str(path)
        m = self._open()
        self.shape, self.dtype, self.ndim = m.shape, m.dtype, m.ndim

    def _open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def _read(self, key: Any) -> np.ndarray:
        # a copy, so the block does not pin the memory map after the task ends
        return np.array(self._open()[key])

    def read_rows(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        rows = self._open()[start:stop]
        if rows.ndim != 2 or out.shape != rows.shape:
            return np.array(rows)
        np.copyto(out, rows, casting="no")
        return out


class _H5Rows(_LazyRows):
    def __init__(self, path: Path, dataset: str):
        import h5py

        self.path, self.dataset = str(path), dataset
        with h5py.File(self.path, "r") as f:
            d = f[dataset]
            self.shape, self.dtype, self.ndim = d.shape, d.dtype, d.ndim

    def _read(self, key: Any) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.dataset][key]

    def read_rows(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        import h5py

        if self.ndim != 2 or out.shape != (stop - start, self.shape[1]):
            return self[start:stop]
        with h5py.File(self.path, "r") as f:
            f[self.dataset].read_direct(out, np.s_[start:stop])
        return out


def _open_npy(p: Path, shown: str, key: str) -> _NpyRows:
    """The rows of a ``.npy`` file, never unpickled (``shown``, ``key``: for messages)."""
    try:
        return _NpyRows(p)
    except ValueError as exc:
        raise JobError(f"cannot read {shown} as .npy without pickle ({exc})", key=key) from None


def _lazy_to_dask(obj: _LazyRows, name: str, chunk_rows: int):
    import dask.array as da

    chunks = (chunk_rows,) + tuple(obj.shape[1:])
    x = da.from_array(
        obj,
        chunks=chunks,
        name=name,
        asarray=True,
        fancy=False,
        meta=np.empty((0,) * obj.ndim, dtype=obj.dtype),
    )
    register_block_reader(x, obj)
    return x


def _h5_datasets(path: Path) -> list[str]:
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


class _ZarrRows:
    """A zarr array whose reads turn any failure into a :class:`JobError`.

    For the engine's fused reads (:meth:`read_rows`), an uncompressed 2-D array in a
    local store with every column in one chunk is read straight from its chunk files
    into the caller's buffer (:class:`RawChunks`); anything else goes through zarr.
    """

    def __init__(self, arr, path: str):
        self.arr, self.path = arr, str(path)
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.raw = RawChunks.of(arr)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.arr[key])
        except Exception as exc:
            rows = key[0] if isinstance(key, tuple) else key
            where = f"rows {rows.start}-{rows.stop - 1}" if isinstance(rows, slice) else "a block"
            raise self._damaged(where, exc) from None

    def _damaged(self, where: str, exc: Exception) -> JobError:
        return JobError(
            f"cannot read {where} of {self.path} ({type(exc).__name__}: {exc}); the "
            "zarr data is damaged: write it again",
            key="data.path",
        )

    def read_rows(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        if self.raw is None or out.shape != (stop - start, self.shape[1]):
            return self[start:stop]
        try:
            return self.raw.read(start, stop, out)
        except (OSError, ValueError) as exc:
            raise self._damaged(f"rows {start}-{stop - 1}", exc) from None


class _ArraySource(Source):
    """A source whose weights, if any, are a 1-D array file (``.npy`` or zarr)."""

    def read_weights(self, also: str = ""):
        """The weights array ``weights`` names, lazy, chunked by ``chunk_rows``
        (``also``: what else was looked for, for the message of a missing file)."""
        ref = self.weights
        if not is_url(ref) and not Path(ref).expanduser().exists():
            raise JobError(f"weights file not found: {ref}{also}", key="data.weights")
        w = self._read_npy_weights(ref) if ref.endswith(".npy") else self._read_zarr_weights(ref)
        if w.dtype.kind not in "iuf":
            raise JobError(
                f"{ref} holds dtype {w.dtype}; weights must be numeric", key="data.weights"
            )
        if w.ndim != 1:
            raise JobError(
                f"{ref} has shape {w.shape}; weights must be a 1-D array (one per row)",
                key="data.weights",
            )
        return w

    def _read_npy_weights(self, ref: str):
        p = Path(ref).expanduser()
        obj = _open_npy(p, ref, "data.weights")
        return _lazy_to_dask(obj, f"read-npy-weights-{_file_token(p)}", self.chunk_rows)

    def _read_zarr_weights(self, ref: str):
        import dask.array as da
        import zarr

        so = self.storage_options if is_url(ref) else None
        try:
            node = zarr.open(ref, mode="r", storage_options=so)
            if isinstance(node, zarr.Group):
                raise JobError(
                    f"{ref} is a zarr group; data.weights needs a single 1-D array",
                    key="data.weights",
                )
            chunks = (self.chunk_rows,) + tuple(node.shape[1:])
            return da.from_zarr(ref, chunks=chunks, storage_options=so)
        except JobError:
            raise
        except Exception as exc:  # zarr raises many types for unreadable stores
            raise storage_error(exc, ref, ".npy or zarr", key="data.weights") from None


class NpySource(_ArraySource):
    """``source: npy``: a local ``.npy`` file, memory-mapped per block."""

    source: Literal["npy"]
    suffixes: ClassVar[tuple[str, ...]] = (".npy",)

    def read(self):
        p = _require_local(self.path, "npy")
        obj = _open_npy(p, self.path, "data.path")
        if obj.dtype.hasobject:
            raise JobError(f"{self.path} holds object arrays", key="data.path")
        return _lazy_to_dask(obj, f"read-npy-{_file_token(p)}", self.chunk_rows)


class Hdf5Source(_ArraySource):
    """``source: hdf5``: a dataset of a local HDF5 file; weights a dataset of the same
    file, or an array file."""

    source: Literal["hdf5"]
    suffixes: ClassVar[tuple[str, ...]] = (".h5", ".hdf5", ".hdf")
    takes: ClassVar[frozenset[str]] = frozenset({"dataset"})

    def _check_fields(self) -> None:
        super()._check_fields()
        if self.dataset is None:
            raise ValueError("source 'hdf5' needs 'dataset' (the dataset's name in the file)")

    def read(self):
        import h5py

        p = _require_local(self.path, "hdf5")
        try:
            with h5py.File(p, "r") as f:
                exists = self.dataset in f and isinstance(f[self.dataset], h5py.Dataset)
        except OSError as exc:
            raise JobError(f"cannot open {self.path} as HDF5 ({exc})", key="data.path") from None
        if not exists:
            available = ", ".join(_h5_datasets(p)) or "none"
            raise JobError(
                f"no dataset {self.dataset!r} in {self.path} (available: {available})",
                key="data.dataset",
            )
        return self._read_dataset(p, self.dataset, "read-hdf5")

    def _read_dataset(self, p: Path, dataset: str, prefix: str):
        obj = _H5Rows(p, dataset)
        token = hashlib.sha1(f"{_file_token(p)}|{dataset}".encode()).hexdigest()[:16]
        return _lazy_to_dask(obj, f"{prefix}-{token}", self.chunk_rows)

    def read_weights(self, also: str = ""):
        import h5py

        p = Path(self.path).expanduser()
        with h5py.File(p, "r") as f:
            in_file = self.weights in f and isinstance(f[self.weights], h5py.Dataset)
        if in_file:
            return self._read_dataset(p, self.weights, "read-hdf5-weights")
        return super().read_weights(also=f" (nor a dataset in {self.path})")

    def input_files(self) -> list[tuple[str, str | None]]:
        # a weights dataset lives in the data file
        if self.weights is not None and not Path(self.weights).exists():
            return [("data", self.path)]
        return super().input_files()


class ZarrSource(_ArraySource):
    """``source: zarr``: a zarr array, or one array of a zarr group (local or a URL)."""

    source: Literal["zarr"]
    suffixes: ClassVar[tuple[str, ...]] = (".zarr",)
    takes: ClassVar[frozenset[str]] = frozenset({"dataset", "synthetic", "storage_options"})

    def read(self):
        import dask.array as da
        import zarr

        if not is_url(self.path) and not Path(self.path).expanduser().exists():
            hint = " (create it with `dask-em make-data JOB.yaml`)" if self.synthetic else ""
            raise JobError(f"file not found: {self.path}{hint}", key="data.path")
        # A URL's store (and its file system, rebuilt from these options where a task
        # unpickles it) goes to the workers inside the graph: they read their blocks
        # from the object store themselves, with credentials from their own environment.
        so = self.storage_options if is_url(self.path) else None
        try:
            node = zarr.open(self.path, mode="r", storage_options=so)
            component, arr = self._component(node)
        except JobError:
            raise
        except Exception as exc:  # zarr raises many types for unreadable stores
            raise storage_error(exc, self.path, "zarr") from None
        chunks = (self.chunk_rows,) + tuple(arr.shape[1:])
        x = da.from_zarr(self.path, component=component, chunks=chunks, storage_options=so)
        # Same graph, but a block that fails to read (a damaged chunk file) raises a
        # one-line JobError naming the file and rows, instead of the codec's own error.
        rows = _ZarrRows(arr, self.path)
        x = da.from_array(
            rows,
            chunks=chunks,
            name=x.name,
            asarray=True,
            fancy=False,
            meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
        )
        register_block_reader(x, rows)
        return x

    def _component(self, node) -> tuple[str | None, Any]:
        """``(name in the group or None, the zarr array)`` that ``dataset`` picks."""
        import zarr

        if not isinstance(node, zarr.Group):
            if self.dataset is not None:
                raise JobError(
                    f"{self.path} is a single zarr array; remove data.dataset",
                    key="data.dataset",
                )
            return None, node
        arrays = sorted(name for name, _ in node.arrays())
        listed = ", ".join(arrays) or "none"
        if self.dataset is None:
            if len(arrays) != 1:
                raise JobError(
                    f"{self.path} is a zarr group; name the array with data.dataset "
                    f"(available: {listed})",
                    key="data.dataset",
                )
            return arrays[0], node[arrays[0]]
        if self.dataset not in arrays:
            raise JobError(
                f"no array {self.dataset!r} in {self.path} (available: {listed})",
                key="data.dataset",
            )
        return self.dataset, node[self.dataset]
