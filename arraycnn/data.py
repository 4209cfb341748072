"""MNIST and Fashion-MNIST on the host, from three sources, plus seeded batching.

Sources (see ``docs/data.md``):

* ``"tfds"``: tensorflow-datasets, the TensorFlow tutorial's way (optional extra ``data``);
* ``"idx"``: a directory with the four classic IDX files (plain or ``.gz``), read by a validating reader;
* ``"bundled"``: 5,000 real MNIST digits shipped inside the package (mnist only).

Everything here returns HOST NumPy arrays: images ``uint8 (N, 28, 28, 1)``, labels ``int64 (N,)``.
Crossing to a backend happens in :func:`to_float_images` / :func:`to_labels`, one transfer each.

Seeding rule: the order and augmentation of epoch ``e`` come from ``np.random.default_rng([seed, e])``,
so a run resumed at epoch ``k`` sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import logging
import math
import os
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from arraycnn._checks import check_int
from arraycnn.backend import Array, resolve_dtype, to_device

NAMES = ("mnist", "fashion_mnist")
SOURCES = ("auto", "tfds", "idx", "bundled")
NUM_CLASSES = 10
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(NUM_CLASSES)),
    # Fashion-MNIST's labels 0..9, as its authors name them
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
IMAGE_SHAPE = (28, 28, 1)
AUGMENT_MAX_SHIFT = 2

BUNDLED_FILE = "mnist_5k.npz"
BUNDLED_SHA256 = "e613f869dab204a63ca426b433eb82b9fbeea13c331b12de387c1c5339df8224"
BUNDLED_TRAIN_PER_CLASS = 400
BUNDLED_TEST_PER_CLASS = 100

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_UBYTE = 0x08

# where tensorflow-datasets 4.9 downloads each dataset from (probed before download=True)
DOWNLOAD_HOSTS = {
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
}
NETWORK_TIMEOUT_S = 2.0

Log = Callable[[str], object]


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of host arrays.

    ``train_images``/``test_images``: uint8 ``(N, 28, 28, 1)``, values 0..255;
    ``train_labels``/``test_labels``: int64 ``(N,)``, values 0..9.
    """

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    description: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            _check_image_array(images, f"{split}_images")
            _check_label_array(labels, f"{split}_labels", len(images))


# --------------------------------------------------------------------------- argument checks


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(map(repr, choices))}")
    return value


def class_names(dataset: str | Dataset) -> tuple[str, ...]:
    """The names of the ten classes, indexed by label: ``("0", ..., "9")`` for MNIST, ``("T-shirt/top", ...,
    "Ankle boot")`` for Fashion-MNIST. ``dataset``: a name in :data:`NAMES` or a :class:`Dataset`."""
    name = dataset.name if isinstance(dataset, Dataset) else dataset
    return CLASS_NAMES[_check_choice(name, "dataset", NAMES)]


def _check_image_array(images: Any, name: str) -> None:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name} must be uint8 (N, 28, 28, 1), got {images.dtype} {images.shape}")


def _check_label_array(labels: Any, name: str, n: int) -> None:
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(labels).__name__}")
    if labels.dtype != np.int64 or labels.shape != (n,):
        raise ValueError(f"{name} must be int64 ({n},), got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{name} must lie in 0..9, got {labels.min()}..{labels.max()}")


def _as_dir(data_dir: Any) -> Path | None:
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a path (str or os.PathLike) or None, got {type(data_dir).__name__}")
    return Path(data_dir).expanduser()


# --------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``; ValueError naming the file if corrupt."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({type(exc).__name__}: {exc})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one unsigned-byte IDX file (``.gz`` is gunzipped) and validate it.

    Returns uint8 ``(N,)`` for a labels file (magic ``0x00000801``) or ``(N, 28, 28)`` for an
    images file (magic ``0x00000803``). Any inconsistency (magic, type code, dimensions, payload
    shorter or longer than the header says, corrupt gzip) is a ValueError naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header (4 bytes of magic)")
    magic = int.from_bytes(data[:4], "big")
    if data[:2] != b"\0\0":
        hint = " (it looks gzip-compressed: name it *.gz)" if data[:2] == b"\x1f\x8b" else ""
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x{IDX_IMAGES_MAGIC:08x} (images) "
            f"or 0x{IDX_LABELS_MAGIC:08x} (labels){hint}"
        )
    if data[2] != IDX_UBYTE:
        raise ValueError(f"{path}: IDX type code 0x{data[2]:02x}; expected 0x{IDX_UBYTE:02x} (unsigned byte)")
    ndim = data[3]
    if ndim not in (1, 3):
        raise ValueError(f"{path}: IDX file has {ndim} dimensions; expected 1 (labels) or 3 (images)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if ndim == 3 and dims[1:] != IMAGE_SHAPE[:2]:
        raise ValueError(f"{path}: images are {dims[1]}x{dims[2]}; expected 28x28")
    expected, actual = math.prod(dims), len(data) - header
    if actual < expected:
        raise ValueError(f"{path}: truncated: header {dims} promises {expected} data bytes, file has {actual}")
    if actual > expected:
        raise ValueError(f"{path}: {actual - expected} extra bytes after the {expected} the header {dims} promises")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def _idx_path(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds all four MNIST-layout IDX files (plain or ``.gz``)."""
    directory = Path(directory)
    return directory.is_dir() and all(_idx_path(directory, base) for base in IDX_FILES.values())


def _idx_paths(directory: Path) -> dict[str, Path]:
    """The four IDX files in ``directory``; FileNotFoundError naming each expected file once otherwise."""
    expected = ", ".join(f"{base}[.gz]" for base in IDX_FILES.values())
    if not directory.is_dir():
        raise FileNotFoundError(f"IDX directory {directory} does not exist; it should hold {expected}")
    paths = {key: _idx_path(directory, base) for key, base in IDX_FILES.items()}
    missing = [f"{IDX_FILES[key]}[.gz]" for key, p in paths.items() if p is None]
    if len(missing) == len(IDX_FILES):
        raise FileNotFoundError(f"IDX directory {directory} holds none of the four IDX files {expected}")
    if missing:
        present = ", ".join(p.name for p in paths.values() if p is not None)
        raise FileNotFoundError(f"IDX directory {directory} lacks {', '.join(missing)} (it holds {present})")
    return paths  # type: ignore[return-value]


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: holds labels (1-D), expected images (magic 0x{IDX_IMAGES_MAGIC:08x})")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: holds images (3-D), expected labels (magic 0x{IDX_LABELS_MAGIC:08x})")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; they must match"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {labels.max()} out of range; expected 0..9")
    return images[..., None], labels.astype(np.int64)


def _load_idx(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    paths = _idx_paths(directory)
    train = _read_split(paths["train_images"], paths["train_labels"])
    test = _read_split(paths["test_images"], paths["test_labels"])
    return (*train, *test, f"the IDX files in {directory}")


def _idx_dir_for(name: str, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    if name == "fashion_mnist":
        if not DEBIAN_FASHION_DIR.is_dir():
            raise FileNotFoundError(
                f"source='idx' without data_dir looks in {DEBIAN_FASHION_DIR} (Debian package "
                "dataset-fashion-mnist), which does not exist: apt-get install dataset-fashion-mnist "
                "or pass data_dir"
            )
        return DEBIAN_FASHION_DIR
    raise ValueError(f"source='idx' needs data_dir for {name!r}: a directory with {', '.join(IDX_FILES.values())}")


# --------------------------------------------------------------------------- bundled digits


def _bundled_bytes() -> bytes:
    resource = importlib.resources.files("arraycnn") / "_data" / BUNDLED_FILE
    try:
        blob = resource.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"the bundled digits arraycnn/_data/{BUNDLED_FILE} are missing") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != BUNDLED_SHA256:
        raise ValueError(f"arraycnn/_data/{BUNDLED_FILE} is corrupt: SHA-256 {digest}, expected {BUNDLED_SHA256}")
    return blob


def load_bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 bundled digits, checksum-verified: uint8 ``(5000, 28, 28)``, int64 ``(5000,)``, label-sorted."""
    with np.load(io.BytesIO(_bundled_bytes()), allow_pickle=False) as npz:
        return npz["images"], npz["labels"].astype(np.int64)


def _load_bundled(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    images, labels = load_bundled_digits()
    rng = np.random.default_rng([seed, 0])
    train = stratified_indices(labels, BUNDLED_TRAIN_PER_CLASS * NUM_CLASSES, rng)
    test = rng.permutation(np.setdiff1d(np.arange(len(labels)), train))
    origin = f"the 5,000 bundled MNIST digits (stratified 4000/1000 split, seed {seed})"
    return images[train, ..., None], labels[train], images[test, ..., None], labels[test], origin


# --------------------------------------------------------------------------- tensorflow-datasets


def _import_tfds() -> ModuleType:
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise ImportError(f"source='tfds' needs tensorflow-datasets: pip install 'arraycnn[data]' ({exc})") from exc
    return tfds


def _reachable(host: str, port: int, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to ``host:port`` within ``timeout`` seconds (DNS included)?"""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores timeouts
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def _download_reachable(name: str) -> bool:
    """Is the host tensorflow-datasets downloads ``name`` from reachable (decided in ~2 s)?"""
    return _reachable(*DOWNLOAD_HOSTS[name])


def _tfds_prepared(tfds: ModuleType, name: str, data_dir: Path | None) -> tuple[bool, str]:
    """(is ``name`` already prepared locally, the tfds directory that was checked).

    tfds logs a warning through absl when the folder it probes is empty; the caller reports the outcome
    in one line instead, so that warning is muted for the probe.
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        return bool(builder.is_prepared()), str(builder.data_dir)
    finally:
        absl_logger.setLevel(level)


def _load_tfds(
    tfds: ModuleType, name: str, data_dir: Path | None, download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    train, test = tfds.load(
        name,
        split=["train", "test"],
        as_supervised=True,
        batch_size=-1,
        data_dir=None if data_dir is None else str(data_dir),
        download=download,
    )
    train_images, train_labels = tfds.as_numpy(train)
    test_images, test_labels = tfds.as_numpy(test)
    arrays = [np.asarray(a) for a in (train_images, train_labels, test_images, test_labels)]
    arrays[1], arrays[3] = arrays[1].astype(np.int64), arrays[3].astype(np.int64)
    return (*arrays, "tensorflow-datasets" + (" (downloaded)" if download else ""))


def _tfds_explicit(name: str, data_dir: Path | None, log: Log) -> tuple:
    tfds = _import_tfds()
    prepared, where = _tfds_prepared(tfds, name, data_dir)
    if not prepared:
        host, port = DOWNLOAD_HOSTS[name]
        if not _download_reachable(name):
            raise FileNotFoundError(
                f"tensorflow-datasets has no prepared {name} in {where} and {host}:{port} is unreachable "
                "(offline?); use source='idx', source='bundled' (mnist) or source='auto'"
            )
        log(f"arraycnn.data: downloading {name} with tensorflow-datasets into {where}")
    return _load_tfds(tfds, name, data_dir, download=not prepared)


# --------------------------------------------------------------------------- choosing a source


def _auto_tfds(name: str, data_dir: Path | None) -> tuple[ModuleType | None, bool, str]:
    """(tfds module or None, download?, why) for the tfds rung of ``source='auto'``."""
    try:
        tfds = _import_tfds()
        prepared, where = _tfds_prepared(tfds, name, data_dir)
    except Exception as exc:  # a missing or broken install must not stop the fallbacks
        return None, False, f"tensorflow-datasets unavailable ({type(exc).__name__}: {exc})"
    if prepared:
        return tfds, False, f"tensorflow-datasets has it prepared in {where}"
    host, port = DOWNLOAD_HOSTS[name]
    if _download_reachable(name):
        return tfds, True, f"not prepared in {where} but {host}:{port} is reachable, so tfds downloads it"
    return None, False, f"tensorflow-datasets has nothing prepared in {where} and {host} is unreachable"


def _load_auto(name: str, data_dir: Path | None, seed: int, log: Log) -> tuple:
    if data_dir is not None and has_idx_files(data_dir):
        log(f"arraycnn.data: source 'idx' for {name}: data_dir {data_dir} holds the four IDX files")
        return ("idx", *_load_idx(data_dir))
    tfds, download, why = _auto_tfds(name, data_dir)
    if tfds is not None:
        log(f"arraycnn.data: source 'tfds' for {name}: {why}")
        return ("tfds", *_load_tfds(tfds, name, data_dir, download))
    if name == "fashion_mnist" and has_idx_files(DEBIAN_FASHION_DIR):
        log(f"arraycnn.data: source 'idx' for {name}: {why}; using {DEBIAN_FASHION_DIR}")
        return ("idx", *_load_idx(DEBIAN_FASHION_DIR))
    if name == "mnist":
        log(f"arraycnn.data: source 'bundled' for mnist (5,000 embedded digits): {why}")
        return ("bundled", *_load_bundled(seed))
    raise FileNotFoundError(
        f"no source for {name}: {why}, data_dir has no IDX files and {DEBIAN_FASHION_DIR} is absent; "
        "go online, pass data_dir=<IDX directory>, or apt-get install dataset-fashion-mnist"
    )


# --------------------------------------------------------------------------- subsets


def _class_quotas(counts: np.ndarray, k: int) -> np.ndarray:
    """Largest-remainder split of ``k`` over classes proportional to ``counts`` (exact integers)."""
    n = int(counts.sum())
    quota, remainder = np.divmod(counts * k, n)
    short = k - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:short]] += 1
    return quota


def stratified_indices(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a seeded stratified subset of size ``k``, in shuffled order: int64 ``(k,)``.

    Each class gets ``k * count / N`` examples (largest-remainder rounding, ties to the smaller
    label); which ones, and their order, come from ``rng``.
    """
    n = len(labels)
    k = check_int(k, "k", 0)
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} labels available")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, random within
    class_of = np.searchsorted(classes, labels[order])
    rank = np.arange(n) - np.concatenate([[0], np.cumsum(counts)[:-1]])[class_of]
    chosen = order[rank < _class_quotas(counts, k)[class_of]]
    return rng.permutation(chosen)


def _subset(images: np.ndarray, labels: np.ndarray, size: int | None, arg: str, seed: int, stream: int):
    if size is None:
        return images, labels
    if size > len(labels):
        raise ValueError(f"{arg}={size} is larger than the {len(labels)} examples available")
    idx = stratified_indices(labels, size, np.random.default_rng([seed, stream]))
    return images[idx], labels[idx]


# --------------------------------------------------------------------------- the entry point


def load_dataset(
    name: str = "mnist",
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    log: Log | None = print,
) -> Dataset:
    """Load MNIST or Fashion-MNIST as host arrays (see the module docstring for the sources).

    ``data_dir``: the tfds data directory (``"tfds"``) or the IDX directory (``"idx"``); ``"auto"``
    uses it as either. ``train_size``/``test_size``: a seeded *stratified* subset of that many
    examples (class proportions kept, largest-remainder rounding). ``seed`` also drives the
    bundled 4000/1000 split. ``log`` receives one line saying which source ``"auto"`` chose and why.

    Returns a :class:`Dataset`: images uint8 ``(N, 28, 28, 1)``, labels int64 ``(N,)``.
    """
    _check_choice(name, "name", NAMES)
    _check_choice(source, "source", SOURCES)
    seed = check_int(seed, "seed", 0)
    train_size = None if train_size is None else check_int(train_size, "train_size", 1)
    test_size = None if test_size is None else check_int(test_size, "test_size", 1)
    directory = _as_dir(data_dir)
    log = log or (lambda line: None)
    if source == "bundled" and name != "mnist":
        raise ValueError(f"source='bundled' holds mnist only, not {name!r}; use source 'tfds', 'idx' or 'auto'")
    if source == "auto":
        source, *arrays = _load_auto(name, directory, seed, log)
    elif source == "tfds":
        arrays = list(_tfds_explicit(name, directory, log))
    elif source == "idx":
        arrays = list(_load_idx(_idx_dir_for(name, directory)))
    else:
        arrays = list(_load_bundled(seed))
    return _make_dataset(name, source, arrays, train_size, test_size, seed)


def _make_dataset(name: str, source: str, arrays: list, train_size, test_size, seed: int) -> Dataset:
    train_images, train_labels, test_images, test_labels, origin = arrays
    full = (len(train_labels), len(test_labels))
    train_images, train_labels = _subset(train_images, train_labels, train_size, "train_size", seed, 1)
    test_images, test_labels = _subset(test_images, test_labels, test_size, "test_size", seed, 2)
    sizes = f"{len(train_labels)} train + {len(test_labels)} test images, 28x28x1 uint8"
    if train_size is not None or test_size is not None:
        sizes += f" (stratified subsets of {full[0]}/{full[1]}, seed {seed})"
    return Dataset(
        name=name,
        source=source,
        train_images=np.ascontiguousarray(train_images),
        train_labels=np.ascontiguousarray(train_labels),
        test_images=np.ascontiguousarray(test_images),
        test_labels=np.ascontiguousarray(test_labels),
        description=f"{name} from {origin}: {sizes}",
    )


# --------------------------------------------------------------------------- batching and augmentation


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`epoch_batches` yields for ``n`` examples."""
    n = check_int(n, "n", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    return n // batch_size if drop_last else -(-n // batch_size)


def _shift_images(images: np.ndarray, shifts: np.ndarray, max_shift: int) -> np.ndarray:
    """Image ``i`` moved down ``shifts[i, 0]`` and right ``shifts[i, 1]`` pixels, zero fill (one gather)."""
    n, h, w = images.shape[:3]
    pad = [(0, 0), (max_shift, max_shift), (max_shift, max_shift)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad)
    rows = np.arange(h) + max_shift - shifts[:, :1]  # (N, H): source row of each output row
    cols = np.arange(w) + max_shift - shifts[:, 1:]  # (N, W)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by its own integer ``(dy, dx)`` in ``[-max_shift, max_shift]``, zero fill.

    ``images``: ``(N, H, W)`` or ``(N, H, W, C)`` of any dtype (uint8 in, uint8 out); vectorised.
    """
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        raise ValueError(f"images must be a NumPy array (N, H, W[, C]), got {_describe(images)}")
    max_shift = check_int(max_shift, "max_shift", 0)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    return _shift_images(images, shifts, max_shift)


def _describe(x: Any) -> str:
    return f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__


def epoch_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The batches of one epoch: ``(images (B, 28, 28, 1) uint8, labels (B,) int64)`` host pairs.

    The order (a permutation when ``shuffle``) and, with ``augment``, one random shift of up to
    ``AUGMENT_MAX_SHIFT`` pixels per example come from ``np.random.default_rng([seed, epoch])``,
    so epoch ``e`` is the same whether or not the epochs before it were run. Arguments are
    checked at the call, not at the first ``next``.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ValueError(f"images must be a NumPy array (N, H, W, C), got {_describe(images)}")
    if not isinstance(labels, np.ndarray) or labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be a NumPy array ({len(images)},) to match images, got {_describe(labels)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    count = num_batches(len(images), batch_size, drop_last)
    seed, epoch = check_int(seed, "seed", 0), check_int(epoch, "epoch", 0)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(images)) if shuffle else np.arange(len(images))
    shifts = rng.integers(-AUGMENT_MAX_SHIFT, AUGMENT_MAX_SHIFT + 1, size=(len(images), 2)) if augment else None
    return _batches(images, labels, order, shifts, batch_size, count)


def _batches(images, labels, order, shifts, batch_size: int, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for b in range(count):
        window = slice(b * batch_size, (b + 1) * batch_size)
        idx = order[window]
        batch = images[idx]
        if shifts is not None:
            batch = _shift_images(batch, shifts[window], AUGMENT_MAX_SHIFT)
        yield batch, labels[idx].astype(np.int64, copy=False)


# --------------------------------------------------------------------------- crossing to a backend


def _check_namespace(xp: Any) -> None:
    if not isinstance(xp, ModuleType) or not hasattr(xp, "asarray"):
        raise TypeError(f"xp must be an Array API namespace (arraycnn.backend.get_namespace(...)), got {xp!r}")


def to_float_images(
    batch_uint8: np.ndarray, xp: ModuleType, dtype: str | Any = "float32", device: Any = None
) -> Array:
    """Host uint8 images (any shape, e.g. ``(B, 28, 28, 1)``) -> ``xp`` floats in ``[0, 1]`` on ``device``.

    One host-to-device transfer of the uint8 data (4x smaller than floats); cast and ``/ 255`` run
    on the device.
    """
    if not isinstance(batch_uint8, np.ndarray) or batch_uint8.dtype != np.uint8:
        raise TypeError(f"batch_uint8 must be a uint8 NumPy array (0..255), got {_describe(batch_uint8)}")
    _check_namespace(xp)
    float_dtype = resolve_dtype(xp, dtype)
    return xp.astype(to_device(batch_uint8, xp, device=device), float_dtype) / 255.0


def to_labels(labels: np.ndarray, xp: ModuleType, device: Any = None) -> Array:
    """Host integer labels ``(B,)`` -> an ``xp.int64`` array ``(B,)`` on ``device`` (one transfer)."""
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D NumPy array (B,), got {_describe(labels)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    _check_namespace(xp)
    return to_device(labels.astype(np.int64, copy=False), xp, device=device)
