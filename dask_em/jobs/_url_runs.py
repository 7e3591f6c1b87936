"""A job whose run folder is an fsspec URL (``s3://bucket/runs/name``).

The run goes into a local scratch folder exactly as ``dask-em run`` writes one; after
each iteration its checkpoint is copied to the URL's staging prefix (so a run on another
machine can resume from it), and at the end the finished folder is published at the URL
by :class:`~dask_em.data.remote.RemoteRunFolder` (staged, copied, marker last).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from dask_em.data.folders import RunFolder
from dask_em.data.remote import RemoteRunFolder, check_url_output
from dask_em.jobs.config import JobConfig

__all__ = ["run_at_url"]

log = logging.getLogger("dask_em.jobs.runner")


def run_at_url(
    config: JobConfig,
    *,
    resume: bool,
    overwrite: bool,
    on_iteration: Callable | None,
    client=None,
    scratch: str | None = None,
):
    """:func:`~dask_em.jobs.runner.run_job` for a job whose ``output.dir`` is a URL.

    Parameters
    ----------
    config : JobConfig
    resume : bool
        Continue from the checkpoint under the URL's staging prefix.
    overwrite : bool
        Replace a run folder dask-em wrote at the URL.
    on_iteration : callable, optional
        As for ``run_job``; called after the checkpoint reached the URL.
    client : distributed.Client, optional
        As for ``run_job``.
    scratch : str, optional
        Where the local scratch folder goes (default: the system's temporary folder).

    Returns
    -------
    RunResult
        Its ``path`` is the URL.
    """
    from dask_em.jobs.runner import run_job

    inputs = [*config.data.input_files(), ("job file", config.source)]
    check_url_output(config.output.dir, key="output.dir", inputs=inputs)
    remote = RemoteRunFolder(config.output.dir, overwrite=overwrite)
    remote.prepare(resume=resume)
    name = remote.root.rpartition("/")[2]
    # The scratch folder is this run's own; TemporaryDirectory removes only it.
    with tempfile.TemporaryDirectory(prefix="dask-em-run-", dir=scratch) as tmp:
        local = RunFolder(Path(tmp) / name)
        if resume:
            local.prepare()
            remote.pull_checkpoints(local.staging)
        output = config.output.model_copy(update={"dir": str(local.path)})
        local_config = config.model_copy(update={"output": output})

        def hook(progress) -> None:
            remote.push_checkpoints(local.staging)
            if on_iteration is not None:
                on_iteration(progress)

        try:
            result = run_job(local_config, resume=resume, on_iteration=hook, client=client)
        except BaseException:
            if remote.discard():
                log.warning("Run stopped; its checkpoint is kept at %s", remote.staging_url)
            raise
        result.path = remote.commit(result.path)
    log.info("Published %s", result.path)
    return result
