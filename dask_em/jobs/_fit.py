"""One job fit: the estimator from the model section, the progress callback and
checkpoint, and the estimator's errors turned into one-line :class:`JobError`."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from dask_em.jobs._checkpoints import _Progress, _read_checkpoint
from dask_em.jobs.config import JobError

log = logging.getLogger("dask_em.jobs.runner")


def _estimator(params: dict, kind: str = "gaussian"):
    from dask_em import BayesianGaussianMixture, GaussianMixture

    cls = BayesianGaussianMixture if kind == "bayesian" else GaussianMixture
    return cls(**params)


def _fit(
    params: dict,
    x,
    *,
    checkpoint: Path | None,
    resume: bool,
    fingerprint: str,
    hook: Callable | None,
    label: str = "",
    sample_weight=None,
    kind: str = "gaussian",
):
    gm = _estimator(params, kind)
    progress, history = None, {}
    if resume and checkpoint is not None and checkpoint.is_file():
        progress, history = _read_checkpoint(checkpoint, fingerprint)
        log.info("%sresuming after iteration %d", label, progress.iteration)
    callback = _Progress(checkpoint, fingerprint, label, history, hook)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gm.fit(x, sample_weight=sample_weight, callback=callback, resume=progress)
        except ValueError as exc:
            raise _job_error(exc, params.get("missing", "error")) from exc
    for w in caught:
        if issubclass(w.category, UserWarning):
            log.warning("%s%s", label, w.message)
    return gm, history, time.perf_counter() - t0


# Where each parameter of the estimator's fit comes from in a job, and the words the job's
# message uses for it.
_PARAMETER_KEYS = {
    "sample_weight": "data.weights",
    "weights_init": "model.weights_init",
    "means_init": "model.means_init",
    "precisions_init": "model.precisions_init",
    "mean_prior": "model.mean_prior",
    "covariance_prior": "model.covariance_prior",
    "degrees_of_freedom_prior": "model.degrees_of_freedom_prior",
}


def _job_error(exc: ValueError, missing: str) -> JobError:
    """The estimator's input checks speak in terms of its parameters/data; attach the
    config section so the one-line message says where to fix it."""
    from dask_em import NonFiniteError, ParameterValueError

    message, key = str(exc), "model"
    if isinstance(exc, ParameterValueError):
        key = _PARAMETER_KEYS.get(exc.parameter, key)
        if exc.parameter == "sample_weight":
            # the job's weights are a data setting, not a fit argument
            message = message.replace("sample_weight", "the weights")
    elif isinstance(exc, NonFiniteError) and exc.kind == "input" and missing == "error":
        message = message.rstrip().rstrip(".") + ", or set model.missing: em."
    return JobError(message, key=key)
