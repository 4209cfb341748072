"""Losses: the fused softmax cross-entropy on logits, and the tutorial's cross-entropy on probabilities.

With ``p = softmax(z)`` row-wise and targets ``y`` (one-hot or probability rows), the mean loss over the
batch is ``L = -(1/N) Σ_n Σ_k y[n,k] log p[n,k]`` and its gradient is ``dL/dz = (p Σ_k y - y) / N``
(the softmax Jacobian ``diag(p) - p pᵀ`` times ``-y/p``), i.e. ``(p - y) / N`` for one-hot or probability
rows, which sum to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import check_float, check_ndim, namespace_of
from .activation import log_softmax

Array = Any


@dataclass(frozen=True)
class SoftmaxCECache:
    """Softmax probabilities and the target rows, both ``(N, K)``."""

    p: Array
    y: Array


def target_rows(targets: Array, n: int, k: int, like: Array, check: bool = True) -> Array:
    """Class ids ``(N,)`` or probability rows ``(N, K)`` -> float rows ``(N, K)`` in ``like``'s dtype.

    With ``check``, class ids outside ``[0, K)`` are a ValueError (this reads one boolean back from
    the device; a training loop that validated its labels on the host passes ``check=False``).
    """
    xp = namespace_of(logits=like, targets=targets)
    if targets.ndim == 1:
        if not xp.isdtype(targets.dtype, "integral"):
            raise TypeError(f"targets of shape (N,) must be integer class ids, got dtype {targets.dtype}")
        if targets.shape[0] != n:
            raise ValueError(f"targets must have shape (N,) = ({n},) like the logits, got {tuple(targets.shape)}")
        if check and n and bool(xp.any((targets < 0) | (targets >= k))):
            raise ValueError(f"targets must be class ids in [0, {k}) for logits with K = {k} classes")
        # --8<-- [start:one_hot]
        classes = xp.reshape(xp.arange(k, dtype=targets.dtype, device=array_api_compat.device(targets)), (1, k))
        return xp.astype(xp.reshape(targets, (n, 1)) == classes, like.dtype)
        # --8<-- [end:one_hot]
    if tuple(targets.shape) != (n, k):
        raise ValueError(f"targets must be class ids (N,) = ({n},) or rows (N, K) = ({n}, {k}) "
                         f"like the logits, got shape {tuple(targets.shape)}")
    check_float(targets, "targets", xp)
    return xp.astype(targets, like.dtype)


def softmax_cross_entropy_forward(
    logits: Array, targets: Array, check_targets: bool = True
) -> tuple[Array, SoftmaxCECache]:
    """Mean cross-entropy of ``softmax(logits (N, K))`` against ``targets`` (ids ``(N,)`` or rows ``(N, K)``).

    Stable for any finite logits (``log_softmax`` subtracts the row max); returns a 0-d array.
    """
    xp = namespace_of(logits=logits, targets=targets)
    check_ndim(logits, "logits", 2, "(N, K)")
    check_float(logits, "logits", xp)
    n, k = logits.shape
    if n == 0:
        raise ValueError("logits must hold at least one row (N >= 1)")
    y = target_rows(targets, n, k, logits, check=check_targets)
    # --8<-- [start:forward]
    logp = log_softmax(logits, axis=1)
    loss = -xp.sum(y * logp) / n
    return loss, SoftmaxCECache(xp.exp(logp), y)
    # --8<-- [end:forward]


def softmax_cross_entropy_backward(dout: Any, cache: SoftmaxCECache) -> Array:
    """``dlogits (N, K) = dout · (p · Σ_k y - y) / N``, which is ``dout · (p - y) / N`` for rows summing to 1.

    ``dout`` is the upstream gradient of the 0-d mean loss (a number or a 0-d array; 1 for the loss itself).
    """
    xp = array_api_compat.array_namespace(cache.p)
    # --8<-- [start:backward]
    row_mass = xp.sum(cache.y, axis=1, keepdims=True)   # 1 for class ids and probability rows
    return (cache.p * row_mass - cache.y) * (dout / cache.p.shape[0])
    # --8<-- [end:backward]


def cross_entropy(probs: Array, targets: Array, eps: float = 1e-7) -> Array:
    """The tutorial's loss on probabilities ``probs (N, K)``: ``-(1/N) Σ y log clip(p, eps, 1 - eps)``.

    The clip is Keras's ``categorical_crossentropy`` (which the tutorial called), so ``p = 0`` gives a
    large finite loss, not ``inf``. Prefer :func:`softmax_cross_entropy_forward` on logits for training.
    """
    xp = namespace_of(probs=probs, targets=targets)
    check_ndim(probs, "probs", 2, "(N, K)")
    check_float(probs, "probs", xp)
    n, k = probs.shape
    y = target_rows(targets, n, k, probs)
    # --8<-- [start:cross_entropy]
    return -xp.sum(y * xp.log(xp.clip(probs, eps, 1.0 - eps))) / n
    # --8<-- [end:cross_entropy]


@dataclass(frozen=True)
class MSECache:
    """The residual ``pred - target`` (the prediction's shape)."""

    diff: Array


def mean_squared_error_forward(pred: Array, target: Array) -> tuple[Array, MSECache]:
    """``L = mean((pred - target)²)`` over EVERY element of ``pred`` (any shape) as a 0-d array; ``target`` has
    ``pred``'s shape and a floating dtype (cast to ``pred``'s)."""
    xp = namespace_of(pred=pred, target=target)
    check_float(pred, "pred", xp)
    check_float(target, "target", xp)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"target must have the prediction's shape {tuple(pred.shape)}, got {tuple(target.shape)}")
    if math.prod(pred.shape) == 0:  # not .size: a method on torch tensors
        raise ValueError(f"pred must hold at least one element, got shape {tuple(pred.shape)}")
    # --8<-- [start:mse_forward]
    diff = pred - xp.astype(target, pred.dtype)
    return xp.sum(diff * diff) / math.prod(diff.shape), MSECache(diff)
    # --8<-- [end:mse_forward]


def mean_squared_error_backward(dloss: Any, cache: MSECache) -> Array:
    """``dpred = dloss · 2 (pred - target) / size``, ``dloss`` the upstream scalar (1 for the loss itself)."""
    # --8<-- [start:mse_backward]
    return cache.diff * (2.0 * dloss / math.prod(cache.diff.shape))
    # --8<-- [end:mse_backward]
