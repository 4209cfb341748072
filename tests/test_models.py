"""The ready networks vgg_digits and conv_autoencoder: structure, placement, training, checkpoints, their
PyTorch twins (benchmarks/accuracy_models.py) and the two commands that train them."""

from __future__ import annotations

import json

import array_api_compat
import numpy as np
import pytest
from conftest import TOLERANCES, run_example

from arraycnn import backend, data
from arraycnn.layers import BatchNorm, Dropout
from arraycnn.models import conv_autoencoder, vgg_digits
from arraycnn.optim import SGD, Adam

TINY = ["--source", "bundled", "--train-size", "200", "--test-size", "100", "--batch-size", "50"]


@pytest.fixture(scope="module")
def digits():
    """32 real bundled digits: uint8 (32, 28, 28, 1) and int64 labels (32,)."""
    ds = data.load_dataset("mnist", "bundled", train_size=32, test_size=10, log=None)
    return ds.train_images, ds.train_labels


def layer_shapes(model, n: int = 2) -> list[tuple[str, tuple[int, ...]]]:
    x = np.zeros((n, 28, 28, 1), np.float32)
    shapes = []
    for layer in model.layers:
        x = layer.forward(x, train=False)
        shapes.append((type(layer).__name__, tuple(x.shape[1:])))
    return shapes


def targets_for(model, images, labels):
    """What each model is trained against: class ids, or (the autoencoder) its own inputs."""
    return model.to_device_targets(labels if model.loss.classifies else images)


# --------------------------------------------------------------------------- structure


def test_vgg_digits_layers_shapes_and_parameters():
    model = vgg_digits()

    def block(c: int, s: int) -> list:
        return [("Conv2D", (s, s, c)), ("BatchNorm", (s, s, c)), ("ReLU", (s, s, c))]

    assert layer_shapes(model) == [
        *block(16, 28), *block(16, 28), ("MaxPool2D", (14, 14, 16)),
        *block(32, 14), *block(32, 14), ("MaxPool2D", (7, 7, 32)),
        ("Flatten", (1568,)), ("Dense", (128,)), ("ReLU", (128,)), ("Dropout", (128,)), ("Dense", (10,))]
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("0.w", (16, 3, 3, 1)), ("0.b", (16,)), ("1.gamma", (16,)), ("1.beta", (16,)),
        ("3.w", (16, 3, 3, 16)), ("3.b", (16,)), ("4.gamma", (16,)), ("4.beta", (16,)),
        ("7.w", (32, 3, 3, 16)), ("7.b", (32,)), ("8.gamma", (32,)), ("8.beta", (32,)),
        ("10.w", (32, 3, 3, 32)), ("10.b", (32,)), ("11.gamma", (32,)), ("11.beta", (32,)),
        ("15.w", (128, 1568)), ("15.b", (128,)), ("18.w", (10, 128)), ("18.b", (10,))]
    assert model.num_parameters() == (160 + 2320 + 4640 + 9248) + 2 * (16 + 16 + 32 + 32) + 200_832 + 1290 == 218_682
    assert model.layers[17].p == 0.5 and model.loss.name == "softmax_cross_entropy"
    assert all(layer.momentum == 0.1 and layer.eps == 1e-5 for layer in model.layers if isinstance(layer, BatchNorm))


def test_conv_autoencoder_layers_shapes_and_parameters():
    model = conv_autoencoder()
    assert layer_shapes(model) == [
        ("Conv2D", (14, 14, 16)), ("ReLU", (14, 14, 16)), ("Conv2D", (7, 7, 32)), ("ReLU", (7, 7, 32)),
        ("Conv2DTranspose", (14, 14, 16)), ("ReLU", (14, 14, 16)),
        ("Conv2DTranspose", (28, 28, 1)), ("Sigmoid", (28, 28, 1))]
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("0.w", (16, 3, 3, 1)), ("0.b", (16,)), ("2.w", (32, 3, 3, 16)), ("2.b", (32,)),
        ("4.w", (32, 3, 3, 16)), ("4.b", (16,)), ("6.w", (16, 3, 3, 1)), ("6.b", (1,))]
    assert model.num_parameters() == 160 + 4640 + 4624 + 145 == 9569
    assert model.loss.name == "mean_squared_error"
    assert [layer.output_padding for layer in model.layers[4::2]] == [(1, 1), (1, 1)]
    out = model.predict(np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32))
    assert out.shape == (3, 28, 28, 1) and float(np.min(out)) > 0 and float(np.max(out)) < 1


@pytest.mark.parametrize("build", [vgg_digits, conv_autoencoder])
def test_seed_dtype_backend_and_device(build):
    """As tutorial_cnn: the seed fixes every initial number on every backend; dtype and device place them."""
    ref = build(seed=3)
    same, other = build(seed=3), build(seed=4)
    for (name, a), b, c in zip(ref.named_parameters(), same.parameters(), other.parameters(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert name.endswith((".b", "gamma", "beta")) or not np.array_equal(a, c), name
    f64 = build(dtype="float64", seed=3)
    assert f64.dtype_name == "float64"
    for (name, a), b in zip(ref.named_parameters(), f64.parameters(), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b, np.float32), err_msg=name)

    xp = backend.get_namespace("array_api_strict")
    dev = backend.resolve_device(xp, "device1")
    moved = build(xp, seed=3, device="device1")
    assert moved.device == dev
    arrays = moved.parameters() + [a for _, a in moved.named_state() if not isinstance(a, np.ndarray)]
    assert all(array_api_compat.device(a) == dev for a in arrays)
    for (name, a), b in zip(ref.named_parameters(), moved.parameters(), strict=True):
        np.testing.assert_array_equal(a, backend.to_numpy(b), err_msg=name)
    dropouts = [(layer.seed, layer.counter) for layer in ref.layers if isinstance(layer, Dropout)]
    assert dropouts == [(layer.seed, layer.counter) for layer in moved.layers if isinstance(layer, Dropout)]


def test_conv_autoencoder_trains_alike_on_torch_tensors(digits):
    """Through array-api-compat on torch tensors (no dropout, so no device random numbers): the same losses as
    NumPy in float64, step after step, and its MSE pair reads the element count from the shape."""
    pytest.importorskip("torch")
    images, _ = digits
    losses = {}
    for name in ("numpy", "torch"):
        model, opt = conv_autoencoder(name, "float64", seed=1), Adam(1e-3)
        x = model.to_device_inputs(images)
        losses[name] = [float(backend.to_numpy(model.train_step(x, x, opt))) for _ in range(3)]
        assert backend.backend_name(model.xp).endswith(name)
    TOLERANCES["float64"].assert_close(np.array(losses["torch"]), np.array(losses["numpy"]), "losses")


# --------------------------------------------------------------------------- training and modes


# 8 Adam steps on one batch of 32: the classifier (a loss near ln 10) roughly halves its loss; the
# autoencoder's sigmoid starts near 0.5 on mostly-black digits and its MSE falls steadily, by about 1/8
@pytest.mark.parametrize(("build", "factor"), [(vgg_digits, 0.5), (conv_autoencoder, 0.9)])
def test_a_few_training_steps_lower_the_loss(build, factor, digits):
    images, labels = digits
    model, opt = build(seed=0), Adam(1e-3)
    x, y = model.to_device_inputs(images), targets_for(model, images, labels)
    before = model.evaluate(images, labels if model.loss.classifies else images)[0]
    losses = [float(model.train_step(x, y, opt)) for _ in range(8)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < factor * losses[0], losses
    # evaluation mode (running statistics, no dropout) sees the improvement too
    assert model.evaluate(images, labels if model.loss.classifies else images)[0] < before


def test_vgg_digits_evaluation_mode_is_deterministic_and_leaves_the_statistics(digits):
    images, labels = digits
    model, opt = vgg_digits(), Adam(1e-3)
    x = model.to_device_inputs(images)
    for _ in range(2):
        model.train_step(x, model.to_device_targets(labels), opt)
    stats = {name: np.array(a, copy=True) for name, a in model.named_state()}
    assert not np.array_equal(stats["1.running_mean"], np.zeros(16))   # training moved them
    first, second = model.predict(x), model.predict(x)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, model.forward(x, train=False))
    for name, a in model.named_state():
        np.testing.assert_array_equal(a, stats[name], err_msg=name)   # prediction updates nothing
    assert not np.allclose(model.forward(x, train=True), first)       # training mode: batch stats and dropout


def test_checkpoint_round_trip_keeps_running_statistics_and_dropout_state(tmp_path, digits):
    images, labels = digits
    model, opt = vgg_digits(seed=0), Adam(1e-3)
    x, y = model.to_device_inputs(images), model.to_device_targets(labels)
    for _ in range(3):
        model.train_step(x, y, opt)
    model.save(tmp_path / "vgg.npz")

    fresh = vgg_digits(seed=1)
    fresh.load(tmp_path / "vgg.npz")
    for (name, a), b in zip(model.named_parameters(), fresh.parameters(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    saved_state = dict(model.named_state())
    assert {n for n in saved_state if n.endswith("running_var")} == {"1.running_var", "4.running_var",
                                                                      "8.running_var", "11.running_var"}
    for name, a in fresh.named_state():
        np.testing.assert_array_equal(a, saved_state[name], err_msg=name)
    assert not np.array_equal(saved_state["11.running_var"], np.ones(32))
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))
    # the resumed model draws the same next dropout mask and takes the same next step
    opt2 = Adam(1e-3)
    opt2.load_state_dict(opt.state_dict(), fresh.parameters())
    np.testing.assert_array_equal(fresh.train_step(x, y, opt2), model.train_step(x, y, opt))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- the PyTorch twins
# In float64, where both engines are exact to rounding: in float32 this deep BatchNorm network amplifies
# rounding (a ReLU sign or a pooling maximum that flips) to ~1 % in its first layers' gradients, in PyTorch
# as in arraycnn, against a float64 reference.


def twin_of(model, name: str, torch):
    """The PyTorch twin of ``model`` in float64 with ``model``'s parameters (and its dropout masks)."""
    from benchmarks.accuracy_models import copy_parameters, share_dropout_masks, torch_model

    twin = torch_model(name).double()
    assert copy_parameters(model, twin) == len(model.parameters())
    share_dropout_masks(model, twin)
    return twin


def nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(backend.to_numpy(x).transpose(0, 3, 1, 2)))


def test_torch_twin_of_vgg_digits_predicts_the_same(digits):
    torch = pytest.importorskip("torch")
    images, labels = digits
    model, opt = vgg_digits(seed=2, dtype="float64"), Adam(1e-3)
    x = model.to_device_inputs(images)
    for _ in range(2):   # running statistics away from 0 and 1, so evaluation mode tests them too
        model.train_step(x, model.to_device_targets(labels), opt)
    twin = twin_of(model, "vgg_digits", torch)
    state = dict(model.named_state())
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            if isinstance(layer, BatchNorm):
                twin[i].running_mean.copy_(torch.from_numpy(state[f"{i}.running_mean"]))
                twin[i].running_var.copy_(torch.from_numpy(state[f"{i}.running_var"]))
    twin.eval()
    with torch.no_grad():
        TOLERANCES["float64"].assert_close(model.predict(x), twin(nchw(torch, x)).numpy(), "logits")


def assert_same_loss_and_gradients(model, twin, x, targets, their_targets, torch) -> None:
    """One training-mode forward and backward in each engine: the loss and every parameter gradient agree."""
    from benchmarks.accuracy_models import torch_layout

    out = model.forward(x, train=True)
    loss, cache = model.loss.forward(out, targets)
    model.backward(model.loss.backward(1.0, cache))
    twin.train()
    their_loss = (torch.nn.functional.mse_loss if model.loss.name == "mean_squared_error"
                  else torch.nn.functional.cross_entropy)(twin(nchw(torch, x)), their_targets)
    their_loss.backward()
    tol = TOLERANCES["float64"]
    tol.assert_close(loss, their_loss.item(), "loss")
    for (name, _), grad, p in zip(model.named_parameters(), model.gradients(), twin.parameters(), strict=True):
        tol.assert_close(torch_layout(name, backend.to_numpy(grad)), p.grad.numpy(), f"d{name}")


def test_torch_twin_of_vgg_digits_trains_the_same_with_shared_dropout_masks(digits):
    """Training mode end to end (batch statistics, the shared dropout mask, the fused loss, every gradient)
    against PyTorch's autograd; after three SGD-momentum steps (PyTorch's form in both) the two still agree."""
    torch = pytest.importorskip("torch")
    from benchmarks.accuracy_models import share_dropout_masks, torch_model

    images, labels = digits
    model = vgg_digits(seed=7, dtype="float64")
    twin = twin_of(model, "vgg_digits", torch)
    x, y = model.to_device_inputs(images), model.to_device_targets(labels)
    assert_same_loss_and_gradients(model, twin, x, y, torch.from_numpy(labels), torch)

    ours_opt, their_opt = SGD(0.01, momentum=0.9), torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):   # the masks stay paired: each engine advances its own counter once per step
        model.train_step(x, y, ours_opt)
        their_opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(nchw(torch, x)), torch.from_numpy(labels)).backward()
        their_opt.step()
    twin.eval()
    with torch.no_grad():
        TOLERANCES["float64"].assert_close(model.predict(x), twin(nchw(torch, x)).numpy(), "logits after 3 steps")
    with pytest.raises(ValueError, match="do not pair"):
        share_dropout_masks(conv_autoencoder(), torch_model("vgg_digits"))


def test_torch_twin_of_conv_autoencoder_has_the_same_loss_and_gradients(digits):
    torch = pytest.importorskip("torch")
    images, _ = digits
    model = conv_autoencoder(seed=5, dtype="float64")
    x = model.to_device_inputs(images)
    assert_same_loss_and_gradients(model, twin_of(model, "conv_autoencoder", torch), x, x, nchw(torch, x), torch)


def test_copy_parameters_refuses_a_twin_of_another_shape():
    pytest.importorskip("torch")
    from benchmarks.accuracy_models import copy_parameters, torch_model

    with pytest.raises(ValueError, match="parameter arrays"):
        copy_parameters(conv_autoencoder(), torch_model("vgg_digits"))


def test_summary_row_compares_the_medians_of_the_seeds_both_engines_finished():
    from benchmarks.accuracy_models import STUDIES, epoch_swings, summary

    def runs(engine, finals):
        return {f"{engine}/{s}": {"metric": [0.0, v], "train_loss": [1.0, 0.5], "seconds": [2.0, 4.0]}
                for s, v in enumerate(finals)}

    saved = {"config": {"data": "mnist (bundled)"}, "runs": runs("arraycnn", [0.0110, 0.0100, 0.0120, 0.5])
             | runs("torch", [0.0100, 0.0090, 0.0300])}   # arraycnn's seed 3 has no PyTorch run to pair with
    row = summary(STUDIES["autoencoder"], saved)
    assert row[2] == "0, 1, 2" and row[3] == "0.01100 (0.01000–0.01200)" and row[4] == "0.01000 (0.00900–0.03000)"
    assert row[5:] == ["+10.0 %", "+10.0 %, +11.1 %, -60.0 %", "within 5 %: NO", "3 s", "3 s"]
    saved["runs"]["arraycnn/0"]["metric"][-1] = 0.0104   # median 0.0104: 4 % above PyTorch's
    assert summary(STUDIES["autoencoder"], saved)[7] == "within 5 %: yes"
    assert summary(STUDIES["autoencoder"], {"config": saved["config"], "runs": runs("torch", [0.01])}) is None

    points = {"config": {"data": "d"}, "runs": runs("arraycnn", [97.1]) | runs("torch", [97.5])}
    assert summary(STUDIES["vgg-digits"], points)[5:8] == ["-0.40 points", "-0.40", "within 0.3 points: NO"]
    assert epoch_swings(points) is None   # two epochs: no plateau to measure
    for run, curve in zip(points["runs"].values(), ([90, 95, 96, 97, 96.5, 97.5], [90, 94, 97, 97, 97, 98]),
                          strict=True):
        run["metric"] = curve   # second half: |97-96|, |96.5-97|, |97.5-96.5| and |97-97|, |97-97|, |98-97|
    swing = epoch_swings(points)
    assert (swing.median, swing.high, swing.runs) == (pytest.approx(0.75), pytest.approx(1.0), 6)


# --------------------------------------------------------------------------- the commands


@pytest.mark.slow
def test_mnist_example_trains_vgg_digits(tmp_path):
    result = run_example("mnist.py", tmp_path, *TINY, "--model", "vgg", "--epochs", "1", "--metrics-json", "m.json",
                         timeout=300)
    assert result.returncode == 0, result.stderr
    assert "a VGG-style CNN on mnist" in result.stdout and "218,682 parameters" in result.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["model"] == "vgg" and metrics["status"] == "completed" and len(metrics["history"]) == 1
    assert f"final test accuracy {metrics['final_test_accuracy']:.2%} on 100 test images" in result.stdout

    bad = run_example("mnist.py", tmp_path, *TINY, "--model", "vgg", "--conv-method", "toeplitz", "--epochs", "1",
                      timeout=300)
    assert bad.returncode == 2 and "--model vgg uses im2col" in bad.stderr


@pytest.mark.slow
def test_autoencoder_example(tmp_path):
    result = run_example("autoencoder.py", tmp_path, *TINY, "--epochs", "2", "--plot", "r.png",
                         "--metrics-json", "m.json", timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a convolutional autoencoder on mnist" in out and "9,569 parameters" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    history = metrics["history"]
    assert [r["epoch"] for r in history] == [1, 2] and history[1]["test_mse"] < history[0]["test_mse"]
    for r in history:
        assert f"epoch {r['epoch']}/2  train MSE {r['train_mse']:.5f}  test MSE {r['test_mse']:.5f}" in out
    assert metrics["final_test_mse"] == history[-1]["test_mse"]
    assert out.strip().splitlines()[-1] == f"final test MSE {metrics['final_test_mse']:.5f}"
    assert "the test MSE is the mean over 100 test images' pixels" in out
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {k: metrics[k] for k in ("status", "source", "train_size", "test_size", "batch_size", "epochs")} == {
        "status": "completed", "source": "bundled", "train_size": 200, "test_size": 100, "batch_size": 50,
        "epochs": 2}


@pytest.mark.parametrize(("args", "message"), [(["--lr", "nan"], "argument --lr: must be a finite number > 0"),
                                               (["--batch-size", "0"], "argument --batch-size: must be >= 1")])
def test_autoencoder_example_refuses_bad_arguments(tmp_path, args, message):
    result = run_example("autoencoder.py", tmp_path, *args, "--metrics-json", "m.json", timeout=300)
    assert result.returncode == 2 and message in result.stderr
    assert "epoch" not in result.stdout and not (tmp_path / "m.json").exists()
