"""The GPU benchmark: arraycnn on CuPy against PyTorch CUDA (cuDNN) on the tutorial's network.

Training-step throughput (images/s) at batch 64, 256 and 1024 on one device-resident batch, and a full
Fashion-MNIST epoch at batch 64 (host uint8 batches moved to the device inside the timing; IDX files from
``--data-dir`` when present, else synthetic data of the same shape, said so). Every run ends with a device
synchronisation (``cupy.cuda.Device().synchronize()`` / ``torch.cuda.synchronize()``) before the clock
stops; engines alternate, medians and min–max, ratio arraycnn / peer. Run by ``benchmarks/gpu.sh``.

``--dry-run`` runs the same code on the CPU (NumPy backend, PyTorch CPU) with tiny sizes, to check the
script where no GPU is available. ``--insert-table FILE`` writes a table saved by a GPU run into the docs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common, cpu, peers

ARRAYCNN = "arraycnn"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--run-seconds", type=float, default=0.5, help="length of one timed run of steps")
    p.add_argument("--no-epoch", action="store_true", help="skip the Fashion-MNIST epoch")
    p.add_argument("--epoch-runs", type=int, default=1)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory; synthetic data when absent")
    p.add_argument("--tests", action="append", default=[], help="a test-stage summary line to print with the table")
    p.add_argument("--out", type=Path, help="also save the table here (gpu.sh: $OUT/gpu-table.md)")
    p.add_argument("--dry-run", action="store_true", help="NumPy and PyTorch CPU, tiny sizes: checks the script")
    p.add_argument("--insert-table", type=Path, help="write this saved table into --docs, and do nothing else")
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH)
    args = p.parse_args(argv)
    if args.dry_run:
        args.batch_sizes, args.repeats, args.run_seconds = [4, 8], 2, 0.01
    if args.repeats < 1 or args.epoch_runs < 1 or min(args.batch_sizes) < 1 or args.run_seconds <= 0:
        p.error("--repeats, --epoch-runs and --batch-sizes must be >= 1, --run-seconds > 0")
    return args


def build_engines(dry_run: bool) -> dict[str, peers.Engine]:
    """arraycnn on CuPy and PyTorch CUDA (NCHW and channels_last), or their CPU stand-ins for ``--dry-run``."""
    device, backend = ("cpu", "numpy") if dry_run else ("cuda", "cupy")
    engines = {ARRAYCNN: peers.arraycnn_engine(seed=0, backend=backend)}
    if peers.ENGINES["torch-nchw"].available():
        import torch

        torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest kernels per shape
        engines["torch-nchw"] = peers.torch_engine(seed=0, device=device)
        engines["torch-cl"] = peers.torch_engine(seed=0, device=device, channels_last=True)
    return engines


def device_line(dry_run: bool) -> str:
    if dry_run:
        return f"DRY RUN on the CPU ({common.cpu_model()}): NumPy backend and PyTorch CPU, tiny sizes"
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (f"{name}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver "
            f"{cupy.cuda.runtime.driverGetVersion()}; host {common.cpu_model()}")


def rows_and_ratios(engines: dict[str, peers.Engine], results: dict) -> tuple[list[list[str]], list[list[str]]]:
    names = list(engines)
    rows, ratios = [], []
    for bs, stats in results["steps"].items():
        rows.append([f"training step, batch {bs} (images/s)", *(common.fmt_rate_stats(stats[n], bs) for n in names)])
        ratios.append([f"training step, batch {bs}", *(f"{common.ratio(stats[ARRAYCNN], stats[n]):.2f}"
                                                       for n in names[1:])])
    if "epoch" in results:
        e = results["epoch"]
        rows.append(["Fashion-MNIST epoch, batch 64", *(common.fmt_time_stats(e[n]) for n in names)])
        ratios.append(["Fashion-MNIST epoch", *(f"{common.ratio(e[ARRAYCNN], e[n]):.2f}" for n in names[1:])])
    return rows, ratios


def report(engines: dict[str, peers.Engine], results: dict, args: argparse.Namespace, data: str) -> str:
    modules = {k: sys.modules[k] for k in ("numpy", "cupy", "torch", "arraycnn") if k in sys.modules}
    rows, ratios = rows_and_ratios(engines, results)
    names = [e.name for e in engines.values()]
    lines = [
        f"Measured {common.today()} on {device_line(args.dry_run)}.",
        f"Versions: {common.versions(modules)}.",
        f"Data: {data}. {args.repeats} runs per figure after warm-up, engines alternating, each run ≈"
        f"{args.run_seconds:g} s of back-to-back steps ended by a device synchronisation; cuDNN benchmark mode on.",
        *(f"Tests: {line}" for line in args.tests),
        "",
        common.markdown_table(["figure (median, min–max)", *names], rows),
    ]
    if len(names) > 1:
        lines += ["", "Ratios of times, arraycnn / peer: below 1.00 arraycnn is faster.", "",
                  common.markdown_table(["arraycnn / peer", *names[1:]], ratios)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.insert_table:
        common.write_between_markers(args.docs, "gpu-table", args.insert_table.read_text(encoding="utf-8"))
        print(f"{args.insert_table} written into {args.docs}")
        return 0
    if not args.dry_run:
        from arraycnn.backend import cuda_available

        if not cuda_available():
            print("no usable CUDA device (CuPy cannot see one): nothing to measure; try --dry-run", file=sys.stderr)
            return 2
    d = peers.load_data(args.data_dir, synthetic=args.dry_run)
    if args.dry_run:  # a few batches stand in for the epoch
        d = peers.BenchData(d.train_images[:256], d.train_labels[:256], d.test_images, d.test_labels,
                            d.description + ", first 256 training images (dry run)")
    engines = build_engines(args.dry_run)
    results: dict = {"steps": {}}
    for bs in args.batch_sizes:
        print(f"training step, batch {bs} ...", flush=True)
        results["steps"][bs] = cpu.time_steps(engines, d, bs, args)
    if not args.no_epoch:
        print("Fashion-MNIST epoch ...", flush=True)
        results["epoch"] = cpu.time_epochs(engines, d, args)
    text = report(engines, results, args, d.description)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
