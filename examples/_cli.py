"""Command-line arguments the examples share (each example runs as a script, so this folder is on ``sys.path``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from arraycnn.backend import KNOWN_BACKENDS

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
