"""Element-wise and row-wise activations: ReLU, softmax, log-softmax."""

from __future__ import annotations

from typing import Any

import array_api_compat

from .._checks import check_float, namespace_of

Array = Any


def relu_forward(x: Array) -> tuple[Array, Array]:
    """``y = max(x, 0)``, any shape; the cache is the mask ``x > 0``."""
    xp = namespace_of(x=x)
    check_float(x, "x", xp)
    # --8<-- [start:relu_forward]
    return xp.maximum(x, 0.0), x > 0
    # --8<-- [end:relu_forward]


def relu_backward(dy: Array, cache: Array) -> Array:
    """``dx = dy · [x > 0]`` (the gradient at 0 is 0); ``dy``, the mask and ``dx`` have ``x``'s shape."""
    xp = array_api_compat.array_namespace(dy)
    if tuple(dy.shape) != tuple(cache.shape):
        raise ValueError(f"dy must have the input's shape {tuple(cache.shape)}, got {tuple(dy.shape)}")
    # --8<-- [start:relu_backward]
    return dy * xp.astype(cache, dy.dtype)
    # --8<-- [end:relu_backward]


def log_softmax(z: Array, axis: int = -1) -> Array:
    """``log p = (z - max z) - log Σ exp(z - max z)`` along ``axis`` of ``z (N, K)`` (or any shape); finite."""
    xp = namespace_of(z=z)
    check_float(z, "z", xp)
    # --8<-- [start:log_softmax]
    shifted = z - xp.max(z, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    # --8<-- [end:log_softmax]


def softmax(z: Array, axis: int = -1) -> Array:
    """``p = exp(z - max z) / Σ exp(z - max z)`` along ``axis`` of ``z (N, K)`` (any shape; rows sum to 1)."""
    xp = namespace_of(z=z)
    check_float(z, "z", xp)
    # --8<-- [start:softmax]
    e = xp.exp(z - xp.max(z, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)
    # --8<-- [end:softmax]
