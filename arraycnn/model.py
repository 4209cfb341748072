"""``Sequential``: a stack of layers with one training step, prediction, evaluation and checkpoints.

One training step, as data (see ``docs/backprop.md`` and ``ARCHITECTURE.md``)::

    logits = model.forward(x)                               # x (B, 28, 28, 1) on the device
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    model.backward(softmax_cross_entropy_backward(1.0, cache))  # dlogits = (p - y) / B
    optimizer.step(model.parameters(), model.gradients())   # in place, on the device

:meth:`Sequential.train_step` is exactly these lines. How a step is carried out on a given machine
(row chunks for the CPU caches, threads, ranks) is :mod:`arraycnn.execution`'s business: ``fit`` asks
``model.execution`` to run the step, which does the same math in parts.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from . import data
from ._checks import check_int
from .backend import Array, backend_name, to_device, to_numpy
from .checkpoint import PARAM_PREFIX, STATE_PREFIX, read_npz, write_npz
from .execution import Execution, default_execution, loss_and_count
from .functional import (
    mean_squared_error_backward,
    mean_squared_error_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .layers import Layer

__all__ = ["LOSSES", "Checkpoint", "Loss", "Sequential"]


@dataclass(frozen=True)
class Checkpoint:
    """What :meth:`Sequential.load` read besides the parameters: the other arrays and the metadata."""

    path: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Loss:
    """A loss pair ``forward(out, targets) -> (loss, cache)``, ``backward(dloss, cache) -> dout``; a loss that
    ``classifies`` also counts the rows whose largest output is the target class."""

    name: str
    forward: Callable[[Array, Array], tuple[Array, Any]]
    backward: Callable[[Any, Any], Array]
    classifies: bool

    def correct(self, out: Array, targets: Array) -> Array:
        """The number of rows of ``out (N, K)`` whose argmax is ``targets (N,)`` (0-d, device); 0 if not classifying."""
        xp = array_api_compat.array_namespace(out)
        if not self.classifies:
            return xp.zeros((), dtype=xp.int64, device=array_api_compat.device(out))
        return xp.sum(xp.astype(xp.argmax(out, axis=1) == targets, xp.int64))


LOSSES = {
    # targets were validated on the host by the caller (checking them here would read back from the device)
    "softmax_cross_entropy": Loss("softmax_cross_entropy",
                                  functools.partial(softmax_cross_entropy_forward, check_targets=False),
                                  softmax_cross_entropy_backward, classifies=True),
    "mean_squared_error": Loss("mean_squared_error", mean_squared_error_forward, mean_squared_error_backward,
                               classifies=False),
}


def _dtype_name(xp: Any, dtype: Any) -> str:
    for name in ("float32", "float64"):
        if dtype == getattr(xp, name):
            return name
    raise TypeError(f"parameters must be float32 or float64, got {dtype}")


class Sequential:
    """Layers applied in order: ``x (N, ...) -> out (N, ...)``, trained with one ``loss``.

    ``xp`` (the Array API namespace), ``device`` and ``dtype`` are taken from the layers' parameters, which
    must all share one backend, one device and one floating dtype. ``loss`` is a name in :data:`LOSSES`.
    ``execution`` carries out ``fit``'s steps and :meth:`predict` (default:
    :func:`arraycnn.execution.default_execution` for the namespace); :meth:`close` releases it.
    """

    def __init__(self, layers: Sequence[Layer], loss: str = "softmax_cross_entropy",
                 execution: Execution | None = None) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError(f"layers must be a non-empty sequence of arraycnn.layers.Layer, got {layers!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if execution is not None and not isinstance(execution, Execution):
            raise TypeError(f"execution must be an arraycnn.execution.Execution, got {execution!r}")
        self.layers = layers
        self.loss = LOSSES[loss]
        params = [p for _, p in self.named_parameters()]
        if not params:
            raise ValueError("layers must hold at least one parameter (the backend and dtype come from them)")
        try:
            self.xp = array_api_compat.array_namespace(*params)
        except TypeError:
            raise TypeError("the layers' parameters come from different backends") from None
        devices = {str(array_api_compat.device(p)) for p in params}
        if len(devices) != 1:
            raise ValueError(f"the layers' parameters must live on one device, got {sorted(devices)}")
        self.device = array_api_compat.device(params[0])
        dtypes = {str(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"the layers' parameters must share one dtype, got {sorted(dtypes)}")
        self.dtype = params[0].dtype
        self.dtype_name = _dtype_name(self.xp, self.dtype)
        self.execution = default_execution(self.xp) if execution is None else execution

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return (f"Sequential(\n{inner}\n)  # {backend_name(self.xp)} on {self.device}, {self.dtype_name}, "
                f"{self.loss.name}, {self.execution!r}")

    def close(self) -> None:
        """Release the execution's threads (the model stays usable; they start again when needed)."""
        self.execution.close()

    def __enter__(self) -> Sequential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def set_gradients(self, grads: Sequence[Array]) -> None:
        """Store ``grads`` (aligned with :meth:`parameters`) as the layers' gradients."""
        it = iter(grads)
        for layer in self.layers:
            layer.grads = {name: next(it) for name in layer.params}

    def num_parameters(self) -> int:
        """The total number of scalar parameters."""
        return sum(math.prod(p.shape) for p in self.parameters())

    def architecture(self) -> list[dict[str, Any]]:
        """Each layer's :meth:`~arraycnn.layers.Layer.config`: what a checkpoint must match to be loaded."""
        return [layer.config() for layer in self.layers]

    def replica(self) -> Sequential:
        """A model sharing this one's parameter arrays, with its own layer caches and gradients (for
        :mod:`arraycnn.execution`'s threads; it reads the parameters again in :meth:`share_parameters`)."""
        twin = copy.copy(self)
        twin.layers = [copy.copy(layer) for layer in self.layers]
        for layer in twin.layers:
            layer.grads, layer._cache = {}, None
        return twin

    def share_parameters(self, source: Sequential) -> None:
        """Point every layer's ``params`` at ``source``'s (the arrays, not copies)."""
        for mine, theirs in zip(self.layers, source.layers, strict=True):
            mine.params = theirs.params

    # -- passes ---------------------------------------------------------------------------------------------
    def forward(self, x: Array, train: bool = True) -> Array:
        """``x (N, ...) -> out (N, ...)``; ``train=True`` keeps each layer's cache for :meth:`backward`."""
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x

    def backward(self, dout: Array, input_grad: bool = True) -> Array | None:
        """Walk the layers in reverse from ``dout = dL/dout``; returns ``dL/dx``.

        ``input_grad=False`` (what :meth:`train_step` uses) returns None and lets the first layer skip ``dx``.
        """
        for i in reversed(range(len(self.layers))):
            dout = self.layers[i].backward(dout, input_grad=input_grad or i > 0)
        return dout

    def train_step(self, x: Array, targets: Array, optimizer: Any) -> Array:
        """One step of gradient descent on a device batch -> its mean loss (0-d, on the device).

        ``x (B, ...)`` in the model's dtype; ``targets`` what the loss takes (class ids ``(B,)`` already
        validated on the host for softmax cross-entropy).
        """
        # --8<-- [start:train_step]
        out = self.forward(x, train=True)                                # 3. every layer's forward
        loss, cache = self.loss.forward(out, targets)                    # 4. the loss ...
        self.backward(self.loss.backward(1.0, cache), input_grad=False)  # ... its gradient; 5. backward
        optimizer.step(self.parameters(), self.gradients())              # 6. update in place
        return loss
        # --8<-- [end:train_step]

    def predict(self, x: Array, batch_size: int | None = None) -> Array:
        """Outputs ``(N, ...)`` for device inputs ``x (N, ...)`` in evaluation mode, ``batch_size`` rows at a time
        when given (each batch through :attr:`execution`)."""
        if batch_size is None:
            return self.execution.predict(self, x)
        batch_size = check_int(batch_size, "batch_size", 1)
        parts = [self.execution.predict(self, x[i:i + batch_size, ...]) for i in range(0, x.shape[0], batch_size)]
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)

    def to_device_inputs(self, images: np.ndarray) -> Array:
        """Host uint8 images -> the model's device and dtype, scaled to ``[0, 1]`` (one transfer)."""
        return data.to_float_images(images, self.xp, self.dtype, self.device)

    def to_device_targets(self, targets: np.ndarray) -> Array:
        """Host targets -> the device: class ids ``(N,)`` for a classifying loss, else arrays like the outputs
        (uint8 images are scaled to ``[0, 1]`` as inputs are: an autoencoder's targets are its inputs)."""
        if self.loss.classifies:
            return data.to_labels(targets, self.xp, self.device)
        if targets.dtype == np.uint8:
            return self.to_device_inputs(targets)
        return to_device(targets, self.xp, self.dtype, self.device)

    def evaluate(self, images: np.ndarray, targets: np.ndarray, batch_size: int = 1000) -> tuple[float, float | None]:
        """``(mean loss, accuracy)`` on host uint8 images ``(N, ...)`` and host targets (class ids ``(N,)``, or
        what the loss compares the outputs with); accuracy is None for a loss that does not classify.

        Each batch crosses to the device once (targets that ARE the images, an autoencoder's, are not sent
        again); one array (its loss sum and correct count) comes back. Class ids are checked on the host,
        never on the device.
        """
        if not isinstance(images, np.ndarray) or not isinstance(targets, np.ndarray) or len(images) != len(targets):
            raise ValueError("images and targets must be NumPy arrays of the same length (N, ...) and (N, ...)")
        if len(targets) == 0:
            raise ValueError("images must hold at least one example")
        batch_size = check_int(batch_size, "batch_size", 1)
        totals = np.zeros(2)
        for start in range(0, len(targets), batch_size):
            stop = min(start + batch_size, len(targets))
            x = self.to_device_inputs(images[start:stop])
            out = self.predict(x)
            if start == 0 and self.loss.classifies and not 0 <= targets.min() <= targets.max() < out.shape[1]:
                raise ValueError(f"targets must be class ids in [0, {out.shape[1]}), "
                                 f"got {targets.min()}..{targets.max()}")
            y = x if targets is images else self.to_device_targets(targets[start:stop])
            loss, _ = self.loss.forward(out, y)
            totals += to_numpy(loss_and_count(loss * (stop - start), self.loss.correct(out, y)))
        accuracy = totals[1] / len(targets) if self.loss.classifies else None
        return float(totals[0]) / len(targets), accuracy

    # -- checkpoints ----------------------------------------------------------------------------------------
    def named_state(self) -> list[tuple[str, Array]]:
        """``[("1.running_mean", ...), ...]``: every layer's non-trained state, named like the parameters."""
        return [(f"{i}.{name}", a) for i, layer in enumerate(self.layers) for name, a in layer.state().items()]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters (``"param/<name>"``) and the layers' state (``"state/<name>"``)."""
        return ({PARAM_PREFIX + name: np.array(to_numpy(p), copy=True) for name, p in self.named_parameters()}
                | {STATE_PREFIX + name: np.array(to_numpy(a), copy=True) for name, a in self.named_state()})

    def checkpoint_meta(self) -> dict[str, Any]:
        """The metadata every checkpoint of this model records: architecture, dtype, backend and loss."""
        return {"architecture": self.architecture(), "dtype": self.dtype_name, "backend": backend_name(self.xp),
                "loss": self.loss.name}

    def save(
        self, path: str | os.PathLike, extra: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the parameters, the layers' state, ``extra`` host arrays (e.g. ``"optim/..."``) and JSON-able
        ``meta`` to one ``.npz``. Atomic (temporary file, fsync, rename) and pickle-free; see
        :mod:`arraycnn.checkpoint`.
        """
        extra = dict(extra or {})
        clash = sorted(k for k in extra if k.startswith((PARAM_PREFIX, STATE_PREFIX)))
        if clash:
            raise ValueError(f"extra must not use the {PARAM_PREFIX!r}/{STATE_PREFIX!r} keys of the model, "
                             f"got {clash}")
        write_npz(path, self.state_arrays() | extra, {**(meta or {}), **self.checkpoint_meta()})

    def load(self, path: str | os.PathLike) -> Checkpoint:
        """Load parameters and layer state saved by :meth:`save` (cast to this model's device and dtype).

        Checks everything before changing anything: a missing file is a FileNotFoundError; a corrupt file,
        another architecture, missing/unexpected arrays or a wrong shape a ValueError naming the file.
        Returns the checkpoint's other arrays and its metadata.
        """
        arrays, meta = read_npz(path)
        self._check_architecture(path, meta.get("architecture"))
        params = _matching(path, arrays, PARAM_PREFIX, dict(self.named_parameters()), "parameter", "f")
        state = _matching(path, arrays, STATE_PREFIX, dict(self.named_state()), "state array", "fiu")
        for i, layer in enumerate(self.layers):
            for name in layer.params:
                layer.params[name] = to_device(params[f"{i}.{name}"], self.xp, self.dtype, self.device)
            layer.load_state({name: state[f"{i}.{name}"] for name in layer.state()})
            layer.grads = {}
        others = {k: v for k, v in arrays.items() if not k.startswith((PARAM_PREFIX, STATE_PREFIX))}
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


def _matching(path: Any, arrays: Mapping[str, np.ndarray], prefix: str, expected: Mapping[str, Array],
              what: str, kinds: str) -> dict[str, np.ndarray]:
    """The ``prefix`` arrays of a checkpoint, checked to have exactly ``expected``'s names and shapes and a
    dtype of one of the NumPy ``kinds`` ("f" floats, "i"/"u" integers)."""
    found = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: {what}s missing {missing}, "
                         f"unexpected {unexpected}")
    for name, a in expected.items():
        if tuple(found[name].shape) != tuple(a.shape):
            raise ValueError(f"checkpoint {path}: {what} {name} has shape {tuple(found[name].shape)}, "
                             f"this model needs {tuple(a.shape)}")
        if found[name].dtype.kind not in kinds:
            expected_kind = "floats" if kinds == "f" else "numbers"
            raise ValueError(f"checkpoint {path}: {what} {name} has dtype {found[name].dtype}, "
                             f"expected {expected_kind}")
    return found
