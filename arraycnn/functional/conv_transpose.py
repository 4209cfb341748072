"""2-D transposed convolution: the input-gradient of :func:`~arraycnn.functional.conv.conv2d_forward`, run forward.

Same weight layout as the convolution it transposes: ``x (N, H, W, K)``, ``w (K, KH, KW, C)``, ``b (C,)``,
``y (N, OH, OW, C)`` with ``OH = (H - 1)*sh - 2*ph + KH + oph`` (``0 <= oph < sh``, likewise along W).
Every input pixel stamps its kernel, weighted by its ``K`` values, onto the output at ``(h*sh, w*sw)``::

    ypad[n, h*sh + i, w*sw + j, c] += sum_k x[n, h, w, k] * w[k, i, j, c]        then crop the padding

It is the adjoint of ``conv2d_forward(., w, stride, padding)`` on ``(N, OH, OW, C)`` inputs, so its
backward is that convolution: ``dx = conv(dy, w) = P Wᵀ`` with ``P = im2col(pad(dy))``, ``dW = Xᵀ P``,
``db = Σ_{n,oh,ow} dy``. Both directions reuse the window machinery of :mod:`.windows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import int_pair, namespace_of
from .conv import bias_gradient, check_conv_arrays
from .windows import Window, im2col, make_window, pad_hw, scatter_windows

Array = Any


@dataclass(frozen=True)
class ConvTransposeCache:
    """What :func:`conv2d_transpose_backward` needs: the geometry (that of the convolution it transposes,
    whose input is this op's output), the flattened input ``X (N*H*W, K)`` and the filters."""

    win: Window
    x2: Array
    w: Array
    has_bias: bool


def conv2d_transpose_forward(
    x: Array, w: Array, b: Array | None = None, stride: Any = 1, padding: Any = 0, output_padding: Any = 0
) -> tuple[Array, ConvTransposeCache]:
    """Transposed convolution ``x (N, H, W, K)``, ``w (K, KH, KW, C)`` (+ ``b (C,)``) -> ``y (N, OH, OW, C)``.

    ``stride``, ``padding`` and ``output_padding`` are ints or ``(h, w)`` pairs;
    ``OH = (H - 1)*sh - 2*ph + KH + oph`` with ``0 <= oph < sh`` (the extra rows at the bottom that a
    stride-``sh`` convolution of an ``OH``-row input would never read).
    """
    check_conv_arrays(x, w, b, transposed=True)
    xp = namespace_of(x=x, w=w, b=b)
    win = transpose_window(tuple(x.shape), tuple(w.shape), stride, padding, output_padding)
    n, h, wd, k = x.shape
    c = w.shape[3]
    # --8<-- [start:forward]
    x2 = xp.reshape(x, (n * h * wd, k))                                      # X (N*H*W, K)
    # one stamp per kernel offset: X w[:, i, j, :] (N*H*W, C) added into its strided slice of the output
    y = scatter_windows((xp.reshape(x2 @ w[:, i, j, :], (n, h, wd, c)) for i, j in win.offsets()), win)
    if b is not None:
        y = y + b
    # --8<-- [end:forward]
    return y, ConvTransposeCache(win, x2, w, b is not None)


def conv2d_transpose_backward(
    dy: Array, cache: ConvTransposeCache, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """``dx = conv(dy, w) = P Wᵀ``, ``dW = Xᵀ P`` (``P = im2col(pad(dy))``), ``db = Σ_{n,oh,ow} dy``.

    ``dy (N, OH, OW, C)`` -> ``(dx (N, H, W, K), dw (K, KH, KW, C), db (C,) or None)``;
    ``input_grad=False`` skips ``dx`` (returned as None).
    """
    xp = array_api_compat.array_namespace(dy)
    win, w = cache.win, cache.w
    k, c = w.shape[0], w.shape[3]
    n = cache.x2.shape[0] // (win.oh * win.ow)
    expected = (n, win.h, win.w, c)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the output's shape (N, OH, OW, C) = {expected}, got {tuple(dy.shape)}")
    # --8<-- [start:backward]
    db = bias_gradient(dy) if cache.has_bias else None
    patches = im2col(pad_hw(dy, win), win)                                   # P (N*H*W, KH*KW*C)
    dw = xp.reshape(cache.x2.T @ patches, tuple(w.shape))                    # dW = Xᵀ P
    if not input_grad:
        return None, dw, db
    dx = xp.reshape(patches @ xp.reshape(w, (k, -1)).T, (n, win.oh, win.ow, k))   # dx = P Wᵀ = conv(dy, w)
    # --8<-- [end:backward]
    return dx, dw, db


def transpose_window(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any, output_padding: Any
) -> Window:
    """The window of the convolution that a transposed convolution of ``x (N, H, W, K)`` by ``w`` undoes:
    its input is ``(N, OH, OW, C)`` and its output ``(OH + 2*ph - KH) // sh + 1 = H`` rows."""
    sh, sw = int_pair(stride, "stride", 1)
    ph, pw = int_pair(padding, "padding", 0)
    oph, opw = int_pair(output_padding, "output_padding", 0)
    if oph >= sh or opw >= sw:
        raise ValueError(f"output_padding must be smaller than the stride ({sh}, {sw}) on each axis, "
                         f"got output_padding=({oph}, {opw})")
    kh, kw = w_shape[1], w_shape[2]
    oh = (x_shape[1] - 1) * sh - 2 * ph + kh + oph
    ow = (x_shape[2] - 1) * sw - 2 * pw + kw + opw
    if oh < 1 or ow < 1:
        raise ValueError(f"padding ({ph}, {pw}) is too large: the output (OH, OW) = ({oh}, {ow}) = "
                         f"((H - 1)*sh - 2*ph + KH + oph, ...) would be empty for x of shape {tuple(x_shape)}")
    return make_window((x_shape[0], oh, ow, w_shape[3]), (kh, kw), (sh, sw), (ph, pw), kernel_name="w")
