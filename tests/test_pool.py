"""Max and average pooling: TensorFlow oracle on tie-free inputs, the first-maximum rule on ties,
numeric gradients, properties, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import TOLERANCES, rounded, to_xp
from hypothesis import given
from hypothesis import strategies as st

import arraycnn
from arraycnn import backend
from arraycnn.functional import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from arraycnn.testing import pool_configs, random_array, seeds, tie_free_array


def first_max_reference(x, size, stride, padding, dy):
    """Explicit loops: each window's dy goes to its first maximal cell in row-major window order."""
    (kh, kw), (sh, sw), (ph, pw) = size, stride, padding
    n, h, w, c = x.shape
    xpad = np.full((n, h + 2 * ph, w + 2 * pw, c), -np.inf)
    xpad[:, ph:ph + h, pw:pw + w, :] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y, dxpad = np.empty((n, oh, ow, c)), np.zeros_like(xpad)
    for b, i, j, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        window = xpad[b, i * sh:i * sh + kh, j * sw:j * sw + kw, ch]
        r, s = np.unravel_index(np.argmax(window), window.shape)  # argmax returns the first maximum
        y[b, i, j, ch] = window[r, s]
        dxpad[b, i * sh + r, j * sw + s, ch] += dy[b, i, j, ch]
    return y, dxpad[:, ph:ph + h, pw:pw + w, :]


@given(cfg=pool_configs(), seed=seeds)
def test_maxpool_matches_tensorflow(xp, dtype, cfg, seed):
    oracle = pytest.importorskip("oracle_tf")
    x = tie_free_array(seed, cfg.x_shape)
    y, cache = maxpool2d_forward(to_xp(xp, x, dtype), cfg.size, cfg.stride, cfg.padding)
    dy = rounded(random_array(seed + 1, tuple(y.shape)), dtype)
    y_ref, (dx_ref,) = oracle.maxpool2d(rounded(x, dtype), cfg.size, cfg.stride, cfg.padding, dy)
    TOLERANCES[dtype].assert_close(y, y_ref, "y")
    TOLERANCES[dtype].assert_close(maxpool2d_backward(to_xp(xp, dy, dtype), cache), dx_ref, "dx")


@pytest.mark.parametrize("count_include_pad", [True, False])
@given(cfg=pool_configs(), seed=seeds)
def test_avgpool_matches_tensorflow(xp, dtype, count_include_pad, cfg, seed):
    oracle = pytest.importorskip("oracle_tf")
    x = rounded(random_array(seed, cfg.x_shape), dtype)
    y, cache = avgpool2d_forward(to_xp(xp, x, dtype), cfg.size, cfg.stride, cfg.padding, count_include_pad)
    dy = rounded(random_array(seed + 1, tuple(y.shape)), dtype)
    y_ref, (dx_ref,) = oracle.avgpool2d(x, cfg.size, cfg.stride, cfg.padding, count_include_pad, dy)
    TOLERANCES[dtype].assert_close(y, y_ref, "y")
    TOLERANCES[dtype].assert_close(avgpool2d_backward(to_xp(xp, dy, dtype), cache), dx_ref, "dx")


@given(cfg=pool_configs(), seed=seeds, levels=st.integers(1, 3))
def test_maxpool_ties_go_to_the_first_maximum(xp, cfg, seed, levels):
    """Inputs with many ties (few distinct levels, e.g. all-zero windows after ReLU) against explicit loops."""
    x = np.random.default_rng(seed).integers(0, levels, size=cfg.x_shape).astype(float)
    y, cache = maxpool2d_forward(to_xp(xp, x, "float64"), cfg.size, cfg.stride, cfg.padding)
    dy = random_array(seed + 1, tuple(y.shape))
    y_ref, dx_ref = first_max_reference(x, cfg.size, cfg.stride, cfg.padding, dy)
    np.testing.assert_array_equal(backend.to_numpy(y), y_ref)
    np.testing.assert_allclose(backend.to_numpy(maxpool2d_backward(to_xp(xp, dy, "float64"), cache)), dx_ref,
                               rtol=1e-12, atol=1e-12)


@given(cfg=pool_configs(), seed=seeds, levels=st.integers(1, 3))
def test_maxpool_prediction_forward_is_the_training_forward_bit_for_bit(xp, dtype, cfg, seed, levels):
    """``keep_cache=False`` tracks no offsets and returns exactly the training output (ties and -inf padding too)."""
    x = np.random.default_rng(seed).integers(0, levels, size=cfg.x_shape) + random_array(seed, cfg.x_shape)
    x = to_xp(xp, np.where(x > levels / 2, x, 0.0), dtype)   # runs of tied zeros, as after a ReLU
    y, cache = maxpool2d_forward(x, cfg.size, cfg.stride, cfg.padding)
    y_pred, none = maxpool2d_forward(x, cfg.size, cfg.stride, cfg.padding, keep_cache=False)
    assert cache is not None and none is None
    np.testing.assert_array_equal(backend.to_numpy(y_pred), backend.to_numpy(y))


def test_maxpool_all_zero_window_routes_to_its_top_left(xp):
    x = np.zeros((1, 3, 3, 1))
    _, cache = maxpool2d_forward(to_xp(xp, x, "float64"), 3, 1)
    dx = backend.to_numpy(maxpool2d_backward(to_xp(xp, np.full((1, 1, 1, 1), 5.0), "float64"), cache))
    expected = np.zeros((1, 3, 3, 1))
    expected[0, 0, 0, 0] = 5.0
    np.testing.assert_array_equal(dx, expected)


@given(cfg=pool_configs(), seed=seeds)
def test_maxpool_backward_conserves_dy_and_only_touches_maxima(xp, cfg, seed):
    x = tie_free_array(seed, cfg.x_shape)
    y, cache = maxpool2d_forward(to_xp(xp, x, "float64"), cfg.size, cfg.stride, cfg.padding)
    dy = np.abs(random_array(seed + 1, tuple(y.shape))) + 0.1          # positive: no cancellation hides a cell
    dx = backend.to_numpy(maxpool2d_backward(to_xp(xp, dy, "float64"), cache))
    assert abs(dx.sum() - dy.sum()) <= 1e-12 * dy.size * dy.max()
    pooled_values = set(backend.to_numpy(y).ravel().tolist())
    assert set(x[dx != 0].tolist()) <= pooled_values


@given(cfg=pool_configs(max_n=2, max_hw=7, max_c=2), seed=seeds)
def test_numeric_gradients(xp, cfg, seed):
    x = tie_free_array(seed, cfg.x_shape, gap=1e-2)
    kwargs = {"size": cfg.size, "stride": cfg.stride, "padding": cfg.padding}
    arraycnn.gradcheck(maxpool2d_forward, maxpool2d_backward, {"x": to_xp(xp, x, "float64")}, kwargs=kwargs)
    for include in (True, False):
        arraycnn.gradcheck(avgpool2d_forward, avgpool2d_backward, {"x": to_xp(xp, x, "float64")},
                           kwargs={**kwargs, "count_include_pad": include})


@pytest.mark.parametrize("count_include_pad", [True, False])
@given(cfg=pool_configs(), seed=seeds)
def test_avgpool_adjoint(xp, count_include_pad, cfg, seed):
    """<avgpool(x), v> == <x, avgpool_backward(v)> (avg pooling is linear)."""
    x = random_array(seed, cfg.x_shape)
    y, cache = avgpool2d_forward(to_xp(xp, x, "float64"), cfg.size, cfg.stride, cfg.padding, count_include_pad)
    v = random_array(seed + 1, tuple(y.shape))
    dx = backend.to_numpy(avgpool2d_backward(to_xp(xp, v, "float64"), cache))
    lhs, rhs = float(np.sum(backend.to_numpy(y) * v)), float(np.sum(x * dx))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, float(np.sum(np.abs(x * dx))))


def test_tutorial_pooling_of_the_relu_map(xp, dtype):
    """The tutorial pools a 26x26 map with a 5x5 window, stride 1, no padding -> 22x22."""
    x = np.random.default_rng(0).random((1, 26, 26, 1))
    ymax, _ = maxpool2d_forward(to_xp(xp, x, dtype), 5, 1)
    yavg, _ = avgpool2d_forward(to_xp(xp, x, dtype), 5, 1)
    assert ymax.shape == yavg.shape == (1, 22, 22, 1)
    windows = np.lib.stride_tricks.sliding_window_view(x[0, :, :, 0].astype(dtype), (5, 5))
    TOLERANCES[dtype].assert_close(backend.to_numpy(ymax)[0, :, :, 0], windows.max(axis=(2, 3)), "max")
    TOLERANCES[dtype].assert_close(backend.to_numpy(yavg)[0, :, :, 0], windows.mean(axis=(2, 3)), "avg")


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_backward_does_not_modify_inputs_and_keeps_dtype(xp, dtype, pool):
    forward, backward_ = ((maxpool2d_forward, maxpool2d_backward) if pool == "max"
                          else (avgpool2d_forward, avgpool2d_backward))
    x_host = tie_free_array(0, (2, 7, 6, 3))
    x = to_xp(xp, x_host, dtype)
    y, cache = forward(x, 3, stride=2, padding=1)
    dy_host = random_array(1, tuple(y.shape))
    dy = to_xp(xp, dy_host, dtype)
    dx = backward_(dy, cache)
    np.testing.assert_array_equal(backend.to_numpy(x), x_host.astype(dtype))
    np.testing.assert_array_equal(backend.to_numpy(dy), dy_host.astype(dtype))
    np.testing.assert_array_equal(backend.to_numpy(backward_(dy, cache)), backend.to_numpy(dx))
    assert y.dtype == dx.dtype == x.dtype


@pytest.mark.parametrize("forward", [maxpool2d_forward, avgpool2d_forward])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 6}, ValueError, r"window size=\(6, 6\) is larger than the padded input"),
        ({"size": 2, "stride": 0}, ValueError, r"stride must be >= 1"),
        ({"size": 0}, ValueError, r"size must be >= 1"),
        ({"size": 2, "padding": -1}, ValueError, r"padding must be >= 0"),
        ({"size": 2, "padding": 2}, ValueError, r"padding must be smaller than the window"),
        ({"size": (2, 2, 2)}, ValueError, r"size must be an int or an \(h, w\) pair"),
        ({"size": 2.0}, TypeError, r"size must be an int"),
    ],
)
def test_bad_input(xp, forward, kwargs, error, match):
    with pytest.raises(error, match=match):
        forward(to_xp(xp, np.zeros((1, 5, 5, 2)), "float64"), **kwargs)


@pytest.mark.parametrize("forward", [maxpool2d_forward, avgpool2d_forward])
def test_bad_input_rank_and_dtype(xp, forward):
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, H, W, C\)"):
        forward(to_xp(xp, np.zeros((5, 5, 2)), "float64"), 2)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        forward(xp.zeros((1, 4, 4, 1), dtype=xp.int32), 2)
