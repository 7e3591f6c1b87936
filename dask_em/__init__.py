"""dask-em: Gaussian mixture models (maximum-likelihood and variational Bayesian) fitted
by one-pass distributed EM on Dask arrays."""

from dask_em.engine._em import CandidateState, EMProgress
from dask_em.engine._errors import NonFiniteError, ParameterValueError, StartError
from dask_em.engine._params import MixtureParams
from dask_em.engine._stats import SuffStats
from dask_em.mixture._bayesian import BayesianGaussianMixture
from dask_em.mixture._gaussian import ConvergenceWarning, GaussianMixture
from dask_em.mixture._selection import select_model

__version__ = "0.1.0"

__all__ = [
    "BayesianGaussianMixture",
    "CandidateState",
    "ConvergenceWarning",
    "EMProgress",
    "GaussianMixture",
    "MixtureParams",
    "NonFiniteError",
    "ParameterValueError",
    "SuffStats",
    "StartError",
    "select_model",
    "__version__",
]
