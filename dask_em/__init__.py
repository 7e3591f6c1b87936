"""dask-em: Gaussian mixture models fitted by one-pass distributed EM on Dask arrays."""

from ._em import CandidateState, EMProgress
from ._errors import NonFiniteError, StartError
from ._params import MixtureParams
from ._stats import SuffStats
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
    "StartError",
    "select_model",
    "__version__",
]
