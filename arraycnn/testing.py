"""Tools for testing layers: hypothesis strategies, a property test against the engine, the gradient checker.

The engine's own test suite draws its cases from here, and learners who write their own layers can use
the same tools (needs ``hypothesis``: ``pip install 'arraycnn[test]'``):

* strategies: :func:`conv_configs`, :func:`conv_transpose_configs`, :func:`pool_configs` (valid shapes,
  strides and paddings) and :data:`seeds`; data makers :func:`random_array`, :func:`tie_free_array` and
  :func:`tied_array`;
* :func:`assert_matches_engine`: property-test your own forward/backward pair against arraycnn's op;
* :func:`gradcheck` (re-exported from :mod:`arraycnn.gradcheck`): check a backward pass against central
  differences of its own forward, with no reference implementation at all.

**Checking your own layer.** Write ``my_forward(...) -> (out, cache)`` and ``my_backward(...)`` with the
contract of the engine's pair for ``op`` (your cache may hold anything you like):

* ``"conv2d"``: ``my_forward(x, w, b, stride=s, padding=p)``; ``my_backward(dy, cache) -> (dx, dw, db)``;
* ``"maxpool2d"``, ``"avgpool2d"``: ``my_forward(x, size, stride=s, padding=p)``;
  ``my_backward(dy, cache) -> dx`` (average pooling counts the zero padding in its divisor, as the tutorial);
* ``"relu"``: ``my_forward(x)``; ``my_backward(dy, cache) -> dx``;
* ``"dense"``: ``my_forward(x, w, b)`` with ``x (N, D)``, ``w (K, D)`` or the tutorial's ``x (N, H, W, C)``,
  ``w (K, H, W, C)``, output ``(N, K)``; ``my_backward(dy, cache) -> (dx, dw, db)``;
* ``"softmax_cross_entropy"``: ``my_forward(logits, targets)`` with ``logits (N, K)`` and class ids
  ``targets (N,)``, the mean loss as a 0-d array; ``my_backward(dloss, cache) -> dlogits``;
* ``"conv2d_transpose"``: ``my_forward(x, w, b, stride=s, padding=p, output_padding=op)`` with ``x (N, H, W, K)``,
  ``w (K, KH, KW, C)`` (the layout of the convolution it transposes), ``b (C,)``; ``my_backward(dy, cache)
  -> (dx, dw, db)``;
* ``"batch_norm"``: ``my_forward(x, gamma, beta)`` with ``x (N, D)`` or ``(N, H, W, C)`` normalised over every
  axis but the last (biased variance, ``eps = 1e-5``); ``my_backward(dy, cache) -> (dx, dgamma, dbeta)``;
* ``"sigmoid"``: ``my_forward(x)``; ``my_backward(dy, cache) -> dx``;
* ``"mean_squared_error"``: ``my_forward(pred, target)`` (same shape), the mean over every element as a 0-d
  array; ``my_backward(dloss, cache) -> dpred``.

Inputs are float64 arrays of the chosen backend (class ids are int64); ``stride``, ``padding`` and
``size`` are ``(h, w)`` pairs, or plain ints with ``square=True`` (for implementations that, like the
tutorial's, take one number for both axes). Max pooling is drawn on tie-free inputs and, with
``ties=True``, also on inputs with tied maxima (common in practice: after a ReLU whole windows are 0),
where the engine routes each window's gradient to its FIRST maximum in row-major window order.

A deliberately wrong backward is caught, and the report says which gradient differs, for which
configuration, and where. Here ``dW = dYᵀ P`` is computed right but read back with its spatial axes
swapped::

    import numpy as np
    from arraycnn.functional import conv2d_backward, conv2d_forward
    from arraycnn.testing import assert_matches_engine

    def my_conv_backward(dy, cache):
        dx, dw, db = conv2d_backward(dy, cache)
        k, kh, kw, c = dw.shape
        return dx, np.reshape(dw, (k, kw, kh, c)).transpose(0, 2, 1, 3), db   # BUG: dw transposed

    assert_matches_engine(conv2d_forward, my_conv_backward, "conv2d", max_examples=30)

raises, after hypothesis has shrunk the failure to the smallest configuration that shows it::

    EngineMismatchError: your conv2d differs from arraycnn's conv2d_forward / conv2d_backward
      configuration: x (1, 2, 2, 1), w (1, 2, 2, 1), b (1,); stride=(1, 1), padding=(0, 0); data seed 0
      dw: 2 of 4 entries differ, max |yours - engine| = 8.942e-01 (allowed 1e-09·1 + 1e-09·|engine|)
        index                    yours        engine    difference
        (0, 0, 1, 0)         -0.741321      0.152918    -8.942e-01
        (0, 1, 0, 0)          0.152918     -0.741321     8.942e-01

``dx``, ``db`` and the forward output agree, so the bug is in ``dw``, and the worst entries sit at
transposed positions. Where there is no engine op to compare with (a layer of your own invention),
:func:`gradcheck` compares your backward with numeric derivatives of your forward instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from . import functional as F
from ._checks import check_int, mismatches
from .backend import get_namespace, to_device, to_numpy
from .gradcheck import GradcheckError, GradcheckResult, gradcheck

__all__ = [
    "OPS",
    "ConvConfig",
    "ConvTransposeConfig",
    "EngineMismatchError",
    "GradcheckError",
    "GradcheckResult",
    "PoolConfig",
    "assert_matches_engine",
    "conv_configs",
    "conv_transpose_configs",
    "gradcheck",
    "pool_configs",
    "random_array",
    "seeds",
    "tie_free_array",
    "tied_array",
]


@dataclass(frozen=True)
class ConvConfig:
    """A valid convolution: ``x (N, H, W, C)``, ``w (K, KH, KW, C)``, per-axis stride and padding."""

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class PoolConfig:
    """A valid pooling: ``x (N, H, W, C)``, window ``size``, ``stride`` and ``padding < size`` per axis."""

    x_shape: tuple[int, int, int, int]
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def _axis(draw: st.DrawFn, max_size: int, max_kernel: int, max_stride: int, max_padding: int,
          padding_below_kernel: bool) -> tuple[int, int, int, int]:
    """(size, kernel, stride, padding) along one axis with ``kernel <= size + 2*padding``."""
    kernel = draw(st.integers(1, max_kernel))
    pad_cap = min(max_padding, kernel - 1) if padding_below_kernel else max_padding
    padding = draw(st.integers(0, pad_cap))
    size = draw(st.integers(max(1, kernel - 2 * padding), max(max_size, kernel - 2 * padding)))
    stride = draw(st.integers(1, max_stride))
    return size, kernel, stride, padding


@st.composite
def conv_configs(draw: st.DrawFn, max_n: int = 4, max_hw: int = 16, max_c: int = 4, max_k: int = 5,
                 max_kernel: int = 5, max_stride: int = 3, max_padding: int = 3) -> ConvConfig:
    """Valid conv configurations: N 1-4, H, W 1-16, C 1-4, K 1-5, KH, KW 1-5, stride 1-3, padding 0-3."""
    h, kh, sh, ph = _axis(draw, max_hw, max_kernel, max_stride, max_padding, padding_below_kernel=False)
    w, kw, sw, pw = _axis(draw, max_hw, max_kernel, max_stride, max_padding, padding_below_kernel=False)
    n, c, k = draw(st.integers(1, max_n)), draw(st.integers(1, max_c)), draw(st.integers(1, max_k))
    return ConvConfig((n, h, w, c), (k, kh, kw, c), (sh, sw), (ph, pw))


@dataclass(frozen=True)
class ConvTransposeConfig:
    """A valid transposed convolution: ``x (N, H, W, K)``, ``w (K, KH, KW, C)``, per-axis stride, padding and
    ``output_padding < stride``; ``y_shape (N, OH, OW, C)`` with ``OH = (H - 1)*sh - 2*ph + KH + oph >= 1``."""

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    y_shape: tuple[int, int, int, int]


@st.composite
def conv_transpose_configs(draw: st.DrawFn, square: bool = False, **conv_limits: int) -> ConvTransposeConfig:
    """Transposed convolutions of drawn :func:`conv_configs` (``conv_limits`` passed on): ``x`` has the conv's
    output shape, ``output_padding`` is drawn in ``[0, stride)`` where the output stays non-empty (its
    remainder ``(H + 2p - KH) mod s`` gives back the conv's input size). ``square``: equal on both axes."""
    cfg = draw(conv_configs(**conv_limits))
    cfg = _square_conv(cfg) if square else cfg
    n, h, w, c = cfg.x_shape
    k, kh, kw, _ = cfg.w_shape
    (sh, sw), (ph, pw) = cfg.stride, cfg.padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    base = ((oh - 1) * sh - 2 * ph + kh, (ow - 1) * sw - 2 * pw + kw)      # output size without output_padding
    lows = (max(0, 1 - base[0]), max(0, 1 - base[1]))
    if square:
        op = draw(st.integers(max(lows), sh - 1))
        oph, opw = op, op
    else:
        oph, opw = draw(st.integers(lows[0], sh - 1)), draw(st.integers(lows[1], sw - 1))
    return ConvTransposeConfig((n, oh, ow, k), cfg.w_shape, cfg.stride, cfg.padding, (oph, opw),
                               (n, base[0] + oph, base[1] + opw, c))


@st.composite
def pool_configs(draw: st.DrawFn, max_n: int = 3, max_hw: int = 12, max_c: int = 3, max_size: int = 4,
                 max_stride: int = 3, max_padding: int = 2) -> PoolConfig:
    """Valid pooling configurations (padding smaller than the window, as PyTorch and the engine require)."""
    h, kh, sh, ph = _axis(draw, max_hw, max_size, max_stride, max_padding, padding_below_kernel=True)
    w, kw, sw, pw = _axis(draw, max_hw, max_size, max_stride, max_padding, padding_below_kernel=True)
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    return PoolConfig((n, h, w, c), (kh, kw), (sh, sw), (ph, pw))


def random_array(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Standard-normal float64 host array of ``shape`` times ``scale`` from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape) * scale


def tie_free_array(seed: int, shape: tuple[int, ...], gap: float = 1e-2) -> np.ndarray:
    """Float64 host array whose entries are all distinct, at least ``gap`` apart, in random order.

    Max pooling has a unique maximum in every window, and a central difference with ``eps << gap``
    never crosses a tie, so oracles and numeric gradients are unambiguous.
    """
    size = int(np.prod(shape))
    values = (np.arange(size) - size / 2) * gap
    return np.random.default_rng(seed).permutation(values).reshape(shape)


seeds = st.integers(0, 2**32 - 1)
"""Seeds for :func:`random_array` / :func:`tie_free_array` (drawn by hypothesis, so failures shrink and replay)."""


def tied_array(seed: int, shape: tuple[int, ...], levels: int = 3) -> np.ndarray:
    """Float64 host array of small integers ``0 .. levels-1``: many pooling windows hold tied maxima."""
    return np.random.default_rng(seed).integers(0, levels, size=shape).astype(np.float64)


# --------------------------------------------------------------------------- assert_matches_engine

OPS = ("conv2d", "maxpool2d", "avgpool2d", "relu", "dense", "softmax_cross_entropy", "conv2d_transpose",
       "batch_norm", "sigmoid", "mean_squared_error")


class EngineMismatchError(AssertionError):
    """Raised by :func:`assert_matches_engine`: which output or gradient differs, for which configuration, where."""


@dataclass(frozen=True)
class Case:
    """One drawn check: the named input shapes, the op's hyper-parameters and the seed of the data.

    ``ties`` marks max-pooling inputs drawn with tied maxima; ``dloss`` is the upstream gradient of a loss.
    """

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    hyper: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    ties: bool = False
    dloss: float = 1.0

    def __str__(self) -> str:
        parts = [", ".join(f"{name} {shape}" for name, shape in self.shapes)]
        if self.hyper:
            parts.append(", ".join(f"{name}={value}" for name, value in self.hyper))
        parts.append(f"data seed {self.seed}")
        text = "; ".join(parts)
        if self.dloss != 1.0:
            text += f"; dloss={self.dloss}"
        if self.ties:
            text += "\n  x has tied maxima: the engine routes each window's gradient to its FIRST maximum (row-major)"
        return text


@dataclass(frozen=True)
class _OpSpec:
    """An engine op: its pair, the names of its output and gradients, and how hyper-parameters reach it."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    output: str
    grads: tuple[str, ...]
    positional: tuple[str, ...] = ()          # hyper-parameters passed positionally (the pooling size)
    loss: bool = False                        # dout is a number (the upstream dloss), not a random array


_SPECS = {
    "conv2d": _OpSpec(F.conv2d_forward, F.conv2d_backward, "y", ("dx", "dw", "db")),
    "maxpool2d": _OpSpec(F.maxpool2d_forward, F.maxpool2d_backward, "y", ("dx",), positional=("size",)),
    "avgpool2d": _OpSpec(F.avgpool2d_forward, F.avgpool2d_backward, "y", ("dx",), positional=("size",)),
    "relu": _OpSpec(F.relu_forward, F.relu_backward, "y", ("dx",)),
    "dense": _OpSpec(F.dense_forward, F.dense_backward, "y", ("dx", "dw", "db")),
    "softmax_cross_entropy": _OpSpec(F.softmax_cross_entropy_forward, F.softmax_cross_entropy_backward, "loss",
                                     ("dlogits",), loss=True),
    "conv2d_transpose": _OpSpec(F.conv2d_transpose_forward, F.conv2d_transpose_backward, "y", ("dx", "dw", "db")),
    "batch_norm": _OpSpec(F.batch_norm_forward, F.batch_norm_backward, "y", ("dx", "dgamma", "dbeta")),
    "sigmoid": _OpSpec(F.sigmoid_forward, F.sigmoid_backward, "y", ("dx",)),
    "mean_squared_error": _OpSpec(F.mean_squared_error_forward, F.mean_squared_error_backward, "loss", ("dpred",),
                                  loss=True),
}


def _hyper(square: bool, **pairs: tuple[int, int]) -> tuple[tuple[str, Any], ...]:
    """``(h, w)`` pairs as drawn, or their first entry when ``square`` (both entries are equal then)."""
    return tuple((name, pair[0] if square else pair) for name, pair in pairs.items())


def _square_conv(cfg: ConvConfig) -> ConvConfig:
    """``cfg`` with the height's stride and padding on both axes (width grown so the kernel still fits)."""
    n, h, w, c = cfg.x_shape
    kw = cfg.w_shape[2]
    s, p = cfg.stride[0], cfg.padding[0]
    return replace(cfg, x_shape=(n, h, max(w, kw - 2 * p), c), stride=(s, s), padding=(p, p))


def _square_pool(cfg: PoolConfig) -> PoolConfig:
    """``cfg`` with the height's window, stride and padding on both axes (width grown so the window fits)."""
    n, h, w, c = cfg.x_shape
    k, s, p = cfg.size[0], cfg.stride[0], cfg.padding[0]
    return replace(cfg, x_shape=(n, h, max(w, k - 2 * p), c), size=(k, k), stride=(s, s), padding=(p, p))


@st.composite
def _conv_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    cfg = draw(conv_configs())
    cfg = _square_conv(cfg) if square else cfg
    shapes = (("x", cfg.x_shape), ("w", cfg.w_shape), ("b", cfg.w_shape[:1]))
    return Case(shapes, _hyper(square, stride=cfg.stride, padding=cfg.padding), draw(seeds))


@st.composite
def _pool_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    cfg = draw(pool_configs())
    cfg = _square_pool(cfg) if square else cfg
    hyper = _hyper(square, size=cfg.size, stride=cfg.stride, padding=cfg.padding)
    return Case((("x", cfg.x_shape),), hyper, draw(seeds), ties=ties and draw(st.booleans()))


@st.composite
def _relu_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    return Case((("x", shape),), seed=draw(seeds))


@st.composite
def _dense_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    features = draw(st.one_of(st.tuples(st.integers(1, 12)), st.tuples(*[st.integers(1, 4)] * 3)))
    shapes = (("x", (n, *features)), ("w", (k, *features)), ("b", (k,)))
    return Case(shapes, seed=draw(seeds))


@st.composite
def _softmax_ce_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    n, k = draw(st.integers(1, 6)), draw(st.integers(2, 10))
    dloss = draw(st.sampled_from([1.0, 0.5, 3.0]))
    return Case((("logits", (n, k)), ("targets", (n,))), seed=draw(seeds), dloss=dloss)


@st.composite
def _conv_transpose_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    cfg = draw(conv_transpose_configs(square=square))
    shapes = (("x", cfg.x_shape), ("w", cfg.w_shape), ("b", cfg.w_shape[3:]))
    hyper = _hyper(square, stride=cfg.stride, padding=cfg.padding, output_padding=cfg.output_padding)
    return Case(shapes, hyper, draw(seeds))


@st.composite
def _batch_norm_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    x_shape = draw(st.one_of(st.tuples(st.integers(1, 8), st.integers(1, 6)),
                             st.tuples(*[st.integers(1, 4)] * 4)))
    c = x_shape[-1]
    return Case((("x", x_shape), ("gamma", (c,)), ("beta", (c,))), seed=draw(seeds))


@st.composite
def _mse_cases(draw: st.DrawFn, square: bool, ties: bool) -> Case:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    dloss = draw(st.sampled_from([1.0, 0.5, 3.0]))
    return Case((("pred", shape), ("target", shape)), seed=draw(seeds), dloss=dloss)


_CASES = {"conv2d": _conv_cases, "maxpool2d": _pool_cases, "avgpool2d": _pool_cases, "relu": _relu_cases,
          "dense": _dense_cases, "softmax_cross_entropy": _softmax_ce_cases,
          "conv2d_transpose": _conv_transpose_cases, "batch_norm": _batch_norm_cases, "sigmoid": _relu_cases,
          "mean_squared_error": _mse_cases}


def _host_inputs(op: str, case: Case) -> list[np.ndarray]:
    """The case's inputs as host arrays: float64 data from its seed (int64 class ids for ``targets``)."""
    shapes = dict(case.shapes)
    arrays = []
    for i, (name, shape) in enumerate(case.shapes):
        if name == "targets":
            k = shapes["logits"][1]
            arrays.append(np.random.default_rng(case.seed + i).integers(0, k, size=shape))
        elif op == "maxpool2d":
            arrays.append((tied_array if case.ties else tie_free_array)(case.seed + i, shape))
        else:
            arrays.append(random_array(case.seed + i, shape))
    return arrays


def _device(host: list[np.ndarray], xp: Any) -> list[Any]:
    """Fresh device copies (float64, ids unchanged): each side gets its own, so an in-place op harms no one."""
    return [to_device(a, xp, "float64" if a.dtype.kind == "f" else None) for a in host]


def _call(what: str, fn: Callable[..., Any], case: Case, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with any exception it raises re-raised as a mismatch naming the configuration."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise EngineMismatchError(f"your {what} raised {type(exc).__name__}: {exc}\n"
                                  f"  configuration: {case}") from exc


def _as_grads(grads: Any) -> tuple[Any, ...]:
    return tuple(grads) if isinstance(grads, tuple | list) else (grads,)


@dataclass(frozen=True)
class _Tolerance:
    rtol: float
    atol: float
    n_worst: int


def _compare(name: str, mine: Any, ref: Any, tol: _Tolerance) -> str | None:
    """None when ``mine`` matches ``ref`` in float64, else a paragraph saying how much and where it differs.

    An entry differs when ``|mine - ref| > atol·scale + rtol·|ref|`` with ``scale = max(1, max|ref|)``.
    """
    expected = to_numpy(ref).astype(np.float64)
    if mine is None:
        return f"  {name}: yours is None, the engine's has shape {expected.shape}"
    actual = np.asarray(to_numpy(mine), dtype=np.float64)
    if actual.shape != expected.shape:
        return f"  {name}: yours has shape {actual.shape}, the engine's {expected.shape}"
    err = np.abs(actual - expected)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    bad = mismatches(actual, expected, tol.rtol, tol.atol)     # NaN counts as a difference
    if not bad.any():
        return None
    err = np.where(np.isnan(err), np.inf, err).reshape(-1)
    worst = np.flatnonzero(bad)[np.argsort(-err[bad.reshape(-1)], kind="stable")][: tol.n_worst]
    lines = [f"  {name}: {int(bad.sum())} of {expected.size} entries differ, max |yours - engine| = "
             f"{float(err.max()):.3e} (allowed {tol.atol:g}·{scale:.3g} + {tol.rtol:g}·|engine|)",
             f"    {'index':<16} {'yours':>13} {'engine':>13} {'difference':>13}"]
    for flat in worst:
        idx = tuple(int(i) for i in np.unravel_index(flat, expected.shape))
        a, e = float(actual.reshape(-1)[flat]), float(expected.reshape(-1)[flat])
        lines.append(f"    {idx!s:<16} {a:>13.6g} {e:>13.6g} {a - e:>13.3e}")
    return "\n".join(lines)


def _check_case(op: str, my_forward: Callable[..., Any], my_backward: Callable[..., Any], xp: Any, case: Case,
                tol: _Tolerance) -> None:
    """Run the engine's pair and the learner's on the same inputs; raise EngineMismatchError listing differences."""
    spec = _SPECS[op]
    host = _host_inputs(op, case)
    positional = [value for name, value in case.hyper if name in spec.positional]
    keywords = {name: value for name, value in case.hyper if name not in spec.positional}
    out_ref, cache_ref = spec.forward(*_device(host, xp), *positional, **keywords)
    result = _call("forward", my_forward, case, *_device(host, xp), *positional, **keywords)
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise EngineMismatchError(f"your forward must return (output, cache) like arraycnn's "
                                  f"{spec.forward.__name__}, got {type(result).__name__}\n  configuration: {case}")
    out, cache = result
    problems = [_compare(spec.output, out, out_ref, tol)]
    if np.shape(to_numpy(out)) != tuple(out_ref.shape):
        problems.append("  backward not compared: your forward's output has the wrong shape")
    else:
        problems += _compare_backward(spec, my_backward, cache, cache_ref, tuple(out_ref.shape), xp, case, tol)
    problems = [p for p in problems if p is not None]
    if problems:
        header = f"your {op} differs from arraycnn's {spec.forward.__name__} / {spec.backward.__name__}"
        raise EngineMismatchError("\n".join([header, f"  configuration: {case}", *problems]))


def _compare_backward(spec: _OpSpec, my_backward: Callable[..., Any], cache: Any, cache_ref: Any,
                      out_shape: tuple[int, ...], xp: Any, case: Case, tol: _Tolerance) -> list[str | None]:
    """Both backward passes for one random upstream gradient (or ``case.dloss`` for a loss), compared."""
    dout = case.dloss if spec.loss else to_device(random_array(case.seed + 100, out_shape), xp, "float64")
    grads_ref = _as_grads(spec.backward(dout, cache_ref))
    grads = _as_grads(_call("backward", my_backward, case, dout, cache))
    if len(grads) != len(spec.grads):
        return [f"  backward: yours returned {len(grads)} gradient(s), the engine's returns "
                f"{len(spec.grads)} ({', '.join(spec.grads)})"]
    return [_compare(name, g, g_ref, tol) for name, g, g_ref in zip(spec.grads, grads, grads_ref, strict=True)]


def assert_matches_engine(
    my_forward: Callable[..., Any],
    my_backward: Callable[..., Any],
    op: str,
    *,
    backend: str = "numpy",
    max_examples: int = 50,
    square: bool = False,
    ties: bool = True,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    n_worst: int = 5,
    seed: int | None = None,
) -> None:
    """Property-test ``my_forward``/``my_backward`` against arraycnn's own ``op`` on drawn configurations.

    ``op`` is one of :data:`OPS`; the calling contract for each is in the module docstring. For each of
    ``max_examples`` hypothesis-drawn valid configurations (shrunk to the smallest on failure), both pairs
    get the same float64 inputs on ``backend`` and the same random upstream gradient; the forward output
    and every gradient must agree to ``|yours - engine| <= atol·max(1, max|engine|) + rtol·|engine|``.
    The defaults (1e-9) sit far above float64 summation-order noise (~1e-15 relative for these sizes)
    and far below any real bug. ``square=True`` passes ``stride``/``padding``/``size`` as ints equal on
    both axes; ``ties=False`` keeps max pooling on tie-free inputs only (for another tie rule than the
    engine's first maximum). ``seed`` makes the draws reproducible.

    Raises :class:`EngineMismatchError` (an AssertionError) naming the output or gradient that differs,
    the configuration, and its ``n_worst`` worst entries; also when your function raises or returns the
    wrong structure. ``ValueError``/``TypeError`` for bad arguments.
    """
    if not (callable(my_forward) and callable(my_backward)):
        raise TypeError("my_forward and my_backward must be callables (your op's forward and backward functions)")
    if op not in _SPECS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    max_examples = check_int(max_examples, "max_examples", 1)
    xp = get_namespace(backend)
    tol = _Tolerance(rtol, atol, n_worst)

    @settings(max_examples=max_examples, deadline=None, database=None, report_multiple_bugs=False,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=_CASES[op](square, ties))
    def matches_engine(case: Case) -> None:
        _check_case(op, my_forward, my_backward, xp, case, tol)

    if seed is not None:
        matches_engine = hypothesis_seed(seed)(matches_engine)
    matches_engine()
