# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The TensorFlow CNN tutorial, answered by arraycnn
#
# This walks through the TensorFlow tutorial `CNN_tutorial.ipynb` (CONV-RELU-MAXPOOL x2 - FC - FC on
# MNIST) step by step. Every function the tutorial asks you to fill in is answered by arraycnn's own,
# its three "difference from truth" check cells print 0, and where the tutorial hands the backward pass
# to `tf.GradientTape`, we check a hand-written backward pass instead.
#
# * as a script: `python examples/tutorial.py --out-dir DIR` (default `tutorial_out`, or set
#   `ARRAYCNN_TUTORIAL_OUT`); `--help` lists the options;
# * as a notebook: open `examples/tutorial.py` in Jupyter with jupytext installed (it is in the `test` extra),
#   or make a `.ipynb` with `jupytext --to notebook examples/tutorial.py`.
#
# Every picture is saved as a PNG into the output folder; in a notebook it also shows under its cell.

# %%
import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import arraycnn
from arraycnn.backend import to_numpy
from arraycnn.data import load_dataset, to_float_images
from arraycnn.functional import (
    Window,
    avgpool2d_forward,
    conv2d_forward,
    cross_entropy,
    dense_forward,
    maxpool2d_forward,
    relu_forward,
    softmax,
    softmax_cross_entropy_forward,
    toeplitz_matrix,
)
from arraycnn.models import tutorial_cnn
from arraycnn.optim import Adam
from arraycnn.plot import save_training_plots
from arraycnn.train import fit

DEFAULT_OUT = os.environ.get("ARRAYCNN_TUTORIAL_OUT", "tutorial_out")
IN_NOTEBOOK = "ipykernel" in sys.modules
parser = argparse.ArgumentParser(description="The TensorFlow CNN tutorial, answered by arraycnn")
parser.add_argument("--out-dir", type=Path, default=Path(DEFAULT_OUT),
                    help=f"where the pictures (PNG) are written; default {DEFAULT_OUT} (the environment variable "
                         "ARRAYCNN_TUTORIAL_OUT sets it, e.g. for a notebook)")
parser.add_argument("--epochs", type=int, default=3, help="epochs of the small training run at the end; default 3")
# a notebook kernel runs with arguments of its own (-f connection-file): there the defaults hold
args, _ = parser.parse_known_args([] if IN_NOTEBOOK else None)
OUT = args.out_dir
OUT.mkdir(parents=True, exist_ok=True)


def display_png(path: Path) -> None:
    """In a notebook, show the saved picture under the running cell (a script only writes the file)."""
    if IN_NOTEBOOK:
        from IPython.display import Image, display

        display(Image(filename=str(path)))


def show(name: str, panels: dict, cmap: str = "gray") -> None:
    """A row of 2-D pictures with their titles, saved as OUT/name and, in a notebook, shown inline."""
    fig = Figure(figsize=(3.2 * len(panels), 3.4), dpi=100)
    for i, (title, image) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(np.squeeze(image), cmap=cmap)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(OUT / name)
    print(f"saved {OUT / name}")
    display_png(OUT / name)


def check(name: str, out: np.ndarray, truth: list) -> None:
    """The tutorial's check cells print sum(truth - out); we also insist that every entry is exactly equal."""
    dif = np.asarray(truth, dtype=np.float64) - out
    print(f"{name}: Difference from truth: {dif.sum()}  (max |entry| {np.abs(dif).max()})")
    assert np.array_equal(out, truth), f"{name}: the output differs from the tutorial's truth"


# %% [markdown]
# ## The data
#
# The tutorial downloads MNIST with `tensorflow_datasets`; arraycnn ships 5,000 real MNIST digits, so this
# runs offline. Images are host `uint8 (N, 28, 28, 1)`; like the tutorial we scale them to float64 in [0, 1]
# and take a digit 8.

# %%
ds = load_dataset("mnist", source="bundled", log=None)
print(ds.description)
first_8 = int(np.flatnonzero(ds.train_labels == 8)[0])
features = ds.train_images[first_8 : first_8 + 1].astype(np.float64) / 255.0   # x (1, 28, 28, 1)
print("image 1 shape:", features.shape)
show("digit.png", {"a digit 8": features}, cmap="viridis")

# %% [markdown]
# ## Edge filters
#
# The horizontal filter $\begin{bmatrix}1&1&1\\0&0&0\\-1&-1&-1\end{bmatrix}$ enhances horizontal edges, the
# vertical one $\begin{bmatrix}1&0&-1\\1&0&-1\\1&0&-1\end{bmatrix}$ vertical edges. arraycnn is channels-last
# like TensorFlow, but its filters are `w (K, KH, KW, C)` (filters first), so each 3x3 filter becomes
# `(1, 3, 3, 1)`. As in the tutorial, the vertical filter is applied to the horizontal filter's output.
# `examples/filters.py` draws all of this (and compares with `tf.nn.conv2d`) in one figure.

# %%
hor_filter = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float64).reshape(1, 3, 3, 1)
ver_filter = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float64).reshape(1, 3, 3, 1)
output, _ = conv2d_forward(features, hor_filter)          # VALID, stride 1: 28x28 -> 26x26
print("image shape:", output.shape)
output_hv, _ = conv2d_forward(output, ver_filter)         # 26x26 -> 24x24
print("image shape:", output_hv.shape)
show("edges.png", {"horizontal filter": output, "then the vertical filter": output_hv})

# %% [markdown]
# ## Convolutional layer: the unrolled kernel
#
# The tutorial's `unroll(F, ...)` pads the kernel to the (padded) input's size, flattens it, and rolls it
# once per output pixel: a matrix `T (OH*OW, Hp*Wp*C)` whose rows are the kernel in every position, so that
# the convolution is one matrix-vector product `vec(y) = T vec(xpad)`. arraycnn's answer is
# `arraycnn.functional.toeplitz_matrix(w, window)`: for `K` filters it stacks the `K` matrices into
# `(K*OH*OW, Hp*Wp*C)`. Here is `T` for the tutorial's first check: the 2x2 kernel `[[2, 1], [2, 1]]` on a
# 3x3 input padded by 1 (so `Hp = Wp = 5` and the output is 4x4).

# %%
f1 = np.array([[2, 1], [2, 1]], dtype=np.float64)
window = Window(h=3, w=3, kh=2, kw=2, ph=1, pw=1)
T = toeplitz_matrix(f1.reshape(1, 2, 2, 1), window)
print("unrolled kernel:", T.shape, " (OH*OW, Hp*Wp) =", (window.oh * window.ow, window.hp * window.wp))
print(T[:3].astype(int))   # each row is the previous one rolled by the stride

# %% [markdown]
# `convolve2d(infeat, kernel, bias, padding, stride)` is `conv2d_forward(x, w, b, stride, padding,
# method="toeplitz")`: pad, unroll, multiply. (The default `method="im2col"` unrolls the *input* into
# patches instead of the kernel; both give the same numbers.) The tutorial's first check, 1 channel:

# %%
a = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]], dtype=np.float64).reshape(1, 3, 3, 1)
out, _ = conv2d_forward(a, f1.reshape(1, 2, 2, 1), padding=1, stride=1, method="toeplitz")
xpad = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
assert np.array_equal(T @ xpad.reshape(-1), out.reshape(-1)), "y = T vec(xpad)"
dif = [[1., 4., 7., 6.], [2., 8., 14., 12.], [2., 8., 14., 12.], [1., 4., 7., 6.]]
check("check 1 (one channel)", out[0, :, :, 0], dif)

# %% [markdown]
# With 3 channels the kernel has 3 channels too, and there is still one bias per filter:

# %%
a = np.array([[[5, 2, 3], [1, 2, 1], [1, 2, 3], [1, 2, 3]],
              [[3, 2, 3], [1, 0, 3], [1, 2, 1], [0, 0, 1]],
              [[1, 1, 1], [1, 2, 3], [0, 2, 3], [1, 2, 1]],
              [[1, 0, 3], [0, 2, 0], [1, 2, 3], [1, 2, 3]]], dtype=np.float64)[None]   # (1, 4, 4, 3)
f2 = [[3, 1], [3, 3]]
f3 = [[3, 2], [2, 3]]
f = np.dstack((f1, f2, f3))                                # (2, 2, 3)
out, _ = conv2d_forward(a, f[None], padding=1, stride=1, method="toeplitz")
dif = [[20., 32., 26., 30., 14.], [31., 58., 38., 39., 19.], [18., 51., 45., 35., 13.],
       [14., 31., 47., 50., 25.], [7., 13., 15., 26., 17.]]
check("check 2 (three channels)", out[0, :, :, 0], dif)

# %% [markdown]
# Several multichannel filters `kernel (kn, ky, kx, kz)` give one output channel each: `y (N, OH, OW, kn)`.

# %%
k1, k2, k3 = (np.dstack((g, g, g)) for g in (f1, f2, f3))
k4 = np.dstack((f1, f2, f3))
out, _ = conv2d_forward(a, np.array([k1, k2, k3, k4]), padding=1, stride=1, method="toeplitz")
dif = [[[10., 30., 30., 20.], [24., 42., 32., 32.], [14., 30., 26., 26.], [18., 36., 30., 30.], [12., 18., 12., 14.]],
       [[18., 34., 44., 31.], [44., 70., 66., 58.], [26., 42., 44., 38.], [27., 39., 41., 39.], [14., 21., 20., 19.]],
       [[11., 17., 25., 18.], [32., 55., 56., 51.], [29., 49., 47., 45.], [23., 40., 36., 35.], [10., 15., 11., 13.]],
       [[7., 15., 18., 14.], [22., 33., 35., 31.], [27., 47., 50., 47.], [32., 55., 53., 50.], [20., 30., 24., 25.]],
       [[4., 4., 8., 7.], [10., 14., 16., 13.], [10., 12., 18., 15.], [18., 24., 30., 26.], [12., 18., 18., 17.]]]
check("check 3 (four filters)", out[0], dif)

# %% [markdown]
# Batches come for free: `x (N, H, W, C)`. The vertical filter on the digit, both ways of unrolling
# (`examples/filters.py` compares it with `tf.nn.conv2d` and plots the histogram of differences):

# %%
out, _ = conv2d_forward(features, ver_filter, method="toeplitz")
out_im2col, _ = conv2d_forward(features, ver_filter, method="im2col")
print("kernel unrolled vs input unrolled, max |difference|:", np.abs(out - out_im2col).max())

# %% [markdown]
# ## Activation and pooling
#
# `ReLU(infeat)` is `relu_forward(x)`, which returns `max(x, 0)` and the mask `x > 0` that its backward
# needs. `pooling(infeat, ky, kx, kz, padding, stride, 'MAX' | 'AVG')` is `maxpool2d_forward(x, (ky, kx),
# stride, padding)` or `avgpool2d_forward(...)`: the same sliding windows as the convolution, reduced by a
# max or a mean instead of a weighted sum. The tutorial pools with a 5x5 window and stride 1.

# %%
relu0, relu_mask = relu_forward(out)
avg_pooled, _ = avgpool2d_forward(relu0, 5, stride=1)
pooled, _ = maxpool2d_forward(relu0, 5, stride=1)
relu1, _ = relu_forward(pooled)
print("ReLU:", relu0.shape, " pooled:", pooled.shape)
show("relu_and_pooling.png", {"ReLU(vertical edges)": relu0, "average pool 5x5": avg_pooled,
                              "max pool 5x5": pooled, "ReLU(max pool)": relu1})

# %% [markdown]
# ## Fully connected layer
#
# `fully_connected(infeat, kernel, bias)` is `dense_forward(x, w, b)`: it flattens `x (N, H, W, C)` and
# `w (K, H, W, C)` row-major and returns `y (N, K) = X Wᵀ + b` (the tutorial's `[nn, 1, 1, kn]`, without
# the two unit axes).

# %%
rng = np.random.default_rng(0)
kn, imn = 2, 1
k = rng.integers(low=0, high=2, size=[kn, 3, 3, 1]).astype(np.float64)
im = rng.integers(low=0, high=5, size=[imn, 3, 3, 1]).astype(np.float64)
fc, _ = dense_forward(im, k, np.zeros(kn))
print("fully connected:", fc)

# %% [markdown]
# The tutorial remarks that a fully connected layer *is* a convolution whose kernel is as large as its
# input (VALID padding leaves exactly one output position):

# %%
as_conv, _ = conv2d_forward(im, k)
print("convolution:", as_conv.shape, as_conv.reshape(imn, kn))
assert np.array_equal(as_conv.reshape(imn, kn), fc), "a dense layer is a convolution with an input-sized kernel"

# %% [markdown]
# Two fully connected layers on the pooled picture, with a ReLU between them, then softmax. `softmax(z)`
# subtracts the row maximum before exponentiating (the tutorial's "normalise with the maximum to prevent
# blow up"), and `cross_entropy(probs, targets)` is the tutorial's `categorical_crossentropy` on
# probabilities. For training, arraycnn fuses the two on the logits: `softmax_cross_entropy_forward`,
# whose gradient is simply `(p - y) / N`.

# %%
ink = rng.standard_normal([2, *relu1.shape[1:]])
relu2, _ = relu_forward(dense_forward(relu1, ink, np.zeros(2))[0])
print("relu2:", relu2)
ink = rng.standard_normal([3, *relu2.shape[1:]])
logits, _ = dense_forward(relu2, ink, np.zeros(3))
probs = softmax(logits)
print("softmax:", probs, " rows sum to", probs.sum(axis=1))
target = np.array([1])
loss_tutorial = cross_entropy(probs, np.eye(3)[target])
loss_fused, _ = softmax_cross_entropy_forward(logits, target)
print(f"cross-entropy on probabilities {float(loss_tutorial):.12f}, fused on logits {float(loss_fused):.12f}")

# %% [markdown]
# ## The backward pass, by hand
#
# The tutorial trains with `tf.GradientTape`, which differentiates for you. arraycnn writes every backward
# pass by hand (`docs/backprop.md` derives each one). If you write your own, check it. `arraycnn.gradcheck`
# compares your backward with central differences of your forward,
# `(L(a + ε eᵢ) - L(a - ε eᵢ)) / 2ε` with `L = <forward(a), v>` for a random `v`, entry by entry in float64.
#
# Here is a learner's ReLU and fully connected layer, written in the engine's `forward -> (out, cache)`,
# `backward(dout, cache) -> gradients` form:

# %%
def my_relu_forward(x):
    return np.maximum(x, 0.0), x > 0


def my_relu_backward(dy, mask):
    return dy * mask                                   # dL/dx = dL/dy · [x > 0]


def my_dense_forward(x, w, b):
    x2, w2 = x.reshape(len(x), -1), w.reshape(len(w), -1)
    return x2 @ w2.T + b, (x2, w2, x.shape, w.shape)


def my_dense_backward(dy, cache):
    x2, w2, x_shape, w_shape = cache
    return (dy @ w2).reshape(x_shape), (dy.T @ x2).reshape(w_shape), dy.sum(axis=0)   # dX = dY W, dW = dYᵀ X


x = rng.standard_normal((4, 3, 3, 2))
w, b = rng.standard_normal((5, 3, 3, 2)), rng.standard_normal(5)
print(arraycnn.gradcheck(my_relu_forward, my_relu_backward, {"x": x}))
print(arraycnn.gradcheck(my_dense_forward, my_dense_backward, {"x": x, "w": w, "b": b}))

# %% [markdown]
# A classic slip is to average the weight gradient over the batch inside the layer (the loss already did
# that). The check catches it and points at `w`:

# %%
def wrong_dense_backward(dy, cache):
    x2, w2, x_shape, w_shape = cache
    return (dy @ w2).reshape(x_shape), (dy.T @ x2 / len(x2)).reshape(w_shape), dy.sum(axis=0)   # BUG: / N


result = arraycnn.gradcheck(my_dense_forward, wrong_dense_backward, {"x": x, "w": w, "b": b},
                            raise_on_failure=False)
print(result)
assert not result.ok and [r.name for r in result.inputs if not r.ok] == ["w"]

# %% [markdown]
# `arraycnn.testing.assert_matches_engine` goes further: it property-tests your pair against arraycnn's own
# op on many configurations drawn by hypothesis (shapes, strides, paddings; it needs the `test` extra) and
# reports which output or gradient differs, for which configuration, and where.

# %%
if importlib.util.find_spec("hypothesis") is None:
    print("pip install 'arraycnn[test]' to property-test your layers with arraycnn.testing")
else:
    from arraycnn.testing import EngineMismatchError, assert_matches_engine

    assert_matches_engine(my_relu_forward, my_relu_backward, "relu", max_examples=20)
    assert_matches_engine(my_dense_forward, my_dense_backward, "dense", max_examples=20)
    print("my ReLU and dense layers match arraycnn's")
    try:
        assert_matches_engine(my_dense_forward, wrong_dense_backward, "dense", max_examples=20)
    except EngineMismatchError as report:
        print(report)

# %% [markdown]
# ## The network, trained
#
# The tutorial's network, CONV-RELU-MAXPOOL-CONV-RELU-MAXPOOL-FC-FC with its `W1 .. W4` shapes, is
# `arraycnn.models.tutorial_cnn()` (softmax lives in the loss). The tutorial trains on 500 digits in
# batches of 10 for 200 epochs with Adam (lr 0.001); a few epochs on 300 digits in batches of 20 take
# seconds here and already learn something. `examples/mnist.py` trains it properly.

# %%
model = tutorial_cnn(seed=0)
print(model)
small = load_dataset("mnist", source="bundled", train_size=300, test_size=100, log=None)
history = fit(model, small, Adam(lr=0.001), epochs=args.epochs, batch_size=20, seed=0, progress=False)

# %% [markdown]
# Apply the model to test digits and compare with the truth, then save the pictures of the training:
# learning curves, the first layer's filters, one digit's feature maps through every layer, the confusion
# matrix and the most confidently misclassified digits.

# %%
pred = to_numpy(model.predict(to_float_images(small.test_images[:20], model.xp))).argmax(axis=1)
print("predicted:", pred)
print("true:     ", small.test_labels[:20])
for name, path in save_training_plots(model, history, small.test_images, small.test_labels, OUT).items():
    print(f"saved {path}  ({name})")
    display_png(path)
