"""Data sources and output writers, as they were imported before :mod:`dask_em.data`.

The code lives in :mod:`dask_em.data`; this module keeps ``dask_em.io.read_array`` and
the other public names working.
"""

from dask_em.data import (
    RunFolder,
    atomic_savez,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_data,
    data_summary,
    load_data,
    load_npz,
    load_weighted,
    read_array,
    synthetic_array,
    synthetic_mixture,
    write_zarr,
    write_zarrs,
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
