"""``GaussianMixture.partial_fit``: online EM one batch at a time.

The estimator keeps an :class:`dask_em.engine._online.OnlineState` (running statistics,
batches seen) between calls; this module checks each batch, initialises on the first one
and applies :func:`dask_em.engine._online.online_update`.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from sklearn.utils import check_random_state

from dask_em.engine import _missing
from dask_em.engine._blas import single_threaded_blas
from dask_em.engine._em import em_kernel, em_pass
from dask_em.engine._online import OnlineState, online_pass, online_update
from dask_em.engine._params import MixtureParams
from dask_em.engine._reduce import counting_passes
from dask_em.init import _init
from dask_em.mixture._validation import (
    check_input,
    check_weight_values,
    check_weights_like,
    to_blocks,
)


def partial_fit_batch(gm, X, sample_weight):
    """Update ``gm`` (a ``GaussianMixture``) from one batch; see its ``partial_fit``."""
    first = not hasattr(gm, "_online_state")
    fitted = hasattr(gm, "precisions_cholesky_")
    x, lazy = check_input(
        gm, X, reset=first and not fitted, fit=True, allow_nan=gm.missing == "em"
    )
    X = x if lazy else to_blocks(x)
    weights = None if sample_weight is None else check_weights_like(sample_weight, X)
    if weights is not None and isinstance(sample_weight, da.Array):
        check_weight_values(weights)
    eps = float(np.finfo(X.dtype).eps)
    kernel = em_kernel(gm.missing == "em", X.dtype, gm.compute_dtype)
    with single_threaded_blas(), counting_passes() as passes:
        if not first:
            state = gm._online_state
        elif fitted:
            # Fitted by ``fit``: go on from its parameters (as MiniBatchKMeans does).
            state = OnlineState(gm._params())
        else:
            state = OnlineState(_first_start(gm, X, weights, eps))
        (batch,) = em_pass(
            X, [state.params], weights=weights, split_every=gm.split_every, kernel=kernel
        )
        state = online_update(
            state,
            batch,
            learning_decay=gm.learning_decay,
            learning_offset=gm.learning_offset,
            reg_covar=gm.reg_covar,
            eps=eps,
        )
    _set_online(gm, state, (0 if first else gm.n_passes_) + passes.n)
    return gm


def _set_online(gm, state: OnlineState, n_passes: int) -> None:
    """``gm``'s fitted attributes from where online EM has got to."""
    gm._online_state = state
    gm._set_fitted(state.params)
    gm.converged_ = False
    gm.n_iter_ = state.n_steps
    gm.lower_bound_ = state.last_lower_bound
    gm.lower_bounds_ = [state.last_lower_bound]
    gm.n_rows_skipped_ = 0
    gm.n_passes_ = n_passes


def _first_start(gm, X, weights, eps) -> MixtureParams:
    """The first batch's start: the given arrays, else k-means++ on the batch."""
    if X.shape[0] < gm.n_components:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = "
            f"{gm.n_components}, n_samples = {X.shape[0]} in the first batch"
        )
    gm._check_parameters(X.shape[1])
    w0, m0, p0 = gm._given
    if w0 is not None and m0 is not None and p0 is not None:
        return _init.from_arrays(w0, m0, p0, gm.covariance_type)
    from dask_em.init._starts import StartRequest, make_starts

    x_init, w_init = X, weights
    if gm.missing == "em":
        x_init, w_init, _ = _missing.prepare_fit(X, weights, gm.split_every)
    (starts,) = make_starts(
        x_init,
        [
            StartRequest(
                gm.n_components, gm.covariance_type, 1, check_random_state(gm.random_state)
            )
        ],
        "k-means++",
        reg_covar=gm.reg_covar,
        eps=eps,
        weights=w_init,
        split_every=gm.split_every,
    )
    return _init.override(starts[0], w0, m0, p0)


def online_fit_starts(gm, X, starts, eps, weights, kernel) -> list:
    """``fit(algorithm='online')``: one online pass over the blocks of ``X`` in a
    ``random_state``-seeded order, from each start (all in the same reads)."""
    return online_pass(
        X,
        starts,
        rng=check_random_state(gm.random_state),
        learning_decay=gm.learning_decay,
        learning_offset=gm.learning_offset,
        reg_covar=gm.reg_covar,
        eps=eps,
        weights=weights,
        split_every=gm.split_every,
        kernel=kernel,
    )


def online_arrays(gm) -> dict:
    """What ``gm``'s ``partial_fit`` has learnt, as plain arrays (no pickles) for a
    checkpoint; :func:`restore_online` puts it back into a new estimator."""
    out = {f"online_{k}": v for k, v in gm._online_state.to_arrays().items()}
    out["online_n_features"] = np.asarray(gm.n_features_in_)
    out["online_n_passes"] = np.asarray(gm.n_passes_)
    return out


def restore_online(gm, arrays) -> None:
    """Continue ``gm`` (unfitted, the same parameters) from :func:`online_arrays`: its
    next ``partial_fit`` equals the next call of the estimator that was saved."""
    state = OnlineState.from_arrays(
        {k[len("online_") :]: v for k, v in arrays.items() if k.startswith("online_")},
        gm.covariance_type,
    )
    gm.n_features_in_ = int(arrays["online_n_features"])
    _set_online(gm, state, int(arrays["online_n_passes"]))
