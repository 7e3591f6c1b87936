"""The EM engine: per-covariance math, sufficient statistics, the pass primitive and the loop.

Imports nothing from the rest of dask-em: ``init``, ``mixture`` and ``jobs`` build on it.
"""
