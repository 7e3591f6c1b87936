"""``python -m dask_em``: the ``dask-em`` command line."""

from dask_em.jobs.cli import main

if __name__ == "__main__":
    main()
