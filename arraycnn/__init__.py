"""arraycnn: a convolutional-network engine whose every backward pass is derived by hand.

Every op is written once against the Array API, so the same code runs on NumPy (CPU), CuPy (GPU)
and any Array API library; the namespace is taken from the arrays themselves.
"""

from . import backend, functional
from .gradcheck import GradcheckError, GradcheckResult, gradcheck

__version__ = "0.1.0"

__all__ = ["GradcheckError", "GradcheckResult", "__version__", "backend", "functional", "gradcheck"]
