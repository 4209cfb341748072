"""Optimisers that update parameters in place on their own backend (NumPy, CuPy, array-api-strict, ...).

An optimiser is not bound to a model: :meth:`Optimizer.step` gets the parameter list and the matching
gradient list on every call, and updates each parameter array **in place**, so layers that hold references
to their arrays see the new values. The state (momentum, Adam's moments) lives on the parameters' device in
their dtype; the list's length and shapes are fixed at the first step.

**One flat buffer.** The state of all parameters is one flat 1-D array per slot (``m``, ``v``), and a step
updates them all with ONE set of element-wise ops over the concatenated gradients instead of one set per
tensor: on a GPU each op is a kernel launch (~10 µs of host time), so Adam on the tutorial's 8 tensors
issues 22 ops instead of 96 (``python -m benchmarks.opcount``). The parameters are gathered into a flat
buffer and scattered back after the update (2 + 8 of those ops), unless they were handed to
:meth:`Optimizer.adopt`, which keeps them as views of its own flat buffer so that the update writes them
directly (13 ops). A step in which some gradient is ``None`` updates the
others one by one, with the same math (:meth:`Optimizer._update` is written once, for arrays of any shape).

Nothing in :meth:`~Optimizer.step` crosses between host and device: hyper-parameters and step sizes are
Python floats. :meth:`~Optimizer.state_dict` brings the state to the host as NumPy arrays, one per slot and
parameter (scalars as 0-d arrays), ready for ``np.savez``; :meth:`~Optimizer.load_state_dict` moves it back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import array_api_compat
import numpy as np

from arraycnn.backend import Array, pack, slices_are_views, to_device, to_numpy, unpack_into

__all__ = ["SGD", "Adam", "Optimizer"]


class Optimizer:
    """Base class: step counting, argument checks, the flat state buffers and (de)serialisation.

    Subclasses name their scalar hyper-parameters in ``hyper``, validate them in :meth:`_check_hyper`,
    name their state slots in :meth:`_slots` and implement :meth:`_update`.

    State keys: ``"t"`` (steps taken), ``"num_params"`` (length of the parameter list the optimiser was
    first stepped with; 0 before the first step), every hyper-parameter (e.g. ``"lr"``) and one
    ``"<slot>.<i>"`` per slot and parameter index, shaped like the parameter (e.g. ``"m.0"``, ``"v.0"``).
    """

    hyper: ClassVar[tuple[str, ...]] = ("lr",)

    def __init__(self, **hyper: float) -> None:
        self._set_hyper(hyper)
        self.t = 0
        self._num_params = 0  # set at the first step (or by load_state_dict)
        self._shapes: list[tuple[int, ...]] = []  # of the parameters, fixed at the first step or by adopt()
        self._bounds: list[tuple[int, int]] = []  # parameter i is [lo, hi) of every flat buffer
        self._state: dict[str, Array] = {}  # slot -> flat (total,) buffer over all parameters
        self._flat: Array | None = None  # the buffer that adopt()'s views share, if any
        self._views: list[Array] = []

    # -- subclass hooks -------------------------------------------------------------------------
    @classmethod
    def _check_hyper(cls, hyper: Mapping[str, float]) -> None:
        """ValueError naming the first invalid hyper-parameter."""
        if not hyper["lr"] > 0:  # also rejects NaN
            raise ValueError(f"lr must be > 0, got {hyper['lr']!r}")

    @classmethod
    def _slots(cls, hyper: Mapping[str, float]) -> tuple[str, ...]:
        """Names of the state slots under ``hyper`` (each starts as zeros shaped like the parameters)."""
        return ()

    def _update(self, p: Array, g: Array, state: Mapping[str, Array], xp: ModuleType) -> None:
        """Update ``p`` and ``state`` (each slot shaped like ``p``) in place from ``g``; ``self.t`` is advanced.

        ``p`` is one parameter or all of them flattened into one buffer: the math is element-wise.
        """
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    def step(self, params: Sequence[Array], grads: Sequence[Array | None]) -> None:
        """One update of every parameter in place; parameters whose gradient is ``None`` are left as is.

        ``params`` must share one backend and one dtype; ``grads[i]`` must match ``params[i]``'s shape and
        dtype. The step counter ``t`` advances once per call (as Keras's ``iterations``), whichever
        gradients are ``None``.
        """
        xp = self._check_step(params, grads)
        if not self._num_params:
            self._set_layout(params)
            self._state = {s: xp.zeros((self._size(),), dtype=params[0].dtype, device=_device(params[0]))
                           for s in self._slots(self.hyper_values)}
            self._num_params = len(params)
        self.t += 1
        if any(g is None for g in grads):
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                if g is not None:
                    self._update_one(i, p, g, xp)
            return
        # --8<-- [start:flat_step]
        g = pack(grads, xp)                       # one (total,) gradient
        if self._adopted(params):                       # the parameters are views of self._flat
            self._update(self._flat, g, self._state, xp)
        else:                                           # gather, update, scatter back
            p = pack(params, xp)
            self._update(p, g, self._state, xp)
            unpack_into(p, params, xp)
        # --8<-- [end:flat_step]

    def adopt(self, params: Sequence[Array]) -> list[Array]:
        """Copy ``params`` into one flat buffer of this optimiser and return arrays of the same shapes and
        values that view it, for the caller to hold in place of ``params`` (e.g. in its layers).

        While :meth:`step` is given exactly these arrays, it updates the flat buffer and with it every
        parameter, with no gathering or scattering. Where the backend does not guarantee that slices are
        views (array-api-strict; :func:`arraycnn.backend.slices_are_views`), ``params`` are returned as they
        are and :meth:`step` gathers and scatters them: the same numbers either way.
        """
        xp = self._check_step(params, [None] * len(params))
        if not slices_are_views(xp):
            return list(params)
        if self._shapes:
            self._check_shapes(params)
        else:
            self._set_layout(params)
        flat = pack(params, xp)
        self._flat = flat
        self._views = [xp.reshape(flat[lo:hi], shape) for (lo, hi), shape in zip(self._bounds, self._shapes,
                                                                                  strict=True)]
        return list(self._views)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The full state as host NumPy copies (scalars as 0-d arrays), for ``np.savez`` without pickle."""
        state = {"t": np.asarray(self.t, np.int64), "num_params": np.asarray(self._num_params, np.int64)}
        state |= {name: np.asarray(value, np.float64) for name, value in self.hyper_values.items()}
        for s, buf in self._state.items():
            host = np.array(to_numpy(buf), copy=True)  # one read-back per slot
            state |= {f"{s}.{i}": np.reshape(host[lo:hi], shape)
                      for i, ((lo, hi), shape) in enumerate(zip(self._bounds, self._shapes, strict=True))}
        return state

    def load_state_dict(self, state: Mapping[str, Any], params: Sequence[Array]) -> None:
        """Restore :meth:`state_dict`'s output (hyper-parameters included, as PyTorch does).

        The state moves to ``params``' backend and device in their dtype, one transfer per slot. ValueError,
        with nothing changed, on missing or unexpected keys, a different parameter count or a shape mismatch.
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
        xp = self._check_step(params, [None] * len(params)) if n else None
        self._set_hyper(hyper)
        self.t, self._num_params, self._state = t, n, {}
        if not self._adopted(params):  # adopted views keep their buffer: the caller may have loaded into them
            self._shapes, self._bounds, self._flat, self._views = [], [], None, []
        if n:
            self._set_layout(params)
            host = {s: np.concatenate([np.reshape(np.asarray(state[f"{s}.{i}"]), -1) for i in range(n)])
                    for s in slots}
            self._state = {s: to_device(h, xp, params[0].dtype, _device(params[0])) for s, h in host.items()}

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

    def _check_step(self, params: Sequence[Array], grads: Sequence[Array | None]) -> ModuleType:
        """The parameters' namespace, after checking the lists against each other and against the state."""
        if len(params) != len(grads):
            raise ValueError(f"params and grads must have one entry each, got {len(params)} and {len(grads)}")
        if self._shapes and len(params) != len(self._shapes):
            raise ValueError(f"this optimizer was first stepped with {len(self._shapes)} params, got {len(params)}")
        if not params:
            raise ValueError("params must hold at least one array")
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if g is None:
                continue
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"grads[{i}] shape {tuple(g.shape)} != params[{i}] shape {tuple(p.shape)}")
            try:
                array_api_compat.array_namespace(p, g)
            except TypeError:
                raise TypeError(
                    f"params[{i}] ({type(p).__module__}.{type(p).__name__}) and grads[{i}] "
                    f"({type(g).__module__}.{type(g).__name__}) come from different backends"
                ) from None
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{i}] has dtype {g.dtype} but params[{i}] has {p.dtype}")
        try:
            xp = array_api_compat.array_namespace(*params)
        except TypeError:
            raise TypeError("params come from different backends") from None
        for i, p in enumerate(params):
            if p.dtype != params[0].dtype:
                raise TypeError(f"params must share one dtype: params[0] is {params[0].dtype}, "
                                f"params[{i}] is {p.dtype}")
        if self._shapes:
            self._check_shapes(params)
        return xp

    def _check_shapes(self, params: Sequence[Array]) -> None:
        for i, (p, shape) in enumerate(zip(params, self._shapes, strict=True)):
            if tuple(p.shape) != shape:
                raise ValueError(f"params[{i}] has shape {tuple(p.shape)} but this optimizer's state for it "
                                 f"has {shape}")

    def _set_layout(self, params: Sequence[Array]) -> None:
        self._shapes = [tuple(p.shape) for p in params]
        ends = list(itertools.accumulate(math.prod(s) for s in self._shapes))
        self._bounds = list(zip([0, *ends[:-1]], ends, strict=True))

    def _size(self) -> int:
        return self._bounds[-1][1]

    def _adopted(self, params: Sequence[Array]) -> bool:
        """Are ``params`` exactly the views :meth:`adopt` returned (so ``self._flat`` holds their values)?"""
        return bool(self._views) and all(p is v for p, v in zip(params, self._views, strict=True))

    def _update_one(self, i: int, p: Array, g: Array, xp: ModuleType) -> None:
        """The update of parameter ``i`` alone, on its segment of the flat state."""
        lo, hi = self._bounds[i]
        state = {s: xp.reshape(buf[lo:hi], p.shape) for s, buf in self._state.items()}
        self._update(p, g, state, xp)
        for s, buf in self._state.items():  # a self-copy where slices are views; needed where they are not
            buf[lo:hi] = xp.reshape(state[s], (-1,))


def _device(x: Array) -> Any:
    return array_api_compat.device(x)


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

    def _update(self, p: Array, g: Array, state: Mapping[str, Array], xp: ModuleType) -> None:
        if self.momentum > 0:
            v = state["v"]
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

    def _update(self, p: Array, g: Array, state: Mapping[str, Array], xp: ModuleType) -> None:
        # --8<-- [start:adam_update]
        m, v = state["m"], state["v"]
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
