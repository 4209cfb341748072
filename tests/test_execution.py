"""The execution module: chunks and threads change nothing but the speed; row-mixing layers are not split."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import TOLERANCES, epoch_figures

import arraycnn
from arraycnn import backend, data
from arraycnn.execution import ChunkedExecution, Execution, chunks, default_execution, default_threads
from arraycnn.layers import Dense, Flatten, Layer, ReLU
from arraycnn.model import Sequential
from arraycnn.models import tutorial_cnn
from arraycnn.optim import Adam


@pytest.fixture(scope="module")
def small():
    """100 train / 40 test real digits: at batch 48, chunks of 32 + 16 and a short last batch of 4."""
    return data.load_dataset("mnist", "bundled", train_size=100, test_size=40, log=None)


def train(ds, execution=None, dtype="float32", epochs=2):
    """A fresh tutorial_cnn trained with ``execution``: (per-epoch records, flat final parameters)."""
    with tutorial_cnn(dtype=dtype, seed=1) as model:
        if execution is not None:
            model.execution = execution
        history = arraycnn.fit(model, ds, Adam(), epochs=epochs, batch_size=48, seed=0, augment=True,
                               progress=False, log=lambda line: None)
        return history, np.concatenate([np.ravel(p) for p in model.parameters()])


def test_any_number_of_threads_gives_bitwise_the_same_run(small, monkeypatch):
    runs = {}
    for threads in (1, 2, 3, 4):
        monkeypatch.setenv("ARRAYCNN_THREADS", str(threads))
        assert default_threads() == threads
        runs[threads] = train(small)  # the model's default execution reads ARRAYCNN_THREADS
    for threads in (2, 3, 4):
        assert epoch_figures(runs[threads][0]) == epoch_figures(runs[1][0]), f"{threads} threads"
        np.testing.assert_array_equal(runs[threads][1], runs[1][1], err_msg=f"{threads} threads")


def test_chunks_give_the_whole_batch_gradients(small):
    """Chunked (share-weighted parts) and in one piece agree to float64 rounding: the derivation in execution."""
    (whole, p_whole), (chunked, p_chunked) = (train(small, ex, "float64") for ex in (Execution(), ChunkedExecution(2)))
    tol = TOLERANCES["float64"]
    tol.assert_close(np.array(epoch_figures(chunked)), np.array(epoch_figures(whole)), "per-epoch figures")
    tol.assert_close(p_chunked, p_whole, "parameters")


class BatchCentre(Layer):
    """A toy layer whose training forward mixes rows: ``y = x - mean over the batch``; ``dx = dy - mean(dy)``."""

    def __init__(self, mixes_rows: bool = True) -> None:
        super().__init__()
        self.mixes_rows = mixes_rows

    def _forward(self, x, train):
        xp = backend.get_namespace("numpy")
        return x - xp.mean(x, axis=0, keepdims=True), ()  # nothing to keep, but a cache all the same

    def _backward(self, dy, cache, input_grad):
        return dy - np.mean(dy, axis=0, keepdims=True), {}


def centred_net(mixes_rows: bool, execution) -> Sequential:
    return Sequential([Flatten(), Dense(28 * 28, 16, rng=0, dtype="float64"), BatchCentre(mixes_rows), ReLU(),
                       Dense(16, 10, rng=1, dtype="float64")], execution=execution)


@pytest.mark.parametrize("mixes_rows", [True, False])
def test_a_row_mixing_layer_is_never_split(small, mixes_rows):
    """Declared, the batch-dependent layer sees the whole batch; undeclared (a lie), chunking changes its math."""
    x = data.to_float_images(small.train_images[:80], backend.get_namespace("numpy"), "float64")
    y = data.to_labels(small.train_labels[:80], backend.get_namespace("numpy"))
    grads = {}
    for name, execution in (("whole", Execution()), ("chunked", ChunkedExecution(threads=2, chunk_rows=32))):
        model = centred_net(mixes_rows, execution)
        execution.loss_and_gradients(model, x, y)
        grads[name] = np.concatenate([np.ravel(g) for g in model.gradients()])
        model.close()
    if mixes_rows:
        TOLERANCES["float64"].assert_close(grads["chunked"], grads["whole"], "gradients")
    else:  # the test can tell: splitting a row-mixing layer changes its gradients far beyond rounding
        assert np.max(np.abs(grads["chunked"] - grads["whole"])) > 1e3 * TOLERANCES["float64"].rtol


def test_replicas_follow_a_rebound_parameter_dict(small):
    """Rebinding ``layer.params`` (not just its arrays) reaches the threads' replicas at the next step."""
    ex = ChunkedExecution(threads=2)
    model = tutorial_cnn(dtype="float64", seed=0)
    model.execution = ex
    x = model.to_device_inputs(small.test_images[:64])
    before = np.asarray(model.predict(x))
    model.layers[-1].params = {name: p * 2.0 for name, p in model.layers[-1].params.items()}
    after, reference = np.asarray(model.predict(x)), np.asarray(ChunkedExecution(threads=1).predict(model, x))
    np.testing.assert_array_equal(after, reference)
    assert not np.array_equal(after, before)
    model.close()


def test_close_ends_the_threads_and_the_model_stays_usable(small):
    def arraycnn_threads():
        return [t for t in threading.enumerate() if t.name.startswith("arraycnn")]

    before = len(arraycnn_threads())
    with tutorial_cnn(seed=0) as model:
        model.execution = ChunkedExecution(threads=3)
        x = model.to_device_inputs(small.test_images[:96])
        first = np.asarray(model.predict(x))
        assert len(arraycnn_threads()) > before
    assert len(arraycnn_threads()) == before
    np.testing.assert_array_equal(np.asarray(model.predict(x)), first)  # threads start again when needed
    model.close()


def test_default_execution_follows_the_namespace():
    import array_api_strict  # noqa: F401  (skip-free: a test dependency)

    assert isinstance(default_execution(backend.get_namespace("numpy")), ChunkedExecution)
    assert type(default_execution(backend.get_namespace("array_api_strict"))) is Execution


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_thread_counts_are_named(monkeypatch, value):
    monkeypatch.setenv("ARRAYCNN_THREADS", value)
    with pytest.raises(ValueError, match="ARRAYCNN_THREADS must be a positive integer"):
        default_threads()
    with pytest.raises((TypeError, ValueError), match="threads"):
        ChunkedExecution(threads=0)
    with pytest.raises(TypeError, match="execution must be"):
        Sequential([Dense(4, 2)], execution="threads")


def test_chunks_cover_the_batch_in_order():
    assert chunks(70, 32) == [slice(0, 32), slice(32, 64), slice(64, 70)]
    assert chunks(0, 32) == [slice(0, 0)]
