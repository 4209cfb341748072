"""Where arraycnn's training step spends its time: each layer's forward and backward, the loss, Adam's step.

The step is taken apart as ``Sequential.train_step`` runs it (``layer.forward(x, train=True)`` in order,
``softmax_cross_entropy_forward``/``_backward``, ``layer.backward`` in reverse with the first layer skipping
``dx``, ``optimizer.step``), on the whole batch, on one thread with BLAS limited to one thread as each of the
execution's chunk workers is: the table is the work, not the parallelism. Every piece is timed with
``perf_counter``; after warm-up, each piece's median over the runs is reported with its share of the sum of
medians. The whole step, timed separately as ``fit`` runs it (``model.execution``: 32-row chunks over
``--threads`` threads), shows what chunks and threads gain and what the pieces leave out.

Run from the repository root::

    python -m benchmarks.profile_ops                      # batch 64 and 256, 30 runs; writes docs/benchmarks.md
    python -m benchmarks.profile_ops --batch-sizes 64 --runs 10 --no-write
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy
from threadpoolctl import threadpool_limits

import arraycnn
from arraycnn import data, models, optim
from arraycnn.backend import get_namespace
from arraycnn.functional import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from benchmarks import common, peers

TOTAL = "sum of the pieces"
WHOLE = "model.execution.train_step, timed whole"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--runs", type=int, default=30, help="timed steps per batch size (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conv-method", default="im2col", help="tutorial_cnn's conv_method")
    p.add_argument("--synthetic", action="store_true", help="noise images instead of Fashion-MNIST")
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: arraycnn.data's Debian path)")
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or min(args.batch_sizes) < 1:
        p.error("--runs, --threads and --batch-sizes must be >= 1, --warmup >= 0")
    return args


def _shape(a) -> str:
    """``(B, 26, 26, 10) -> '26x26x10'``: one example's shape."""
    return "x".join(str(n) for n in a.shape[1:])


def step_pieces(model, optimizer, x, labels) -> dict[str, float]:
    """One training step taken apart: ``{piece: seconds}`` in execution order (``x (B, 28, 28, 1)``).

    A layer's piece is named ``"<index> <type> <input>→<output> forward|backward"`` (one example's shapes).
    """
    times: dict[str, float] = {}
    clock = time.perf_counter
    names = []
    h = x
    for i, layer in enumerate(model.layers):
        shape_in = _shape(h)
        t = clock()
        h = layer.forward(h, train=True)
        elapsed = clock() - t
        names.append(f"{i} {type(layer).__name__} {shape_in}→{_shape(h)}")
        times[f"{names[-1]} forward"] = elapsed
    t = clock()
    _, cache = softmax_cross_entropy_forward(h, labels, check_targets=False)
    times["softmax cross-entropy forward"] = clock() - t
    t = clock()
    dh = softmax_cross_entropy_backward(1.0, cache)
    times["softmax cross-entropy backward"] = clock() - t
    for i in reversed(range(len(model.layers))):
        t = clock()
        dh = model.layers[i].backward(dh, input_grad=i > 0)  # as train_step: the first layer skips dx
        times[f"{names[i]} backward"] = clock() - t
    t = clock()
    optimizer.step(model.parameters(), model.gradients())
    times[f"{type(optimizer).__name__}.step"] = clock() - t
    return times


def minor_faults() -> int:
    """This process's minor page faults so far: a freed-and-retouched temporary shows up here."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile(batch_size: int, args: argparse.Namespace, d: peers.BenchData) -> tuple[dict[str, float], float]:
    """Median seconds of every piece, their sum, and the whole step timed on its own, at ``batch_size``; and
    the minor page faults per timed step of the pieces (allocator churn: memory handed back and taken again)."""
    xp = get_namespace("numpy")
    model = models.tutorial_cnn(backend="numpy", dtype="float32", seed=0, conv_method=args.conv_method)
    opt = optim.Adam(lr=peers.LR, eps=peers.ADAM_EPS)
    x = data.to_float_images(d.train_images[:batch_size], xp)
    labels = data.to_labels(d.train_labels[:batch_size], xp)
    samples: dict[str, list[float]] = {}
    for run in range(args.warmup + args.runs):
        if run == args.warmup:
            faults = minor_faults()
        with threadpool_limits(limits=1, user_api="blas"):  # as each of train_step's batch-split workers
            pieces = step_pieces(model, opt, x, labels)
        if run >= args.warmup:
            for name, seconds in pieces.items():
                samples.setdefault(name, []).append(seconds)
    faults_per_step = (minor_faults() - faults) / args.runs
    medians = {name: statistics.median(values) for name, values in samples.items()}
    medians[TOTAL] = sum(medians.values())
    whole = [common.seconds_per_call(lambda: model.execution.train_step(model, x, labels, opt), 1)
             for _ in range(args.runs)]
    medians[WHOLE] = statistics.median(whole)
    return medians, faults_per_step


def by_kind(medians: dict[str, float]) -> dict[str, float]:
    """The pieces summed per layer type and direction, e.g. ``"MaxPool2D backward"``."""
    kinds: dict[str, float] = {}
    for name, seconds in medians.items():
        if name in (TOTAL, WHOLE):
            continue
        parts = name.split()
        if parts[0].isdigit():  # "3 Conv2D 24x24x10→22x22x10 forward" -> "Conv2D forward"
            name = f"{parts[1]} {parts[-1]}"
        kinds[name] = kinds.get(name, 0.0) + seconds
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def table(results: dict[int, dict[str, float]], first_column: str) -> str:
    """One row per piece, one column per batch size: ``'7.21 ms (31 %)'`` (share of the sum of the pieces)."""
    sizes = list(results)
    rows = []
    for name in results[sizes[0]]:
        cells = []
        for bs in sizes:
            total = sum(v for k, v in results[bs].items() if k not in (TOTAL, WHOLE))
            seconds = results[bs][name]
            share = "" if name in (TOTAL, WHOLE) else f" ({100 * seconds / total:.0f} %)"
            cells.append(f"{seconds * 1e3:.3f} ms{share}")
        rows.append([name, *cells])
    return common.markdown_table([first_column, *(f"batch {bs}" for bs in sizes)], rows)


def report(
    results: dict[int, dict[str, float]], args: argparse.Namespace, data_description: str, contention: str,
    faults: dict[int, float] | None = None,
) -> str:
    """The profile's Markdown: a header (machine, versions, threads, data, contention, page faults per step)
    and the two tables."""
    kinds = {bs: {**by_kind(m), TOTAL: m[TOTAL]} for bs, m in results.items()}
    return "\n".join([
        f"Measured {common.today()} on {common.machine_line()}; load average {common.load_average()}.",
        f"Versions: {common.versions({'numpy': numpy, 'arraycnn': arraycnn})}. The pieces run on one thread "
        f"(BLAS limited to 1); the whole step as fit runs it, through model.execution with "
        f"ARRAYCNN_THREADS={args.threads}. "
        f"conv_method={args.conv_method!r}, float32. Data: {data_description}.",
        f"Median of {args.runs} steps after {args.warmup} warm-up steps; share = of the sum of the pieces.",
        f"Contention: {contention}",
        *([f"Minor page faults per step of the pieces: "
           f"{', '.join(f'{f:.0f} at batch {bs}' for bs, f in faults.items())} "
           f"(a few: the allocator keeps freed temporaries; thousands: it hands them back every pass)."]
          if faults else []),
        "",
        table(results, "piece of one training step"),
        "",
        "The same, summed per layer type:",
        "",
        table(kinds, "layer type and direction"),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.pin_threads(args.threads)
    d = peers.load_data(args.data_dir, args.synthetic)
    others = common.OtherWork()
    results, faults = {}, {}
    for bs in args.batch_sizes:
        print(f"profiling batch {bs} ...", flush=True)
        results[bs], faults[bs] = profile(bs, args, d)
    text = report(results, args, d.description, others.describe(), faults)
    common.publish(text, args.docs, "profile-table", args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
