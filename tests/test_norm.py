"""Batch normalisation: the TensorFlow oracle, numeric gradients, the closed form's properties, the inference form,
bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES, assert_backward_is_pure, rounded, to_xp
from hypothesis import given
from hypothesis import strategies as st

import arraycnn
from arraycnn import backend
from arraycnn.functional import batch_norm_backward, batch_norm_forward, batch_norm_inference
from arraycnn.testing import random_array, seeds

# (N, D) as after a dense layer, or (N, H, W, C) as after a convolution
bn_shapes = st.one_of(st.tuples(st.integers(1, 8), st.integers(1, 6)),
                      st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4)))
eps_values = st.sampled_from([1e-5, 1e-3, 0.1])


def _inputs(seed, shape):
    c = shape[-1]
    x = random_array(seed, shape, scale=3.0) + random_array(seed + 1, (c,), scale=5.0)   # per-channel offsets
    return x, random_array(seed + 2, (c,)), random_array(seed + 3, (c,))


@given(shape=bn_shapes, seed=seeds, eps=eps_values)
def test_matches_tensorflow(xp, dtype, shape, seed, eps):
    """Forward and dx, dgamma, dbeta against tf.nn.moments + tf.nn.batch_normalization + GradientTape."""
    oracle = pytest.importorskip("oracle_tf")
    tol = TOLERANCES[dtype]
    x, gamma, beta = (rounded(a, dtype) for a in _inputs(seed, shape))
    dy = rounded(random_array(seed + 4, shape), dtype)
    y_ref, (dx_ref, dgamma_ref, dbeta_ref) = oracle.batch_norm(x, gamma, beta, eps, dy)
    y, cache = batch_norm_forward(to_xp(xp, x, dtype), to_xp(xp, gamma, dtype), to_xp(xp, beta, dtype), eps)
    dx, dgamma, dbeta = batch_norm_backward(to_xp(xp, dy, dtype), cache)
    tol.assert_close(y, y_ref, "y")
    tol.assert_close(dx, dx_ref, "dx")
    tol.assert_close(dgamma, dgamma_ref, "dgamma")
    tol.assert_close(dbeta, dbeta_ref, "dbeta")


@given(shape=bn_shapes, seed=seeds)
def test_numeric_gradient(xp, shape, seed):
    x, gamma, beta = _inputs(seed, shape)
    arraycnn.gradcheck(batch_norm_forward, batch_norm_backward,
                       {"x": to_xp(xp, x, "float64"), "gamma": to_xp(xp, gamma, "float64"),
                        "beta": to_xp(xp, beta, "float64")}, seed=seed)


@given(shape=bn_shapes, seed=seeds)
def test_output_statistics_and_the_closed_form_properties(xp, shape, seed):
    """With gamma = 1, beta = 0 each channel of y has mean 0 and variance var/(var + eps). dx sums to 0 over each
    channel, and <dx, xhat> = dgamma · eps / (var + eps)^(3/2): the two directions the normalisation removes
    (exactly orthogonal to xhat only as eps -> 0, since then Σ xhat² = M)."""
    x, _, _ = _inputs(seed, shape)
    c = shape[-1]
    ones, zeros = to_xp(xp, np.ones(c), "float64"), to_xp(xp, np.zeros(c), "float64")
    y, cache = batch_norm_forward(to_xp(xp, x, "float64"), ones, zeros)
    axes = tuple(range(len(shape) - 1))
    y_host = backend.to_numpy(y)
    var = x.var(axis=axes)
    np.testing.assert_allclose(y_host.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y_host.var(axis=axes), var / (var + 1e-5), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(cache.mean), x.mean(axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(cache.var), var, rtol=1e-12, atol=1e-12)
    dy = random_array(seed + 9, shape)
    dx, dgamma, _ = batch_norm_backward(to_xp(xp, dy, "float64"), cache)
    dx_host, xhat = backend.to_numpy(dx), backend.to_numpy(cache.xhat)
    expected = (0.0, backend.to_numpy(dgamma) * 1e-5 / (var + 1e-5) ** 1.5)
    for terms, value in zip((dx_host, dx_host * xhat), expected, strict=True):   # up to rounding of the terms
        assert np.all(np.abs(terms.sum(axis=axes) - value) <= 1e-10 * (np.abs(terms).sum(axis=axes) + 1.0))


@given(shape=bn_shapes, seed=seeds, eps=eps_values)
def test_inference_form_equals_the_training_form_with_the_batch_statistics(xp, dtype, shape, seed, eps):
    x, gamma, beta = (rounded(a, dtype) for a in _inputs(seed, shape))
    args = [to_xp(xp, a, dtype) for a in (x, gamma, beta)]
    y, cache = batch_norm_forward(*args, eps)
    y_inf = batch_norm_inference(*args, cache.mean, cache.var, eps)
    TOLERANCES[dtype].assert_close(y_inf, backend.to_numpy(y).astype(np.float64), "y")
    assert y_inf.dtype == args[0].dtype


def test_inference_rows_are_independent(xp):
    """In evaluation each row is normalised on its own: a row's output does not depend on the rest of the batch."""
    rng = np.random.default_rng(2)
    x = to_xp(xp, rng.standard_normal((6, 3, 3, 2)), "float64")
    stats = [to_xp(xp, a, "float64") for a in (rng.standard_normal(2), rng.standard_normal(2),
                                                rng.standard_normal(2), rng.random(2) + 0.5)]
    whole = backend.to_numpy(batch_norm_inference(x, *stats))
    first = backend.to_numpy(batch_norm_inference(x[:1, ...], *stats))
    np.testing.assert_array_equal(first, whole[:1])


def test_one_value_per_channel_normalises_to_beta(xp):
    """M = 1: x - mean is 0, so y = beta and dx = 0 (the variance is 0; eps keeps 1/sqrt finite)."""
    x = to_xp(xp, np.array([[3.0, -2.0]]), "float64")
    y, cache = batch_norm_forward(x, to_xp(xp, np.array([2.0, 5.0]), "float64"), to_xp(xp, np.array([1.0, 4.0]),
                                                                                          "float64"))
    np.testing.assert_array_equal(backend.to_numpy(y), [[1.0, 4.0]])
    dx, _, _ = batch_norm_backward(to_xp(xp, np.array([[7.0, 1.0]]), "float64"), cache)
    np.testing.assert_array_equal(backend.to_numpy(dx), [[0.0, 0.0]])


def test_backward_does_not_modify_inputs_and_keeps_dtype(xp, dtype):
    rng = np.random.default_rng(3)
    hosts = rng.standard_normal((3, 4, 2, 5)), rng.standard_normal(5), rng.standard_normal(5)
    (xs, _, _), cache = assert_backward_is_pure(xp, dtype, batch_norm_forward, batch_norm_backward, hosts, rng)
    assert cache.mean.dtype == cache.var.dtype == xs.dtype


@pytest.mark.parametrize(
    ("x_shape", "c", "kwargs", "error", "match"),
    [
        ((5,), 5, {}, ValueError, r"x must be \(N, ..., C\) with at least 2 dimensions"),
        ((4, 3), 2, {}, ValueError, r"gamma must have shape \(C,\) = \(3,\)"),
        ((0, 3), 3, {}, ValueError, r"x must hold at least one value per channel"),
        ((4, 3), 3, {"eps": 0.0}, ValueError, r"eps must be a positive number"),
        ((4, 3), 3, {"eps": -1e-5}, ValueError, r"eps must be a positive number"),
    ],
)
def test_bad_input(xp, x_shape, c, kwargs, error, match):
    x = to_xp(xp, np.zeros(x_shape), "float64")
    with pytest.raises(error, match=match):
        batch_norm_forward(x, to_xp(xp, np.ones(c), "float64"), to_xp(xp, np.zeros(3), "float64"), **kwargs)


def test_bad_dtypes_and_arrays(xp):
    x, g = to_xp(xp, np.zeros((4, 3)), "float64"), to_xp(xp, np.ones(3), "float64")
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        batch_norm_forward(xp.astype(x, xp.int64), g, g)
    with pytest.raises(TypeError, match="must share one floating dtype"):
        batch_norm_forward(x, xp.astype(g, xp.float32), g)
    with pytest.raises(TypeError, match="beta must be an array"):
        batch_norm_forward(x, g, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"var must have shape \(C,\) = \(3,\)"):
        batch_norm_inference(x, g, g, g, to_xp(xp, np.ones(2), "float64"))
    _, cache = batch_norm_forward(x, g, g)
    with pytest.raises(ValueError, match=r"dy must have the input's shape \(4, 3\)"):
        batch_norm_backward(to_xp(xp, np.zeros((3, 4)), "float64"), cache)


def test_assert_matches_engine_catches_a_backward_that_treats_the_statistics_as_constants():
    """The classic batch-norm bug: dx = gamma dy / sqrt(var + eps), forgetting that mu and var depend on x."""
    from arraycnn.testing import EngineMismatchError, assert_matches_engine

    def naive_backward(dy, cache):
        _, dgamma, dbeta = batch_norm_backward(dy, cache)
        return cache.gamma * cache.inv_std * dy, dgamma, dbeta

    with pytest.raises(EngineMismatchError) as info:
        assert_matches_engine(batch_norm_forward, naive_backward, "batch_norm", max_examples=30, seed=0)
    report = str(info.value)
    assert "configuration: x (" in report and "\n  dx: " in report
    assert "\n  dgamma: " not in report and "\n  dbeta: " not in report and "\n  y: " not in report
