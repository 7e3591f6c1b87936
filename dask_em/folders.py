"""Moved to :mod:`dask_em.data.folders`; kept so that old imports keep working."""

from dask_em.data.folders import *  # noqa: F403
from dask_em.data.folders import MARKER, __all__, fsync_dir  # noqa: F401
