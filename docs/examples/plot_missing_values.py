"""
Missing values
==============

With ``missing='em'`` a NaN is a value missing at random, and the mixture is fitted by
the exact EM for incomplete data: each row's responsibilities come from its observed
features, and the statistics complete the missing ones by their conditional
expectation. Here a fifth of the values of a 3-D data set are removed; the fit on what
is left is compared with the fit on the complete data, and the missing values are
filled in with :meth:`~dask_em.GaussianMixture.impute`.
"""

# %%
# Complete data, and a copy with 20% of its values removed at random.
import dask.array as da
import matplotlib.pyplot as plt
import numpy as np

from dask_em import GaussianMixture, NonFiniteError
from dask_em.io import synthetic_array
from dask_em.jobs.config import SyntheticSpec

spec = SyntheticSpec(n_samples=20_000, n_features=3, n_components=3, separation=3.0, seed=2)
X_full = synthetic_array(spec, chunk_rows=5_000).compute()
rng = np.random.default_rng(0)
holes = rng.random(X_full.shape) < 0.2
X_holes = np.where(holes, np.nan, X_full)
print(f"{holes.mean():.1%} of the values missing; {holes.all(axis=1).sum()} rows with none left")
X = da.from_array(X_holes, chunks=(5_000, 3))

# %%
# By default a NaN is an error that names where it is.
try:
    GaussianMixture(3, random_state=0).fit(X)
except NonFiniteError as exc:
    print(exc)

# %%
# EM for incomplete data, and the same model on the complete data.
gm = GaussianMixture(3, missing="em", random_state=0).fit(X)
ref = GaussianMixture(3, random_state=0).fit(X_full)
order = [int(np.argmin(np.linalg.norm(ref.means_ - m, axis=1))) for m in gm.means_]
print("means, incomplete data:\n", gm.means_.round(2))
print("means, complete data:\n", ref.means_[order].round(2))
print("rows skipped (nothing observed):", gm.n_rows_skipped_)

# %%
# Filling the holes
# -----------------
# ``impute`` replaces each NaN with its conditional expectation given the row's observed
# values; the plot compares them with the values that were removed.
filled = gm.impute(X).compute()
fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
for j in range(X_full.shape[1]):
    hole = holes[:, j]
    ax.scatter(X_full[hole, j], filled[hole, j], s=2, alpha=0.3, lw=0, label=f"feature {j}")
lims = [X_full.min(), X_full.max()]
ax.plot(lims, lims, color="k", lw=1)
ax.set(xlabel="removed value", ylabel="imputed value", title="Imputation of missing values")
ax.legend(markerscale=5)
rmse = np.sqrt(np.mean((filled[holes] - X_full[holes]) ** 2))
print(f"RMSE of the imputed values: {rmse:.3f} (feature std: {X_full.std(axis=0).round(2)})")
