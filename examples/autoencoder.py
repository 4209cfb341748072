"""Train a convolutional autoencoder on MNIST with arraycnn: digits in, the same digits back out.

    python examples/autoencoder.py                          # NumPy; offline it uses the 5,000 bundled digits
    python examples/autoencoder.py --plot reconstructions.png
    python examples/autoencoder.py --dataset fashion_mnist --source idx --data-dir /usr/share/datasets/fashion-mnist

The network is :func:`arraycnn.models.conv_autoencoder` (two stride-2 convolutions down to a 7x7x32 code,
two stride-2 transposed convolutions back up, a sigmoid) trained with the mean squared error between each
image and its reconstruction. Prints a config header and one line per epoch with the train and test MSE,
and ends on ``final test MSE <number>``; ``--plot`` writes test digits beside their reconstructions.

Exit status: 0 done; 1 the loss became NaN/inf; 2 bad arguments or data; 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _cli import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_data_arguments,
    add_placement_arguments,
    int_at_least,
    learning_rate,
)

import arraycnn
from arraycnn import data
from arraycnn.backend import BackendUnavailableError, backend_name, to_numpy
from arraycnn.models import conv_autoencoder
from arraycnn.optim import Adam

DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 1e-3
SHOW_RECONSTRUCTIONS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 done, 1 diverged (NaN/inf loss), 2 bad arguments/data, 130 Ctrl-C.")
    add_placement_arguments(p)
    add_data_arguments(p)
    p.add_argument("--epochs", type=int_at_least(0), default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE,
                   help=f"default {DEFAULT_BATCH_SIZE}")
    p.add_argument("--lr", type=learning_rate, default=DEFAULT_LR, help=f"Adam's learning rate; default {DEFAULT_LR}")
    p.add_argument("--dtype", default="float32", choices=arraycnn.backend.DTYPES, help="default float32")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="seeds the weights, the data split and every epoch's order")
    p.add_argument("--plot", type=Path, metavar="PATH",
                   help=f"write {SHOW_RECONSTRUCTIONS} test digits beside their reconstructions to this PNG")
    p.add_argument("--metrics-json", type=Path, metavar="PATH", help="write the run's metrics as JSON")
    args = p.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install 'arraycnn[plot]'")
    return args


def reconstruction_mse(model: Any, images: np.ndarray) -> float:
    """The mean squared error of the model's reconstructions of host uint8 ``images (N, 28, 28, 1)`` (eval mode):
    the images are their own targets."""
    return model.evaluate(images, images)[0]


def train_epoch(model: Any, optimizer: Adam, ds: data.Dataset, batch_size: int, seed: int, epoch: int) -> float:
    """One epoch over ``epoch``'s seeded batches, each its own target; returns the mean train MSE (read once)."""
    loss_sum = model.xp.zeros((), dtype=model.dtype, device=model.device)
    for images, _ in data.epoch_batches(ds.train_images, ds.train_labels, batch_size, seed, epoch):
        x = model.to_device_inputs(images)
        loss, _ = model.execution.train_step(model, x, x, optimizer)
        loss_sum = loss_sum + loss * images.shape[0]
    return float(to_numpy(loss_sum)) / len(ds.train_labels)


def train(args: argparse.Namespace, log: Any) -> int:
    """Load, train, report; returns the exit status."""
    started = time.perf_counter()
    try:
        ds = data.load_dataset(args.dataset, args.source, args.data_dir, args.train_size, args.test_size,
                               seed=args.seed, log=log)
        model = conv_autoencoder(args.backend, args.dtype, args.seed, device=args.device)
    except (FileNotFoundError, ValueError, TypeError, ImportError, BackendUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    optimizer = Adam(args.lr)
    log("\n".join([
        f"arraycnn {arraycnn.__version__}: a convolutional autoencoder on {ds.name}",
        f"  data      {ds.description}",
        f"  backend   {backend_name(model.xp)}, {model.dtype_name}, device {args.device or 'default'}",
        f"  model     conv_autoencoder (Conv 16/32 stride 2 down to 7x7x32, ConvTranspose 16/1 back up, sigmoid), "
        f"{model.num_parameters():,} parameters, MSE loss",
        f"  training  {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr:g}, seed {args.seed}",
    ]))
    history: list[dict[str, Any]] = []
    status, code = "completed", 0
    n = len(ds.train_labels)
    try:
        for epoch in range(args.epochs):
            start = time.perf_counter()
            train_mse = train_epoch(model, optimizer, ds, args.batch_size, args.seed, epoch)
            seconds = time.perf_counter() - start
            if not math.isfinite(train_mse):
                log(f"training diverged: the mean train MSE is {train_mse} in epoch {epoch + 1}; try a smaller --lr")
                status, code = "diverged", EXIT_DIVERGED
                break
            record = {"epoch": epoch + 1, "train_mse": train_mse, "test_mse": reconstruction_mse(model, ds.test_images),
                      "seconds": seconds, "images_per_second": n / seconds}
            history.append(record)
            log(f"epoch {record['epoch']:>{len(str(args.epochs))}}/{args.epochs}  train MSE {train_mse:.5f}  "
                f"test MSE {record['test_mse']:.5f}  {seconds:.1f} s  {record['images_per_second']:,.0f} img/s")
    except KeyboardInterrupt:
        status, code = "interrupted", EXIT_INTERRUPTED
        log(f"\ninterrupted during epoch {len(history) + 1}")
    final = history[-1]["test_mse"] if history else reconstruction_mse(model, ds.test_images)
    seconds = time.perf_counter() - started
    if args.metrics_json:
        write_metrics(args, ds, model, history, status, final, seconds)
    if args.plot and code != EXIT_DIVERGED:
        from arraycnn.plot import plot_reconstructions

        shown = ds.test_images[:SHOW_RECONSTRUCTIONS]
        path = plot_reconstructions(shown, model.predict(model.to_device_inputs(shown)), args.plot)
        log(f"reconstructions: {path}")
    if code == 0:
        log(f"{seconds:.1f} s in all; the test MSE is the mean over {len(ds.test_labels):,} test images' pixels")
        log(f"final test MSE {final:.5f}")
    return code


def write_metrics(args: argparse.Namespace, ds: data.Dataset, model: Any, history: list[dict[str, Any]],
                  status: str, final: float, seconds: float) -> None:
    metrics = {
        "arraycnn": arraycnn.__version__, "status": status, "model": "conv_autoencoder",
        "backend": backend_name(model.xp), "device": args.device, "dtype": model.dtype_name, "dataset": ds.name,
        "source": ds.source, "train_size": len(ds.train_labels), "test_size": len(ds.test_labels),
        "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "adam", "lr": args.lr, "seed": args.seed,
        "history": history, "final_test_mse": final, "wall_seconds": seconds,
    }
    args.metrics_json.parent.mkdir(parents=True, exist_ok=True)
    args.metrics_json.write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args, print)
    except KeyboardInterrupt:  # outside the epochs (loading data, the final report)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
