"""Data sources and output writers: the only module that touches files.

Sources (:func:`load_data`) return a 2-D dask array chunked by rows (``chunk_rows`` rows
per block, all columns in one block) and cast to the configured dtype. Files are read per
block inside the tasks, so a worker needs the file (local or shared filesystem / URL), the
driver never loads the data, and graphs stay small.

Writers are atomic: a temporary file in the same folder, ``fsync``, then ``os.replace``,
so a reader (or a resumed run) never sees a half-written file. :class:`RunFolder` extends
that to a whole run folder.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io as _io
import json
import os
import re
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np

from dask_em._reduce import register_block_reader
from dask_em.config import DataConfig, JobError, SyntheticSpec
from dask_em.folders import (
    MARKER,
    RunFolder,
    fsync_dir,
    is_owned,
    remove_owned,
    write_marker,
)

__all__ = [
    "RunFolder",
    "atomic_savez",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_data",
    "data_summary",
    "load_data",
    "load_npz",
    "load_weighted",
    "read_array",
    "synthetic_array",
    "synthetic_mixture",
    "write_zarr",
    "write_zarrs",
]


# ------------------------------------------------------------------------------ atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666 (not mkstemp's 0o600) so the file gets the user's umask like any
    # other file they write.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy values become plain numbers)."""
    text = json.dumps(obj, indent=2, default=_jsonable, allow_nan=True)
    return atomic_write_text(path, text + "\n")


def atomic_savez(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """``np.savez`` to ``path`` atomically; refuses object arrays so no reader must unpickle.

    Raises
    ------
    ValueError
        An array has dtype object.
    """
    clean = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.hasobject:
            raise ValueError(f"array {k!r} has dtype object; cannot be saved without pickle")
        clean[k] = a
    buf = _io.BytesIO()
    np.savez(buf, **clean)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file with ``allow_pickle=False``.

    Raises
    ------
    JobError
        Missing file, not an npz archive, or object arrays inside (never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise JobError("file not found", file=path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise JobError(
                "contains object arrays; refusing to unpickle them", file=path
            ) from None
        raise JobError(f"not a readable .npz file ({exc})", file=path) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise JobError(f"not a readable .npz file ({exc})", file=path) from None


# ---------------------------------------------------------------------------------- sources


def _is_url(path: str) -> bool:
    return "://" in path


def _require_local(path: str, what: str) -> Path:
    if _is_url(path):
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
        engine's fused reads, :func:`dask_em._reduce.register_block_reader`)."""
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


def _check_numeric_array(x, path: str):
    if x.dtype.kind not in "biuf":
        raise JobError(
            f"{path} holds dtype {x.dtype}; only numeric (int, float, bool) data can be fitted",
            key="data.path",
        )
    if x.ndim != 2:
        raise JobError(_not_2d(path, x.shape), key="data.path")
    return x


def _not_2d(path: str, shape: tuple) -> str:
    """What to say of an array that is not rows x features (never guessed: a 1-D array
    may be one feature or one row, a 3-D one images or a time series)."""
    if len(shape) == 1:
        how = "for one feature, save it as x.reshape(-1, 1); for one row, x.reshape(1, -1)"
    elif len(shape) == 0:
        how = "a single number is not a data set"
    else:
        how = "to use each row's values as features, save x.reshape(x.shape[0], -1)"
    return (
        f"{path} holds a {len(shape)}-D array of shape {tuple(shape)}; the data must be 2-D "
        f"(rows x features): {how}"
    )


def _load_npy(cfg: DataConfig):
    p = _require_local(cfg.path, "npy")
    try:
        obj = _NpyRows(p)
    except ValueError as exc:
        raise JobError(
            f"cannot read {cfg.path} as .npy without pickle ({exc})", key="data.path"
        ) from None
    if obj.dtype.hasobject:
        raise JobError(f"{cfg.path} holds object arrays", key="data.path")
    return _lazy_to_dask(obj, f"read-npy-{_file_token(p)}", cfg.chunk_rows)


def _h5_datasets(path: Path) -> list[str]:
    import h5py

    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _load_hdf5(cfg: DataConfig):
    import h5py

    p = _require_local(cfg.path, "hdf5")
    try:
        with h5py.File(p, "r") as f:
            exists = cfg.dataset in f and isinstance(f[cfg.dataset], h5py.Dataset)
    except OSError as exc:
        raise JobError(f"cannot open {cfg.path} as HDF5 ({exc})", key="data.path") from None
    if not exists:
        available = ", ".join(_h5_datasets(p)) or "none"
        raise JobError(
            f"no dataset {cfg.dataset!r} in {cfg.path} (available: {available})",
            key="data.dataset",
        )
    obj = _H5Rows(p, cfg.dataset)
    token = hashlib.sha1(f"{_file_token(p)}|{cfg.dataset}".encode()).hexdigest()[:16]
    return _lazy_to_dask(obj, f"read-hdf5-{token}", cfg.chunk_rows)


def _load_zarr(cfg: DataConfig):
    import dask.array as da
    import zarr

    if not _is_url(cfg.path) and not Path(cfg.path).expanduser().exists():
        hint = " (create it with `dask-em make-data JOB.yaml`)" if cfg.synthetic else ""
        raise JobError(f"file not found: {cfg.path}{hint}", key="data.path")
    try:
        node = zarr.open(cfg.path, mode="r")
    except Exception as exc:  # zarr raises many types for unreadable stores
        raise JobError(
            f"cannot open {cfg.path} as zarr ({type(exc).__name__}: {exc})", key="data.path"
        ) from None
    if isinstance(node, zarr.Group):
        arrays = sorted(name for name, _ in node.arrays())
        listed = ", ".join(arrays) or "none"
        if cfg.dataset is None:
            if len(arrays) != 1:
                raise JobError(
                    f"{cfg.path} is a zarr group; name the array with data.dataset "
                    f"(available: {listed})",
                    key="data.dataset",
                )
            component = arrays[0]
        elif cfg.dataset not in arrays:
            raise JobError(
                f"no array {cfg.dataset!r} in {cfg.path} (available: {listed})",
                key="data.dataset",
            )
        else:
            component = cfg.dataset
        arr = node[component]
    else:
        if cfg.dataset is not None:
            raise JobError(
                f"{cfg.path} is a single zarr array; remove data.dataset", key="data.dataset"
            )
        component, arr = None, node
    shape = arr.shape
    chunks = (cfg.chunk_rows,) + tuple(shape[1:])
    x = da.from_zarr(cfg.path, component=component, chunks=chunks)
    # Same graph, but a block that fails to read (a damaged chunk file) raises a one-line
    # JobError naming the file and rows, instead of the codec's own error.
    rows = _ZarrRows(arr, cfg.path)
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


class _ZarrRows:
    """A zarr array whose reads turn any failure into a :class:`JobError`.

    For the engine's fused reads (:meth:`read_rows`), an uncompressed 2-D array in a
    local store with every column in one chunk is read straight from its chunk files
    into the caller's buffer (:class:`_RawChunks`); anything else goes through zarr.
    """

    def __init__(self, arr, path: str):
        self.arr, self.path = arr, str(path)
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.raw = _RawChunks.of(arr)

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


class _RawChunks:
    """Row ranges of an uncompressed zarr array read from its chunk files, without
    zarr's codec pipeline: each chunk file of such an array is the chunk's rows in C
    order, full-sized also at the array's edge. On a warm page cache this is one copy
    from the kernel into the caller's buffer; zarr's own path allocates and copies the
    chunk twice more.
    """

    def __init__(self, folder, chunk_key, n_chunks, chunk_rows, row_bytes, fill):
        # ``chunk_key``: the metadata's own ``encode_chunk_key`` (a few hundred bytes
        # pickled into every task; a list of every chunk's key would grow with N).
        self.folder, self.chunk_key, self.n_chunks = folder, chunk_key, n_chunks
        self.chunk_rows, self.row_bytes, self.fill = chunk_rows, row_bytes, fill

    def _path(self, c: int) -> str:
        return os.path.join(self.folder, self.chunk_key((c, 0)))

    @classmethod
    def of(cls, arr) -> _RawChunks | None:
        """The raw reader of a zarr (v3 library) array, or None where zarr must decode."""
        import sys

        try:
            from zarr.codecs import BytesCodec
            from zarr.storage import LocalStore
        except ImportError:  # zarr 2: always through zarr
            return None
        try:
            store = arr.store_path.store
            meta = arr.metadata
            plain = not arr.compressors and not arr.filters
            serializer = arr.serializer
            if meta.zarr_format == 2:
                plain = plain and serializer is None and getattr(meta, "order", "C") == "C"
            else:
                endian = getattr(serializer, "endian", None)
                plain = plain and type(serializer) is BytesCodec
                plain = plain and (endian is None or endian.value == sys.byteorder)
        except AttributeError:  # another zarr layout than the one this was written for
            return None
        dtype = np.dtype(arr.dtype)
        if (
            not plain
            or not isinstance(store, LocalStore)
            or arr.ndim != 2
            or arr.chunks[1] != arr.shape[1]
            or not dtype.isnative
            or dtype.kind not in "biuf"
            or meta.fill_value is None
        ):
            return None
        folder = os.path.join(str(store.root), arr.store_path.path)
        n_chunks = -(-arr.shape[0] // arr.chunks[0])
        row_bytes = arr.shape[1] * dtype.itemsize
        return cls(
            folder, meta.encode_chunk_key, n_chunks, int(arr.chunks[0]), row_bytes,
            meta.fill_value,
        )  # fmt: skip

    def read(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` into ``out`` (C-contiguous, shape (stop - start, d))."""
        flat = memoryview(out).cast("B")
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        for c in range(first, last + 1):
            lo = max(start, c * self.chunk_rows)
            hi = min(stop, (c + 1) * self.chunk_rows)
            dest = flat[(lo - start) * self.row_bytes : (hi - start) * self.row_bytes]
            try:
                f = open(self._path(c), "rb", buffering=0)
            except FileNotFoundError:  # a chunk never written holds the fill value
                out[lo - start : hi - start] = self.fill
                continue
            with f:
                size = os.fstat(f.fileno()).st_size
                if size != self.chunk_rows * self.row_bytes:
                    raise ValueError(
                        f"chunk file {self.chunk_key((c, 0))} has {size} bytes, not the "
                        f"{self.chunk_rows * self.row_bytes} of an uncompressed chunk"
                    )
                f.seek((lo - c * self.chunk_rows) * self.row_bytes)
                got = f.readinto(dest)
            if got != len(dest):
                raise ValueError(f"chunk file {self.chunk_key((c, 0))} ended early")
        self._prefetch(last + 1, 2 * (last - first + 1))
        return out

    def _prefetch(self, first: int, count: int) -> None:
        """Ask the kernel to start reading the next chunk files now, so that the disk
        works while this block is computed (a worker reads and computes on one thread:
        without this a cold read waits for the disk in every task). Blocks are mostly
        taken in order, and two blocks' worth covers the next block of a second worker.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        for c in range(first, min(first + count, self.n_chunks)):
            try:
                fd = os.open(self._path(c), os.O_RDONLY)
            except OSError:  # not written (fill value) or unreadable: found when read
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:  # pragma: no cover - a file system without readahead
                pass
            finally:
                os.close(fd)


def _read_table(cfg: DataConfig):
    import dask.dataframe as dd

    path = cfg.path
    if not _is_url(path):
        matches = glob.glob(os.path.expanduser(path)) if glob.has_magic(path) else None
        if matches == [] or (matches is None and not Path(path).expanduser().exists()):
            raise JobError(f"file not found: {path}", key="data.path")
    try:
        if cfg.source == "parquet":
            return dd.read_parquet(path)
        return dd.read_csv(path)
    except (ValueError, OSError) as exc:
        # read_csv parses a sample of the first file now; pandas counts lines per block
        bad = (
            _first_bad_line(dask.compute(_csv_field_checks(path))[0])
            if cfg.source == "csv"
            else None
        )
        if bad is not None:
            raise _csv_line_error(cfg, bad) from None
        raise JobError(f"cannot read {path} as {cfg.source} ({exc})", key="data.path") from None


def _load_table(cfg: DataConfig, lengths: bool = True, weights: bool = False):
    """The features as a dask array; with ``weights``, the weights column is appended as
    the last column (read from the same frame, so the rows line up block by block)."""
    import pandas as pd

    df = full = _read_table(cfg)
    available = [str(c) for c in df.columns]
    wcol = cfg.weights
    if wcol is not None:
        if wcol not in available:
            raise JobError(
                f"no weights column {wcol!r} in {cfg.path} (available: {', '.join(available)})",
                key="data.weights",
            )
        if not pd.api.types.is_numeric_dtype(df.dtypes[wcol]) or pd.api.types.is_bool_dtype(
            df.dtypes[wcol]
        ):
            raise JobError(
                f"weights column {wcol!r} in {cfg.path} is {df.dtypes[wcol]}, not numeric",
                key="data.weights",
            )
    if cfg.columns is not None:
        missing = [c for c in cfg.columns if c not in available]
        if missing:
            raise JobError(
                f"no column(s) {', '.join(map(repr, missing))} in {cfg.path} "
                f"(available: {', '.join(available)})",
                key="data.columns",
            )
        df = df[list(cfg.columns)]
    elif wcol is not None:
        df = df[[c for c in df.columns if str(c) != wcol]]
    bad = [f"{c!r} ({t})" for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad and _no_rows(full):  # an empty table's columns are inferred as text
        raise JobError(f"{cfg.path} has no rows (only a header)", key="data.path")
    if bad:
        hint = "choose numeric columns" if cfg.columns else "list the numeric columns"
        raise JobError(
            f"non-numeric column(s) {', '.join(bad)} in {cfg.path}; {hint} with data.columns",
            key="data.columns",
        )
    # Casting the frame first turns nullable integer columns' <NA> into NaN, not objects.
    df = df.astype(cfg.dtype)
    if weights and wcol is not None:
        df = df.assign(__dask_em_weights__=full[wcol].astype("float64"))
    if not lengths:
        return df.to_dask_array()
    # Every partition is parsed here to count its rows: bad rows show up now. A CSV's
    # field counts are checked in the same computation, since pandas fills a short row
    # with NaN, which would pass for missing values.
    checks = _csv_field_checks(cfg.path) if cfg.source == "csv" else []
    try:
        sizes, found = dask.compute([dask.delayed(len)(p) for p in df.to_delayed()], checks)
    except ValueError as exc:  # pandas' ParserError, dask's dtype mismatch
        bad = _first_bad_line(dask.compute(checks)[0]) if checks else None
        raise (_csv_line_error(cfg, bad) if bad else _table_error(cfg, exc)) from None
    bad = _first_bad_line(found)
    if bad is not None:
        raise _csv_line_error(cfg, bad)
    x = df.to_dask_array(lengths=tuple(int(n) for n in sizes))
    return x.rechunk((cfg.chunk_rows, x.shape[1]))


_CSV_CHECK_BLOCK = 64 * 2**20


def _csv_field_checks(path: str) -> list:
    """Lazy per-block field counts of every file a CSV path names (see
    :func:`_csv_block_fields`); pass their values to :func:`_first_bad_line`."""
    import fsspec
    from dask import delayed

    fs, _, files = fsspec.get_fs_token_paths(path)
    out = []
    for f in sorted(files):
        size = fs.size(f)
        with fs.open(f, "rb") as fh:
            n_fields = len(next(csv.reader([fh.readline().decode("utf-8", "replace")]), []))
        for offset in range(0, max(size, 1), _CSV_CHECK_BLOCK):
            out.append(
                delayed(_csv_block_fields, pure=True)(fs, f, offset, _CSV_CHECK_BLOCK, n_fields)
            )
    return out


def _csv_block_fields(fs, path, offset, length, n_fields):
    """``(path, lines in the block, (first bad line in the block, its field count) or None)``.

    The block is the whole lines starting in ``[offset, offset + length)``, as dask's
    ``read_csv`` splits a file. Blank lines are skipped as pandas does. Without quotes a
    line's fields are its commas plus one, counted with numpy; with quotes, by the
    ``csv`` module.
    """
    from fsspec.utils import read_block

    with fs.open(path, "rb") as fh:
        data = read_block(fh, offset, length, delimiter=b"\n")
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if b'"' in data:
        reader = csv.reader(_io.StringIO(data.decode("utf-8", "replace"), newline=""))
        for row in reader:
            if row and len(row) != n_fields:
                return path, n_lines, (reader.line_num - 1, len(row))
        return path, n_lines, None
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if len(ends) < n_lines:
        ends = np.append(ends, len(buf))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    fields = np.bincount(np.searchsorted(ends, np.flatnonzero(buf == ord(","))), minlength=n_lines)
    fields = fields[:n_lines] + 1
    width = ends - starts
    cr = (width > 0) & (buf[np.maximum(ends - 1, 0)] == ord("\r"))
    blank = (width - cr) == 0
    bad = np.flatnonzero((fields != n_fields) & ~blank)
    return path, n_lines, (int(bad[0]), int(fields[bad[0]])) if len(bad) else None


def _first_bad_line(blocks) -> tuple[str, int, int] | None:
    """``(file, 1-based line number, field count)`` of the first short or long row."""
    seen: dict[str, int] = {}
    for path, n_lines, bad in blocks:
        before = seen.get(path, 0)
        if bad is not None:
            return path, before + bad[0] + 1, bad[1]
        seen[path] = before + n_lines
    return None


def _csv_line_error(cfg: DataConfig, bad: tuple[str, int, int]) -> JobError:
    path, line, found = bad
    return JobError(
        f"line {line} of {path} has {found} field(s), not as many as the header's; fix "
        "that row (an empty field, as in 1,,3, is a missing value)",
        key="data.path",
    )


def _no_rows(df) -> bool:
    """Whether a dask frame has no rows (reads until the first row; only on error paths)."""
    try:
        return len(df.head(1, npartitions=-1, compute=True)) == 0
    except Exception:
        return False


def _table_error(cfg: DataConfig, exc: ValueError) -> JobError:
    """A one-line message for a table that fails to parse once its rows are read."""
    text = str(exc)
    # dask: "Mismatched dtypes ... - a\n  ValueError(\"could not convert string ...\")"
    m = re.search(r"^- (.+)\n\s+\w+\((['\"])(.*)\2\)\s*$", text, re.M)
    if "Mismatched dtypes" in text and m:
        return JobError(
            f"column {m.group(1)!r} of {cfg.path} holds non-numeric values ({m.group(3)}); "
            "fix the file or leave the column out with data.columns",
            key="data.columns",
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return JobError(
        f"cannot parse {cfg.path} as {cfg.source} ({first}); check that every row has the "
        "same number of fields",
        key="data.path",
    )


# ------------------------------------------------------------------------------- synthetic


def synthetic_mixture(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture a synthetic spec describes: ``(weights, means, covariances)``.

    A generator spec is deterministic in ``seed``: weights from a Dirichlet(5) draw, random
    rotations with standard deviations in [0.3, 1], and means placed at least
    ``separation`` apart (in units of the largest standard deviation, i.e. 1).
    """
    if spec.means is not None:
        means = np.asarray(spec.means, dtype=float)
        k, d = means.shape
        weights = np.full(k, 1.0 / k) if spec.weights is None else np.asarray(spec.weights)
        weights = weights / weights.sum()
        covs = (
            np.stack([np.eye(d)] * k)
            if spec.covariances is None
            else np.asarray(spec.covariances, dtype=float)
        )
        return weights, means, covs
    k, d = spec.n_components, spec.n_features
    rng = np.random.default_rng([spec.seed, 0x6D6978])  # a stream apart from the blocks'
    weights = rng.dirichlet(np.full(k, 5.0))
    covs = np.empty((k, d, d))
    for i in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        s = rng.uniform(0.3, 1.0, size=d)
        covs[i] = (q * s**2) @ q.T
    # grow the box until the means fit at the requested spacing (rejection sampling)
    half = spec.separation * max(1.0, k ** (1.0 / d))
    means = np.empty((0, d))
    while len(means) < k:
        for _ in range(200 * k):
            m = rng.uniform(-half, half, size=d)
            if len(means) == 0 or np.min(np.linalg.norm(means - m, axis=1)) >= spec.separation:
                means = np.vstack([means, m])
                if len(means) == k:
                    break
        else:
            half *= 1.5
    return weights, means, covs


def _synthetic_block(weights, means, chols, seed, row_chunks, dtype, block_id=None):
    """One block of synthetic rows, seeded by ``(seed, block index)``."""
    i = block_id[0]
    n = row_chunks[i]
    rng = np.random.default_rng([seed, i])
    labels = rng.choice(len(weights), size=n, p=weights)
    z = rng.standard_normal((n, means.shape[1]))
    out = np.empty((n, means.shape[1]), dtype=np.float64)
    for k in range(len(weights)):
        sel = labels == k
        out[sel] = means[k] + z[sel] @ chols[k].T
    return out.astype(dtype, copy=False)


def synthetic_array(spec: SyntheticSpec, chunk_rows: int, dtype: str = "float64"):
    """A lazy dask array of ``spec.n_samples`` rows drawn from the spec's mixture.

    Each block is generated on the worker from ``(seed, block index)``: nothing is stored,
    and the same ``(spec, chunk_rows)`` always gives the same numbers.
    """
    import dask.array as da
    from dask.base import tokenize

    weights, means, covs = synthetic_mixture(spec)
    chols = np.linalg.cholesky(covs)
    n, d = spec.n_samples, means.shape[1]
    rows = (chunk_rows,) * (n // chunk_rows) + ((n % chunk_rows,) if n % chunk_rows else ())
    name = "synthetic-gmm-" + tokenize(weights, means, covs, spec.seed, rows, dtype)
    return da.map_blocks(
        _synthetic_block,
        weights,
        means,
        chols,
        spec.seed,
        rows,
        dtype,
        chunks=(rows, (d,)),
        dtype=np.dtype(dtype),
        name=name,
        meta=np.empty((0, 0), dtype=dtype),
    )


# -------------------------------------------------------------------------------- front door

_LOADERS = {
    "npy": _load_npy,
    "hdf5": _load_hdf5,
    "zarr": _load_zarr,
    "parquet": _load_table,
    "csv": _load_table,
}


def load_data(cfg: DataConfig):
    """The data a config describes, as a lazy 2-D dask array.

    Rows are chunked by ``cfg.chunk_rows`` with all columns in one block, and cast to
    ``cfg.dtype``. parquet/csv sources count their rows once (one read pass) to know the
    chunk sizes.

    Raises
    ------
    JobError
        Missing file, dataset or column, non-numeric data, wrong dimensionality; the key
        names the config field to fix.
    """
    if cfg.source == "synthetic":
        return synthetic_array(cfg.synthetic, cfg.chunk_rows, cfg.dtype)
    x = _LOADERS[cfg.source](cfg)
    x = _check_numeric_array(x, cfg.path)
    if x.shape[0] == 0:
        raise JobError(f"{cfg.path} has no rows", key="data.path")
    if x.shape[1] == 0:
        raise JobError(f"{cfg.path} has no columns (features)", key="data.path")
    if x.chunks[1] != (x.shape[1],) or max(x.chunks[0]) > cfg.chunk_rows:
        x = x.rechunk((cfg.chunk_rows, x.shape[1]))
    return x.astype(cfg.dtype, copy=False)


_SUFFIXES = {".zarr": "zarr", ".npy": "npy", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}


def read_array(path, *, source=None, dataset=None, chunk_rows=250_000, dtype="float64"):
    """Open a zarr, npy or HDF5 file as the lazy array a job would fit.

    Its blocks are read inside the EM statistics tasks, each into a buffer its thread
    reuses (see :func:`dask_em._reduce.register_block_reader`), as long as the array is
    passed to ``fit`` as it is: ``da.from_zarr`` works too, but reads every block into
    a task result of its own first.

    Parameters
    ----------
    path : str or Path
    source : {'zarr', 'npy', 'hdf5'}, optional
        Default from the suffix (``.zarr``, ``.npy``, ``.h5``/``.hdf5``).
    dataset : str, optional
        HDF5 dataset, or the array's name in a zarr group.
    chunk_rows : int
        Rows per block.
    dtype : {'float64', 'float32'}

    Returns
    -------
    dask.array.Array of shape (n, d)

    Raises
    ------
    JobError
        The file is missing, unreadable or not a numeric 2-D array (rows x features).
    """
    if source is None:
        source = _SUFFIXES.get(Path(str(path).rstrip("/")).suffix.lower())
        if source is None:
            raise ValueError(
                f"cannot tell the format of {path} from its suffix; pass "
                "source='zarr', 'npy' or 'hdf5'"
            )
    if source not in ("zarr", "npy", "hdf5"):
        raise ValueError(f"source must be 'zarr', 'npy' or 'hdf5', got {source!r}")
    return load_data(
        DataConfig(
            source=source, path=str(path), dataset=dataset, chunk_rows=chunk_rows, dtype=dtype
        )
    )


def _weights_file(cfg: DataConfig):
    """The weights array of an npy/zarr/hdf5 source, lazy, chunked by ``chunk_rows``."""
    import dask.array as da

    ref = cfg.weights
    if cfg.source == "hdf5":
        import h5py

        with h5py.File(Path(cfg.path).expanduser(), "r") as f:
            in_file = ref in f and isinstance(f[ref], h5py.Dataset)
        if in_file:
            obj = _H5Rows(Path(cfg.path).expanduser(), ref)
            p = Path(cfg.path).expanduser()
            token = hashlib.sha1(f"{_file_token(p)}|{ref}".encode()).hexdigest()[:16]
            return _lazy_to_dask(obj, f"read-hdf5-weights-{token}", cfg.chunk_rows)
    if not _is_url(ref) and not Path(ref).expanduser().exists():
        also = f" (nor a dataset in {cfg.path})" if cfg.source == "hdf5" else ""
        raise JobError(f"weights file not found: {ref}{also}", key="data.weights")
    if ref.endswith(".npy"):
        p = Path(ref).expanduser()
        try:
            obj = _NpyRows(p)
        except ValueError as exc:
            raise JobError(
                f"cannot read {ref} as .npy without pickle ({exc})", key="data.weights"
            ) from None
        w = _lazy_to_dask(obj, f"read-npy-weights-{_file_token(p)}", cfg.chunk_rows)
    else:
        import zarr

        try:
            node = zarr.open(ref, mode="r")
            if isinstance(node, zarr.Group):
                raise JobError(
                    f"{ref} is a zarr group; data.weights needs a single 1-D array",
                    key="data.weights",
                )
            w = da.from_zarr(ref, chunks=(cfg.chunk_rows,) + tuple(node.shape[1:]))
        except JobError:
            raise
        except Exception as exc:  # zarr raises many types for unreadable stores
            raise JobError(
                f"cannot open {ref} as .npy or zarr ({type(exc).__name__}: {exc})",
                key="data.weights",
            ) from None
    if w.dtype.kind not in "iuf":
        raise JobError(f"{ref} holds dtype {w.dtype}; weights must be numeric", key="data.weights")
    if w.ndim != 1:
        raise JobError(
            f"{ref} has shape {w.shape}; weights must be a 1-D array (one per row)",
            key="data.weights",
        )
    return w


def _check_weights_length(cfg: DataConfig, w, n_rows: int) -> None:
    if w.shape[0] != n_rows:
        raise JobError(
            f"the weights have {w.shape[0]} rows but the data has {n_rows} "
            f"({cfg.weights} vs {cfg.path})",
            key="data.weights",
        )


def load_weighted(cfg: DataConfig):
    """The data and its row weights: ``(x, w)`` with ``w`` None without ``data.weights``.

    ``w`` is a 1-D float64 dask array chunked exactly like the rows of ``x``. For
    parquet/csv the weights column is read from the same frame as the features.

    Raises
    ------
    JobError
        As :func:`load_data`; also a missing or non-numeric weights column or file, or a
        weights length other than the number of rows (key ``data.weights``).
    """
    if cfg.weights is None:
        return load_data(cfg), None
    if cfg.source in ("parquet", "csv"):
        both = _load_table(cfg, weights=True)
        d = both.shape[1] - 1
        if both.shape[0] == 0:
            raise JobError(f"{cfg.path} has no rows", key="data.path")
        if d == 0:
            raise JobError(f"{cfg.path} has no columns (features)", key="data.path")
        x = both[:, :d].astype(cfg.dtype, copy=False)
        w = both[:, d]
    else:
        x = load_data(cfg)
        w = _weights_file(cfg)
        _check_weights_length(cfg, w, x.shape[0])
        w = w.astype(np.float64, copy=False)
    return x, w.rechunk((x.chunks[0],))


def check_data(cfg: DataConfig) -> tuple:
    """Open the data source without reading the rows; return ``(n_rows or nan, n_features)``.

    Catches what :func:`load_data` would (missing file, dataset, columns, non-numeric
    data) without a pass over a table's rows.

    Raises
    ------
    JobError
    """
    if cfg.source in ("parquet", "csv"):
        x = _load_table(cfg, lengths=False)
    elif cfg.source == "synthetic":
        x = synthetic_array(cfg.synthetic, cfg.chunk_rows, cfg.dtype)
    else:
        x = _check_numeric_array(_LOADERS[cfg.source](cfg), cfg.path)
        if cfg.weights is not None:
            _check_weights_length(cfg, _weights_file(cfg), x.shape[0])
    return x.shape


def data_summary(cfg: DataConfig, x) -> dict[str, Any]:
    """Shape, dtype, chunking and a fingerprint of the data, for ``model.json``.

    The fingerprint hashes the source description, file size and modification time, the
    shape, and the values of the first and last rows; it is cheap (no full pass), so it
    tells data sets apart but does not prove two files are byte-identical.
    """
    import dask

    h = hashlib.sha256()
    desc = cfg.model_dump(mode="json")
    h.update(json.dumps(desc, sort_keys=True).encode())
    if cfg.path and not _is_url(cfg.path):
        p = Path(cfg.path).expanduser()
        # a folder (zarr store): its top-level entries; a full listing could be huge
        files = [p] if p.is_file() else sorted(p.iterdir()) if p.is_dir() else []
        if glob.has_magic(cfg.path):
            files = sorted(Path(f) for f in glob.glob(os.path.expanduser(cfg.path)))
        if cfg.weights is not None and cfg.source not in ("parquet", "csv"):
            wp = Path(cfg.weights).expanduser()
            files += [wp] if wp.is_file() else sorted(wp.iterdir()) if wp.is_dir() else []
        for f in files:
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(repr((x.shape, str(x.dtype))).encode())
    head, tail = dask.compute(x[: min(8, x.shape[0])], x[max(0, x.shape[0] - 8) :])
    h.update(np.ascontiguousarray(head).tobytes())
    h.update(np.ascontiguousarray(tail).tobytes())
    return {
        "source": cfg.source,
        "path": cfg.path,
        "columns": cfg.columns,
        "dataset": cfg.dataset,
        "weights": cfg.weights,
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "n_chunks": len(x.chunks[0]),
        "chunk_rows": cfg.chunk_rows,
        "fingerprint": "sha256:" + h.hexdigest(),
    }


def write_zarr(x, path: str | Path, *, overwrite: bool = False) -> Path:
    """Store a dask array as an uncompressed zarr array, atomically.

    Uncompressed because compressing random float64 saved ~3% and doubled read time
    (PERF_NOTES). Written into a temporary sibling folder, then renamed.

    Raises
    ------
    JobError
        ``path`` exists and ``overwrite`` is false.
    """
    write_zarrs({path: x}, overwrite=overwrite)
    return Path(path)


def write_zarrs(
    arrays: Mapping[str | Path, Any], *, overwrite: bool = False, also: tuple = ()
) -> tuple:
    """Store several dask arrays as zarr in one computation, with other lazy values.

    Arrays computed from the same data (labels, probabilities, a score) then share one
    read of it instead of one read each. Each store is written to a temporary sibling
    folder and renamed into place once everything has been computed.

    Returns
    -------
    tuple
        The computed values of ``also``.

    Raises
    ------
    JobError
        A target exists and ``overwrite`` is false.
    """
    import dask
    import dask.array as da
    import zarr

    nocompress = (
        {"compressors": None} if int(zarr.__version__.split(".")[0]) >= 3 else {"compressor": None}
    )
    plan, lazy = [], []
    try:
        for path, x in arrays.items():
            path = Path(path)
            if path.exists() or path.is_symlink():
                if not overwrite:
                    raise JobError(
                        f"{path} already exists; pass --overwrite to replace it", key="output"
                    )
                if not is_owned(path, "zarr"):
                    raise JobError(
                        f"{path} exists but was not written by dask-em (no {MARKER} marker); "
                        "it is never replaced: choose another path, or move it away yourself",
                        key="output",
                    )
            path.parent.mkdir(parents=True, exist_ok=True)
            # A fresh sibling of our own (mkdir fails rather than reuse an existing one).
            tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
            tmp.mkdir()
            write_marker(tmp, "zarr", complete=False)
            plan.append((tmp, path))
            if x.ndim == 2 and len(x.chunks[1]) != 1:
                x = x.rechunk({1: -1})
            lazy.append(da.to_zarr(x, str(tmp), mode="a", compute=False, **nocompress))
        results = dask.compute(*lazy, *also)
        for tmp, path in plan:
            write_marker(tmp, "zarr", complete=True)
            # Checked again: the target may have appeared while the arrays were computed.
            if (path.exists() or path.is_symlink()) and not remove_owned(path, "zarr"):
                raise JobError(f"{path} appeared while it was being written", key="output")
            os.replace(tmp, path)
            fsync_dir(path.parent)
    except BaseException:
        for tmp, _ in plan:
            remove_owned(tmp, "zarr")
        raise
    return tuple(results[len(lazy) :])
