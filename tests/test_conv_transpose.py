"""Transposed convolution: the TensorFlow oracle, numeric gradients, the adjoint of conv2d, properties, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES, assert_backward_is_pure, assert_input_grad_false_skips_only_dx, rounded, to_xp
from hypothesis import given
from hypothesis import strategies as st

import arraycnn
from arraycnn import backend
from arraycnn.functional import (
    conv2d_backward,
    conv2d_forward,
    conv2d_transpose_backward,
    conv2d_transpose_forward,
)
from arraycnn.testing import conv_transpose_configs, random_array, seeds


def _run(xp, dtype, cfg, x, w, b):
    bias = None if b is None else to_xp(xp, b, dtype)
    return conv2d_transpose_forward(to_xp(xp, x, dtype), to_xp(xp, w, dtype), bias, stride=cfg.stride,
                                    padding=cfg.padding, output_padding=cfg.output_padding)


@given(cfg=conv_transpose_configs(), seed=seeds)
def test_matches_tensorflow(xp, dtype, cfg, seed):
    """Forward and dx, dw, db against tf.nn.conv2d_transpose (explicit output shape) + GradientTape."""
    oracle = pytest.importorskip("oracle_tf")
    tol = TOLERANCES[dtype]
    x = rounded(random_array(seed, cfg.x_shape), dtype)
    w = rounded(random_array(seed + 1, cfg.w_shape, scale=0.5), dtype)
    b = rounded(random_array(seed + 2, cfg.w_shape[3:]), dtype)
    dy = rounded(random_array(seed + 3, cfg.y_shape), dtype)
    y_ref, (dx_ref, dw_ref, db_ref) = oracle.conv2d_transpose(x, w, b, cfg.stride, cfg.padding, cfg.output_padding,
                                                              dy)
    y, cache = _run(xp, dtype, cfg, x, w, b)
    dx, dw, db = conv2d_transpose_backward(to_xp(xp, dy, dtype), cache)
    tol.assert_close(y, y_ref, "y")
    tol.assert_close(dx, dx_ref, "dx")
    tol.assert_close(dw, dw_ref, "dw")
    tol.assert_close(db, db_ref, "db")


@given(cfg=conv_transpose_configs(max_n=2, max_hw=6, max_c=2, max_k=2, max_kernel=3), seed=seeds)
def test_numeric_gradient(xp, cfg, seed):
    x, w = random_array(seed, cfg.x_shape), random_array(seed + 1, cfg.w_shape)
    b = random_array(seed + 2, cfg.w_shape[3:])
    arraycnn.gradcheck(conv2d_transpose_forward, conv2d_transpose_backward,
                       {"x": to_xp(xp, x, "float64"), "w": to_xp(xp, w, "float64"), "b": to_xp(xp, b, "float64")},
                       kwargs={"stride": cfg.stride, "padding": cfg.padding, "output_padding": cfg.output_padding},
                       seed=seed)


@given(cfg=conv_transpose_configs(), seed=seeds)
def test_adjoint_of_conv2d(xp, cfg, seed):
    """<conv(z), x> == <z, convT(x)> for z of the output's shape: convT is the convolution's transpose."""
    x, w = random_array(seed, cfg.x_shape), random_array(seed + 1, cfg.w_shape)
    z = random_array(seed + 2, cfg.y_shape)
    y, _ = _run(xp, "float64", cfg, x, w, None)
    conv_z, _ = conv2d_forward(to_xp(xp, z, "float64"), to_xp(xp, w, "float64"), stride=cfg.stride,
                               padding=cfg.padding)
    assert tuple(conv_z.shape) == cfg.x_shape
    lhs = float(np.sum(backend.to_numpy(conv_z) * x))
    rhs = float(np.sum(z * backend.to_numpy(y)))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, float(np.sum(np.abs(z * backend.to_numpy(y)))))


@given(cfg=conv_transpose_configs(), seed=seeds)
def test_equals_the_input_gradient_of_conv2d(xp, cfg, seed):
    """conv2d_transpose_forward(dy, w) is conv2d_backward's dx for the conv it transposes."""
    x, w = random_array(seed, cfg.x_shape), random_array(seed + 1, cfg.w_shape)
    _, conv_cache = conv2d_forward(to_xp(xp, np.zeros(cfg.y_shape), "float64"), to_xp(xp, w, "float64"),
                                   stride=cfg.stride, padding=cfg.padding)
    dx_conv, _, _ = conv2d_backward(to_xp(xp, x, "float64"), conv_cache)
    y, _ = _run(xp, "float64", cfg, x, w, None)
    TOLERANCES["float64"].assert_close(y, backend.to_numpy(dx_conv), "y")


@given(h=st.integers(1, 6), kh=st.integers(1, 5), s=st.integers(1, 3), p=st.integers(0, 3), op=st.integers(0, 2))
def test_output_size_formula(h, kh, s, p, op):
    """OH = (H - 1)*s - 2p + KH + op for 0 <= op < s and OH >= 1, else a ValueError naming the cause."""
    x, w = np.zeros((1, h, h, 1)), np.ones((1, kh, kh, 1))
    oh = (h - 1) * s - 2 * p + kh + op
    if op >= s:
        with pytest.raises(ValueError, match="output_padding must be smaller than the stride"):
            conv2d_transpose_forward(x, w, stride=s, padding=p, output_padding=op)
    elif oh < 1:
        with pytest.raises(ValueError, match=r"padding \(\d+, \d+\) is too large"):
            conv2d_transpose_forward(x, w, stride=s, padding=p, output_padding=op)
    else:
        y, _ = conv2d_transpose_forward(x, w, stride=s, padding=p, output_padding=op)
        assert y.shape == (1, oh, oh, 1)


def test_the_autoencoder_upsampling_doubles_the_size(xp):
    """3x3, stride 2, padding 1, output_padding 1: 7 -> 14 -> 28, and every output pixel is painted."""
    w = to_xp(xp, np.ones((1, 3, 3, 1)), "float64")
    y, _ = conv2d_transpose_forward(to_xp(xp, np.ones((1, 7, 7, 1)), "float64"), w, stride=2, padding=1,
                                    output_padding=1)
    assert y.shape == (1, 14, 14, 1)
    # stride 2 with a 3x3 stamp: even rows/cols get one stamp row/col, odd ones two (the checkerboard);
    # the last row and column lose the stamp cropped by padding
    cover = np.array([1, 2] * 6 + [1, 1], float)
    np.testing.assert_array_equal(backend.to_numpy(y)[0, :, :, 0], np.outer(cover, cover))


def test_backward_does_not_modify_inputs_and_keeps_dtype(xp, dtype):
    rng = np.random.default_rng(3)
    hosts = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4)
    assert_backward_is_pure(xp, dtype, conv2d_transpose_forward, conv2d_transpose_backward, hosts, rng,
                            stride=(2, 1), padding=(1, 0), output_padding=(1, 0))


def test_input_grad_false_skips_only_dx(xp):
    rng = np.random.default_rng(5)
    x, w, b = (to_xp(xp, rng.standard_normal(s), "float64") for s in ((2, 3, 3, 2), (2, 3, 3, 4), (4,)))
    y, cache = conv2d_transpose_forward(x, w, b, stride=2, padding=1)
    dy = to_xp(xp, rng.standard_normal(tuple(y.shape)), "float64")
    assert_input_grad_false_skips_only_dx(conv2d_transpose_backward, dy, cache)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda x, w, xp: (x[0, ...], w, {}), ValueError, r"x must be 4-D \(N, H, W, K\)"),
        (lambda x, w, xp: (x, w[0, ...], {}), ValueError, r"w must be 4-D \(K, KH, KW, C\)"),
        (lambda x, w, xp: (x, w[:2, ...], {}), ValueError, r"w must have K = 3 input channels"),
        (lambda x, w, xp: (x, w, {"b": xp.zeros(3, dtype=xp.float64)}), ValueError,
         r"b must have shape \(C,\) = \(4,\)"),
        (lambda x, w, xp: (x, w, {"stride": 0}), ValueError, r"stride must be >= 1"),
        (lambda x, w, xp: (x, w, {"padding": -1}), ValueError, r"padding must be >= 0"),
        (lambda x, w, xp: (x, w, {"stride": 2, "output_padding": 2}), ValueError,
         r"output_padding must be smaller than the stride \(2, 2\)"),
        (lambda x, w, xp: (x, w, {"output_padding": (0, -1)}), ValueError, r"output_padding must be >= 0"),
        (lambda x, w, xp: (x, w, {"padding": 5}), ValueError, r"padding \(5, 5\) is too large"),
        (lambda x, w, xp: (x, w, {"stride": 1.5}), TypeError, r"stride must be an int"),
        (lambda x, w, xp: (xp.astype(x, xp.int64), w, {}), TypeError, r"x must have a floating dtype"),
        (lambda x, w, xp: (x, xp.astype(w, xp.float32), {}), TypeError, r"must share one floating dtype"),
        (lambda x, w, xp: ([[0.0]], w, {}), TypeError, r"x must be an array"),
    ],
)
def test_bad_input(xp, change, error, match):
    x, w = to_xp(xp, np.zeros((2, 3, 3, 3)), "float64"), to_xp(xp, np.zeros((3, 3, 3, 4)), "float64")
    x2, w2, kwargs = change(x, w, xp)
    with pytest.raises(error, match=match):
        conv2d_transpose_forward(x2, w2, **kwargs)


def test_backward_refuses_wrong_dy_shape(xp):
    x, w = to_xp(xp, np.zeros((2, 3, 3, 3)), "float64"), to_xp(xp, np.zeros((3, 3, 3, 4)), "float64")
    _, cache = conv2d_transpose_forward(x, w, stride=2)
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(N, OH, OW, C\) = \(2, 7, 7, 4\)"):
        conv2d_transpose_backward(xp.zeros((2, 7, 7, 3), dtype=xp.float64), cache)


def test_a_learners_version_built_from_the_convolution_matches_the_engine():
    """assert_matches_engine("conv2d_transpose") on an implementation that runs the convolution backwards:
    forward = conv2d_backward's dx, backward = conv2d_forward (and its weight gradient with x as dY)."""
    from arraycnn.testing import assert_matches_engine

    def pair(v):
        return tuple(v) if isinstance(v, tuple | list) else (v, v)

    def my_forward(x, w, b, stride, padding, output_padding):
        (sh, sw), (ph, pw), (oph, opw) = pair(stride), pair(padding), pair(output_padding)
        n, h, wd, _ = x.shape
        _, kh, kw, c = w.shape
        canvas = np.zeros((n, (h - 1) * sh - 2 * ph + kh + oph, (wd - 1) * sw - 2 * pw + kw + opw, c))
        _, conv_cache = conv2d_forward(canvas, w, stride=stride, padding=padding)
        y, _, _ = conv2d_backward(x, conv_cache)
        return y + b, (x, w, stride, padding)

    def my_backward(dy, cache):
        x, w, stride, padding = cache
        dx, conv_cache = conv2d_forward(dy, w, stride=stride, padding=padding)
        _, dw, _ = conv2d_backward(x, conv_cache)
        return dx, dw, dy.sum(axis=(0, 1, 2))

    assert_matches_engine(my_forward, my_backward, "conv2d_transpose", max_examples=30, seed=0)
    assert_matches_engine(my_forward, my_backward, "conv2d_transpose", max_examples=10, square=True, seed=1)
