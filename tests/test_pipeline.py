"""The whole pipeline on every namespace and a non-default device, compared with NumPy in float64.

array-api-strict's ``device1`` refuses to mix devices and refuses implicit conversion to NumPy, as a GPU
does: a pipeline that runs there keeps every array on the model's device and crosses only in
``to_device``/``to_numpy``. PyTorch CPU tensors come through array-api-compat; CuPy runs where a CUDA
device is usable.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import array_api_compat
import numpy as np
import pytest
from conftest import TOLERANCES, epoch_figures

import arraycnn
from arraycnn import backend, data
from arraycnn.models import tutorial_cnn
from arraycnn.optim import Adam
from arraycnn.train import load_training_state

PLACES = [("numpy", None), ("array_api_strict", "device1"), ("torch", "cpu"), ("cupy", "0")]
EPOCHS, BATCH = 2, 24


@pytest.fixture(params=PLACES, ids=[f"{b}-{d}" for b, d in PLACES], scope="module")
def place(request):
    """``(namespace, device object, backend name, device name)`` for each library and device the engine must run on."""
    name, device = request.param
    if name == "torch":
        pytest.importorskip("torch", reason="torch: PyTorch is not installed (it is an optional backend)")
    if name == "cupy" and not backend.cuda_available():
        pytest.skip("cupy: CuPy is not installed or no CUDA device is usable on this machine")
    xp = backend.get_namespace(name)
    return xp, backend.resolve_device(xp, device), name, device


@pytest.fixture(scope="module")
def tiny():
    return data.load_dataset("mnist", "bundled", train_size=60, test_size=30, log=None)


def fit_run(ds, xp, device, epochs=EPOCHS, **kwargs):
    model, opt = tutorial_cnn(xp, "float64", seed=2, device=device), Adam()
    history = arraycnn.fit(model, ds, opt, epochs=epochs, batch_size=BATCH, seed=0, augment=True, progress=False,
                           log=lambda line: None, **kwargs)
    return model, opt, history


@pytest.fixture(scope="module")
def numpy_run(tiny):
    return fit_run(tiny, backend.get_namespace("numpy"), None)


def test_training_stays_on_the_device_and_matches_numpy(place, tiny, numpy_run, tmp_path):
    xp, device, _, _ = place
    model, _, history = fit_run(tiny, xp, device, checkpoint_path=tmp_path / "run.npz")
    if device is not None:
        assert model.device == device
    assert all(array_api_compat.device(p) == model.device for p in model.parameters())
    TOLERANCES["float64"].assert_close(np.array(epoch_figures(history)), np.array(epoch_figures(numpy_run[2])),
                                       "per-epoch loss and accuracy")
    x = model.to_device_inputs(tiny.test_images[:7])
    logits = model.predict(x)
    assert array_api_compat.device(logits) == model.device and tuple(logits.shape) == (7, 10)
    TOLERANCES["float64"].assert_close(logits, numpy_run[0].predict(numpy_run[0].to_device_inputs(
        tiny.test_images[:7])), "logits")
    empty = model.predict(x[:0, ...])
    assert tuple(empty.shape) == (0, 10)
    loss, acc = model.evaluate(tiny.test_images, tiny.test_labels, batch_size=8)
    assert loss == pytest.approx(history[-1]["test_loss"], rel=1e-12) and acc == history[-1]["test_acc"]

    # resume from the checkpoint after epoch 1 replays epoch 2 exactly
    fit_run(tiny, xp, device, epochs=1, checkpoint_path=tmp_path / "one.npz")
    fresh, fresh_opt = tutorial_cnn(xp, "float64", seed=9, device=device), Adam()
    state = load_training_state(tmp_path / "one.npz", fresh, fresh_opt)
    resumed = arraycnn.fit(fresh, tiny, fresh_opt, epochs=EPOCHS, batch_size=BATCH, seed=0, augment=True,
                           start_epoch=state.epoch, history=state.history, progress=False, log=lambda line: None)
    np.testing.assert_array_equal(epoch_figures(resumed), epoch_figures(history))
    assert all(array_api_compat.device(p) == fresh.device for p in fresh.parameters())


def test_the_main_command_runs_on_the_device(place, tmp_path, capsys, monkeypatch):
    """examples/mnist.py with --backend/--device: --save, --resume, --plot-dir, --metrics-json."""
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))  # as a script sees it
    mnist = importlib.import_module("mnist")

    _, _, name, device = place
    common = ["--backend", name, "--source", "bundled", "--train-size", "48", "--test-size", "24",
              "--dtype", "float64", "--batch-size", "16"] + ([] if device is None else ["--device", device])
    assert mnist.main([*common, "--epochs", "1", "--save", str(tmp_path / "ck.npz")]) == 0
    code = mnist.main([*common, "--epochs", "2", "--resume", str(tmp_path / "ck.npz"),
                       "--plot-dir", str(tmp_path / "pictures"), "--metrics-json", str(tmp_path / "m.json")])
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["backend"] == name and len(metrics["history"]) == 2 and metrics["status"] == "completed"
    assert sorted(p.suffix for p in (tmp_path / "pictures").iterdir()) == [".png"] * 5
    assert "final test accuracy" in capsys.readouterr().out


def test_bad_devices_are_named():
    with pytest.raises(ValueError, match="device for numpy must be 'cpu'"):
        backend.resolve_device(backend.get_namespace("numpy"), "cuda:0")
    with pytest.raises(ValueError, match="device for array_api_strict must be one of"):
        backend.resolve_device(backend.get_namespace("array_api_strict"), "device9")
