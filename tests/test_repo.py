"""Repository hygiene that CI must enforce: lint, the strict docs build, and the engine's import rules."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with the 'test' extra")
    return found


def test_ruff_passes():
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_build_strictly(tmp_path):
    """mkdocs --strict: a broken link, anchor, snippet or API reference fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([_tool("mkdocs"), "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "site" / "backprop" / "index.html").stat().st_size > 10_000


def test_engine_never_imports_tensorflow_or_torch_and_only_backend_names_cupy():
    """tensorflow_datasets (the data extra) is allowed; TensorFlow itself is a test oracle only. The
    communicator seam (distributed.py) is the one other place for CuPy, for its NCCL, and the only one for
    mpi4py."""
    forbidden = re.compile(r"^\s*(?:import|from)\s+(tensorflow|torch|cupy|mpi4py)\b(?!_)", re.MULTILINE)
    allowed = {"cupy": {"backend.py", "distributed.py"}, "mpi4py": {"distributed.py"}}
    offenders = []
    for path in (ROOT / "arraycnn").rglob("*.py"):
        for match in forbidden.finditer(path.read_text()):
            if path.name not in allowed.get(match.group(1), ()):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert not offenders, offenders
