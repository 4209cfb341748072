"""Stateful layers: each holds its parameters and gradients and calls one functional forward/backward pair.

A layer is a thin shell around :mod:`arraycnn.functional`; no math is re-implemented here::

    y = layer.forward(x)           # keeps the functional cache (only when train=True)
    dx = layer.backward(dy)        # fills layer.grads, then drops the cache

``layer.params`` and ``layer.grads`` are ``dict[str, Array]`` with the same keys (``"w"``, ``"b"`` where
the layer has them); ``layer.state()`` holds what a checkpoint keeps besides them (running statistics).

The per-example contract: a layer whose TRAINING forward mixes the rows of a batch (batch statistics, one
random mask drawn for the whole batch) sets ``mixes_rows = True``. :mod:`arraycnn.execution` splits a
batch into row chunks or threads only when no layer does, because only then is the sum of the parts'
gradients the whole batch's gradient. In evaluation mode every layer treats rows independently.

Parameters are drawn on the host by a seeded NumPy generator and moved to the
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
from ._checks import check_int, check_number, int_pair
from .backend import Array, get_namespace, host_rng, random_normal, resolve_device, resolve_dtype, to_device
from .functional.activation import check_drop_probability
from .functional.conv import METHODS as CONV_METHODS

INITS = ("he", "tutorial")
TUTORIAL_STD = 0.01

__all__ = ["INITS", "AvgPool2D", "BatchNorm", "Conv2D", "Conv2DTranspose", "Dense", "Dropout", "Flatten", "Layer",
           "MaxPool2D", "ReLU", "Sigmoid"]


def init_std(init: str, fan_in: int) -> float:
    """Standard deviation of the initial weights: ``sqrt(2 / fan_in)`` (He) or ``0.01`` (the tutorial)."""
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "tutorial":
        return TUTORIAL_STD
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


class Layer:
    """Base class: ``params``/``grads`` dicts and the cache bookkeeping around one functional pair.

    Subclasses implement ``_forward(x, train) -> (y, cache)``, ``_backward(dy, cache, input_grad) -> (dx, grads)``
    and ``config() -> dict`` (a JSON-able description, used to check that a checkpoint fits the network);
    a layer with non-trained state overrides :meth:`state` and :meth:`load_state`.
    """

    mixes_rows = False  # does the training forward mix the rows of a batch? (see the module docstring)

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self._cache: Any = None

    def forward(self, x: Array, train: bool = True) -> Array:
        """The layer's output for ``x`` in training (``train=True``: the cache for :meth:`backward` is kept)
        or evaluation mode (no cache: a layer may skip its backward bookkeeping)."""
        y, cache = self._forward(x, train)
        self._cache = cache if train else None
        return y

    def state(self) -> dict[str, Array]:
        """Non-trained arrays a checkpoint keeps (e.g. running statistics); none by default."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state` from host arrays (checked by the caller to have the same keys and shapes)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")

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

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        raise NotImplementedError

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        raise NotImplementedError


class _ParamLayer(Layer):
    """A layer with weights ``w`` (He or tutorial init) and a zero bias ``b (K,)``."""

    def __init__(
        self, w_shape: tuple[int, ...], fan_in: int, init: str, rng: int | np.random.Generator,
        backend: str | ModuleType, dtype: str | Any, device: Any, bias_size: int | None = None,
    ) -> None:
        super().__init__()
        xp = get_namespace(backend)
        dt, dev = resolve_dtype(xp, dtype), resolve_device(xp, device)
        std = init_std(init, fan_in)
        self.params = {
            "w": random_normal(host_rng(rng), w_shape, std, xp, dt, dev),
            "b": xp.zeros((w_shape[0] if bias_size is None else bias_size,), dtype=dt, device=dev),
        }

    def _conv_geometry(self, in_channels: int, filters: int, kernel_size: Any, stride: Any, padding: Any) -> None:
        """Check and keep a convolution's ``in_channels``, ``filters``, ``kernel_size``, ``stride``, ``padding``."""
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.filters = check_int(filters, "filters", 1)
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)

    def _conv_config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "in_channels": self.in_channels, "filters": self.filters,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}


class Conv2D(_ParamLayer):
    """Convolution ``x (N, H, W, C) -> y (N, OH, OW, K)`` with ``w (K, KH, KW, C)`` and ``b (K,)``.

    ``fan_in = KH * KW * C``; ``method`` is ``"im2col"`` or the tutorial's ``"toeplitz"``.
    """

    def __init__(
        self, in_channels: int, filters: int, kernel_size: int | tuple[int, int], *, stride: Any = 1,
        padding: Any = 0, method: str = "im2col", init: str = "he", rng: int | np.random.Generator = 0,
        backend: str | ModuleType = "numpy", dtype: str | Any = "float32", device: Any = None,
    ) -> None:
        self._conv_geometry(in_channels, filters, kernel_size, stride, padding)
        if method not in CONV_METHODS:
            raise ValueError(f"method must be one of {CONV_METHODS}, got {method!r}")
        self.method = method
        kh, kw = self.kernel_size
        super().__init__((self.filters, kh, kw, self.in_channels), kh * kw * self.in_channels,
                         init, rng, backend, dtype, device)

    def config(self) -> dict[str, Any]:
        return self._conv_config() | {"method": self.method}

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.conv2d_forward(x, self.params["w"], self.params["b"], self.stride, self.padding, self.method,
                                keep_cache=train)

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
        backend: str | ModuleType = "numpy", dtype: str | Any = "float32", device: Any = None,
    ) -> None:
        self.in_features = check_int(in_features, "in_features", 1)
        self.units = check_int(units, "units", 1)
        super().__init__((self.units, self.in_features), self.in_features, init, rng, backend, dtype, device)

    def config(self) -> dict[str, Any]:
        return {"type": "Dense", "in_features": self.in_features, "units": self.units}

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.dense_forward(x, self.params["w"], self.params["b"])

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        dx, dw, db = F.dense_backward(dy, cache)
        return dx, {"w": dw, "b": db}


class _Pool2D(Layer):
    """A pooling window: ``size``, ``stride`` (defaults to ``size``) and ``padding``, each an int or a pair."""

    def __init__(self, size: int | tuple[int, int], stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        self.size = int_pair(size, "size", 1)
        self.stride = self.size if stride is None else int_pair(stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "size": list(self.size), "stride": list(self.stride),
                "padding": list(self.padding)}


class MaxPool2D(_Pool2D):
    """Max pooling ``x (N, H, W, C) -> y (N, OH, OW, C)``; ``stride`` defaults to ``size``."""

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.maxpool2d_forward(x, self.size, self.stride, self.padding, keep_cache=train)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.maxpool2d_backward(dy, cache), {}


class AvgPool2D(_Pool2D):
    """Average pooling ``x (N, H, W, C) -> y (N, OH, OW, C)``; ``count_include_pad`` as the functional op."""

    def __init__(
        self, size: int | tuple[int, int], stride: Any = None, padding: Any = 0, count_include_pad: bool = True
    ) -> None:
        super().__init__(size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def config(self) -> dict[str, Any]:
        return super().config() | {"count_include_pad": self.count_include_pad}

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.avgpool2d_forward(x, self.size, self.stride, self.padding, self.count_include_pad)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.avgpool2d_backward(dy, cache), {}


class ReLU(Layer):
    """``y = max(x, 0)``, any shape."""

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.relu_forward(x, keep_cache=train)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.relu_backward(dy, cache), {}


class Flatten(Layer):
    """``x (N, ...) -> y (N, D)`` row-major (a reshape; ``dx`` is ``dy`` reshaped back)."""

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        if x.ndim < 1:
            raise ValueError("x must be (N, ...), got a 0-d array")
        xp = array_api_compat.array_namespace(x)
        return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:]))), tuple(x.shape)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        xp = array_api_compat.array_namespace(dy)
        return xp.reshape(dy, cache), {}


# ---------------------------------------------- transposed convolution, batch normalisation, dropout, sigmoid


class Conv2DTranspose(_ParamLayer):
    """Transposed convolution ``x (N, H, W, K) -> y (N, OH, OW, C)``, ``OH = (H - 1)*sh - 2*ph + KH + oph``.

    ``w (K, KH, KW, C)`` is laid out as the convolution it transposes (``K = in_channels``, ``C = filters``)
    and ``b (C,)``. He initialisation uses ``fan_in = KH * KW * C`` as PyTorch's ``ConvTranspose2d`` does.
    """

    def __init__(
        self, in_channels: int, filters: int, kernel_size: int | tuple[int, int], *, stride: Any = 1,
        padding: Any = 0, output_padding: Any = 0, init: str = "he", rng: int | np.random.Generator = 0,
        backend: str | ModuleType = "numpy", dtype: str | Any = "float32", device: Any = None,
    ) -> None:
        self._conv_geometry(in_channels, filters, kernel_size, stride, padding)
        self.output_padding = int_pair(output_padding, "output_padding", 0)
        if any(op >= s for op, s in zip(self.output_padding, self.stride, strict=True)):
            raise ValueError(f"output_padding must be smaller than the stride {self.stride} on each axis, "
                             f"got {self.output_padding}")
        kh, kw = self.kernel_size
        super().__init__((self.in_channels, kh, kw, self.filters), kh * kw * self.filters,
                         init, rng, backend, dtype, device, bias_size=self.filters)

    def config(self) -> dict[str, Any]:
        return self._conv_config() | {"output_padding": list(self.output_padding)}

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.conv2d_transpose_forward(x, self.params["w"], self.params["b"], self.stride, self.padding,
                                          self.output_padding)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        dx, dw, db = F.conv2d_transpose_backward(dy, cache, input_grad=input_grad)
        return dx, {"w": dw, "b": db}


class BatchNorm(Layer):
    """Batch normalisation over every axis but the last of ``x (N, ..., C)``; ``gamma`` (ones), ``beta`` (zeros).

    Training: the batch's mean and biased variance normalise ``x``, and the running statistics follow
    PyTorch's ``BatchNorm2d``: ``running = (1 - momentum)*running + momentum*batch``, the variance taken
    UNBIASED (``· M/(M - 1)``, ``M = N*H*W`` values per channel). Evaluation: the running statistics
    normalise (:func:`~arraycnn.functional.batch_norm_inference`). ``state()`` holds ``running_mean`` and
    ``running_var`` (zeros and ones at first), saved in checkpoints. Both are updated and loaded IN PLACE, so
    the shallow replicas that :mod:`arraycnn.execution` predicts with always see the current values.
    """

    mixes_rows = True   # the batch statistics couple every row of the batch

    def __init__(
        self, channels: int, momentum: float = 0.1, eps: float = 1e-5, *, backend: str | ModuleType = "numpy",
        dtype: str | Any = "float32", device: Any = None,
    ) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels", 1)
        self.momentum = check_number(momentum, "momentum", "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        self.eps = check_number(eps, "eps", "a positive number", lambda v: v > 0)
        xp = get_namespace(backend)
        dt, dev = resolve_dtype(xp, dtype), resolve_device(xp, device)
        self.params = {"gamma": xp.ones((self.channels,), dtype=dt, device=dev),
                       "beta": xp.zeros((self.channels,), dtype=dt, device=dev)}
        self.running_mean = xp.zeros((self.channels,), dtype=dt, device=dev)
        self.running_var = xp.ones((self.channels,), dtype=dt, device=dev)

    def config(self) -> dict[str, Any]:
        return {"type": "BatchNorm", "channels": self.channels, "momentum": self.momentum, "eps": self.eps}

    def state(self) -> dict[str, Array]:
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        like = self.running_mean
        xp, dev = array_api_compat.array_namespace(like), array_api_compat.device(like)
        self.running_mean[...] = to_device(state["running_mean"], xp, like.dtype, dev)
        self.running_var[...] = to_device(state["running_var"], xp, like.dtype, dev)

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not train:
            return F.batch_norm_inference(x, gamma, beta, self.running_mean, self.running_var, self.eps), None
        m = math.prod(x.shape[:-1])
        if m < 2:
            raise ValueError(f"BatchNorm in training needs more than one value per channel, got x of shape "
                             f"{tuple(x.shape)}")
        y, cache = F.batch_norm_forward(x, gamma, beta, self.eps)
        # --8<-- [start:running_stats]
        mom = self.momentum
        self.running_mean[...] = (1.0 - mom) * self.running_mean + mom * cache.mean
        self.running_var[...] = (1.0 - mom) * self.running_var + mom * (m / (m - 1)) * cache.var
        # --8<-- [end:running_stats]
        return y, cache

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
        return dx, {"gamma": dgamma, "beta": dbeta}


class Dropout(Layer):
    """Inverted dropout in training (``y = x · [u >= p] / (1 - p)``), the identity in evaluation; any shape.

    ``rng`` (an int or a NumPy Generator, as the parameter layers take) gives the layer's seed, its first
    draw; the ``counter``-th training forward draws its mask on the device from the key ``(seed, counter)``
    (:func:`arraycnn.backend.random_uniform`). ``state()`` holds ``seed`` and ``counter``, so a resumed run
    draws the same masks as an uninterrupted one. The backward reuses the forward's mask.
    """

    mixes_rows = True   # one mask is drawn for the whole batch: row chunks would draw different masks

    def __init__(self, p: float, *, rng: int | np.random.Generator = 0) -> None:
        super().__init__()
        self.p = check_drop_probability(p)
        self.seed = int(host_rng(rng).integers(2**63))
        self.counter = 0

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}

    def state(self) -> dict[str, Array]:
        return {"seed": np.asarray(self.seed, np.int64), "counter": np.asarray(self.counter, np.int64)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.seed, self.counter = int(state["seed"]), int(state["counter"])

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        if not train:
            return x, None
        y, mask = F.dropout_forward(x, self.p, self.seed, self.counter)
        self.counter += 1
        return y, mask

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.dropout_backward(dy, cache), {}


class Sigmoid(Layer):
    """``y = 1 / (1 + exp(-x))``, any shape (stable for large ``|x|``)."""

    def _forward(self, x: Array, train: bool) -> tuple[Array, Any]:
        return F.sigmoid_forward(x)

    def _backward(self, dy: Array, cache: Any, input_grad: bool) -> tuple[Array | None, dict[str, Array]]:
        return F.sigmoid_backward(dy, cache), {}
