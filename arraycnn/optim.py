"""Optimisers that update parameters in place on their own backend (NumPy, CuPy, array-api-strict, ...).

An optimiser is not bound to a model: :meth:`Optimizer.step` gets the parameter list and the matching
gradient list on every call, and updates each parameter array **in place**, so layers that hold references
to their arrays see the new values. Per-parameter state (momentum, Adam's moments) lives on the parameters'
device in their dtype and is indexed by position in the list, which is therefore fixed at the first step.

Nothing in :meth:`~Optimizer.step` crosses between host and device: hyper-parameters and step sizes are
Python floats. :meth:`~Optimizer.state_dict` brings the state to the host as NumPy arrays (scalars as 0-d
arrays), ready for ``np.savez``; :meth:`~Optimizer.load_state_dict` moves it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import array_api_compat
import numpy as np

from arraycnn.backend import Array, to_device, to_numpy

__all__ = ["SGD", "Adam", "Optimizer"]


class Optimizer:
    """Base class: step counting, argument checks, state buffers and (de)serialisation.

    Subclasses name their scalar hyper-parameters in ``hyper``, validate them in :meth:`_check_hyper`,
    name their per-parameter buffers in :meth:`_slots` and implement :meth:`_update`.

    State keys: ``"t"`` (steps taken), ``"num_params"`` (length of the parameter list the optimiser was
    first stepped with; 0 before the first step), every hyper-parameter (e.g. ``"lr"``) and one
    ``"<slot>.<i>"`` per buffer and parameter index (e.g. ``"m.0"``, ``"v.0"``).
    """

    hyper: ClassVar[tuple[str, ...]] = ("lr",)

    def __init__(self, **hyper: float) -> None:
        self._set_hyper(hyper)
        self.t = 0
        self._num_params = 0
        self._buffers: dict[str, list[Array]] = {}

    # -- subclass hooks -------------------------------------------------------------------------
    @classmethod
    def _check_hyper(cls, hyper: Mapping[str, float]) -> None:
        """ValueError naming the first invalid hyper-parameter."""
        if not hyper["lr"] > 0:  # also rejects NaN
            raise ValueError(f"lr must be > 0, got {hyper['lr']!r}")

    @classmethod
    def _slots(cls, hyper: Mapping[str, float]) -> tuple[str, ...]:
        """Names of the per-parameter buffers under ``hyper`` (each starts as zeros shaped like its param)."""
        return ()

    def _update(self, i: int, p: Array, g: Array, xp: Any) -> None:
        """Update parameter ``i`` (``p``, in place) from gradient ``g``; ``self.t`` is already advanced."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    def step(self, params: Sequence[Array], grads: Sequence[Array | None]) -> None:
        """One update of every parameter in place; parameters whose gradient is ``None`` are left as is.

        ``params[i]`` and ``grads[i]`` must share shape, dtype and backend. The step counter ``t`` advances
        once per call (as Keras's ``iterations``), whichever gradients are ``None``.
        """
        if len(params) != len(grads):
            raise ValueError(f"params and grads must have one entry each, got {len(params)} and {len(grads)}")
        if self._num_params and len(params) != self._num_params:
            raise ValueError(
                f"this optimizer was first stepped with {self._num_params} params, got {len(params)}"
            )
        namespaces = []
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                namespaces.append(None)
                continue
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"grads[{i}] shape {tuple(g.shape)} != params[{i}] shape {tuple(p.shape)}")
            try:
                namespaces.append(array_api_compat.array_namespace(p, g))
            except TypeError:
                raise TypeError(
                    f"params[{i}] ({type(p).__module__}.{type(p).__name__}) and grads[{i}] "
                    f"({type(g).__module__}.{type(g).__name__}) come from different backends"
                ) from None
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{i}] has dtype {g.dtype} but params[{i}] has {p.dtype}")
        if not self._num_params:
            self._num_params = len(params)
            self._buffers = {s: [_zeros_like(p) for p in params] for s in self._slots(self.hyper_values)}
        else:
            for s, bufs in self._buffers.items():
                for i, (p, b) in enumerate(zip(params, bufs, strict=True)):
                    if tuple(b.shape) != tuple(p.shape):
                        raise ValueError(f"params[{i}] has shape {tuple(p.shape)} but its state {s}.{i} "
                                         f"has {tuple(b.shape)}")
        self.t += 1
        for i, (p, g, xp) in enumerate(zip(params, grads, namespaces, strict=True)):
            if g is not None:
                self._update(i, p, g, xp)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The full state as host NumPy copies (scalars as 0-d arrays), for ``np.savez`` without pickle."""
        state = {"t": np.asarray(self.t, np.int64), "num_params": np.asarray(self._num_params, np.int64)}
        state |= {name: np.asarray(value, np.float64) for name, value in self.hyper_values.items()}
        for s, bufs in self._buffers.items():
            state |= {f"{s}.{i}": np.array(to_numpy(b), copy=True) for i, b in enumerate(bufs)}
        return state

    def load_state_dict(self, state: Mapping[str, Any], params: Sequence[Array]) -> None:
        """Restore :meth:`state_dict`'s output (hyper-parameters included, as PyTorch does).

        Buffers are moved to ``params``' backend and cast to each parameter's dtype. ValueError, with nothing
        changed, on missing or unexpected keys, a different parameter count or a buffer shape mismatch.
        """
        required = {"t", "num_params", *self.hyper}
        missing = required - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)} for {type(self).__name__}")
        hyper = {name: float(np.asarray(state[name])) for name in self.hyper}
        self._check_hyper(hyper)
        t, n = int(np.asarray(state["t"])), int(np.asarray(state["num_params"]))
        if t < 0 or n < 0:
            raise ValueError(f"state has negative t={t} or num_params={n}")
        if n and n != len(params):
            raise ValueError(f"state holds {n} params but {len(params)} params were given")
        slots = self._slots(hyper) if n else ()  # the slots follow the loaded hyper-parameters
        expected = required | {f"{s}.{i}" for s in slots for i in range(n)}
        if set(state) != expected:
            raise ValueError(
                f"state keys do not match {type(self).__name__} with {n} params: "
                f"missing {sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
            )
        for s in slots:
            for i, p in enumerate(params):
                shape = tuple(np.shape(state[f"{s}.{i}"]))
                if shape != tuple(p.shape):
                    raise ValueError(f"state {s}.{i} has shape {shape} but params[{i}] has {tuple(p.shape)}")
        self._set_hyper(hyper)
        self.t, self._num_params = t, n
        self._buffers = {s: [_to_like(state[f"{s}.{i}"], p) for i, p in enumerate(params)] for s in slots}

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in self.hyper_values.items())
        return f"{type(self).__name__}({args})"

    @property
    def hyper_values(self) -> dict[str, float]:
        """The current hyper-parameters by name, e.g. ``{"lr": 0.001, ...}``."""
        return {name: getattr(self, name) for name in self.hyper}

    # -- helpers --------------------------------------------------------------------------------
    def _set_hyper(self, hyper: Mapping[str, float]) -> None:
        self._check_hyper(hyper)
        for name in self.hyper:
            setattr(self, name, float(hyper[name]))


def _zeros_like(p: Array) -> Array:
    return array_api_compat.array_namespace(p).zeros_like(p)


def _to_like(host: Any, p: Array) -> Array:
    """A fresh copy of host data on ``p``'s backend, in ``p``'s dtype."""
    return to_device(np.array(host, copy=True), array_api_compat.array_namespace(p), p.dtype)


class SGD(Optimizer):
    """Stochastic gradient descent with optional heavy-ball momentum, in PyTorch's form.

    For each parameter ``p`` with gradient ``g`` (any shape)::

        v = momentum * v + g        (only when momentum > 0; v starts at 0, so the first v is g)
        p -= lr * v

    This is ``torch.optim.SGD`` (no dampening, no Nesterov). It differs from Keras's
    ``v = momentum * v - lr * g; p += v`` only when ``lr`` changes during training.
    """

    hyper = ("lr", "momentum")

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__(lr=lr, momentum=momentum)

    @classmethod
    def _check_hyper(cls, hyper: Mapping[str, float]) -> None:
        super()._check_hyper(hyper)
        if not hyper["momentum"] >= 0:
            raise ValueError(f"momentum must be >= 0, got {hyper['momentum']!r}")

    @classmethod
    def _slots(cls, hyper: Mapping[str, float]) -> tuple[str, ...]:
        return ("v",) if hyper["momentum"] > 0 else ()

    def _update(self, i: int, p: Array, g: Array, xp: Any) -> None:
        if self.momentum > 0:
            v = self._buffers["v"][i]
            v *= self.momentum
            v += g
            g = v
        p -= self.lr * g


class Adam(Optimizer):
    """Adam in TensorFlow/Keras's form (``tf.keras.optimizers.Adam``), with Keras's defaults.

    For each parameter ``p`` with gradient ``g`` (any shape), at step ``t = 1, 2, ...``::

        m += (1 - beta1) * (g - m)                      # = beta1 * m + (1 - beta1) * g
        v += (1 - beta2) * (g**2 - v)                   # = beta2 * v + (1 - beta2) * g**2
        p -= lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)

    The bias corrections are folded into the scalar step size, computed on the host as a Python float;
    ``m`` and ``v`` stay on the device in the parameter's dtype.

    ``eps = 1e-7`` is Keras's default, and it is added to ``sqrt(v)`` of the *uncorrected* ``v``. PyTorch
    (and the Adam paper) add ``eps = 1e-8`` to ``sqrt(v_hat) = sqrt(v / (1 - beta2**t))`` instead; that equals
    this form with ``eps_keras = eps_torch * sqrt(1 - beta2**t)``, i.e. an eps that grows from ~3e-10 at
    ``t = 1`` to 1e-8. The two agree unless ``|g|`` is tiny (~eps), where Keras's larger, fixed eps damps the
    step more; we keep Keras's form and value so training matches the TensorFlow tutorial this follows.
    (Keras also rounds the betas to float32 before the bias corrections, even for float64 variables; we use
    them exactly; with beta2 = 0.999 that moves the step size by up to ~6e-6 relatively.)
    """

    hyper = ("lr", "beta1", "beta2", "eps")

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps)

    @classmethod
    def _check_hyper(cls, hyper: Mapping[str, float]) -> None:
        super()._check_hyper(hyper)
        for name in ("beta1", "beta2"):
            if not 0 <= hyper[name] < 1:
                raise ValueError(f"{name} must be in [0, 1), got {hyper[name]!r}")
        if not hyper["eps"] > 0:
            raise ValueError(f"eps must be > 0, got {hyper['eps']!r}")

    @classmethod
    def _slots(cls, hyper: Mapping[str, float]) -> tuple[str, ...]:
        return ("m", "v")

    def _update(self, i: int, p: Array, g: Array, xp: Any) -> None:
        # --8<-- [start:adam_update]
        m, v = self._buffers["m"][i], self._buffers["v"][i]
        alpha = self.lr * math.sqrt(1 - self.beta2**self.t) / (1 - self.beta1**self.t)  # host float
        d = g - m
        d *= 1 - self.beta1
        m += d
        d = g * g
        d -= v
        d *= 1 - self.beta2
        v += d
        den = xp.sqrt(v)
        den += self.eps
        d = m * alpha
        d /= den
        p -= d
        # --8<-- [end:adam_update]
