"""examples/filters.py and examples/tutorial.py run headless as scripts and write their PNGs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def run(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run an example with the Agg backend in ``cwd``; returns its stdout, fails with its output otherwise."""
    env = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"
    pixels = imread(path)
    assert min(pixels.shape[:2]) >= min_side and pixels[..., :3].std() > 0.01, f"{path} is empty or blank"


@pytest.mark.slow
@pytest.mark.parametrize("tf", [False, True] if HAS_TF else [False])
def test_filters_example(tmp_path, tf):
    out = tmp_path / "figs" / "filters.png"
    stdout = run("filters.py", "--out", str(out), *([] if tf else ["--no-tf"]), cwd=tmp_path)
    assert_png(out)
    rows = 3 if tf else 2          # the TensorFlow row is added below the two rows of arraycnn pictures
    assert imread(out).shape[:2] == (round(320 * rows), 1300)
    assert re.search(r"max pool 5x5: 22x22", stdout)
    if tf:
        diffs = [float(v) for v in re.findall(r"max \|difference\| = (\S+)", stdout)]
        assert len(diffs) == 3 and max(diffs) < 1e-12, stdout   # float64 on both sides: rounding noise at most
    assert list(tmp_path.glob("*.png")) == []   # nothing written outside --out


@pytest.mark.slow
def test_tutorial_example(tmp_path):
    out_dir = tmp_path / "tutorial_pictures"
    stdout = run("tutorial.py", "--epochs", "1", cwd=tmp_path, env={"ARRAYCNN_TUTORIAL_OUT": str(out_dir)})
    assert stdout.count("Difference from truth: 0.0  (max |entry| 0.0)") == 3   # the tutorial's three check cells
    assert "gradcheck passed for my_dense_backward" in stdout
    assert "gradcheck FAILED for wrong_dense_backward" in stdout
    for name in ("digit", "edges", "relu_and_pooling", "history", "filters", "feature_maps", "confusion_matrix",
                 "misclassified"):
        assert_png(out_dir / f"{name}.png")


def test_tutorial_is_a_percent_format_notebook():
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(EXAMPLES / "tutorial.py")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds.count("markdown") >= 10 and kinds.count("code") >= 10
    assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
