"""``Sequential``: a stack of layers with one training step, prediction, evaluation and checkpoints.

One training step, as data (see ``docs`` and ``ARCHITECTURE.md``)::

    logits = model.forward(x)                              # x (B, 28, 28, 1) on the device
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    model.backward(softmax_cross_entropy_backward(cache))  # dlogits = (p - y) / B
    optimizer.step(model.parameters(), model.gradients())  # in place, on the device

Nothing in :meth:`Sequential.train_step` leaves the device: the loss comes back as a 0-d device array
and is read on the host only when it is logged.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import operator
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from . import data
from .backend import (
    Array,
    backend_name,
    blas_threads,
    cache_chunk_rows,
    data_parallel_workers,
    to_device,
    to_numpy,
)
from .checkpoint import read_npz, write_npz
from .functional import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .layers import Layer

PARAM_PREFIX = "param/"
MIN_SHARD = 16  # rows: below this a shard costs more in per-op overhead than its thread gains

__all__ = ["Checkpoint", "Sequential"]


@dataclass(frozen=True)
class Checkpoint:
    """What :meth:`Sequential.load` read besides the parameters: the other arrays and the metadata."""

    path: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def _dtype_name(xp: Any, dtype: Any) -> str:
    for name in ("float32", "float64"):
        if dtype == getattr(xp, name):
            return name
    raise TypeError(f"parameters must be float32 or float64, got {dtype}")


def _forward(layers: Sequence[Layer], x: Array, train: bool) -> Array:
    for layer in layers:
        x = layer.forward(x, train=train)
    return x


def _chunks(n: int, rows: int | None) -> list[slice]:
    """``[0, n)`` in consecutive slices of at most ``rows`` rows (one slice when ``rows`` is None)."""
    step = n if rows is None else max(1, rows)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]


def _forward_in_chunks(layers: Sequence[Layer], x: Array, rows: int | None) -> Array:
    parts = [_forward(layers, x[s, ...], train=False) for s in _chunks(x.shape[0], rows)]
    return parts[0] if len(parts) == 1 else array_api_compat.array_namespace(x).concat(parts, axis=0)


def _backward(layers: Sequence[Layer], grad: Array, input_grad: bool) -> Array | None:
    for i in reversed(range(len(layers))):
        grad = layers[i].backward(grad, input_grad=input_grad or i > 0)
    return grad


def _loss_and_gradients(
    layers: Sequence[Layer], x: Array, labels: Array, share: float, rows: int | None
) -> tuple[Array, Array]:
    """Forward, fused softmax cross-entropy and backward of one (shard of a) batch, ``rows`` at a time.

    ``share`` is the shard's fraction of the batch: each chunk's loss and loss gradient are scaled by its
    own fraction, so chunk and shard gradients add up to the whole batch's (left in ``layer.grads``).
    Returns ``(share * mean loss, number correct)``, 0-d on the device.
    """
    n, total, grads = x.shape[0], None, None
    for s in _chunks(n, rows):
        part_share = share * (s.stop - s.start) / n
        logits = _forward(layers, x[s, ...], train=True)
        loss, cache = softmax_cross_entropy_forward(logits, labels[s], check_targets=False)
        _backward(layers, softmax_cross_entropy_backward(cache, part_share), input_grad=False)
        xp = array_api_compat.array_namespace(logits)
        part = (loss * part_share, xp.sum(xp.astype(xp.argmax(logits, axis=1) == labels[s], xp.int64)))
        if grads is None:
            total, grads = part, [layer.grads for layer in layers]
            continue
        total = (total[0] + part[0], total[1] + part[1])
        for acc, layer in zip(grads, layers, strict=True):
            for name, g in layer.grads.items():
                acc[name] += g   # acc holds the first chunk's freshly computed arrays: safe to add into
    for layer, acc in zip(layers, grads, strict=True):
        layer.grads = acc
    return total


class Sequential:
    """Layers applied in order: ``x (N, ...) -> logits (N, K)``.

    ``xp`` (the Array API namespace) and ``dtype`` are taken from the layers' parameters, which must all
    share one backend and one floating dtype.
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError(f"layers must be a non-empty sequence of arraycnn.layers.Layer, got {layers!r}")
        self.layers = layers
        params = [p for _, p in self.named_parameters()]
        if not params:
            raise ValueError("layers must hold at least one parameter (the backend and dtype come from them)")
        try:
            self.xp = array_api_compat.array_namespace(*params)
        except TypeError:
            raise TypeError("the layers' parameters come from different backends") from None
        dtypes = {str(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"the layers' parameters must share one dtype, got {sorted(dtypes)}")
        self.dtype = params[0].dtype
        self.dtype_name = _dtype_name(self.xp, self.dtype)
        self._workers = data_parallel_workers(self.xp)
        self._chunk_rows = cache_chunk_rows(self.xp)
        self._replica_stacks: list[list[Layer]] = []
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)  # {backend_name(self.xp)}, {self.dtype_name}"

    # -- parameters ---------------------------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, Array]]:
        """``[("0.w", w), ("0.b", b), ...]``: ``"<layer index>.<name>"``, in layer order."""
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.params.items()]

    def parameters(self) -> list[Array]:
        """The parameter arrays, in :meth:`named_parameters` order."""
        return [p for _, p in self.named_parameters()]

    def gradients(self) -> list[Array | None]:
        """The gradients of the last :meth:`backward`, aligned with :meth:`parameters` (None before any)."""
        return [layer.grads.get(name) for layer in self.layers for name in layer.params]

    def num_parameters(self) -> int:
        """The total number of scalar parameters."""
        return sum(math.prod(p.shape) for p in self.parameters())

    def architecture(self) -> list[dict[str, Any]]:
        """Each layer's :meth:`~arraycnn.layers.Layer.config`: what a checkpoint must match to be loaded."""
        return [layer.config() for layer in self.layers]

    # -- passes ---------------------------------------------------------------------------------------------
    def forward(self, x: Array, train: bool = True) -> Array:
        """``x (N, ...) -> logits (N, K)``; ``train=True`` keeps each layer's cache for :meth:`backward`."""
        return _forward(self.layers, x, train)

    def backward(self, dlogits: Array, input_grad: bool = True) -> Array | None:
        """Walk the layers in reverse from ``dlogits = dL/dlogits (N, K)``; returns ``dL/dx``.

        ``input_grad=False`` (what :meth:`train_step` uses) returns None and lets the first layer skip ``dx``.
        """
        return _backward(self.layers, dlogits, input_grad)

    def train_step_stats(self, x: Array, labels: Array, optimizer: Any) -> tuple[Array, Array]:
        """One step on a device batch; returns ``(mean loss, number of correct predictions)``, both 0-d on device.

        ``x (B, ...)`` in the model's dtype, ``labels (B,)`` integer class ids already validated on the host
        (the loss does not check them again, which would read back from the device).

        On NumPy the batch is split into shards run by a small thread pool
        (:func:`arraycnn.backend.data_parallel_workers`), each shard's loss gradient scaled by its share
        of the batch, so the summed parameter gradients are those of the whole batch.
        """
        shards = self._shards(x.shape[0])
        if len(shards) == 1:
            loss, correct = _loss_and_gradients(self.layers, x, labels, 1.0, self._chunk_rows)
        else:
            replicas = self._replicas(len(shards))

            def run(layers: list[Layer], s: slice) -> tuple[Array, Array]:
                return _loss_and_gradients(layers, x[s, ...], labels[s], (s.stop - s.start) / x.shape[0],
                                           self._chunk_rows)

            with blas_threads(1):
                parts = list(self._pool.map(run, replicas, shards))
            loss = functools.reduce(operator.add, [p[0] for p in parts])
            correct = functools.reduce(operator.add, [p[1] for p in parts])
            for i, layer in enumerate(self.layers):   # replica 0 is self.layers: add the others' gradients
                layer.grads = {name: functools.reduce(operator.add, [r[i].grads[name] for r in replicas])
                               for name in layer.grads}
        optimizer.step(self.parameters(), self.gradients())
        return loss, correct

    def _shards(self, n: int) -> list[slice]:
        """Contiguous batch slices, one per worker, each at least ``MIN_SHARD`` rows."""
        count = max(1, min(self._workers, n // MIN_SHARD))
        bounds = [n * i // count for i in range(count + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]

    def _replicas(self, count: int) -> list[list[Layer]]:
        """``count`` layer stacks sharing the parameters (shallow copies keep their own caches and grads)."""
        while len(self._replica_stacks) < count - 1:
            self._replica_stacks.append([copy.copy(layer) for layer in self.layers])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="arraycnn")
        return [self.layers, *self._replica_stacks[:count - 1]]

    def train_step(self, x: Array, labels: Array, optimizer: Any) -> Array:
        """One step (forward, fused softmax cross-entropy, backward, ``optimizer.step``) -> mean loss (0-d, device)."""
        return self.train_step_stats(x, labels, optimizer)[0]

    def predict(self, x: Array, batch_size: int | None = None) -> Array:
        """``logits (N, K)`` for device images ``x (N, ...)``, in chunks of ``batch_size`` when given (no cache)."""
        if batch_size is None:
            return self._predict_batch(x)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        chunks = [self._predict_batch(x[i:i + batch_size, ...]) for i in range(0, x.shape[0], batch_size)]
        return self.xp.concat(chunks, axis=0)

    def _predict_batch(self, x: Array) -> Array:
        """Logits of one batch: a shard per worker, each forwarded in chunks of
        :func:`arraycnn.backend.cache_chunk_rows` rows, so no layer's unrolled patches outgrow the cache."""
        shards = self._shards(x.shape[0])
        if len(shards) == 1:
            return _forward_in_chunks(self.layers, x, self._chunk_rows)
        replicas = self._replicas(len(shards))
        with blas_threads(1):
            parts = list(self._pool.map(lambda layers, s: _forward_in_chunks(layers, x[s, ...], self._chunk_rows),
                                        replicas, shards))
        return self.xp.concat(parts, axis=0)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
        """``(mean loss, accuracy)`` on host uint8 images ``(N, 28, 28, 1)`` and int labels ``(N,)``.

        Each batch crosses to the device once (:func:`arraycnn.data.to_float_images`); only its loss sum
        and correct count come back. Labels are checked on the host, never on the device.
        """
        if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray) or len(images) != len(labels):
            raise ValueError("images and labels must be NumPy arrays of the same length (N, ...) and (N,)")
        if len(labels) == 0:
            raise ValueError("images must hold at least one example")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        xp, loss_sum, correct = self.xp, 0.0, 0
        for start in range(0, len(labels), batch_size):
            y = data.to_labels(labels[start:start + batch_size], xp)
            logits = self.predict(data.to_float_images(images[start:start + batch_size], xp, self.dtype))
            if start == 0 and not 0 <= labels.min() <= labels.max() < logits.shape[1]:
                raise ValueError(f"labels must be class ids in [0, {logits.shape[1]}), "
                                 f"got {labels.min()}..{labels.max()}")
            loss, _ = softmax_cross_entropy_forward(logits, y, check_targets=False)
            loss_sum += float(to_numpy(loss)) * y.shape[0]
            correct += int(to_numpy(xp.sum(xp.astype(xp.argmax(logits, axis=1) == y, xp.int64))))
        return loss_sum / len(labels), correct / len(labels)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters under ``"param/<name>"`` keys."""
        return {PARAM_PREFIX + name: np.array(to_numpy(p), copy=True) for name, p in self.named_parameters()}

    def checkpoint_meta(self) -> dict[str, Any]:
        """The metadata every checkpoint of this model records: architecture, dtype and backend."""
        return {"architecture": self.architecture(), "dtype": self.dtype_name, "backend": backend_name(self.xp)}

    def save(
        self, path: str | os.PathLike, extra: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the parameters, ``extra`` host arrays (e.g. ``"optim/..."``) and JSON-able ``meta`` to one ``.npz``.

        Atomic (temporary file, fsync, rename) and pickle-free; see :mod:`arraycnn.checkpoint`.
        """
        extra = dict(extra or {})
        clash = sorted(k for k in extra if k.startswith(PARAM_PREFIX))
        if clash:
            raise ValueError(f"extra must not use the {PARAM_PREFIX!r} keys of the parameters, got {clash}")
        write_npz(path, self.state_arrays() | extra, {**(meta or {}), **self.checkpoint_meta()})

    def load(self, path: str | os.PathLike) -> Checkpoint:
        """Load parameters saved by :meth:`save` (cast to this model's backend and dtype).

        Checks everything before changing anything: a missing file is a FileNotFoundError; a corrupt file,
        another architecture, missing/unexpected parameters or a wrong shape a ValueError naming the file.
        Returns the checkpoint's other arrays and its metadata.
        """
        arrays, meta = read_npz(path)
        self._check_architecture(path, meta.get("architecture"))
        params = {k.removeprefix(PARAM_PREFIX): v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
        expected = dict(self.named_parameters())
        missing, unexpected = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not fit this model's parameters: "
                             f"missing {missing}, unexpected {unexpected}")
        for name, p in expected.items():
            if tuple(params[name].shape) != tuple(p.shape):
                raise ValueError(f"checkpoint {path}: parameter {name} has shape {tuple(params[name].shape)}, "
                                 f"this model needs {tuple(p.shape)}")
            if params[name].dtype.kind != "f":
                raise ValueError(f"checkpoint {path}: parameter {name} has dtype {params[name].dtype}, "
                                 "expected floats")
        for i, layer in enumerate(self.layers):
            for name in layer.params:
                layer.params[name] = to_device(params[f"{i}.{name}"], self.xp, self.dtype)
            layer.grads = {}
        others = {k: v for k, v in arrays.items() if not k.startswith(PARAM_PREFIX)}
        return Checkpoint(os.fspath(path), others, meta)

    def _check_architecture(self, path: Any, saved: Any) -> None:
        mine = self.architecture()
        if saved == mine:
            return
        if not isinstance(saved, list):
            raise ValueError(f"checkpoint {path} records no architecture (got {saved!r})")
        for i, (a, b) in enumerate(zip(saved, mine, strict=False)):
            if a != b:
                raise ValueError(f"checkpoint {path} was saved from a different network: its layer {i} is {a}, "
                                 f"this model's is {b}")
        raise ValueError(f"checkpoint {path} was saved from a network with {len(saved)} layers, "
                         f"this model has {len(mine)}")
