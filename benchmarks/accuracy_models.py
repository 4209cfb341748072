"""The ready networks side by side: arraycnn's ``vgg_digits`` and ``conv_autoencoder`` against the same nets in PyTorch.

Three studies, each over seeds 0, 1, 2 (issue 12):

* ``vgg-digits``: ``vgg_digits`` on the bundled digits (4,000 train / 1,000 test, split by the seed), 8 epochs
  of ``examples/mnist.py --model vgg``'s defaults: batch 32, Adam lr 1e-3, random shifts of up to 2 px;
* ``vgg-fashion``: ``vgg_digits`` on the full Fashion-MNIST (IDX files), 3 epochs, batch 64, Adam lr 1e-3,
  no augmentation (as :mod:`benchmarks.accuracy`);
* ``autoencoder``: ``conv_autoencoder`` on the bundled digits, 10 epochs of ``examples/autoencoder.py``'s
  defaults: batch 32, Adam lr 1e-3, MSE between each image and its reconstruction.

The PyTorch nets are written out from the issue's layer list (NCHW, a channels-last flatten before the first
Linear so its weight is arraycnn's ``(K, H*W*C)``), then every parameter is copied from the arraycnn model
built with the same seed (:func:`copy_parameters`, which checks each shape): both engines start from the
same He-normal numbers; the twin's dropout draws arraycnn's masks (:func:`share_dropout_masks`). Both see the
same host batches (``arraycnn.data.epoch_batches(seed, epoch)``) and use Adam with eps 1e-7 (arraycnn's Keras
form adds it to the uncorrected ``sqrt(v)``, PyTorch to the corrected one; see ``arraycnn.optim.Adam``). What
still differs is the order of floating-point sums (and that eps), so two runs start equal and drift apart
by rounding: the comparison tests the engine, not the luck of the draw.

Each finished (engine, seed) run is saved to ``results/accuracy_<study>.json`` and skipped the next time.

    python -m benchmarks.accuracy_models --threads 1                       # everything: ~40 min on 2 cores
    nohup python -m benchmarks.accuracy_models --studies vgg-digits autoencoder > /tmp/acc_models.log 2>&1 &
    python -m benchmarks.accuracy_models --report-only                     # rewrite the table from saved runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.accuracy import RESULTS_PATH, load_runs, save_runs
from benchmarks.peers import ADAM_EPS, LR

RESULTS_DIR = RESULTS_PATH.parent
ENGINES = {"arraycnn": "arraycnn (NumPy)", "torch": "PyTorch"}
MARKER = "accuracy-models-table"
MAX_POINTS = 0.3  # issue 12: vgg_digits within 0.3 points of PyTorch's median test accuracy
MAX_MSE_RATIO = 0.05  # and the autoencoder's median test MSE within 5 % of PyTorch's


@dataclass(frozen=True)
class Study:
    """One network on one data set, trained the same way by every engine."""

    model: str  # "vgg_digits" or "conv_autoencoder"
    dataset: str
    source: str
    epochs: int
    batch_size: int
    augment: bool
    metric: str  # "accuracy" (%, higher is better) or "mse" (lower is better)
    target: str  # what issue 12 asks of the medians

    def config(self, description: str, threads: int) -> dict:
        return {"model": self.model, "data": description, "epochs": self.epochs, "batch_size": self.batch_size,
                "augment": self.augment, "lr": LR, "adam_eps": ADAM_EPS, "dtype": "float32", "threads": threads}


STUDIES = {
    "vgg-digits": Study("vgg_digits", "mnist", "bundled", 8, 32, True, "accuracy", "within 0.3 points"),
    "vgg-fashion": Study("vgg_digits", "fashion_mnist", "idx", 3, 64, False, "accuracy", "within 0.3 points"),
    "autoencoder": Study("conv_autoencoder", "mnist", "bundled", 10, 32, False, "mse", "within 5 %"),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy_models", description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX directory (default: arraycnn.data's Debian path)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where accuracy_<study>.json live")
    p.add_argument("--report-only", action="store_true", help="train nothing; tabulate the saved runs")
    p.add_argument("--docs", type=Path, default=common.DOCS_PATH)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if args.threads < 1 or min(args.seeds) < 0:
        p.error("--threads must be >= 1 and --seeds >= 0")
    return args


# -- the PyTorch nets ------------------------------------------------------------------------------------
def torch_model(name: str) -> Any:
    """The PyTorch twin of ``arraycnn.models.<name>``, written from the issue's layer list (NCHW inside)."""
    from torch import nn

    class ChannelsLastFlatten(nn.Module):
        """``(N, C, H, W) -> (N, H*W*C)`` in arraycnn's row-major (H, W, C) order."""

        def forward(self, x: Any) -> Any:
            return x.permute(0, 2, 3, 1).flatten(1)

    if name == "vgg_digits":
        def block(c_in: int, c_out: int) -> list:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1), nn.ReLU()]

        return nn.Sequential(
            *block(1, 16), *block(16, 16), nn.MaxPool2d(2),
            *block(16, 32), *block(32, 32), nn.MaxPool2d(2),
            ChannelsLastFlatten(), nn.Linear(7 * 7 * 32, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
        )
    if name == "conv_autoencoder":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        )
    raise ValueError(f"no PyTorch twin for {name!r}")


def torch_layout(name: str, w: np.ndarray) -> np.ndarray:
    """An arraycnn parameter in PyTorch's layout: conv ``(K, KH, KW, C) -> (K, C, KH, KW)``, which is also
    ``ConvTranspose2d``'s ``(in, out, KH, KW)`` for a transposed conv's ``(K = in, KH, KW, C = out)``; the rest
    (Linear ``(out, in)``, biases, BatchNorm's ``gamma``/``beta``) as they are."""
    return np.transpose(w, (0, 3, 1, 2)) if w.ndim == 4 else w


def copy_parameters(ours: Any, theirs: Any) -> int:
    """Copy every parameter of the arraycnn ``Sequential`` into the PyTorch twin, in order; returns the count.

    The two lists must pair up one to one with equal shapes (after :func:`torch_layout`): a ValueError
    names the first mismatch, so a twin that differs from the arraycnn net cannot start training.
    """
    import torch

    from arraycnn.backend import to_numpy

    mine = ours.named_parameters()
    their = list(theirs.parameters())
    if len(mine) != len(their):
        raise ValueError(f"arraycnn has {len(mine)} parameter arrays, the PyTorch twin {len(their)}")
    with torch.no_grad():
        for (name, p), t in zip(mine, their, strict=True):
            host = torch_layout(name, to_numpy(p))
            if tuple(host.shape) != tuple(t.shape):
                raise ValueError(f"parameter {name}: arraycnn {tuple(host.shape)} vs PyTorch {tuple(t.shape)}")
            t.copy_(torch.from_numpy(np.ascontiguousarray(host)))
    return len(mine)


def share_dropout_masks(ours: Any, theirs: Any) -> int:
    """Make each ``nn.Dropout`` of the PyTorch twin draw the masks its arraycnn ``Dropout`` layer draws.

    The twin's ``i``-th dropout module gets the ``i``-th arraycnn layer's ``(seed, counter)`` and, at each
    training forward, takes the mask ``m = [u >= p] / (1 - p)`` of :func:`arraycnn.functional.dropout_forward`
    for that key (NumPy's Philox) and advances its own counter, as the arraycnn layer does. Two runs that
    take the same steps then drop the same units; returns the number of modules replaced.
    """
    import torch
    from torch import nn

    from arraycnn.functional import dropout_forward
    from arraycnn.layers import Dropout

    class ArraycnnMaskDropout(nn.Module):
        def __init__(self, layer: Dropout) -> None:
            super().__init__()
            self.p, self.seed, self.counter = layer.p, layer.seed, layer.counter

        def forward(self, x: Any) -> Any:
            if not self.training:
                return x
            _, mask = dropout_forward(torch.ones_like(x).numpy(), self.p, self.seed, self.counter)  # x's dtype
            self.counter += 1
            return x * torch.from_numpy(mask)

    layers = [layer for layer in ours.layers if isinstance(layer, Dropout)]
    slots = [i for i, module in enumerate(theirs) if isinstance(module, nn.Dropout)]
    if len(layers) != len(slots) or any(theirs[i].p != layer.p for i, layer in zip(slots, layers, strict=False)):
        raise ValueError(f"arraycnn's dropout layers {[layer.p for layer in layers]} do not pair with the twin's "
                         f"{[theirs[i].p for i in slots]}")
    for i, layer in zip(slots, layers, strict=True):
        theirs[i] = ArraycnnMaskDropout(layer)
    return len(slots)


# -- one engine's run -------------------------------------------------------------------------------------
@dataclass
class Runner:
    """One engine's model behind two calls: a training step on a host batch, and the test metric."""

    train_step: Callable[[np.ndarray, np.ndarray], Any]
    metric: Callable[[np.ndarray, np.ndarray], float]


def arraycnn_runner(study: Study, seed: int) -> Runner:
    """The step ``fit`` takes (``model.execution.train_step``) and ``Sequential.evaluate``."""
    from arraycnn import models, optim

    model = getattr(models, study.model)(seed=seed)
    opt = optim.Adam(lr=LR, eps=ADAM_EPS)

    def targets_of(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return images if study.metric == "mse" else labels  # an autoencoder's targets are its inputs

    def train_step(images: np.ndarray, labels: np.ndarray) -> Any:
        x = model.to_device_inputs(images)
        y = x if study.metric == "mse" else model.to_device_targets(labels)  # the inputs cross once
        return model.execution.train_step(model, x, y, opt)[0]

    def metric(images: np.ndarray, labels: np.ndarray) -> float:
        loss, accuracy = model.evaluate(images, targets_of(images, labels))
        return loss if study.metric == "mse" else 100 * accuracy

    return Runner(train_step, metric)


def torch_runner(study: Study, seed: int, threads: int) -> Runner:
    import torch

    from arraycnn import models

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net, ours = torch_model(study.model), getattr(models, study.model)(seed=seed)
    copy_parameters(ours, net)
    share_dropout_masks(ours, net)
    opt = torch.optim.Adam(net.parameters(), lr=LR, eps=ADAM_EPS)
    loss_fn = torch.nn.MSELoss() if study.metric == "mse" else torch.nn.CrossEntropyLoss()

    def images_of(images: np.ndarray) -> Any:
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)

    def train_step(images: np.ndarray, labels: np.ndarray) -> Any:
        net.train()
        x = images_of(images)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), x if study.metric == "mse" else torch.from_numpy(labels))
        loss.backward()
        opt.step()
        return loss.detach()

    def metric(images: np.ndarray, labels: np.ndarray) -> float:
        net.eval()
        with torch.inference_mode():
            x = images_of(images)
            if study.metric == "mse":
                return float(loss_fn(net(x), x))
            return 100 * float((net(x).argmax(1) == torch.from_numpy(labels)).double().mean())

    return Runner(train_step, metric)


def train_run(engine: str, study: Study, seed: int, ds: Any, threads: int) -> dict:
    """Train one engine from ``seed``; per epoch: the test metric, the mean training loss and the wall seconds."""
    from arraycnn.data import epoch_batches

    runner = arraycnn_runner(study, seed) if engine == "arraycnn" else torch_runner(study, seed, threads)
    run: dict = {"metric": [], "train_loss": [], "seconds": []}
    for epoch in range(study.epochs):
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for images, labels in epoch_batches(ds.train_images, ds.train_labels, study.batch_size, seed, epoch,
                                            augment=study.augment):
            loss_sum += float(runner.train_step(images, labels)) * len(labels)
            seen += len(labels)
        seconds = time.perf_counter() - start
        value = runner.metric(ds.test_images, ds.test_labels)
        run["metric"].append(value)
        run["train_loss"].append(loss_sum / seen)
        run["seconds"].append(seconds)
        unit = "% test accuracy" if study.metric == "accuracy" else "test MSE"
        print(f"{ENGINES[engine]} {study.model} seed {seed} epoch {epoch + 1}/{study.epochs}: train loss "
              f"{loss_sum / seen:.5f}, {value:.5g} {unit} ({seconds:.0f} s)", flush=True)
    return run


# -- the table --------------------------------------------------------------------------------------------
def summary(study: Study, saved: dict) -> list[str] | None:
    """One table row for a study: the seeds that both engines have finished (None when there are none)."""
    by_engine: dict[str, dict[int, dict]] = {engine: {} for engine in ENGINES}
    for key, run in saved["runs"].items():
        engine, seed = key.split("/")
        by_engine[engine][int(seed)] = run
    seeds = sorted(set.intersection(*(set(runs) for runs in by_engine.values())))
    if not seeds:
        return None
    final = {e: common.Stats.of([runs[s]["metric"][-1] for s in seeds]) for e, runs in by_engine.items()}
    epoch = {e: statistics.median(t for s in seeds for t in runs[s]["seconds"]) for e, runs in by_engine.items()}
    ours, theirs = final["arraycnn"].median, final["torch"].median
    pairs = [(by_engine["arraycnn"][s]["metric"][-1], by_engine["torch"][s]["metric"][-1]) for s in seeds]
    if study.metric == "accuracy":
        fmt, gap, met = "{:.2f} %", f"{ours - theirs:+.2f} points", abs(ours - theirs) <= MAX_POINTS
        paired = [f"{a - b:+.2f}" for a, b in pairs]
    else:
        fmt, gap = "{:.5f}", f"{100 * (ours - theirs) / theirs:+.1f} %"
        met = abs(ours - theirs) <= MAX_MSE_RATIO * theirs
        paired = [f"{100 * (a - b) / b:+.1f} %" for a, b in pairs]

    def cell(st: common.Stats) -> str:
        return f"{fmt.format(st.median)} ({fmt.format(st.low)}–{fmt.format(st.high)})"

    return [f"{study.model} on {saved['config']['data']}, {study.epochs} epochs",
            "accuracy" if study.metric == "accuracy" else "MSE", ", ".join(map(str, seeds)), cell(final["arraycnn"]),
            cell(final["torch"]), gap, ", ".join(paired), f"{study.target}: {'yes' if met else 'NO'}",
            common.fmt_seconds(epoch["arraycnn"]), common.fmt_seconds(epoch["torch"])]


MIN_PLATEAU_EPOCHS = 4  # below this the second half of training is still learning, not a plateau


def epoch_swings(saved: dict) -> common.Stats | None:
    """How much the test metric of one run moves from an epoch to the next over the second half of training
    (``|m[e] - m[e-1]|`` for every run and ``e >= epochs // 2``): the noise floor of a final-epoch figure.
    None for runs shorter than :data:`MIN_PLATEAU_EPOCHS`."""
    swings = [abs(r["metric"][e] - r["metric"][e - 1]) for r in saved["runs"].values()
              if len(r["metric"]) >= MIN_PLATEAU_EPOCHS for e in range(len(r["metric"]) // 2, len(r["metric"]))]
    return common.Stats.of(swings) if swings else None


def report(saved_by_study: dict[str, dict]) -> str:
    header = ["study", "metric", "seeds", "arraycnn median (min–max)", "PyTorch median (min–max)",
              "arraycnn − PyTorch (medians)", "seed by seed", "issue 12 asks: met?", "arraycnn s/epoch",
              "PyTorch s/epoch"]
    rows = [row for name, saved in saved_by_study.items() if (row := summary(STUDIES[name], saved))]
    threads = sorted({str(saved["config"]["threads"]) for saved in saved_by_study.values()})
    table = common.markdown_table(header, rows) if rows else "No study has runs of both engines saved yet."
    notes = []
    for name, saved in saved_by_study.items():
        swing = epoch_swings(saved)
        if STUDIES[name].metric == "accuracy" and swing is not None:
            notes.append(f"- {name}: within one run the test accuracy moves by {swing.median:.2f} points (median; "
                         f"up to {swing.high:.2f}) from one epoch to the next over the second half of training.")
    return "\n".join([
        f"Updated {common.today()} on {common.machine_line()}; threads per engine {', '.join(threads) or 'n/a'}.",
        "The same network in each engine, starting from the SAME He-normal weights (arraycnn's, copied into "
        "PyTorch), on the same host batches with the same dropout masks (arraycnn's), Adam lr 1e-3 eps 1e-7, "
        "float32. Test metric after the last epoch: median over the seeds (min–max). Seconds per epoch: "
        "median training time of an epoch (no evaluation), on a machine shared with other work, so they are "
        "indicative only; `benchmarks/cpu.py` times steps properly.",
        "",
        table,
        *(["", "The noise under a final-epoch accuracy:", *notes] if notes else []),
    ])


def load_study(name: str, seed: int, data_dir: str | None) -> Any:
    """The study's data for ``seed`` (the bundled digits' 4,000/1,000 split depends on it; the IDX files do not)."""
    from arraycnn import data

    study = STUDIES[name]
    return data.load_dataset(study.dataset, study.source, data_dir if study.source == "idx" else None, seed=seed,
                             log=None)


def data_line(study: Study, ds: Any) -> str:
    """What the runs of a study share, whatever the seed: the data set, its source and its sizes."""
    split = ", split by the seed" if study.source == "bundled" else ""
    return f"{study.dataset} ({study.source}{split}): {len(ds.train_labels)} train, {len(ds.test_labels)} test"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.pin_threads(args.threads)
    paths = {name: args.results_dir / f"accuracy_{name.replace('-', '_')}.json" for name in STUDIES}
    for name in [] if args.report_only else args.studies:
        study = STUDIES[name]
        for seed in args.seeds:  # seed-major: a stopped run leaves pairs of engines to compare
            ds = load_study(name, seed, args.data_dir)
            for engine in args.engines:
                saved = load_runs(paths[name], study.config(data_line(study, ds), args.threads))
                key = f"{engine}/{seed}"
                if key in saved["runs"]:
                    print(f"{name} {key}: saved in {paths[name]}, skipped")
                    continue
                saved["runs"][key] = train_run(engine, study, seed, ds, args.threads)
                save_runs(paths[name], saved)
    saved_by_study = {name: json.loads(path.read_text(encoding="utf-8")) for name, path in paths.items()
                      if path.exists()}
    common.publish(report(saved_by_study), args.docs, MARKER, args.no_write)
    return 0

if __name__ == "__main__":
    sys.exit(main())
