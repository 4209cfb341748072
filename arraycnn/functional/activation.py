"""Element-wise and row-wise activations: ReLU, sigmoid, softmax, log-softmax, and inverted dropout."""

from __future__ import annotations

from typing import Any

import array_api_compat

from .._checks import check_float, check_int, check_number, namespace_of
from ..backend import random_uniform

Array = Any


def relu_forward(x: Array, keep_cache: bool = True) -> tuple[Array, Array | None]:
    """``y = max(x, 0)``, any shape; the cache is the mask ``x > 0`` (None with ``keep_cache=False``)."""
    xp = namespace_of(x=x)
    check_float(x, "x", xp)
    # --8<-- [start:relu_forward]
    return xp.maximum(x, 0.0), (x > 0 if keep_cache else None)
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


def sigmoid_forward(x: Array) -> tuple[Array, Array]:
    """``y = 1 / (1 + exp(-x))``, any shape, computed from ``e = exp(-|x|)`` so no ``exp`` overflows for any
    ``x``; the cache is ``y``."""
    xp = namespace_of(x=x)
    check_float(x, "x", xp)
    # --8<-- [start:sigmoid_forward]
    e = xp.exp(-xp.abs(x))                                 # in (0, 1]
    y = xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return y, y
    # --8<-- [end:sigmoid_forward]


def sigmoid_backward(dy: Array, cache: Array) -> Array:
    """``dx = dy · y (1 - y)`` with ``y = sigmoid(x)`` the cache; ``dy``, ``y`` and ``dx`` have ``x``'s shape."""
    if tuple(dy.shape) != tuple(cache.shape):
        raise ValueError(f"dy must have the input's shape {tuple(cache.shape)}, got {tuple(dy.shape)}")
    # --8<-- [start:sigmoid_backward]
    return dy * (cache * (1.0 - cache))
    # --8<-- [end:sigmoid_backward]


def check_drop_probability(p: Any) -> float:
    """``p`` as a float in ``[0, 1)``, else a ValueError naming it (dropout and its layer share this check)."""
    return check_number(p, "p", "a drop probability in [0, 1)", lambda v: 0.0 <= v < 1.0)


def dropout_forward(x: Array, p: float, seed: int = 0, counter: int = 0) -> tuple[Array, Array]:
    """Inverted dropout: ``y = x · m`` with ``m = [u >= p] / (1 - p)``, ``u ~ U[0, 1)`` drawn on ``x``'s device.

    Each unit is kept with probability ``1 - p`` and scaled so that ``E[y] = x``; evaluation mode skips the
    op (the identity). ``u`` depends only on ``(seed, counter, x.shape)`` (:func:`arraycnn.backend.random_uniform`):
    a layer passes its run's seed and a per-call counter, so a resumed run draws the same masks. ``p`` is
    in ``[0, 1)``; the cache is the scaled mask ``m`` (x's shape and dtype).
    """
    xp = namespace_of(x=x)
    check_float(x, "x", xp)
    check_drop_probability(p)
    check_int(seed, "seed", 0)
    check_int(counter, "counter", 0)
    # --8<-- [start:dropout_forward]
    u = random_uniform(tuple(x.shape), seed, counter, like=x)
    mask = xp.astype(u >= p, x.dtype) * (1.0 / (1.0 - p))
    return x * mask, mask
    # --8<-- [end:dropout_forward]


def dropout_backward(dy: Array, cache: Array) -> Array:
    """``dx = dy · m``: the forward's own scaled mask ``m`` (the cache), so exactly the kept units get gradient."""
    if tuple(dy.shape) != tuple(cache.shape):
        raise ValueError(f"dy must have the input's shape {tuple(cache.shape)}, got {tuple(dy.shape)}")
    # --8<-- [start:dropout_backward]
    return dy * cache
    # --8<-- [end:dropout_backward]
