"""Command-line arguments the examples share (each example runs as a script, so this folder is on ``sys.path``)."""

from __future__ import annotations

import argparse

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
