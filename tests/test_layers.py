"""Layers: each forward/backward is exactly its functional pair; caches; initialisation; argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_same

from arraycnn import backend
from arraycnn import functional as F
from arraycnn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from arraycnn.testing import random_array


def _layer_cases(xp):
    """(layer, input x, functional forward with the layer's arguments, functional backward)."""
    x4 = backend.to_device(random_array(0, (2, 7, 6, 3)), xp, "float32")
    conv = Conv2D(3, 4, (3, 2), stride=(2, 1), padding=1, rng=1, backend=xp)
    toeplitz = Conv2D(3, 4, 3, method="toeplitz", rng=2, backend=xp)
    dense = Dense(7 * 6 * 3, 5, rng=3, backend=xp)
    return [
        (conv, x4, lambda x: F.conv2d_forward(x, conv.params["w"], conv.params["b"], (2, 1), 1), F.conv2d_backward),
        (toeplitz, x4, lambda x: F.conv2d_forward(x, toeplitz.params["w"], toeplitz.params["b"], method="toeplitz"),
         F.conv2d_backward),
        (dense, x4, lambda x: F.dense_forward(x, dense.params["w"], dense.params["b"]), F.dense_backward),
        (MaxPool2D(3, stride=1, padding=1), x4, lambda x: F.maxpool2d_forward(x, 3, 1, 1), F.maxpool2d_backward),
        (AvgPool2D(2, count_include_pad=False, padding=1), x4,
         lambda x: F.avgpool2d_forward(x, 2, None, 1, count_include_pad=False), F.avgpool2d_backward),
        (ReLU(), x4, F.relu_forward, F.relu_backward),
    ]


def test_layers_equal_their_functional_pairs(xp):
    for layer, x, forward, backward in _layer_cases(xp):
        y = layer.forward(x)
        y_ref, cache = forward(x)
        assert_same(y, y_ref, f"{layer} forward")
        dy = backend.to_device(random_array(5, tuple(y.shape)), xp, "float32")
        dx = layer.backward(dy)
        ref = backward(dy, cache)
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert_same(dx, ref[0], f"{layer} dx")
        assert set(layer.grads) == set(layer.params), layer
        for name, g in zip(("w", "b"), ref[1:], strict=False):
            assert_same(layer.grads[name], g, f"{layer} d{name}")
            assert tuple(layer.grads[name].shape) == tuple(layer.params[name].shape)


def test_evaluation_forward_is_the_training_forward_bit_for_bit(xp):
    """``train=False`` skips the backward bookkeeping (patches, first-max offsets, masks), never the math."""
    from arraycnn.models import tutorial_cnn

    for layer, x, _, _ in _layer_cases(xp):
        assert_same(layer.forward(x, train=False), layer.forward(x, train=True), f"{layer} evaluation forward")
    model = tutorial_cnn(backend=xp, seed=0)
    images = backend.to_device(np.abs(random_array(6, (5, 28, 28, 1))), xp, "float32")
    assert_same(model.forward(images, train=False), model.forward(images, train=True), "tutorial_cnn forward")


def test_input_grad_false_skips_dx_with_the_same_parameter_gradients(xp):
    x = backend.to_device(random_array(0, (2, 6, 6, 3)), xp, "float64")
    for layer in (Conv2D(3, 4, 3, rng=1, backend=xp, dtype="float64"), Dense(108, 5, rng=2, backend=xp,
                                                                             dtype="float64"), ReLU()):
        y = layer.forward(x)
        dy = backend.to_device(random_array(5, tuple(y.shape)), xp, "float64")
        assert layer.backward(dy) is not None
        grads = dict(layer.grads)
        layer.forward(x)
        assert layer.backward(dy, input_grad=False) is None
        for name, g in grads.items():
            assert_same(layer.grads[name], g, f"{layer} d{name}")


def test_flatten_reshapes_and_back(xp):
    x = backend.to_device(random_array(0, (2, 3, 4, 5)), xp, "float64")
    layer = Flatten()
    y = layer.forward(x)
    assert tuple(y.shape) == (2, 60)
    np.testing.assert_array_equal(backend.to_numpy(y), backend.to_numpy(x).reshape(2, 60))
    dx = layer.backward(y)
    np.testing.assert_array_equal(backend.to_numpy(dx), backend.to_numpy(x))


@pytest.mark.parametrize("layer", [ReLU(), Flatten(), MaxPool2D(2), Conv2D(1, 2, 3), Dense(16, 2)], ids=repr)
def test_backward_needs_a_training_forward_and_drops_the_cache(layer):
    x = random_array(0, (2, 4, 4, 1)).astype(np.float32)
    layer.forward(x, train=False)
    with pytest.raises(RuntimeError, match="forward\\(x, train=True\\)"):
        layer.backward(np.ones((2, *layer.forward(x, train=False).shape[1:]), np.float32))
    y = layer.forward(x)
    layer.backward(np.ones(y.shape, np.float32))
    with pytest.raises(RuntimeError, match="backward needs"):
        layer.backward(np.ones(y.shape, np.float32))  # the cache was dropped after the first backward


@pytest.mark.parametrize(("layer_cls", "args", "fan_in"), [(Conv2D, (8, 64, 5), 5 * 5 * 8), (Dense, (400, 300), 400)])
def test_he_and_tutorial_initialisation(layer_cls, args, fan_in):
    he = layer_cls(*args, rng=0)
    tutorial = layer_cls(*args, rng=0, init="tutorial")
    for layer, std in ((he, math.sqrt(2 / fan_in)), (tutorial, 0.01)):
        w = backend.to_numpy(layer.params["w"])
        # >= 12,800 draws: the sample std is within 3 % of the true one with overwhelming probability
        assert abs(w.std() / std - 1) < 0.03
        assert abs(w.mean()) < 0.05 * std
        assert w.dtype == np.float32
        np.testing.assert_array_equal(backend.to_numpy(layer.params["b"]), 0)
    # the same generator state draws the same numbers, scaled: init only changes the std
    np.testing.assert_allclose(backend.to_numpy(tutorial.params["w"]) / 0.01,
                               backend.to_numpy(he.params["w"]) / math.sqrt(2 / fan_in), rtol=1e-6)


def test_same_seed_same_weights_on_every_backend(xp):
    ref = Conv2D(3, 4, 3, rng=7, dtype="float64")
    other = Conv2D(3, 4, 3, rng=7, backend=xp, dtype="float64")
    np.testing.assert_array_equal(backend.to_numpy(other.params["w"]), backend.to_numpy(ref.params["w"]))
    assert not np.array_equal(backend.to_numpy(Conv2D(3, 4, 3, rng=8).params["w"]),
                              backend.to_numpy(Conv2D(3, 4, 3, rng=7).params["w"]))


def test_config_describes_the_layer():
    assert Conv2D(1, 10, 3).config() == {"type": "Conv2D", "in_channels": 1, "filters": 10, "kernel_size": [3, 3],
                                         "stride": [1, 1], "padding": [0, 0], "method": "im2col"}
    assert Dense(4000, 50).config() == {"type": "Dense", "in_features": 4000, "units": 50}
    assert MaxPool2D(3, stride=1).config()["stride"] == [1, 1]
    assert AvgPool2D(2).config() == {"type": "AvgPool2D", "size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                     "count_include_pad": True}
    assert repr(Dense(3, 2)) == "Dense(in_features=3, units=2)"


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: Conv2D(0, 4, 3), ValueError, "in_channels must be >= 1"),
    (lambda: Conv2D(1, 2.5, 3), TypeError, "filters must be an int"),
    (lambda: Conv2D(1, 2, 3, method="fft"), ValueError, "method must be one of"),
    (lambda: Conv2D(1, 2, 3, init="xavier"), ValueError, "init must be one of"),
    (lambda: Dense(10, True), TypeError, "units must be an int"),
    (lambda: Dense(10, 2, dtype="float16"), ValueError, "dtype must be one of"),
    (lambda: Dense(10, 2, backend="no_such_backend"), ValueError, "unknown backend"),
    (lambda: MaxPool2D(0), ValueError, "size must be >= 1"),
])
def test_bad_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()
