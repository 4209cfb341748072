"""arraycnn: a convolutional-network engine whose every backward pass is derived by hand.

Every op is written once against the Array API, so the same code runs on NumPy (CPU), CuPy (GPU)
and any Array API library; the namespace is taken from the arrays themselves.
"""

from . import backend, checkpoint, data, functional, layers, model, models, optim, train
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .model import Sequential
from .train import TrainingDivergedError, fit

__version__ = "0.1.0"

__all__ = [
    "GradcheckError",
    "GradcheckResult",
    "Sequential",
    "TrainingDivergedError",
    "__version__",
    "backend",
    "checkpoint",
    "data",
    "fit",
    "functional",
    "gradcheck",
    "layers",
    "model",
    "models",
    "optim",
    "train",
]
