"""The GPU benchmark: arraycnn on CuPy against PyTorch CUDA (cuDNN) on the tutorial's network.

In one process, in this order (run by ``benchmarks/gpu.sh``, which gives it an empty kernel cache):

1. **Kernel compilation.** CuPy compiles each element-wise kernel the first time it meets it and keeps it in
   its on-disk cache (``CUPY_CACHE_DIR``). The first training step and the first prediction are timed on
   their own, with the number of kernels they added to the cache, apart from the step times.
2. **Parity, NumPy against CuPy.** From the same initial parameters and batches: the gradients of one step,
   the losses of a few Adam steps, and ``evaluate`` after them, each against a stated bound.
3. **Array ops per training step** (:mod:`benchmarks.opcount` around CuPy): launches, not arithmetic, bound
   a small network's step on a GPU.
4. **Throughput.** Training steps (images/s) at batch 64, 256 and 1024 on one device-resident batch, and a
   full Fashion-MNIST epoch at batch 64 (host uint8 batches moved to the device inside the timing; IDX files
   from ``--data-dir`` when present, else synthetic data of the same shape, said so). Every run ends with a
   device synchronisation; engines alternate; medians, min–max, ratio arraycnn / peer.

**Precision.** Both engines run in the same mode, stated in the report: ``--precision fp32`` (the default:
``CUPY_TF32=0``, and PyTorch's matmul and cuDNN convolutions in IEEE FP32, where PyTorch's own default runs
cuDNN convolutions in TF32) or ``tf32`` (TF32 in all three). PyTorch >= 2.9 is set through
``torch.backends.cuda.matmul.fp32_precision`` and ``torch.backends.cudnn.conv.fp32_precision``, older ones
through ``allow_tf32``.

``--dry-run`` runs the same code on the CPU with array-api-strict as the GPU stand-in (device ``device1``
for the parity check) and PyTorch CPU, tiny sizes, to check the script where no GPU is available.
``--insert-table FILE`` writes a table saved by a GPU run into the docs. Exit status: 0, or 1 when a parity
check failed (everything else is still measured and reported), 2 without a usable device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common, cpu, opcount, peers

ARRAYCNN = "arraycnn"
PRECISIONS = ("fp32", "tf32")
PARITY_BATCH, PARITY_STEPS, PARITY_EVAL = 64, 5, 512
GRAD_RTOL = 2e-4  # float32 sums of <= ~1e3 terms in another order (tests/conftest.py's float32 tolerance)
LOSS_RTOL = 1e-3  # after a few Adam steps: Adam's normalised step amplifies the gradients' last-bit differences
ACCURACY_ATOL = 4 / PARITY_EVAL  # a few near-tied predictions may flip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--run-seconds", type=float, default=0.5, help="length of one timed run of steps")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="matrix products and convolutions of BOTH engines: fp32 (default) or tf32")
    p.add_argument("--no-epoch", action="store_true", help="skip the Fashion-MNIST epoch")
    p.add_argument("--epoch-runs", type=int, default=1)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory; synthetic data when absent")
    p.add_argument("--tests", action="append", default=[], help="a test-stage summary line to print with the table")
    p.add_argument("--out", type=Path, help="also save the table here (gpu.sh: $OUT/gpu-table.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="array-api-strict as the GPU and PyTorch CPU, tiny sizes: checks the script")
    p.add_argument("--insert-table", type=Path, help="write this saved table into --docs, and do nothing else")
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH)
    args = p.parse_args(argv)
    if args.dry_run:
        args.batch_sizes, args.repeats, args.run_seconds = [4, 8], 2, 0.01
    if args.repeats < 1 or args.epoch_runs < 1 or min(args.batch_sizes) < 1 or args.run_seconds <= 0:
        p.error("--repeats, --epoch-runs and --batch-sizes must be >= 1, --run-seconds > 0")
    return args


# -- precision ---------------------------------------------------------------------------------------------
def set_precision(precision: str, dry_run: bool) -> str:
    """Put both engines in ``precision`` before either is built; returns the report's sentence.

    CuPy reads ``CUPY_TF32`` when it is imported, so this must run first; PyTorch's flags are set here too
    (when PyTorch is installed), and read back for the report.
    """
    tf32 = precision == "tf32"
    if "cupy" in sys.modules and os.environ.get("CUPY_TF32", "0") != str(int(tf32)):
        raise RuntimeError(f"CuPy was imported before CUPY_TF32 could be set for {precision}")
    os.environ["CUPY_TF32"] = str(int(tf32))
    words = "TF32 (10-bit mantissa products, FP32 sums)" if tf32 else "full FP32"
    torch_part = ""
    if peers.ENGINES["torch-nchw"].available():
        import torch

        torch_part = "; PyTorch " + _set_torch_precision(torch, tf32)
    where = " (dry run on the CPU: the flags are set, nothing uses them)" if dry_run else ""
    return f"{words} matrix products and convolutions in both engines: CUPY_TF32={int(tf32)}{torch_part}{where}"


def _set_torch_precision(torch: Any, tf32: bool) -> str:
    """PyTorch's matmul and cuDNN convolution precision, through the API this PyTorch has (>= 2.9:
    ``fp32_precision``, whose cuDNN default is TF32; before: ``allow_tf32``; mixing the two is an error)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
        matmul.fp32_precision = cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
        return (f"torch.backends.cuda.matmul.fp32_precision={matmul.fp32_precision!r}, "
                f"torch.backends.cudnn.conv.fp32_precision={cudnn.conv.fp32_precision!r}")
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    return (f"torch.backends.cuda.matmul.allow_tf32={matmul.allow_tf32}, "
            f"torch.backends.cudnn.allow_tf32={cudnn.allow_tf32}")


# -- the device ----------------------------------------------------------------------------------------------
def device_backend(dry_run: bool) -> tuple[str, Any]:
    """The backend and device that play the GPU: CuPy's default device, or array-api-strict's ``device1``."""
    return ("array_api_strict", "device1") if dry_run else ("cupy", None)


def device_line(dry_run: bool) -> str:
    if dry_run:
        return (f"DRY RUN on the CPU ({common.cpu_model()}): array-api-strict as the GPU, PyTorch CPU, "
                "tiny sizes")
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (f"{name}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver "
            f"{cupy.cuda.runtime.driverGetVersion()}; host {common.cpu_model()}")


# -- 1. kernel compilation -------------------------------------------------------------------------------------
def kernel_cache_dir() -> Path:
    """Where CuPy keeps compiled kernels: ``CUPY_CACHE_DIR``, else its default ``~/.cupy/kernel_cache``."""
    return Path(os.environ.get("CUPY_CACHE_DIR") or Path.home() / ".cupy" / "kernel_cache")


def _cached_kernels(path: Path) -> int:
    return sum(1 for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def first_calls(backend: str, device: Any, batch_size: int) -> dict[str, Any]:
    """Seconds of the first and second training step and prediction of a fresh model, each synchronised, and
    the kernels each first call added to CuPy's cache."""
    from arraycnn.models import tutorial_cnn
    from arraycnn.optim import Adam

    cache = kernel_cache_dir()
    out: dict[str, Any] = {"cache": str(cache), "cached_before": _cached_kernels(cache)}
    model, opt, sync = tutorial_cnn(backend=backend, seed=0, device=device), Adam(), peers.device_sync(backend)
    images, labels = peers.synthetic_data(batch_size)
    x, y = model.to_device_inputs(images), model.to_device_targets(labels)
    for name, call in (("train_step", lambda: model.execution.train_step(model, x, y, opt)),
                       ("predict", lambda: model.predict(x))):
        for which in ("first", "second"):
            before = _cached_kernels(cache)
            start = time.perf_counter()
            call()
            sync()
            out[f"{name} {which}"] = time.perf_counter() - start
            out[f"{name} {which} kernels"] = _cached_kernels(cache) - before
    return out


def compile_line(first: dict[str, Any], batch_size: int, dry_run: bool) -> str:
    if dry_run:
        cache = "array-api-strict compiles nothing (dry run)"
    else:
        state = "empty" if first["cached_before"] == 0 else f"NOT empty ({first['cached_before']} files)"
        cache = f"CuPy kernel cache {first['cache']}, {state} at the start"
    return (f"{cache}. At batch {batch_size}: first train_step {common.fmt_seconds(first['train_step first'])} "
            f"({first['train_step first kernels']} kernels compiled), second "
            f"{common.fmt_seconds(first['train_step second'])}; first predict "
            f"{common.fmt_seconds(first['predict first'])} ({first['predict first kernels']} more kernels), "
            f"second {common.fmt_seconds(first['predict second'])}")


# -- 2. parity ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One parity check: the measured difference against its bound."""

    what: str
    measured: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.measured <= self.bound  # NaN fails

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.what}: {self.measured:.3g} (bound {self.bound:.3g})"


def _scaled_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|): the tests' tolerance measure (tests/conftest.py)."""
    ref64 = ref.astype(np.float64)
    return float(np.max(np.abs(ours.astype(np.float64) - ref64))) / max(1.0, float(np.max(np.abs(ref64))))


def parity(backend: str, device: Any) -> list[Check]:
    """NumPy against ``backend`` from the same initial parameters on the same batches, float32."""
    from arraycnn.backend import to_numpy
    from arraycnn.models import tutorial_cnn
    from arraycnn.optim import Adam

    images, labels = peers.synthetic_data(PARITY_BATCH * PARITY_STEPS + PARITY_EVAL, seed=1)
    models = {"numpy": tutorial_cnn(seed=0), backend: tutorial_cnn(backend=backend, seed=0, device=device)}
    batch = {k: (m.to_device_inputs(images[:PARITY_BATCH]), m.to_device_targets(labels[:PARITY_BATCH]))
             for k, m in models.items()}
    grads = {}
    for k, m in models.items():
        m.execution.loss_and_gradients(m, *batch[k])
        grads[k] = [to_numpy(g) for g in m.gradients()]
    names = [n for n, _ in models["numpy"].named_parameters()]
    checks = [Check(f"gradient of {n}, one step at batch {PARITY_BATCH}, scaled max difference",
                    _scaled_error(ours, ref), GRAD_RTOL)
              for n, ours, ref in zip(names, grads[backend], grads["numpy"], strict=True)]
    losses: dict[str, list[float]] = {k: [] for k in models}
    for k, m in models.items():
        opt = Adam()
        for s in range(PARITY_STEPS):
            rows = slice(s * PARITY_BATCH, (s + 1) * PARITY_BATCH)
            x, y = m.to_device_inputs(images[rows]), m.to_device_targets(labels[rows])
            losses[k].append(float(to_numpy(m.execution.train_step(m, x, y, opt)[0])))
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses[backend], losses["numpy"], strict=True))
    checks.append(Check(f"loss of {PARITY_STEPS} Adam steps, largest relative difference", worst, LOSS_RTOL))
    held_out = slice(PARITY_BATCH * PARITY_STEPS, None)
    scores = {k: m.evaluate(images[held_out], labels[held_out], batch_size=200) for k, m in models.items()}
    (loss_dev, acc_dev), (loss_np, acc_np) = scores[backend], scores["numpy"]
    checks.append(Check(f"evaluate on {PARITY_EVAL} images: loss, relative difference",
                        abs(loss_dev - loss_np) / abs(loss_np), LOSS_RTOL))
    checks.append(Check(f"evaluate on {PARITY_EVAL} images: accuracy, difference", abs(acc_dev - acc_np),
                        ACCURACY_ATOL))
    return checks


# -- 4. throughput --------------------------------------------------------------------------------------------
def build_engines(backend: str) -> dict[str, peers.Engine]:
    """arraycnn on ``backend`` and PyTorch (NCHW and channels_last) on CUDA, or on the CPU for the dry run."""
    torch_device = "cuda" if backend == "cupy" else "cpu"
    engines = {ARRAYCNN: peers.arraycnn_engine(seed=0, backend=backend)}
    if peers.ENGINES["torch-nchw"].available():
        import torch

        torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest kernels per shape
        engines["torch-nchw"] = peers.torch_engine(seed=0, device=torch_device)
        engines["torch-cl"] = peers.torch_engine(seed=0, device=torch_device, channels_last=True)
    return engines


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
    checks: list[Check] = results["parity"]
    failed = [c for c in checks if not c.ok]
    lines = [
        f"Measured {common.today()} on {device_line(args.dry_run)}.",
        f"Versions: {common.versions(modules)}.",
        f"Precision: {results['precision']}.",
        f"Kernel compilation, apart from the step times: {results['compile']}.",
        f"Parity, NumPy against the device from the same start: {len(checks) - len(failed)} of {len(checks)} "
        f"checks within their bounds" + (": " + "; ".join(c.line() for c in failed) if failed else "") + ".",
        f"Array ops: {results['ops']}.",
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
    results: dict = {"precision": set_precision(args.precision, args.dry_run), "steps": {}}
    if not args.dry_run:
        from arraycnn.backend import cuda_available

        if not cuda_available():
            print("no usable CUDA device (CuPy cannot see one): nothing to measure; try --dry-run", file=sys.stderr)
            return 2
    backend, device = device_backend(args.dry_run)
    print(f"kernel compilation ({kernel_cache_dir()}) ...", flush=True)
    results["compile"] = compile_line(first_calls(backend, device, args.batch_sizes[0]), args.batch_sizes[0],
                                      args.dry_run)
    print("parity, NumPy against the device ...", flush=True)
    results["parity"] = parity(backend, device)
    for check in results["parity"]:
        print("  " + check.line(), flush=True)
    results["ops"] = opcount.train_step_line(backend)
    d = peers.load_data(args.data_dir, synthetic=args.dry_run)
    if args.dry_run:  # a few batches stand in for the epoch
        d = peers.BenchData(d.train_images[:256], d.train_labels[:256], d.test_images, d.test_labels,
                            d.description + ", first 256 training images (dry run)")
    engines = build_engines(backend)
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
    return 0 if all(c.ok for c in results["parity"]) else 1


if __name__ == "__main__":
    sys.exit(main())
