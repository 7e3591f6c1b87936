"""Initial parameters for many candidate mixtures at once, sharing the passes over the data.

A request is one candidate: a number of components, a covariance type, a number of
starts and the ``RandomState`` they are drawn from. ``GaussianMixture`` asks for one
candidate; model selection asks for the whole grid, so that for example the k-means runs
of every number of components advance in the same passes, and a k-means run is shared
by all covariance types with the same number of components and seed.

Every candidate's starts depend only on its own request (never on the other requests
of the batch), so a candidate fitted within a grid starts exactly where it would start
fitted alone with the same ``random_state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dask_em.engine import _math
from dask_em.engine._params import GAUSSIAN, MixtureParams
from dask_em.engine._reduce import compute_pass
from dask_em.engine._stats import SuffStats
from dask_em.init import _init, _kmeans

# The seed range _init.random_resp draws from; every method draws its seeds the same way.
_SEED_HIGH = 2**31 - 1


@dataclass(frozen=True, eq=False)
class StartRequest:
    """The starts one candidate needs.

    Attributes
    ----------
    n_components : int
    covariance_type : str
    n_init : int
    random_state : numpy.random.RandomState
        Advanced by the draws, like scikit-learn's single ``RandomState`` for all starts.
    """

    n_components: int
    covariance_type: str
    n_init: int
    random_state: np.random.RandomState


def params_on_rows(rows, covariance_type, reg_covar) -> MixtureParams:
    """A start with one component on each given row (scikit-learn's one-hot start).

    Parameters
    ----------
    rows : ndarray of shape (K, d)
    covariance_type : str
    reg_covar : float

    Returns
    -------
    MixtureParams
        Means on the rows, covariances ``reg_covar * I`` (a one-row scatter is zero),
        equal weights; as :func:`dask_em.init._init.random_from_data`.
    """
    means = np.array(rows, dtype=np.float64)
    k, d = means.shape
    cov = _math.scaled_identity_covariances(covariance_type, k, d, reg_covar)
    prec_chol = _math.precision_cholesky(cov, covariance_type)
    return MixtureParams(np.full(k, 1.0 / k), means, cov, prec_chol, covariance_type)


def _on_rows(rows, covariance_type, reg_covar, eps, model) -> MixtureParams:
    """One component on each row, in ``model``'s parameters: the M-step of one-hot
    responsibilities on the rows (for the Gaussian model, :func:`params_on_rows`)."""
    if model is GAUSSIAN:
        return params_on_rows(rows, covariance_type, reg_covar)
    rows = np.array(rows, dtype=np.float64)
    k, d = rows.shape
    zero = SuffStats.zero(covariance_type, rows)
    stats = SuffStats(covariance_type, rows, np.ones(k), zero.s1, zero.s2, 0.0, k, float(k))
    return model.m_step(stats, reg_covar, eps)


def _seeds(request: StartRequest) -> list[int]:
    return [int(s) for s in request.random_state.randint(0, _SEED_HIGH, size=request.n_init)]


def _or_error(on_error, make, *args):
    """``make(*args)``, or the ValueError it raised when ``on_error`` is 'return'."""
    try:
        return make(*args)
    except ValueError as exc:
        if on_error == "raise":
            raise
        return exc


def _m_step_or_error(stats, reg_covar, eps, on_error, model):
    return _or_error(on_error, model.m_step, stats, reg_covar, eps)


def _random_from_data(x, r, reg_covar, eps, model):
    """One ``random_from_data`` start of request ``r`` (scikit-learn's draw)."""
    start = _init.random_from_data(
        x, r.n_components, r.covariance_type, reg_covar, eps, r.random_state
    )
    if model is not GAUSSIAN:
        start = _on_rows(start.means, r.covariance_type, reg_covar, eps, model)
    return start


def _random_chunk(x, groups, row_offset, block_index, w=None):
    out = ()
    for spec in groups:
        out = out + _init._random_chunk(x, spec, row_offset, block_index, w)
    return out


def _random_starts(x, requests, reg_covar, eps, weights, split_every, on_error, model):
    """Uniform random responsibilities for every request in one pass.

    Draws its seeds and centres its statistics exactly as
    :func:`dask_em.init._init.random_resp` does, so a single request gives its numbers.
    """
    center = _kmeans.reference_point(x)
    groups = tuple((tuple(_seeds(r)), r.n_components, center, r.covariance_type) for r in requests)
    stats = compute_pass(
        x,
        _random_chunk,
        groups,
        weights=weights,
        split_every=split_every,
        prefix="init-random",
        fuse_reads=True,  # statistics only, never a view of the block
    )
    out, i = [], 0
    for r in requests:
        out.append(
            [_m_step_or_error(s, reg_covar, eps, on_error, model) for s in stats[i : i + r.n_init]]
        )
        i += r.n_init
    return out


def _per_seed(requests, seeds, start) -> list[list]:
    """``start(request, seed)`` for every seed of every request, grouped by request."""
    return [[start(r, s) for s in ss] for r, ss in zip(requests, seeds, strict=True)]


def _kmeans_starts(x, requests, reg_covar, eps, weights, split_every, on_error, model):
    seeds = [_seeds(r) for r in requests]
    runs: dict[tuple[int, int], list[str]] = {}
    for r, ss in zip(requests, seeds, strict=True):
        for s in ss:
            cts = runs.setdefault((r.n_components, s), [])
            if r.covariance_type not in cts:
                cts.append(r.covariance_type)
    keys = list(runs)
    results = _kmeans.kmeans(
        x, [(k, s, tuple(runs[(k, s)])) for k, s in keys], weights=weights, split_every=split_every
    )
    by_key = dict(zip(keys, results, strict=True))

    def start(r, s):
        stats = by_key[(r.n_components, s)].statistics[r.covariance_type]
        return _m_step_or_error(stats, reg_covar, eps, on_error, model)

    return _per_seed(requests, seeds, start)


def _kmeanspp_starts(x, requests, reg_covar, eps, weights, split_every, on_error, model):
    seeds = [_seeds(r) for r in requests]
    keys = sorted({(r.n_components, s) for r, ss in zip(requests, seeds, strict=True) for s in ss})
    results = _kmeans.kmeans_plusplus(x, keys, weights=weights, split_every=split_every)
    rows = {key: centers for key, (centers, _) in zip(keys, results, strict=True)}

    def start(r, s):
        centers = rows[(r.n_components, s)]
        return _or_error(on_error, _on_rows, centers, r.covariance_type, reg_covar, eps, model)

    return _per_seed(requests, seeds, start)


def _random_from_data_starts(x, requests, reg_covar, eps, weights, split_every, on_error, model):
    """scikit-learn's draws, start after start; reading K rows is not a pass."""
    return [
        [
            _or_error(on_error, _random_from_data, x, r, reg_covar, eps, model)
            for _ in range(r.n_init)
        ]
        for r in requests
    ]


# One function per initialisation method, all with the same signature.
_STARTS = {
    "kmeans": _kmeans_starts,
    "k-means++": _kmeanspp_starts,
    "random": _random_starts,
    "random_from_data": _random_from_data_starts,
}


def make_starts(
    x,
    requests: Sequence[StartRequest],
    init_params: str,
    *,
    reg_covar: float,
    eps: float,
    weights=None,
    split_every=None,
    on_error: str = "raise",
    model=GAUSSIAN,
) -> list[list]:
    """The starts of every request, computed together.

    Parameters
    ----------
    x : dask.array.Array of shape (n, d)
    requests : sequence of StartRequest
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}
    reg_covar : float
    eps : float
        Machine epsilon of the input dtype (the M-step's weight guard).
    weights : dask.array.Array of shape (n,), optional
    split_every : int, optional
    on_error : {'raise', 'return'}
        What to do when a start's covariances are not positive definite: raise the
        ValueError, or return it in that start's place.
    model : GaussianEM or alike, default maximum-likelihood Gaussian
        Whose M-step turns the initial responsibilities into its parameters (see
        :func:`dask_em.engine._em.run_em`).

    Returns
    -------
    list of list
        Per request, its ``n_init`` starts (MixtureParams, or a ValueError).
    """
    if init_params not in _STARTS:
        raise ValueError(f"unknown init_params {init_params!r}")
    args = (x, requests, reg_covar, eps, weights, split_every, on_error, model)
    return _STARTS[init_params](*args)
