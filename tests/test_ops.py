"""ReLU, dense, softmax / log-softmax, softmax cross-entropy and the tutorial's cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES, rounded, to_xp
from hypothesis import given
from hypothesis import strategies as st

import arraycnn
from arraycnn import backend
from arraycnn.functional import (
    cross_entropy,
    dense_backward,
    dense_forward,
    log_softmax,
    relu_backward,
    relu_forward,
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from arraycnn.testing import random_array, seeds

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)
logit_shapes = st.tuples(st.integers(1, 8), st.integers(1, 12))


def away_from_zero(seed, shape):
    """Normal values pushed at least 0.05 from 0, so ReLU's kink never meets a central difference."""
    x = random_array(seed, shape)
    return np.where(x >= 0, x + 0.05, x - 0.05)


# ------------------------------------------------------------------ ReLU
@given(shape=shapes, seed=seeds)
def test_relu_matches_tensorflow(xp, dtype, shape, seed):
    oracle = pytest.importorskip("oracle_tf")
    x, dy = rounded(random_array(seed, shape), dtype), rounded(random_array(seed + 1, shape), dtype)
    y_ref, (dx_ref,) = oracle.relu(x, dy)
    y, mask = relu_forward(to_xp(xp, x, dtype))
    TOLERANCES[dtype].assert_close(y, y_ref, "y")
    TOLERANCES[dtype].assert_close(relu_backward(to_xp(xp, dy, dtype), mask), dx_ref, "dx")


def test_relu_prediction_keeps_no_mask(xp):
    x = to_xp(xp, np.array([-1.0, 0.0, 2.0]), "float32")
    y, mask = relu_forward(x)
    y_pred, none = relu_forward(x, keep_cache=False)
    assert mask is not None and none is None
    np.testing.assert_array_equal(backend.to_numpy(y_pred), backend.to_numpy(y))


def test_relu_gradient_at_zero_is_zero(xp):
    x = to_xp(xp, np.array([-1.0, 0.0, 2.0]), "float64")
    _, mask = relu_forward(x)
    np.testing.assert_array_equal(backend.to_numpy(relu_backward(to_xp(xp, np.ones(3), "float64"), mask)), [0, 0, 1])


@given(shape=shapes, seed=seeds)
def test_relu_numeric_gradient(xp, shape, seed):
    arraycnn.gradcheck(relu_forward, relu_backward, {"x": to_xp(xp, away_from_zero(seed, shape), "float64")})


# ------------------------------------------------------------------ dense
dense_cases = st.tuples(st.integers(1, 5), st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
                        st.integers(1, 6), st.booleans())


@given(case=dense_cases, seed=seeds)
def test_dense_matches_tensorflow(xp, dtype, case, seed):
    oracle = pytest.importorskip("oracle_tf")
    n, feat, k, tutorial_form = case
    x = rounded(random_array(seed, (n, *feat)), dtype)
    w = rounded(random_array(seed + 1, (k, *feat) if tutorial_form else (k, int(np.prod(feat)))), dtype)
    b = rounded(random_array(seed + 2, (k,)), dtype)
    dy = rounded(random_array(seed + 3, (n, k)), dtype)
    y_ref, (dx_ref, dw_ref, db_ref) = oracle.dense(x, w, b, dy)
    y, cache = dense_forward(to_xp(xp, x, dtype), to_xp(xp, w, dtype), to_xp(xp, b, dtype))
    dx, dw, db = dense_backward(to_xp(xp, dy, dtype), cache)
    tol = TOLERANCES[dtype]
    tol.assert_close(y, y_ref, "y")
    tol.assert_close(dx, dx_ref, "dx")
    tol.assert_close(dw, dw_ref, "dw")
    tol.assert_close(db, db_ref, "db")
    assert dx.shape == x.shape and dw.shape == w.shape


@given(case=dense_cases, seed=seeds)
def test_dense_numeric_gradient_and_adjoint(xp, case, seed):
    n, feat, k, _ = case
    x, w = random_array(seed, (n, *feat)), random_array(seed + 1, (k, *feat))
    b = random_array(seed + 2, (k,))
    arraycnn.gradcheck(dense_forward, dense_backward,
                       {"x": to_xp(xp, x, "float64"), "w": to_xp(xp, w, "float64"), "b": to_xp(xp, b, "float64")})
    y, cache = dense_forward(to_xp(xp, x, "float64"), to_xp(xp, w, "float64"))
    v = random_array(seed + 3, (n, k))
    dx, _, db = dense_backward(to_xp(xp, v, "float64"), cache)
    assert db is None
    lhs, rhs = float(np.sum(backend.to_numpy(y) * v)), float(np.sum(x * backend.to_numpy(dx)))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, float(np.sum(np.abs(x * backend.to_numpy(dx)))))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "error", "match"),
    [
        ((2, 3, 3, 1), (4, 3, 3, 2), None, ValueError, r"w must have D = 9 inputs per unit"),
        ((2, 6), (4, 5), None, ValueError, r"w must have D = 6 inputs per unit"),
        ((6,), (4, 6), None, ValueError, r"x must be \(N, ...\) with at least 2 dimensions"),
        ((2, 6), (6,), None, ValueError, r"w must be \(K, D\) or \(K, KH, KW, C\)"),
        ((2, 6), (4, 6), (3,), ValueError, r"b must have shape \(K,\) = \(4,\)"),
    ],
)
def test_dense_bad_input(xp, x_shape, w_shape, b_shape, error, match):
    b = None if b_shape is None else to_xp(xp, np.zeros(b_shape), "float64")
    with pytest.raises(error, match=match):
        dense_forward(to_xp(xp, np.zeros(x_shape), "float64"), to_xp(xp, np.zeros(w_shape), "float64"), b)


# ------------------------------------------------------------------ softmax
@given(shape=logit_shapes, seed=seeds, shift=st.floats(-1e3, 1e3))
def test_softmax_rows_sum_to_one_and_are_shift_invariant(xp, dtype, shape, seed, shift):
    z = random_array(seed, shape, scale=5.0)
    p = softmax(to_xp(xp, z, dtype))
    p_shifted = softmax(to_xp(xp, z + shift, dtype))
    tol = TOLERANCES[dtype]
    tol.assert_close(xp.sum(p, axis=1), np.ones(shape[0]), "row sums")
    # shifting rounds z + shift to float32 first: the change is bounded by |shift| * 6e-8 in each logit
    rtol = tol.rtol if dtype == "float64" else tol.rtol + 6e-8 * abs(shift)
    assert np.max(np.abs(backend.to_numpy(p) - backend.to_numpy(p_shifted))) <= rtol
    ref = np.exp(z - z.max(axis=1, keepdims=True))
    tol.assert_close(p, ref / ref.sum(axis=1, keepdims=True), "softmax")
    tol.assert_close(log_softmax(to_xp(xp, z, dtype)), np.log(ref / ref.sum(axis=1, keepdims=True)), "log_softmax")


# ------------------------------------------------------------------ softmax cross-entropy
@pytest.mark.parametrize("as_rows", [False, True])
@given(shape=logit_shapes, seed=seeds, scale=st.sampled_from([1.0, 30.0, 1e4]))
def test_softmax_cross_entropy_matches_tensorflow(xp, dtype, as_rows, shape, seed, scale):
    oracle = pytest.importorskip("oracle_tf")
    n, k = shape
    z = rounded(random_array(seed, shape, scale=scale), dtype)
    ids = np.random.default_rng(seed + 1).integers(0, k, size=n)
    onehot = np.eye(k)[ids]
    dloss = 0.75
    loss_ref, (dz_ref,) = oracle.softmax_cross_entropy(z, onehot, dloss)
    targets = to_xp(xp, onehot, dtype) if as_rows else xp.asarray(ids)
    loss, cache = softmax_cross_entropy_forward(to_xp(xp, z, dtype), targets)
    dz = softmax_cross_entropy_backward(dloss, cache)
    assert np.isfinite(backend.to_numpy(loss)) and np.all(np.isfinite(backend.to_numpy(dz)))
    # the loss scales with the logits (up to 1e4): compare relative to that scale
    tol = TOLERANCES[dtype]
    assert abs(float(backend.to_numpy(loss)) - float(loss_ref)) <= tol.rtol * max(1.0, abs(float(loss_ref)), scale)
    tol.assert_close(dz, dz_ref, "dlogits")
    assert loss.dtype == dz.dtype == to_xp(xp, z, dtype).dtype


@given(shape=logit_shapes, seed=seeds)
def test_softmax_cross_entropy_numeric_gradient(xp, shape, seed):
    n, k = shape
    z = random_array(seed, shape, scale=3.0)
    soft_targets = np.random.default_rng(seed + 1).dirichlet(np.ones(k), size=n)
    ids = np.random.default_rng(seed + 2).integers(0, k, size=n)
    for targets in (xp.asarray(ids), to_xp(xp, soft_targets, "float64")):
        arraycnn.gradcheck(softmax_cross_entropy_forward, softmax_cross_entropy_backward,
                           {"logits": to_xp(xp, z, "float64"), "targets": targets})


@given(shape=logit_shapes, seed=seeds)
def test_cross_entropy_of_one_hot_is_minus_log_p_target(xp, shape, seed):
    n, k = shape
    z = random_array(seed, shape, scale=3.0)
    ids = np.random.default_rng(seed + 1).integers(0, k, size=n)
    loss, cache = softmax_cross_entropy_forward(to_xp(xp, z, "float64"), xp.asarray(ids))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(n), ids]))
    assert abs(float(backend.to_numpy(loss)) - expected) <= 1e-12 * max(1.0, expected)
    dz = backend.to_numpy(softmax_cross_entropy_backward(1.0, cache))
    np.testing.assert_allclose(dz, (p - np.eye(k)[ids]) / n, rtol=1e-12, atol=1e-15)
    # the tutorial's loss on probabilities agrees (its clip only touches p < 1e-7)
    tutorial = float(backend.to_numpy(cross_entropy(to_xp(xp, p, "float64"), xp.asarray(ids))))
    assert abs(tutorial - float(np.mean(-np.log(np.clip(p[np.arange(n), ids], 1e-7, 1 - 1e-7))))) <= 1e-12


def test_huge_logits_stay_finite(xp, dtype):
    z = to_xp(xp, np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [0.0, 1e4, 1e4]]), dtype)
    loss, cache = softmax_cross_entropy_forward(z, xp.asarray(np.array([1, 0, 2])))
    assert abs(float(backend.to_numpy(loss)) - (2e4 + np.log(3) + np.log(2)) / 3) <= 1e-3
    assert np.all(np.isfinite(backend.to_numpy(softmax_cross_entropy_backward(1.0, cache))))
    assert np.all(np.isfinite(backend.to_numpy(log_softmax(z))))


@given(shape=st.tuples(st.integers(1, 8), st.integers(2, 12)), seed=seeds)
def test_cross_entropy_on_probabilities_matches_keras(xp, shape, seed):
    oracle = pytest.importorskip("oracle_tf")
    n, k = shape
    p = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    onehot = np.eye(k)[np.random.default_rng(seed + 1).integers(0, k, size=n)]
    ours = float(backend.to_numpy(cross_entropy(to_xp(xp, p, "float64"), to_xp(xp, onehot, "float64"))))
    assert abs(ours - oracle.categorical_crossentropy(p, onehot)) <= 1e-6 * max(1.0, ours)


def test_softmax_cross_entropy_backward_does_not_modify_its_cache(xp):
    z = to_xp(xp, random_array(0, (4, 5)), "float64")
    _, cache = softmax_cross_entropy_forward(z, xp.asarray(np.array([0, 1, 2, 3])))
    p_before = backend.to_numpy(cache.p).copy()
    g1 = backend.to_numpy(softmax_cross_entropy_backward(1.0, cache))
    g2 = backend.to_numpy(softmax_cross_entropy_backward(1.0, cache))
    np.testing.assert_array_equal(backend.to_numpy(cache.p), p_before)
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize(
    ("logits", "targets", "error", "match"),
    [
        (np.zeros((3, 4)), np.array([0, 4, 1]), ValueError, r"targets must be class ids in \[0, 4\)"),
        (np.zeros((3, 4)), np.array([0, -1, 1]), ValueError, r"targets must be class ids in \[0, 4\)"),
        (np.zeros((3, 4)), np.array([0, 1]), ValueError, r"targets must have shape \(N,\) = \(3,\)"),
        (np.zeros((3, 4)), np.zeros((3, 5)), ValueError, r"targets must be class ids \(N,\) = \(3,\) or rows"),
        (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), TypeError, r"targets of shape \(N,\) must be integer"),
        (np.zeros((3, 4), dtype=np.int64), np.array([0, 1, 2]), TypeError, r"logits must have a floating dtype"),
        (np.zeros(4), np.array([0]), ValueError, r"logits must be 2-D \(N, K\)"),
    ],
)
def test_softmax_cross_entropy_bad_input(xp, logits, targets, error, match):
    z = xp.asarray(logits) if logits.dtype.kind != "f" else to_xp(xp, logits, "float64")
    t = xp.asarray(targets) if targets.dtype.kind != "f" else to_xp(xp, targets, "float64")
    with pytest.raises(error, match=match):
        softmax_cross_entropy_forward(z, t)


def test_softmax_cross_entropy_gradient_is_exact_for_rows_not_summing_to_one(xp):
    """Weighted targets (rows summing to 0.3 or 2.5): the gradient is (p Σy - y) / N, checked numerically."""
    z = to_xp(xp, random_array(4, (2, 3)), "float64")
    weights = to_xp(xp, np.array([[0.1, 0.2, 0.0], [1.0, 0.5, 1.0]]), "float64")
    arraycnn.gradcheck(softmax_cross_entropy_forward, softmax_cross_entropy_backward, {"logits": z, "targets": weights})
