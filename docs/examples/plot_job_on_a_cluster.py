"""
A job on a cluster
==================

A YAML job run on a Dask cluster that already exists: here a ``LocalCluster`` of 2
workers that this script starts on 127.0.0.1 and closes at the end; on a real cluster
only the scheduler address changes. The job's synthetic data is
generated on the workers, block by block. :func:`dask_em.jobs.config.load_job` validates the
file and :func:`dask_em.jobs.runner.run_job` runs it, which is what ``dask-em run JOB.yaml
--scheduler ADDRESS`` does.
"""

# %%
# The cluster. Its workers are threads of this process that talk to the scheduler over
# TCP, as remote ones would. (Worker processes, ``processes=True``, start by importing
# the main script again: a script that starts them needs its code under
# ``if __name__ == "__main__":``.) The scheduler's and workers' web servers (the
# dashboard, when bokeh is installed) take free ports on 127.0.0.1.
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from distributed import Client, LocalCluster

from dask_em import GaussianMixture
from dask_em.io import synthetic_array
from dask_em.jobs.config import load_job
from dask_em.jobs.runner import run_job

cluster = LocalCluster(
    n_workers=2,
    threads_per_worker=1,
    processes=False,
    protocol="tcp",
    host="127.0.0.1",
    dashboard_address="127.0.0.1:0",
    worker_dashboard_address="127.0.0.1:0",
)
print(cluster.scheduler_address)

# %%
# The job file
# ------------
# ``cluster.address`` points the job at the scheduler; the other sections are those of
# any job (see ``jobs/``).
tmp = Path(tempfile.mkdtemp())
job_file = tmp / "blobs.yaml"
job_file.write_text(
    f"""\
name: blobs
cluster:
  address: {cluster.scheduler_address}
data:
  source: synthetic
  synthetic: {{n_samples: 200000, n_features: 4, n_components: 5, separation: 2.5, seed: 3}}
  chunk_rows: 50000
model:
  n_components: 5
  covariance_type: full
  tol: 1.0e-4
  random_state: 0
output:
  dir: {tmp / "run"}
  plots: true
"""
)
config = load_job(job_file)
result = run_job(config)
print(sorted(p.name for p in result.path.iterdir()))
print(f"{result.metrics['n_iter']} iterations, lower bound {result.metrics['lower_bound']:.4f}")

# %%
# The run folder's pictures
# -------------------------
# With more than 2 features the data plot (``pca.png``; ``density.png`` in 1-D and 2-D)
# shows the points on the mixture's first two principal axes, each component with its
# 2-sigma ellipse.
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
for ax, name in zip(axes, ["pca.png", "lower_bound.png"], strict=True):
    ax.imshow(plt.imread(result.path / "plots" / name))
    ax.set_axis_off()

# %%
# The estimator on the same cluster
# ---------------------------------
# In Python, an active ``distributed.Client`` is where ``fit`` runs: each EM iteration is
# one pass over the blocks on the workers, and only the small statistics come back.
X = synthetic_array(config.data.synthetic, chunk_rows=50_000)
with Client(cluster) as client:
    gm = GaussianMixture(5, tol=1e-4, random_state=0).fit(X)
print(f"{gm.n_iter_} iterations, lower bound {gm.lower_bound_:.4f}")

# %%
# Close the cluster when done (and remove the run folder of this example).
cluster.close()
shutil.rmtree(tmp)
