"""The sliding-window machinery shared by convolution and pooling.

A 2-D window op on ``x (N, H, W, C)`` visits, for every output pixel ``(oh, ow)``, the input cells
``(oh*sh + i - ph, ow*sw + j - pw)`` for the kernel offsets ``0 <= i < KH, 0 <= j < KW``.
Turned around, each kernel offset ``(i, j)`` sees ONE strided slice of the padded input::

    xpad[:, i : i + sh*(OH-1) + 1 : sh, j : j + sw*(OW-1) + 1 : sw, :]      # (N, OH, OW, C)

so every op here loops over the ``KH*KW`` offsets only, never over batch, pixels or channels:

* :func:`im2col_by_slices` stacks those slices (the patches a convolution multiplies by its kernel;
  :func:`im2col` takes them from one strided view where the library has one);
* pooling reduces them (max, sum);
* :func:`scatter_windows` is the adjoint of slicing: it adds a gradient for each offset back into
  its slice of a zero padded image and crops the padding (``col2im`` is this with the columns of a patch
  matrix).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import array_api_compat

from .._checks import int_pair
from ..backend import sliding_window_view

Array = Any


@dataclass(frozen=True)
class Window:
    """Geometry of a 2-D sliding window over ``(H, W)``: kernel, stride and symmetric zero padding."""

    h: int
    w: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0

    @property
    def hp(self) -> int:
        """Padded height ``H + 2*ph``."""
        return self.h + 2 * self.ph

    @property
    def wp(self) -> int:
        """Padded width ``W + 2*pw``."""
        return self.w + 2 * self.pw

    @property
    def oh(self) -> int:
        """Output height ``(H + 2*ph - KH) // sh + 1``."""
        return (self.hp - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        """Output width ``(W + 2*pw - KW) // sw + 1``."""
        return (self.wp - self.kw) // self.sw + 1

    def separable(self) -> tuple[Window, Window]:
        """The two 1-D windows whose composition is this one, both over the already padded input:
        ``(1, KW)`` along W on ``(Hp, Wp)`` -> ``(Hp, OW)``, then ``(KH, 1)`` along H -> ``(OH, OW)``."""
        along_w = Window(h=self.hp, w=self.wp, kh=1, kw=self.kw, sh=1, sw=self.sw)
        along_h = Window(h=self.hp, w=self.ow, kh=self.kh, kw=1, sh=self.sh, sw=1)
        return along_w, along_h

    def offsets(self) -> Iterator[tuple[int, int]]:
        """Kernel offsets ``(i, j)`` in row-major window order."""
        for i in range(self.kh):
            for j in range(self.kw):
                yield i, j

    def slices(self, i: int, j: int) -> tuple[slice, slice, slice, slice]:
        """Index of the strided slice of the padded input that kernel offset ``(i, j)`` sees."""
        # --8<-- [start:slices]
        rows = slice(i, i + self.sh * (self.oh - 1) + 1, self.sh)
        cols = slice(j, j + self.sw * (self.ow - 1) + 1, self.sw)
        # --8<-- [end:slices]
        return (slice(None), rows, cols, slice(None))


def make_window(
    x_shape: tuple[int, ...],
    kernel: Any,
    stride: Any,
    padding: Any,
    *,
    kernel_name: str,
    max_padding_exclusive: bool = False,
) -> Window:
    """Validate ``kernel``/``stride``/``padding`` (ints or ``(h, w)`` pairs) against ``x (N, H, W, C)``.

    ``kernel_name`` names the argument in errors (``"w"`` for convolution, ``"size"`` for pooling).
    With ``max_padding_exclusive`` the padding must be smaller than the window, so that every
    window holds at least one real cell (pooling).
    """
    kh, kw = int_pair(kernel, kernel_name, 1)
    sh, sw = int_pair(stride, "stride", 1)
    ph, pw = int_pair(padding, "padding", 0)
    if max_padding_exclusive and (ph >= kh or pw >= kw):
        raise ValueError(
            f"padding must be smaller than the window {kernel_name}=({kh}, {kw}) on each axis, "
            f"got padding=({ph}, {pw})"
        )
    win = Window(h=x_shape[1], w=x_shape[2], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
    if kh > win.hp or kw > win.wp:
        raise ValueError(
            f"window {kernel_name}=({kh}, {kw}) is larger than the padded input "
            f"({win.hp}, {win.wp}) = (H + 2*ph, W + 2*pw) for x of shape {tuple(x_shape)}"
        )
    return win


def pad_hw(x: Array, win: Window, value: float = 0.0) -> Array:
    """``x (N, H, W, C)`` -> ``(N, H + 2*ph, W + 2*pw, C)`` filled with ``value`` around the input."""
    if win.ph == 0 and win.pw == 0:
        return x
    xp = array_api_compat.array_namespace(x)
    n, h, w, c = x.shape
    # --8<-- [start:pad]
    out = xp.full((n, win.hp, win.wp, c), value, dtype=x.dtype, device=array_api_compat.device(x))
    out[:, win.ph : win.ph + h, win.pw : win.pw + w, :] = x
    # --8<-- [end:pad]
    return out


def crop_hw(xpad: Array, win: Window) -> Array:
    """Inverse of :func:`pad_hw`: drop the padding of ``(N, Hp, Wp, C)``."""
    if win.ph == 0 and win.pw == 0:
        return xpad
    return xpad[:, win.ph : win.ph + win.h, win.pw : win.pw + win.w, :]


def window_views(xpad: Array, win: Window) -> Iterator[Array]:
    """For each kernel offset in row-major order, the ``(N, OH, OW, C)`` slice of the padded input."""
    # --8<-- [start:window_views]
    for i, j in win.offsets():
        yield xpad[win.slices(i, j)]
    # --8<-- [end:window_views]


def scatter_windows(grads: Iterable[Array], win: Window) -> Array:
    """Adjoint of :func:`window_views` followed by :func:`crop_hw`.

    ``grads`` gives one ``(N, OH, OW, C)`` gradient per kernel offset (row-major); each is added into
    its strided slice of a zero ``(N, Hp, Wp, C)`` image, overlapping windows accumulating.
    Returns the cropped ``(N, H, W, C)`` gradient.
    """
    grads = iter(grads)
    first = next(grads)
    xp = array_api_compat.array_namespace(first)
    n, c = first.shape[0], first.shape[-1]
    # --8<-- [start:scatter]
    dxpad = xp.zeros((n, win.hp, win.wp, c), dtype=first.dtype, device=array_api_compat.device(first))
    for (i, j), g in zip(win.offsets(), itertools.chain([first], grads), strict=True):
        dxpad[win.slices(i, j)] += g
    return crop_hw(dxpad, win)
    # --8<-- [end:scatter]


def im2col(xpad: Array, win: Window) -> Array:
    """Unroll the padded input into patches: ``(N, Hp, Wp, C)`` -> ``(N*OH*OW, KH*KW*C)``.

    Row ``(n, oh, ow)`` holds the window under output pixel ``(oh, ow)`` in ``(KH, KW, C)`` order,
    the order of a flattened filter ``w[k] (KH, KW, C)``. The same numbers as :func:`im2col_by_slices`
    (the readable reference, used where the library has no strided views).
    """
    windows = sliding_window_view(xpad, (win.kh, win.kw))           # (N, Hp-KH+1, Wp-KW+1, C, KH, KW) or None
    if windows is None:
        return im2col_by_slices(xpad, win)
    # one strided view and one copy: ~2x faster in NumPy than stacking slices at C = 10 (docs/benchmarks.md)
    xp = array_api_compat.array_namespace(xpad)
    windows = xp.permute_dims(windows[:, :: win.sh, :: win.sw, ...], (0, 1, 2, 4, 5, 3))   # (N, OH, OW, KH, KW, C)
    return xp.reshape(windows, (xpad.shape[0] * win.oh * win.ow, win.kh * win.kw * xpad.shape[-1]))


def im2col_by_slices(xpad: Array, win: Window) -> Array:
    """:func:`im2col` from the strided slices of :func:`window_views`, on any Array API library.

    Built separably: first the ``1 x KW`` row patches ``(N, Hp, OW, KW*C)``, then ``KH`` of those
    stacked, so each copy moves runs of ``C`` and ``KW*C`` values instead of ``KH*KW`` runs of ``C``.
    """
    xp = array_api_compat.array_namespace(xpad)
    n, c = xpad.shape[0], xpad.shape[-1]
    along_w, along_h = win.separable()
    # --8<-- [start:im2col]
    rows = xp.stack(list(window_views(xpad, along_w)), axis=3)         # (N, Hp, OW, KW, C)
    rows = xp.reshape(rows, (n, win.hp, win.ow, win.kw * c))
    patches = xp.stack(list(window_views(rows, along_h)), axis=3)      # (N, OH, OW, KH, KW*C)
    return xp.reshape(patches, (n * win.oh * win.ow, win.kh * win.kw * c))
    # --8<-- [end:im2col]


def col2im(cols: Array, win: Window, n: int, c: int) -> Array:
    """Adjoint of :func:`im2col` (then crop): ``(N*OH*OW, KH*KW*C)`` -> ``(N, H, W, C)``."""
    xp = array_api_compat.array_namespace(cols)
    # --8<-- [start:col2im]
    patches = xp.reshape(cols, (n, win.oh, win.ow, win.kh * win.kw, c))
    return scatter_windows([patches[:, :, :, k, :] for k in range(win.kh * win.kw)], win)
    # --8<-- [end:col2im]
