"""Pictures of training: learning curves, filters, feature maps, a confusion matrix, confident mistakes.

Needs matplotlib (``pip install 'arraycnn[plot]'``). Figures are built with matplotlib's object API
(``matplotlib.figure.Figure`` rendered by the Agg canvas), so nothing here touches pyplot's global state or
needs a display: it runs headless, in threads and next to a notebook's own backend. Every function writes
one PNG of ``figsize`` inches at :data:`DPI` dots per inch (so ``figsize * DPI`` pixels, no tight
cropping), creates the parent folder, and returns the path. Arrays from any backend are read on the host
through :func:`arraycnn.backend.to_numpy`.

After training (``history`` as returned by :func:`arraycnn.train.fit`)::

    from arraycnn.plot import save_training_plots
    paths = save_training_plots(model, history, ds.test_images, ds.test_labels, "plots/")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_int
from .backend import to_device, to_numpy

DPI = 100
"""Dots per inch of every saved figure: a PNG is ``figsize[0] * DPI`` by ``figsize[1] * DPI`` pixels."""

PathLike = str | os.PathLike

__all__ = [
    "DPI",
    "confident_mistakes",
    "plot_confusion_matrix",
    "plot_feature_maps",
    "plot_filters",
    "plot_history",
    "plot_misclassified",
    "plot_reconstructions",
    "save_training_plots",
]


def _figure(figsize: tuple[float, float]) -> Any:
    """A new ``matplotlib.figure.Figure`` (no pyplot, no global backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(f"arraycnn.plot needs matplotlib: pip install 'arraycnn[plot]' ({exc})") from exc
    if len(figsize) != 2 or not all(isinstance(v, int | float) and v > 0 for v in figsize):
        raise ValueError(f"figsize must be (width, height) in inches, both > 0, got {figsize!r}")
    return Figure(figsize=figsize, dpi=DPI)


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels, at most ``max_cols`` wide, rows as evenly filled as possible."""
    rows = math.ceil(n / max_cols)
    return rows, math.ceil(n / rows)


def _as_images(images: Any, name: str) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, 1)`` images (uint8 0..255 or floats) -> float ``(N, H, W)``."""
    host = np.asarray(to_numpy(images))
    if host.ndim == 4 and host.shape[-1] == 1:
        host = host[..., 0]
    if host.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) or (N, H, W, 1) images, got shape {host.shape}")
    return host.astype(np.float64) / (255.0 if host.dtype == np.uint8 else 1.0)


def _as_labels(labels: Any, name: str, n: int | None = None) -> np.ndarray:
    host = np.asarray(to_numpy(labels))
    if host.ndim != 1 or not np.issubdtype(host.dtype, np.integer) or (host < 0).any():
        raise ValueError(f"{name} must be non-negative integer class ids (N,), got {host.dtype} {host.shape}")
    if n is not None and len(host) != n:
        raise ValueError(f"{name} must have N = {n} entries, got {len(host)}")
    return host.astype(np.int64)


def _hide_ticks(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- learning curves


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def plot_history(history: Sequence[Mapping[str, Any]], path: PathLike,
                 figsize: tuple[float, float] = (10, 4), augment: bool = False) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and test, on whole-epoch ticks.

    ``history``: one dict per epoch with ``epoch`` and any of ``train_loss``, ``test_loss``, ``train_acc``,
    ``test_acc`` (accuracies as fractions; missing or None values are skipped). A caption says how the two
    differ: train is the running mean over the epoch's batches while the weights still change (with
    ``augment``, on randomly shifted images, which are harder), test is measured after the epoch; so train
    accuracy can sit below test accuracy without anything being wrong.
    """
    if not history or not all(isinstance(r, Mapping) and "epoch" in r for r in history):
        raise ValueError("history must be a non-empty list of dicts with an 'epoch' key (as fit() returns)")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize)
    epochs = [r["epoch"] for r in history]
    first, last = min(epochs), max(epochs)
    panels = (("loss", "cross-entropy", 1.0), ("acc", "accuracy (%)", 100.0))
    for col, (key, ylabel, scale) in enumerate(panels):
        ax = fig.add_subplot(1, 2, col + 1)
        for split, style in (("train", "o-"), ("test", "s--")):
            points = [(e, r[f"{split}_{key}"] * scale) for e, r in zip(epochs, history, strict=True)
                      if r.get(f"{split}_{key}") is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=split)
        ax.set_xlabel("epoch")
        if last - first < 12:  # whole epochs only: a tick at each, none at 1.5 (nor at 0.99 for one epoch)
            ax.set_xticks(range(first, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(first - 0.5, last + 0.5)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"training history ({_epochs(len(history))})")
    shifted = " on randomly shifted images (augmentation, harder)," if augment else ""
    fig.text(0.5, 0.02, f"train: the running mean over each epoch's batches,{shifted} while the weights still change\n"
             "test: measured after the epoch, so train accuracy can sit below test accuracy",
             ha="center", va="bottom", fontsize=8, color="0.35", linespacing=1.4)
    fig.subplots_adjust(wspace=0.3, top=0.88, bottom=0.26)
    return _save(fig, path)


# --------------------------------------------------------------------------- filters and feature maps


def _first_conv_weights(model_or_w: Any) -> np.ndarray:
    """The first 4-D ``w (K, KH, KW, C)`` of a model's layers, or the given array itself, on the host."""
    if hasattr(model_or_w, "layers"):
        for layer in model_or_w.layers:
            w = getattr(layer, "params", {}).get("w")
            if w is not None and w.ndim == 4:
                return np.asarray(to_numpy(w), dtype=np.float64)
        raise ValueError("model_or_w: the model has no convolution layer (no 4-D params['w'])")
    w = np.asarray(to_numpy(model_or_w), dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"model_or_w must be a model or filters w (K, KH, KW, C), got shape {w.shape}")
    return w


def plot_filters(model_or_w: Any, path: PathLike, figsize: tuple[float, float] | None = None) -> Path:
    """The first convolution's learned filters ``w (K, KH, KW, C)``, one panel each (mean over ``C``).

    One diverging colour scale for all filters, centred on 0 (red positive, blue negative), so their
    strengths compare. Default ``figsize``: ``(1.6·cols + 1, 1.6·rows + 0.8)`` for ``K`` panels in rows of
    at most 8.
    """
    w = _first_conv_weights(model_or_w)
    k, kh, kw, c = w.shape
    rows, cols = _grid(k, 8)
    fig = _figure(figsize or (1.6 * cols + 1, 1.6 * rows + 0.8))
    vmax = float(np.max(np.abs(w))) or 1.0
    image = None
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = ax.imshow(w[i].mean(axis=-1), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"filter {i}", fontsize=9)
        _hide_ticks(ax)
    fig.colorbar(image, ax=fig.axes, shrink=0.8)
    channels = "" if c == 1 else f", mean over {c} channels"
    fig.suptitle(f"first convolution: {k} filters {kh}x{kw}{channels}")
    return _save(fig, path)


def _layer_outputs(model: Any, image: Any) -> list[tuple[str, np.ndarray]]:
    """``[("input", x), (layer name, its output), ...]`` for one image, each on the host without the batch axis."""
    host = np.asarray(to_numpy(image))
    if host.ndim == 4 and host.shape[0] == 1:
        host = host[0]
    if host.ndim == 2:
        host = host[..., None]
    if host.ndim != 3:
        raise ValueError(f"image must be (H, W), (H, W, C) or (1, H, W, C), got shape {host.shape}")
    host = host.astype(np.float64) / (255.0 if host.dtype == np.uint8 else 1.0)
    x = to_device(host[None], model.xp, model.dtype, model.device)
    outputs = [("input", host)]
    for layer in model.layers:
        x = layer.forward(x, train=False)
        outputs.append((type(layer).__name__, np.asarray(to_numpy(x), dtype=np.float64)[0]))
    return outputs


def plot_feature_maps(model: Any, image: Any, path: PathLike, max_channels: int = 8,
                      figsize: tuple[float, float] | None = None) -> Path:
    """One digit through every layer of ``model``: a row per layer, up to ``max_channels`` maps each.

    ``image``: ``(H, W)``, ``(H, W, C)`` or ``(1, H, W, C)``, uint8 0..255 (scaled to [0, 1]) or floats.
    Maps ``(H, W, C)`` are drawn channel by channel, the first ``max_channels`` of them (each row's label
    says which of how many it shows); vectors as bars (up to 64 entries) or as a strip,
    and the last row (the logits) marks the predicted class. Default ``figsize``:
    ``(1.3·max_channels + 1.5, 1.3·rows)`` for ``rows = 1 + len(model.layers)``.
    """
    max_channels = check_int(max_channels, "max_channels", 1)
    outputs = _layer_outputs(model, image)
    rows = len(outputs)
    fig = _figure(figsize or (1.3 * max_channels + 1.5, 1.3 * rows))
    grid = fig.add_gridspec(rows, max_channels, left=0.14, right=0.98, top=0.95, bottom=0.03, hspace=0.45)
    for r, (name, out) in enumerate(outputs):
        label = f"{name}\n{'x'.join(map(str, out.shape))}"
        if out.ndim == 3 and out.shape[-1] > max_channels:
            label += f"\nchannels 0-{max_channels - 1}\nof {out.shape[-1]}"
        if out.ndim == 3:
            for ch in range(min(out.shape[-1], max_channels)):
                ax = fig.add_subplot(grid[r, ch])
                ax.imshow(out[..., ch], cmap="gray_r" if r == 0 else "gray")
                _hide_ticks(ax)
                if ch == 0:
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        else:
            ax = fig.add_subplot(grid[r, :])
            _plot_vector(ax, out.reshape(-1), mark_max=r == rows - 1)
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    cut = max((out.shape[-1] for _, out in outputs if out.ndim == 3), default=0) > max_channels
    shown = f": the first {max_channels} channels of each" if cut else ""
    fig.suptitle(f"feature maps of one digit, layer by layer{shown}", fontsize=10)
    return _save(fig, path)


def _plot_vector(ax: Any, v: np.ndarray, mark_max: bool) -> None:
    if v.size > 64:
        ax.imshow(v[None, :], aspect="auto", cmap="gray")
        _hide_ticks(ax)
        return
    colors = ["tab:red" if mark_max and i == int(np.argmax(v)) else "tab:blue" for i in range(v.size)]
    ax.bar(np.arange(v.size), v, color=colors)
    ax.set_yticks([])
    if mark_max:
        ax.set_xticks(np.arange(v.size))
        ax.tick_params(labelsize=7)
    else:
        ax.set_xticks([])


# --------------------------------------------------------------------------- evaluation


def plot_confusion_matrix(y_true: Any, y_pred: Any, path: PathLike, class_names: Sequence[str] | None = None,
                          figsize: tuple[float, float] = (7, 6)) -> Path:
    """Counts of (true class, predicted class) for integer ids ``y_true (N,)`` and ``y_pred (N,)``.

    ``class_names`` (one per class) label the axes; without them the classes are ``0 .. max id``.
    """
    y_true = _as_labels(y_true, "y_true")
    y_pred = _as_labels(y_pred, "y_pred", len(y_true))
    if len(y_true) == 0:
        raise ValueError("y_true must hold at least one label")
    k = len(class_names) if class_names is not None else int(max(y_true.max(), y_pred.max())) + 1
    if max(y_true.max(), y_pred.max()) >= k:
        raise ValueError(f"class ids must be < len(class_names) = {k}, got {max(y_true.max(), y_pred.max())}")
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    counts = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(counts, cmap="Blues")
    for (t, p), n in np.ndenumerate(counts):
        if n:
            ax.text(p, t, str(n), ha="center", va="center", fontsize=8,
                    color="white" if n > counts.max() / 2 else "black")
    ax.set_xticks(np.arange(k), names)
    ax.set_yticks(np.arange(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax)
    accuracy = float(np.trace(counts)) / len(y_true)
    ax.set_title(f"confusion matrix: accuracy {accuracy:.2%} on {len(y_true)} images")
    return _save(fig, path)


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows that already are probabilities are kept; anything else is taken as logits and soft-maxed."""
    if (scores >= 0).all() and (scores <= 1).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        return scores
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def confident_mistakes(y_true: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most ``k`` misclassified rows of ``probs (N, K)``, most confident (highest max) first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    return wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:k]


def plot_misclassified(images: Any, y_true: Any, probs_or_logits: Any, path: PathLike, k: int = 16,
                       figsize: tuple[float, float] | None = None, class_names: Sequence[str] | None = None) -> Path:
    """The ``k`` most confidently misclassified images: wrong predictions sorted by their probability.

    ``images (N, H, W[, 1])``, ``y_true (N,)``, ``probs_or_logits (N, K)`` (rows summing to 1 are read as
    probabilities, anything else as logits). Each panel says ``predicted (probability) / true``, as class
    ids or, given ``class_names`` (one per class), as names on two lines.
    Default ``figsize``: ``(1.5·cols, 1.8·rows + 0.5)`` for ``k`` panels in rows of at most 8.
    """
    k = check_int(k, "k", 1)
    images = _as_images(images, "images")
    y_true = _as_labels(y_true, "y_true", len(images))
    scores = np.asarray(to_numpy(probs_or_logits), dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(images):
        raise ValueError(f"probs_or_logits must be (N, K) with N = {len(images)}, got shape {scores.shape}")
    if class_names is not None and len(class_names) != scores.shape[1]:
        raise ValueError(f"class_names must name the K = {scores.shape[1]} classes, got {len(class_names)}")
    probs = _probabilities(scores)
    pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(pred)), pred]
    shown, n_wrong = confident_mistakes(y_true, probs, k), int((pred != y_true).sum())
    rows, cols = _grid(k, 8)
    fig = _figure(figsize or (1.5 * cols, 1.8 * rows + 0.5))
    for i, n in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[n], cmap="gray_r", vmin=0.0, vmax=1.0)
        title = (f"{pred[n]} ({confidence[n]:.0%}) / {y_true[n]}" if class_names is None else
                 f"{class_names[pred[n]]} ({confidence[n]:.0%})\n/ {class_names[y_true[n]]}")
        ax.set_title(title, fontsize=9 if class_names is None else 8, color="tab:red")
        _hide_ticks(ax)
    if len(shown) == 0:
        fig.text(0.5, 0.5, f"no misclassified images among {len(images)}", ha="center", va="center")
    fig.suptitle(f"most confident mistakes: predicted (probability) / true; {n_wrong} of {len(images)} wrong")
    return _save(fig, path)


# --------------------------------------------------------------------------- everything at once


def save_training_plots(model: Any, history: Sequence[Mapping[str, Any]] | None, test_images: np.ndarray,
                        test_labels: np.ndarray, out_dir: PathLike, batch_size: int = 1000,
                        class_names: Sequence[str] | None = None, augment: bool = False) -> dict[str, Path]:
    """Write every picture of a trained ``model`` into ``out_dir``; returns ``{name: path}``.

    ``history.png`` (when ``history`` is non-empty), ``filters.png``, ``feature_maps.png`` (the first test
    image), ``confusion_matrix.png`` and ``misclassified.png``. ``test_images``: host uint8
    ``(N, 28, 28, 1)``; ``test_labels``: int ``(N,)``; predictions run in batches of ``batch_size``.
    ``class_names`` label the confusion matrix and the mistakes (e.g. ``arraycnn.data.class_names(ds)``);
    ``augment``: the training images were randomly shifted (the history's caption says so).
    """
    test_labels = _as_labels(test_labels, "test_labels", len(test_images))
    if len(test_labels) == 0:
        raise ValueError("test_images must hold at least one image")
    out = Path(out_dir)
    logits = np.concatenate([
        to_numpy(model.predict(model.to_device_inputs(test_images[i:i + batch_size])))
        for i in range(0, len(test_labels), batch_size)
    ])
    paths = {}
    if history:
        paths["history"] = plot_history(history, out / "history.png", augment=augment)
    paths["filters"] = plot_filters(model, out / "filters.png")
    paths["feature_maps"] = plot_feature_maps(model, test_images[0], out / "feature_maps.png")
    paths["confusion_matrix"] = plot_confusion_matrix(test_labels, logits.argmax(axis=1), out / "confusion_matrix.png",
                                                      class_names=class_names)
    paths["misclassified"] = plot_misclassified(test_images, test_labels, logits, out / "misclassified.png",
                                                class_names=class_names)
    return paths


# --------------------------------------------------------------------------- autoencoders


def plot_reconstructions(images: Any, reconstructions: Any, path: PathLike,
                         figsize: tuple[float, float] | None = None) -> Path:
    """Images (top row) above an autoencoder's reconstructions of them (bottom row), one column per image.

    ``images`` and ``reconstructions``: ``(N, H, W)`` or ``(N, H, W, 1)``, uint8 0..255 or floats in
    ``[0, 1]``, any backend. Each column is titled with that image's squared error, mean over its pixels.
    Default ``figsize``: ``(1.2·N + 0.4, 3)``.
    """
    images = _as_images(images, "images")
    recon = _as_images(reconstructions, "reconstructions")
    if recon.shape != images.shape or len(images) == 0:
        raise ValueError(f"reconstructions must match images' non-empty shape {images.shape}, got {recon.shape}")
    n = len(images)
    errors = ((images - recon) ** 2).reshape(n, -1).mean(axis=1)
    fig = _figure(figsize or (1.2 * n + 0.4, 3))
    for row, (name, pictures) in enumerate((("input", images), ("output", recon))):
        for i in range(n):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(pictures[i], cmap="gray_r", vmin=0.0, vmax=1.0)
            _hide_ticks(ax)
            if row == 1:
                ax.set_title(f"{errors[i]:.4f}", fontsize=8)
            if i == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"test images (top) and their reconstructions (bottom, titled with their MSE); "
                 f"mean {errors.mean():.4f}", fontsize=9)
    return _save(fig, path)
