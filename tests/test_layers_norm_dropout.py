"""Conv2DTranspose, BatchNorm, Dropout and Sigmoid layers: their functional pairs, BatchNorm's running statistics
against PyTorch, train/evaluation modes, state in checkpoints (an exact resume), dropout masks, argument checks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import assert_same

from arraycnn import backend
from arraycnn import functional as F
from arraycnn.layers import BatchNorm, Conv2D, Conv2DTranspose, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sigmoid
from arraycnn.model import Sequential
from arraycnn.optim import Adam
from arraycnn.testing import random_array


def test_layers_equal_their_functional_pairs(xp):
    """Each layer calls its functional pair: identical forward, dx and parameter gradients."""
    x = backend.to_device(random_array(0, (2, 5, 4, 3)), xp, "float32")
    convt = Conv2DTranspose(3, 2, (3, 2), stride=(2, 1), padding=1, output_padding=(1, 0), rng=1, backend=xp)
    bn = BatchNorm(3, backend=xp)
    drop = Dropout(0.3, rng=2)
    cases = [
        (convt, lambda x: F.conv2d_transpose_forward(x, convt.params["w"], convt.params["b"], (2, 1), 1, (1, 0)),
         F.conv2d_transpose_backward, ("w", "b")),
        (bn, lambda x: F.batch_norm_forward(x, bn.params["gamma"], bn.params["beta"], 1e-5), F.batch_norm_backward,
         ("gamma", "beta")),
        (drop, lambda x: F.dropout_forward(x, 0.3, drop.seed, 0), F.dropout_backward, ()),
        (Sigmoid(), F.sigmoid_forward, F.sigmoid_backward, ()),
    ]
    for layer, forward, backward, names in cases:
        y_ref, cache = forward(x)
        y = layer.forward(x)
        assert_same(y, y_ref, f"{layer} forward")
        dy = backend.to_device(random_array(5, tuple(y.shape)), xp, "float32")
        ref = backward(dy, cache)
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert_same(layer.backward(dy), ref[0], f"{layer} dx")
        assert set(layer.grads) == set(layer.params) == set(names)
        for name, g in zip(names, ref[1:], strict=True):
            assert_same(layer.grads[name], g, f"{layer} d{name}")
            assert tuple(g.shape) == tuple(layer.params[name].shape)


def test_row_mixing_is_declared():
    assert BatchNorm(2).mixes_rows and Dropout(0.5).mixes_rows
    assert not any(layer.mixes_rows for layer in (Conv2DTranspose(1, 1, 2), Sigmoid(), Conv2D(1, 1, 2), ReLU()))


# ------------------------------------------------------------------ BatchNorm
@pytest.mark.parametrize(("shape", "momentum"), [((6, 5, 4, 3), 0.1), ((6, 5, 4, 3), 0.35), ((7, 4), 0.1)])
def test_batchnorm_running_statistics_match_pytorch(shape, momentum):
    """Five training steps with different batches, then evaluation: running mean and (unbiased) running variance,
    training outputs and gradients, and evaluation outputs all equal PyTorch's BatchNorm1d/2d."""
    torch = pytest.importorskip("torch")
    c = shape[-1]
    ours = BatchNorm(c, momentum=momentum, eps=1e-5, dtype="float64")
    theirs = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(c, eps=1e-5, momentum=momentum,
                                                                                 dtype=torch.float64)
    to_nchw = (0, 3, 1, 2) if len(shape) == 4 else (0, 1)
    to_nhwc = (0, 2, 3, 1) if len(shape) == 4 else (0, 1)
    rng = np.random.default_rng(0)
    ours.params["gamma"][...] = rng.standard_normal(c)
    ours.params["beta"][...] = rng.standard_normal(c)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.params["gamma"]))
        theirs.bias.copy_(torch.from_numpy(ours.params["beta"]))
    for step in range(5):
        x = random_array(step, shape, 1.0 + step) + (float(step) - 2.0)
        dy = random_array(100 + step, shape)
        xt = torch.tensor(x).permute(*to_nchw).requires_grad_()
        theirs.train()
        yt = theirs(xt)
        yt.backward(torch.tensor(dy).permute(*to_nchw))
        y = ours.forward(x, train=True)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, yt.detach().permute(*to_nhwc).numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.permute(*to_nhwc).numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ours.grads["gamma"], theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.grads["beta"], theirs.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
        theirs.weight.grad, theirs.bias.grad = None, None
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12, atol=1e-14)
    theirs.eval()
    x = random_array(9, shape, 3.0)
    with torch.no_grad():
        y_ref = theirs(torch.tensor(x).permute(*to_nchw)).permute(*to_nhwc).numpy()
    np.testing.assert_allclose(ours.forward(x, train=False), y_ref, rtol=1e-10, atol=1e-12)


def test_batchnorm_evaluation_uses_the_running_statistics_and_leaves_them(xp):
    bn = BatchNorm(3, momentum=0.5, backend=xp, dtype="float64")
    x = backend.to_device(random_array(1, (4, 3, 3, 3), 2.0) + 1.0, xp, "float64")
    bn.forward(x)
    mean, var = backend.to_numpy(bn.running_mean).copy(), backend.to_numpy(bn.running_var).copy()
    host = backend.to_numpy(x)
    np.testing.assert_allclose(mean, 0.5 * host.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, 0.5 + 0.5 * host.var(axis=(0, 1, 2), ddof=1), rtol=1e-12)
    y = bn.forward(x, train=False)
    assert_same(y, F.batch_norm_inference(x, bn.params["gamma"], bn.params["beta"], bn.running_mean, bn.running_var),
                "y")
    np.testing.assert_array_equal(backend.to_numpy(bn.running_mean), mean)
    np.testing.assert_array_equal(backend.to_numpy(bn.running_var), var)
    with pytest.raises(RuntimeError, match="forward\\(x, train=True\\)"):
        bn.backward(y)


def test_batchnorm_state_is_loaded_and_updated_in_place(xp):
    """state() round trip; the arrays keep their identity, so a shallow replica (what the execution predicts
    with) sees every update and every load."""
    bn = BatchNorm(2, backend=xp, dtype="float32")
    replica = copy.copy(bn)
    bn.forward(backend.to_device(random_array(0, (5, 2)) + 3.0, xp, "float32"))
    assert sorted(bn.state()) == ["running_mean", "running_var"]
    assert_same(replica.running_mean, bn.running_mean, "replica sees the update")
    saved = {k: backend.to_numpy(v).copy() for k, v in bn.state().items()}
    fresh = BatchNorm(2, backend=xp, dtype="float32")
    fresh.load_state(saved)
    for k, v in fresh.state().items():
        np.testing.assert_array_equal(backend.to_numpy(v), saved[k])
        assert v.dtype == bn.params["gamma"].dtype
    bn.load_state({"running_mean": np.zeros(2), "running_var": np.ones(2)})
    np.testing.assert_array_equal(backend.to_numpy(replica.running_var), np.ones(2, np.float32))


def test_batchnorm_training_needs_two_values_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(3).forward(np.zeros((1, 3), np.float32))
    BatchNorm(3).forward(np.zeros((1, 3), np.float32), train=False)   # evaluation is per row: fine


# ------------------------------------------------------------------ Dropout
def test_dropout_training_masks_evaluation_identity_and_backward_reuse(xp):
    x = backend.to_device(np.abs(random_array(0, (64, 10, 10))) + 0.5, xp, "float32")
    drop = Dropout(0.5, rng=3)
    assert drop.forward(x, train=False) is x
    y1 = backend.to_numpy(drop.forward(x))
    dx = backend.to_numpy(drop.backward(backend.to_device(np.ones(x.shape), xp, "float32")))
    np.testing.assert_array_equal(dx, (y1 != 0) * np.float32(2.0))    # the forward's mask, scaled by 1/(1 - p)
    y2 = backend.to_numpy(drop.forward(x))
    assert drop.counter == 2
    kept1, kept2 = y1 != 0, y2 != 0
    n = kept1.size
    assert abs(kept1.mean() - 0.5) < 6 * math.sqrt(0.25 / n)
    assert abs(np.mean(kept1 == kept2) - 0.5) < 6 * math.sqrt(0.25 / n)   # a fresh, independent mask per step


def test_dropout_seed_comes_from_rng_like_the_parameter_layers():
    assert Dropout(0.5, rng=4).seed == Dropout(0.5, rng=np.random.default_rng(4)).seed
    assert Dropout(0.5, rng=4).seed != Dropout(0.5, rng=5).seed
    shared = np.random.default_rng(0)
    assert Dropout(0.5, rng=shared).seed != Dropout(0.5, rng=shared).seed   # each draws from the shared stream


def test_dropout_state_resumes_the_mask_sequence():
    x = np.ones((8, 50), np.float32)
    run = Dropout(0.4, rng=1)
    run.forward(x)
    saved = {k: np.asarray(v).copy() for k, v in run.state().items()}
    expected = run.forward(x)
    resumed = Dropout(0.4, rng=99)
    resumed.load_state(saved)
    np.testing.assert_array_equal(resumed.forward(x), expected)
    assert (resumed.seed, resumed.counter) == (run.seed, run.counter)


# ------------------------------------------------------------------ checkpoints, end to end
def _net(seed: int, backend_name) -> Sequential:
    rng = np.random.default_rng(seed)
    kw = {"backend": backend_name, "dtype": "float64"}
    return Sequential([Conv2D(1, 4, 3, padding=1, rng=rng, **kw), BatchNorm(4, **kw), ReLU(), MaxPool2D(2),
                       Flatten(), Dense(64, 16, rng=rng, **kw), ReLU(), Dropout(0.5, rng=rng),
                       Dense(16, 3, rng=rng, **kw)])


def test_a_resumed_model_continues_exactly(xp, tmp_path):
    """Train, save, load into a model built with another seed: the next training forward (batch statistics
    and the dropout mask) and the evaluation outputs (running statistics) are identical."""
    x = backend.to_device(random_array(0, (6, 8, 8, 1)), xp, "float64")
    labels = xp.asarray(np.array([0, 1, 2, 0, 1, 2]))
    model = _net(0, xp)
    opt = Adam()
    for _ in range(3):
        model.train_step(x, labels, opt)
    model.save(tmp_path / "ckpt.npz")
    other = _net(1, xp)
    other.load(tmp_path / "ckpt.npz")
    assert_same(other.predict(x), model.predict(x), "evaluation outputs")
    assert_same(other.forward(x, train=True), model.forward(x, train=True), "next training forward")
    assert other.layers[7].counter == model.layers[7].counter == 4


# ------------------------------------------------------------------ Conv2DTranspose, Sigmoid, arguments
def test_conv2d_transpose_layer_shapes_and_initialisation():
    layer = Conv2DTranspose(32, 16, 3, stride=2, padding=1, output_padding=1, rng=0)
    assert tuple(layer.params["w"].shape) == (32, 3, 3, 16) and tuple(layer.params["b"].shape) == (16,)
    np.testing.assert_array_equal(layer.params["b"], 0)
    assert abs(layer.params["w"].std() / math.sqrt(2 / (3 * 3 * 16)) - 1) < 0.03   # fan_in = KH*KW*filters
    assert layer.forward(np.zeros((2, 7, 7, 32), np.float32)).shape == (2, 14, 14, 16)
    assert layer.config() == {"type": "Conv2DTranspose", "in_channels": 32, "filters": 16, "kernel_size": [3, 3],
                              "stride": [2, 2], "padding": [1, 1], "output_padding": [1, 1]}
    assert BatchNorm(4).config() == {"type": "BatchNorm", "channels": 4, "momentum": 0.1, "eps": 1e-5}
    assert Dropout(0.25).config() == {"type": "Dropout", "p": 0.25}
    assert repr(Sigmoid()) == "Sigmoid()"


def test_layers_keep_backend_dtype_and_device(xp):
    import array_api_compat

    device = None
    if backend.backend_name(xp) == "array_api_strict":
        import array_api_strict

        device = array_api_strict.Device("device1")
    x = xp.asarray(np.ones((2, 3, 3, 2)), dtype=xp.float64, device=device)
    for layer in (Conv2DTranspose(2, 3, 2, stride=2, backend=xp, dtype="float64", device=device),
                  BatchNorm(2, backend=xp, dtype="float64", device=device), Dropout(0.5), Sigmoid()):
        y = layer.forward(x)
        assert y.dtype == xp.float64
        assert str(array_api_compat.device(y)) == str(array_api_compat.device(x))
        for a in (*layer.params.values(), *[s for s in layer.state().values() if not isinstance(s, np.ndarray)]):
            assert str(array_api_compat.device(a)) == str(array_api_compat.device(x))


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: Conv2DTranspose(0, 4, 3), ValueError, "in_channels must be >= 1"),
    (lambda: Conv2DTranspose(1, 4, 3, stride=2, output_padding=2), ValueError,
     "output_padding must be smaller than the stride"),
    (lambda: Conv2DTranspose(1, 4, 3, output_padding=-1), ValueError, "output_padding must be >= 0"),
    (lambda: BatchNorm(0), ValueError, "channels must be >= 1"),
    (lambda: BatchNorm(3, momentum=1.5), ValueError, r"momentum must be a number in \[0, 1\]"),
    (lambda: BatchNorm(3, eps=0), ValueError, "eps must be a positive number"),
    (lambda: BatchNorm(3, dtype="float16"), ValueError, "dtype must be one of"),
    (lambda: Dropout(1.0), ValueError, r"p must be a drop probability in \[0, 1\)"),
    (lambda: Dropout(-0.5), ValueError, r"p must be a drop probability"),
])
def test_bad_arguments_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_threaded_prediction_uses_the_current_running_statistics():
    """The execution predicts on shallow replicas made once; BatchNorm updates its statistics in place, so
    after more training the replicas still normalise with the current ones."""
    from arraycnn.execution import ChunkedExecution

    rng = np.random.default_rng(0)
    layers = [Conv2D(1, 3, 3, rng=rng, dtype="float64"), BatchNorm(3, dtype="float64"), Flatten(),
              Dense(3 * 4 * 4, 2, rng=rng, dtype="float64")]
    with Sequential(layers, execution=ChunkedExecution(threads=2, chunk_rows=4)) as model:
        x = random_array(1, (12, 6, 6, 1))
        model.predict(x)                                    # makes the replicas
        for step in range(3):
            model.train_step(random_array(2 + step, (8, 6, 6, 1)) + float(step), np.array([0, 1] * 4), Adam())
        assert_same(model.predict(x), model.forward(x, train=False), "threaded prediction")
