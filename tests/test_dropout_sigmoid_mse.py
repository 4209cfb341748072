"""Sigmoid and mean squared error (TensorFlow oracle, numeric gradients, stability, bad input); inverted dropout
(statistics, the mask reused by the backward, determinism from its key) and the device random numbers under it."""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import pytest
from conftest import TOLERANCES, rounded, to_xp
from hypothesis import given
from hypothesis import strategies as st

import arraycnn
from arraycnn import backend
from arraycnn.backend import random_uniform
from arraycnn.functional import (
    dropout_backward,
    dropout_forward,
    mean_squared_error_backward,
    mean_squared_error_forward,
    sigmoid_backward,
    sigmoid_forward,
)
from arraycnn.testing import random_array, seeds

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
drop_ps = st.sampled_from([0.0, 0.1, 0.5, 0.9])


# ------------------------------------------------------------------ sigmoid
@given(shape=shapes, seed=seeds, scale=st.sampled_from([1.0, 10.0, 100.0]))
def test_sigmoid_matches_tensorflow(xp, dtype, shape, seed, scale):
    oracle = pytest.importorskip("oracle_tf")
    x = rounded(random_array(seed, shape, scale=scale), dtype)
    dy = rounded(random_array(seed + 1, shape), dtype)
    y_ref, (dx_ref,) = oracle.sigmoid(x, dy)
    y, cache = sigmoid_forward(to_xp(xp, x, dtype))
    TOLERANCES[dtype].assert_close(y, y_ref, "y")
    TOLERANCES[dtype].assert_close(sigmoid_backward(to_xp(xp, dy, dtype), cache), dx_ref, "dx")


@given(shape=shapes, seed=seeds)
def test_sigmoid_numeric_gradient(xp, shape, seed):
    arraycnn.gradcheck(sigmoid_forward, sigmoid_backward, {"x": to_xp(xp, random_array(seed, shape, 3.0), "float64")},
                       seed=seed)


def test_sigmoid_is_stable_for_large_inputs(xp, dtype):
    """No exp overflows (NumPy would warn), y stays in [0, 1], sigmoid(-x) = 1 - sigmoid(x), and the gradient
    vanishes smoothly: no NaN anywhere."""
    x_host = np.array([-1e30, -1e4, -80.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4, 1e30])
    x = to_xp(xp, x_host, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, cache = sigmoid_forward(x)
        y_neg, _ = sigmoid_forward(-x)
        dx = sigmoid_backward(to_xp(xp, np.ones(x_host.shape), dtype), cache)
    y, y_neg, dx = (backend.to_numpy(a).astype(np.float64) for a in (y, y_neg, dx))
    assert np.all((y >= 0) & (y <= 1)) and np.all(np.isfinite(dx)) and np.all(dx >= 0)
    np.testing.assert_array_equal(y[[0, 1, -2, -1]], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(y + y_neg, 1.0, rtol=0, atol=np.finfo(dtype).eps)
    assert y[5] == 0.5 and dx[5] == 0.25
    tiny = np.exp(x_host[2:4])                                  # e/(1 + e): tiny, yet to full relative precision
    np.testing.assert_allclose(y[2:4], tiny / (1 + tiny), rtol=np.finfo(dtype).eps * 8)


def test_sigmoid_keeps_dtype_and_does_not_modify_its_input(xp, dtype):
    x_host = random_array(1, (3, 4))
    x = to_xp(xp, x_host, dtype)
    y, cache = sigmoid_forward(x)
    dx = sigmoid_backward(to_xp(xp, np.ones((3, 4)), dtype), cache)
    np.testing.assert_array_equal(backend.to_numpy(x), x_host.astype(dtype))
    assert y.dtype == dx.dtype == x.dtype


def test_sigmoid_bad_input(xp):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        sigmoid_forward(xp.asarray(np.array([1, 2])))
    with pytest.raises(TypeError, match="x must be an array"):
        sigmoid_forward([0.0, 1.0])
    _, cache = sigmoid_forward(to_xp(xp, np.zeros((2, 3)), "float64"))
    with pytest.raises(ValueError, match=r"dy must have the input's shape \(2, 3\)"):
        sigmoid_backward(to_xp(xp, np.zeros((3, 2)), "float64"), cache)


# ------------------------------------------------------------------ mean squared error
@given(shape=shapes, seed=seeds, dloss=st.sampled_from([1.0, 0.5, 3.0]))
def test_mse_matches_tensorflow(xp, dtype, shape, seed, dloss):
    oracle = pytest.importorskip("oracle_tf")
    pred, target = rounded(random_array(seed, shape), dtype), rounded(random_array(seed + 1, shape), dtype)
    loss_ref, (dpred_ref,) = oracle.mean_squared_error(pred, target, dloss)
    loss, cache = mean_squared_error_forward(to_xp(xp, pred, dtype), to_xp(xp, target, dtype))
    assert loss.shape == ()
    TOLERANCES[dtype].assert_close(loss, loss_ref, "loss")
    TOLERANCES[dtype].assert_close(mean_squared_error_backward(dloss, cache), dpred_ref, "dpred")


@given(shape=shapes, seed=seeds)
def test_mse_numeric_gradient_and_value(xp, shape, seed):
    pred, target = random_array(seed, shape), random_array(seed + 1, shape)
    arraycnn.gradcheck(mean_squared_error_forward, mean_squared_error_backward,
                       {"pred": to_xp(xp, pred, "float64"), "target": to_xp(xp, target, "float64")}, seed=seed)
    loss, _ = mean_squared_error_forward(to_xp(xp, pred, "float64"), to_xp(xp, target, "float64"))
    assert abs(float(backend.to_numpy(loss)) - np.mean((pred - target) ** 2)) <= 1e-12 * max(1.0, float(loss))


def test_mse_of_a_perfect_prediction_is_zero_with_zero_gradient(xp, dtype):
    x = to_xp(xp, random_array(0, (2, 28, 28, 1)), dtype)
    loss, cache = mean_squared_error_forward(x, x)
    assert float(backend.to_numpy(loss)) == 0.0
    assert not np.any(backend.to_numpy(mean_squared_error_backward(1.0, cache)))


def test_mse_upstream_gradient_may_be_a_0d_array_and_dtype_is_kept(xp, dtype):
    pred_host, target_host = random_array(1, (3, 5)), random_array(2, (3, 5))
    pred, target = to_xp(xp, pred_host, dtype), to_xp(xp, target_host, dtype)
    loss, cache = mean_squared_error_forward(pred, target)
    g_number = mean_squared_error_backward(2.0, cache)
    g_array = mean_squared_error_backward(xp.asarray(2.0, dtype=pred.dtype, device=array_api_compat.device(pred)),
                                          cache)
    np.testing.assert_array_equal(backend.to_numpy(g_number), backend.to_numpy(g_array))
    assert loss.dtype == g_number.dtype == g_array.dtype == pred.dtype
    np.testing.assert_array_equal(backend.to_numpy(pred), pred_host.astype(dtype))
    np.testing.assert_array_equal(backend.to_numpy(target), target_host.astype(dtype))


def test_mse_bad_input(xp):
    p = to_xp(xp, np.zeros((2, 3)), "float64")
    with pytest.raises(ValueError, match=r"target must have the prediction's shape \(2, 3\)"):
        mean_squared_error_forward(p, to_xp(xp, np.zeros((3, 2)), "float64"))
    with pytest.raises(TypeError, match="target must have a floating dtype"):
        mean_squared_error_forward(p, xp.asarray(np.zeros((2, 3), dtype=np.int64)))
    with pytest.raises(TypeError, match="pred must be an array"):
        mean_squared_error_forward([[0.0]], p)
    with pytest.raises(ValueError, match="pred must hold at least one element"):
        mean_squared_error_forward(to_xp(xp, np.zeros((0, 3)), "float64"), to_xp(xp, np.zeros((0, 3)), "float64"))


# ------------------------------------------------------------------ device random numbers
def test_random_uniform_is_a_function_of_its_key_on_the_arrays_device(xp, dtype):
    like = to_xp(xp, np.zeros((1,)), dtype)
    a = random_uniform((300, 200), 7, 3, like=like)
    assert a.dtype == like.dtype and a.shape == (300, 200)
    assert str(array_api_compat.device(a)) == str(array_api_compat.device(like))
    host = backend.to_numpy(a).astype(np.float64)
    assert host.min() >= 0.0 and host.max() < 1.0
    # 60,000 U[0, 1) draws: mean 1/2 and variance 1/12, each within 6 standard errors
    n = host.size
    assert abs(host.mean() - 0.5) < 6 * np.sqrt(1 / 12 / n)
    assert abs(host.var() - 1 / 12) < 6 * np.sqrt(1 / 180 / n)
    np.testing.assert_array_equal(backend.to_numpy(random_uniform((300, 200), 7, 3, like=like)), backend.to_numpy(a))
    for key in ((7, 4), (8, 3)):
        other = backend.to_numpy(random_uniform((300, 200), *key, like=like)).astype(np.float64)
        # independent streams: uncorrelated (|r| < 6/sqrt(n)), not merely different
        assert abs(np.corrcoef(host.ravel(), other.ravel())[0, 1]) < 6 / np.sqrt(n)


def test_random_uniform_on_an_array_api_strict_device():
    strict = backend.get_namespace("array_api_strict")
    import array_api_strict

    like = strict.zeros((1,), dtype=strict.float32, device=array_api_strict.Device("device1"))
    u = random_uniform((4, 5), 0, 0, like=like)
    assert u.device == like.device and u.dtype == strict.float32
    # the host fallback draws the same numbers as NumPy's Philox with the same key
    np.testing.assert_array_equal(np.asarray(u.to_device(strict.Device("CPU_DEVICE"))),
                                  random_uniform((4, 5), 0, 0, like=np.zeros(1)).astype(np.float32))


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(xp, dtype, p):
    """Each unit is kept with probability 1 - p (binomial count within 6 sigma) and scaled by 1/(1 - p),
    so E[y] = x; evaluation needs no op at all."""
    x_host = np.abs(random_array(0, (100, 20, 30))) + 0.5
    x = to_xp(xp, x_host, dtype)
    y, mask = dropout_forward(x, p, seed=11, counter=2)
    y_host, mask_host = backend.to_numpy(y).astype(np.float64), backend.to_numpy(mask).astype(np.float64)
    kept = y_host != 0
    n = x_host.size
    assert abs(kept.sum() - (1 - p) * n) < 6 * np.sqrt(n * p * (1 - p))
    np.testing.assert_array_equal(np.unique(mask_host), np.array([0.0, 1 / (1 - p)], dtype=dtype).astype(np.float64))
    np.testing.assert_allclose(y_host[kept], x_host.astype(dtype)[kept] / (1 - p), rtol=np.finfo(dtype).eps * 4)
    ratio = y_host / x_host.astype(dtype)                  # 0 or 1/(1-p) per unit: mean 1
    assert abs(ratio.mean() - 1.0) < 6 * np.sqrt(p / (1 - p) / n)
    # masks of neighbouring counters are independent: they agree on p² + (1 - p)² of the units
    other = backend.to_numpy(dropout_forward(x, p, seed=11, counter=3)[0]) != 0
    agree, expected = float(np.mean(other == kept)), p**2 + (1 - p) ** 2
    assert abs(agree - expected) < 6 * np.sqrt(expected * (1 - expected) / n)


@given(shape=shapes, seed=seeds, p=drop_ps, counter=st.integers(0, 2**40))
def test_dropout_backward_reuses_the_forward_mask(xp, shape, seed, p, counter):
    x = np.abs(random_array(seed, shape)) + 0.1            # nonzero: a zero in y means a dropped unit
    y, mask = dropout_forward(to_xp(xp, x, "float64"), p, seed=seed % 2**32, counter=counter)
    dy = random_array(seed + 1, shape)
    dx = backend.to_numpy(dropout_backward(to_xp(xp, dy, "float64"), mask))
    kept = backend.to_numpy(y) != 0
    np.testing.assert_array_equal(dx != 0, kept & (dy != 0))
    np.testing.assert_allclose(dx[kept], dy[kept] / (1 - p), rtol=1e-15)
    # the same key gives the same mask, so a numeric gradient sees a fixed linear map
    y_again, _ = dropout_forward(to_xp(xp, x, "float64"), p, seed=seed % 2**32, counter=counter)
    np.testing.assert_array_equal(backend.to_numpy(y_again), backend.to_numpy(y))
    arraycnn.gradcheck(dropout_forward, dropout_backward, {"x": to_xp(xp, x, "float64")},
                       kwargs={"p": p, "seed": seed % 2**32, "counter": counter}, seed=seed)


def test_dropout_with_p_0_is_the_identity_and_keeps_dtype(xp, dtype):
    x_host = random_array(3, (4, 5, 6))
    x = to_xp(xp, x_host, dtype)
    y, mask = dropout_forward(x, 0.0, seed=1, counter=0)
    np.testing.assert_array_equal(backend.to_numpy(y), x_host.astype(dtype))
    np.testing.assert_array_equal(backend.to_numpy(x), x_host.astype(dtype))   # input untouched
    dx = dropout_backward(to_xp(xp, np.ones(x_host.shape), dtype), mask)
    assert y.dtype == mask.dtype == dx.dtype == x.dtype


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"p": 1.0}, ValueError, r"p must be a drop probability in \[0, 1\)"),
    ({"p": -0.1}, ValueError, r"p must be a drop probability in \[0, 1\)"),
    ({"p": "0.5"}, ValueError, r"p must be a drop probability"),
    ({"p": True}, ValueError, r"p must be a drop probability"),
    ({"p": 0.5, "seed": -1}, ValueError, "seed must be >= 0"),
    ({"p": 0.5, "seed": 2**64}, ValueError, r"seed must be in \[0, 2\*\*64\)"),
    ({"p": 0.5, "counter": 2**64}, ValueError, r"counter must be in \[0, 2\*\*64\)"),
    ({"p": 0.5, "counter": 1.5}, TypeError, "counter must be an int"),
])
def test_dropout_bad_input(xp, kwargs, error, match):
    with pytest.raises(error, match=match):
        dropout_forward(to_xp(xp, np.zeros((2, 3)), "float64"), **kwargs)


def test_dropout_refuses_integer_input_and_wrong_dy(xp):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        dropout_forward(xp.asarray(np.array([1, 2])), 0.5)
    _, mask = dropout_forward(to_xp(xp, np.ones((2, 3)), "float64"), 0.5)
    with pytest.raises(ValueError, match=r"dy must have the input's shape \(2, 3\)"):
        dropout_backward(to_xp(xp, np.ones((3, 2)), "float64"), mask)


def test_dropout_on_torch_tensors_draws_with_a_torch_generator():
    """PyTorch (through array-api-compat) draws with a torch.Generator on the tensor's device, keyed as the others."""
    torch = pytest.importorskip("torch")
    x = torch.ones((50, 40), dtype=torch.float32)
    u = random_uniform((50, 40), 5, 6, like=x)
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float32 and u.device == x.device
    assert torch.equal(u, random_uniform((50, 40), 5, 6, like=x))
    assert not torch.equal(u, random_uniform((50, 40), 5, 7, like=x))
    y, mask = dropout_forward(x, 0.25, seed=5, counter=6)
    assert torch.equal(y, (u >= 0.25).to(torch.float32) / 0.75)
    assert torch.equal(dropout_backward(torch.full((50, 40), 3.0), mask), 3.0 * y)
