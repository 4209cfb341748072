"""TensorFlow as a test oracle — the ONLY file that imports TensorFlow.

Every function takes float64 host arrays in arraycnn's layout, pads explicitly (never 'SAME'), works in
NHWC on the CPU, and returns float64 host arrays: the forward output and the vector-Jacobian products
for an upstream gradient ``dy`` (``tape.gradient(y, inputs, output_gradients=dy)``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="TensorFlow (the test oracle) is not installed")


def _vjp(fn, inputs, dy):
    vars_ = [tf.constant(a, dtype=tf.float64) for a in inputs]
    with tf.GradientTape() as tape:
        for v in vars_:
            tape.watch(v)
        y = fn(*vars_)
    grads = tape.gradient(y, vars_, output_gradients=tf.constant(dy, dtype=tf.float64))
    return y.numpy(), [g.numpy() for g in grads]


def forward(fn, inputs):
    """Forward output only (to size the upstream gradient)."""
    return fn(*[tf.constant(a, dtype=tf.float64) for a in inputs]).numpy()


def conv2d(x, w, b, stride, padding, dy):
    """``tf.nn.conv2d`` with explicit zero padding; ``w (K, KH, KW, C)`` -> TF's ``(KH, KW, C, K)``."""
    (sh, sw), (ph, pw) = stride, padding

    def fn(x_, w_, b_):
        y = tf.nn.conv2d(x_, tf.transpose(w_, (1, 2, 3, 0)), strides=[1, sh, sw, 1],
                         padding=[[0, 0], [ph, ph], [pw, pw], [0, 0]])
        return y + b_

    return _vjp(fn, [x, w, b], dy)


def conv2d_output(x, w, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    return forward(lambda x_, w_: tf.nn.conv2d(x_, tf.transpose(w_, (1, 2, 3, 0)), strides=[1, sh, sw, 1],
                                               padding=[[0, 0], [ph, ph], [pw, pw], [0, 0]]), [x, w])


def _pad(x_, padding, value):
    (ph, pw) = padding
    return tf.pad(x_, [[0, 0], [ph, ph], [pw, pw], [0, 0]], constant_values=value)


def maxpool2d(x, size, stride, padding, dy):
    """``tf.nn.max_pool2d`` 'VALID' on an input padded with -inf (padding never wins)."""
    return _vjp(lambda x_: tf.nn.max_pool2d(_pad(x_, padding, -np.inf), size, stride, "VALID"), [x], dy)


def avgpool2d(x, size, stride, padding, count_include_pad, dy):
    """``tf.nn.avg_pool2d`` 'VALID' on a zero-padded input; without ``count_include_pad`` the window sums
    are divided by the pooled count of real cells (what TF's 'SAME' does)."""
    kh, kw = size

    def fn(x_):
        mean = tf.nn.avg_pool2d(_pad(x_, padding, 0.0), size, stride, "VALID")
        if count_include_pad:
            return mean
        ones = tf.ones_like(x_[:1, :, :, :1])
        count = tf.nn.avg_pool2d(_pad(ones, padding, 0.0), size, stride, "VALID") * (kh * kw)
        return mean * (kh * kw) / count

    return _vjp(fn, [x], dy)


def relu(x, dy):
    return _vjp(tf.nn.relu, [x], dy)


def dense(x, w, b, dy):
    """``tf.matmul`` on the row-major flattened input and weights."""
    n, k = x.shape[0], w.shape[0]
    return _vjp(lambda x_, w_, b_: tf.matmul(tf.reshape(x_, (n, -1)), tf.reshape(w_, (k, -1)), transpose_b=True) + b_,
                [x, w, b], dy)


def softmax_cross_entropy(logits, onehot, dloss):
    """Mean of ``tf.nn.softmax_cross_entropy_with_logits`` and its gradient w.r.t. the logits."""
    def fn(z):
        return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=z))

    return _vjp(fn, [logits], np.asarray(dloss, dtype=np.float64))


def categorical_crossentropy(probs, onehot):
    """The tutorial's loss: mean of ``tf.losses.categorical_crossentropy(t, y)`` on probabilities."""
    return float(tf.reduce_mean(tf.keras.losses.categorical_crossentropy(onehot, probs)).numpy())


def conv2d_transpose(x, w, b, stride, padding, output_padding, dy):
    """``tf.nn.conv2d_transpose`` with explicit padding and an explicit output shape
    ``OH = (H - 1)*sh - 2*ph + KH + oph``; ``w (K, KH, KW, C)`` -> TF's ``(KH, KW, C, K)``."""
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    n, h, wd, _ = x.shape
    _, kh, kw, c = w.shape
    out_shape = [n, (h - 1) * sh - 2 * ph + kh + oph, (wd - 1) * sw - 2 * pw + kw + opw, c]

    def fn(x_, w_, b_):
        y = tf.nn.conv2d_transpose(x_, tf.transpose(w_, (1, 2, 3, 0)), output_shape=out_shape, strides=[1, sh, sw, 1],
                                   padding=[[0, 0], [ph, ph], [pw, pw], [0, 0]])
        return y + b_

    return _vjp(fn, [x, w, b], dy)


def batch_norm(x, gamma, beta, eps, dy):
    """``tf.nn.moments`` over every axis but the last (biased variance) and ``tf.nn.batch_normalization``."""
    axes = list(range(x.ndim - 1))

    def fn(x_, g_, b_):
        mean, var = tf.nn.moments(x_, axes=axes)
        return tf.nn.batch_normalization(x_, mean, var, offset=b_, scale=g_, variance_epsilon=eps)

    return _vjp(fn, [x, gamma, beta], dy)


def sigmoid(x, dy):
    return _vjp(tf.math.sigmoid, [x], dy)


def mean_squared_error(pred, target, dloss):
    """``tf.reduce_mean(tf.square(pred - target))`` over every element and its gradient w.r.t. ``pred``."""
    return _vjp(lambda p_: tf.reduce_mean(tf.math.squared_difference(p_, tf.constant(target, dtype=tf.float64))),
                [pred], np.asarray(dloss, dtype=np.float64))
