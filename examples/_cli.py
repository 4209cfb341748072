"""Command-line arguments the examples share (each example runs as a script, so this folder is on ``sys.path``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from arraycnn import data
from arraycnn.backend import KNOWN_BACKENDS

EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
SOURCE_HELP = ("auto: IDX files in --data-dir, else tensorflow-datasets (prepared, or a download when online), "
               "else the 5,000 bundled digits (mnist only)")


def add_placement_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend LIBRARY`` (default numpy) and ``--device DEVICE`` (default: the library's default device)."""
    p.add_argument("--backend", default="numpy", metavar="LIBRARY",
                   help=f"the array library: {', '.join(KNOWN_BACKENDS)}, or the name of any importable Array API "
                        "library (e.g. torch, through array-api-compat); default numpy")
    p.add_argument("--device", metavar="DEVICE",
                   help="where the model lives, as its library names devices: a CUDA device id for cupy (0, 1), "
                        "a device string for torch (cpu, cuda:1), a device name for array_api_strict (device1); "
                        "default: the library's default device")


def add_data_arguments(p: argparse.ArgumentParser, resumable: bool = False) -> None:
    """``--dataset``, ``--source``, ``--data-dir``, ``--train-size``, ``--test-size``. ``resumable``: no
    defaults (None: the example resolves them, e.g. from a checkpoint) and each help marked ``*``."""
    mark = "* " if resumable else ""
    p.add_argument("--dataset", default=None if resumable else "mnist", choices=data.NAMES,
                   help=f"{mark}default mnist")
    p.add_argument("--source", default=None if resumable else "auto", choices=data.SOURCES,
                   help=f"{mark}default {SOURCE_HELP}")
    p.add_argument("--data-dir", help=f"{mark}an IDX directory or the tensorflow-datasets data dir")
    p.add_argument("--train-size", type=int_at_least(1), help=f"{mark}a stratified subset of the training set; "
                                                              "default all")
    p.add_argument("--test-size", type=int_at_least(1), help=f"{mark}a stratified subset of the test set; default all")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``; anything else exits 2 naming the option, before any work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def learning_rate(text: str) -> float:
    """An argparse type: a finite number > 0 (``nan``, ``inf``, 0 and negatives exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
