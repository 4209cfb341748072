"""The fully connected layer (the tutorial's ``fully_connected``), forward and backward.

``x (N, ...)`` is flattened row-major to ``X (N, D)``; ``w (K, D)`` or the tutorial's ``(K, KH, KW, C)``
flattened to ``W (K, D)``: ``y = X Wᵀ + b``; ``dX = dY W``, ``dW = dYᵀ X``, ``db = Σ_n dY``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import check_float, check_same_dtype, namespace_of

Array = Any


@dataclass(frozen=True)
class DenseCache:
    """The flattened input and weights, and the shapes to restore."""

    x2: Array
    w2: Array
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    has_bias: bool


def dense_forward(x: Array, w: Array, b: Array | None = None) -> tuple[Array, DenseCache]:
    """``y (N, K) = flatten(x) (N, D) @ flatten(w)ᵀ (D, K) + b (K,)``."""
    xp = namespace_of(x=x, w=w, b=b)
    check_float(x, "x", xp)
    check_float(w, "w", xp)
    if x.ndim < 2:
        raise ValueError(f"x must be (N, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    if w.ndim < 2:
        raise ValueError(f"w must be (K, D) or (K, KH, KW, C), got shape {tuple(w.shape)}")
    d = math.prod(x.shape[1:])
    if math.prod(w.shape[1:]) != d:
        raise ValueError(f"w must have D = {d} inputs per unit for x of shape {tuple(x.shape)} "
                         f"(w (K, D) or (K, {', '.join(map(str, x.shape[1:]))})), got {tuple(w.shape)}")
    if b is not None:
        check_float(b, "b", xp)
        if tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"b must have shape (K,) = ({w.shape[0]},), got {tuple(b.shape)}")
    check_same_dtype(xp, x=x, w=w, b=b)
    # --8<-- [start:forward]
    x2 = xp.reshape(x, (x.shape[0], d))
    w2 = xp.reshape(w, (w.shape[0], d))
    y = x2 @ w2.T
    if b is not None:
        y = y + b
    # --8<-- [end:forward]
    return y, DenseCache(x2, w2, tuple(x.shape), tuple(w.shape), b is not None)


def dense_backward(dy: Array, cache: DenseCache) -> tuple[Array, Array, Array | None]:
    """``dx = reshape(dY W)``, ``dw = reshape(dYᵀ X)``, ``db = Σ_n dY`` for ``dy (N, K)``."""
    xp = array_api_compat.array_namespace(dy)
    expected = (cache.x_shape[0], cache.w_shape[0])
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the output's shape (N, K) = {expected}, got {tuple(dy.shape)}")
    # --8<-- [start:backward]
    dx = xp.reshape(dy @ cache.w2, cache.x_shape)
    dw = xp.reshape(dy.T @ cache.x2, cache.w_shape)
    db = xp.sum(dy, axis=0) if cache.has_bias else None
    # --8<-- [end:backward]
    return dx, dw, db
