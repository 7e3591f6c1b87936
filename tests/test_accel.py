"""Fewer passes to the same optimum (algorithm='accelerated', 'online') and partial_fit."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils._param_validation import InvalidParameterError

from dask_em import GaussianMixture
from dask_em.engine import _accel, _math
from dask_em.engine._accel import from_vector, to_vector
from dask_em.engine._em import EMProgress, run_em
from dask_em.engine._online import shift_reference
from dask_em.engine._stats import responsibility_statistics
from dask_em.init._starts import StartRequest, make_starts

COV_TYPES = ["full", "tied", "diag", "spherical"]
EPS = float(np.finfo(np.float64).eps)


def overlapping(n=3000, k=3, d=2, seed=0, spread=1.5):
    """A seeded mixture whose means are about ``spread`` standard deviations apart:
    plain EM converges slowly (linearly, with a rate near one)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * spread
    x = np.concatenate([rng.normal(size=(n // k, d)) + m for m in means])
    return x[rng.permutation(len(x))]


def start_of(x, k, ct, seed=0):
    (starts,) = make_starts(
        x, [StartRequest(k, ct, 1, np.random.RandomState(seed))], "kmeans", reg_covar=1e-6, eps=EPS
    )
    return starts[0]


def fit(x, start, algorithm, tol, max_iter=5000, **kw):
    state = run_em(
        x, [start], tol=tol, max_iter=max_iter, reg_covar=1e-6, eps=EPS, algorithm=algorithm, **kw
    )
    return state.candidates[0]


def sorted_means(p):
    return p.means[np.lexsort(p.means.T[::-1])]


@pytest.fixture(scope="module")
def slow_data():
    # Plain EM needs ~100 passes at tol=1e-9 from its k-means start (measured).
    x = overlapping(n=4000, spread=2.0, seed=5)
    return x, da.from_array(x, chunks=(2000, 2))


@pytest.mark.parametrize(
    "ct, rule",
    [(ct, "accelerated") for ct in COV_TYPES]
    + [(ct, rule) for ct in ("full", "spherical") for rule in ("squarem", "daarem")],
)
def test_accelerated_reaches_plain_ems_optimum(slow_data, ct, rule):
    """The result is a fixed point of scikit-learn's EM (one of its iterations from
    there moves nothing), and the optimum plain EM approaches from the same start, in
    fewer passes."""
    x, dx = slow_data
    start = start_of(dx, 3, ct)
    acc = fit(dx, start, rule, tol=1e-9)
    plain = fit(dx, start, "em", tol=1e-9)
    assert acc.converged and plain.converged
    assert len(acc.lower_bounds) < len(plain.lower_bounds)
    assert -1e-8 < acc.lower_bound - plain.lower_bound < 1e-5
    p = acc.params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(
            3,
            covariance_type=ct,
            tol=0.0,
            max_iter=1,
            weights_init=p.weights,
            means_init=p.means,
            precisions_init=_math.precisions_from_cholesky(p.precisions_cholesky, ct),
        ).fit(x)
    assert abs(sk.lower_bound_ - acc.lower_bound) < 1e-9
    # The slowest direction still moves a little per step: by ~1e-5 at tol=1e-9.
    np.testing.assert_allclose(sk.means_, p.means, atol=1e-4)
    np.testing.assert_allclose(sk.covariances_, p.covariances, atol=1e-4)
    np.testing.assert_allclose(sorted_means(p), sorted_means(plain.params), atol=1e-3)


@pytest.mark.parametrize("rule", ["accelerated", "squarem", "daarem"])
def test_accelerated_needs_fewer_passes_than_plain_em(slow_data, rule):
    _, dx = slow_data
    start = start_of(dx, 3, "full")
    plain = fit(dx, start, "em", tol=1e-9)
    acc = fit(dx, start, rule, tol=1e-6)
    tight = fit(dx, start, rule, tol=1e-9)
    assert plain.converged and acc.converged and tight.converged
    assert plain.n_iter >= 60  # slow data, or the comparison says nothing
    assert tight.n_iter <= plain.n_iter / 2
    # Stopping means the same: one more plain EM iteration from the result changes the
    # mean log-likelihood by less than tol.
    after = run_em(dx, [acc.params], tol=0.0, max_iter=2, reg_covar=1e-6, eps=EPS)
    lbs = after.candidates[0].lower_bounds
    assert abs(lbs[1] - lbs[0]) < 1e-6
    assert lbs[0] >= plain.lower_bound - 1e-4


def _watch(seen):
    def callback(progress):
        seen.append(progress.candidates[0])

    return callback


def test_safeguard_keeps_accepted_points_monotone(slow_data, monkeypatch):
    """With a step bound that grows a millionfold, extrapolations overshoot: the
    safeguard must undo them, and every accepted cycle start is at least as good as the
    one before; every point evaluated is a mixture (simplex weights, PD covariances)."""
    _, dx = slow_data
    start = start_of(dx, 3, "full")
    monkeypatch.setattr(_accel, "_STEP_GROWTH", 1e6)
    seen: list = []
    final = fit(dx, start, "squarem", tol=1e-9, callback=_watch(seen))
    assert final.converged
    accepted, rejected = [], 0
    before = {}
    for c in seen:
        if "guard" in before and c.lower_bounds[-1] < float(before["guard"]):
            rejected += 1
        if int(c.step_state.get("phase", 0)) == 1:
            accepted.append(c.lower_bounds[-1])  # the pass evaluated an accepted theta0
        p = c.params
        assert np.all(p.weights > 0) and abs(p.weights.sum() - 1) < 1e-12
        assert np.all(np.linalg.eigvalsh(p.covariances) > 0)
        before = c.step_state
    assert rejected >= 1
    assert np.all(np.diff(accepted) >= -1e-12)
    reference = fit(dx, start, "em", tol=1e-9)
    assert final.lower_bound >= reference.lower_bound - 1e-6


def test_daarem_rejects_points_below_the_last_accepted_one(slow_data, monkeypatch):
    """Undamped Anderson steps stretched 5x overshoot: each rejected proposal is
    followed by the EM image of the last accepted point (compared with that point's
    log-likelihood, so it may stop the fit), accepted points never decrease (epsilon 0),
    and the fit still ends at plain EM's optimum."""
    _, dx = slow_data
    start = start_of(dx, 3, "full")
    monkeypatch.setattr(_accel, "DAAREM_KAPPA", -200.0)
    proposal = _accel._anderson_proposal

    def stretched(image_vec, *args):
        return image_vec + 5.0 * (proposal(image_vec, *args) - image_vec)

    monkeypatch.setattr(_accel, "_anderson_proposal", stretched)
    seen: list = []
    final = fit(dx, start, "daarem", tol=1e-9, callback=_watch(seen))
    assert final.converged
    rejected, accepted = 0, []
    for before, after in zip(seen, seen[1:], strict=False):
        if not np.isnan(before.parent_lower_bound):
            accepted.append(after.lower_bounds[-1])  # an EM image: always accepted
            continue
        last = float(before.step_state["lower_bound"])
        if after.lower_bounds[-1] < last:
            rejected += 1
            assert after.parent_lower_bound == last
            np.testing.assert_array_equal(after.params.means, before.step_state["image_means"])
        else:
            accepted.append(after.lower_bounds[-1])
        p = after.params
        assert np.all(p.weights > 0) and abs(p.weights.sum() - 1) < 1e-12
        assert np.all(np.linalg.eigvalsh(p.covariances) > 0)
    assert rejected >= 1
    assert np.all(np.diff(accepted) >= -1e-12)
    reference = fit(dx, start, "em", tol=1e-9)
    assert abs(final.lower_bound - reference.lower_bound) < 1e-6


def test_anderson_step_solves_an_affine_fixed_point():
    """Undamped, with as many differences as dimensions, Anderson acceleration of
    ``G(x) = A x + b`` lands on the fixed point (a GMRES equivalence); damping scales
    the coefficients' squared norm by exactly ``delta``."""
    rng = np.random.default_rng(0)
    p = 6
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    a = q @ np.diag(np.linspace(0.5, 0.99, p)) @ q.T
    b = rng.normal(size=p)
    fixed = np.linalg.solve(np.eye(p) - a, b)
    xs = [np.zeros(p), b]
    for _ in range(p):
        res = [a @ x + b - x for x in xs]
        dx = np.column_stack(np.diff(xs, axis=0))
        df = np.column_stack(np.diff(res, axis=0))
        xs.append(_accel._anderson_proposal(a @ xs[-1] + b, res[-1], dx, df, 1.0))
    np.testing.assert_allclose(xs[-1], fixed, rtol=0, atol=1e-8)
    d, uf = np.array([3.0, 1.0, 0.1]), np.array([1.0, -2.0, 0.5])
    lam = _accel._damped_ridge(d, uf, 0.3)
    norm = [np.sum((d * uf / (d * d + v)) ** 2) for v in (lam, 0.0)]
    assert lam > 0 and abs(norm[0] / norm[1] - 0.3) < 1e-10


@pytest.mark.parametrize("ct", COV_TYPES)
def test_unconstrained_coordinates_give_mixtures(ct):
    rng = np.random.default_rng(1)
    x = overlapping(n=600, seed=1)
    like = start_of(da.from_array(x, chunks=300), 3, ct)
    v0 = to_vector(like)
    np.testing.assert_allclose(to_vector(from_vector(v0, like)), v0, atol=1e-10)
    for _ in range(20):
        p = from_vector(v0 + rng.normal(scale=3.0, size=v0.shape), like)
        assert np.all(p.weights > 0) and abs(p.weights.sum() - 1) < 1e-12
        cov = (
            p.covariances.reshape((-1,) + p.covariances.shape[-2:])
            if ct in ("full", "tied")
            else p.covariances
        )
        if ct in ("full", "tied"):
            assert np.all(np.linalg.eigvalsh(cov) > 0)
        else:
            assert np.all(cov > 0)


@pytest.mark.parametrize("rule", ["accelerated", "squarem", "daarem"])
def test_resume_repeats_the_uninterrupted_run(slow_data, tmp_path, rule):
    _, dx = slow_data
    start = start_of(dx, 3, "diag")
    whole = fit(dx, start, rule, tol=1e-8)
    saved = {}

    class Stop(Exception):
        pass

    def stop_at_7(progress):
        if progress.iteration == 7:
            np.savez(tmp_path / "state.npz", **progress.to_arrays())
            raise Stop

    with pytest.raises(Stop):
        fit(dx, start, rule, tol=1e-8, callback=stop_at_7)
    with np.load(tmp_path / "state.npz") as f:
        saved = EMProgress.from_arrays(dict(f))
    assert saved.candidates[0].step_state  # the rule's state was saved
    resumed = fit(dx, None, rule, tol=1e-8, resume=saved)
    assert resumed.n_iter == whole.n_iter
    np.testing.assert_allclose(resumed.lower_bounds, whole.lower_bounds, rtol=0, atol=1e-12)
    np.testing.assert_allclose(resumed.params.means, whole.params.means, rtol=0, atol=1e-12)


def test_estimator_counts_passes_and_converges_for_every_algorithm(slow_data):
    x, _ = slow_data
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(x))
    fits = {
        alg: GaussianMixture(3, tol=1e-7, max_iter=3000, random_state=0, algorithm=alg).fit(
            x, sample_weight=w
        )
        for alg in ("em", "accelerated", "online")
    }
    for alg, gm in fits.items():
        assert gm.converged_, alg
        assert gm.n_passes_ > gm.n_iter_ == len(gm.lower_bounds_)  # k-means passes too
        assert abs(gm.lower_bound_ - fits["em"].lower_bound_) < 1e-4
    assert fits["accelerated"].n_iter_ < fits["em"].n_iter_
    # A start given entirely needs no pass; missing='em' counts its counting pass.
    given = fits["em"]
    kw = dict(
        weights_init=given.weights_,
        means_init=given.means_,
        precisions_init=given.precisions_,
        algorithm="accelerated",
    )
    gm = GaussianMixture(3, **kw).fit(x)
    assert gm.n_passes_ == gm.n_iter_
    gm = GaussianMixture(3, missing="em", **kw).fit(x)
    assert gm.n_passes_ == gm.n_iter_ + 1


def test_accelerated_in_float32_matches_float64(slow_data):
    x, _ = slow_data
    a = GaussianMixture(3, tol=1e-8, random_state=0, max_iter=2000, algorithm="accelerated")
    b = GaussianMixture(3, tol=1e-8, random_state=0, max_iter=2000, algorithm="accelerated")
    a.fit(x.astype(np.float32))
    b.fit(x)
    assert a.converged_ and abs(a.lower_bound_ - b.lower_bound_) < 1e-5


def test_learning_parameters_are_checked():
    x = overlapping(n=300)
    with pytest.raises(InvalidParameterError, match="learning_decay"):
        GaussianMixture(2, learning_decay=0.5).partial_fit(x)
    with pytest.raises(InvalidParameterError, match="algorithm"):
        GaussianMixture(2, algorithm="squarem").fit(x)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_shift_reference_equals_statistics_about_the_new_point(ct):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3)) + 5.0
    resp = rng.dirichlet(np.ones(4), size=200)
    a = responsibility_statistics(x, resp, np.full(3, 4.0), ct)
    b = responsibility_statistics(x, resp, np.array([5.5, 4.5, 6.0]), ct)
    moved = shift_reference(a, b.reference)
    for f in ("nk", "s1", "s2"):
        np.testing.assert_allclose(getattr(moved, f), getattr(b, f), rtol=1e-10, atol=1e-9)


def test_partial_fit_is_deterministic_and_close_to_batch_em():
    x = overlapping(n=40000, k=3, spread=2.0, seed=4)
    batches = np.array_split(x, 20)

    def stream():
        gm = GaussianMixture(3, random_state=0)
        for b in batches:
            gm.partial_fit(b)
        return gm

    a, b = stream(), stream()
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    assert a.n_iter_ == 20 and a.n_passes_ >= 20
    # Only the running statistics are kept: nothing grows with the batches.
    assert a._online_state.stats.nk.shape == (3,) and len(a.lower_bounds_) == 1
    batch = GaussianMixture(3, tol=1e-8, max_iter=2000, random_state=0).fit(x)
    assert batch.score(x) - a.score(x) < 0.01
    # dask batches give the same numbers as numpy ones
    c = GaussianMixture(3, random_state=0)
    for bt in batches:
        c.partial_fit(da.from_array(bt, chunks=1000))
    np.testing.assert_allclose(c.means_, a.means_, rtol=1e-10, atol=1e-10)


def test_model_selection_grid_and_missing_values_accelerated(slow_data):
    """A grid shares its passes under 'accelerated' too and ends at plain EM's optima;
    missing values go through the same step rule."""
    from dask_em import select_model

    x, _ = slow_data
    kw = dict(n_components=[2, 3], covariance_types=["full", "diag"], random_state=0, tol=1e-8)
    kw["max_iter"] = 2000
    plain = select_model(x, **kw)
    acc = select_model(x, algorithm="accelerated", **kw)
    for a, p in zip(acc.models, plain.models, strict=True):
        assert a.converged_ and abs(a.lower_bound_ - p.lower_bound_) < 1e-5
        assert a.n_passes_ == acc.models[0].n_passes_  # the grid's shared passes
    assert acc.models[0].n_passes_ < plain.models[0].n_passes_
    holes = x.copy()
    holes[::7, 0] = np.nan
    kw = dict(missing="em", tol=1e-8, max_iter=2000, random_state=0)
    a = GaussianMixture(3, algorithm="accelerated", **kw).fit(holes)
    p = GaussianMixture(3, **kw).fit(holes)
    assert a.converged_ and abs(a.lower_bound_ - p.lower_bound_) < 1e-5
    assert a.n_iter_ < p.n_iter_


def test_incremental_em_with_one_wave_is_plain_em_and_converges_with_many(slow_data):
    from dask_em.engine._incremental import incremental_passes

    _, dx = slow_data
    start = start_of(dx, 3, "diag")
    one, passes = incremental_passes(dx, start, n_passes=3, n_waves=1, reg_covar=1e-6, eps=EPS)
    plain = fit(dx, start, "em", tol=0.0, max_iter=3)
    assert passes == 3
    np.testing.assert_allclose(one.means, plain.params.means, rtol=0, atol=1e-12)
    np.testing.assert_allclose(one.covariances, plain.params.covariances, rtol=0, atol=1e-12)
    # Two waves (the data has two blocks): then plain EM to the same optimum.
    many, _ = incremental_passes(dx, start, n_passes=5, n_waves=2, reg_covar=1e-6, eps=EPS)
    after = fit(dx, many, "em", tol=1e-9)
    reference = fit(dx, start, "em", tol=1e-9)
    assert abs(after.lower_bound - reference.lower_bound) < 1e-6


@pytest.fixture(scope="module")
def slow_waves(slow_data):
    x, _ = slow_data
    return da.from_array(x, chunks=(250, 2))  # 16 blocks, one wave each


def _isq(dx, start, **kw):
    from dask_em.engine._incremental import incremental_squarem_passes

    seen = []
    params, passes = incremental_squarem_passes(
        dx,
        start,
        n_waves=16,
        reg_covar=1e-6,
        eps=EPS,
        callback=lambda p, params: seen.append((p, params)),
        **kw,
    )
    return params, passes, seen


@pytest.mark.parametrize("ct", COV_TYPES)
def test_squarem_over_incremental_sweeps_reaches_plain_ems_optimum(slow_waves, ct):
    """Its fixed points are EM's: from where it stops, plain EM moves the mean
    log-likelihood by less than 1e-8 a pass and ends at plain EM's own optimum; where
    plain EM is slow (full: ~100 passes), in fewer passes."""
    start = start_of(slow_waves, 3, ct)
    params, passes, seen = _isq(slow_waves, start, n_passes=400, tol=1e-10)
    assert [p for p, _ in seen] == list(range(2, passes + 1))  # pass 1 is the E-step
    after = run_em(slow_waves, [params], tol=0.0, max_iter=2, reg_covar=1e-6, eps=EPS)
    lbs = after.candidates[0].lower_bounds
    assert abs(lbs[1] - lbs[0]) < 1e-8
    plain = fit(slow_waves, start, "em", tol=1e-10)
    assert plain.converged
    if ct == "full":
        assert len(plain.lower_bounds) >= 60 and passes < len(plain.lower_bounds) / 2
    assert abs(lbs[0] - plain.lower_bound) < 1e-7
    np.testing.assert_allclose(sorted_means(params), sorted_means(plain.params), atol=1e-3)


def test_squarem_over_incremental_sweeps_rejects_overshooting_steps(slow_waves, monkeypatch):
    """A step bound that grows a millionfold overshoots into non-mixtures and lower
    likelihoods: those sweeps are rejected, the parameters stay finite, and the run
    still ends at plain EM's optimum."""
    from dask_em.engine import _incremental

    monkeypatch.setattr(_incremental, "_STEP_GROWTH", 1e6)
    start = start_of(slow_waves, 3, "full")
    params, passes, seen = _isq(slow_waves, start, n_passes=600, tol=1e-10)
    assert all(p.is_finite() for _, p in seen)
    plain = fit(slow_waves, start, "em", tol=1e-10)
    after = fit(slow_waves, params, "em", tol=1e-10)
    assert abs(after.lower_bound - plain.lower_bound) < 1e-7


def test_wave_statistics_round_trip_through_one_vector(slow_waves):
    from dask_em.engine._incremental import _as_vector, _from_vector, _Sweeper

    start = start_of(slow_waves, 3, "full")
    waves = _Sweeper(slow_waves, 4, None, 1e-6, EPS, None, None).first(start)
    back = _from_vector(_as_vector(waves), waves)
    for a, b in zip(waves, back, strict=True):
        for f in ("nk", "s1", "s2"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert b.loglik == a.loglik and np.array_equal(b.reference, a.reference)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_partial_fit_state_saved_as_arrays_continues_exactly(ct):
    """A stream job's checkpoint: the online state as plain arrays, restored into a new
    estimator, gives the same next updates as the estimator that was saved."""
    from dask_em.mixture._partial import online_arrays, restore_online

    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(300, 3)) + rng.integers(0, 3, size=(300, 1)) * 3 for _ in range(4)]
    whole = GaussianMixture(3, covariance_type=ct, random_state=0)
    first = GaussianMixture(3, covariance_type=ct, random_state=0)
    for x in xs:
        whole.partial_fit(x)
    for x in xs[:2]:
        first.partial_fit(x)
    arrays = online_arrays(first)
    assert all(v.dtype != object for v in arrays.values())
    again = GaussianMixture(3, covariance_type=ct, random_state=0)
    restore_online(again, arrays)
    for x in xs[2:]:
        again.partial_fit(x)
    np.testing.assert_array_equal(again.means_, whole.means_)
    np.testing.assert_array_equal(again.covariances_, whole.covariances_)
    assert again.n_passes_ == whole.n_passes_ and again.n_iter_ == whole.n_iter_
