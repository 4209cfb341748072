"""Hypothesis strategies for valid convolution/pooling configurations and tie-free arrays.

The engine's own test suite draws its cases from here, and learners who write their own layers can use
the same strategies (needs ``hypothesis``: ``pip install 'arraycnn[test]'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass(frozen=True)
class ConvConfig:
    """A valid convolution: ``x (N, H, W, C)``, ``w (K, KH, KW, C)``, per-axis stride and padding."""

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class PoolConfig:
    """A valid pooling: ``x (N, H, W, C)``, window ``size``, ``stride`` and ``padding < size`` per axis."""

    x_shape: tuple[int, int, int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def _axis(draw: st.DrawFn, max_size: int, max_kernel: int, max_stride: int, max_padding: int,
          padding_below_kernel: bool) -> tuple[int, int, int, int]:
    """(size, kernel, stride, padding) along one axis with ``kernel <= size + 2*padding``."""
    kernel = draw(st.integers(1, max_kernel))
    pad_cap = min(max_padding, kernel - 1) if padding_below_kernel else max_padding
    padding = draw(st.integers(0, pad_cap))
    size = draw(st.integers(max(1, kernel - 2 * padding), max(max_size, kernel - 2 * padding)))
    stride = draw(st.integers(1, max_stride))
    return size, kernel, stride, padding


@st.composite
def conv_configs(draw: st.DrawFn, max_n: int = 4, max_hw: int = 16, max_c: int = 4, max_k: int = 5,
                 max_kernel: int = 5, max_stride: int = 3, max_padding: int = 3) -> ConvConfig:
    """Valid conv configurations: N 1-4, H, W 1-16, C 1-4, K 1-5, KH, KW 1-5, stride 1-3, padding 0-3."""
    h, kh, sh, ph = _axis(draw, max_hw, max_kernel, max_stride, max_padding, padding_below_kernel=False)
    w, kw, sw, pw = _axis(draw, max_hw, max_kernel, max_stride, max_padding, padding_below_kernel=False)
    n, c, k = draw(st.integers(1, max_n)), draw(st.integers(1, max_c)), draw(st.integers(1, max_k))
    return ConvConfig((n, h, w, c), (k, kh, kw, c), (sh, sw), (ph, pw))


@st.composite
def pool_configs(draw: st.DrawFn, max_n: int = 3, max_hw: int = 12, max_c: int = 3, max_size: int = 4,
                 max_stride: int = 3, max_padding: int = 2) -> PoolConfig:
    """Valid pooling configurations (padding smaller than the window, as PyTorch and the engine require)."""
    h, kh, sh, ph = _axis(draw, max_hw, max_size, max_stride, max_padding, padding_below_kernel=True)
    w, kw, sw, pw = _axis(draw, max_hw, max_size, max_stride, max_padding, padding_below_kernel=True)
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    return PoolConfig((n, h, w, c), (kh, kw), (sh, sw), (ph, pw))


def random_array(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Standard-normal float64 host array of ``shape`` times ``scale`` from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape) * scale


def tie_free_array(seed: int, shape: tuple[int, ...], gap: float = 1e-2) -> np.ndarray:
    """Float64 host array whose entries are all distinct, at least ``gap`` apart, in random order.

    Max pooling has a unique maximum in every window, and a central difference with ``eps << gap``
    never crosses a tie, so oracles and numeric gradients are unambiguous.
    """
    size = int(np.prod(shape))
    values = (np.arange(size) - size / 2) * gap
    return np.random.default_rng(seed).permutation(values).reshape(shape)


seeds = st.integers(0, 2**32 - 1)
"""Seeds for :func:`random_array` / :func:`tie_free_array` (drawn by hypothesis, so failures shrink and replay)."""
