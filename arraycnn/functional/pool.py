"""Max and average pooling over ``x (N, H, W, C)``, forward and hand-derived backward.

Both walk the windows of :mod:`arraycnn.functional.windows`: one strided slice per kernel offset.

* max: ``y = max_{i,j} xpad[.., oh*sh+i, ow*sw+j, ..]`` with ``-inf`` padding (padding never wins),
  computed separably (1 x KW along rows, then KH x 1 down the row maxima); ``dx`` routes each window's
  ``dy`` to the window's FIRST maximal cell in row-major window order (PyTorch's CPU rule), so ties are
  deterministic; overlapping windows accumulate.
* avg: ``y = Σ_{i,j} xpad[...] / d`` with zero padding; ``d = KH*KW`` (``count_include_pad=True``, the
  tutorial) or the number of real cells in the window (``False``, TensorFlow's 'SAME');
  ``dx = scatter(dy / d)`` to every cell of the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import check_float, check_ndim, namespace_of
from .windows import Window, crop_hw, make_window, pad_hw, scatter_windows, window_views

Array = Any


@dataclass(frozen=True)
class MaxPoolCache:
    """Where each window's first maximum sits, found in two 1-D passes (rows, then columns of rows).

    ``arg_w (N, Hp, OW, C)``: offset ``j`` of the first maximum of every 1 x KW row window;
    ``arg_h (N, OH, OW, C)``: offset ``i`` of the first maximal row among the KH row maxima.
    """

    win: Window
    arg_w: Array
    arg_h: Array


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


def _running_max(views: Iterator[Array]) -> Array:
    """``max`` over the window views, taken in the same order as :func:`_max_and_first_offset` (same bits)."""
    best = next(views)
    xp = array_api_compat.array_namespace(best)
    for v in views:
        best = xp.maximum(best, v)
    return best


def _max_and_first_offset(views: Iterator[Array], n_offsets: int) -> tuple[Array, Array]:
    """Running maximum over the window views and the offset of the FIRST view that reaches it.

    Only a strictly greater value moves the offset, so a later tie never takes over; and since offsets
    grow, "set ``arg = k`` where ``v > best``" is ``arg = max(arg, k·[v > best])``: plain arithmetic,
    several times faster than a masked ``where`` in NumPy.
    """
    best = next(views)
    xp = array_api_compat.array_namespace(best)
    index_dtype = xp.uint8 if n_offsets <= 256 else xp.int32
    arg = xp.zeros(best.shape, dtype=index_dtype, device=array_api_compat.device(best))
    for k, v in enumerate(views, start=1):
        arg = xp.maximum(arg, xp.astype(v > best, index_dtype) * k)
        best = xp.maximum(best, v)
    return best, arg


def _route(dy: Array, arg: Array, win_1d: Window, n_offsets: int) -> Array:
    """Send ``dy`` back through a 1-D max: offset ``k`` of each window gets ``dy`` where it won."""
    xp = array_api_compat.array_namespace(dy)
    return scatter_windows((dy * xp.astype(arg == k, dy.dtype) for k in range(n_offsets)), win_1d)


def maxpool2d_forward(
    x: Array, size: Any, stride: Any = None, padding: Any = 0, keep_cache: bool = True
) -> tuple[Array, MaxPoolCache | None]:
    """Max pooling: ``x (N, H, W, C)`` -> ``y (N, OH, OW, C)``; ``stride`` defaults to ``size``.

    Separable: the max over a KH x KW window is the max over KH row maxima, each over 1 x KW;
    taking the first maximal row and, in it, the first maximal cell gives the row-major first maximum.
    ``keep_cache=False`` (prediction) returns ``(y, None)``: the same ``y``, bit for bit, without the offsets.
    """
    win = _pool_window(x, size, stride, padding)
    along_w, along_h = win.separable()
    # --8<-- [start:max_forward]
    xpad = pad_hw(x, win, value=-math.inf)
    if not keep_cache:
        # prediction needs no first-max offsets: the running maxima alone, ~2.5x faster (docs/benchmarks.md)
        return _running_max(window_views(_running_max(window_views(xpad, along_w)), along_h)), None
    rows, arg_w = _max_and_first_offset(window_views(xpad, along_w), win.kw)   # (N, Hp, OW, C)
    y, arg_h = _max_and_first_offset(window_views(rows, along_h), win.kh)      # (N, OH, OW, C)
    # --8<-- [end:max_forward]
    return y, MaxPoolCache(win, arg_w, arg_h)


def maxpool2d_backward(dy: Array, cache: MaxPoolCache) -> Array:
    """``dx[first argmax of window (oh, ow)] += dy[oh, ow]``: ``dy (N, OH, OW, C)`` -> ``dx (N, H, W, C)``."""
    win = cache.win
    _check_dy(dy, win, cache.arg_h.shape[0], cache.arg_h.shape[-1])
    along_w, along_h = win.separable()
    # --8<-- [start:max_backward]
    d_rows = _route(dy, cache.arg_h, along_h, win.kh)        # to the winning row: (N, Hp, OW, C)
    dxpad = _route(d_rows, cache.arg_w, along_w, win.kw)     # to the winning cell of that row: (N, Hp, Wp, C)
    return crop_hw(dxpad, win)
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
