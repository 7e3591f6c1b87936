"""The recipe of a synthetic data set: a seeded Gaussian mixture."""

from __future__ import annotations

import numpy as np
from pydantic import model_validator

from dask_em._schema import FiniteFloat, Model, NonNegInt, PosFloat, PosInt

__all__ = ["SyntheticSpec"]


class SyntheticSpec(Model):
    """A seeded Gaussian mixture to draw data from.

    Either give the mixture explicitly (``means``, optionally ``weights`` and full
    ``covariances``) or let a generator make one from ``n_features``, ``n_components``,
    ``separation`` (minimum distance between means, in units of the largest component
    standard deviation) and ``seed``.
    """

    n_samples: PosInt
    n_features: PosInt | None = None
    n_components: PosInt | None = None
    separation: PosFloat = 4.0
    seed: NonNegInt = 0
    weights: list[FiniteFloat] | None = None
    means: list[list[FiniteFloat]] | None = None
    covariances: list[list[list[FiniteFloat]]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> SyntheticSpec:
        if self.means is None:
            if self.weights is not None or self.covariances is not None:
                raise ValueError("'weights' and 'covariances' need 'means' too")
            if self.n_features is None or self.n_components is None:
                raise ValueError("give 'n_features' and 'n_components', or explicit 'means'")
            return self
        means = np.asarray(self.means, dtype=float)
        if means.ndim != 2 or means.size == 0:
            raise ValueError("'means' must be a non-empty list of equal-length rows")
        k, d = means.shape
        for name, value in (("n_components", self.n_components), ("n_features", self.n_features)):
            expected = k if name == "n_components" else d
            if value is not None and value != expected:
                raise ValueError(f"'{name}' is {value} but 'means' has shape {means.shape}")
        self.n_components, self.n_features = k, d
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=float)
            if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-6):
                raise ValueError(f"'weights' must be {k} non-negative numbers summing to 1")
        if self.covariances is not None:
            try:
                c = np.asarray(self.covariances, dtype=float)
            except ValueError:
                raise ValueError("'covariances' must be a list of square matrices") from None
            if c.shape != (k, d, d):
                raise ValueError(f"'covariances' must have shape ({k}, {d}, {d}), got {c.shape}")
            for i, ci in enumerate(c):
                if not np.allclose(ci, ci.T):
                    raise ValueError(f"covariance {i} is not symmetric")
                try:
                    np.linalg.cholesky(ci)
                except np.linalg.LinAlgError:
                    raise ValueError(f"covariance {i} is not positive definite") from None
        return self
