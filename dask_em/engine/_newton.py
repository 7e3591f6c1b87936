"""Newton's method on the EM fixed-point equation, one data pass per step.

EM's optima are the fixed points of its map ``G`` (E-step, then M-step). Near one, ``G``
is linear, ``G(x) ~ x* + J (x - x*)``, and plain EM's error shrinks by the largest
eigenvalue of the Jacobian ``J`` per pass: on overlapping mixtures several eigenvalues sit
at 0.94-0.98, hence its hundreds of passes. Newton's step on ``F(x) = G(x) - x`` removes
them all at once,

    x' = x + (I - J)^-1 (G(x) - x),

which in ``J``'s eigenvectors multiplies the EM step ``G(x) - x`` by ``1 / (1 - lambda)``
per eigenvalue. Far from an optimum that step can leave the basin, so the factors are
capped at ``c`` (eigenvalues at or above ``1 - 1/c`` get ``c``): with ``c`` near one it is
about an EM step, with ``c`` large the whole Newton step. ``c`` doubles after every
accepted step and halves after a rejected one (a trust region on the factors).

``J`` comes from the same pass: besides the point ``x``, the pass evaluates the E-step at
the ``p`` probes ``x + h_j e_j`` (forward differences in the unconstrained coordinates of
:func:`dask_em.engine._accel.to_vector`, ``h_j = sqrt(eps) max(1, |x_j|)``), whose M-steps
are ``G`` there. The probes cost ``p`` E-steps per row and pass, so ``"accelerated"``
uses this rule only where that is cheap, for at most :data:`NEWTON_MAX_PARAMS`
parameters and :data:`NEWTON_MAX_ROWS` rows, and SQUAREM (one E-step per row and pass)
beyond. Measured on 1e6 rows (K=4, d=3, means 1.5 standard deviations apart), Newton with
the Jacobian taken on 2e4-2e5 of the rows needed fewer passes than SQUAREM with tied
covariances (16-33 against 55-57) but more with full ones (124-221 against 82-114), and
more seconds in both.

Safeguards: a proposal is accepted when its mean log-likelihood is not below the last
accepted point's, or, where ``G`` contracts at both points (every eigenvalue of ``J``
inside the unit circle), when its fixed-point residual ``|G(x) - x|`` is smaller. The
second test matters at the end: with ``reg_covar > 0`` EM's fixed points are not exact
stationary points of the likelihood, and a likelihood test alone stalls within ~1e-10 of
the fixed point. A rejected proposal is retried from the accepted point with half the
cap; below a cap of one the next point is the accepted point's EM image. Every proposal
is in unconstrained coordinates, so the weights stay on the simplex and the covariances
positive definite.

Stopping means what it means for plain EM (as for SQUAREM): when an accepted proposal
changed the mean log-likelihood by less than ``tol``, the next pass evaluates its EM
image, and only such a pass can stop the fit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dask_em.engine._accel import (
    StepResult,
    _converged,
    _cov_from_vector,
    from_vector,
    to_vector,
    weights_from_logs,
)
from dask_em.engine._math import precision_cholesky
from dask_em.engine._params import PARAM_FIELDS, params_from_arrays, params_to_arrays

# Measured on the accel benchmark's breast cancer data (10 k-means starts): growing the
# cap 4x per accepted step jumped to a worse optimum (0.015 nats/row lower) from one
# start; 2x kept every start on plain EM's optimum or a higher one.
_CAP_GROWTH = 2.0
_CAP_MAX = 1e6
# "accelerated" uses Newton up to this many parameters and rows (p + 1 E-steps a row
# and pass, an eigendecomposition of p x p), SQUAREM beyond: K=5 full covariances in
# 3-D have 50 parameters; 51 E-steps of 5e4 rows take ~0.1 s on one core.
NEWTON_MAX_PARAMS = 64
NEWTON_MAX_ROWS = 50_000


def n_params(params) -> int:
    """Length of ``params`` in :func:`dask_em.engine._accel.to_vector` coordinates."""
    k, d = params.means.shape
    n_cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d}
    return k + k * d + n_cov.get(params.covariance_type, k)


def _probe_steps(x: np.ndarray, eps: float) -> np.ndarray:
    return np.sqrt(eps) * np.maximum(1.0, np.abs(x))


def newton_probes(point, eps: float) -> list:
    """The points whose EM images give ``G``'s Jacobian at ``point`` (forward differences).

    Parameters
    ----------
    point : MixtureParams
    eps : float
        Machine epsilon of the data: the differences' steps are ``sqrt(eps)`` relative.

    Returns
    -------
    list of MixtureParams, length p
        Empty when a probe is not a valid mixture (the step is then plain EM).
    """
    x = to_vector(point)
    probes = []
    for j, h in enumerate(_probe_steps(x, eps)):
        try:
            probes.append(_probe(point, x, j, h))
        except ValueError:
            return []
    return probes


def _probe(point, x: np.ndarray, j: int, h: float):
    """``from_vector(x + h e_j)``, sharing every array the coordinate leaves alone.

    A weight's coordinate moves the weights only, a mean's or a full covariance's one
    component: the rest keeps the point's own arrays (no round trip through the
    coordinates, whose ~1e-16 error the difference would divide by ``h``), and no
    precision factor is recomputed but the moved one's; the round trips were a third of
    the driver's time per pass at K=5, d=3.
    """
    k, d = point.means.shape
    shifted = x.copy()
    shifted[j] += h
    if j < k:
        weights = weights_from_logs(shifted[:k])
        if np.any(weights <= 0.0):  # as from_vector: a weight that underflowed
            raise ValueError("extrapolated parameters are not finite")
        return replace(point, weights=weights)
    if j < k + k * d:
        means = point.means.copy()
        means.flat[j - k] = shifted[j]
        return replace(point, means=means)
    if point.covariance_type != "full" or point.covariances is None:
        return from_vector(shifted, point)
    per_component = d * (d + 1) // 2
    c, offset = divmod(j - k - k * d, per_component)
    start = j - offset
    with np.errstate(over="ignore", invalid="ignore"):  # checked by the factorisation
        cov = _cov_from_vector(shifted[start : start + per_component], "full", 1, d)
    covariances = point.covariances.copy()
    covariances[c] = cov[0]
    prec_chol = point.precisions_cholesky.copy()
    prec_chol[c] = precision_cholesky(cov, "full")[0]
    return replace(point, covariances=covariances, precisions_cholesky=prec_chol)


def _jacobian(point, probe_images, eps):
    """Forward-difference Jacobian of ``G`` at ``point``, shape (p, p), from the images
    of the point and of its probes on the same rows; None when one is missing."""
    if len(probe_images) < 2 or any(p is None for p in probe_images):
        return None
    base = to_vector(probe_images[0])
    columns = [to_vector(p) - base for p in probe_images[1:]]
    x = to_vector(point)
    return np.column_stack(columns) / _probe_steps(x, eps)


def _capped_step(jacobian, residual, cap):
    """``(I - J)^-1 residual`` with every eigenvalue's factor capped at ``cap``."""
    lam, vecs = np.linalg.eig(jacobian)
    factors = np.where(lam.real < 1.0 - 1.0 / cap, 1.0 / (1.0 - lam), cap)
    return np.real(vecs @ (factors * np.linalg.solve(vecs, residual)))


def _contracts(jacobian) -> bool:
    return bool(np.all(np.abs(np.linalg.eigvals(jacobian)) < 1.0))


def _propose(state, like, rejected=False) -> StepResult:
    """The capped Newton step from the accepted point (its EM image when it fails)."""
    x, residual = state["x"], state["residual"]
    fallback = params_from_arrays(state, "image_", like.covariance_type)
    cap = float(state["cap"])
    if cap > 1.0:
        try:
            step = _capped_step(state["jacobian"], residual, cap)
            candidate = from_vector(x + step, like)
        except (ValueError, np.linalg.LinAlgError):
            pass
        else:
            state["proposed"] = np.asarray(True)
            return StepResult(candidate, float("nan"), False, state)
    # An EM step: its image is accepted whatever its likelihood (EM's own guarantee);
    # after a rejection the cap starts again from one.
    state["proposed"] = np.asarray(False)
    state["restart"] = np.asarray(rejected)
    state["cap"] = np.asarray(max(cap, 1.0))
    return StepResult(fallback, float(state["lower_bound"]), False, state)


def _accept(state, point, lower_bound, image, jacobian) -> None:
    x = to_vector(point)
    residual = to_vector(image) - x
    state.update(x=x, residual=residual, lower_bound=np.asarray(lower_bound))
    state.update(jacobian=jacobian, contracts=np.asarray(_contracts(jacobian)))
    state["residual_norm"] = np.asarray(np.linalg.norm(residual))
    state.update(params_to_arrays(image, "image_"))


def _acceptable(state, point, lower_bound, image, jacobian) -> bool:
    if lower_bound >= float(state["lower_bound"]):
        return True
    if not (bool(state["contracts"]) and _contracts(jacobian)):
        return False
    residual = np.linalg.norm(to_vector(image) - to_vector(point))
    return bool(residual < float(state["residual_norm"]))


def newton_step(
    point, lower_bound, image, parent_lower_bound, tol, state, *, probe_images=(), eps
) -> StepResult:
    """Capped Newton on ``G(x) = x`` with a likelihood / residual safeguard.

    Parameters as :func:`dask_em.engine._accel.plain_step`, plus
    probe_images : sequence of MixtureParams or None
        EM images of ``point`` then of each of its :func:`newton_probes` (None where
        an M-step failed).
    eps : float
        Machine epsilon of the data (the probes' steps).
    """
    state = dict(state)
    if _converged(lower_bound, parent_lower_bound, tol):
        return StepResult(image, lower_bound, True, state)
    jacobian = _jacobian(point, probe_images, eps)
    proposed = bool(state.get("proposed", False))
    previous = float(state["lower_bound"]) if "lower_bound" in state else -np.inf
    if proposed and (
        jacobian is None or not _acceptable(state, point, lower_bound, image, jacobian)
    ):
        state["cap"] = np.asarray(float(state["cap"]) / _CAP_GROWTH)
        return _propose(state, point, rejected=True)
    if jacobian is None:
        # No Jacobian (a probe was not a mixture): a plain EM step, nothing accepted.
        state.pop("proposed", None)
        for key in ("x", "residual", "jacobian", "lower_bound"):
            state.pop(key, None)
        for f in PARAM_FIELDS:
            state.pop("image_" + f, None)
        return StepResult(image, lower_bound, False, state)
    if "cap" not in state:
        state["cap"] = np.asarray(1.0)
    elif not bool(state.pop("restart", False)):
        state["cap"] = np.asarray(min(float(state["cap"]) * _CAP_GROWTH, _CAP_MAX))
    _accept(state, point, lower_bound, image, jacobian)
    if proposed and abs(lower_bound - previous) < tol:
        # Barely moved: evaluate the EM image next, so that a stop is plain EM's test.
        state["proposed"] = np.asarray(False)
        return StepResult(image, lower_bound, False, state)
    return _propose(state, point)
