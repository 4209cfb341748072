"""The CPU harness: arraycnn (NumPy backend, float32) against PyTorch and TensorFlow on the tutorial's network.

In one process, with the same pinned thread count for every engine, it times

* a training step (forward, loss, backward, Adam) at batch 10, 64 and 256, on one pre-converted batch;
* inference on 10k test images at batch 1000 (pre-converted batches; host logits out);
* with ``--epoch``, a full Fashion-MNIST training epoch at batch 64 (the same shuffled host batches for every
  engine, each engine converting its own uint8 batches);

warming each engine up, then running several rounds that alternate between the engines (the order rotating
every round), and reports medians and the ratio arraycnn / peer. The whole timed part runs twice
(``--runs``): each figure shows both runs' medians, flagged ``⚠`` when they disagree by more than 10 %
(a figure that moves that much between two runs says more about the machine than about the engines).

Memory is measured with each engine in its own fresh subprocess (so one framework's allocations never count
against another): resident memory after setup, and the peak above it while training at batch 256 and while
predicting at batch 1000. A further subprocess trains arraycnn for 1,000 steps and samples its resident
memory (flat or growing). The report names the CPU model (``/proc/cpuinfo``: Intel and AMD machines of one
kind differ) and the number of array operations one arraycnn training step issues (:mod:`benchmarks.opcount`).

Run from the repository root::

    python -m benchmarks.cpu --quick            # a few minutes; writes the table into docs/benchmarks.md
    python -m benchmarks.cpu --epoch            # the full run, with the Fashion-MNIST epoch
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import common, opcount, peers

ARRAYCNN = "arraycnn"
LABELS = {
    "arraycnn": "arraycnn (NumPy)",
    "torch-nchw": "PyTorch NCHW",
    "torch-cl": "PyTorch channels_last",
    "tf-graph": "TF graph (tf.function)",
    "tf-eager": "TF eager",
}
RESULT_PREFIX = "RESULT "
FLAT_KIB_PER_1000_STEPS = 1024  # "flat": resident memory grows by less than 1 MiB per 1,000 steps


# -- arguments -------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer and shorter runs (defaults marked q=)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine and BLAS (default 2)")
    p.add_argument("--engines", nargs="+", choices=list(peers.ENGINES), help="default: all installed")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[10, 64, 256])
    p.add_argument("--runs", type=int, default=2, help="times the whole timed part is run (default 2)")
    p.add_argument("--repeats", type=int, help="timed runs per figure and engine (default 7, q=3)")
    p.add_argument("--run-seconds", type=float, help="length of one timed run of steps (default 1.0, q=0.3)")
    p.add_argument("--inference-images", type=int, default=10_000)
    p.add_argument("--inference-batch", type=int, default=1000)
    p.add_argument("--epoch", action="store_true", help="also time a full Fashion-MNIST epoch at batch 64 (slow)")
    p.add_argument("--epoch-runs", type=int, help="epochs per engine (default 3, q=1)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--memory-batch", type=int, default=256, help="training batch of the peak-memory figure")
    p.add_argument("--memory-steps", type=int, default=5, help="training steps of the peak-memory figure")
    p.add_argument("--rss-steps", type=int, help="arraycnn steps of the memory-over-time run (default 1000, q=300)")
    p.add_argument("--rss-batch", type=int, default=64)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: arraycnn.data's Debian path)")
    p.add_argument("--synthetic", action="store_true", help="noise images instead of Fashion-MNIST")
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH, help="Markdown file to write the table into")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument("--child", choices=["memory", "rss"], help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=list(peers.ENGINES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (3 if quick else 7)
    args.run_seconds = args.run_seconds or (0.3 if quick else 1.0)
    args.epoch_runs = args.epoch_runs or (1 if quick else 3)
    args.rss_steps = args.rss_steps or (300 if quick else 1000)
    for name in ("threads", "runs", "repeats", "epoch_runs", "rss_steps", "rss_batch", "memory_batch", "memory_steps",
                 "inference_images", "inference_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.batch_sizes) < 1 or args.run_seconds <= 0:
        p.error("--batch-sizes must be >= 1 and --run-seconds > 0")
    return args


# -- the timed figures -----------------------------------------------------------------------------------
def step_measure(engine: peers.Engine, batch: peers.Batch, run_seconds: float) -> Callable[[], float]:
    """A measurement of seconds per training step, each run ≈ ``run_seconds`` of back-to-back steps."""
    def step() -> object:
        return engine.train_step(batch)

    common.seconds_per_call(step, 1, engine.sync)  # first call: allocations, tracing
    calls = common.calls_for(common.seconds_per_call(step, 1, engine.sync), run_seconds)
    return lambda: common.seconds_per_call(step, calls, engine.sync)


def time_steps(
    engines: dict[str, peers.Engine], d: peers.BenchData, batch_size: int, args: argparse.Namespace
) -> dict[str, common.Stats]:
    """Seconds per training step at ``batch_size``, per engine."""
    images, labels = d.train_images[:batch_size], d.train_labels[:batch_size]
    measures = {n: step_measure(e, e.batch(images, labels), args.run_seconds) for n, e in engines.items()}
    return common.alternate(measures, args.repeats)


def inference_measure(engine: peers.Engine, batches: list) -> Callable[[], float]:
    """Seconds to predict every batch (host logits out): one sample is one pass over all the images."""
    return lambda: common.seconds_per_call(lambda: [engine.predict(b) for b in batches], 1, engine.sync)


def time_inference(
    engines: dict[str, peers.Engine], d: peers.BenchData, args: argparse.Namespace
) -> tuple[dict[str, common.Stats], int]:
    """Seconds per pass over the first ``args.inference_images`` test images, per engine; and that count."""
    n, bs = min(args.inference_images, len(d.test_labels)), args.inference_batch
    measures = {}
    for name, e in engines.items():
        batches = [e.batch(d.test_images[i:i + bs], d.test_labels[i:i + bs]) for i in range(0, n, bs)]
        measures[name] = inference_measure(e, batches)
    return common.alternate(measures, args.repeats), n


def epoch_measure(engine: peers.Engine, d: peers.BenchData, batch_size: int) -> Callable[[], float]:
    """Seconds for one training epoch; every call trains the next epoch (its own seeded shuffle)."""
    from arraycnn.data import epoch_batches

    epochs = itertools.count()

    def one_epoch() -> None:
        for images, labels in epoch_batches(d.train_images, d.train_labels, batch_size, seed=0, epoch=next(epochs)):
            engine.train_step(engine.batch(images, labels))

    return lambda: common.seconds_per_call(one_epoch, 1, engine.sync)


def time_epochs(
    engines: dict[str, peers.Engine], d: peers.BenchData, args: argparse.Namespace
) -> dict[str, common.Stats]:
    """Seconds per Fashion-MNIST training epoch at batch 64, per engine."""
    measures = {name: epoch_measure(e, d, 64) for name, e in engines.items()}
    return common.alternate(measures, args.epoch_runs, warmup=0)


# -- memory, each engine in its own subprocess ------------------------------------------------------------
def child_memory(args: argparse.Namespace) -> dict[str, int]:
    """Resident memory (KiB) after setup, and the peak above it while training, then while predicting."""
    engine = peers.ENGINES[args.engine].make(seed=0, threads=args.threads)
    images, labels = peers.synthetic_data(max(args.memory_batch, args.inference_batch))
    train = engine.batch(images[:args.memory_batch], labels[:args.memory_batch])
    infer = engine.batch(images[:args.inference_batch], labels[:args.inference_batch])
    setup = common.rss_kib()
    common.reset_peak_rss()
    for _ in range(args.memory_steps):
        engine.train_step(train)
    train_peak = common.peak_rss_kib()
    common.reset_peak_rss()
    for _ in range(2):
        engine.predict(infer)
    return {"setup": setup, "train_peak": train_peak, "infer_peak": common.peak_rss_kib()}


def child_rss(args: argparse.Namespace) -> dict[str, list[int]]:
    """arraycnn's peak resident memory (KiB) in each of ~20 windows of steps over ``rss_steps`` training steps.

    A window's peak (VmHWM, reset at its start) is steady from window to window where an instantaneous sample
    is not: the allocator returns large blocks to the OS and takes them back within every step.
    """
    engine = peers.ENGINES[args.engine].make(seed=0, threads=args.threads)
    batch = engine.batch(*peers.synthetic_data(args.rss_batch))
    every = max(1, args.rss_steps // 20)
    steps, rss = [], []
    for start in range(0, args.rss_steps, every):
        common.reset_peak_rss()
        for _ in range(min(every, args.rss_steps - start)):
            engine.train_step(batch)
        steps.append(min(start + every, args.rss_steps))
        rss.append(common.peak_rss_kib())
    return {"steps": steps, "rss": rss}


def run_child(kind: str, engine: str, args: argparse.Namespace) -> dict:
    """Run ``--child kind --engine engine`` in a fresh interpreter; its last RESULT line, parsed."""
    cmd = [sys.executable, "-m", "benchmarks.cpu", "--child", kind, "--engine", engine,
           "--threads", str(args.threads), "--memory-batch", str(args.memory_batch),
           "--memory-steps", str(args.memory_steps), "--inference-batch", str(args.inference_batch),
           "--rss-steps", str(args.rss_steps), "--rss-batch", str(args.rss_batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    results = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(results[-1].removeprefix(RESULT_PREFIX))


def rss_summary(samples: dict[str, list[int]]) -> dict:
    """First/last/max of the windows' peak RSS (KiB) and its growth in KiB per 1,000 steps.

    The growth compares the median window of the run's second half with that of its first half (windows
    after the first tenth: the allocator settles in the first steps); medians, because a window's peak
    jitters by a MiB or two with how the batch-split workers' temporaries happen to overlap.
    """
    steps, rss = samples["steps"], samples["rss"]
    settled = [i for i, s in enumerate(steps) if s > steps[-1] / 10] or list(range(len(steps)))
    half = max(1, len(settled) // 2)
    early, late = settled[:half], settled[-half:]
    span = statistics.fmean(steps[i] for i in late) - statistics.fmean(steps[i] for i in early)
    rise = statistics.median(rss[i] for i in late) - statistics.median(rss[i] for i in early)
    growth = 1000 * rise / span if span > 0 else 0.0
    return {"steps": steps[-1], "first": rss[0], "last": rss[-1], "max": max(rss), "kib_per_1000": growth,
            "flat": growth < FLAT_KIB_PER_1000_STEPS, "samples": samples}


def memory_budget_kib(batch: int, itemsize: int = 4) -> float:
    """The issue's memory yardstick at ``batch``: every activation of the tutorial's network plus the largest
    layer's unrolled patches (conv 2: (B*22*22, 3*3*10)), in KiB of float32."""
    activations = 28 * 28 * 1 + 2 * 26 * 26 * 10 + 24 * 24 * 10 + 2 * 22 * 22 * 10 + 20 * 20 * 10 + 2 * 50 + 10
    patches = 22 * 22 * 3 * 3 * 10
    return batch * (activations + patches) * itemsize / 1024


# -- the report ------------------------------------------------------------------------------------------
def _row(label: str, names: list[str], cell: Callable[[str], str]) -> list[str]:
    return [label, *(cell(n) for n in names)]


def time_figures(results: dict) -> list[tuple[str, Callable[[common.Stats], float], Callable[[float], str], str]]:
    """The timed figures: (key, value of a run's Stats, format of that value, row label)."""
    n_img = results["inference_images"]
    figures = [(f"steps/{bs}", lambda s: s.median, common.fmt_seconds, f"training step, batch {bs}")
               for bs in results["runs"][0]["steps"]]
    figures.append(("inference", lambda s: n_img / s.median, lambda v: f"{common.fmt_rate(v)}/s",
                    f"inference, {n_img:,} images at batch {results['inference_batch']} (images/s)"))
    if "epoch" in results["runs"][0]:
        figures.append(("epoch", lambda s: s.median, common.fmt_seconds, "Fashion-MNIST epoch, batch 64"))
    return figures


def run_stats(results: dict, key: str) -> list[dict[str, common.Stats]]:
    """Each run's Stats per engine for the figure ``key`` (``"steps/64"``, ``"inference"``, ``"epoch"``)."""
    group, _, bs = key.partition("/")
    return [run[group][int(bs)] if bs else run[group] for run in results["runs"]]


def timing_rows(names: list[str], results: dict) -> list[list[str]]:
    rows = []
    for key, value, fmt, label in time_figures(results):
        runs = run_stats(results, key)
        rows.append(_row(label, names, lambda n, runs=runs, value=value, fmt=fmt:
                         common.fmt_runs([value(r[n]) for r in runs], fmt)))
    return rows


def flagged(names: list[str], results: dict) -> list[str]:
    """Every (figure, engine) whose runs disagree by more than ``common.DISAGREE``, described."""
    out = []
    for key, value, fmt, label in time_figures(results):
        for n in names:
            values = [value(r[n]) for r in run_stats(results, key)]
            if common.disagreement(values) > common.DISAGREE:
                out.append(f"{label}, {LABELS[n]}: {' vs '.join(fmt(v) for v in values)} "
                           f"({100 * common.disagreement(values):.0f} %)")
    return out


def _mem_stats(results: dict, key: str) -> dict[str, common.Stats]:
    mem = results["memory"]
    return {n: common.Stats.of([m[key] - m["setup"]]) for n, m in mem.items()}


def memory_rows(names: list[str], results: dict) -> list[list[str]]:
    mem = results["memory"]
    train, infer = _mem_stats(results, "train_peak"), _mem_stats(results, "infer_peak")
    return [
        _row(f"peak RSS above setup, training at batch {results['memory_batch']}", names,
             lambda n: common.fmt_mib(train[n].median)),
        _row(f"peak RSS above setup, inference at batch {results['inference_batch']}", names,
             lambda n: common.fmt_mib(infer[n].median)),
        _row("RSS after setup (interpreter, framework, model, batches)", names,
             lambda n: common.fmt_mib(mem[n]["setup"])),
    ]


def ratio_table(names: list[str], results: dict) -> str:
    """arraycnn / peer of every figure, one ratio per run (``⚠`` when they disagree by more than 10 %)."""
    peers_ = [n for n in names if n != ARRAYCNN]
    rows = []
    for key, _, _, label in time_figures(results):
        runs = run_stats(results, key)
        label = "inference (time for the same images)" if key == "inference" else label
        rows.append([label, *(common.fmt_runs([common.ratio(r[ARRAYCNN], r[p]) for r in runs], "{:.2f}".format)
                              for p in peers_)])
    if "memory" in results:
        mem = _mem_stats(results, "train_peak")
        rows.append([f"peak RSS above setup, training at batch {results['memory_batch']}",
                     *(f"{common.ratio(mem[ARRAYCNN], mem[p]):.2f}" for p in peers_)])
    return common.markdown_table(["arraycnn / peer", *(LABELS[p] for p in peers_)], rows)


def report(names: list[str], results: dict, meta: dict[str, str]) -> str:
    runs = len(results["runs"])
    disagree = flagged(names, results)
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; load average {meta['load']}.",
        f"CPU: {meta['cpu']}.",
        f"Versions: {meta['versions']}.",
        f"Threads: {meta['threads']}.",
        f"Data: {meta['data']}. Timing: {meta['timing']}.",
        f"Contention: {meta['others']}",
        f"Array ops (arraycnn, {meta['ops']}).",
        "",
        common.markdown_table([f"figure (median of run {' / run '.join(str(i + 1) for i in range(runs))})",
                               *(LABELS[n] for n in names)],
                              timing_rows(names, results) + (memory_rows(names, results) if "memory" in results
                                                             else [])),
    ]
    if ARRAYCNN in names and len(names) > 1:
        lines += ["", "Ratios, arraycnn / peer (of times, or of memory), one per run: below 1.00 arraycnn is faster "
                  "or smaller.", "", ratio_table(names, results)]
    if runs > 1:
        lines += ["", (f"{common.FLAG} Runs that disagree by more than {100 * common.DISAGREE:.0f} %: "
                       + "; ".join(disagree) + ".") if disagree else
                  f"Every timed figure agrees within {100 * common.DISAGREE:.0f} % between the {runs} runs."]
    if "memory" in results and ARRAYCNN in results["memory"]:
        budget = memory_budget_kib(results["memory_batch"])
        used = results["memory"][ARRAYCNN]["train_peak"] - results["memory"][ARRAYCNN]["setup"]
        lines += ["", f"arraycnn's training peak above setup at batch {results['memory_batch']} is "
                  f"{used / budget:.2f}x the activations plus one layer's unrolled patches "
                  f"({common.fmt_mib(budget)}); the issue's bound is 2x."]
    if "rss" in results:
        r = results["rss"]
        verdict = "flat" if r["flat"] else "GROWING"
        lines += ["", f"arraycnn's resident memory over {r['steps']} training steps at batch {meta['rss_batch']}, "
                  f"as the peak of each of 20 windows: {common.fmt_mib(r['first'])} in the first window, "
                  f"{common.fmt_mib(r['last'])} in the last (max {common.fmt_mib(r['max'])}); the median window of the "
                  f"second half against that of the first (after the first tenth): {r['kib_per_1000']:+.0f} KiB per "
                  f"1,000 steps, {verdict} (flat = under {FLAT_KIB_PER_1000_STEPS} KiB per 1,000 steps)."]
    return "\n".join(lines)


def to_jsonable(results: dict) -> dict:
    def conv(v):
        if isinstance(v, common.Stats):
            return vars(v)
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(results)


# -- main ------------------------------------------------------------------------------------------------
def build_engines(names: list[str], threads: int) -> dict[str, peers.Engine]:
    engines = {}
    for name in names:
        print(f"building {LABELS[name]} ...", flush=True)
        engines[name] = peers.ENGINES[name].make(seed=0, threads=threads)
    return engines


def time_run(engines: dict[str, peers.Engine], d: peers.BenchData, args: argparse.Namespace,
             index: int) -> dict:
    """One run of every timed figure: steps per batch size, inference, and the epochs with ``--epoch``."""
    out: dict = {"steps": {}}
    for bs in args.batch_sizes:
        print(f"run {index + 1}/{args.runs}: training step, batch {bs} ...", flush=True)
        out["steps"][bs] = time_steps(engines, d, bs, args)
    print(f"run {index + 1}/{args.runs}: inference ...", flush=True)
    out["inference"] = time_inference(engines, d, args)[0]
    if args.epoch:
        print(f"run {index + 1}/{args.runs}: Fashion-MNIST epochs ...", flush=True)
        out["epoch"] = time_epochs(engines, d, args)
    return out


def run(args: argparse.Namespace) -> str:
    load_before, others = common.load_average(), common.OtherWork()
    names = peers.available_engines(args.engines)
    missing = sorted(set(args.engines or peers.ENGINES) - set(names))
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    d = peers.load_data(args.data_dir, args.synthetic)
    engines = build_engines(names, args.threads)
    results: dict = {"inference_batch": args.inference_batch, "memory_batch": args.memory_batch,
                     "inference_images": min(args.inference_images, len(d.test_labels)),
                     "runs": [time_run(engines, d, args, i) for i in range(args.runs)]}
    if not args.no_memory:
        print("memory, one subprocess per engine ...", flush=True)
        results["memory"] = {n: run_child("memory", n, args) for n in names}
        if ARRAYCNN in names:
            results["rss"] = rss_summary(run_child("rss", ARRAYCNN, args))
    modules = {k: sys.modules[k] for k in ("numpy", "arraycnn", "torch", "tensorflow", "keras") if k in sys.modules}
    meta = {
        "date": common.today(),
        "machine": common.machine_line(),
        "cpu": f"{common.cpu_model()} (model name in /proc/cpuinfo)",
        "ops": opcount.train_step_line(),
        "load": f"{load_before} before the run, {common.load_average()} after",
        "versions": common.versions(modules),
        "threads": f"{args.threads} for every engine (env {', '.join(common.THREAD_ENV_VARS)}; "
                   + "; ".join(sorted({e.threads for e in engines.values()})) + ")",
        "data": d.description,
        "timing": f"{args.runs} runs of everything timed; in each, warm-up, then {args.repeats} samples per "
                  f"figure alternating between the engines "
                  f"(order rotated each round), a training-step sample being ≈{args.run_seconds:g} s of back-to-back "
                  f"steps on one pre-converted batch; inference passes over pre-converted batches; "
                  + (f"{args.epoch_runs} epoch(s) per engine, host batches converted inside the timing; "
                     if args.epoch else "")
                  + "memory: each engine alone in a fresh subprocess (Linux VmRSS/VmHWM, peak reset after setup)",
        "rss_batch": str(args.rss_batch),
        "others": others.describe(),
    }
    text = report(names, results, meta)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": to_jsonable(results)}, indent=1))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.pin_threads(args.threads)
    if args.child:
        result = child_memory(args) if args.child == "memory" else child_rss(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    text = run(args)
    common.publish(text, args.docs, "cpu-table", args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
