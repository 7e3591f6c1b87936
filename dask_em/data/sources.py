"""The data sources as one config type, and the front door that reads them.

Sources (:func:`load_data`) return a 2-D dask array chunked by rows (``chunk_rows`` rows
per block, all columns in one block) and cast to the configured dtype. Files are read per
block inside the tasks, so a worker needs the file (local or shared filesystem / URL), the
driver never loads the data, and graphs stay small.

To add a source, write one subclass of :class:`~dask_em.data.base.Source` (its
``source`` tag, suffixes, checks and :meth:`~dask_em.data.base.Source.read`) and list it
in :data:`DataSource`; the job config, the suffix lookups and the CLI follow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Union, get_args

import numpy as np
from pydantic import Field, TypeAdapter

from dask_em.data.arrays import Hdf5Source, NpySource, ZarrSource
from dask_em.data.base import Source
from dask_em.data.synthetic import SyntheticSource
from dask_em.data.tables import CsvSource, ParquetSource

__all__ = [
    "SOURCES",
    "DataConfig",
    "DataSource",
    "check_data",
    "data_summary",
    "load_data",
    "load_weighted",
    "read_array",
    "source_for_suffix",
]

DataSource = Annotated[
    Union[ZarrSource, NpySource, Hdf5Source, ParquetSource, CsvSource, SyntheticSource],  # noqa: UP007
    Field(discriminator="source"),
]
"""A ``data`` section: the kind its ``source`` names."""

#: Every source kind by its ``source`` tag, in the order of :data:`DataSource`.
SOURCES: dict[str, type[Source]] = {
    get_args(cls.model_fields["source"].annotation)[0]: cls
    for cls in get_args(get_args(DataSource)[0])
}

#: The kinds :func:`read_array` opens (array files, not tables or generated rows).
ARRAY_SOURCES = ("zarr", "npy", "hdf5")

_ADAPTER: TypeAdapter = TypeAdapter(DataSource)


class _DataConfigType(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, Source)


class DataConfig(metaclass=_DataConfigType):
    """Where the rows come from, and how they are chunked and typed.

    ``DataConfig(source="npy", path=...)`` validates the keys into the class of the
    source kind (``NpySource``, ...; all subclasses of
    :class:`~dask_em.data.base.Source`, so ``isinstance(cfg, DataConfig)`` holds).
    The keys: ``source`` (``zarr``, ``npy``, ``hdf5``, ``parquet``, ``csv`` or
    ``synthetic``), ``path``, ``dataset``, ``columns``, ``chunk_rows``, ``dtype``,
    ``synthetic`` and ``weights``.

    Raises
    ------
    pydantic.ValidationError
    """

    def __new__(cls, **fields: Any) -> Source:
        return _ADAPTER.validate_python(fields)

    @staticmethod
    def model_validate(obj: Any) -> Source:
        """Validate a mapping (or a config) into the class of its source kind."""
        return _ADAPTER.validate_python(obj)


def source_for_suffix(path: str | Path, kinds: tuple[str, ...] | None = None) -> str | None:
    """The source kind a file's suffix means (among ``kinds``), or None."""
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    return next(
        (k for k, cls in SOURCES.items() if suffix in cls.suffixes and k in (kinds or SOURCES)),
        None,
    )


def suffixes(kinds: tuple[str, ...] | None = None) -> list[str]:
    """Every suffix the kinds (default: all) are told by, in their order."""
    return [s for k, cls in SOURCES.items() if k in (kinds or SOURCES) for s in cls.suffixes]


def untag_error(err: dict, at: int = 0) -> dict:
    """A pydantic error of validating :data:`DataSource` at ``loc[at]``, as the error of
    a single model with a ``source`` key: the tag is left out of the location, and a
    missing or unknown tag is an error of the ``source`` key."""
    loc, err = tuple(err["loc"]), dict(err)
    if err["type"] == "union_tag_not_found":
        err.update(loc=(*loc, "source"), type="missing")
    elif err["type"] == "union_tag_invalid":
        kinds = [repr(k) for k in SOURCES]
        tag = err.get("input", {}).get("source") if isinstance(err.get("input"), dict) else None
        err.update(
            loc=(*loc, "source"),
            type="literal_error",
            msg=f"Input should be {', '.join(kinds[:-1])} or {kinds[-1]}",
            input=tag,
        )
    elif err["type"] == "model_attributes_type" and len(loc) == at:
        msg = "Input should be a valid dictionary or instance of DataConfig"
        err.update(type="model_type", msg=msg)
    elif len(loc) > at and loc[at] in SOURCES:
        err["loc"] = loc[:at] + loc[at + 1 :]
    return err


# -------------------------------------------------------------------------------- front door


def load_data(cfg: Source):
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
    return cfg.load()


def read_array(path, *, source=None, dataset=None, chunk_rows=250_000, dtype="float64"):
    """Open a zarr, npy or HDF5 file as the lazy array a job would fit.

    Its blocks are read inside the EM statistics tasks, each into a buffer its thread
    reuses (see :func:`dask_em.engine._reduce.register_block_reader`), as long as the array is
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
        source = source_for_suffix(path, ARRAY_SOURCES)
        if source is None:
            raise ValueError(
                f"cannot tell the format of {path} from its suffix; pass "
                "source='zarr', 'npy' or 'hdf5'"
            )
    if source not in ARRAY_SOURCES:
        raise ValueError(f"source must be 'zarr', 'npy' or 'hdf5', got {source!r}")
    return load_data(
        DataConfig(
            source=source, path=str(path), dataset=dataset, chunk_rows=chunk_rows, dtype=dtype
        )
    )


def load_weighted(cfg: Source):
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
        return cfg.load(), None
    x, w = cfg.load_weighted()
    return x, w.rechunk((x.chunks[0],))


def check_data(cfg: Source) -> tuple:
    """Open the data source without reading the rows; return ``(n_rows or nan, n_features)``.

    Catches what :func:`load_data` would (missing file, dataset, columns, non-numeric
    data) without a pass over a table's rows.

    Raises
    ------
    JobError
    """
    return cfg.check()


def data_summary(cfg: Source, x) -> dict[str, Any]:
    """Shape, dtype, chunking and a fingerprint of the data, for ``model.json``.

    The fingerprint hashes the source description, file size and modification time, the
    shape, and the values of the first and last rows; it is cheap (no full pass), so it
    tells data sets apart but does not prove two files are byte-identical.
    """
    import dask

    h = hashlib.sha256()
    desc = cfg.model_dump(mode="json")
    h.update(json.dumps(desc, sort_keys=True).encode())
    for f in cfg.fingerprint_files():
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
