"""Initialisation: k-means (k-means++ and Lloyd on dask arrays) and the EM starts built from it.

Imports the engine only.
"""
