"""The estimators (scikit-learn's API), their input validation and model selection.

Imports the engine and the initialisation layer, never ``jobs``.
"""

from dask_em.mixture._bayesian import BayesianGaussianMixture
from dask_em.mixture._gaussian import ConvergenceWarning, GaussianMixture
from dask_em.mixture._selection import SelectionProgress, SelectionResult, select_model

__all__ = [
    "BayesianGaussianMixture",
    "ConvergenceWarning",
    "GaussianMixture",
    "SelectionProgress",
    "SelectionResult",
    "select_model",
]
