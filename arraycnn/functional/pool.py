"""Max and average pooling over ``x (N, H, W, C)``, forward and hand-derived backward.

Both walk the windows of :mod:`arraycnn.functional.windows`: one strided slice per kernel offset.

* max: ``y = max_{i,j} xpad[.., oh*sh+i, ow*sw+j, ..]`` with ``-inf`` padding (padding never wins);
  ``dx`` routes each window's ``dy`` to the window's FIRST maximal cell in row-major window order
  (PyTorch's CPU rule), so ties are deterministic; overlapping windows accumulate.
* avg: ``y = Σ_{i,j} xpad[...] / d`` with zero padding; ``d = KH*KW`` (``count_include_pad=True``, the
  tutorial) or the number of real cells in the window (``False``, TensorFlow's 'SAME');
  ``dx = scatter(dy / d)`` to every cell of the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import check_float, check_ndim, namespace_of
from .windows import Window, make_window, pad_hw, scatter_windows, window_views

Array = Any


@dataclass(frozen=True)
class MaxPoolCache:
    """The padded input and the pooled maxima: enough to find each window's first maximum again."""

    win: Window
    xpad: Array
    y: Array


@dataclass(frozen=True)
class AvgPoolCache:
    """The geometry and the divisor (a number, or ``(1, OH, OW, 1)`` real-cell counts)."""

    win: Window
    divisor: Any


def _pool_window(x: Array, size: Any, stride: Any, padding: Any) -> Window:
    xp = namespace_of(x=x)
    check_ndim(x, "x", 4, "(N, H, W, C)")
    check_float(x, "x", xp)
    return make_window(
        tuple(x.shape), size, size if stride is None else stride, padding,
        kernel_name="size", max_padding_exclusive=True,
    )


def _check_dy(dy: Array, win: Window, n: int, c: int) -> None:
    expected = (n, win.oh, win.ow, c)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the output's shape (N, OH, OW, C) = {expected}, got {tuple(dy.shape)}")


def maxpool2d_forward(x: Array, size: Any, stride: Any = None, padding: Any = 0) -> tuple[Array, MaxPoolCache]:
    """Max pooling: ``x (N, H, W, C)`` -> ``y (N, OH, OW, C)``; ``stride`` defaults to ``size``."""
    win = _pool_window(x, size, stride, padding)
    xp = array_api_compat.array_namespace(x)
    # --8<-- [start:max_forward]
    xpad = pad_hw(x, win, value=-math.inf)
    views = window_views(xpad, win)
    y = next(views)
    for v in views:
        y = xp.maximum(y, v)
    # --8<-- [end:max_forward]
    return y, MaxPoolCache(win, xpad, y)


def maxpool2d_backward(dy: Array, cache: MaxPoolCache) -> Array:
    """``dx[first argmax of window (oh, ow)] += dy[oh, ow]``: ``dy (N, OH, OW, C)`` -> ``dx (N, H, W, C)``."""
    xp = array_api_compat.array_namespace(dy)
    n, _, _, c = cache.xpad.shape
    _check_dy(dy, cache.win, n, c)
    # --8<-- [start:max_backward]
    unclaimed = xp.ones(dy.shape, dtype=xp.bool, device=array_api_compat.device(dy))
    grads = []
    for v in window_views(cache.xpad, cache.win):
        first = (v == cache.y) & unclaimed       # this offset holds the window's max, and none before it did
        unclaimed = unclaimed & ~first
        grads.append(dy * xp.astype(first, dy.dtype))
    return scatter_windows(grads, cache.win)
    # --8<-- [end:max_backward]


def avgpool2d_forward(
    x: Array, size: Any, stride: Any = None, padding: Any = 0, count_include_pad: bool = True
) -> tuple[Array, AvgPoolCache]:
    """Average pooling: ``x (N, H, W, C)`` -> ``y (N, OH, OW, C)``; zero padding, divisor as above."""
    win = _pool_window(x, size, stride, padding)
    xp = array_api_compat.array_namespace(x)
    # --8<-- [start:avg_forward]
    total = sum(window_views(pad_hw(x, win), win))
    if count_include_pad or (win.ph == 0 and win.pw == 0):
        divisor: Any = float(win.kh * win.kw)
    else:
        ones = xp.ones((1, win.h, win.w, 1), dtype=x.dtype, device=array_api_compat.device(x))
        divisor = sum(window_views(pad_hw(ones, win), win))   # real cells per window (1, OH, OW, 1)
    return total / divisor, AvgPoolCache(win, divisor)
    # --8<-- [end:avg_forward]


def avgpool2d_backward(dy: Array, cache: AvgPoolCache) -> Array:
    """``dx[cell] = Σ_{windows ∋ cell} dy / d``: ``dy (N, OH, OW, C)`` -> ``dx (N, H, W, C)``."""
    _check_dy(dy, cache.win, dy.shape[0], dy.shape[-1])
    # --8<-- [start:avg_backward]
    g = dy / cache.divisor
    return scatter_windows([g] * (cache.win.kh * cache.win.kw), cache.win)
    # --8<-- [end:avg_backward]
