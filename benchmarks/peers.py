"""The peers dask-em is measured against: scikit-learn and Spark MLlib (through pyspark).

Each function returns plain numbers (seconds, log-likelihoods) so that the suites of
``run.py`` can put them next to dask-em's in one table.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
from harness import Start, quiet_fit, summary


# --------------------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------------------
def sklearn_iterations(x, start: Start, n_iter: int, *, reg_covar=1e-6) -> dict:
    """Time ``n_iter`` scikit-learn EM iterations from ``start``.

    Times each iteration's ``_e_step`` + ``_m_step`` pair, which is exactly the body of
    ``fit``'s loop; falls back to ``fit(max_iter=n_iter, tol=0)`` divided by ``n_iter``
    if those private methods change. BLAS runs with its default threads (scikit-learn's
    normal configuration).

    Returns
    -------
    dict
        ``times`` (per iteration), ``lower_bounds`` (mean log-likelihood of each E-step),
        ``method``.
    """
    from sklearn.mixture import GaussianMixture

    k = start.means.shape[0]

    def model(max_iter):
        return GaussianMixture(
            k,
            covariance_type=start.covariance_type,
            init_params="random_from_data",
            max_iter=max_iter,
            tol=0.0,
            reg_covar=reg_covar,
            random_state=0,
            **start.kwargs(),
        )

    gm = model(1)
    try:
        import inspect

        from sklearn.utils._array_api import get_namespace

        xp, _ = get_namespace(x)

        def call(method, *args):
            # scikit-learn >= 1.8 threads an array namespace through these methods.
            if "xp" in inspect.signature(method).parameters:
                return method(*args, xp=xp)
            return method(*args)

        call(gm._check_parameters, x)
        call(gm._initialize_parameters, x, np.random.RandomState(0))
        times, bounds = [], []
        for _ in range(n_iter):
            t0 = time.perf_counter()
            log_prob_norm, log_resp = call(gm._e_step, x)
            call(gm._m_step, x, log_resp)
            times.append(time.perf_counter() - t0)
            bounds.append(float(log_prob_norm))
        return {"times": times, "lower_bounds": bounds, "method": "e-step + m-step"}
    except (AttributeError, TypeError, ImportError) as exc:  # private API changed
        from sklearn.exceptions import ConvergenceWarning

        gm = model(n_iter)
        total = quiet_fit(gm, x, ConvergenceWarning)
        return {
            "times": [total / n_iter],
            "lower_bounds": list(gm.lower_bounds_),
            "method": f"fit(max_iter={n_iter}) / {n_iter} ({type(exc).__name__}: {exc})",
        }


# --------------------------------------------------------------------------------------
# Spark MLlib
# --------------------------------------------------------------------------------------
def spark_missing() -> str | None:
    """Why Spark cannot run here, or None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'dask-em[bench]' or pip install pyspark)"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java is not installed (Spark needs a JVM; install Java 17+)"
    return None


def mean_loglik(x, weights, means, covariances) -> float:
    """Mean log-likelihood of a full-covariance mixture on ``x`` (scipy), the one scorer
    every tool's final parameters go through."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    x = np.asarray(x, dtype=np.float64)
    logp = np.column_stack(
        [
            np.log(w) + multivariate_normal(m, c, allow_singular=False).logpdf(x)
            for w, m, c in zip(weights, means, covariances, strict=True)
        ]
    )
    return float(np.mean(logsumexp(logp, axis=1)))


class SparkRunner:
    """A local Spark session and the benchmark data as a ``features`` vector column.

    ``start_seconds`` is the JVM and session start; ``frame_seconds`` the DataFrame build
    (pandas -> Arrow -> Spark, vector assembly, one pass to materialise it). Per-iteration
    times come from Spark's own job records: every EM iteration of Spark's
    GaussianMixture is one job, and an iteration's time is the gap between the
    completion of its job and of the previous iteration's job (driver work included).
    """

    def __init__(self, cores: int = 2, driver_memory: str = "6g"):
        import warnings

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # pyspark warns about pandas versions on every conversion.
        warnings.filterwarnings("ignore", category=FutureWarning, module="pyspark")
        from pyspark.sql import SparkSession

        # MLlib calls a native BLAS (libblas.so.3, e.g. Debian's libopenblas0) where one is
        # installed, else its Java one; native, it must run one thread per task as Spark's
        # docs advise (local[2] already runs two tasks).
        saved = {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        os.environ.update({v: "1" for v in saved})
        t0 = time.perf_counter()
        try:
            self.spark = (
                SparkSession.builder.master(f"local[{cores}]")
                .appName("dask-em-benchmark")
                .config("spark.driver.memory", driver_memory)
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                .config("spark.sql.shuffle.partitions", str(cores))
                .config("spark.default.parallelism", str(cores))
                .getOrCreate()
            )
        finally:
            for v, value in saved.items():
                if value is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = value
        self.spark.sparkContext.setLogLevel("ERROR")
        self.spark.range(1).count()
        self.start_seconds = time.perf_counter() - t0
        jvm = self.spark.sparkContext._jvm
        #: The BLAS MLlib runs with: JNIBLAS (native), VectorBLAS (Java's vector API), JavaBLAS.
        self.blas = str(jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName())
        self.cores = cores
        self.frame = None
        self.frame_seconds = None
        self.rdd = None
        self.rdd_seconds = None
        self.n_rows = 0

    # -- data ---------------------------------------------------------------------------
    def load(self, x: np.ndarray) -> float:
        import pandas as pd
        from pyspark.ml.feature import VectorAssembler

        t0 = time.perf_counter()
        cols = [f"x{j}" for j in range(x.shape[1])]
        pdf = pd.DataFrame(np.asarray(x, dtype=np.float64), columns=cols)
        sdf = self.spark.createDataFrame(pdf).repartition(self.cores)
        frame = VectorAssembler(inputCols=cols, outputCol="features").transform(sdf)
        frame = frame.select("features")
        frame.count()
        self.frame_seconds = time.perf_counter() - t0
        self.frame = frame
        self.n_rows = x.shape[0]
        return self.frame_seconds

    def load_rdd(self, x: np.ndarray) -> float:
        """The rows as an RDD of mllib vectors (for the RDD-based API), cached."""
        from pyspark.mllib.linalg import Vectors

        t0 = time.perf_counter()
        parts = np.array_split(np.asarray(x, dtype=np.float64), self.cores * 4)
        rdd = self.spark.sparkContext.parallelize(parts, self.cores)
        rdd = rdd.flatMap(lambda block: [Vectors.dense(row) for row in block]).cache()
        rdd.count()
        self.rdd = rdd
        self.rdd_seconds = time.perf_counter() - t0
        self.n_rows = x.shape[0]
        return self.rdd_seconds

    # -- job records --------------------------------------------------------------------
    def _drain(self):
        """Wait until Spark's listener bus has recorded every finished job."""
        bus = self.spark.sparkContext._jsc.sc().listenerBus()
        try:
            bus.waitUntilEmpty(30_000)
        except Exception:  # the method is Spark-internal; fall back to a pause
            time.sleep(1.0)

    def _jobs(self, after: int) -> list:
        """(id, name, submitted ms, completed ms) of the jobs with id > ``after``."""
        self._drain()
        store = self.spark.sparkContext._jsc.sc().statusStore()
        jobs = store.jobsList(None)
        out = []
        for i in range(jobs.size()):
            j = jobs.apply(i)
            if j.jobId() <= after:
                continue
            sub, comp = j.submissionTime(), j.completionTime()
            out.append(
                (
                    int(j.jobId()),
                    str(j.name()),
                    sub.get().getTime() if sub.isDefined() else None,
                    comp.get().getTime() if comp.isDefined() else None,
                )
            )
        return sorted(out)

    def _last_job(self) -> int:
        jobs = self._jobs(-1)
        return jobs[-1][0] if jobs else -1

    def _iteration_times(self, after: int, marker: str) -> list:
        """Seconds of each EM iteration among the jobs after ``after`` whose call site
        contains ``marker``; the first is measured from its job's submission."""
        jobs = [j for j in self._jobs(after) if marker in j[1] and j[3] is not None]
        times, prev = [], None
        for _, _, sub, comp in jobs:
            times.append((comp - (prev if prev is not None else sub)) / 1e3)
            prev = comp
        return times

    # -- fits ---------------------------------------------------------------------------
    def fit(self, k: int, max_iter: int, tol: float, seed: int) -> dict:
        """One ``pyspark.ml.clustering.GaussianMixture`` fit (DataFrame API, its own
        random start)."""
        from pyspark.ml.clustering import GaussianMixture

        gm = GaussianMixture(k=k, maxIter=max_iter, tol=tol, seed=seed, featuresCol="features")
        last = self._last_job()
        t0 = time.perf_counter()
        model = gm.fit(self.frame)
        seconds = time.perf_counter() - t0
        iters = self._iteration_times(last, "collect at GaussianMixture")
        s = model.summary
        return {
            "seconds": seconds,
            "iteration_times": iters,
            "n_iter": int(s.numIter),
            "loglik_mean": float(s.logLikelihood) / self.n_rows,
            "weights": np.asarray(model.weights),
            "means": np.array([g.mean.toArray() for g in model.gaussians]),
            "covariances": np.array([g.cov.toArray() for g in model.gaussians]),
        }

    def fit_rdd(self, start: Start, max_iter: int, tol: float, seed: int) -> dict:
        """One ``pyspark.mllib.clustering.GaussianMixture.train`` fit (RDD API) from
        ``start`` (its ``initialModel``)."""
        from types import SimpleNamespace

        from pyspark.mllib.clustering import GaussianMixture
        from pyspark.mllib.linalg import DenseMatrix, Vectors
        from pyspark.mllib.stat.distribution import MultivariateGaussian

        covs = start.covariances()
        d = covs.shape[1]
        # train() reads only k, weights and gaussians of its initialModel.
        initial = SimpleNamespace(
            k=len(start.weights),
            weights=[float(w) for w in start.weights],
            gaussians=[
                MultivariateGaussian(Vectors.dense(m), DenseMatrix(d, d, c.ravel(order="F")))
                for m, c in zip(start.means, covs, strict=True)
            ],
        )
        last = self._last_job()
        t0 = time.perf_counter()
        model = GaussianMixture.train(
            self.rdd,
            len(start.weights),
            convergenceTol=tol,
            maxIterations=max_iter,
            seed=seed,
            initialModel=initial,
        )
        seconds = time.perf_counter() - t0
        iters = self._iteration_times(last, "treeAggregate at GaussianMixture")
        return {
            "seconds": seconds,
            "iteration_times": iters,
            "n_iter": len(iters),
            "weights": np.asarray(model.weights),
            "means": np.array([g.mu.toArray() for g in model.gaussians]),
            "covariances": np.array([g.sigma.toArray() for g in model.gaussians]),
        }

    def per_iteration(self, k: int, n_iter: int, repeats: int, seed: int) -> dict:
        """Per-iteration seconds of ``repeats`` fits of ``n_iter`` iterations (tol=0),
        after one warm-up fit for the JIT; each fit's first iteration is left out."""
        self.fit(k, n_iter, 0.0, seed)
        times, totals, fixed = [], [], []
        for _ in range(repeats):
            f = self.fit(k, n_iter, 0.0, seed)
            times += f["iteration_times"][1:]
            totals.append(f["seconds"])
            fixed.append(f["seconds"] - sum(f["iteration_times"]))
        return {
            "times": times,
            "fit_seconds": summary(totals),
            "fit_outside_iterations": summary(fixed),
            "n_iter": n_iter,
        }

    def stop(self):
        self.spark.stop()
