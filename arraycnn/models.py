"""Ready-made networks."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .backend import get_namespace, host_rng, resolve_device, resolve_dtype
from .layers import BatchNorm, Conv2D, Conv2DTranspose, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sigmoid
from .model import Sequential

__all__ = ["conv_autoencoder", "tutorial_cnn", "vgg_digits"]


def tutorial_cnn(
    backend: str | ModuleType = "numpy",
    dtype: str | Any = "float32",
    seed: int = 0,
    conv_method: str = "im2col",
    init: str = "he",
    device: Any = None,
) -> Sequential:
    """The TensorFlow tutorial's network for ``x (N, 28, 28, 1)`` -> ``logits (N, 10)``::

        Conv 10@3x3 -> ReLU -> MaxPool 3x3/1 -> Conv 10@3x3 -> ReLU -> MaxPool 3x3/1   28 -> 26 -> 24 -> 22 -> 20
        -> Flatten (4000) -> Dense 50 -> ReLU -> Dense 10                               (softmax is in the loss)

    Parameters are drawn in layer order from one generator seeded with ``seed``, so every backend starts
    from the same numbers; ``init`` is ``"he"`` or the tutorial's ``N(0, 0.01²)`` (``"tutorial"``).
    ``conv_method`` is ``"im2col"`` or the tutorial's ``"toeplitz"``. ``device`` as
    :func:`arraycnn.backend.resolve_device` takes it (None: the library's default).
    201,570 parameters in all, 200,050 of them in the Dense 4000 -> 50.
    """
    xp = get_namespace(backend)
    dt = resolve_dtype(xp, dtype)
    rng = host_rng(seed)
    common = {"init": init, "rng": rng, "backend": xp, "dtype": dt, "device": resolve_device(xp, device)}
    conv = {"method": conv_method, **common}
    return Sequential([
        Conv2D(1, 10, 3, **conv), ReLU(), MaxPool2D(3, stride=1),
        Conv2D(10, 10, 3, **conv), ReLU(), MaxPool2D(3, stride=1),
        Flatten(),
        Dense(20 * 20 * 10, 50, **common), ReLU(),
        Dense(50, 10, **common),
    ])


def vgg_digits(
    backend: str | ModuleType = "numpy",
    dtype: str | Any = "float32",
    seed: int = 0,
    device: Any = None,
) -> Sequential:
    """A small VGG-style classifier for ``x (N, 28, 28, 1)`` -> ``logits (N, 10)``::

        (Conv 16@3x3 pad 1 -> BatchNorm -> ReLU) x2 -> MaxPool 2       28 -> 28 -> 14
        (Conv 32@3x3 pad 1 -> BatchNorm -> ReLU) x2 -> MaxPool 2       14 -> 14 -> 7
        -> Flatten (1568) -> Dense 128 -> ReLU -> Dropout 0.5 -> Dense 10   (softmax is in the loss)

    He-initialised weights, zero biases, BatchNorm ``gamma = 1, beta = 0``; the weights and the dropout
    masks' seed come, in layer order, from one generator seeded with ``seed``, and ``backend``, ``dtype`` and
    ``device`` place every array, as in :func:`tutorial_cnn`.
    BatchNorm mixes the rows of a batch, so a training step runs on the whole batch at once.
    218,682 parameters, 200,832 of them in the Dense 1568 -> 128.
    """
    common = _parameter_options(backend, dtype, seed, device)
    placement = {k: common[k] for k in ("backend", "dtype", "device")}

    def block(c_in: int, c_out: int) -> list:
        return [Conv2D(c_in, c_out, 3, padding=1, **common), BatchNorm(c_out, **placement), ReLU()]

    return Sequential([
        *block(1, 16), *block(16, 16), MaxPool2D(2),
        *block(16, 32), *block(32, 32), MaxPool2D(2),
        Flatten(),
        Dense(7 * 7 * 32, 128, **common), ReLU(), Dropout(0.5, rng=common["rng"]),
        Dense(128, 10, **common),
    ])


def conv_autoencoder(
    backend: str | ModuleType = "numpy",
    dtype: str | Any = "float32",
    seed: int = 0,
    device: Any = None,
) -> Sequential:
    """A convolutional autoencoder ``x (N, 28, 28, 1)`` in ``[0, 1]`` -> reconstruction ``(N, 28, 28, 1)``::

        Conv 16@3x3 stride 2 pad 1 -> ReLU                                    28 -> 14
        Conv 32@3x3 stride 2 pad 1 -> ReLU                                    14 -> 7   (the code: 7x7x32)
        Conv2DTranspose 16@3x3 stride 2 pad 1 output_padding 1 -> ReLU        7 -> 14
        Conv2DTranspose 1@3x3 stride 2 pad 1 output_padding 1 -> Sigmoid      14 -> 28

    trained with the mean squared error against its own input (``Sequential(loss="mean_squared_error")``).
    Weights are He-initialised from one generator seeded with ``seed``, in layer order, and ``backend``,
    ``dtype`` and ``device`` place every array, as in :func:`tutorial_cnn`. 9,569 parameters.
    """
    common = _parameter_options(backend, dtype, seed, device)
    up = {"stride": 2, "padding": 1, "output_padding": 1, **common}
    return Sequential([
        Conv2D(1, 16, 3, stride=2, padding=1, **common), ReLU(),
        Conv2D(16, 32, 3, stride=2, padding=1, **common), ReLU(),
        Conv2DTranspose(32, 16, 3, **up), ReLU(),
        Conv2DTranspose(16, 1, 3, **up), Sigmoid(),
    ], loss="mean_squared_error")


def _parameter_options(backend: str | ModuleType, dtype: str | Any, seed: int, device: Any) -> dict[str, Any]:
    """The keyword arguments every parameter layer of one network shares: one seeded generator, one placement."""
    xp = get_namespace(backend)
    return {"rng": host_rng(seed), "backend": xp, "dtype": resolve_dtype(xp, dtype),
            "device": resolve_device(xp, device)}
