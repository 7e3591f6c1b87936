"""
Model selection with BIC
========================

How many components, and which covariance type? :func:`dask_em.select_model` fits a
whole grid of candidates in shared passes over the data: every EM iteration reads the
data once for all of them, and converged candidates drop out. Each candidate equals the
:class:`~dask_em.GaussianMixture` fitted alone with the same settings.
"""

# %%
# Data from 3 elongated Gaussians in 2-D.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from dask_em import select_model
from dask_em.io import synthetic_array
from dask_em.jobs.config import SyntheticSpec

spec = SyntheticSpec(n_samples=20_000, n_features=2, n_components=3, separation=3.0, seed=1)
X = synthetic_array(spec, chunk_rows=5_000)

# %%
# The grid: 1 to 6 components, three covariance types (18 candidates).
result = select_model(
    X,
    n_components=range(1, 7),
    covariance_types=["full", "diag", "spherical"],
    criterion="bic",
    random_state=0,
)
table = result.to_dataframe()
print(table[["covariance_type", "n_components", "bic", "n_iter", "converged"]].round(1))
print("best:", result.best["covariance_type"], result.best["n_components"], "components")

# %%
# The BIC plot
# ------------
# :meth:`~dask_em.mixture.SelectionResult.plot_bic` writes an mclust-style picture
# (PNG): one line per covariance type, the best model ringed. Lower is better
# (scikit-learn's sign, the opposite of mclust's).
with tempfile.TemporaryDirectory() as tmp:
    png = result.plot_bic(Path(tmp) / "bic.png")
    image = plt.imread(png)
fig, ax = plt.subplots(figsize=(7, 5))
ax.imshow(image)
ax.set_axis_off()

# %%
# The best model is fitted already.
best = result.best_model
print(best)
print("weights:", best.weights_.round(3))
