"""Sequential and tutorial_cnn: shapes, parameters, chained gradients, train_step, predict/evaluate, checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from arraycnn import backend, checkpoint
from arraycnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from arraycnn.model import Sequential
from arraycnn.models import tutorial_cnn
from arraycnn.optim import Adam


@pytest.fixture(scope="module")
def digits():
    """64 real bundled digits: uint8 (64, 28, 28, 1) and int64 labels."""
    from arraycnn import data

    ds = data.load_dataset("mnist", "bundled", train_size=64, test_size=10, log=None)
    return ds.train_images, ds.train_labels


def small_net(seed: int = 0, dtype: str = "float64", units: int = 3) -> Sequential:
    """Conv 2@3x3 -> ReLU -> MaxPool 2 -> Flatten -> Dense ``units`` on (N, 6, 6, 1) images."""
    rng = np.random.default_rng(seed)
    return Sequential([Conv2D(1, 2, 3, rng=rng, dtype=dtype), ReLU(), MaxPool2D(2), Flatten(),
                       Dense(2 * 2 * 2, units, rng=rng, dtype=dtype)])


# --------------------------------------------------------------------------- structure


def test_tutorial_cnn_shapes_and_parameters():
    model = tutorial_cnn()
    x = np.zeros((3, 28, 28, 1), np.float32)
    shapes = []
    for layer in model.layers:
        x = layer.forward(x, train=False)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(26, 26, 10), (26, 26, 10), (24, 24, 10), (22, 22, 10), (22, 22, 10), (20, 20, 10),
                      (4000,), (50,), (50,), (10,)]
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("0.w", (10, 3, 3, 1)), ("0.b", (10,)), ("3.w", (10, 3, 3, 10)), ("3.b", (10,)),
        ("7.w", (50, 4000)), ("7.b", (50,)), ("9.w", (10, 50)), ("9.b", (10,))]
    assert model.num_parameters() == 100 + 910 + 4000 * 50 + 50 + 500 + 10 == 201_570
    assert model.dtype_name == "float32" and model.xp is backend.get_namespace("numpy")


def test_tutorial_cnn_options():
    f64 = tutorial_cnn(dtype="float64", seed=3, conv_method="toeplitz", init="tutorial")
    assert f64.dtype_name == "float64" and f64.layers[0].method == "toeplitz"
    assert abs(float(np.std(f64.parameters()[4])) - 0.01) < 0.001  # 200,000 draws of N(0, 0.01²)


def test_tutorial_cnn_identical_initial_weights_across_backends():
    ref = tutorial_cnn("numpy", seed=5)
    strict = tutorial_cnn("array_api_strict", seed=5)
    assert strict.xp is backend.get_namespace("array_api_strict")
    for (name, a), (_, b) in zip(ref.named_parameters(), strict.named_parameters(), strict=True):
        np.testing.assert_array_equal(backend.to_numpy(b), a, err_msg=name)
    assert not np.array_equal(tutorial_cnn(seed=6).parameters()[0], ref.parameters()[0])


def test_sequential_rejects_bad_layers():
    with pytest.raises(TypeError, match="non-empty sequence"):
        Sequential([])
    with pytest.raises(ValueError, match="at least one parameter"):
        Sequential([ReLU(), Flatten()])
    with pytest.raises(TypeError, match="share one dtype"):
        Sequential([Dense(4, 3, dtype="float32"), Dense(3, 2, dtype="float64")])
    with pytest.raises(TypeError, match="different backends"):
        Sequential([Dense(4, 3), Dense(3, 2, backend="array_api_strict")])


# --------------------------------------------------------------------------- passes


def test_model_gradients_match_finite_differences():
    """The chained backward of a whole network: d(loss)/d(param) against central differences in float64."""
    from arraycnn.functional import softmax_cross_entropy_backward, softmax_cross_entropy_forward

    model = small_net()
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((4, 6, 6, 1)), np.array([0, 2, 1, 2])
    loss, cache = softmax_cross_entropy_forward(model.forward(x), labels)
    dx = model.backward(softmax_cross_entropy_backward(1.0, cache))
    eps = 1e-6  # central differences in float64: truncation O(eps²) and rounding ~1e-16/eps, far below 1e-6
    for (name, p), g in [*zip(model.named_parameters(), model.gradients(), strict=True), (("x", x), dx)]:
        for idx in list(np.ndindex(p.shape))[:: max(1, p.size // 7)]:
            old = p[idx]
            p[idx] = old + eps
            up = float(softmax_cross_entropy_forward(model.forward(x, train=False), labels)[0])
            p[idx] = old - eps
            down = float(softmax_cross_entropy_forward(model.forward(x, train=False), labels)[0])
            p[idx] = old
            assert abs(g[idx] - (up - down) / (2 * eps)) < 1e-6, (name, idx)
    assert float(loss) > 0
    grads = [g.copy() for g in model.gradients()]
    model.forward(x)
    assert model.backward(softmax_cross_entropy_backward(1.0, cache), input_grad=False) is None  # what train_step uses
    for a, b in zip(model.gradients(), grads, strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_step_lowers_the_loss_and_stays_on_the_device(digits):
    images, labels = digits
    from arraycnn import data

    model, opt = tutorial_cnn(seed=0), Adam()
    x, y = data.to_float_images(images[:32], model.xp), data.to_labels(labels[:32], model.xp)
    losses = [model.train_step(x, y, opt) for _ in range(15)]
    assert all(v.shape == () and v.dtype == np.float32 for v in losses)  # 0-d on the device, not a host float
    first, last = float(losses[0]), float(losses[-1])
    assert first > 1.0 and last < 0.5 * first, (first, last)
    assert opt.t == 15


def test_predict_in_chunks_equals_one_pass():
    model = small_net()
    x = np.random.default_rng(0).standard_normal((7, 6, 6, 1))
    full = model.predict(x)
    assert full.shape == (7, 3)
    np.testing.assert_allclose(model.predict(x, batch_size=3), full, rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)


def test_evaluate_matches_a_direct_computation(digits):
    from arraycnn.functional import softmax_cross_entropy_forward

    images, labels = digits
    model = tutorial_cnn(dtype="float64")
    loss, acc = model.evaluate(images, labels, batch_size=20)
    logits = model.predict(images.astype(np.float64) / 255.0)
    assert loss == pytest.approx(float(softmax_cross_entropy_forward(logits, labels)[0]), rel=1e-12)
    assert acc == np.mean(np.argmax(logits, axis=1) == labels)
    with pytest.raises(ValueError, match="same length"):
        model.evaluate(images, labels[:-1])
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\), got 0..10"):
        model.evaluate(images, np.where(labels == 3, 10, labels))
    with pytest.raises(TypeError, match="integer dtype"):
        model.evaluate(images, labels.astype(np.float64))


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_across_backends_and_dtypes(tmp_path):
    src = small_net(seed=1)
    path = tmp_path / "net.npz"
    src.save(path, extra={"extra/step": np.array(7)}, meta={"note": "hello"})
    dst = Sequential([Conv2D(1, 2, 3, rng=9, backend="array_api_strict", dtype="float32"), ReLU(), MaxPool2D(2),
                      Flatten(), Dense(8, 3, rng=9, backend="array_api_strict", dtype="float32")])
    ckpt = dst.load(path)
    assert ckpt.meta["note"] == "hello" and ckpt.meta["dtype"] == "float64"
    assert set(ckpt.arrays) == {"extra/step"} and int(ckpt.arrays["extra/step"]) == 7
    for (name, a), (_, b) in zip(src.named_parameters(), dst.named_parameters(), strict=True):
        assert b.dtype == dst.dtype, name
        np.testing.assert_array_equal(backend.to_numpy(b), a.astype(np.float32), err_msg=name)
    with zipfile.ZipFile(path) as z:  # one plain .npz: .npy members only, the metadata a unicode array
        assert sorted(z.namelist()) == sorted(["meta.npy", "extra/step.npy"] +
                                              [f"param/{n}.npy" for n, _ in src.named_parameters()])
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
    assert meta["format"] == checkpoint.FORMAT and meta["version"] == checkpoint.VERSION
    assert meta["architecture"] == src.architecture()


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "net.npz"
    small_net(seed=1).save(path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full (simulated) just before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        small_net(seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.npz"]  # the temporary file is cleaned up
    monkeypatch.undo()
    model = small_net(seed=3)
    model.load(path)
    np.testing.assert_array_equal(model.parameters()[0], small_net(seed=1).parameters()[0])


def _write_raw(path, arrays, meta):
    np.savez(path, meta=np.asarray(json.dumps(meta)), **arrays)


def _valid_parts(model):
    meta = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, **model.checkpoint_meta()}
    return model.state_arrays(), meta


def test_refuses_a_pickle_inside_the_npz(tmp_path):
    model = small_net()
    arrays, meta = _valid_parts(model)
    arrays["param/0.b"] = np.array([{"evil": "object"}, None], dtype=object)  # np.savez pickles object arrays
    path = tmp_path / "pickled.npz"
    _write_raw(path, arrays, meta)
    with pytest.raises(ValueError, match=r"pickled.npz holds a pickled object array under 'param/0.b'"):
        model.load(path)


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_zip", "pickle_file", "no_meta", "bad_json",
                                    "foreign_format", "future_version"])
def test_corrupt_checkpoints_give_clear_errors(tmp_path, damage):
    model = small_net()
    path = tmp_path / "ck.npz"
    model.save(path)
    arrays, meta = _valid_parts(model)
    error, match = ValueError, None
    if damage == "missing":
        path.unlink()
        error, match = FileNotFoundError, "ck.npz does not exist"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        match = "ck.npz is not an .npz .* truncated or corrupt"
    elif damage == "not_zip":
        path.write_text("hello")
        match = "not an .npz"
    elif damage == "pickle_file":
        path.write_bytes(pickle.dumps({"param/0.w": 1}))
        match = "not an .npz"
    elif damage == "no_meta":
        np.savez(path, **arrays)
        match = "no 'meta' entry"
    elif damage == "bad_json":
        np.savez(path, meta=np.asarray("{not json"), **arrays)
        match = "not valid JSON"
    elif damage == "foreign_format":
        _write_raw(path, arrays, {**meta, "format": "something-else"})
        match = "not an arraycnn checkpoint"
    else:
        _write_raw(path, arrays, {**meta, "version": 99})
        match = "format version 99"
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(error, match=match):
        model.load(path)
    for a, b in zip(before, model.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing changed


@pytest.mark.parametrize("mismatch", ["architecture", "layer_count", "missing_key", "extra_key", "shape", "dtype"])
def test_mismatched_checkpoints_are_refused(tmp_path, mismatch):
    model = small_net()
    arrays, meta = _valid_parts(model)
    match = None
    if mismatch == "architecture":
        small_net(units=4).save(tmp_path / "ck.npz")
        match = r"different network: its layer 4 is \{.*'units': 4\}"
    elif mismatch == "layer_count":
        _write_raw(tmp_path / "ck.npz", arrays, {**meta, "architecture": meta["architecture"][:3]})
        match = "network with 3 layers, this model has 5"
    else:
        if mismatch == "missing_key":
            del arrays["param/4.b"]
            match = r"missing \['4.b'\], unexpected \[\]"
        elif mismatch == "extra_key":
            arrays["param/4.c"] = np.zeros(3)
            match = r"missing \[\], unexpected \['4.c'\]"
        elif mismatch == "shape":
            arrays["param/0.w"] = np.zeros((2, 3, 3, 2))
            match = r"parameter 0.w has shape \(2, 3, 3, 2\), this model needs \(2, 3, 3, 1\)"
        else:
            arrays["param/0.b"] = np.array([1, 2])
            match = "parameter 0.b has dtype int64"
        _write_raw(tmp_path / "ck.npz", arrays, meta)
    with pytest.raises(ValueError, match=match):
        model.load(tmp_path / "ck.npz")


def test_save_refuses_object_arrays_and_reserved_keys(tmp_path):
    model = small_net()
    with pytest.raises(TypeError, match="dtype object"):
        model.save(tmp_path / "x.npz", extra={"x": np.array([None], dtype=object)})
    with pytest.raises(ValueError, match="param/"):
        model.save(tmp_path / "x.npz", extra={"param/0.w": np.zeros(1)})
    assert not list(tmp_path.iterdir())
