"""Pictures of a run, drawn with matplotlib's Agg canvas (no display, no global backend).

Every function takes small in-memory inputs (the fitted model, a sample of rows of at
most a few thousand, per-iteration metrics) and returns PNG bytes; the caller writes them
atomically. Nothing here reads the full data.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "full_covariances",
    "mixture_principal_axes",
    "plot_data",
    "plot_lower_bound",
    "plot_selection",
]


def _figure(width: float = 6.4, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def full_covariances(
    covariances: np.ndarray, covariance_type: str, n_components: int, n_features: int
) -> np.ndarray:
    """Every component's covariance as a ``(K, d, d)`` array, whatever the type."""
    c = np.asarray(covariances, dtype=float)
    if covariance_type == "full":
        return c
    if covariance_type == "tied":
        return np.broadcast_to(c, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(v) for v in c])
    return np.stack([np.eye(n_features) * v for v in c])


def mixture_principal_axes(
    weights: np.ndarray, means: np.ndarray, covs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, the two leading principal axes and their variances of the fitted mixture.

    The mixture's covariance is ``sum_k w_k (S_k + m_k m_k^T) - m m^T``: PCA comes from
    the model, so no pass over the data is needed.

    Returns
    -------
    center : ndarray of shape (d,)
    axes : ndarray of shape (d, 2)
    variances : ndarray of shape (2,)
    """
    center = weights @ means
    second = np.einsum("k,kij->ij", weights, covs) + np.einsum(
        "k,ki,kj->ij", weights, means, means
    )
    total = second - np.outer(center, center)
    vals, vecs = np.linalg.eigh((total + total.T) / 2)
    order = np.argsort(vals)[::-1][:2]
    return center, vecs[:, order], vals[order]


def _ellipse(ax, mean2: np.ndarray, cov2: np.ndarray, color, n_std: float = 2.0) -> None:
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov2)
    vals = np.clip(vals, 0, None)
    angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
    w, h = 2 * n_std * np.sqrt(vals[::-1])
    ax.add_patch(Ellipse(mean2, w, h, angle=angle, facecolor="none", edgecolor=color, lw=1.8))


def plot_lower_bound(
    iterations: Sequence[Mapping[str, Any]],
    tol: float | None = None,
    title: str = "EM convergence",
) -> bytes:
    """Lower bound (mean log-likelihood) per iteration, and its change on a log scale."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.4, 5.2)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    it = np.array([r["iteration"] for r in iterations])
    lb = np.array([r["lower_bound"] for r in iterations], dtype=float)
    ax1.plot(it, lb, marker="o", ms=3)
    finite = lb[np.isfinite(lb)]
    if len(finite) >= 3:
        # A poor random start can sit orders of magnitude below the rest; keep the scale
        # of the later iterations readable and say what is off the axis.
        lo, hi = float(np.min(finite[1:])), float(np.max(finite))
        span = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
        if finite[0] < lo - 10 * span:
            ax1.set_ylim(lo - 0.15 * span, hi + 0.15 * span)
            ax1.annotate(
                f"iteration {int(it[0])}: {finite[0]:.4g} (off scale)",
                xy=(0.02, 0.04),
                xycoords="axes fraction",
                fontsize=8,
            )
    if len(finite) and np.ptp(finite) < 1e-6 * max(abs(finite[-1]), 1.0):
        # A flat curve (a start already at the optimum): without an offset, ticks over a
        # range of 1e-14 would need 16 digits, so show a range whose ticks read.
        pad = 5e-7 * max(abs(finite[-1]), 1.0)
        ax1.set_ylim(float(finite.min()) - pad, float(finite.max()) + pad)
    # Plain numbers on the y axis (no "1e-12 - 2.5347" offset) and whole iterations on x.
    ax1.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_ylabel("lower bound (mean log-likelihood)")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    change = np.array(
        [np.nan if r.get("change") is None else abs(r["change"]) for r in iterations], dtype=float
    )
    ok = np.isfinite(change) & (change > 0)
    if ok.any():
        ax2.semilogy(it[ok], change[ok], marker="o", ms=3, color="C1")
    if tol:
        ax2.axhline(tol, color="k", ls="--", lw=1, label=f"tol = {tol:g}")
        ax2.legend(loc="upper right")
    ax2.set_ylabel("|change|")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    return _png(fig)


def plot_data(model, sample: np.ndarray, title: str = "", pruned=()) -> bytes:
    """The fitted mixture over a sample of rows.

    1-D: histogram and mixture density. 2-D: density contours (negative log-likelihood)
    over the points. d > 2: points projected on the mixture's first two principal axes,
    coloured by component, with each component's 2-sigma ellipse.

    ``pruned``: indices of components to mark as pruned (a Bayesian mixture's components
    with negligible weight): grey, dashed, and named in the legend and title.
    """
    from matplotlib.colors import LogNorm

    sample = np.asarray(sample, dtype=float)
    weights, means = np.asarray(model.weights_), np.asarray(model.means_)
    k, d = means.shape
    covs = full_covariances(model.covariances_, model.covariance_type, k, d)
    fig = _figure()
    ax = fig.subplots()
    if d == 1:
        lo = min(sample.min(), (means[:, 0] - 4 * np.sqrt(covs[:, 0, 0])).min())
        hi = max(sample.max(), (means[:, 0] + 4 * np.sqrt(covs[:, 0, 0])).max())
        grid = np.linspace(lo, hi, 400)[:, None]
        ax.hist(sample[:, 0], bins=60, density=True, alpha=0.4, color="C0")
        ax.plot(grid[:, 0], np.exp(model.score_samples(grid)), color="C3", lw=2)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    elif d == 2:
        pad = 0.05 * (sample.max(axis=0) - sample.min(axis=0) + 1e-12)
        lo, hi = sample.min(axis=0) - pad, sample.max(axis=0) + pad
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        grid = np.column_stack([gx.ravel(), gy.ravel()])
        z = -np.asarray(model.score_samples(grid)).reshape(gx.shape)
        zmin = max(float(np.nanmin(z)), 1e-3)
        z = np.clip(z, zmin, None)
        zmax = min(max(float(np.nanmax(z)), zmin * 10), zmin * 1e3)
        levels = np.logspace(np.log10(zmin), np.log10(zmax), 13)
        cs = ax.contour(
            gx, gy, z, levels=levels, norm=LogNorm(vmin=levels[0], vmax=levels[-1]), cmap="viridis"
        )
        fig.colorbar(
            cs,
            ax=ax,
            shrink=0.8,
            label="negative log-likelihood",
            ticks=levels[::3],
            format="%.3g",
        )
        ax.scatter(sample[:, 0], sample[:, 1], s=2, c="k", alpha=0.35, lw=0)
        kept = np.setdiff1d(np.arange(k), pruned)
        ax.scatter(means[kept, 0], means[kept, 1], marker="x", s=60, c="C3")
        _mark_pruned(ax, means[list(pruned), :2] if len(pruned) else None)
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
    else:
        center, axes, variances = mixture_principal_axes(weights, means, covs)
        proj = (sample - center) @ axes
        labels = np.asarray(model.predict(sample))
        ax.scatter(
            proj[:, 0],
            proj[:, 1],
            s=2,
            c=labels % 10,
            cmap="tab10",
            vmin=0,
            vmax=9,
            alpha=0.5,
            lw=0,
        )
        for j in range(k):
            if j in pruned:
                continue
            color = f"C{j % 10}"
            m2 = (means[j] - center) @ axes
            _ellipse(ax, m2, axes.T @ covs[j] @ axes, color)
            ax.plot(*m2, marker="x", color=color, ms=8)
        _mark_pruned(ax, (means[list(pruned)] - center) @ axes if len(pruned) else None)
        total = float(weights @ (np.trace(covs, axis1=1, axis2=2) + (means**2).sum(axis=1)))
        share = variances / max(total - float(center @ center), 1e-300)
        ax.set_xlabel(f"PC 1 ({share[0]:.0%} of variance)")
        ax.set_ylabel(f"PC 2 ({share[1]:.0%} of variance)")
    default = f"{k} components, {model.covariance_type} covariance, d={d}"
    if len(pruned):
        default = (
            f"{k - len(pruned)} of {k} components ({len(pruned)} pruned), "
            + default[default.index(",") + 2 :]
        )
    ax.set_title(title or default)
    return _png(fig)


def _mark_pruned(ax, points) -> None:
    """Pruned components' means (rows of ``points``, 2-D) as grey open circles."""
    if points is None:
        return
    ax.scatter(
        points[:, 0],
        points[:, 1],
        marker="o",
        s=50,
        facecolors="none",
        edgecolors="0.5",
        linestyles="dashed",
        label="pruned (weight below threshold)",
    )
    ax.legend(loc="best", fontsize="small")


def plot_selection(rows: Sequence[Mapping[str, Any]], criterion: str) -> bytes:
    """Information criterion against the number of components, one line per type."""
    fig = _figure()
    ax = fig.subplots()
    types = sorted({r["covariance_type"] for r in rows})
    best = min(rows, key=lambda r: r[criterion])
    for i, t in enumerate(types):
        rs = sorted(
            (r for r in rows if r["covariance_type"] == t), key=lambda r: r["n_components"]
        )
        ax.plot(
            [r["n_components"] for r in rs],
            [r[criterion] for r in rs],
            marker="o",
            color=f"C{i}",
            label=t,
        )
    ax.plot(
        best["n_components"],
        best[criterion],
        marker="*",
        ms=16,
        color="C3",
        ls="none",
        label=f"best: {best['covariance_type']}, k={best['n_components']}",
    )
    ax.set_xlabel("n_components")
    ax.set_ylabel(criterion.upper() + " (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)
