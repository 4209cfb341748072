"""Numeric gradient checking: compare a hand-written backward pass with central differences.

For an op ``forward(*inputs) -> (out, cache)`` and its ``backward(dout, cache) -> grads``, draw a random
upstream gradient ``v`` shaped like ``out`` and check, entry by entry in float64,

    backward(v)[a][i]  ≈  (L(a + eps·e_i) - L(a - eps·e_i)) / (2 eps),     L = <forward(...), v>

The error of a central difference is ``O(eps²)`` truncation plus ``O(u·|L|/eps)`` rounding
(``u ≈ 1.1e-16`` in float64), so ``eps = 1e-6`` leaves about 1e-9 relative: the default tolerances
``rtol = atol = 1e-6`` (scaled by the size of the gradients) sit well above that and far below any
real bug. Non-differentiable points (a ReLU at 0, a max-pool tie) must be avoided by the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from ._checks import mismatches
from .backend import to_numpy

Array = Any


@dataclass
class InputReport:
    """How one input's analytic gradient compared with the numeric one."""

    name: str
    shape: tuple[int, ...]
    checked: int
    max_abs_err: float
    scale: float
    ok: bool
    worst: list[tuple[tuple[int, ...], float, float]] = field(default_factory=list)  # (index, analytic, numeric)


@dataclass
class GradcheckResult:
    """All inputs' reports; ``str()`` gives the readable table, ``ok`` the verdict."""

    op: str
    eps: float
    rtol: float
    atol: float
    inputs: list[InputReport]

    @property
    def ok(self) -> bool:
        """True when every checked input's gradient matched within tolerance."""
        return all(r.ok for r in self.inputs)

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        lines = [f"gradcheck {verdict} for {self.op} (eps={self.eps:g}, rtol={self.rtol:g}, atol={self.atol:g})"]
        for r in self.inputs:
            lines.append(
                f"  {r.name}: shape {r.shape}, {r.checked} entries checked, max |analytic - numeric| = "
                f"{r.max_abs_err:.3e} (gradient scale {r.scale:.3e})  {'ok' if r.ok else 'MISMATCH'}"
            )
            if not r.ok:
                lines.append("     worst entries:  index  analytic  numeric  difference")
                for idx, a, n in r.worst:
                    lines.append(f"       {idx}  {a: .6e}  {n: .6e}  {a - n: .3e}")
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` (``raise_on_failure=True``) with the report as its message."""


def gradcheck(
    forward: Callable[..., tuple[Array, Any]],
    backward: Callable[[Array, Any], Any],
    inputs: Mapping[str, Array | None] | Sequence[Array | None],
    *,
    kwargs: Mapping[str, Any] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    seed: int = 0,
    max_entries: int = 1000,
    n_worst: int = 5,
    raise_on_failure: bool = True,
) -> GradcheckResult:
    """Check ``backward`` against central differences of ``forward`` in float64.

    ``inputs`` are the positional arguments of ``forward`` (a name -> array mapping gives readable
    reports); ``backward(dout, cache)`` returns one gradient or a tuple of gradients aligned with the
    first inputs (``None`` where there is none). Integer inputs (class ids) are passed through
    unchecked. Each input is checked at up to ``max_entries`` randomly chosen entries. An entry fails
    when ``|analytic - numeric| > atol·scale + rtol·|numeric|`` with ``scale = max(1, max|numeric|)``.
    """
    named = dict(inputs) if isinstance(inputs, Mapping) else {f"arg{i}": a for i, a in enumerate(inputs)}
    names = list(named)
    arrays = [a for a in named.values() if a is not None]
    if not arrays:
        raise ValueError("inputs must hold at least one array")
    xp = array_api_compat.array_namespace(*arrays)
    device = array_api_compat.device(arrays[0])
    kwargs = dict(kwargs or {})

    def is_float(a: Any) -> bool:
        return a is not None and xp.isdtype(a.dtype, "real floating")

    host = {k: (to_numpy(a).astype(np.float64) if is_float(a) else a) for k, a in named.items()}

    def device_args(values: Mapping[str, Any]) -> list[Any]:
        return [xp.asarray(v, device=device) if isinstance(v, np.ndarray) else v for v in values.values()]

    out, cache = forward(*device_args(host), **kwargs)
    rng = np.random.default_rng(seed)
    # --8<-- [start:probe]
    v_host = rng.standard_normal(np.shape(to_numpy(out)))
    grads = backward(xp.asarray(v_host, device=device), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    # --8<-- [end:probe]

    # --8<-- [start:objective]
    def objective(values: Mapping[str, Any]) -> float:
        y, _ = forward(*device_args(values), **kwargs)
        return float(np.sum(to_numpy(y) * v_host))
    # --8<-- [end:objective]

    reports = []
    for name, grad in zip(names, grads, strict=False):
        if grad is None or not isinstance(host[name], np.ndarray):
            continue
        base = host[name]
        analytic = to_numpy(grad).astype(np.float64)
        if analytic.shape != base.shape:
            raise ValueError(f"backward returned a gradient of shape {analytic.shape} for {name} of shape {base.shape}")
        flat = np.arange(base.size)
        if base.size > max_entries:
            flat = np.sort(rng.choice(base.size, size=max_entries, replace=False))
        numeric = np.empty(flat.size)
        # --8<-- [start:central_difference]
        for t, f in enumerate(flat):
            idx = np.unravel_index(f, base.shape)
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            numeric[t] = (objective({**host, name: plus}) - objective({**host, name: minus})) / (2 * eps)
        # --8<-- [end:central_difference]
        a = analytic.reshape(-1)[flat]
        # --8<-- [start:tolerance]
        err, scale = np.abs(a - numeric), max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
        bad = mismatches(a, numeric, rtol, atol)   # err > atol·scale + rtol·|numeric|
        # --8<-- [end:tolerance]
        order = np.argsort(-err)[:n_worst]
        worst = [(tuple(int(i) for i in np.unravel_index(flat[o], base.shape)), float(a[o]), float(numeric[o]))
                 for o in order]
        reports.append(InputReport(name, base.shape, int(flat.size), float(err.max(initial=0.0)), scale,
                                   not bool(bad.any()), worst))
    result = GradcheckResult(getattr(backward, "__name__", "backward"), eps, rtol, atol, reports)
    if raise_on_failure and not result.ok:
        raise GradcheckError(str(result))
    return result
