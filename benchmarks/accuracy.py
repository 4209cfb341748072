"""Fashion-MNIST side by side: arraycnn, PyTorch and Keras train the tutorial's network the same way.

Every engine trains the network of :mod:`benchmarks.peers` (Adam lr 1e-3, eps 1e-7, batch 64, float32, each
framework's own default initialisation seeded by the run's seed) on the full Fashion-MNIST training set for
3 epochs, on the SAME shuffled host batches (``arraycnn.data.epoch_batches(seed, epoch)``), and reports the
test accuracy after each epoch; the table gives, per engine, the median over seeds 0, 1, 2 and the range.

Runs are slow (minutes each on 2 cores), so the script prints as it goes and is resumable: every finished
(engine, seed) run is saved to ``--results`` (JSON) and skipped the next time; ``--engines`` and ``--seeds``
choose what to run now, and the table always covers everything saved.

    python -m benchmarks.accuracy                                  # all engines, seeds 0 1 2 (long)
    nohup python -m benchmarks.accuracy --engines torch-nchw --seeds 0 > /tmp/acc.log 2>&1 &
    python -m benchmarks.accuracy --report-only                    # rewrite the table from saved runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common, peers

DEFAULT_ENGINES = ["arraycnn", "torch-nchw", "tf-graph"]
LABELS = {
    "arraycnn": "arraycnn (NumPy)",
    "torch-nchw": "PyTorch",
    "torch-cl": "PyTorch channels_last",
    "tf-graph": "Keras (tf.function)",
    "tf-eager": "Keras (eager)",
}
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "accuracy.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", nargs="+", choices=list(peers.ENGINES), default=DEFAULT_ENGINES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: arraycnn.data's Debian path)")
    p.add_argument("--train-size", type=int, help="a stratified subset (quick checks; the table says so)")
    p.add_argument("--test-size", type=int)
    p.add_argument("--results", type=Path, default=RESULTS_PATH, help="the saved runs (JSON), read and extended")
    p.add_argument("--report-only", action="store_true", help="train nothing; tabulate the saved runs")
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 1 or min(args.seeds) < 0:
        p.error("--epochs, --batch-size and --threads must be >= 1, --seeds >= 0")
    return args


# -- the saved runs --------------------------------------------------------------------------------------
def config_of(args: argparse.Namespace, data_description: str) -> dict:
    """What every saved run must share to be comparable (a mismatch is refused, never mixed)."""
    return {"data": data_description, "epochs": args.epochs, "batch_size": args.batch_size, "lr": peers.LR,
            "adam_eps": peers.ADAM_EPS, "dtype": "float32"}


def load_runs(path: Path, config: dict) -> dict:
    """``{"config": ..., "runs": {"<engine>/<seed>": run}}`` from ``path`` (empty when the file is absent)."""
    if not path.exists():
        return {"config": config, "runs": {}}
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("config") != config:
        raise ValueError(f"{path} holds runs of another configuration ({saved.get('config')}); this run is "
                         f"{config}: pass another --results file or delete that one")
    return saved


def save_runs(path: Path, saved: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    tmp.replace(path)


# -- training ----------------------------------------------------------------------------------------------
def train_run(name: str, seed: int, d: peers.BenchData, args: argparse.Namespace) -> dict:
    """Train one engine from ``seed``; per epoch: test accuracy, mean training loss and wall seconds (saved, not
    tabulated: on a shared machine they measure the neighbours too; ``cpu.py`` times epochs properly)."""
    from arraycnn.data import epoch_batches

    engine = peers.ENGINES[name].make(seed=seed, threads=args.threads)
    run: dict = {"engine": engine.name, "version": engine.version, "test_accuracy": [], "train_loss": [],
                 "seconds": []}
    for epoch in range(args.epochs):
        start, loss_sum, steps = time.perf_counter(), 0.0, 0
        for images, labels in epoch_batches(d.train_images, d.train_labels, args.batch_size, seed, epoch):
            loss_sum += float(engine.train_step(engine.batch(images, labels)))
            steps += 1
        seconds = time.perf_counter() - start
        acc = peers.accuracy(engine, d.test_images, d.test_labels)
        run["test_accuracy"].append(acc)
        run["train_loss"].append(loss_sum / steps)
        run["seconds"].append(seconds)
        print(f"{LABELS[name]} seed {seed} epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / steps:.4f}, "
              f"test accuracy {100 * acc:.2f} % ({seconds:.0f} s)", flush=True)
    return run


# -- the table --------------------------------------------------------------------------------------------
def per_engine(runs: dict) -> dict[str, list[dict]]:
    """Saved runs grouped by engine key, in seed order."""
    grouped: dict[str, list[dict]] = {}
    for key in sorted(runs, key=lambda k: (k.split("/")[0], int(k.split("/")[1]))):
        grouped.setdefault(key.split("/")[0], []).append({"seed": int(key.split("/")[1]), **runs[key]})
    return grouped


def epoch_stats(runs: list[dict], epoch: int) -> common.Stats:
    return common.Stats.of([100 * r["test_accuracy"][epoch] for r in runs])


def table(saved: dict) -> str:
    grouped = per_engine(saved["runs"])
    if not grouped:
        return "No runs saved yet."
    epochs = saved["config"]["epochs"]
    header = ["engine", "seeds", *(f"epoch {e + 1}" for e in range(epochs))]
    rows = []
    for name, runs in grouped.items():
        cells = []
        for e in range(epochs):
            s = epoch_stats(runs, e)
            cells.append(f"{s.median:.2f} % ({s.low:.2f}–{s.high:.2f})")
        rows.append([LABELS.get(name, name), ", ".join(str(r["seed"]) for r in runs), *cells])
    lines = [common.markdown_table(header, rows)]
    if "arraycnn" in grouped:
        ours = epoch_stats(grouped["arraycnn"], epochs - 1).median
        gaps = [f"{LABELS.get(n, n)} {ours - epoch_stats(r, epochs - 1).median:+.2f}"
                for n, r in grouped.items() if n != "arraycnn"]
        if gaps:
            lines += ["", f"arraycnn minus peer, median test accuracy after epoch {epochs} (points): "
                      + ", ".join(gaps) + " (issue 4 asks for within 0.5 points)."]
    return "\n".join(lines)


def report(saved: dict, args: argparse.Namespace) -> str:
    c = saved["config"]
    return "\n".join([
        f"Updated {common.today()} on {common.machine_line()}; threads {args.threads}.",
        f"Data: {c['data']}. Adam lr {c['lr']:g} (eps {c['adam_eps']:g}), batch {c['batch_size']}, {c['dtype']}, "
        f"{c['epochs']} epochs, the same shuffled batches for every engine; each framework's own initialisation.",
        "Test accuracy after each epoch: median over the seeds (min–max).",
        "",
        table(saved),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.pin_threads(args.threads)
    from arraycnn import data

    ds = data.load_dataset("fashion_mnist", source="idx", data_dir=args.data_dir, train_size=args.train_size,
                           test_size=args.test_size, log=None)
    d = peers.BenchData(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels, ds.description)
    saved = load_runs(args.results, config_of(args, ds.description))
    if not args.report_only:
        missing = [n for n in args.engines if not peers.ENGINES[n].available()]
        if missing:
            print(f"not installed, skipped: {', '.join(missing)}")
        for name in [n for n in args.engines if n not in missing]:
            for seed in args.seeds:
                key = f"{name}/{seed}"
                if key in saved["runs"]:
                    print(f"{key}: saved in {args.results}, skipped")
                    continue
                saved["runs"][key] = train_run(name, seed, d, args)
                save_runs(args.results, saved)
    text = report(saved, args)
    common.publish(text, args.docs, "accuracy-table", args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
