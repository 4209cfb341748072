"""examples/filters.py and examples/tutorial.py run headless as scripts and write their PNGs."""

from __future__ import annotations

import base64
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_example

pytest.importorskip("matplotlib")
from matplotlib.image import imread

# the tutorial's pictures, in the order it draws them
PICTURES = ("digit", "edges", "relu_and_pooling", "history", "filters", "feature_maps", "confusion_matrix",
            "misclassified")
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def run(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run an example as a user would, in ``cwd``; returns the finished process, fails with its output otherwise."""
    proc = run_example(script, cwd, *args, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"
    pixels = imread(path)
    assert min(pixels.shape[:2]) >= min_side and pixels[..., :3].std() > 0.01, f"{path} is empty or blank"


@pytest.mark.slow
@pytest.mark.parametrize("tf", [False, True] if HAS_TF else [False])
def test_filters_example(tmp_path, tf):
    out = tmp_path / "figs" / "filters.png"
    proc = run("filters.py", "--out", str(out), *([] if tf else ["--no-tf"]), cwd=tmp_path)
    stdout = proc.stdout
    assert proc.stderr == "", proc.stderr   # no TensorFlow log lines
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
    stdout = run("tutorial.py", "--epochs", "1", cwd=tmp_path, env={"ARRAYCNN_TUTORIAL_OUT": str(out_dir)}).stdout
    assert stdout.count("Difference from truth: 0.0  (max |entry| 0.0)") == 3   # the tutorial's three check cells
    assert "gradcheck passed for my_dense_backward" in stdout
    assert "gradcheck FAILED for wrong_dense_backward" in stdout
    for name in PICTURES:
        assert_png(out_dir / f"{name}.png")


def test_tutorial_help_documents_out_dir(tmp_path):
    stdout = run("tutorial.py", "--help", cwd=tmp_path).stdout
    assert "--out-dir OUT_DIR  where the pictures (PNG) are written; default" in stdout
    assert "tutorial_out" in stdout and list(tmp_path.iterdir()) == []   # --help writes nothing


@pytest.mark.slow
def test_tutorial_runs_in_a_jupyter_kernel_and_shows_its_pictures_inline(tmp_path, monkeypatch):
    """The tutorial opened as a notebook (jupytext) and run by a real kernel (nbclient): every picture it saves
    also shows under its cell, as a PNG output, and no cell fails."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = jupytext.read(EXAMPLES / "tutorial.py")
    out_dir = tmp_path / "pictures"
    monkeypatch.setenv("ARRAYCNN_TUTORIAL_OUT", str(out_dir))   # the kernel inherits it (a notebook has no argv)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    inline = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    saved = [(out_dir / f"{name}.png").read_bytes() for name in PICTURES]
    assert inline == saved   # each saved picture shown once, in the tutorial's order


def test_tutorial_is_a_percent_format_notebook():
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(EXAMPLES / "tutorial.py")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds.count("markdown") >= 10 and kinds.count("code") >= 10
    assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
