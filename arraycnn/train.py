"""The fit loop: seeded epochs, progress, history, per-epoch checkpoints, exact resume, NaN and Ctrl-C handling.

Determinism: epoch ``e`` (0-based) draws its batch order and augmentation from
``data.epoch_batches(..., seed, epoch=e)``, and a training checkpoint saved after epoch ``k`` holds the
parameters, the optimizer state, ``k``, the seed and the history. Loading it and training epochs
``k+1..N`` therefore replays the uninterrupted run exactly (bit for bit on NumPy): the seed *is* the RNG
state, since nothing else is random.

Host reads: the loss stays on the device and is summed there; it is read back only at progress points
and at the end of each epoch, which is also where divergence is detected.

Divergence: the running train loss is NaN/inf, or a classifier's exceeds :func:`loss_limit`, 100 x ln K
(230 for ten classes: the untrained network's loss is about ln K, and training only lowers it), or the test
loss after an epoch is NaN/inf. It is reported once, in one line; NumPy's overflow warnings on the way there
are silenced (the NaN/inf they warn of is what the check reports).

Abnormal stops keep the last good state: divergence raises :class:`TrainingDivergedError` without
overwriting the checkpoint with a broken model; Ctrl-C writes the state of the last *completed* epoch
(the parameters of a half-done epoch cannot be resumed exactly) and re-raises ``KeyboardInterrupt``.

Data parallelism over ranks (``model.execution.communicator``, see :mod:`arraycnn.distributed`): every
rank draws the same epoch order and augmentation and trains on its own rows of each global batch; the
execution sums the gradients, loss and count over the ranks, so every rank reads the same running loss
and the same divergence. Rank 0's parameters and optimizer state are broadcast at the start (and so on
resume); only rank 0 logs, shows progress and writes checkpoints; a Ctrl-C on any rank stops every rank
after the same step. The test set is evaluated in shards, one per rank.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import data
from ._checks import check_int
from .backend import to_numpy
from .checkpoint import OPTIM_PREFIX, read_npz, write_npz
from .distributed import Communicator, StopRequested
from .execution import loss_and_count
from .model import Sequential

TRAINING_KEYS = ("epoch", "seed", "history", "optimizer")
TQDM_REFRESH = 10  # batches between loss read-backs on a terminal progress bar
DIVERGENCE_FACTOR = 100  # a classifier diverges when its running loss exceeds this times ln(classes)
PLAIN_LINES = 4  # progress lines per epoch when stdout is not a terminal

Log = Callable[[str], object]

__all__ = ["TrainingDivergedError", "TrainingState", "fit", "load_training_state", "loss_limit",
           "save_training_state"]


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN/inf or exceeded :func:`loss_limit`; ``epoch``: the 1-based epoch it did."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


@dataclass(frozen=True)
class TrainingState:
    """What :func:`load_training_state` restored besides the parameters and optimizer state."""

    epoch: int
    seed: int
    history: list[dict[str, Any]]
    meta: dict[str, Any]


# --------------------------------------------------------------------------- training checkpoints


def _snapshot(
    model: Sequential, optimizer: Any, *, epoch: int, seed: int, history: list[dict[str, Any]],
    meta: dict[str, Any] | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Host copies of everything a resume needs: ``(arrays, metadata)``."""
    arrays = model.state_arrays() | {OPTIM_PREFIX + k: v for k, v in optimizer.state_dict().items()}
    info = {**(meta or {}), "epoch": epoch, "seed": seed, "history": list(history),
            "optimizer": type(optimizer).__name__, **model.checkpoint_meta()}
    return arrays, info


def save_training_state(
    path: str | os.PathLike, model: Sequential, optimizer: Any, *, epoch: int, seed: int,
    history: list[dict[str, Any]], meta: dict[str, Any] | None = None,
) -> None:
    """Atomically write a training checkpoint: parameters, ``optim/...`` state, epoch, seed, history, ``meta``."""
    write_npz(path, *_snapshot(model, optimizer, epoch=epoch, seed=seed, history=history, meta=meta))


def load_training_state(path: str | os.PathLike, model: Sequential, optimizer: Any) -> TrainingState:
    """Restore a training checkpoint into ``model`` and ``optimizer`` (which must be of the saved type).

    FileNotFoundError if ``path`` is missing; ValueError naming the file if it is corrupt, not a training
    checkpoint, or does not fit the model or optimizer (checked before the model is changed).
    """
    _, meta = read_npz(path)
    missing = [key for key in TRAINING_KEYS if key not in meta]
    if missing:
        raise ValueError(f"checkpoint {path} is not a training checkpoint: its metadata lacks {missing} "
                         "(a Sequential.save file holds parameters only)")
    if meta["optimizer"] != type(optimizer).__name__:
        raise ValueError(f"checkpoint {path} was trained with {meta['optimizer']}, "
                         f"but the optimizer given is {type(optimizer).__name__}")
    ckpt = model.load(path)
    state = {k.removeprefix(OPTIM_PREFIX): v for k, v in ckpt.arrays.items() if k.startswith(OPTIM_PREFIX)}
    try:
        optimizer.load_state_dict(state, model.parameters())
    except ValueError as exc:
        raise ValueError(f"checkpoint {path}: the optimizer state does not fit: {exc}") from None
    return TrainingState(int(meta["epoch"]), int(meta["seed"]), list(meta["history"]), meta)


class _LastGood:
    """The state after the last completed, finite epoch: written every epoch and on an abnormal stop."""

    def __init__(self, model: Sequential, optimizer: Any, seed: int, checkpoint_path: Any, interrupt_path: Any,
                 meta: dict[str, Any] | None) -> None:
        self.model, self.optimizer, self.seed, self.meta = model, optimizer, seed, meta
        self.checkpoint_path = checkpoint_path
        self.interrupt_path = interrupt_path if interrupt_path is not None else checkpoint_path
        self.snapshot: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None
        self.written_to: Any = None
        self.epoch = 0

    def update(self, epoch: int, history: list[dict[str, Any]], write: bool = True) -> None:
        """Take a host snapshot after ``epoch`` completed epochs; with ``write``, also to the checkpoint path."""
        if self.interrupt_path is not None:
            snapshot = _snapshot(self.model, self.optimizer, epoch=epoch, seed=self.seed, history=history,
                                 meta=self.meta)
            self.snapshot, self.written_to = snapshot, None
        self.epoch = epoch
        if write and self.snapshot is not None and self.checkpoint_path is not None:
            write_npz(self.checkpoint_path, *self.snapshot)
            self.written_to = self.checkpoint_path

    def keep(self, path: Any) -> str:
        """Make sure ``path`` (if any) holds the last good state; returns a sentence for the log."""
        if path is None or self.snapshot is None:
            return "no checkpoint is written (give a checkpoint path to keep one)"
        if self.written_to != path:
            write_npz(path, *self.snapshot)
            self.written_to = path
        return f"the state after epoch {self.snapshot[1]['epoch']} is saved in {os.fspath(path)}"


# --------------------------------------------------------------------------- progress


class _Progress:
    """One epoch's progress: a tqdm bar when stdout is a terminal (and tqdm is installed), else plain lines.

    Over several ranks the read-backs (:meth:`due`) fall on the same batches on every rank (plain lines'
    schedule), so all ranks check for divergence together; only rank 0's ``log`` prints.
    """

    def __init__(self, title: str, total: int, enabled: bool, log: Log, ranks: int = 1) -> None:
        self.title, self.total, self.log = title, total, log
        self.bar = _tqdm_bar(title, total) if enabled and ranks == 1 and sys.stdout.isatty() else None
        self.every = TQDM_REFRESH if self.bar is not None else max(1, math.ceil(total / (PLAIN_LINES + 1)))
        self.enabled = enabled

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def due(self, i: int) -> bool:
        """Should the running loss be read back after batch ``i`` (1-based)?"""
        return self.enabled and i % self.every == 0 and i < self.total

    def show(self, i: int, loss: float, acc: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} acc {acc:.2%}", refresh=False)
        else:
            self.log(f"  {self.title}  batch {i}/{self.total}  loss {loss:.4f}  acc {acc:.2%}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _tqdm_bar(title: str, total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=title, unit="batch", leave=False, file=sys.stdout, dynamic_ncols=True)


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """One summary line for a history record."""
    test = (f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}"
            if record.get("test_loss") is not None else "no test set")
    return (f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2%}  {test}  {record['seconds']:.1f} s  "
            f"{record['images_per_second']:,.0f} img/s")


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _Plan:
    epochs: int
    batch_size: int
    seed: int
    augment: bool
    progress: bool


def loss_limit(model: Sequential) -> float:
    """The running train loss above which :func:`fit` stops: diverging, even though still finite.

    A classifier's untrained loss is about ``ln K`` (a uniform guess over ``K`` classes: ln 10 = 2.30), and
    training only lowers it; a loss of ``DIVERGENCE_FACTOR * ln K`` (230 for ten classes) means the steps
    overshoot, and it only grows from there (SGD at lr 1000 reaches 1e13 within the first epoch). A loss
    with no such scale (mean squared error) stops on NaN/inf only (``inf``).
    """
    return DIVERGENCE_FACTOR * math.log(data.NUM_CLASSES) if model.loss.classifies else math.inf


def _check_loss(value: float, limit: float, epoch: int, plan: _Plan, where: str, what: str = "train") -> None:
    """Raise TrainingDivergedError when ``value`` is NaN/inf or above ``limit`` (see :func:`loss_limit`)."""
    if math.isfinite(value) and value <= limit:
        return
    why = "" if not math.isfinite(value) else (
        f", over {DIVERGENCE_FACTOR} x ln {data.NUM_CLASSES} = {limit:.0f} (the untrained network's loss is "
        f"about ln {data.NUM_CLASSES} = {limit / DIVERGENCE_FACTOR:.2f})")
    raise TrainingDivergedError(
        f"training diverged: the mean {what} loss is {value:.4g} in epoch {epoch}/{plan.epochs} ({where}){why}; "
        "stopping. Try a smaller learning rate.", epoch)


def _without_floating_point_warnings(fn: Callable) -> Callable:
    """``fn`` with NumPy's overflow/invalid/divide warnings silenced in every thread (the NumPy execution's
    workers too: ``np.errstate`` would hold in the calling thread only).

    A step that overflows makes the loss NaN/inf, which :func:`_check_loss` reports once, in one clear line.
    """

    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
            return fn(*args, **kwargs)

    return quiet


@_without_floating_point_warnings
def _run_epoch(model: Sequential, dataset: data.Dataset, optimizer: Any, epoch: int, plan: _Plan,
               log: Log) -> dict[str, Any]:
    """Train 0-based ``epoch`` and evaluate; returns its history record (``epoch`` 1-based)."""
    xp, n, comm = model.xp, len(dataset.train_labels), model.execution.communicator
    total = data.num_batches(n, plan.batch_size)
    batches = data.epoch_batches(dataset.train_images, dataset.train_labels, plan.batch_size, plan.seed,
                                 epoch, augment=plan.augment)
    progress = _Progress(f"epoch {epoch + 1}/{plan.epochs}", total, plan.progress, log, comm.size)
    loss_sum = xp.zeros((), dtype=model.dtype, device=model.device)
    correct, seen = xp.zeros((), dtype=xp.int64, device=model.device), 0
    start, limit = time.perf_counter(), loss_limit(model)
    try:
        for i, (images, labels) in enumerate(batches, 1):
            mine = comm.rows(len(labels))  # this rank's rows of the global batch (all of it on one process)
            x, y = model.to_device_inputs(images[mine]), model.to_device_targets(labels[mine])
            loss, right = model.execution.train_step(model, x, y, optimizer, total=len(labels))
            loss_sum, correct, seen = loss_sum + loss * len(labels), correct + right, seen + len(labels)
            if comm.stop_requested():
                raise StopRequested(f"Ctrl-C on a rank: every rank stops after batch {i}/{total}")
            progress.advance()
            if progress.due(i):
                loss_total, right_total = _read_sums(loss_sum, correct)
                running = loss_total / seen
                _check_loss(running, limit, epoch + 1, plan, f"by batch {i}/{total}")
                progress.show(i, running, right_total / seen)
        loss_total, right_total = _read_sums(loss_sum, correct)
        train_loss, train_acc = loss_total / n, right_total / n
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    _check_loss(train_loss, limit, epoch + 1, plan, "over the whole epoch")
    test_loss = test_acc = None
    if len(dataset.test_labels):
        test_loss, test_acc = _evaluate(model, dataset.test_images, dataset.test_labels, comm)
    if test_loss is not None:  # the last steps may have broken the parameters: NaN/inf only
        _check_loss(test_loss, math.inf, epoch + 1, plan, "on the test set after the epoch", "test")
    return {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc, "seconds": seconds, "images_per_second": n / seconds}


def _read_sums(loss_sum: Any, correct: Any) -> tuple[float, int]:
    """The running loss sum and correct count in ONE host read."""
    both = to_numpy(loss_and_count(loss_sum, correct))
    return float(both[0]), round(float(both[1]))


def _evaluate(model: Sequential, images: np.ndarray, targets: np.ndarray,
              comm: Communicator) -> tuple[float, float | None]:
    """:meth:`Sequential.evaluate` over the ranks: each evaluates its rows; the sums are all-reduced."""
    if comm.size == 1:
        return model.evaluate(images, targets)
    mine = comm.rows(len(targets))
    rows = mine.stop - mine.start
    loss, acc = model.evaluate(images[mine], targets[mine]) if rows else (0.0, 0.0)
    loss_sum, correct = comm.allreduce_scalars([loss * rows, round((acc or 0.0) * rows)])
    return loss_sum / len(targets), correct / len(targets) if model.loss.classifies else None


def _synchronise(comm: Communicator, model: Sequential, optimizer: Any, start_epoch: int) -> None:
    """Rank 0's parameters, layer state and optimizer state on every rank, at the start and on resume.

    The ranks must hold states of the same layout (the same checkpoint resumed, or none): else ValueError
    on every rank, before anything is overwritten.
    """
    state = optimizer.state_dict()
    keys = sorted(state)
    layout = [start_epoch, len(keys), sum(state[k].size for k in keys), zlib.crc32(" ".join(keys).encode())]
    if comm.any(comm.broadcast_scalars(layout) != layout):
        raise ValueError(f"rank {comm.rank} does not start where rank 0 does (epoch, optimizer state): every "
                         "rank must resume from the same checkpoint, or none")
    arrays = [*model.parameters(), *(a for _, a in model.named_state()), *(state[k] for k in keys)]
    for dtype in sorted({str(a.dtype) for a in arrays}):  # one fused broadcast per dtype
        comm.broadcast([a for a in arrays if str(a.dtype) == dtype])
    optimizer.load_state_dict(state, model.parameters())


def _silent(message: str) -> None:
    """The log of every rank but 0."""


def fit(
    model: Sequential,
    dataset: data.Dataset,
    optimizer: Any,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    augment: bool = False,
    start_epoch: int = 0,
    history: list[dict[str, Any]] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    interrupt_path: str | os.PathLike | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], object] | None = None,
    progress: bool = True,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``dataset`` from epoch ``start_epoch + 1`` up to ``epochs`` (the TOTAL) and evaluate.

    Returns the history: ``history`` (the epochs already done) plus one dict per new epoch with keys
    ``epoch`` (1-based), ``train_loss``, ``train_acc`` (running sums over the epoch's batches), ``test_loss``,
    ``test_acc``, ``seconds`` (training time of the epoch), ``images_per_second``.

    ``checkpoint_path``: a training checkpoint (see :func:`save_training_state`, with ``checkpoint_meta``
    added to its metadata) is written there atomically after every epoch. ``interrupt_path``: where Ctrl-C
    saves the last completed state when there is no ``checkpoint_path``.

    Raises :class:`TrainingDivergedError` when training diverges (module docstring: NaN/inf, or a running loss
    above :func:`loss_limit`; the checkpoint keeps the last good epoch) and re-raises ``KeyboardInterrupt``
    after saving the last completed epoch.

    Over several ranks (``model.execution.communicator``, module docstring) call it on every rank with the
    same arguments and the GLOBAL ``batch_size``; only rank 0 logs and writes ``checkpoint_path`` and
    ``interrupt_path``; ``on_epoch_end`` is called on every rank.
    """
    plan = _Plan(check_int(epochs, "epochs", 0), check_int(batch_size, "batch_size", 1),
                 check_int(seed, "seed", 0), bool(augment), bool(progress))
    start_epoch = check_int(start_epoch, "start_epoch", 0)
    history = list(history or [])
    if len(dataset.train_labels) == 0:
        raise ValueError("dataset must hold at least one training example")
    comm = model.execution.communicator
    if not comm.is_root:
        log, checkpoint_path, interrupt_path = _silent, None, None
    if start_epoch >= plan.epochs:
        log(f"nothing to train: {start_epoch} epochs are done and epochs={plan.epochs} is the total")
        return history
    if comm.size > 1:
        _synchronise(comm, model, optimizer, start_epoch)
    last_good = _LastGood(model, optimizer, plan.seed, checkpoint_path, interrupt_path, checkpoint_meta)
    last_good.update(start_epoch, history, write=False)
    try:
        with comm.deferred_interrupts():
            for epoch in range(start_epoch, plan.epochs):
                record = _run_epoch(model, dataset, optimizer, epoch, plan, log)
                history.append(record)
                last_good.update(epoch + 1, history)  # saved before it is announced
                if on_epoch_end is not None:
                    on_epoch_end(record)
                log(format_epoch(record, plan.epochs))
    except KeyboardInterrupt as exc:
        log(f"\ninterrupted during epoch {last_good.epoch + 1}: {last_good.keep(last_good.interrupt_path)}")
        if isinstance(exc, StopRequested):
            comm.barrier()  # every rank stopped after the same step: none leaves before rank 0 has saved
        raise
    except TrainingDivergedError as exc:
        log(f"{exc}\nThe last good state is kept: {last_good.keep(checkpoint_path)}")
        comm.barrier()  # every rank read the same summed loss at the same batch
        raise
    return history
