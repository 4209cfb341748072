"""The backend seam: the ONLY module that knows array libraries by name.

Everything else finds its namespace from the arrays it is given
(``array_api_compat.array_namespace``), so one code path serves NumPy, CuPy,
array-api-strict and any other Array API library.

Rules kept here:

* parameters are drawn by a seeded NumPy generator on the host and moved to the
  device once, so every backend starts from identical numbers;
* host data crosses to the device in :func:`to_device` and comes back in
  :func:`to_numpy`; nothing else transfers;
* float32 is the default dtype, float64 is used when asked for;
* a device is named the way its library names it (:func:`resolve_device`) and every array of a model
  lives on it.

How a step is carried out (threads, chunks, ranks) is not this module's business: see
:mod:`arraycnn.execution`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

KNOWN_BACKENDS = ("numpy", "cupy", "array_api_strict")
DTYPES = ("float32", "float64")
DEFAULT_DTYPE = "float32"

Array = Any  # an array of any Array API namespace


class BackendUnavailableError(RuntimeError):
    """A known backend that cannot run on this machine (e.g. CuPy without a CUDA device)."""


def _cupy_namespace() -> ModuleType:
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendUnavailableError(
            "backend 'cupy' needs CuPy built for this machine's CUDA: pip install 'arraycnn[cuda12]' "
            "(CUDA 12.x) or 'arraycnn[cuda13]' (CUDA 13.x), and a CUDA device"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, missing driver, ...  # pragma: no cover
        raise BackendUnavailableError(
            f"backend 'cupy' needs a CUDA device, but none is usable here ({type(exc).__name__}: {exc}); "
            "check that the CuPy package matches the driver's CUDA: 'arraycnn[cuda12]' installs cupy-cuda12x, "
            "'arraycnn[cuda13]' cupy-cuda13x"
        ) from None
    if count < 1:  # pragma: no cover
        raise BackendUnavailableError("backend 'cupy' needs a CUDA device, but this machine has none")
    return array_api_compat.array_namespace(cupy.zeros(1))


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _cupy_namespace()
    except BackendUnavailableError:
        return False
    return True


def get_namespace(backend: str | ModuleType = "numpy") -> ModuleType:
    """Resolve a backend name (or module) to an Array API namespace.

    ``"numpy"`` gives ``array_api_compat.numpy``, ``"cupy"`` gives ``array_api_compat.cupy``
    (after checking for a CUDA device), ``"array_api_strict"`` the strict reference library;
    any other importable module that implements the standard is accepted too.
    """
    if isinstance(backend, ModuleType):
        return _namespace_of_module(backend, repr(backend.__name__))
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name such as {KNOWN_BACKENDS} or a module, got {backend!r}")
    if backend == "numpy":
        return array_api_compat.array_namespace(np.zeros(1))
    if backend == "cupy":
        return _cupy_namespace()
    try:
        module = importlib.import_module(backend)
    except ImportError:
        raise ValueError(
            f"unknown backend {backend!r}: expected one of {', '.join(KNOWN_BACKENDS)} "
            "or the name of an importable Array API library"
        ) from None
    return _namespace_of_module(module, repr(backend))


def _namespace_of_module(module: ModuleType, label: str) -> ModuleType:
    if getattr(module, "__name__", "") in ("numpy", "cupy"):
        return get_namespace(module.__name__)
    if not hasattr(module, "asarray"):
        raise ValueError(f"backend {label} is not an Array API library (it has no asarray)")
    try:
        return array_api_compat.array_namespace(module.asarray(0.0))
    except TypeError:
        raise ValueError(f"backend {label} is not an Array API library") from None


def backend_name(xp: ModuleType) -> str:
    """A short name for a namespace: 'numpy', 'cupy', 'array_api_strict', ..."""
    name = xp.__name__
    return name.removeprefix("array_api_compat.")


def slices_are_views(xp: ModuleType) -> bool:
    """True where a basic slice, and a reshape of a contiguous array, share memory with the array, so that
    writing into one is seen through the other (NumPy, CuPy, PyTorch). The standard leaves it unspecified
    (array-api-strict): there, code must write results back explicitly."""
    return backend_name(xp) in ("numpy", "cupy", "torch")


def pack(arrays: Sequence[Array], xp: ModuleType) -> Array:
    """``arrays`` flattened and concatenated, in order: ONE ``(total,)`` array on their device (one op). The
    flat buffer that an all-reduce (:mod:`arraycnn.distributed`) and a fused optimizer step work on."""
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


def unpack_into(flat: Array, arrays: Sequence[Array], xp: ModuleType) -> None:
    """Write ``flat`` back into ``arrays`` in place: the inverse of :func:`pack`."""
    offset = 0
    for a in arrays:
        n = math.prod(a.shape)
        a[...] = xp.reshape(flat[offset:offset + n], a.shape)
        offset += n


def resolve_dtype(xp: ModuleType, dtype: str | Any = DEFAULT_DTYPE) -> Any:
    """``"float32"``/``"float64"`` (or a dtype object of ``xp``) -> the dtype object of ``xp``."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        return getattr(xp, dtype)
    if dtype in (xp.float32, xp.float64):
        return dtype
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def resolve_device(xp: ModuleType, device: Any = None) -> Any:
    """A user's device name -> ``xp``'s device object (None: the library's default device).

    CuPy takes a device id (``0``, ``"1"``, ``"cuda:1"``); PyTorch a device string (``"cpu"``,
    ``"cuda:1"``); array-api-strict a device name (``"CPU_DEVICE"``, ``"device1"``); NumPy only
    ``"cpu"``. A device object of the library itself is returned as it is.
    """
    if device is None:
        return None
    name = backend_name(xp)
    if name == "cupy":
        import cupy

        if isinstance(device, cupy.cuda.Device):
            return device
        text = str(device).removeprefix("cuda:")
        if isinstance(device, bool) or not text.isdigit():
            raise ValueError(f"device for cupy must be a CUDA device id such as 0 or 'cuda:1', got {device!r}")
        count = cupy.cuda.runtime.getDeviceCount()
        if int(text) >= count:
            raise ValueError(f"device {device!r} does not exist: this machine has {count} CUDA device(s)")
        return cupy.cuda.Device(int(text))
    if name == "numpy":
        if device != "cpu" and type(device).__name__ != "_CPUDevice":  # NumPy 2's device object is "cpu"
            raise ValueError(f"device for numpy must be 'cpu', got {device!r}")
        return "cpu"
    if name == "torch":
        import torch

        try:
            return torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device for torch must be a torch device string such as 'cpu' or 'cuda:1', "
                             f"got {device!r}") from None
    if name == "array_api_strict":
        import array_api_strict

        if isinstance(device, array_api_strict.Device):
            return device
        try:
            return array_api_strict.Device(str(device))
        except ValueError:
            raise ValueError(f"device for array_api_strict must be one of "
                             f"{[str(d) for d in xp.__array_namespace_info__().devices()]}, "
                             f"got {device!r}") from None
    return device


def to_device(host: np.ndarray, xp: ModuleType, dtype: Any = None, device: Any = None) -> Array:
    """Move a host NumPy array to ``device`` of ``xp`` (its default when None): one transfer, optionally casting."""
    host = np.asarray(host, order="C")  # (ascontiguousarray would turn a 0-d array into shape (1,))
    out = xp.asarray(host) if device is None else xp.asarray(host, device=device)
    if dtype is not None:
        out = xp.astype(out, resolve_dtype(xp, dtype))
    return out


def to_numpy(x: Array) -> np.ndarray:
    """Bring any backend's array to the host as a NumPy array (the one way back)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_numpy_array(x) or np.isscalar(x):
        return np.asarray(x)
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def host_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """The seeded host generator that every parameter is drawn from."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def random_normal(
    rng: np.random.Generator, shape: tuple[int, ...], std: float, xp: ModuleType, dtype: Any = DEFAULT_DTYPE,
    device: Any = None,
) -> Array:
    """``std * N(0, 1)`` drawn on the host in float64 and moved once to ``device``: identical on every backend."""
    return to_device(rng.standard_normal(shape) * std, xp, dtype, device)


# ---------------------------------------------------------------- device randomness (dropout masks)


def _philox(seed: int, counter: int) -> np.random.Generator:
    """NumPy's counter-based Philox keyed by the two 64-bit words ``(seed, counter)``: distinct keys are
    independent streams (a counter in Philox's *counter* instead would make neighbouring calls overlap)."""
    return np.random.Generator(np.random.Philox(key=np.array([seed, counter], dtype=np.uint64)))


def random_uniform(shape: tuple[int, ...], seed: int, counter: int, *, like: Array) -> Array:
    """Uniform numbers in ``[0, 1)`` of ``shape``, in ``like``'s dtype, namespace and device, from the key
    ``(seed, counter)`` (each in ``[0, 2**64)``): the same key and shape give the same numbers on every call
    and after a resume; a new ``counter`` gives a fresh, independent draw.

    * NumPy: Philox keyed by ``(seed, counter)``.
    * CuPy (cuRAND's Philox4x32-10) and PyTorch: the library's own generator, drawn ON the array's device,
      seeded with a 64-bit hash of ``(seed, counter)`` (``np.random.SeedSequence``); no host-to-device copy.
    * Any other library (array-api-strict, which has no random numbers): the documented fallback draws with
      NumPy's Philox on the host and copies the numbers to ``like``'s device, one transfer of ``shape`` per call.

    The numbers differ between those three families, never between two calls of one.
    """
    for what, value in (("seed", seed), ("counter", counter)):
        if not 0 <= value < 2**64:
            raise ValueError(f"{what} must be in [0, 2**64), got {value}")
    xp = array_api_compat.array_namespace(like)
    name, dtype, device = backend_name(xp), like.dtype, array_api_compat.device(like)
    if name == "numpy":
        return _philox(seed, counter).random(shape, dtype=dtype)
    if name in ("cupy", "torch"):
        hashed = int(np.random.SeedSequence([seed, counter]).generate_state(1, np.uint64)[0])
        if name == "cupy":
            import cupy

            with device:   # Philox: cheap to set up per call (XORWOW initialises a million states)
                return cupy.random.Generator(cupy.random.Philox4x3210(hashed)).random(shape, dtype=dtype)
        import torch

        generator = torch.Generator(device=device)
        generator.manual_seed(hashed)
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return to_device(_philox(seed, counter).random(shape), xp, dtype, device)


# ---------------------------------------------------------------- strided window views (an ops fast path)
# The one library-specific piece the ops use: a zero-copy view of every sliding window, where the library
# has one. The caller keeps its plain-slicing path for every other namespace, and tests both.


def sliding_window_view(x: Array, window: tuple[int, int]) -> Array | None:
    """Every ``(KH, KW)`` window of ``x (N, Hp, Wp, C)`` as a read-only view ``(N, Hp-KH+1, Wp-KW+1, C, KH, KW)``
    where the library offers one (NumPy; CuPy >= 13), else None: the caller then slices."""
    if array_api_compat.is_numpy_array(x):
        return np.lib.stride_tricks.sliding_window_view(x, window, axis=(1, 2))
    if array_api_compat.is_cupy_array(x):  # pragma: no cover - needs a CUDA device
        import cupy

        view = getattr(cupy.lib.stride_tricks, "sliding_window_view", None)
        return None if view is None else view(x, window, axis=(1, 2))
    return None
