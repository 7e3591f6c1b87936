"""Newton on the EM fixed-point equation (algorithm='newton', and 'accelerated' for
mixtures with few parameters)."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em.engine import _math, _newton
from dask_em.engine._accel import from_vector, to_vector
from dask_em.engine._em import em_pass, run_em, step_rule_name
from dask_em.engine._params import GAUSSIAN, MixtureParams
from dask_em.init._starts import StartRequest, make_starts

EPS = float(np.finfo(np.float64).eps)
COV_TYPES = ["full", "tied", "diag", "spherical"]


def overlapping(n=4000, k=3, d=2, seed=5, spread=2.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * spread
    x = np.concatenate([rng.normal(size=(n // k, d)) + m for m in means])
    return x[rng.permutation(len(x))]


@pytest.fixture(scope="module")
def slow_data():
    x = overlapping()
    return x, da.from_array(x, chunks=(1000, 2))


def start_of(dx, k, ct, seed=0, init="kmeans"):
    request = StartRequest(k, ct, 1, np.random.RandomState(seed))
    (starts,) = make_starts(dx, [request], init, reg_covar=1e-6, eps=EPS)
    return starts[0]


def fit(dx, start, algorithm, tol, callback=None):
    state = run_em(
        dx,
        [start],
        tol=tol,
        max_iter=3000,
        reg_covar=1e-6,
        eps=EPS,
        algorithm=algorithm,
        callback=callback,
    )
    return state.candidates[0]


def sklearn_em_map(x, params):
    """scikit-learn's EM image of ``params``: one iteration from them, in to_vector
    coordinates."""
    ct = params.covariance_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(
            len(params.weights),
            covariance_type=ct,
            tol=0.0,
            max_iter=1,
            reg_covar=1e-6,
            weights_init=params.weights,
            means_init=params.means,
            precisions_init=_math.precisions_from_cholesky(params.precisions_cholesky, ct),
        ).fit(x)
    cov = sk.covariances_
    return to_vector(MixtureParams(sk.weights_, sk.means_, cov, None, ct))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_probe_jacobian_matches_central_differences_of_sklearn(slow_data, ct):
    """The Jacobian the pass's probes give (forward differences of the engine's EM map)
    equals central differences of scikit-learn's EM map at the same point."""
    x, dx = slow_data
    point = start_of(dx, 3, ct)
    probes = _newton.newton_probes(point, EPS)
    assert len(probes) == _newton.n_params(point) == to_vector(point).size
    stats = em_pass(dx, [point, *probes])
    images = [GAUSSIAN.m_step(st, 1e-6, EPS) for st in stats]
    v = to_vector(point)
    jac = _newton._jacobian(point, images, EPS)
    ref = np.empty_like(jac)
    for j in range(v.size):
        step = np.zeros_like(v)
        step[j] = 1e-5
        plus, minus = (sklearn_em_map(x, from_vector(v + s, point)) for s in (step, -step))
        ref[:, j] = (plus - minus) / 2e-5
    np.testing.assert_allclose(jac, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_each_probe_moves_one_coordinate(slow_data, ct):
    """Probe j is the point moved by h_j along coordinate j of to_vector, and a valid
    mixture (its precision factors are those of its covariances)."""
    _, dx = slow_data
    point = start_of(dx, 3, ct)
    v = to_vector(point)
    steps = _newton._probe_steps(v, EPS)
    for j, probe in enumerate(_newton.newton_probes(point, EPS)):
        error = to_vector(probe) - v
        error[j] -= steps[j]
        # Log-weights are defined up to a constant (the weights are their softmax).
        k = len(point.weights)
        error[:k] -= error[:k].mean()
        np.testing.assert_allclose(error, 0.0, rtol=0, atol=1e-4 * steps[j])
        np.testing.assert_allclose(
            probe.precisions_cholesky,
            _math.precision_cholesky(probe.covariances, ct),
            rtol=1e-12,
        )
        assert np.isclose(probe.weights.sum(), 1.0, rtol=0, atol=1e-15)


def test_newton_needs_fewer_passes_than_squarem(slow_data):
    _, dx = slow_data
    start = start_of(dx, 3, "full")
    newton, squarem, plain = (fit(dx, start, a, tol=1e-9) for a in ("newton", "squarem", "em"))
    assert newton.converged and squarem.converged and plain.converged
    assert newton.n_iter < squarem.n_iter < plain.n_iter
    assert abs(newton.lower_bound - plain.lower_bound) < 1e-6


def test_accelerated_is_newton_for_few_parameters_and_rows_else_squarem(slow_data):
    _, dx = slow_data
    small = start_of(dx, 3, "full")  # 18 parameters
    assert step_rule_name("accelerated", small, 4000) == "newton"
    rows = _newton.NEWTON_MAX_ROWS
    assert step_rule_name("accelerated", small, rows + 1) == "squarem"
    assert step_rule_name("accelerated", small, np.nan) == "squarem"  # unknown chunks
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(400, 6))
    big = start_of(da.from_array(wide, chunks=200), 4, "full")  # 4 + 24 + 84 = 112
    assert _newton.n_params(big) == 112 > _newton.NEWTON_MAX_PARAMS
    assert step_rule_name("accelerated", big, 400) == "squarem"
    assert step_rule_name("newton", big, 400) == "newton"
    assert step_rule_name("em", small, 400) == "em"


def test_safeguard_rejects_overshoots_and_keeps_mixtures(slow_data, monkeypatch):
    """With a cap that grows a millionfold, Newton steps far from the optimum overshoot:
    a rejected proposal is retried from the accepted point with half the cap, accepted
    points never lose likelihood unless the EM map contracts at both ends and the
    residual shrinks, every point evaluated is a mixture, and the fit ends at plain EM's
    optimum."""
    _, dx = slow_data
    # From the k-means start even whole Newton steps never overshoot on these data.
    start = start_of(dx, 3, "full", seed=1, init="k-means++")
    monkeypatch.setattr(_newton, "_CAP_GROWTH", 1e6)
    seen: list = []
    final = fit(dx, start, "newton", tol=1e-10, callback=lambda p: seen.append(p.candidates[0]))
    assert final.converged
    rejected = 0
    for before, after in zip(seen, seen[1:], strict=False):
        p = after.params
        assert np.all(p.weights > 0) and abs(p.weights.sum() - 1) < 1e-12
        assert np.all(np.linalg.eigvalsh(p.covariances) > 0)
        b, a = before.step_state, after.step_state
        if not bool(b.get("proposed", False)):
            continue
        if float(a["cap"]) < float(b["cap"]):
            rejected += 1
            np.testing.assert_array_equal(a["x"], b["x"])  # retried from the same point
        elif after.lower_bounds[-1] < float(b["lower_bound"]):
            assert bool(b["contracts"]) and bool(a["contracts"])
            assert float(a["residual_norm"]) < float(b["residual_norm"])
    assert rejected >= 1
    plain = fit(dx, start, "em", tol=1e-10)
    assert abs(final.lower_bound - plain.lower_bound) < 1e-7
    np.testing.assert_allclose(
        np.sort(final.params.means, axis=0), np.sort(plain.params.means, axis=0), atol=1e-3
    )


def test_failed_probes_make_a_plain_em_step(slow_data):
    """Without a Jacobian (a probe's M-step failed) the step is the EM image, compared
    with the point's log-likelihood so that it can stop the fit."""
    _, dx = slow_data
    point = start_of(dx, 3, "diag")
    (st,) = em_pass(dx, [point])
    image = GAUSSIAN.m_step(st, 1e-6, EPS)
    probes = [image] + [None] * _newton.n_params(point)
    out = _newton.newton_step(point, -1.5, image, np.nan, 1e-3, {}, probe_images=probes, eps=EPS)
    assert out.params is image and out.parent_lower_bound == -1.5 and not out.converged


def test_stop_means_what_it_means_for_plain_em(slow_data):
    """A converged Newton fit stops after a pass at the EM image of the point before,
    which changed the mean log-likelihood by less than tol, and ends on that image's
    image: one more plain EM iteration from it changes it by less than tol too."""
    _, dx = slow_data
    start = start_of(dx, 3, "tied")
    final = fit(dx, start, "newton", tol=1e-6)
    assert final.converged
    # The last pass evaluated the EM image of the point before it.
    assert abs(final.lower_bounds[-1] - final.lower_bounds[-2]) < 1e-6
    after = run_em(dx, [final.params], tol=0.0, max_iter=2, reg_covar=1e-6, eps=EPS)
    lbs = after.candidates[0].lower_bounds
    assert abs(lbs[1] - lbs[0]) < 1e-6
