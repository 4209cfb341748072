"""arraycnn.plot: every function writes a non-empty PNG of figsize * DPI pixels, headless, from a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread

from arraycnn import plot
from arraycnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from arraycnn.model import Sequential

N, K = 12, 4


@pytest.fixture(scope="module")
def model():
    """Conv 3@3x3 -> ReLU -> MaxPool 2 -> Flatten -> Dense 4 on 8x8x1 images."""
    return Sequential([Conv2D(1, 3, 3, rng=0), ReLU(), MaxPool2D(2), Flatten(), Dense(3 * 3 * 3, K, rng=1)])


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(N, 8, 8, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def labels():
    return np.arange(N, dtype=np.int64) % K


HISTORY = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.5 + 0.1 * e, "test_loss": 2.2 / e,
            "test_acc": 0.45 + 0.1 * e} for e in (1, 2, 3)]


def assert_png(path, figsize):
    """A non-empty PNG of exactly figsize * DPI pixels that is not one flat colour."""
    assert path.suffix == ".png" and path.stat().st_size > 0
    pixels = imread(path)
    assert pixels.shape[:2] == (round(figsize[1] * plot.DPI), round(figsize[0] * plot.DPI))
    assert pixels[..., :3].std() > 0.01, "the image is blank"


def test_plot_history(tmp_path):
    path = plot.plot_history(HISTORY, tmp_path / "h.png", figsize=(6, 3))
    assert path == tmp_path / "h.png"
    assert_png(path, (6, 3))
    assert_png(plot.plot_history(HISTORY[:1], tmp_path / "default.png"), (10, 4))


def test_plot_history_skips_missing_values(tmp_path):
    train_only = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "test_loss": None} for r in HISTORY]
    assert_png(plot.plot_history(train_only, tmp_path / "h.png"), (10, 4))


def test_plot_filters_from_model_and_from_array(tmp_path, model):
    assert_png(plot.plot_filters(model, tmp_path / "f.png", figsize=(5, 2)), (5, 2))
    w = np.random.default_rng(0).standard_normal((10, 5, 5, 3))
    # default size for 10 filters: 2 rows of 5, (1.6 * 5 + 1, 1.6 * 2 + 0.8) inches
    assert_png(plot.plot_filters(w, tmp_path / "nested" / "w.png"), (9, 4))


def test_plot_feature_maps(tmp_path, model, images):
    path = plot.plot_feature_maps(model, images[0], tmp_path / "maps.png", max_channels=3, figsize=(6, 6))
    assert_png(path, (6, 6))
    # default: (1.3 * max_channels + 1.5, 1.3 * (1 + 5 layers)) inches; a float (H, W) image works too
    path = plot.plot_feature_maps(model, images[0, ..., 0] / 255.0, tmp_path / "maps2.png", max_channels=5)
    assert_png(path, (8, 7.8))


def test_plot_confusion_matrix(tmp_path, labels):
    pred = np.roll(labels, 1)
    path = plot.plot_confusion_matrix(labels, pred, tmp_path / "cm.png", class_names=list("abcd"), figsize=(5, 4))
    assert_png(path, (5, 4))
    assert_png(plot.plot_confusion_matrix(labels, labels, tmp_path / "cm2.png"), (7, 6))


def test_plot_misclassified(tmp_path, images, labels):
    logits = np.random.default_rng(1).standard_normal((N, K)) * 3
    path = plot.plot_misclassified(images, labels, logits, tmp_path / "m.png", k=6, figsize=(6, 2))
    assert_png(path, (6, 2))
    # default for k=16: 2 rows of 8, (1.5 * 8, 1.8 * 2 + 0.5) inches; probabilities are accepted as they are
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert_png(plot.plot_misclassified(images, labels, probs, tmp_path / "m2.png"), (12, 4.1))


def test_plot_misclassified_with_no_mistakes(tmp_path, images, labels):
    perfect = np.eye(K)[labels] * 10.0
    assert_png(plot.plot_misclassified(images, labels, perfect, tmp_path / "none.png", k=4, figsize=(4, 2)), (4, 2))


def test_probabilities_or_logits():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    assert np.array_equal(plot._probabilities(probs), probs)
    np.testing.assert_allclose(plot._probabilities(np.log(probs) + 5.0), probs, rtol=1e-12)


def test_most_confident_mistakes_come_first():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.55, 0.45]])
    y_true = np.array([1, 1, 1, 0, 1])   # rows 0, 1, 3, 4 are wrong, with confidence 0.9, 0.6, 0.7, 0.55
    assert plot.confident_mistakes(y_true, probs, k=3).tolist() == [0, 3, 1]
    assert plot.confident_mistakes(y_true[[2]], probs[[2]], k=3).tolist() == []


def test_save_training_plots(tmp_path, model, images, labels):
    paths = plot.save_training_plots(model, HISTORY, images, labels, tmp_path / "plots", batch_size=5)
    assert set(paths) == {"history", "filters", "feature_maps", "confusion_matrix", "misclassified"}
    for path in paths.values():
        assert path.parent == tmp_path / "plots" and path.stat().st_size > 0
    assert "history" not in plot.save_training_plots(model, [], images, labels, tmp_path / "again")


def test_bad_input(tmp_path, model, images, labels):
    with pytest.raises(ValueError, match="history must be a non-empty list"):
        plot.plot_history([], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"model_or_w must be a model or filters w \(K, KH, KW, C\)"):
        plot.plot_filters(np.zeros((3, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no convolution layer"):
        plot.plot_filters(Sequential([Flatten(), Dense(4, 2)]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="y_pred must have N = 12 entries"):
        plot.plot_confusion_matrix(labels, labels[:3], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class ids must be < len"):
        plot.plot_confusion_matrix(labels, labels, tmp_path / "x.png", class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"probs_or_logits must be \(N, K\)"):
        plot.plot_misclassified(images, labels, np.zeros((3, K)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="k must be >= 1"):
        plot.plot_misclassified(images, labels, np.zeros((N, K)), tmp_path / "x.png", k=0)
    with pytest.raises(ValueError, match="figsize must be"):
        plot.plot_history(HISTORY, tmp_path / "x.png", figsize=(0, 3))
    with pytest.raises(ValueError, match="image must be"):
        plot.plot_feature_maps(model, np.zeros(5), tmp_path / "x.png")


def test_plot_reconstructions(tmp_path, images):
    recon = images[:5].astype(np.float32) / 255.0 * 0.5  # floats in [0, 1] beside uint8 originals
    path = plot.plot_reconstructions(images[:5], recon, tmp_path / "r.png", figsize=(6, 3))
    assert_png(path, (6, 3))
    assert_png(plot.plot_reconstructions(images[:3, ..., 0], recon[:3], tmp_path / "default.png"), (1.2 * 3 + 0.4, 3))
    with pytest.raises(ValueError, match="reconstructions must match images"):
        plot.plot_reconstructions(images[:5], recon[:4], tmp_path / "x.png")


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions draw, caught instead of saved: their texts and ticks can be read."""
    figures = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


@pytest.mark.parametrize(("epochs", "title"), [(1, "training history (1 epoch)"), (3, "training history (3 epochs)"),
                                              (30, "training history (30 epochs)")])
def test_history_has_whole_epoch_ticks_and_a_grammatical_title(drawn, epochs, title):
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_acc": 0.5} for e in range(1, epochs + 1)]
    plot.plot_history(history, "h.png")
    fig = drawn[0]
    assert fig._suptitle.get_text() == title
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ticks == list(range(1, epochs + 1)) or epochs > 12


def test_history_caption_explains_train_below_test(drawn):
    plot.plot_history(HISTORY, "a.png", augment=True)
    plot.plot_history(HISTORY, "b.png")
    augmented, plain = ("".join(t.get_text() for t in fig.texts) for fig in drawn)
    assert "running mean over each epoch's batches" in plain and "train accuracy can sit below test" in plain
    assert "randomly shifted images (augmentation" in augmented and "shifted" not in plain


def test_feature_maps_say_which_channels_they_show(drawn, model, images):
    plot.plot_feature_maps(model, images[0], "maps.png", max_channels=2)
    fig = drawn[0]
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels[1] == "Conv2D\n6x6x3\nchannels 0-1\nof 3" and labels[0] == "input\n8x8x1"
    assert fig._suptitle.get_text().endswith(": the first 2 channels of each")
    drawn.clear()
    plot.plot_feature_maps(model, images[0], "all.png", max_channels=3)   # every channel shown: nothing to say
    assert "channels" not in "".join(ax.get_ylabel() for ax in drawn[0].axes) + drawn[0]._suptitle.get_text()


def test_class_names_label_the_mistakes_and_the_confusion_matrix(drawn, model, images, labels):
    names = ["T-shirt/top", "Trouser", "Pullover", "Ankle boot"]
    plot.save_training_plots(model, HISTORY, images, labels, "out", class_names=names)
    confusion, mistakes = drawn[3], drawn[4]
    assert [t.get_text() for t in confusion.axes[0].get_xticklabels()] == names
    titles = [ax.get_title() for ax in mistakes.axes if ax.get_title()]
    assert titles and all(t.count("\n/ ") == 1 and t.split(" (")[0] in names for t in titles), titles
    with pytest.raises(ValueError, match="class_names must name the K = 4 classes, got 2"):
        plot.plot_misclassified(images, labels, np.zeros((N, K)), "x.png", class_names=names[:2])
