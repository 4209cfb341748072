"""Batch normalisation over every axis but the last (``N, H, W`` of ``(N, H, W, C)``; ``N`` of ``(N, D)``).

With ``M`` the number of values per channel (``N*H*W``), per channel ``c``::

    mu = Σ x / M,   var = Σ (x - mu)² / M   (biased),   xhat = (x - mu) / sqrt(var + eps),   y = gamma xhat + beta

and the backward in its compact closed form (derived in docs/backprop.md)::

    dbeta = Σ dy,   dgamma = Σ dy xhat,   dx = gamma / (M sqrt(var + eps)) · (M dy - dbeta - xhat dgamma)

Both work on ``x`` viewed as ``(M, C)`` and take every per-channel sum as the matrix product ``1ᵀ a`` with a
row of ``M`` ones: one BLAS call instead of a NumPy reduction over the leading axes of a channels-last array
(forward on ``(32, 28, 28, 16)`` float32, one core: 7.0 ms with ``mean(axis=(0, 1, 2))``, 0.9 ms as ``1ᵀ x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import check_float, check_number, check_same_dtype, namespace_of

Array = Any


@dataclass(frozen=True)
class BatchNormCache:
    """The normalised input ``xhat`` (x's shape), ``1 / sqrt(var + eps)`` and ``gamma`` (both ``(C,)``), the
    row of ones ``(1, M)`` that sums over the batch, and the batch statistics ``mean``, ``var`` (``(C,)``,
    biased) that a layer folds into its running averages."""

    xhat: Array
    inv_std: Array
    gamma: Array
    ones: Array
    mean: Array
    var: Array


def _check(x: Array, gamma: Array, beta: Array, eps: float, **stats: Array) -> Any:
    xp = namespace_of(x=x, gamma=gamma, beta=beta, **stats)
    if x.ndim < 2:
        raise ValueError(f"x must be (N, ..., C) with at least 2 dimensions, got shape {tuple(x.shape)}")
    check_float(x, "x", xp)
    c = x.shape[-1]
    for name, a in {"gamma": gamma, "beta": beta, **stats}.items():
        check_float(a, name, xp)
        if tuple(a.shape) != (c,):
            raise ValueError(f"{name} must have shape (C,) = ({c},) for x of shape {tuple(x.shape)}, "
                             f"got {tuple(a.shape)}")
    check_same_dtype(xp, x=x, gamma=gamma, beta=beta, **stats)
    check_number(eps, "eps", "a positive number", lambda v: v > 0)
    return xp


def batch_norm_forward(x: Array, gamma: Array, beta: Array, eps: float = 1e-5) -> tuple[Array, BatchNormCache]:
    """Normalise ``x (N, ..., C)`` per channel with the batch's mean and biased variance, then scale and shift:
    ``y = gamma (x - mu) / sqrt(var + eps) + beta`` with ``gamma``, ``beta (C,)``; ``y`` has ``x``'s shape."""
    xp = _check(x, gamma, beta, eps)
    m, c = math.prod(x.shape[:-1]), x.shape[-1]
    if m == 0:
        raise ValueError(f"x must hold at least one value per channel, got shape {tuple(x.shape)}")
    ones = xp.ones((1, m), dtype=x.dtype, device=array_api_compat.device(x))
    # --8<-- [start:forward]
    x2 = xp.reshape(x, (m, c))                        # one row per value of each channel
    mean = (ones @ x2)[0, :] / m
    xc = x2 - mean
    var = (ones @ (xc * xc))[0, :] / m               # biased: divided by M
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = xc * inv_std
    y = xhat * gamma + beta
    # --8<-- [end:forward]
    shape = tuple(x.shape)
    return xp.reshape(y, shape), BatchNormCache(xp.reshape(xhat, shape), inv_std, gamma, ones, mean, var)


def batch_norm_backward(dy: Array, cache: BatchNormCache) -> tuple[Array, Array, Array]:
    """``dx = gamma/(M sqrt(var + eps)) · (M dy - Σ dy - xhat Σ dy xhat)``, ``dgamma = Σ dy xhat``, ``dbeta = Σ dy``
    (sums over every axis but the last) for ``dy`` of ``x``'s shape -> ``(dx, dgamma (C,), dbeta (C,))``."""
    xp = array_api_compat.array_namespace(dy)
    if tuple(dy.shape) != tuple(cache.xhat.shape):
        raise ValueError(f"dy must have the input's shape {tuple(cache.xhat.shape)}, got {tuple(dy.shape)}")
    m, c = math.prod(dy.shape[:-1]), dy.shape[-1]
    xhat, ones = xp.reshape(cache.xhat, (m, c)), cache.ones
    # --8<-- [start:backward]
    dy2 = xp.reshape(dy, (m, c))
    dbeta = (ones @ dy2)[0, :]                        # Σ dy
    dgamma = (ones @ (dy2 * xhat))[0, :]              # Σ dy xhat
    dx = (cache.gamma * cache.inv_std / m) * (m * dy2 - dbeta - xhat * dgamma)
    # --8<-- [end:backward]
    return xp.reshape(dx, tuple(dy.shape)), dgamma, dbeta


def batch_norm_inference(
    x: Array, gamma: Array, beta: Array, mean: Array, var: Array, eps: float = 1e-5
) -> Array:
    """Evaluation mode: ``y = gamma (x - mean) / sqrt(var + eps) + beta`` with given (running) statistics
    ``mean``, ``var (C,)``; each row is normalised on its own, so the result does not depend on the batch."""
    xp = _check(x, gamma, beta, eps, mean=mean, var=var)
    # --8<-- [start:inference]
    scale = gamma / xp.sqrt(var + eps)
    return (x - mean) * scale + beta   # centre first: x·scale - mean·scale cancels when var << eps
    # --8<-- [end:inference]
