"""One job fit: the estimator from the model section, the progress callback and
checkpoint, and the estimator's errors turned into one-line :class:`JobError`."""

from __future__ import annotations

import logging
import re
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
            raise _job_error(exc, params.get("missing", "error"), kind) from exc
    for w in caught:
        if issubclass(w.category, UserWarning):
            log.warning("%s%s", label, w.message)
    return gm, history, time.perf_counter() - t0


# The initial-array parameter in the estimator's messages: "The parameter 'means' ...",
# "'full precision' should be ...", "Input weights_init contains NaN."
_INIT_ARRAY_NAMES = re.compile(
    r"parameter '(?:(weights)|(means))'|'(?:full|tied|diag|spherical) (precision)s?'"
    r"|Input (weights_init|means_init|precisions_init) "
)
_INIT_ARRAY_KEYS = {
    "weights": "weights_init",
    "means": "means_init",
    "precision": "precisions_init",
    **{name: name for name in ("weights_init", "means_init", "precisions_init")},
}


# The Bayesian estimator's prior checks (scikit-learn's messages): the setting each names.
_PRIOR_NAMES = re.compile(
    r"parameter '(means)'|(covariance_prior)|'(?:full|tied|diag) (precision)'"
    r"|'(degrees_of_freedom_prior)'"
)
_PRIOR_KEYS = {
    "means": "mean_prior",
    "covariance_prior": "covariance_prior",
    "precision": "covariance_prior",
    "degrees_of_freedom_prior": "degrees_of_freedom_prior",
}


def _job_error(exc: ValueError, missing: str, kind: str = "gaussian") -> JobError:
    """The estimator's input checks speak in terms of its parameters/data; attach the
    config section so the one-line message says where to fix it."""
    from dask_em import NonFiniteError

    message, key = str(exc), "model"
    names, keys = _INIT_ARRAY_NAMES, _INIT_ARRAY_KEYS
    if kind == "bayesian":
        names, keys = _PRIOR_NAMES, _PRIOR_KEYS
    if "sample_weight" in message:
        message, key = message.replace("sample_weight", "the weights"), "data.weights"
    elif match := names.search(message):
        # scikit-learn's messages name the initial arrays and priors its own way
        # ('means', 'full precision', ...); the key says which setting of the job it is.
        key = "model." + keys[next(name for name in match.groups() if name)]
    elif isinstance(exc, NonFiniteError) and exc.kind == "input" and missing == "error":
        message = message.rstrip().rstrip(".") + ", or set model.missing: em."
    return JobError(message, key=key)
