"""Suite bayesian: dask-em's BayesianGaussianMixture against scikit-learn's (threads).

    python benchmarks/run.py --only bayesian [--quick] [--repeats R]

Both start from the same state (scikit-learn's model after one iteration from
``random_from_data``, copied into dask-em's with ``warm_start``) and run ``repeats``
iterations at ``tol=0``. scikit-learn's time per iteration is its loop body (``_e_step``,
``_m_step``, ``_compute_lower_bound``, BLAS at its default threads); dask-em's is the
``EMProgress.seconds`` of each iteration (one pass, reduction, M-step and bound), the
first left out as in every suite. The lower bounds of the two must agree to round-off.
"""

from __future__ import annotations

import inspect
import time
import warnings

import harness as h
import numpy as np
from suite import Settings, ratio, row, target, timing_table

from dask_em.mixture._bayesian import WARM_START_ATTRIBUTES

# What scikit-learn's model holds after an iteration, and ours is started from.
STATE = WARM_START_ATTRIBUTES


def _sklearn_start(x, k, covariance_type):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    sk = BayesianGaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        init_params="random_from_data",
        max_iter=1,
        tol=0.0,
        random_state=0,
    )
    h.quiet_fit(sk, x, ConvergenceWarning)
    return sk


def _call(method, *args):
    # scikit-learn >= 1.8 threads an array namespace through its private methods.
    if "xp" in inspect.signature(method).parameters:
        from sklearn.utils._array_api import get_namespace

        return method(*args, xp=get_namespace(args[0])[0])
    return method(*args)


def sklearn_iterations(sk, x, n_iter):
    """Seconds and lower bounds of ``n_iter`` iterations of scikit-learn's loop body."""
    times, bounds = [], []
    for _ in range(n_iter):
        t0 = time.perf_counter()
        log_prob_norm, log_resp = _call(sk._e_step, x)
        _call(sk._m_step, x, log_resp)
        bound = sk._compute_lower_bound(log_resp, log_prob_norm)
        times.append(time.perf_counter() - t0)
        bounds.append(float(np.ravel(bound)[0]))
    return times, bounds


def daskem_iterations(sk, x, n_iter, chunk_rows):
    """Seconds and lower bounds of ``n_iter`` dask-em iterations from ``sk``'s state."""
    import dask.array as da

    import dask_em

    bgm = dask_em.BayesianGaussianMixture(
        n_components=sk.n_components,
        covariance_type=sk.covariance_type,
        max_iter=n_iter,
        tol=0.0,
        warm_start=True,
    )
    for name in STATE:
        setattr(bgm, name, getattr(sk, name))
    seconds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dask_em.ConvergenceWarning)
        bgm.fit(
            da.from_array(x, chunks=(chunk_rows, -1)),
            callback=lambda state: seconds.append(state.seconds),
        )
    return seconds, list(bgm.lower_bounds_)


def suite_bayesian(s: Settings) -> dict:
    import measure

    n, d, k, ct = s.n(1e6, 1e5), 16, 8, "full"
    name = f"{ct} N={h.fmt_n(n)} d={d} K={k}"
    s.say(f"[bayesian] {name}: data and scikit-learn's first iteration")
    x = h.make_data(n, d, k)
    sk = _sklearn_start(x, k, ct)
    n_iter = s.repeats + 1  # the first of dask-em's is left out
    s.say(f"[bayesian] {name}: dask-em, {n_iter} iterations")
    seconds, ours = daskem_iterations(sk, x, n_iter, measure.engine_chunk_rows(n, d))
    s.say(f"[bayesian] {name}: scikit-learn, {s.repeats} iterations")
    sk_times, theirs = sklearn_iterations(sk, x, n_iter)
    agree = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True))
    rows = [
        row(name, "scikit-learn BayesianGaussianMixture", sk_times[1:]),
        row(name, "dask-em threads", h.after_first(seconds), max_rel_bound_diff=agree),
    ]
    speed = ratio(rows[0]["min"], rows[1]["min"])
    targets = [
        target(f"{name}: dask-em vs scikit-learn per iteration", speed, ">=", 8),
        target(f"{name}: lower bounds agree (max relative difference)", agree, "<=", 1e-10),
    ]
    notes = [
        "Same start for both (scikit-learn's state after one iteration); tol=0.",
        f"Lower bounds of the {n_iter} iterations agree within {agree:.1e} relative.",
    ]
    return {
        "title": "Bayesian Gaussian mixture (variational), threads",
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "markdown": timing_table(rows) + f"\n\nSpeed-up (min/min): {h.fmt_ratio(speed)}\n",
    }
