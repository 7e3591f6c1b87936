"""One BLAS thread in this process while Dask threads run blocks."""

from __future__ import annotations

from contextlib import contextmanager

_BLAS_CONTROLLER = None


@contextmanager
def single_threaded_blas():
    """Run BLAS single-threaded in this process while Dask threads run blocks.

    Each Dask thread runs one block; a multi-threaded BLAS inside each would
    oversubscribe the cores (measured 1.6-2x slower). Distributed workers already start
    with one BLAS thread (distributed's ``nanny.pre-spawn-environ``).
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        # Finding the loaded BLAS libraries reads /proc/self/maps (~2 ms); do it once.
        # numpy's and scipy's BLAS are both loaded by then (dask_em imports scipy).
        _BLAS_CONTROLLER = ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        yield
