"""Synthetic data: rows drawn block by block from a seeded Gaussian mixture."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from dask_em.data.base import Source
from dask_em.data.spec import SyntheticSpec

__all__ = ["SyntheticSource", "synthetic_array", "synthetic_mixture"]


def synthetic_mixture(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture a synthetic spec describes: ``(weights, means, covariances)``.

    A generator spec is deterministic in ``seed``: weights from a Dirichlet(5) draw, random
    rotations with standard deviations in [0.3, 1], and means placed at least
    ``separation`` apart (in units of the largest standard deviation, i.e. 1).
    """
    if spec.means is not None:
        means = np.asarray(spec.means, dtype=float)
        k, d = means.shape
        weights = np.full(k, 1.0 / k) if spec.weights is None else np.asarray(spec.weights)
        weights = weights / weights.sum()
        covs = (
            np.stack([np.eye(d)] * k)
            if spec.covariances is None
            else np.asarray(spec.covariances, dtype=float)
        )
        return weights, means, covs
    k, d = spec.n_components, spec.n_features
    rng = np.random.default_rng([spec.seed, 0x6D6978])  # a stream apart from the blocks'
    weights = rng.dirichlet(np.full(k, 5.0))
    covs = np.empty((k, d, d))
    for i in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        s = rng.uniform(0.3, 1.0, size=d)
        covs[i] = (q * s**2) @ q.T
    # grow the box until the means fit at the requested spacing (rejection sampling)
    half = spec.separation * max(1.0, k ** (1.0 / d))
    means = np.empty((0, d))
    while len(means) < k:
        for _ in range(200 * k):
            m = rng.uniform(-half, half, size=d)
            if len(means) == 0 or np.min(np.linalg.norm(means - m, axis=1)) >= spec.separation:
                means = np.vstack([means, m])
                if len(means) == k:
                    break
        else:
            half *= 1.5
    return weights, means, covs


def _synthetic_block(weights, means, chols, seed, row_chunks, dtype, block_id=None):
    """One block of synthetic rows, seeded by ``(seed, block index)``."""
    i = block_id[0]
    n = row_chunks[i]
    rng = np.random.default_rng([seed, i])
    labels = rng.choice(len(weights), size=n, p=weights)
    z = rng.standard_normal((n, means.shape[1]))
    out = np.empty((n, means.shape[1]), dtype=np.float64)
    for k in range(len(weights)):
        sel = labels == k
        out[sel] = means[k] + z[sel] @ chols[k].T
    return out.astype(dtype, copy=False)


def synthetic_array(spec: SyntheticSpec, chunk_rows: int, dtype: str = "float64"):
    """A lazy dask array of ``spec.n_samples`` rows drawn from the spec's mixture.

    Each block is generated on the worker from ``(seed, block index)``: nothing is stored,
    and the same ``(spec, chunk_rows)`` always gives the same numbers.
    """
    import dask.array as da
    from dask.base import tokenize

    weights, means, covs = synthetic_mixture(spec)
    chols = np.linalg.cholesky(covs)
    n, d = spec.n_samples, means.shape[1]
    rows = (chunk_rows,) * (n // chunk_rows) + ((n % chunk_rows,) if n % chunk_rows else ())
    name = "synthetic-gmm-" + tokenize(weights, means, covs, spec.seed, rows, dtype)
    return da.map_blocks(
        _synthetic_block,
        weights,
        means,
        chols,
        spec.seed,
        rows,
        dtype,
        chunks=(rows, (d,)),
        dtype=np.dtype(dtype),
        name=name,
        meta=np.empty((0, 0), dtype=dtype),
    )


class SyntheticSource(Source):
    """``source: synthetic``: rows drawn from the mixture ``synthetic`` describes."""

    source: Literal["synthetic"]
    takes: ClassVar[frozenset[str]] = frozenset({"synthetic"})

    @classmethod
    def _check_weights(cls, value: str, fields: dict) -> None:
        raise ValueError(
            "does not apply to source 'synthetic' (its rows are unweighted draws); "
            "remove data.weights"
        )

    def _check_fields(self) -> None:
        if self.synthetic is None:
            raise ValueError("source 'synthetic' needs a 'synthetic' spec")
        if self.path is not None:
            raise ValueError("source 'synthetic' takes no 'path'")
        self._check_unused()

    def read(self):
        return synthetic_array(self.synthetic, self.chunk_rows, self.dtype)

    def load(self):
        return self.read()

    def check(self) -> tuple:
        return self.read().shape
