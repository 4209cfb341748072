"""examples/mnist.py run as a user would (a subprocess), on tiny subsets of the bundled digits."""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, run_example

from arraycnn.checkpoint import read_npz

EXAMPLE = EXAMPLES / "mnist.py"
TINY = ["--source", "bundled", "--train-size", "200", "--test-size", "100", "--batch-size", "50"]
example = functools.partial(run_example, "mnist.py")  # example(cwd, *args)


def scores(metrics: dict) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["train_acc"], r["test_loss"], r["test_acc"]) for r in metrics["history"]]


@pytest.mark.slow
def test_train_save_resume_metrics_and_plot(tmp_path):
    straight = example(tmp_path, *TINY, "--epochs", "2", "--metrics-json", "a.json", "--plot", "curves.png",
                       "--plot-dir", "pictures")
    assert straight.returncode == 0, straight.stderr
    out = straight.stdout
    assert "arraycnn 0.1.0: the tutorial's CNN on mnist" in out
    assert "200 train + 100 test images" in out and "batch 50, Adam lr 0.001, augment random shifts" in out
    assert "epoch 1/2  train loss" in out and "epoch 2/2  train loss" in out
    assert "predicted: [" in out and "true:      [" in out and "final test accuracy" in out
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    for name in ("history", "filters", "feature_maps", "confusion_matrix", "misclassified"):
        picture = tmp_path / "pictures" / f"{name}.png"
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 1000, name

    metrics = json.loads((tmp_path / "a.json").read_text())
    assert {k: metrics[k] for k in ("status", "backend", "dtype", "dataset", "source", "train_size", "test_size",
                                    "epochs", "batch_size", "optimizer", "seed", "augment")} == {
        "status": "completed", "backend": "numpy", "dtype": "float32", "dataset": "mnist", "source": "bundled",
        "train_size": 200, "test_size": 100, "epochs": 2, "batch_size": 50, "optimizer": "adam", "seed": 0,
        "augment": True}
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    for r in metrics["history"]:
        assert r["seconds"] > 0 and r["images_per_second"] == pytest.approx(200 / r["seconds"])
    assert metrics["final_test_accuracy"] == metrics["history"][-1]["test_acc"]
    assert f"final test accuracy {metrics['final_test_accuracy']:.2%} on 100 test images" in out

    first = example(tmp_path, *TINY, "--epochs", "1", "--save", "ck.npz", "--metrics-json", "b.json")
    assert first.returncode == 0, first.stderr
    assert "saving    a checkpoint to ck.npz after every epoch" in first.stdout
    # the settings (source, sizes, batch, augmentation, seed) come back from the checkpoint
    resumed = example(tmp_path, "--resume", "ck.npz", "--epochs", "2", "--metrics-json", "c.json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed   from ck.npz after epoch 1" in resumed.stdout and "epochs 2..2" in resumed.stdout
    assert "epoch 1/2" not in resumed.stdout
    resumed_metrics = json.loads((tmp_path / "c.json").read_text())
    assert resumed_metrics["resumed_from"] == "ck.npz"
    assert scores(resumed_metrics) == scores(metrics)  # exactly the uninterrupted run


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_resume_from_a_bad_checkpoint_is_an_error(tmp_path, damage):
    if damage == "corrupt":
        (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    result = example(tmp_path, *TINY, "--resume", "bad.npz", "--epochs", "1", "--metrics-json", "m.json")
    assert result.returncode == 2
    expected = "does not exist" if damage == "missing" else "is not an .npz (zip) archive"
    assert f"error: checkpoint bad.npz {expected}" in result.stderr
    assert "epoch" not in result.stdout and not (tmp_path / "m.json").exists()  # never a silent fresh start


BAD_ARGUMENTS = [
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--lr", "-0.001"], "argument --lr: must be a finite number > 0, got -0.001"),
    (["--lr", "fast"], "argument --lr: expected a number > 0, got 'fast'"),
    (["--epochs", "-1"], "argument --epochs: must be >= 0, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--seed", "-3"], "argument --seed: must be >= 0, got -3"),
    (["--train-size", "0"], "argument --train-size: must be >= 1, got 0"),
    (["--test-size", "1.5"], "argument --test-size: expected an integer >= 1, got '1.5'"),
    (["--model", "vgg", "--conv-method", "toeplitz"], "--model vgg uses im2col"),
    (["--source", "bundled", "--dataset", "fashion_mnist"], "--source bundled holds mnist only"),
    (["--source", "idx", "--data-dir", "nowhere"], "--data-dir nowhere is not a directory"),
    (["--resume", "missing.npz"], "error: checkpoint missing.npz does not exist"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_exit_2_before_anything_is_loaded(tmp_path, args, message):
    """argparse refuses them: no header, no data source chosen, no backend imported, no file written."""
    result = example(tmp_path, *args, "--metrics-json", "m.json")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_saves_the_last_completed_epoch_and_exits_130(tmp_path):
    cmd = [sys.executable, str(EXAMPLE), *TINY, "--epochs", "5", "--save", "ck.npz", "--metrics-json", "m.json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 1/5  train loss"):
            proc.send_signal(signal.SIGINT)  # Ctrl-C early in epoch 2 (or while epoch 1 is being saved)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "interrupted during epoch 2: the state after epoch 1 is saved in ck.npz" in out
    assert "--resume ck.npz --epochs 5" in out and "Traceback" not in err
    meta = read_npz(tmp_path / "ck.npz")[1]
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["status"] == "interrupted" and [r["epoch"] for r in metrics["history"]] == [1]


def test_divergence_exits_1_and_never_saves_a_broken_model(tmp_path):
    result = example(tmp_path, *TINY, "--epochs", "2", "--lr", "1e30", "--save", "ck.npz", "--metrics-json", "m.json")
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""   # no NumPy RuntimeWarning lines: the one message below says it all
    assert result.stdout.count("training diverged") == 1
    assert "training diverged: the mean train loss is" in result.stdout
    assert "The last good state is kept: the state after epoch 0 is saved in ck.npz" in result.stdout
    arrays, meta = read_npz(tmp_path / "ck.npz")
    assert meta["epoch"] == 0 and all(np.isfinite(v).all() for v in arrays.values())
    assert json.loads((tmp_path / "m.json").read_text())["status"] == "diverged"


def test_a_loss_that_explodes_but_stays_finite_is_divergence(tmp_path):
    """SGD at lr 1000 reaches ~1e11 within a few batches: over 100 x ln 10, so it stops like NaN would."""
    result = example(tmp_path, *TINY, "--epochs", "2", "--optimizer", "sgd", "--lr", "1000", "--metrics-json", "m.json")
    assert result.returncode == 1 and result.stderr == "", result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("training diverged"))
    loss = float(re.search(r"the mean train loss is (\S+) in epoch 1/2", line).group(1))
    assert 230 < loss < float("inf") and "over 100 x ln 10 = 230" in line, line
    assert "epoch 1/2  train loss" not in result.stdout   # stopped within the first epoch
    assert json.loads((tmp_path / "m.json").read_text())["status"] == "diverged"


def test_zero_epochs_evaluates_the_untrained_network(tmp_path):
    result = example(tmp_path, *TINY, "--epochs", "0", "--metrics-json", "m.json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    accuracy = metrics["final_test_accuracy"]
    assert metrics["history"] == [] and 0.0 <= accuracy <= 0.3   # a guess among ten classes: about 10 %
    assert metrics["final_test_loss"] == pytest.approx(math.log(10), rel=0.2)
    assert (f"final test accuracy {accuracy:.2%} on 100 test images (the untrained network: no epoch was trained)"
            in result.stdout)
    assert "n/a" not in result.stdout and metrics["class_names"] == [str(d) for d in range(10)]


def write_idx(directory: Path, n: int, seed: int) -> None:
    """The four IDX files of a tiny random data set (images and labels 0..9) in ``directory``."""
    rng = np.random.default_rng(seed)
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def test_fashion_mnist_predictions_are_named(tmp_path):
    """Fashion-MNIST's classes are printed and recorded by name; MNIST's stay digits (test above)."""
    write_idx(tmp_path, 20, seed=0)
    result = example(tmp_path, "--dataset", "fashion_mnist", "--source", "idx", "--data-dir", ".", "--epochs", "0",
                     "--metrics-json", "m.json")
    assert result.returncode == 0, result.stderr
    names = json.loads((tmp_path / "m.json").read_text())["class_names"]
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(names) == 10
    true = re.search(r"^  true:      (\[.*?\])", result.stdout, re.MULTILINE).group(1)
    predicted = re.search(r"^  predicted: (\[.*?\])", result.stdout, re.MULTILINE).group(1)
    assert ast.literal_eval(true) == names  # labels 0..9 in order
    assert set(ast.literal_eval(predicted)) <= set(names)
