"""Shared fixtures: the array namespaces, dtypes with their tolerances, hypothesis profiles.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``ci`` (>= 200 examples per property, used by ``.ci/run``),
``dev`` (the default: fast), ``deep`` (thousands). Oracle tests have no deadline: TensorFlow's first
calls are slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from arraycnn import backend
from arraycnn._checks import mismatches

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=200, **_common)
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile("deep", max_examples=3000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

NAMESPACES = ("numpy", "array_api_strict", "cupy")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(params=NAMESPACES, scope="session")
def xp(request):
    """Each Array API namespace the engine must run on; cupy only where a CUDA device is usable."""
    if request.param == "cupy" and not backend.cuda_available():
        pytest.skip("cupy: CuPy is not installed or no CUDA device is usable on this machine")
    return backend.get_namespace(request.param)


@dataclass(frozen=True)
class Tolerance:
    """Agreement expected of a result computed in ``dtype`` against a float64 reference.

    float64: unit roundoff 1.1e-16; our sums have at most ~1e3 terms, so 1e-9 relative (of the
    largest reference magnitude) leaves a wide margin and still catches any real bug.
    float32: unit roundoff 6e-8 for the inputs' rounding and each of up to ~1e3 accumulated terms
    gives a worst-case 6e-5 relative error; 2e-4 of the reference's scale covers that.
    """

    name: str
    rtol: float

    def assert_close(self, actual, expected, what: str = "") -> None:
        actual = backend.to_numpy(actual).astype(np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
        err = float(np.max(np.abs(actual - expected), initial=0.0))
        assert not mismatches(actual, expected, rtol=0.0, atol=self.rtol).any(), \
            f"{what}: max abs error {err:.3e} > {self.rtol:g} * scale {scale:.3e}"


TOLERANCES = {"float64": Tolerance("float64", 1e-9), "float32": Tolerance("float32", 2e-4)}


@pytest.fixture(params=["float64", "float32"], scope="session")
def dtype(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tol(dtype) -> Tolerance:
    return TOLERANCES[dtype]


def to_xp(xp, host: np.ndarray, dtype: str):
    """A host array on ``xp``'s device in ``dtype`` (the test-side equivalent of backend.to_device)."""
    return backend.to_device(host, xp, dtype)


def assert_same(actual, expected, what: str = "") -> None:
    """Equal bit for bit on the host: for a result that must be the very same computation, not merely close."""
    np.testing.assert_array_equal(backend.to_numpy(actual), backend.to_numpy(expected), err_msg=what)


def rounded(host: np.ndarray, dtype: str) -> np.ndarray:
    """``host`` rounded to ``dtype`` and back to float64: what the engine actually received."""
    return host.astype(dtype).astype(np.float64)


def assert_input_grad_false_skips_only_dx(backward, dy, cache) -> None:
    """``backward(dy, cache, input_grad=False)`` returns ``None`` for dx and, bit for bit, the same parameter
    gradients as the full backward."""
    _, *grads = backward(dy, cache)
    none, *grads_without_dx = backward(dy, cache, input_grad=False)
    assert none is None
    for g_without_dx, g in zip(grads_without_dx, grads, strict=True):
        assert_same(g_without_dx, g)


def epoch_figures(history: list[dict]) -> list[tuple[float, float, float, float]]:
    """Each epoch's ``(train_loss, train_acc, test_loss, test_acc)`` from a ``fit`` history."""
    return [(r["train_loss"], r["train_acc"], r["test_loss"], r["test_acc"]) for r in history]


def run_example(script: str, cwd: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """``python examples/<script> args`` in ``cwd``, as a user runs it, with ``env`` added to the environment:
    the finished process (output captured as text), whatever its exit status; a hang fails after ``timeout`` s."""
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_backward_is_pure(xp, dtype: str, forward, backward, hosts, rng: np.random.Generator, **kwargs):
    """``forward(*hosts, **kwargs)`` on ``xp`` in ``dtype``, then ``backward`` twice on one ``dy`` drawn from ``rng``:
    the inputs and ``dy`` are left as they were, the two calls give the same gradients bit for bit, and the output
    and every gradient keep the inputs' dtype. Returns ``(inputs on xp, cache)`` for an op's own further checks."""
    arrays = [to_xp(xp, host, dtype) for host in hosts]
    y, cache = forward(*arrays, **kwargs)
    dy_host = rng.standard_normal(tuple(y.shape))
    dy = to_xp(xp, dy_host, dtype)
    grads = backward(dy, cache)
    grads_again = backward(dy, cache)
    for host, dev in (*zip(hosts, arrays, strict=True), (dy_host, dy)):
        assert_same(dev, host.astype(dtype))
    for g, g2 in zip(grads, grads_again, strict=True):
        assert_same(g, g2)
    assert all(a.dtype == arrays[0].dtype for a in (y, *grads))
    return arrays, cache


def _skip_reason(report: pytest.TestReport) -> str:
    """The reason given to ``pytest.skip`` (or a skip mark) for one skipped test."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return message.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Skips summarised by reason, one line each ("140 skipped: cupy: ... no CUDA device ..."), most first.

    pyproject's ``addopts = "-rfE"`` keeps pytest's own short summary to failures and errors, which still print in
    full above; ``-rs`` lists every skipped test again.
    """
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    counts: dict[str, int] = {}
    for report in skipped:
        reason = _skip_reason(report)
        counts[reason] = counts.get(reason, 0) + 1
    terminalreporter.write_sep("-", f"{len(skipped)} skipped, by reason")
    width = len(str(max(counts.values())))
    for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.write_line(f"{count:>{width}} skipped: {reason}")
