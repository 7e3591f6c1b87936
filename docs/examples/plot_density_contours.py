"""
Density contours and EM at work
===============================

The quick start job's data and model, fitted in Python on Dask's threaded scheduler:
30,000 points in 2-D from 4 Gaussians, some of which overlap, and a 4-component mixture
with full covariances. We draw the fitted density's contours over the points, then the
lower bound at every iteration, which shows EM taking tens of iterations to pull the
overlapping components apart.
"""

# %%
# The data
# --------
# :func:`dask_em.io.synthetic_array` draws rows from a seeded mixture, block by block
# (on the workers when there is a cluster): a lazy dask array of 3 blocks of 10,000 rows.
# The spec is the ``data.synthetic`` section of ``jobs/quickstart.yaml``.
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from dask_em import GaussianMixture
from dask_em.io import synthetic_array
from dask_em.jobs.config import SyntheticSpec

spec = SyntheticSpec(n_samples=30_000, n_features=2, n_components=4, separation=1.25, seed=5)
X = synthetic_array(spec, chunk_rows=10_000)
print(X)

# %%
# The fit
# -------
# The settings of the job's ``model`` section. Both k-means starts advance in the same
# pass over the data; the better one is kept.
gm = GaussianMixture(
    n_components=4,
    covariance_type="full",
    tol=1e-4,
    max_iter=200,
    n_init=2,
    random_state=0,
)
gm.fit(X)
print(f"converged={gm.converged_} after {gm.n_iter_} iterations")
print("weights:", np.round(gm.weights_, 3))
print("means:\n", np.round(gm.means_, 2))

# %%
# Density contours
# ----------------
# ``score_samples`` of a numpy grid returns numpy; contours of the negative
# log-likelihood on a log scale, over a sample of the points.
sample = X[:3000].compute()
gx, gy = np.meshgrid(np.linspace(-5, 5, 200), np.linspace(-4.5, 4.5, 200))
grid = np.column_stack([gx.ravel(), gy.ravel()])
nll = -gm.score_samples(grid).reshape(gx.shape)

fig, ax = plt.subplots(figsize=(6.4, 5), layout="constrained")
cs = ax.contour(gx, gy, nll, levels=np.logspace(0.3, 2, 12), norm=LogNorm(), cmap="viridis")
fig.colorbar(cs, ax=ax, shrink=0.8, label="negative log-likelihood", format="%.3g")
ax.scatter(sample[:, 0], sample[:, 1], s=2, c="k", alpha=0.3, lw=0)
ax.scatter(gm.means_[:, 0], gm.means_[:, 1], marker="x", s=60, c="C3")
ax.set(xlabel="x0", ylabel="x1", title="4 components, full covariance")

# %%
# Convergence
# -----------
# ``lower_bounds_`` holds the mean log-likelihood of every E-step: a fast rise, then a
# slow climb while the two overlapping components on the left separate, until the change
# drops below ``tol``.
lb = np.asarray(gm.lower_bounds_)
it = np.arange(1, len(lb) + 1)
fig, (ax1, ax2) = plt.subplots(
    2, 1, sharex=True, height_ratios=[2, 1], figsize=(6.4, 5), layout="constrained"
)
ax1.plot(it, lb, marker="o", ms=3)
ax1.ticklabel_format(axis="y", style="plain", useOffset=False)
ax1.set(ylabel="lower bound (mean log-likelihood)", title="EM convergence")
ax2.semilogy(it[1:], np.abs(np.diff(lb)), marker="o", ms=3, color="C1")
ax2.axhline(gm.tol, color="k", ls="--", lw=1, label=f"tol = {gm.tol:g}")
ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
ax2.set(xlabel="iteration", ylabel="|change|")
ax2.legend()
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
