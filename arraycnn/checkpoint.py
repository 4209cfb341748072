"""Checkpoint files: ONE ``.npz`` of plain arrays plus a JSON metadata string, never a pickle.

Layout of a checkpoint (``np.load(path, allow_pickle=False)`` reads it)::

    meta            0-d unicode array: JSON {"format": "arraycnn-checkpoint", "version": 1, ...}
    param/<name>    the model's parameters, e.g. param/0.w, param/0.b (see Sequential.named_parameters)
    state/<name>    the layers' non-trained state, e.g. state/1.running_mean (see Layer.state)
    optim/<key>     the optimizer's state_dict, e.g. optim/t, optim/m.0 (training checkpoints)

:func:`write_npz` writes atomically: a temporary file in the same directory, flushed and fsync'ed, then
``os.replace`` onto the target, so a crash or Ctrl-C mid-write leaves the previous file intact.
:func:`read_npz` turns every way a file can be wrong (missing, truncated, not a zip, holding a pickled
object array, no or bad metadata) into a FileNotFoundError/ValueError that names the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "arraycnn-checkpoint"
VERSION = 1
META_KEY = "meta"
PARAM_PREFIX = "param/"
STATE_PREFIX = "state/"
OPTIM_PREFIX = "optim/"

__all__ = [
    "FORMAT", "META_KEY", "OPTIM_PREFIX", "PARAM_PREFIX", "STATE_PREFIX", "VERSION", "read_npz", "write_npz",
]


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Atomically write ``arrays`` (host, non-object) and ``meta`` (JSON-able) to ``path``; returns the path.

    The file name is used exactly as given (no ``.npz`` is appended).
    """
    path = Path(path)
    if META_KEY in arrays:
        raise ValueError(f"arrays must not use the reserved key {META_KEY!r}")
    host = {key: np.asarray(value) for key, value in arrays.items()}
    for key, value in host.items():
        if value.dtype.hasobject:
            raise TypeError(f"arrays[{key!r}] has dtype object, which only a pickle could store")
    host[META_KEY] = np.asarray(json.dumps({"format": FORMAT, "version": VERSION, **meta}))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **host)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays without the metadata, metadata dict)`` of a checkpoint written by :func:`write_npz`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not an .npz (zip) archive: the file is truncated or corrupt "
                         f"({path.stat().st_size} bytes)")
    arrays = _read_arrays(path)
    meta = _parse_meta(path, arrays.pop(META_KEY, None))
    return arrays, meta


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: _read_one(path, npz, key) for key in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None


def _read_one(path: Path, npz: Any, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(f"checkpoint {path} holds a pickled object array under {key!r}; refusing to load it "
                             "(checkpoints hold plain arrays and are read with allow_pickle=False)") from None
        raise ValueError(f"checkpoint {path}: entry {key!r} is corrupt ({exc})") from None


def _parse_meta(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    if raw is None:
        raise ValueError(f"checkpoint {path} has no {META_KEY!r} entry: it is not an arraycnn checkpoint")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ValueError(f"checkpoint {path}: {META_KEY!r} must be a JSON string, got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {path}: {META_KEY!r} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not an arraycnn checkpoint (metadata format is not {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {meta.get('version')!r}; "
                         f"this arraycnn reads version {VERSION}")
    return meta
