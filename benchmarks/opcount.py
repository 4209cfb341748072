"""Count the array operations a piece of arraycnn issues, on any Array API backend (array-api-strict included).

On a GPU every operation is a kernel launch costing ~5-15 µs of host time whatever the batch size, so a step
of small kernels is bound by their number, not by the arithmetic. :func:`counting_namespace` wraps a
namespace so that every array it makes is a :class:`Counted` proxy; every namespace function, operator,
in-place operator, index and host read on those proxies is then recorded with the place in arraycnn that
issued it. A model built on the wrapped namespace runs unchanged (``tutorial_cnn(backend=counting_ns)``)::

    ns = counting_namespace("numpy")
    model = tutorial_cnn(backend=ns)
    with ns.counter.recording(model) as ops:
        model.train_step(x, y, Adam())
    ops.totals()  # {"kernel": ..., "view": ..., "host read": ..., "transfer in": ...}

Categories (what a GPU pays):

* ``kernel``: an op that computes or copies (an element-wise op, a reduction, a matmul, ``concat``, a
  ``zeros``, a ``__setitem__``, an in-place ``+=``): one launch or more on a GPU;
* ``view``: a basic slice, ``reshape``, ``permute_dims``, ``.T``/``.mT``, ``expand_dims``, ``squeeze``,
  ``broadcast_to``: no launch where the result is a view (on CuPy a ``reshape`` of a non-contiguous array
  copies, which this count cannot see);
* ``host read``: the device waits and a value comes back (``float(x)``, ``int(x)``, ``bool(x)``, DLPack
  export or ``__array__``, as :func:`arraycnn.backend.to_numpy` does);
* ``transfer in``: ``asarray`` of host data.

Each op is attributed to a *piece* -- ``"<i> <Layer> forward|backward"`` inside a layer of the recorded
model, ``"loss forward|backward"``, ``"optimizer"``, else the innermost arraycnn function -- and to the
innermost arraycnn function that issued it (``"windows.scatter_windows"``), found on the call stack; the
backend seam's functions (``to_numpy``, ``to_device``) count for their caller.

The model runs on the wrapped namespace's own name, which no backend-specific path recognises: the count is
that of the portable path, the one a GPU runs (one piece, no threads, no chunks).
"""

from __future__ import annotations

import argparse
import operator
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import array_api_compat

KERNEL, VIEW, HOST_READ, TRANSFER_IN = "kernel", "view", "host read", "transfer in"
CATEGORIES = (KERNEL, VIEW, HOST_READ, TRANSFER_IN)
VIEW_FUNCTIONS = frozenset({"reshape", "permute_dims", "matrix_transpose", "expand_dims", "squeeze",
                            "broadcast_to", "broadcast_arrays"})
NOT_OPS = frozenset({"isdtype", "result_type", "can_cast", "finfo", "iinfo", "__array_namespace_info__"})
BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
          "rshift")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
UNARY = ("neg", "pos", "abs", "invert")
PACKAGE = str(Path(__file__).resolve().parent.parent / "arraycnn")
LAYER_METHODS = ("forward", "backward")


# -- the record -----------------------------------------------------------------------------------------
@dataclass
class OpCounts:
    """The ops recorded: ``(category, piece, function, op name) -> count``."""

    counts: Counter = field(default_factory=Counter)

    def add(self, category: str, piece: str, function: str, op: str) -> None:
        self.counts[(category, piece, function, op)] += 1

    def totals(self) -> dict[str, int]:
        """Count per category, every category present (0 when none)."""
        out = dict.fromkeys(CATEGORIES, 0)
        for (category, *_), n in self.counts.items():
            out[category] += n
        return out

    def by(self, key: str, category: str = KERNEL) -> dict[str, int]:
        """Count of ``category`` per ``key`` (``"piece"``, ``"function"`` or ``"op"``), in first-seen order."""
        index = {"piece": 1, "function": 2, "op": 3}[key]
        out: dict[str, int] = {}
        for k, n in self.counts.items():
            if k[0] == category:
                out[k[index]] = out.get(k[index], 0) + n
        return out

    def piece_table(self) -> dict[str, dict[str, int]]:
        """``piece -> {category: count}``, pieces in first-seen order."""
        out: dict[str, dict[str, int]] = {}
        for (category, piece, _, _), n in self.counts.items():
            row = out.setdefault(piece, dict.fromkeys(CATEGORIES, 0))
            row[category] += n
        return out


class OpRecorder:
    """Where the ops go while :meth:`recording`; attributes a call site to a piece of the recorded model."""

    def __init__(self) -> None:
        self.current: OpCounts | None = None
        self._layers: dict[int, str] = {}

    @contextmanager
    def recording(self, model: Any = None) -> Iterator[OpCounts]:
        """Record every op issued inside the block; layers of ``model`` name their pieces by index."""
        ops = OpCounts()
        layers = getattr(model, "layers", None) or []
        self.current, self._layers = ops, {id(layer): f"{i} {type(layer).__name__}" for i, layer in enumerate(layers)}
        try:
            yield ops
        finally:
            self.current, self._layers = None, {}

    def record(self, category: str, op: str) -> None:
        if self.current is None:
            return
        piece, function = self._site(sys._getframe(2))
        self.current.add(category, piece, function, op)

    def _site(self, frame: types.FrameType | None) -> tuple[str, str]:
        """(piece, innermost arraycnn function) of the call stack above ``frame``."""
        function = piece = None
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(PACKAGE) and Path(path).stem != "backend":  # the seam issues for its caller
                module = Path(path).stem
                name = f"{module}.{frame.f_code.co_qualname.split('.<locals>')[0]}"
                function = function or name
                owner = frame.f_locals.get("self")
                if piece is None and frame.f_code.co_name in LAYER_METHODS and id(owner) in self._layers:
                    piece = f"{self._layers[id(owner)]} {frame.f_code.co_name}"
                elif piece is None and module == "loss":
                    piece = "loss " + ("backward" if "backward" in frame.f_code.co_name else "forward")
                elif piece is None and module == "optim":
                    piece = "optimizer"
            frame = frame.f_back
        function = function or "(outside arraycnn)"
        return piece or function, function


# -- the proxy ------------------------------------------------------------------------------------------
def _unwrap(x: Any) -> Any:
    if isinstance(x, Counted):
        return x._a
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    return x


def _has_array(x: Any) -> bool:
    if isinstance(x, Counted):
        return True
    return isinstance(x, tuple | list) and any(_has_array(v) for v in x)


class Counted:
    """An array of the wrapped namespace; every operation on it is recorded, its results are Counted too."""

    __slots__ = ("_a", "_ns")
    __array_ufunc__ = None  # `numpy_scalar * counted` defers to Counted.__rmul__ instead of reading it back

    def __init__(self, a: Any, ns: CountingNamespace) -> None:
        self._a, self._ns = a, ns

    # metadata: free
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    device = property(lambda self: self._a.device)

    def __array_namespace__(self, api_version: str | None = None) -> CountingNamespace:
        return self._ns

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"Counted({self._a!r})"

    # views
    @property
    def T(self) -> Counted:
        return self._ns._call(VIEW, ".T", lambda: self._a.T)

    @property
    def mT(self) -> Counted:
        return self._ns._call(VIEW, ".mT", lambda: self._a.mT)

    def __getitem__(self, key: Any) -> Counted:
        category = KERNEL if _has_array(key) else VIEW  # an array index gathers
        return self._ns._call(category, "__getitem__", lambda: self._a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ns.counter.record(KERNEL, "__setitem__")
        self._a[_unwrap(key)] = _unwrap(value)

    def to_device(self, device: Any, /, **kwargs: Any) -> Counted:
        return self._ns._call(KERNEL, "to_device", lambda: self._a.to_device(device, **kwargs))

    # host reads
    def _read(self, convert: Callable[[Any], Any], name: str) -> Any:
        value = convert(self._a)  # a conversion the inner array refuses is no read
        self._ns.counter.record(HOST_READ, name)
        return value

    def __float__(self) -> float:
        return self._read(float, "float()")

    def __int__(self) -> int:
        return self._read(int, "int()")

    def __index__(self) -> int:
        return self._read(operator.index, "index()")

    def __bool__(self) -> bool:
        return self._read(bool, "bool()")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        import numpy as np

        return self._read(lambda a: np.asarray(a, dtype=dtype), "__array__")

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._read(lambda a: a.__dlpack__(*args, **kwargs), "__dlpack__")

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()


def _binary(name: str, inplace: bool = False) -> Callable[..., Any]:
    dunder = f"__{name}__"

    def method(self: Counted, other: Any) -> Any:
        result = getattr(self._a, dunder)(_unwrap(other))
        if result is NotImplemented:
            return result
        self._ns.counter.record(KERNEL, dunder)
        if inplace:  # the standard's in-place operators update self (NumPy returns the same array)
            self._a = result
            return self
        return self._ns._wrap(result)

    method.__name__ = dunder
    return method


def _unary(name: str) -> Callable[..., Any]:
    dunder = f"__{name}__"

    def method(self: Counted) -> Any:
        return self._ns._call(KERNEL, dunder, lambda: getattr(self._a, dunder)())

    method.__name__ = dunder
    return method


for _name in BINARY:
    setattr(Counted, f"__{_name}__", _binary(_name))
    setattr(Counted, f"__r{_name}__", _binary(f"r{_name}"))
    setattr(Counted, f"__i{_name}__", _binary(f"i{_name}", inplace=True))
for _name in COMPARISONS:
    setattr(Counted, f"__{_name}__", _binary(_name))
for _name in UNARY:
    setattr(Counted, f"__{_name}__", _unary(_name))
Counted.__hash__ = object.__hash__  # __eq__ is an array op; identity stays hashable


# -- the namespace --------------------------------------------------------------------------------------
class CountingNamespace(types.ModuleType):
    """``inner``'s functions and constants; arrays in and out are :class:`Counted`, every call is recorded."""

    def __init__(self, inner: types.ModuleType, counter: OpRecorder | None = None) -> None:
        super().__init__(f"opcount.{inner.__name__.removeprefix('array_api_compat.')}")
        self.inner = inner
        self.counter = counter or OpRecorder()

    def _wrap(self, result: Any) -> Any:
        if isinstance(result, tuple | list):
            return type(result)(self._wrap(r) for r in result)
        if array_api_compat.is_array_api_obj(result) and not isinstance(result, Counted):
            return Counted(result, self)
        return result

    def _call(self, category: str, name: str, fn: Callable[[], Any]) -> Any:
        result = self._wrap(fn())
        if isinstance(result, Counted) or (isinstance(result, tuple | list) and _has_array(result)):
            self.counter.record(category, name)
        return result

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in NOT_OPS or isinstance(attr, type) or not callable(attr) or name.startswith("__"):
            return attr  # dtypes, constants, info functions
        category = VIEW if name in VIEW_FUNCTIONS else KERNEL

        def call(*args: Any, **kwargs: Any) -> Any:
            cat = TRANSFER_IN if name in ("asarray", "from_dlpack") and not _has_array(args[:1]) else category
            return self._call(cat, name, lambda: attr(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

        call.__name__ = name
        return call


def counting_namespace(backend: str | types.ModuleType = "numpy") -> CountingNamespace:
    """A counting wrapper around ``backend``'s namespace (a name as :func:`arraycnn.backend.get_namespace`
    takes, or a namespace)."""
    from arraycnn.backend import get_namespace

    inner = backend if isinstance(backend, types.ModuleType) else get_namespace(backend)
    return CountingNamespace(inner)


# -- one training step of the tutorial's network --------------------------------------------------------
@contextmanager
def _views_as_inner() -> Iterator[None]:
    """Let :meth:`arraycnn.optim.Optimizer.adopt` see through the wrapper: a Counted slice IS the inner
    library's slice (in-place ops go to the same array), so views exactly where the inner library has them."""
    from arraycnn import optim

    original = optim.slices_are_views
    optim.slices_are_views = lambda xp: original(xp.inner if isinstance(xp, CountingNamespace) else xp)
    try:
        yield
    finally:
        optim.slices_are_views = original


def adopt_parameters(model: Any, optimizer: Any) -> None:
    """Hand the model's parameters to ``optimizer.adopt`` and put the views it returns into the layers."""
    views = iter(optimizer.adopt(model.parameters()))
    for layer in model.layers:
        layer.params = {name: next(views) for name in layer.params}


def count_train_step(backend: str = "numpy", batch_size: int = 32, adopt: bool = False, seed: int = 0) -> OpCounts:
    """The ops of one ``model.execution.train_step`` (what ``fit`` calls) of ``tutorial_cnn`` with Adam at
    ``batch_size``, after a first step (which creates the optimiser's state). ``adopt``: the parameters are
    first adopted by the optimiser (:func:`adopt_parameters`)."""
    from arraycnn.models import tutorial_cnn
    from arraycnn.optim import Adam
    from benchmarks.peers import synthetic_data

    ns = counting_namespace(backend)
    model = tutorial_cnn(backend=ns, seed=seed)
    optimizer = Adam()
    with _views_as_inner():
        if adopt:
            adopt_parameters(model, optimizer)
        images, labels = synthetic_data(batch_size)
        x, y = model.to_device_inputs(images), model.to_device_targets(labels)
        model.execution.train_step(model, x, y, optimizer)
        with ns.counter.recording(model) as ops:
            model.execution.train_step(model, x, y, optimizer)
    return ops


def count_evaluate(backend: str = "numpy", images: int = 64, batch_size: int = 32, seed: int = 0) -> OpCounts:
    """The ops of ``model.evaluate`` on ``images`` host images in batches of ``batch_size`` (host reads per batch)."""
    from arraycnn.models import tutorial_cnn
    from benchmarks.peers import synthetic_data

    ns = counting_namespace(backend)
    model = tutorial_cnn(backend=ns, seed=seed)
    host_images, labels = synthetic_data(images)
    with ns.counter.recording(model) as ops:
        model.evaluate(host_images, labels, batch_size=batch_size)
    return ops


def count_fit(backend: str = "numpy", batches: int = 10, batch_size: int = 32, seed: int = 0) -> OpCounts:
    """The ops of ``fit`` for one epoch of ``batches`` batches with plain progress lines (a progress point
    every ``ceil(batches / 5)`` batches) and a test set of one batch."""
    from arraycnn import data
    from arraycnn.models import tutorial_cnn
    from arraycnn.optim import Adam
    from arraycnn.train import fit
    from benchmarks.peers import synthetic_data

    ns = counting_namespace(backend)
    model = tutorial_cnn(backend=ns, seed=seed)
    train, test = synthetic_data(batches * batch_size, seed=seed), synthetic_data(batch_size, seed=seed + 1)
    dataset = data.Dataset("fashion_mnist", "synthetic", *train, *test, "noise images")
    with ns.counter.recording(model) as ops:
        fit(model, dataset, Adam(), epochs=1, batch_size=batch_size, seed=seed, progress=True, log=lambda _: None)
    return ops


# -- the report -----------------------------------------------------------------------------------------
LAUNCH_US = (5, 15)  # host time per kernel launch on a GPU, µs (the range)


def summary_line(ops: OpCounts, batch_size: int) -> str:
    """``'train_step at batch 32: 217 kernel ops (optimizer 22), 131 views, 0 host reads: 1.1-3.3 ms of launches'``."""
    t = ops.totals()
    optimizer = ops.piece_table().get("optimizer", {}).get(KERNEL, 0)
    low, high = (t[KERNEL] * us / 1000 for us in LAUNCH_US)
    return (f"train_step at batch {batch_size}: {t[KERNEL]} kernel ops (optimizer {optimizer}), {t[VIEW]} views, "
            f"{t[HOST_READ]} host reads: {low:.1f}-{high:.1f} ms of launches at {LAUNCH_US[0]}-{LAUNCH_US[1]} µs each")


def train_step_line(backend: str = "numpy", batch_size: int = 32) -> str:
    """:func:`summary_line` of :func:`count_train_step` at ``batch_size``: the line the CPU and GPU reports print."""
    return summary_line(count_train_step(backend, batch_size), batch_size)


def report(step: OpCounts, adopted: OpCounts, evaluate: OpCounts, fitted: OpCounts, backend: str,
           batch_size: int, eval_batches: int) -> str:
    """Markdown: totals, ops per piece of the step, kernels per function, host reads of ``evaluate``."""
    from benchmarks import common

    pieces = step.piece_table()
    rows = [[piece, str(c[KERNEL]), str(c[VIEW]), str(c[HOST_READ])] for piece, c in pieces.items()]
    t = step.totals()
    rows.append(["**whole step**", f"**{t[KERNEL]}**", f"**{t[VIEW]}**", f"**{t[HOST_READ]}**"])
    functions = sorted(step.by("function").items(), key=lambda kv: -kv[1])
    reads = evaluate.totals()[HOST_READ]
    return "\n".join([
        f"Counted {common.today()} with `python -m benchmarks.opcount` (tutorial network, Adam, {backend} "
        f"behind the counting wrapper: the portable path a GPU runs, one piece, no threads).",
        "",
        f"- {summary_line(step, batch_size)}.",
        f"- With the parameters adopted by the optimiser (views of its flat buffer): "
        f"{summary_line(adopted, batch_size)}.",
        f"- `evaluate`: {reads} host reads for {eval_batches} batches ({reads / eval_batches:g} per batch).",
        "- `fit`, one epoch of 10 batches with plain progress lines and a one-batch test set, host reads per "
        "function: " + ", ".join(f"`{f}` {n}" for f, n in fitted.by("function", HOST_READ).items())
        + ".",
        "",
        common.markdown_table(["piece of one training step", "kernel ops", "views", "host reads"], rows),
        "",
        common.markdown_table(["function issuing the kernel ops", "kernel ops"],
                              [[f"`{name}`", str(n)] for name, n in functions]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks import common

    p = argparse.ArgumentParser(prog="python -m benchmarks.opcount", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="numpy", help="the namespace behind the wrapper (default numpy)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    step = count_train_step(args.backend, args.batch_size)
    adopted = count_train_step(args.backend, args.batch_size, adopt=True)
    evaluate = count_evaluate(args.backend, images=2 * args.batch_size, batch_size=args.batch_size)
    fitted = count_fit(args.backend, batch_size=args.batch_size)
    text = report(step, adopted, evaluate, fitted, args.backend, args.batch_size, eval_batches=2)
    common.publish(text, args.docs, "opcount-table", args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
