"""Data sources and output writers, as they were imported before :mod:`dask_em.data`.

The code lives in :mod:`dask_em.data`; this module keeps ``dask_em.io.read_array`` and
the other public names working.
"""

from dask_em.data import *  # noqa: F403
from dask_em.data import __all__  # noqa: F401
