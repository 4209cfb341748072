"""The tutorial's first half with arraycnn: edge filters, ReLU and pooling on a real digit, in one figure.

    python examples/filters.py --out filters.png [--digit 8] [--no-tf]

Takes the first training digit of the chosen class from the bundled MNIST digits, convolves it with the
tutorial's horizontal and vertical edge filters (``conv2d_forward``, VALID, stride 1: 28x28 -> 26x26),
applies ReLU, then 5x5 average and max pooling with stride 1 (26x26 -> 22x22), and saves one figure
grid. When TensorFlow is installed (and ``--no-tf`` is not given) a third row shows the difference from
``tf.nn.conv2d`` / ``tf.nn.pool`` on the same float64 inputs and its histogram, as the tutorial does:
expect zeros, or rounding noise of order 1e-16.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from arraycnn.data import load_dataset
from arraycnn.functional import avgpool2d_forward, conv2d_forward, maxpool2d_forward, relu_forward

# The tutorial's filters, (KH, KW); arraycnn wants w (K, KH, KW, C) = (1, 3, 3, 1).
HORIZONTAL = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float64)
VERTICAL = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float64)
POOL = 5


def pick_digit(digit: int) -> np.ndarray:
    """The first bundled training image of class ``digit`` as float64 ``x (1, 28, 28, 1)`` in [0, 1]."""
    ds = load_dataset("mnist", source="bundled", log=None)
    index = int(np.flatnonzero(ds.train_labels == digit)[0])
    return ds.train_images[index : index + 1].astype(np.float64) / 255.0


def as_filter(kernel: np.ndarray) -> np.ndarray:
    return kernel.reshape(1, 3, 3, 1)


def arraycnn_steps(x: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate picture of the tutorial's first half, each ``(1, H, W, 1)``."""
    horizontal, _ = conv2d_forward(x, as_filter(HORIZONTAL))
    vertical, _ = conv2d_forward(x, as_filter(VERTICAL))
    chained, _ = conv2d_forward(horizontal, as_filter(VERTICAL))   # the tutorial filters the horizontal output
    relu0, _ = relu_forward(vertical)
    avg, _ = avgpool2d_forward(relu0, POOL, stride=1)
    mx, _ = maxpool2d_forward(relu0, POOL, stride=1)
    relu1, _ = relu_forward(mx)
    return {"digit": x, "horizontal edges": horizontal, "vertical edges": vertical,
            "horizontal, then vertical": chained, "ReLU(vertical)": relu0, f"avg pool {POOL}x{POOL}": avg,
            f"max pool {POOL}x{POOL}": mx, "ReLU(max pool)": relu1}


def tensorflow_differences(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """arraycnn minus TensorFlow for the vertical convolution and both poolings, on the same inputs.

    TensorFlow runs without oneDNN: its reordered sums would add rounding noise to a comparison of float64
    results, and it announces itself on stderr; at log level 3 TensorFlow prints nothing else either.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    x, relu0 = steps["digit"], steps["ReLU(vertical)"]
    tf_conv = tf.nn.conv2d(x, VERTICAL.reshape(3, 3, 1, 1), strides=[1, 1, 1, 1], padding="VALID").numpy()
    tf_pool = {kind: tf.nn.pool(relu0, window_shape=[POOL, POOL], pooling_type=kind, strides=[1, 1],
                                padding="VALID").numpy() for kind in ("AVG", "MAX")}
    return {"conv2d - tf.nn.conv2d": steps["vertical edges"] - tf_conv,
            "avg pool - tf.nn.pool": steps[f"avg pool {POOL}x{POOL}"] - tf_pool["AVG"],
            "max pool - tf.nn.pool": steps[f"max pool {POOL}x{POOL}"] - tf_pool["MAX"]}


def draw(steps: dict[str, np.ndarray], diffs: dict[str, np.ndarray] | None, out: Path) -> Path:
    """One figure: two rows of arraycnn pictures, and a row of differences from TensorFlow when given."""
    rows = 2 if diffs is None else 3
    fig = Figure(figsize=(13, 3.2 * rows), dpi=100, layout="constrained")  # colour bars and labels never overlap
    for i, (title, image) in enumerate(steps.items()):
        ax = fig.add_subplot(rows, 4, i + 1)
        shown = ax.imshow(image[0, :, :, 0], cmap="viridis" if i == 0 else "gray")
        ax.set_title(f"{title}\n{image.shape[1]}x{image.shape[2]}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046)
    if diffs is not None:
        conv_diff = next(iter(diffs.values()))
        for i, (title, diff) in enumerate(diffs.items()):
            ax = fig.add_subplot(rows, 4, 9 + i + (i > 0))
            largest = float(np.abs(diff).max())
            ax.set_title(f"{title}\nmax |diff| = {largest:.1e}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            if largest == 0:
                ax.imshow(np.zeros(diff.shape[1:3]), cmap="gray", vmin=-1, vmax=1)
                ax.text(0.5, 0.5, "identical:\nevery entry is 0", ha="center", va="center", transform=ax.transAxes)
                continue
            shown = ax.imshow(diff[0, :, :, 0], cmap="RdBu_r", vmin=-largest, vmax=largest)  # white = 0
            fig.colorbar(shown, ax=ax, fraction=0.046, format="%.0e")
        ax = fig.add_subplot(rows, 4, 10)
        ax.hist(conv_diff.ravel(), bins=20)
        ax.set_yscale("log")  # the few rounding differences show next to the many exact zeros
        ax.set_title("histogram of conv2d - tf.nn.conv2d", fontsize=10)
        ax.set_xlabel("difference")
        ax.set_ylabel("entries")
    fig.suptitle("the tutorial's filters, ReLU and pooling, computed by arraycnn", fontsize=13)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("filters.png"), help="the PNG to write")
    parser.add_argument("--digit", type=int, default=8, choices=range(10), help="which class to show (default 8)")
    parser.add_argument("--no-tf", action="store_true", help="skip the comparison with TensorFlow")
    args = parser.parse_args(argv)

    steps = arraycnn_steps(pick_digit(args.digit))
    for title, image in steps.items():
        print(f"{title:>26}: {image.shape[1]}x{image.shape[2]}, values {image.min():+.3f} .. {image.max():+.3f}")
    diffs = None
    if not args.no_tf and importlib.util.find_spec("tensorflow") is not None:
        diffs = tensorflow_differences(steps)
        for title, diff in diffs.items():
            print(f"{title:>26}: max |difference| = {np.abs(diff).max():.3e}")
    elif not args.no_tf:
        print("TensorFlow is not installed: the comparison row is left out")
    print(f"wrote {draw(steps, diffs, args.out)}")


if __name__ == "__main__":
    main()
