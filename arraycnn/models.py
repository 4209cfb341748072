"""Ready-made networks."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .backend import get_namespace, host_rng, resolve_dtype
from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .model import Sequential

__all__ = ["tutorial_cnn"]


def tutorial_cnn(
    backend: str | ModuleType = "numpy",
    dtype: str | Any = "float32",
    seed: int = 0,
    conv_method: str = "im2col",
    init: str = "he",
) -> Sequential:
    """The TensorFlow tutorial's network for ``x (N, 28, 28, 1)`` -> ``logits (N, 10)``::

        Conv 10@3x3 -> ReLU -> MaxPool 3x3/1 -> Conv 10@3x3 -> ReLU -> MaxPool 3x3/1   28 -> 26 -> 24 -> 22 -> 20
        -> Flatten (4000) -> Dense 50 -> ReLU -> Dense 10                               (softmax is in the loss)

    Parameters are drawn in layer order from one generator seeded with ``seed``, so every backend starts
    from the same numbers; ``init`` is ``"he"`` or the tutorial's ``N(0, 0.01²)`` (``"tutorial"``).
    ``conv_method`` is ``"im2col"`` or the tutorial's ``"toeplitz"``.
    201,570 parameters in all, 200,050 of them in the Dense 4000 -> 50.
    """
    xp = get_namespace(backend)
    dt = resolve_dtype(xp, dtype)
    rng = host_rng(seed)
    common = {"init": init, "rng": rng, "backend": xp, "dtype": dt}
    conv = {"method": conv_method, **common}
    return Sequential([
        Conv2D(1, 10, 3, **conv), ReLU(), MaxPool2D(3, stride=1),
        Conv2D(10, 10, 3, **conv), ReLU(), MaxPool2D(3, stride=1),
        Flatten(),
        Dense(20 * 20 * 10, 50, **common), ReLU(),
        Dense(50, 10, **common),
    ])
