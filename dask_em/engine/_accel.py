"""Step rules of the EM loop: plain EM, SQUAREM and DAAREM, one data pass per step.

:func:`dask_em.engine._em.run_em` evaluates one point per candidate in every pass (its
E-step gives the mean log-likelihood there, and the M-step of its statistics is the EM
map's image of the point). A *step rule* turns that into the next point to evaluate.

Plain EM evaluates the image next. SQUAREM (Varadhan & Roland 2008, scheme S3) goes in
cycles of three passes: ``theta0``, ``theta1 = EM(theta0)``, then the extrapolation
``theta' = theta0 - 2 a r + a^2 v`` with ``r = theta1 - theta0``,
``v = EM(theta1) - 2 theta1 + theta0`` and step length ``-a = |r| / |v|`` bounded by a
step bound that grows 2x after every accepted step that hit it. The third pass evaluates
``theta'`` and its EM image (the stabilising step) starts the next cycle. Extrapolation
runs in unconstrained coordinates (log-weights, means, covariance Cholesky factors with
their diagonal in logs), so every extrapolated point has weights on the simplex and
positive definite covariances. The safeguard: when the next cycle's first pass finds that
``EM(theta')`` fell below ``theta1``'s log-likelihood, the cycle is undone (the point
goes back to ``EM(theta1)``, whose parameters were kept) and the bound halves.

DAAREM (Henderson & Varadhan 2019, ``"daarem"``) makes one pass per iteration: from the
last accepted point ``x``, its image ``G(x)`` and the differences ``dX``, ``dF`` of the
last ``m = min(10, ceil(p / 2))`` accepted points and of their residuals ``G(x) - x``,
it evaluates ``G(x) - (dX + dF) gamma``, ``gamma`` the least-squares coefficients of the
residual on ``dF`` damped by a ridge so that their squared norm is ``delta_k`` times the
undamped one, ``delta_k = 1 / (1 + 1.2 ** (25 - s_k))`` and ``s_k`` the number of
accepted extrapolations. A proposal whose log-likelihood falls below the last accepted
point's is rejected: the next pass evaluates ``G(x)``, already known. The differences
restart every ``2 m`` accepted points and after a rejection. When an accepted
proposal changed the log-likelihood by less than ``tol``, the next pass evaluates its EM
image instead, so that a stop is plain EM's test. Measured on the accel
benchmark (breast cancer and the overlapping set, 10 seeds each) it needed more passes
than SQUAREM on every seed, so the estimators do not offer ``"daarem"``;
:func:`dask_em.engine._em.run_em` and the benchmark do. Newton's rule, which needs more
than a point and its image from each pass, is :mod:`dask_em.engine._newton`;
``"accelerated"`` is it or SQUAREM (:func:`dask_em.engine._em.step_rule_name`).

Stopping means what it means for plain EM: only a pass at a point that is the EM image of
the point evaluated just before it can stop the fit, when the change of the mean
log-likelihood between the two is below ``tol``; the fit then ends, like plain EM, with
the image of the last point and the log-likelihood of that point.

Each rule's state is a dict of plain numpy arrays, so an :class:`EMProgress` with it
saves to ``np.savez`` and a resumed fit repeats the uninterrupted one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dask_em.engine import _math
from dask_em.engine._params import (
    PARAM_FIELDS,
    MixtureParams,
    params_from_arrays,
    params_to_arrays,
)

ALGORITHMS = ("em", "accelerated")

# SQUAREM's step bound: the first extrapolations are plain EM steps (a = -1); each
# accepted step that used the whole bound multiplies it by _STEP_GROWTH (Varadhan &
# Roland's ``mstep``), each rejected one that did divides it. Their default 4 (and the
# calibration sketch's) jumped to a worse optimum, 0.015 nats/row lower, on the breast
# cancer benchmark from one of three k-means starts; 2 did not, in about as many passes.
_INITIAL_STEP_MAX = 1.0
_STEP_GROWTH = 2.0
_STEP_CAP = 1e9  # bounds the extrapolation even after many accepted steps


@dataclass(frozen=True, eq=False)
class StepResult:
    """What a step rule decides after one pass.

    Attributes
    ----------
    params : MixtureParams
        The point to evaluate in the next pass (the result, once converged).
    parent_lower_bound : float
        Mean log-likelihood of the point whose EM image ``params`` is, or NaN when
        ``params`` is not an EM image (an extrapolation): the next pass compares with it.
    converged : bool
    state : dict of ndarray
        The rule's own state for the next pass.
    """

    params: MixtureParams
    parent_lower_bound: float
    converged: bool
    state: dict


def _converged(lower_bound: float, parent_lower_bound: float, tol: float) -> bool:
    # NaN (no EM parent) compares False: an extrapolated point never stops the fit.
    return bool(abs(lower_bound - parent_lower_bound) < tol)


def plain_step(point, lower_bound, image, parent_lower_bound, tol, state) -> StepResult:
    """Plain EM: the image is the next point (scikit-learn's iterations).

    Parameters
    ----------
    point : MixtureParams
        The point the pass evaluated.
    lower_bound : float
        Its mean log-likelihood.
    image : MixtureParams
        The M-step of its statistics, ``EM(point)``.
    parent_lower_bound : float
        Mean log-likelihood of the point ``point`` is the image of (NaN: none).
    tol : float
    state : dict
        Unused (plain EM keeps none).
    """
    converged = _converged(lower_bound, parent_lower_bound, tol)
    return StepResult(image, lower_bound, converged, {})


# --------------------------------------------------------------------------------------
# Unconstrained coordinates
# --------------------------------------------------------------------------------------
def _tril_log(chol: np.ndarray) -> np.ndarray:
    """Lower triangles of Cholesky factors (..., d, d), diagonal in logs, flattened."""
    d = chol.shape[-1]
    out = chol.copy()
    idx = np.arange(d)
    out[..., idx, idx] = np.log(chol[..., idx, idx])
    rows, cols = np.tril_indices(d)
    return out[..., rows, cols].ravel()


def _from_tril_log(vec: np.ndarray, n_matrices: int | None, d: int) -> np.ndarray:
    rows, cols = np.tril_indices(d)
    shape = (d, d) if n_matrices is None else (n_matrices, d, d)
    chol = np.zeros(shape)
    chol[..., rows, cols] = vec.reshape(shape[:-2] + (rows.size,))
    idx = np.arange(d)
    chol[..., idx, idx] = np.exp(chol[..., idx, idx])
    return chol


def _cov_to_vector(cov: np.ndarray, covariance_type: str) -> np.ndarray:
    if covariance_type in ("full", "tied"):
        return _tril_log(np.linalg.cholesky(cov))
    # A variance's Cholesky factor is its square root.
    return 0.5 * np.log(cov).ravel()


def _cov_from_vector(vec: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    if covariance_type == "full":
        chol = _from_tril_log(vec, k, d)
        return chol @ chol.transpose(0, 2, 1)
    if covariance_type == "tied":
        chol = _from_tril_log(vec, None, d)
        return chol @ chol.T
    return np.exp(2.0 * vec).reshape(_math.covariance_shape(covariance_type, k, d))


def to_vector(params: MixtureParams) -> np.ndarray:
    """The parameters in unconstrained coordinates, one flat float64 vector.

    Log-weights (K), means (K * d), then the covariances' Cholesky factors with their
    diagonal in logs (lower triangles for full and tied; half log-variances for diag and
    spherical).
    """
    cov = params.covariances
    if cov is None:
        cov = _math.covariances_from_cholesky(params.precisions_cholesky, params.covariance_type)
    return np.concatenate(
        [
            np.log(params.weights),
            params.means.ravel(),
            _cov_to_vector(cov, params.covariance_type),
        ]
    )


def weights_from_logs(log_w: np.ndarray) -> np.ndarray:
    """The softmax of log-weights (K,): on the simplex whatever the vector."""
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def from_vector(vec: np.ndarray, like: MixtureParams) -> MixtureParams:
    """Parameters from :func:`to_vector` coordinates, shaped like ``like``.

    The weights are the softmax of the log-weights (on the simplex whatever the vector);
    the covariances are ``L L^T`` of factors with a positive diagonal.

    Raises
    ------
    ValueError
        When the point is not finite or a covariance is not numerically positive
        definite (an extrapolation too far).
    """
    k, d = like.means.shape
    log_w = vec[:k]
    if not np.all(np.isfinite(vec)):
        raise ValueError("extrapolated parameters are not finite")
    weights = weights_from_logs(log_w)
    means = vec[k : k + k * d].reshape(k, d).copy()
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        cov = _cov_from_vector(vec[k + k * d :], like.covariance_type, k, d)
    prec_chol = _math.precision_cholesky(cov, like.covariance_type)
    params = MixtureParams(weights, means, cov, prec_chol, like.covariance_type)
    if not params.is_finite() or np.any(weights <= 0.0):
        raise ValueError("extrapolated parameters are not finite")
    return params


# --------------------------------------------------------------------------------------
# SQUAREM
# --------------------------------------------------------------------------------------
# state["phase"]: 0 evaluates theta0 (and checks the last extrapolation), 1 evaluates
# theta1 = EM(theta0) and extrapolates, 2 evaluates the extrapolated theta'.
def _initial_squarem_state() -> dict:
    return {"phase": np.asarray(0), "step_max": np.asarray(_INITIAL_STEP_MAX)}


def squarem_step(point, lower_bound, image, parent_lower_bound, tol, state) -> StepResult:
    """SQUAREM with unconstrained coordinates, a growing step bound and a safeguard.

    Parameters as :func:`plain_step`; ``state`` is this rule's dict (empty at the start).
    """
    state = dict(state) if state else _initial_squarem_state()
    phase = int(state["phase"])
    if phase == 0 and "guard" in state:
        # The pass evaluated EM(theta'): accept the cycle, or undo it.
        guard = float(state.pop("guard"))
        at_max = bool(state.pop("at_max"))
        fallback = params_from_arrays(state, "fallback_", point.covariance_type)
        for f in PARAM_FIELDS:
            del state["fallback_" + f]
        step_max = float(state["step_max"])
        if lower_bound < guard:
            if at_max:
                state["step_max"] = np.asarray(max(1.0, step_max / _STEP_GROWTH))
            # EM(theta1) was kept: it is the image of theta1, whose bound is ``guard``.
            return StepResult(fallback, guard, False, state)
        if at_max:
            state["step_max"] = np.asarray(min(step_max * _STEP_GROWTH, _STEP_CAP))
    if _converged(lower_bound, parent_lower_bound, tol):
        return StepResult(image, lower_bound, True, state)
    if phase == 0:
        state.update(phase=np.asarray(1), theta0=to_vector(point))
        return StepResult(image, lower_bound, False, state)
    if phase == 1:
        return _extrapolate(point, lower_bound, image, state)
    state["phase"] = np.asarray(0)
    return StepResult(image, lower_bound, False, state)


def step_length(r: np.ndarray, v: np.ndarray, step_max: float) -> float:
    """SQUAREM's step S3, ``|r| / |v|``, clipped to ``[1, step_max]`` (1 is an EM step).

    Parameters
    ----------
    r, v : ndarray of shape (p,)
        First and second differences of two EM steps, ``x1 - x0`` and
        ``x2 - 2 x1 + x0``.
    step_max : float
    """
    norm_v = np.linalg.norm(v)
    alpha = np.linalg.norm(r) / norm_v if norm_v > 0 else step_max
    return float(min(max(alpha, 1.0), step_max))


def _extrapolate(theta1_params, lower_bound, image, state) -> StepResult:
    """Phase 1: from theta0, theta1 and EM(theta1), the point theta' to evaluate next."""
    theta0 = state.pop("theta0")
    theta1 = to_vector(theta1_params)
    theta2 = to_vector(image)
    r = theta1 - theta0
    v = theta2 - 2.0 * theta1 + theta0
    step_max = float(state["step_max"])
    alpha = step_length(r, v, step_max)
    state["phase"] = np.asarray(2)
    if alpha == 1.0:
        # theta' = theta2 exactly: evaluate the M-step's own parameters.
        candidate, parent = image, lower_bound
    else:
        try:
            candidate = from_vector(theta0 + 2.0 * alpha * r + alpha**2 * v, image)
        except ValueError:
            # Too far to be a mixture: this cycle is plain EM.
            candidate, parent = image, lower_bound
            alpha = -1.0  # neither at the bound nor extrapolated
        else:
            parent = float("nan")
    state.update(guard=np.asarray(lower_bound), at_max=np.asarray(alpha == step_max))
    state.update(params_to_arrays(image, "fallback_"))
    return StepResult(candidate, parent, False, state)


# --------------------------------------------------------------------------------------
# DAAREM
# --------------------------------------------------------------------------------------
# Henderson & Varadhan's defaults: the damping delta_k = 1 / (1 + ALPHA ** (KAPPA - s_k))
# starts near 0.01 (an almost plain EM step) and reaches 1/2 after KAPPA accepted
# extrapolations; the history restarts every _RESTART_ORDERS * m accepted points.
DAAREM_ALPHA = 1.2
DAAREM_KAPPA = 25.0
DAAREM_MAX_ORDER = 10
_RESTART_ORDERS = 2
# Epsilon-monotonicity on the MEAN log-likelihood: a proposal below the last accepted
# point's by more than this is rejected. The paper's 0.01 is on a total log-likelihood;
# measured on the overlapping benchmark set (k-means++ starts, 10 seeds), 1e-4 let the
# iterates drift to worse optima on 5 seeds, 0 kept all 10 on plain EM's optimum (and
# on breast cancer 1e-6 gave the same passes as 0).
DAAREM_MONOTONE_TOL = 0.0


def daarem_order(n_params: int) -> int:
    """Anderson order ``m = min(10, ceil(p / 2))`` for ``p`` parameters."""
    return int(min(DAAREM_MAX_ORDER, -(-n_params // 2)))


def _damped_ridge(d, uf, delta):
    """Ridge ``lam`` with ``|gamma(lam)|^2 = delta |gamma(0)|^2``.

    ``gamma(lam)_j = d_j uf_j / (d_j^2 + lam)`` in the singular basis of the difference
    matrix (``d``: singular values, ``uf``: the residual in the left singular vectors).
    The squared norm falls monotonically in ``lam``, so bisection in ``log(lam)`` finds
    it; 80 halvings of a bracket 1e-300..1e300 wide reach double precision.
    """
    if delta >= 1.0:
        return 0.0
    target = delta * np.sum((uf / d) ** 2)
    lo, hi = -690.0, 690.0  # log(lam) bracket

    def norm_sq(log_lam):
        return np.sum((d * uf / (d * d + np.exp(log_lam))) ** 2)

    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm_sq(mid) > target else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def _anderson_proposal(image_vec, f, dx, df, delta):
    """``G(x) - (dX + dF) gamma`` with the damped least-squares coefficients.

    Parameters
    ----------
    image_vec : ndarray of shape (p,)
        ``G(x)`` in unconstrained coordinates.
    f : ndarray of shape (p,)
        The residual ``G(x) - x``.
    dx, df : ndarray of shape (p, j)
        Differences of the last ``j + 1`` accepted points and of their residuals.
    delta : float
        Damping in (0, 1]: the squared norm of ``gamma`` against the undamped one.
    """
    u, d, vt = np.linalg.svd(df, full_matrices=False)
    keep = d > d[0] * 1e-12 if d.size and d[0] > 0 else np.zeros(d.shape, bool)
    if not keep.any():
        return image_vec
    u, d, vt = u[:, keep], d[keep], vt[keep]
    uf = u.T @ f
    lam = _damped_ridge(d, uf, delta)
    gamma = vt.T @ (d * uf / (d * d + lam))
    return image_vec - (dx + df) @ gamma


def _accept_point(state, x_vec, lower_bound, image, extrapolated) -> None:
    """Make ``x`` (just evaluated) the last accepted point: its residual, the differences
    against the previous accepted point, the damping counter and the restarts."""
    f = to_vector(image) - x_vec
    if "x" in state:
        order = int(state["order"])
        dx = np.column_stack([state["dx"], x_vec - state["x"]])[:, -order:]
        df = np.column_stack([state["df"], f - state["f"]])[:, -order:]
        state.update(dx=dx, df=df, count=np.asarray(int(state["count"]) + 1))
    if extrapolated:
        state["s"] = np.asarray(float(state["s"]) + 1.0)
    state.update(x=x_vec, f=f, lower_bound=np.asarray(lower_bound))
    state.update(params_to_arrays(image, "image_"))
    order = int(state["order"])
    if int(state["count"]) >= _RESTART_ORDERS * order:
        # Restart: drop the history; a cycle that ended lower than it began (possible
        # under epsilon-monotonicity) makes the damping heavier again.
        if lower_bound < float(state["cycle_start"]):
            s_k = max(float(state["s"]) - order, -2.0 * DAAREM_KAPPA)
            state["s"] = np.asarray(s_k)
        _restart(state)
        state["cycle_start"] = np.asarray(lower_bound)


def _restart(state) -> None:
    p = state["x"].size
    state.update(dx=np.zeros((p, 0)), df=np.zeros((p, 0)), count=np.asarray(0))


def daarem_step(point, lower_bound, image, parent_lower_bound, tol, state) -> StepResult:
    """DAAREM: damped Anderson acceleration with restarts and epsilon-monotonicity.

    Parameters as :func:`plain_step`; ``state`` is this rule's dict (empty at the start).
    """
    state = dict(state)
    if _converged(lower_bound, parent_lower_bound, tol):
        return StepResult(image, lower_bound, True, state)
    x_vec = to_vector(point)
    if not state:
        p = x_vec.size
        state.update(order=np.asarray(daarem_order(p)), s=np.asarray(0.0), count=np.asarray(0))
        state.update(cycle_start=np.asarray(lower_bound), dx=np.zeros((p, 0)), df=np.zeros((p, 0)))
    extrapolated = bool(np.isnan(parent_lower_bound))
    if extrapolated and lower_bound < float(state["lower_bound"]) - DAAREM_MONOTONE_TOL:
        # Rejected: the next point is the EM image of the last accepted point (kept),
        # and the history restarts.
        _restart(state)
        fallback = params_from_arrays(state, "image_", point.covariance_type)
        return StepResult(fallback, float(state["lower_bound"]), False, state)
    previous = float(state["lower_bound"]) if "lower_bound" in state else -np.inf
    _accept_point(state, x_vec, lower_bound, image, extrapolated)
    if state["dx"].shape[1] == 0 or (extrapolated and abs(lower_bound - previous) < tol):
        # No history yet, or an accelerated step that changed little: an EM step, so
        # the next pass can make plain EM's stopping test.
        return StepResult(image, lower_bound, False, state)
    delta = 1.0 / (1.0 + DAAREM_ALPHA ** (DAAREM_KAPPA - float(state["s"])))
    proposal = _anderson_proposal(to_vector(image), state["f"], state["dx"], state["df"], delta)
    try:
        candidate = from_vector(proposal, image)
    except ValueError:
        _restart(state)
        return StepResult(image, lower_bound, False, state)
    return StepResult(candidate, float("nan"), False, state)


STEP_RULES = {"em": plain_step, "squarem": squarem_step, "daarem": daarem_step}
