"""Stateful layers: each holds its parameters and gradients and calls one functional forward/backward pair.

A layer is a thin shell around :mod:`arraycnn.functional`; no math is re-implemented here::

    y = layer.forward(x)           # keeps the functional cache (only when train=True)
    dx = layer.backward(dy)        # fills layer.grads, then drops the cache

``layer.params`` and ``layer.grads`` are ``dict[str, Array]`` with the same keys (``"w"``, ``"b"`` where
the layer has them). Parameters are drawn on the host by a seeded NumPy generator and moved to the
backend once (:func:`arraycnn.backend.random_normal`), so every backend starts from identical numbers:
He initialisation ``N(0, 2 / fan_in)`` by default, the tutorial's ``N(0, 0.01²)`` as ``init="tutorial"``;
biases start at zero. Layout is channels-last: ``x (N, H, W, C)``, filters ``w (K, KH, KW, C)``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from . import functional as F
from ._checks import check_int, int_pair
from .backend import Array, get_namespace, host_rng, random_normal, resolve_dtype
from .functional.conv import METHODS as CONV_METHODS

INITS = ("he", "tutorial")
TUTORIAL_STD = 0.01

__all__ = ["INITS", "AvgPool2D", "Conv2D", "Dense", "Flatten", "Layer", "MaxPool2D", "ReLU"]


def init_std(init: str, fan_in: int) -> float:
    """Standard deviation of the initial weights: ``sqrt(2 / fan_in)`` (He) or ``0.01`` (the tutorial)."""
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "tutorial":
        return TUTORIAL_STD
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


class Layer:
    """Base class: ``params``/``grads`` dicts and the cache bookkeeping around one functional pair.

    Subclasses implement ``_forward(x) -> (y, cache)``, ``_backward(dy, cache, input_grad) -> (dx, grads)`` and
    ``config() -> dict`` (a JSON-able description, used to check that a checkpoint fits the network).
    """

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._cache: Any = None

    def forward(self, x: Array, train: bool = True) -> Array:
        """The layer's output for ``x``; with ``train=True`` the cache for :meth:`backward` is kept."""
        y, cache = self._forward(x)
        self._cache = cache if train else None
        return y

    def backward(self, dy: Array, input_grad: bool = True) -> Array | None:
        """``dx = dL/dx`` for ``dy = dL/dy``; stores ``dL/dparam`` in ``grads`` and drops the cache.

        ``input_grad=False`` returns None instead of ``dx`` (a network's first layer; a convolution then
        skips computing it).
        """
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward(x, train=True) before it")
        cache, self._cache = self._cache, None
        dx, self.grads = self._backward(dy, cache, input_grad)
        return dx if input_grad else None

    def config(self) -> dict[str, Any]:
        """The layer's type and hyper-parameters as a JSON-able dict."""
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def _forward(self, x: Array) -> tuple[Array, Any]:
        raise NotImplementedError

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        raise NotImplementedError


class _ParamLayer(Layer):
    """A layer with weights ``w`` (He or tutorial init) and a zero bias ``b (K,)``."""

    def __init__(
        self, w_shape: tuple[int, ...], fan_in: int, init: str, rng: int | np.random.Generator,
        backend: str | ModuleType, dtype: str | Any,
    ) -> None:
        super().__init__()
        xp = get_namespace(backend)
        dt = resolve_dtype(xp, dtype)
        std = init_std(init, fan_in)
        self.params = {
            "w": random_normal(host_rng(rng), w_shape, std, xp, dt),
            "b": xp.zeros((w_shape[0],), dtype=dt),
        }


class Conv2D(_ParamLayer):
    """Convolution ``x (N, H, W, C) -> y (N, OH, OW, K)`` with ``w (K, KH, KW, C)`` and ``b (K,)``.

    ``fan_in = KH * KW * C``; ``method`` is ``"im2col"`` or the tutorial's ``"toeplitz"``.
    """

    def __init__(
        self, in_channels: int, filters: int, kernel_size: int | tuple[int, int], *, stride: Any = 1,
        padding: Any = 0, method: str = "im2col", init: str = "he", rng: int | np.random.Generator = 0,
        backend: str | ModuleType = "numpy", dtype: str | Any = "float32",
    ) -> None:
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.filters = check_int(filters, "filters", 1)
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)
        if method not in CONV_METHODS:
            raise ValueError(f"method must be one of {CONV_METHODS}, got {method!r}")
        self.method = method
        kh, kw = self.kernel_size
        super().__init__((self.filters, kh, kw, self.in_channels), kh * kw * self.in_channels,
                         init, rng, backend, dtype)

    def config(self) -> dict[str, Any]:
        return {"type": "Conv2D", "in_channels": self.in_channels, "filters": self.filters,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    def _forward(self, x: Array) -> tuple[Array, Any]:
        return F.conv2d_forward(x, self.params["w"], self.params["b"], self.stride, self.padding, self.method)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        dx, dw, db = F.conv2d_backward(dy, cache, input_grad=input_grad)
        return dx, {"w": dw, "b": db}


class Dense(_ParamLayer):
    """Fully connected ``x (N, ...) -> y (N, K)`` with ``w (K, D)``, ``D = in_features``, and ``b (K,)``.

    The input is flattened row-major, so a ``(N, H, W, C)`` input needs ``in_features = H * W * C``.
    The tutorial wrote the same weights as ``(K, H, W, C)``; ``w.reshape(K, -1)`` converts them.
    """

    def __init__(
        self, in_features: int, units: int, *, init: str = "he", rng: int | np.random.Generator = 0,
        backend: str | ModuleType = "numpy", dtype: str | Any = "float32",
    ) -> None:
        self.in_features = check_int(in_features, "in_features", 1)
        self.units = check_int(units, "units", 1)
        super().__init__((self.units, self.in_features), self.in_features, init, rng, backend, dtype)

    def config(self) -> dict[str, Any]:
        return {"type": "Dense", "in_features": self.in_features, "units": self.units}

    def _forward(self, x: Array) -> tuple[Array, Any]:
        return F.dense_forward(x, self.params["w"], self.params["b"])

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        dx, dw, db = F.dense_backward(dy, cache)
        return dx, {"w": dw, "b": db}


class MaxPool2D(Layer):
    """Max pooling ``x (N, H, W, C) -> y (N, OH, OW, C)``; ``stride`` defaults to ``size``."""

    def __init__(self, size: int | tuple[int, int], stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        self.size = int_pair(size, "size", 1)
        self.stride = self.size if stride is None else int_pair(stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "size": list(self.size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def _forward(self, x: Array) -> tuple[Array, Any]:
        return F.maxpool2d_forward(x, self.size, self.stride, self.padding)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.maxpool2d_backward(dy, cache), {}


class AvgPool2D(MaxPool2D):
    """Average pooling ``x (N, H, W, C) -> y (N, OH, OW, C)``; ``count_include_pad`` as the functional op."""

    def __init__(
        self, size: int | tuple[int, int], stride: Any = None, padding: Any = 0, count_include_pad: bool = True
    ) -> None:
        super().__init__(size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def config(self) -> dict[str, Any]:
        return super().config() | {"count_include_pad": self.count_include_pad}

    def _forward(self, x: Array) -> tuple[Array, Any]:
        return F.avgpool2d_forward(x, self.size, self.stride, self.padding, self.count_include_pad)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.avgpool2d_backward(dy, cache), {}


class ReLU(Layer):
    """``y = max(x, 0)``, any shape."""

    def _forward(self, x: Array) -> tuple[Array, Any]:
        return F.relu_forward(x)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.relu_backward(dy, cache), {}


class Flatten(Layer):
    """``x (N, ...) -> y (N, D)`` row-major (a reshape; ``dx`` is ``dy`` reshaped back)."""

    def _forward(self, x: Array) -> tuple[Array, Any]:
        if x.ndim < 1:
            raise ValueError("x must be (N, ...), got a 0-d array")
        xp = array_api_compat.array_namespace(x)
        return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:]))), tuple(x.shape)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        xp = array_api_compat.array_namespace(dy)
        return xp.reshape(dy, cache), {}
