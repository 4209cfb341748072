"""Argument checks shared by every op: each failure is a ValueError/TypeError naming the argument."""

from __future__ import annotations

import operator
from collections.abc import Callable
from types import ModuleType
from typing import Any

import array_api_compat


def namespace_of(**arrays: Any) -> ModuleType:
    """The one Array API namespace of the given (named) arrays; ``None`` values are ignored.

    Raises TypeError naming the arguments when they are not arrays or come from two libraries.
    """
    present = {name: a for name, a in arrays.items() if a is not None}
    for name, a in present.items():
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name} must be an array (NumPy, CuPy or Array API), got {type(a).__name__}")
    try:
        return array_api_compat.array_namespace(*present.values())
    except TypeError:
        kinds = ", ".join(f"{name}: {type(a).__module__}.{type(a).__name__}" for name, a in present.items())
        raise TypeError(f"arrays from different backends cannot be mixed ({kinds})") from None


def check_float(x: Any, name: str, xp: ModuleType) -> None:
    """TypeError unless ``x`` has a real floating dtype."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {x.dtype}")


def check_ndim(x: Any, name: str, ndim: int, layout: str) -> None:
    """ValueError unless ``x`` has rank ``ndim``; ``layout`` names the axes, e.g. ``"(N, H, W, C)"``."""
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def check_same_dtype(xp: ModuleType, **arrays: Any) -> None:
    """TypeError unless all given arrays share one dtype."""
    present = {name: a for name, a in arrays.items() if a is not None}
    dtypes = {str(a.dtype) for a in present.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{name}: {a.dtype}" for name, a in present.items())
        raise TypeError(f"arrays must share one floating dtype ({listing})")


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum``; TypeError for non-integers (bools included), else ValueError."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(value: Any, name: str, expected: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a float when it is a real number (bools excluded) with ``ok(value)``, else a ValueError
    ``"<name> must be <expected>, got <value>"`` (NaN fails every comparison, so every ``ok``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def int_pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """An int or an ``(h, w)`` pair of ints, each ``>= minimum`` -> ``(h, w)``."""
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
    try:
        h, w = (check_int(v, name, minimum) for v in items)
    except TypeError:
        raise TypeError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}") from None
    except ValueError:
        raise ValueError(f"{name} must be >= {minimum} (an int or an (h, w) pair), got {value!r}") from None
    return h, w


def mismatches(actual: Any, expected: Any, rtol: float, atol: float) -> Any:
    """THE tolerance rule of the project, on host float64 arrays: True where
    ``|actual - expected| > atol · max(1, max|expected|) + rtol · |expected|`` (NaN counts as a mismatch).

    ``atol`` is relative to the reference's largest magnitude, so one figure per dtype serves values of
    any scale; ``rtol`` adds slack proportional to each entry. gradcheck, arraycnn.testing and the test
    suite's dtype tolerances all call this.
    """
    import numpy as np

    expected = np.asarray(expected, dtype=np.float64)
    err = np.abs(np.asarray(actual, dtype=np.float64) - expected)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    return ~(err <= atol * scale + rtol * np.abs(expected))
