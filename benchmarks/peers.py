"""The tutorial's network behind one small interface, in arraycnn and in its peers (PyTorch, TensorFlow/Keras).

Every engine builds the same network (channels-last input ``(B, 28, 28, 1)`` in ``[0, 1]``)::

    Conv 10@3x3 valid -> ReLU -> MaxPool 3x3 stride 1 -> Conv 10@3x3 -> ReLU -> MaxPool 3x3 stride 1
    -> Flatten (4000) -> Dense 50 -> ReLU -> Dense 10, softmax cross-entropy, Adam lr 1e-3, float32

and is driven through an :class:`Engine`: ``batch(images_uint8, labels)`` converts a host batch
(uint8 ``(B, 28, 28, 1)``, int64 ``(B,)``) into the engine's own inputs, ``train_step(batch)`` runs one
forward-backward-update and returns the loss as the engine's 0-d value (not read back, so timings never
wait on a transfer; ``float(loss)`` reads it), ``predict(batch)`` returns host logits ``(B, 10)``.

Each engine keeps its framework's own parameter initialisation (arraycnn: He; PyTorch: Kaiming-uniform;
Keras: Glorot-uniform) seeded by ``seed``; Adam uses eps = 1e-7 everywhere (Keras's and arraycnn's
default; PyTorch's default 1e-8 is overridden to match). PyTorch and TensorFlow are imported only when
one of their engines is built; ``threads`` pins their own pools (BLAS and OpenMP are pinned beforehand
by :func:`benchmarks.common.pin_threads`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import blas_threads

LR = 1e-3
ADAM_EPS = 1e-7
NUM_CLASSES = 10
FLAT = 20 * 20 * 10  # 28 -> 26 (conv) -> 24 (pool) -> 22 (conv) -> 20 (pool), 10 channels

Batch = Any  # an engine's own inputs, as returned by Engine.batch


def _no_sync() -> None:
    """CPU engines run synchronously: nothing to wait for."""


@dataclass
class Engine:
    """One implementation of the tutorial's network, ready to train and predict."""

    name: str
    version: str
    batch: Callable[[np.ndarray, np.ndarray], Batch]
    train_step: Callable[[Batch], Any]
    predict: Callable[[Batch], np.ndarray]
    sync: Callable[[], None] = _no_sync  # waits for queued device work (GPU)
    threads: str = ""  # what the engine's own thread pools were set to


# -- arraycnn --------------------------------------------------------------------------------------------
def arraycnn_engine(
    seed: int = 0, threads: int | None = None, backend: str = "numpy", dtype: str = "float32"
) -> Engine:
    """arraycnn's ``tutorial_cnn`` on ``backend`` with its own Adam (lr 1e-3, eps 1e-7), stepped as ``fit``
    steps it: through the model's execution (on NumPy, 32-row chunks over a few threads), not the plain
    ``Sequential.train_step`` of the lesson.

    ``threads`` is accepted for the common signature: arraycnn's batch-split workers (``ARRAYCNN_THREADS``)
    and NumPy's BLAS are pinned by :func:`benchmarks.common.pin_threads`.
    """
    import arraycnn
    from arraycnn import models, optim
    from arraycnn.backend import to_numpy

    model = models.tutorial_cnn(backend=backend, dtype=dtype, seed=seed)
    opt = optim.Adam(lr=LR, eps=ADAM_EPS)

    def batch(images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
        return model.to_device_inputs(images), model.to_device_targets(labels)

    def train_step(b: tuple[Any, Any]) -> Any:
        return model.execution.train_step(model, b[0], b[1], opt)[0]

    def predict(b: tuple[Any, Any]) -> np.ndarray:
        return to_numpy(model.predict(b[0]))

    workers = os.environ.get("ARRAYCNN_THREADS", "unset")
    return Engine(f"arraycnn ({backend})", arraycnn.__version__, batch, train_step, predict,
                  sync=device_sync(backend),
                  threads=f"ARRAYCNN_THREADS={workers}, {model.execution!r}, NumPy BLAS: {blas_threads()}")


def device_sync(backend: str) -> Callable[[], None]:
    """What waits for ``backend``'s queued device work: CuPy's device synchronisation, else nothing."""
    if backend != "cupy":
        return _no_sync
    import cupy

    return lambda: cupy.cuda.Device().synchronize()


# -- PyTorch ---------------------------------------------------------------------------------------------
def torch_engine(
    seed: int = 0, channels_last: bool = False, threads: int | None = None, device: str = "cpu"
) -> Engine:
    """PyTorch, NCHW or channels_last memory format, on ``device`` ("cpu" or "cuda")."""
    import torch
    from torch import nn

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = nn.Sequential(
        nn.Conv2d(1, 10, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1),
        nn.Conv2d(10, 10, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1),
        nn.Flatten(), nn.Linear(FLAT, 50), nn.ReLU(), nn.Linear(50, NUM_CLASSES),
    ).to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=LR, eps=ADAM_EPS)
    loss_fn = nn.CrossEntropyLoss()

    def batch(images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(memory_format=fmt), torch.from_numpy(labels).to(device)

    def train_step(b: tuple[Any, Any]) -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(b[0]), b[1])
        loss.backward()
        opt.step()
        return loss.detach()

    def predict(b: tuple[Any, Any]) -> np.ndarray:
        with torch.inference_mode():
            return model(b[0]).cpu().numpy()

    layout = "channels_last" if channels_last else "NCHW"
    sync = torch.cuda.synchronize if device.startswith("cuda") else _no_sync
    return Engine(f"PyTorch {layout} ({device})", torch.__version__, batch, train_step, predict, sync=sync,
                  threads=f"torch intra-op {torch.get_num_threads()}")


# -- TensorFlow / Keras ----------------------------------------------------------------------------------
def _pin_tf_threads(tf: Any, threads: int | None) -> str:
    """Pin TF's pools once (they cannot change after TF's runtime starts); say what they are."""
    config = tf.config.threading
    if threads is not None and config.get_intra_op_parallelism_threads() != threads:
        config.set_intra_op_parallelism_threads(threads)
        config.set_inter_op_parallelism_threads(threads)
    return (f"tf intra-op {config.get_intra_op_parallelism_threads()}, "
            f"inter-op {config.get_inter_op_parallelism_threads()}")


def keras_engine(seed: int = 0, graph: bool = True, threads: int | None = None) -> Engine:
    """Keras 3 on TensorFlow (CPU): a custom train step, in graph mode (``tf.function``) or eager."""
    import tensorflow as tf

    pools = _pin_tf_threads(tf, threads)
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(10, 3), layers.ReLU(), layers.MaxPooling2D(3, strides=1),
        layers.Conv2D(10, 3), layers.ReLU(), layers.MaxPooling2D(3, strides=1),
        layers.Flatten(), layers.Dense(50), layers.ReLU(), layers.Dense(NUM_CLASSES),
    ])
    opt = keras.optimizers.Adam(learning_rate=LR, epsilon=ADAM_EPS)
    opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def forward(x: Any) -> Any:
        return model(x, training=False)

    # Graph mode: one trace for every batch size (the epoch's last batch is smaller); no autograph, as there
    # is no Python control flow to convert (and autograph re-reads the source file at trace time).
    if graph:
        images = tf.TensorSpec((None, 28, 28, 1), tf.float32)
        step = tf.function(step, input_signature=[images, tf.TensorSpec((None,), tf.int64)], autograph=False)
        forward = tf.function(forward, input_signature=[images], autograph=False)

    def batch(images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
        return tf.cast(tf.constant(images), tf.float32) / 255.0, tf.constant(labels)

    def train_step(b: tuple[Any, Any]) -> Any:
        return step(b[0], b[1])

    def predict(b: tuple[Any, Any]) -> np.ndarray:
        return forward(b[0]).numpy()

    mode = "graph (tf.function)" if graph else "eager"
    return Engine(f"TensorFlow {mode}", f"{tf.__version__} (keras {keras.__version__})", batch, train_step,
                  predict, threads=pools)


# -- the registry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """How to build one engine, and which module it needs."""

    build: Callable[..., Engine]
    needs: str
    options: dict[str, Any] = field(default_factory=dict)

    def available(self) -> bool:
        return importlib.util.find_spec(self.needs) is not None

    def make(self, seed: int = 0, threads: int | None = None) -> Engine:
        return self.build(seed=seed, threads=threads, **self.options)


ENGINES: dict[str, Spec] = {
    "arraycnn": Spec(arraycnn_engine, "arraycnn"),
    "torch-nchw": Spec(torch_engine, "torch"),
    "torch-cl": Spec(torch_engine, "torch", {"channels_last": True}),
    "tf-graph": Spec(keras_engine, "tensorflow", {"graph": True}),
    "tf-eager": Spec(keras_engine, "tensorflow", {"graph": False}),
}


def available_engines(names: list[str] | None = None) -> list[str]:
    """The engines among ``names`` (default: all) whose framework is installed; unknown names are an error."""
    names = list(ENGINES) if names is None else names
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engines {unknown}: expected some of {list(ENGINES)}")
    return [n for n in names if ENGINES[n].available()]


def synthetic_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded noise images uint8 ``(n, 28, 28, 1)`` and labels int64 ``(n,)`` (timings only)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n, dtype=np.int64)


@dataclass(frozen=True)
class BenchData:
    """Host data for the benchmarks: uint8 images ``(N, 28, 28, 1)`` and int64 labels ``(N,)``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    description: str


def load_data(data_dir: str | None = None, synthetic: bool = False) -> BenchData:
    """Fashion-MNIST from its IDX files (``arraycnn.data``), or seeded noise of its shape when asked or missing."""
    if not synthetic:
        from arraycnn import data

        try:
            ds = data.load_dataset("fashion_mnist", source="idx", data_dir=data_dir, log=None)
        except (FileNotFoundError, ValueError) as exc:
            print(f"Fashion-MNIST not loaded ({exc}); using synthetic data instead")
        else:
            return BenchData(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels, ds.description)
    return BenchData(*synthetic_data(60_000, seed=1), *synthetic_data(10_000, seed=2),
                     "synthetic noise images of Fashion-MNIST's shape (60k train, 10k test)")


def accuracy(engine: Engine, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Fraction of ``images`` (host uint8 ``(N, 28, 28, 1)``) whose argmax logit is the label."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        window = slice(start, start + batch_size)
        logits = engine.predict(engine.batch(images[window], labels[window]))
        correct += int(np.sum(np.argmax(logits, axis=1) == labels[window]))
    return correct / len(labels)
