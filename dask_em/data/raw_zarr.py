"""Uncompressed zarr chunks read straight into the caller's buffer (the fused reads)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["RawChunks"]


class RawChunks:
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
    def of(cls, arr) -> RawChunks | None:
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
