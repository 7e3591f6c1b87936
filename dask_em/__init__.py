"""dask-em: Gaussian mixture models fitted by one-pass distributed EM on Dask arrays."""

from ._em import CandidateState, EMProgress
from ._params import MixtureParams
from ._stats import NonFiniteError, SuffStats
from .mixture import ConvergenceWarning, GaussianMixture
from .selection import select_model

__version__ = "0.1.0"

__all__ = [
    "CandidateState",
    "ConvergenceWarning",
    "EMProgress",
    "GaussianMixture",
    "MixtureParams",
    "NonFiniteError",
    "SuffStats",
    "select_model",
    "__version__",
]
