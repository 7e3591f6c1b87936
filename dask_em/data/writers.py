"""Output writers: atomic files, npz archives and zarr stores.

Writers are atomic: a temporary file in the same folder, ``fsync``, then ``os.replace``,
so a reader (or a resumed run) never sees a half-written file.
:class:`~dask_em.data.folders.RunFolder` extends that to a whole run folder.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dask_em.data.folders import MARKER, fsync_dir, is_owned, remove_owned, write_marker
from dask_em.errors import JobError

__all__ = [
    "atomic_savez",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_npz",
    "load_npz_bytes",
    "write_zarr",
    "write_zarrs",
]


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
    return _read_npz(path, path)


def load_npz_bytes(data: bytes, *, file: str) -> dict[str, np.ndarray]:
    """:func:`load_npz` for the bytes of an ``.npz`` file (read from a URL); ``file``
    names it in messages."""
    return _read_npz(_io.BytesIO(data), file)


def _read_npz(source, path) -> dict[str, np.ndarray]:
    try:
        if any(dtype.hasobject for dtype in _npz_dtypes(source)):
            raise JobError("contains object arrays; refusing to unpickle them", file=path)
        with np.load(source, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise JobError(f"not a readable .npz file ({exc})", file=path) from None


def _npz_dtypes(source) -> list[np.dtype]:
    """The dtype of every array in an ``.npz`` archive (a path or a seekable file), read
    from the headers only; a file is rewound for the reader that follows."""
    dtypes = []
    with zipfile.ZipFile(source) as archive:
        for name in archive.namelist():
            with archive.open(name) as member:
                version = np.lib.format.read_magic(member)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"{name}: unsupported .npy format version {version}")
                dtypes.append(read_header(member)[2])
    if hasattr(source, "seek"):
        source.seek(0)
    return dtypes


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
