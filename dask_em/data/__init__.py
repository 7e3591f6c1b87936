"""Data sources and output writers: the only code that touches files.

- :mod:`~dask_em.data.sources`: the ``data`` config (one class a source kind, a
  discriminated union on ``source``) and the front door (:func:`load_data`, ...);
- :mod:`~dask_em.data.arrays`, :mod:`~dask_em.data.tables`,
  :mod:`~dask_em.data.synthetic`: the source kinds;
- :mod:`~dask_em.data.writers`: atomic files, npz archives and zarr stores;
- :mod:`~dask_em.data.folders`: run folders and the rules that keep outputs off the
  user's files.
"""

from dask_em.data.folders import RunFolder
from dask_em.data.sources import (
    DataConfig,
    DataSource,
    check_data,
    data_summary,
    load_data,
    load_weighted,
    read_array,
)
from dask_em.data.spec import SyntheticSpec
from dask_em.data.synthetic import synthetic_array, synthetic_mixture
from dask_em.data.writers import (
    atomic_savez,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_npz,
    write_zarr,
    write_zarrs,
)

__all__ = [
    "DataConfig",
    "DataSource",
    "RunFolder",
    "SyntheticSpec",
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
