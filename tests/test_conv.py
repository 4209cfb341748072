"""Convolution: the tutorial's check cells, the TensorFlow oracle, numeric gradients, properties, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES, assert_backward_is_pure, assert_input_grad_false_skips_only_dx, rounded, to_xp
from hypothesis import given
from hypothesis import strategies as st

import arraycnn
from arraycnn import backend
from arraycnn.functional import col2im, conv2d_backward, conv2d_forward, dense_forward, im2col
from arraycnn.functional.conv import Im2colConvCache, ToeplitzConvCache
from arraycnn.testing import conv_configs, random_array, seeds

METHODS = ["im2col", "toeplitz"]

# The tutorial's three check cells (inputs and printed expected arrays, verbatim).
F1, F2, F3 = [[2, 1], [2, 1]], [[3, 1], [3, 3]], [[3, 2], [2, 3]]
A3 = [[[5, 2, 3], [1, 2, 1], [1, 2, 3], [1, 2, 3]],
      [[3, 2, 3], [1, 0, 3], [1, 2, 1], [0, 0, 1]],
      [[1, 1, 1], [1, 2, 3], [0, 2, 3], [1, 2, 1]],
      [[1, 0, 3], [0, 2, 0], [1, 2, 3], [1, 2, 3]]]
EXPECTED_1 = [[1., 4., 7., 6.], [2., 8., 14., 12.], [2., 8., 14., 12.], [1., 4., 7., 6.]]
EXPECTED_2 = [[20., 32., 26., 30., 14.], [31., 58., 38., 39., 19.], [18., 51., 45., 35., 13.],
              [14., 31., 47., 50., 25.], [7., 13., 15., 26., 17.]]
EXPECTED_3 = [[[10., 30., 30., 20.], [24., 42., 32., 32.], [14., 30., 26., 26.], [18., 36., 30., 30.],
               [12., 18., 12., 14.]],
              [[18., 34., 44., 31.], [44., 70., 66., 58.], [26., 42., 44., 38.], [27., 39., 41., 39.],
               [14., 21., 20., 19.]],
              [[11., 17., 25., 18.], [32., 55., 56., 51.], [29., 49., 47., 45.], [23., 40., 36., 35.],
               [10., 15., 11., 13.]],
              [[7., 15., 18., 14.], [22., 33., 35., 31.], [27., 47., 50., 47.], [32., 55., 53., 50.],
               [20., 30., 24., 25.]],
              [[4., 4., 8., 7.], [10., 14., 16., 13.], [10., 12., 18., 15.], [18., 24., 30., 26.],
               [12., 18., 18., 17.]]]


@pytest.mark.parametrize("method", METHODS)
def test_tutorial_check_cells(xp, dtype, method):
    """Cell 1: one channel, padding 1; cell 2: three channels; cell 3: four filters of three channels."""
    a1 = to_xp(xp, np.array([[1, 2, 3]] * 3, float).reshape(1, 3, 3, 1), dtype)
    y1, _ = conv2d_forward(a1, to_xp(xp, np.array(F1, float).reshape(1, 2, 2, 1), dtype), padding=1, method=method)
    np.testing.assert_array_equal(backend.to_numpy(y1)[0, :, :, 0], EXPECTED_1)

    a = to_xp(xp, np.array(A3, float)[None], dtype)
    f = np.dstack((F1, F2, F3)).astype(float)
    y2, _ = conv2d_forward(a, to_xp(xp, f[None], dtype), padding=1, method=method)
    np.testing.assert_array_equal(backend.to_numpy(y2)[0, :, :, 0], EXPECTED_2)

    k1, k2, k3 = (np.dstack((g, g, g)) for g in (F1, F2, F3))
    k4 = np.dstack((F1, F2, F3))
    y3, _ = conv2d_forward(a, to_xp(xp, np.array([k1, k2, k3, k4], float), dtype), padding=1, method=method)
    np.testing.assert_array_equal(backend.to_numpy(y3)[0], EXPECTED_3)


@pytest.mark.parametrize("method", METHODS)
def test_fully_connected_is_conv_with_input_sized_kernel(xp, method):
    """The tutorial's remark: a dense layer equals a VALID convolution whose kernel is the input's size."""
    rng = np.random.default_rng(0)
    im = to_xp(xp, rng.integers(0, 5, size=(3, 3, 3, 1)).astype(float), "float64")
    k = to_xp(xp, rng.integers(0, 2, size=(2, 3, 3, 1)).astype(float), "float64")
    y_conv, _ = conv2d_forward(im, k, method=method)
    y_dense, _ = dense_forward(im, k)
    np.testing.assert_array_equal(backend.to_numpy(y_conv)[:, 0, 0, :], backend.to_numpy(y_dense))


@pytest.mark.parametrize("method", METHODS)
@given(cfg=conv_configs(), seed=seeds)
def test_matches_tensorflow(xp, dtype, method, cfg, seed):
    """Forward and dx, dw, db against tf.nn.conv2d + GradientTape, random upstream gradient."""
    oracle = pytest.importorskip("oracle_tf")
    tol = TOLERANCES[dtype]
    x = rounded(random_array(seed, cfg.x_shape), dtype)
    w = rounded(random_array(seed + 1, cfg.w_shape, scale=0.5), dtype)
    b = rounded(random_array(seed + 2, cfg.w_shape[:1]), dtype)
    y_ref = oracle.conv2d_output(x, w, cfg.stride, cfg.padding)
    dy = rounded(random_array(seed + 3, y_ref.shape), dtype)
    y_ref, (dx_ref, dw_ref, db_ref) = oracle.conv2d(x, w, b, cfg.stride, cfg.padding, dy)

    y, cache = conv2d_forward(to_xp(xp, x, dtype), to_xp(xp, w, dtype), to_xp(xp, b, dtype),
                              stride=cfg.stride, padding=cfg.padding, method=method)
    dx, dw, db = conv2d_backward(to_xp(xp, dy, dtype), cache)
    tol.assert_close(y, y_ref, "y")
    tol.assert_close(dx, dx_ref, "dx")
    tol.assert_close(dw, dw_ref, "dw")
    tol.assert_close(db, db_ref, "db")


@pytest.mark.parametrize("method", METHODS)
@given(cfg=conv_configs(max_n=2, max_hw=7, max_c=2, max_k=2, max_kernel=3), seed=seeds)
def test_numeric_gradient(xp, method, cfg, seed):
    x, w = random_array(seed, cfg.x_shape), random_array(seed + 1, cfg.w_shape)
    b = random_array(seed + 2, cfg.w_shape[:1])
    arraycnn.gradcheck(conv2d_forward, conv2d_backward,
                       {"x": to_xp(xp, x, "float64"), "w": to_xp(xp, w, "float64"), "b": to_xp(xp, b, "float64")},
                       kwargs={"stride": cfg.stride, "padding": cfg.padding, "method": method}, seed=seed)


@pytest.mark.parametrize("method", METHODS)
@given(cfg=conv_configs(), seed=seeds)
def test_adjoint_property(xp, method, cfg, seed):
    """<conv(x), v> == <x, conv_backward_dx(v)>: the input-gradient is the transposed convolution."""
    x, w = random_array(seed, cfg.x_shape), random_array(seed + 1, cfg.w_shape)
    y, cache = conv2d_forward(to_xp(xp, x, "float64"), to_xp(xp, w, "float64"),
                              stride=cfg.stride, padding=cfg.padding, method=method)
    v = random_array(seed + 2, tuple(y.shape))
    dx, _, db = conv2d_backward(to_xp(xp, v, "float64"), cache)
    assert db is None
    lhs = float(np.sum(backend.to_numpy(y) * v))
    rhs = float(np.sum(x * backend.to_numpy(dx)))
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs), float(np.sum(np.abs(x) * np.abs(backend.to_numpy(dx)))))


@given(cfg=conv_configs(), seed=seeds)
def test_im2col_and_toeplitz_agree(xp, cfg, seed):
    x, w = random_array(seed, cfg.x_shape), random_array(seed + 1, cfg.w_shape)
    b = random_array(seed + 2, cfg.w_shape[:1])
    args = [to_xp(xp, a, "float64") for a in (x, w, b)]
    y1, c1 = conv2d_forward(*args, stride=cfg.stride, padding=cfg.padding, method="im2col")
    y2, c2 = conv2d_forward(*args, stride=cfg.stride, padding=cfg.padding, method="toeplitz")
    TOLERANCES["float64"].assert_close(y1, backend.to_numpy(y2), "y")
    dy = to_xp(xp, random_array(seed + 3, tuple(y1.shape)), "float64")
    for name, g1, g2 in zip("dx dw db".split(), conv2d_backward(dy, c1), conv2d_backward(dy, c2), strict=True):
        TOLERANCES["float64"].assert_close(g1, backend.to_numpy(g2), name)


@pytest.mark.parametrize("method", METHODS)
def test_backward_does_not_modify_inputs_and_keeps_dtype(xp, dtype, method):
    rng = np.random.default_rng(3)
    hosts = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((4, 3, 2, 3)), rng.standard_normal(4)
    assert_backward_is_pure(xp, dtype, conv2d_forward, conv2d_backward, hosts, rng, stride=(2, 1), padding=(1, 2),
                            method=method)


@pytest.mark.parametrize(("method", "cache_type"), [("im2col", Im2colConvCache), ("toeplitz", ToeplitzConvCache)])
@given(cfg=conv_configs(), seed=seeds)
def test_prediction_forward_is_the_training_forward_bit_for_bit(xp, method, cache_type, cfg, seed):
    """``keep_cache=False`` keeps nothing for a backward and returns exactly the training output."""
    x, w, b = (to_xp(xp, random_array(seed + i, shape), "float32")
               for i, shape in enumerate((cfg.x_shape, cfg.w_shape, cfg.w_shape[:1])))
    y, cache = conv2d_forward(x, w, b, stride=cfg.stride, padding=cfg.padding, method=method)
    y_pred, none = conv2d_forward(x, w, b, stride=cfg.stride, padding=cfg.padding, method=method, keep_cache=False)
    assert type(cache) is cache_type and none is None
    np.testing.assert_array_equal(backend.to_numpy(y_pred), backend.to_numpy(y))


def test_backward_refuses_a_cache_it_did_not_make(xp):
    x, w = _ok_args(xp)
    y, _ = conv2d_forward(x, w)
    with pytest.raises(TypeError, match=r"cache must come from conv2d_forward\(.*keep_cache=True\), got NoneType"):
        conv2d_backward(xp.zeros(y.shape, dtype=xp.float64), None)


# ---------------------------------------------------------------- bad input
def _ok_args(xp, dtype="float64"):
    return to_xp(xp, np.zeros((2, 5, 5, 3)), dtype), to_xp(xp, np.zeros((4, 3, 3, 3)), dtype)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda x, w, xp: (x[0, ...], w, {}), ValueError, r"x must be 4-D \(N, H, W, C\)"),
        (lambda x, w, xp: (x, w[0, ...], {}), ValueError, r"w must be 4-D \(K, KH, KW, C\)"),
        (lambda x, w, xp: (x, w[..., :2], {}), ValueError, r"w must have C = 3 input channels"),
        (lambda x, w, xp: (x, w, {"b": xp.zeros(3, dtype=xp.float64)}), ValueError,
         r"b must have shape \(K,\) = \(4,\)"),
        (lambda x, w, xp: (x[:, :2, :2, :], w, {}), ValueError, r"window w=\(3, 3\) is larger than the padded input"),
        (lambda x, w, xp: (x, w, {"stride": 0}), ValueError, r"stride must be >= 1"),
        (lambda x, w, xp: (x, w, {"stride": (1, 0)}), ValueError, r"stride must be >= 1"),
        (lambda x, w, xp: (x, w, {"padding": -1}), ValueError, r"padding must be >= 0"),
        (lambda x, w, xp: (x, w, {"padding": (1, 2, 3)}), ValueError, r"padding must be an int or an \(h, w\) pair"),
        (lambda x, w, xp: (x, w, {"stride": 1.5}), TypeError, r"stride must be an int"),
        (lambda x, w, xp: (x, w, {"method": "fft"}), ValueError, r"method must be one of"),
        (lambda x, w, xp: (xp.astype(x, xp.int64), w, {}), TypeError, r"x must have a floating dtype"),
        (lambda x, w, xp: (x, xp.astype(w, xp.float32), {}), TypeError, r"must share one floating dtype"),
        (lambda x, w, xp: ([[0.0]], w, {}), TypeError, r"x must be an array"),
    ],
)
def test_bad_input(xp, change, error, match):
    x, w = _ok_args(xp)
    x2, w2, kwargs = change(x, w, xp)
    with pytest.raises(error, match=match):
        conv2d_forward(x2, w2, **kwargs)


def test_arrays_from_two_backends_are_refused():
    strict = backend.get_namespace("array_api_strict")
    x = np.zeros((1, 4, 4, 1))
    w = strict.zeros((1, 2, 2, 1), dtype=strict.float64)
    with pytest.raises(TypeError, match="different backends"):
        conv2d_forward(x, w)


def test_backward_refuses_wrong_dy_shape(xp):
    x, w = _ok_args(xp)
    _, cache = conv2d_forward(x, w)
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(N, OH, OW, K\) = \(2, 3, 3, 4\)"):
        conv2d_backward(xp.zeros((2, 3, 3, 5), dtype=xp.float64), cache)


@given(h=st.integers(1, 9), kh=st.integers(1, 5), p=st.integers(0, 3), s=st.integers(1, 3))
def test_output_size_formula(h, kh, p, s):
    """OH = (H + 2p - KH) // s + 1 whenever the window fits, else a ValueError."""
    x = np.zeros((1, h, h, 1))
    w = np.ones((1, kh, kh, 1))
    if kh > h + 2 * p:
        with pytest.raises(ValueError, match="larger than the padded input"):
            conv2d_forward(x, w, stride=s, padding=p)
    else:
        y, _ = conv2d_forward(x, w, stride=s, padding=p)
        assert y.shape == (1, (h + 2 * p - kh) // s + 1, (h + 2 * p - kh) // s + 1, 1)


@pytest.mark.parametrize("method", METHODS)
def test_input_grad_false_skips_only_dx(xp, method):
    rng = np.random.default_rng(5)
    x, w, b = (to_xp(xp, a, "float64") for a in (rng.standard_normal((2, 6, 6, 2)), rng.standard_normal((3, 3, 3, 2)),
                                                  rng.standard_normal(3)))
    y, cache = conv2d_forward(x, w, b, stride=2, padding=1, method=method)
    dy = to_xp(xp, rng.standard_normal(tuple(y.shape)), "float64")
    assert_input_grad_false_skips_only_dx(conv2d_backward, dy, cache)


@given(cfg=conv_configs(), seed=seeds)
def test_im2col_from_the_strided_view_is_the_slices_bit_for_bit(xp, dtype, cfg, seed):
    from arraycnn.functional.windows import im2col_by_slices, make_window, pad_hw

    win = make_window(cfg.x_shape, cfg.w_shape[1:3], cfg.stride, cfg.padding, kernel_name="w")
    xpad = pad_hw(to_xp(xp, random_array(seed, cfg.x_shape), dtype), win)
    np.testing.assert_array_equal(backend.to_numpy(im2col(xpad, win)), backend.to_numpy(im2col_by_slices(xpad, win)))


def test_each_namespace_takes_the_im2col_path_the_oracle_tests_count_on(xp):
    """NumPy (and CuPy) unroll from a strided view, array-api-strict by slices: the oracle tests cover both."""
    view = backend.sliding_window_view(xp.zeros((2, 5, 4, 3), dtype=xp.float64), (3, 2))
    if backend.backend_name(xp) == "array_api_strict":
        assert view is None
    else:
        assert tuple(view.shape) == (2, 3, 3, 3, 3, 2)


@given(cfg=conv_configs(), seed=seeds)
def test_col2im_is_the_adjoint_of_im2col(xp, cfg, seed):
    """<im2col(pad(x)), P> == <x, col2im(P)>: the scatter that a convolution's input-gradient is built on."""
    from arraycnn.functional.windows import make_window, pad_hw

    x = random_array(seed, cfg.x_shape)
    win = make_window(cfg.x_shape, cfg.w_shape[1:3], cfg.stride, cfg.padding, kernel_name="w")
    cols = im2col(pad_hw(to_xp(xp, x, "float64"), win), win)
    p = random_array(seed + 1, tuple(cols.shape))
    back = backend.to_numpy(col2im(to_xp(xp, p, "float64"), win, cfg.x_shape[0], cfg.x_shape[3]))
    lhs, rhs = float(np.sum(backend.to_numpy(cols) * p)), float(np.sum(x * back))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, float(np.sum(np.abs(x * back))))
