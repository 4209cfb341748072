"""2-D convolution (cross-correlation, as TensorFlow), forward and hand-derived backward, two ways.

Layout as the tutorial: ``x (N, H, W, C)``, ``w (K, KH, KW, C)``, ``b (K,)``, ``y (N, OH, OW, K)``::

    y[n, oh, ow, k] = b[k] + sum_{i, j, c} xpad[n, oh*sh + i, ow*sw + j, c] * w[k, i, j, c]

Each way is its own pair with its own cache, and :func:`conv2d_forward` (``method=...``) and
:func:`conv2d_backward` dispatch to them:

* im2col (fast, :func:`conv2d_im2col_forward`): ``y = P Wᵀ`` with ``P (N*OH*OW, KH*KW*C)`` the unrolled
  patches and ``W (K, KH*KW*C)`` the flattened filters; ``dW = dYᵀ P``, ``dP = dY W``, ``dx = col2im(dP)``.
* toeplitz (the tutorial's, :func:`conv2d_toeplitz_forward`): each filter unrolled into
  ``T_k (OH*OW, Hp*Wp*C)`` so that ``y_k = T_k vec(xpad)``; then ``d vec(xpad) = Σ_k T_kᵀ dy_k`` and, since
  every entry of ``T`` is a copy of one weight, ``dw[k, i, j, c]`` is the sum of ``dT`` over the entries
  holding ``w[k, i, j, c]`` (weight sharing made visible).

Both take ``keep_cache=False`` for prediction: the output is the same, bit for bit, and the cache is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import check_float, check_ndim, check_same_dtype, namespace_of
from .windows import Window, crop_hw, im2col, make_window, pad_hw, scatter_windows

Array = Any
METHODS = ("im2col", "toeplitz")


@dataclass(frozen=True)
class Im2colConvCache:
    """What :func:`conv2d_im2col_backward` needs: the geometry, the patches, the filters, whether a bias was given."""

    win: Window
    x_shape: tuple[int, ...]
    patches: Array   # P (N*OH*OW, KH*KW*C)
    w: Array         # the filters (K, KH, KW, C)
    has_bias: bool


@dataclass(frozen=True)
class ToeplitzConvCache:
    """What :func:`conv2d_toeplitz_backward` needs: the geometry, the padded images as rows and ``T``."""

    win: Window
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    xrows: Array     # vec(xpad), one row per image (N, Hp*Wp*C)
    t: Array         # the unrolled filters T (K*OH*OW, Hp*Wp*C)
    has_bias: bool


def check_conv_arrays(x: Array, w: Array, b: Array | None, transposed: bool = False) -> None:
    """Check ``x``, ``w (K, KH, KW, C)`` and ``b`` (or None) of a convolution: 4-d floats of one dtype, ``x``'s
    channels those ``w`` reads and ``b`` one entry per channel ``w`` writes. A convolution reads ``C`` and
    writes ``K`` (``x (N, H, W, C)``, ``b (K,)``); the ``transposed`` one reads ``K`` and writes ``C``."""
    xp = namespace_of(x=x, w=w, b=b)
    (reads, read_axis), (writes, write_axis) = (("K", 0), ("C", 3)) if transposed else (("C", 3), ("K", 0))
    check_ndim(x, "x", 4, f"(N, H, W, {reads})")
    check_ndim(w, "w", 4, "(K, KH, KW, C)")
    check_float(x, "x", xp)
    check_float(w, "w", xp)
    if b is not None:
        check_float(b, "b", xp)
        if tuple(b.shape) != (w.shape[write_axis],):
            raise ValueError(f"b must have shape ({writes},) = ({w.shape[write_axis]},) for w of shape "
                             f"(K, KH, KW, C) = {tuple(w.shape)}, got {tuple(b.shape)}")
    check_same_dtype(xp, x=x, w=w, b=b)
    if w.shape[read_axis] != x.shape[3]:
        raise ValueError(f"w must have {reads} = {x.shape[3]} input channels like x (N, H, W, {reads}) = "
                         f"{tuple(x.shape)}, got w of shape (K, KH, KW, C) = {tuple(w.shape)}")


def conv_window(x: Array, w: Array, b: Array | None, stride: Any, padding: Any) -> Window:
    """Check ``x (N, H, W, C)``, ``w (K, KH, KW, C)``, ``b (K,)`` or None, ``stride``, ``padding``; the window."""
    check_conv_arrays(x, w, b)
    return make_window(tuple(x.shape), tuple(w.shape[1:3]), stride, padding, kernel_name="w")


def _check_dy(dy: Array, win: Window, n: int, k: int) -> None:
    expected = (n, win.oh, win.ow, k)
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have the output's shape (N, OH, OW, K) = {expected}, got {tuple(dy.shape)}")


def bias_gradient(dy: Array) -> Array:
    """``db = Σ_{n,oh,ow} dy`` for ``dy (N, OH, OW, K)`` -> ``(K,)``."""
    xp = array_api_compat.array_namespace(dy)
    dy2 = xp.reshape(dy, (-1, dy.shape[-1]))                                 # dY (N*OH*OW, K)
    # --8<-- [start:bias_backward]
    # the sum written as 1ᵀ dY: one GEMM is ~8x faster in NumPy than xp.sum(dy, axis=(0, 1, 2)) (benchmarks.md)
    ones = xp.ones((1, dy2.shape[0]), dtype=dy.dtype, device=array_api_compat.device(dy))
    return xp.reshape(ones @ dy2, (dy2.shape[1],))
    # --8<-- [end:bias_backward]


def conv2d_im2col_forward(
    x: Array, w: Array, b: Array | None = None, stride: Any = 1, padding: Any = 0, keep_cache: bool = True
) -> tuple[Array, Im2colConvCache | None]:
    """Convolution as ``y = P Wᵀ (+ b)``: ``x (N, H, W, C)``, ``w (K, KH, KW, C)`` -> ``y (N, OH, OW, K)``."""
    win = conv_window(x, w, b, stride, padding)
    xp = array_api_compat.array_namespace(x)
    # --8<-- [start:im2col_forward]
    patches = im2col(pad_hw(x, win), win)                    # P (N*OH*OW, KH*KW*C)
    y = patches @ xp.reshape(w, (w.shape[0], -1)).T          # Y = P Wᵀ (N*OH*OW, K)
    y = xp.reshape(y, (x.shape[0], win.oh, win.ow, w.shape[0]))
    if b is not None:
        y = y + b
    # --8<-- [end:im2col_forward]
    cache = Im2colConvCache(win, tuple(x.shape), patches, w, b is not None) if keep_cache else None
    return y, cache


def conv2d_im2col_backward(
    dy: Array, cache: Im2colConvCache, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """``dx = col2im(dY W)``, ``dW = dYᵀ P``, ``db = Σ_{n,oh,ow} dy`` for ``dy (N, OH, OW, K)`` -> ``(dx, dw, db)``.

    ``P (N*OH*OW, KH*KW*C)``: the input's patches (im2col); ``W (K, KH*KW*C)``: the filters, one per row;
    ``dY (N*OH*OW, K)``: ``dy`` flattened (see :func:`conv2d_backward`). ``db`` is None without a bias;
    ``input_grad=False`` skips ``dx`` (returned as None).
    """
    xp = array_api_compat.array_namespace(dy)
    win, w, (n, _, _, c) = cache.win, cache.w, cache.x_shape
    _check_dy(dy, win, n, w.shape[0])
    db = bias_gradient(dy) if cache.has_bias else None
    # --8<-- [start:im2col_backward]
    dy2 = xp.reshape(dy, (n * win.oh * win.ow, w.shape[0]))             # dY (N*OH*OW, K)
    dw = xp.reshape(dy2.T @ cache.patches, tuple(w.shape))              # dW = dYᵀ P
    if not input_grad:
        return None, dw, db
    # col2im(dP) with dP = dY W, one kernel offset's columns at a time, added straight into its windows
    dx = scatter_windows((xp.reshape(dy2 @ w[:, i, j, :], (n, win.oh, win.ow, c)) for i, j in win.offsets()), win)
    return dx, dw, db
    # --8<-- [end:im2col_backward]


def conv2d_toeplitz_forward(
    x: Array, w: Array, b: Array | None = None, stride: Any = 1, padding: Any = 0, keep_cache: bool = True
) -> tuple[Array, ToeplitzConvCache | None]:
    """Convolution as ``y_k = T_k vec(xpad) (+ b_k)``: ``x (N, H, W, C)``, ``w (K, KH, KW, C)`` -> ``(N, OH, OW, K)``.

    ``T`` (:func:`toeplitz_matrix`) holds ``K*OH*OW x Hp*Wp*C`` entries, nearly all zero: the tutorial's
    form, to read, not to run fast.
    """
    win = conv_window(x, w, b, stride, padding)
    xp = array_api_compat.array_namespace(x)
    # --8<-- [start:toeplitz_forward]
    xrows = xp.reshape(pad_hw(x, win), (x.shape[0], -1))     # vec(xpad) (N, Hp*Wp*C)
    t = toeplitz_matrix(w, win)                              # T (K*OH*OW, Hp*Wp*C)
    y = xp.reshape(xrows @ t.T, (x.shape[0], w.shape[0], win.oh, win.ow))
    y = xp.permute_dims(y, (0, 2, 3, 1))
    if b is not None:
        y = y + b
    # --8<-- [end:toeplitz_forward]
    cache = ToeplitzConvCache(win, tuple(x.shape), tuple(w.shape), xrows, t, b is not None) if keep_cache else None
    return y, cache


def conv2d_toeplitz_backward(
    dy: Array, cache: ToeplitzConvCache, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """``dx = crop(Tᵀ dy)``, ``dw = Σ dT`` over the entries of ``T`` that share a weight (``dT = dy vec(xpad)ᵀ``),
    ``db = Σ_{n,oh,ow} dy`` for ``dy (N, OH, OW, K)`` -> ``(dx, dw, db)``; the same numbers as im2col's."""
    xp = array_api_compat.array_namespace(dy)
    win, (n, _, _, c), k = cache.win, cache.x_shape, cache.w_shape[0]
    _check_dy(dy, win, n, k)
    db = bias_gradient(dy) if cache.has_bias else None
    # --8<-- [start:toeplitz_backward]
    dy2 = xp.reshape(xp.permute_dims(dy, (0, 3, 1, 2)), (n, k * win.oh * win.ow))
    dT = dy2.T @ cache.xrows                                      # dT = dyᵀ vec(xpad)  (K*OH*OW, Hp*Wp*C)
    dw = toeplitz_weight_gradient(dT, win, cache.w_shape)
    if not input_grad:
        return None, dw, db
    dxpad = xp.reshape(dy2 @ cache.t, (n, win.hp, win.wp, c))     # d vec(xpad) = Tᵀ dy
    return crop_hw(dxpad, win), dw, db
    # --8<-- [end:toeplitz_backward]


_FORWARDS = {"im2col": conv2d_im2col_forward, "toeplitz": conv2d_toeplitz_forward}
_BACKWARDS = {Im2colConvCache: conv2d_im2col_backward, ToeplitzConvCache: conv2d_toeplitz_backward}


def conv2d_forward(
    x: Array, w: Array, b: Array | None = None, stride: Any = 1, padding: Any = 0, method: str = "im2col",
    keep_cache: bool = True,
) -> tuple[Array, Im2colConvCache | ToeplitzConvCache | None]:
    """Convolve ``x (N, H, W, C)`` with ``w (K, KH, KW, C)`` (+ ``b (K,)``) -> ``y (N, OH, OW, K)``.

    ``stride`` and ``padding`` are ints or ``(h, w)`` pairs; padding is zeros on both sides and
    ``OH = (H + 2*ph - KH) // sh + 1``. ``method`` is ``"im2col"`` or ``"toeplitz"``; with
    ``keep_cache=False`` (prediction) the cache is None.
    """
    # --8<-- [start:forward]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _FORWARDS[method](x, w, b, stride, padding, keep_cache)
    # --8<-- [end:forward]


def conv2d_backward(
    dy: Array, cache: Im2colConvCache | ToeplitzConvCache, input_grad: bool = True
) -> tuple[Array | None, Array, Array | None]:
    """``(dx, dw, db)`` for ``dy (N, OH, OW, K)``: the backward of the method whose forward made ``cache``.

    In matrix form, with ``P (N*OH*OW, KH*KW*C)`` the patches of the padded input (row ``(n, oh, ow)`` holds
    the window that output pixel reads: im2col), ``W (K, KH*KW*C)`` the filters ``w`` flattened one per row
    and ``dY (N*OH*OW, K)`` the upstream gradient ``dy`` flattened the same way (the forward is ``Y = P Wᵀ``):
    ``dW = dYᵀ P`` (reshaped to ``w``'s shape), ``dx = col2im(dY W)`` (each patch's gradient added back where
    the patch came from, the padding cropped), ``db = Σ_{n,oh,ow} dy``. The toeplitz method gets the same
    numbers from its unrolled kernel ``T``: ``dx = Tᵀ dy``. ``db`` is None without a bias;
    ``input_grad=False`` skips ``dx`` (returned as None), as a network's first layer needs no ``dx``.
    """
    backward = _BACKWARDS.get(type(cache))
    if backward is None:
        raise TypeError(f"cache must come from conv2d_forward(..., keep_cache=True), got {type(cache).__name__}")
    return backward(dy, cache, input_grad)


def shift_selectors(n_out: int, n_in: int, n_kernel: int, stride: int, like: Array) -> Array:
    """``S (n_kernel, n_out, n_in)`` with ``S[i, o, p] = 1`` where ``p == o*stride + i``: the input row that
    kernel row ``i`` reads for output row ``o`` (one axis of the kernel's sliding pattern)."""
    xp = array_api_compat.array_namespace(like)
    dev = array_api_compat.device(like)
    kernel = xp.reshape(xp.arange(n_kernel, device=dev), (n_kernel, 1, 1))
    out_pos = xp.reshape(xp.arange(n_out, device=dev) * stride, (1, n_out, 1))
    in_pos = xp.reshape(xp.arange(n_in, device=dev), (1, 1, n_in))
    return xp.astype(out_pos + kernel == in_pos, like.dtype)


def _selectors(win: Window, like: Array) -> tuple[Array, Array]:
    return (shift_selectors(win.oh, win.hp, win.kh, win.sh, like),
            shift_selectors(win.ow, win.wp, win.kw, win.sw, like))


def toeplitz_matrix(w: Array, win: Window) -> Array:
    """Unroll filters ``w (K, KH, KW, C)`` into ``T (K*OH*OW, Hp*Wp*C)`` so that ``y_k = T_k vec(xpad)``.

    ``T[k, oh, ow, h, v, c] = Σ_{i,j} w[k, i, j, c] Sh[i, oh, h] Sw[j, ow, v]``: each weight is copied to
    every (output pixel, input cell) pair it links — the weight sharing the matrix makes visible.
    """
    xp = array_api_compat.array_namespace(w)
    k, _, _, c = w.shape
    sel_h, sel_w = _selectors(win, w)
    t = xp.tensordot(w, sel_w, axes=([2], [0]))              # (K, KH, C, OW, Wp)
    t = xp.tensordot(t, sel_h, axes=([1], [0]))              # (K, C, OW, Wp, OH, Hp)
    t = xp.permute_dims(t, (0, 4, 2, 5, 3, 1))               # (K, OH, OW, Hp, Wp, C)
    return xp.reshape(t, (k * win.oh * win.ow, win.hp * win.wp * c))


def toeplitz_weight_gradient(dT: Array, win: Window, w_shape: tuple[int, ...]) -> Array:
    """``dw[k, i, j, c] = Σ_{oh, ow} dT[k, oh, ow, oh*sh+i, ow*sw+j, c]``: sum ``dT`` over the entries
    that hold a copy of ``w[k, i, j, c]`` (the adjoint of :func:`toeplitz_matrix`)."""
    xp = array_api_compat.array_namespace(dT)
    k, _, _, c = w_shape
    sel_h, sel_w = _selectors(win, dT)
    dT = xp.reshape(dT, (k, win.oh, win.ow, win.hp, win.wp, c))
    g = xp.tensordot(dT, sel_h, axes=([1, 3], [1, 2]))       # (K, OW, Wp, C, KH)
    g = xp.tensordot(g, sel_w, axes=([1, 2], [1, 2]))        # (K, C, KH, KW)
    return xp.permute_dims(g, (0, 2, 3, 1))
