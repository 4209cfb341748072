"""How a training step is carried out: the one module that knows about chunks, threads and ranks.

The lesson is :meth:`arraycnn.model.Sequential.train_step`: forward, loss, backward, optimizer step on the
whole batch. An :class:`Execution` runs the same steps, but may cut the batch into parts. Why that is
exact: the batch's mean loss is the share-weighted sum of the parts' mean losses,

    L = (1/B) Σ_n l_n = Σ_p (B_p / B) L_p,    so    dL/dθ = Σ_p (B_p / B) dL_p/dθ,

so each part's loss gradient is scaled by its share ``B_p / B`` (the ``dout`` of its loss backward) and
the parts' parameter gradients are added. This holds only when every layer treats the rows of a batch
independently (``Layer.mixes_rows`` is False); a model with a row-mixing layer runs in one piece.

* :class:`Execution` — the whole batch in one piece: what a GPU or any parallel library wants.
* :class:`ChunkedExecution` — NumPy: the batch in fixed chunks of ``CHUNK_ROWS`` rows (a layer's unrolled
  patches then stay in the CPU caches), spread over a small thread pool (NumPy releases the GIL in its
  loops), BLAS held to one thread inside. The chunks' gradients are added in chunk order whatever thread
  computed them, so the result is bitwise the same for any number of threads.

Ranks (data parallelism over processes, ``docs/distributed.md``) are parts too: given a ``communicator``
(:mod:`arraycnn.distributed`), each rank passes its rows of the global batch and the global batch's row
count, so its shares are of the global batch, and one all-reduce sums the gradients, loss and count over
the ranks before the optimizer step: every rank then takes the same step.

:func:`default_execution` picks one for a namespace; a model takes another as ``Sequential(...,
execution=...)``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from typing import Any

import array_api_compat

from ._checks import check_int
from .backend import Array, backend_name
from .distributed import Communicator

CHUNK_ROWS = 32  # beyond ~32 images the second conv's patches (32 x 484 x 90 floats) fall out of the caches
MAX_THREADS = 4  # more threads than this gain nothing on the tutorial network (docs/benchmarks.md)
THREADS_ENV = "ARRAYCNN_THREADS"

__all__ = ["CHUNK_ROWS", "ChunkedExecution", "Execution", "default_execution", "default_threads"]


def part_loss_and_gradients(model: Any, x: Array, targets: Array, share: float) -> tuple[Array, Array, list]:
    """Steps 3-5 of the lesson on one part of a batch, its loss gradient scaled by ``share``.

    Returns ``(share * mean loss, number correct, gradients)`` (gradients aligned with
    ``model.parameters()``; the count is 0 for a loss that does not classify), all on the device.
    """
    # --8<-- [start:part]
    out = model.forward(x, train=True)
    loss, cache = model.loss.forward(out, targets)
    model.backward(model.loss.backward(share, cache), input_grad=False)  # dL/dout scaled by the part's share
    return loss * share, model.loss.correct(out, targets), model.gradients()
    # --8<-- [end:part]


def loss_and_count(loss: Array, count: Array) -> Array:
    """``[loss, count]`` as ONE array in the loss's dtype, so that one host read or one all-reduce moves both
    (a count stays exact below 2**24 in float32)."""
    xp = array_api_compat.array_namespace(loss)
    return xp.stack([loss, xp.astype(count, loss.dtype)])


def mixes_rows(model: Any) -> bool:
    """Does any layer's training forward mix the rows of a batch (so the batch must not be split)?"""
    return any(layer.mixes_rows for layer in model.layers)


class Execution:
    """The whole batch in one piece (the default for every library but NumPy).

    ``communicator``: the ranks of a data-parallel run (default: one process, see the module docstring).
    """

    def __init__(self, communicator: Communicator | None = None) -> None:
        if communicator is not None and not isinstance(communicator, Communicator):
            raise TypeError(f"communicator must be an arraycnn.distributed.Communicator, got {communicator!r}")
        self.communicator = Communicator() if communicator is None else communicator

    def train_step(self, model: Any, x: Array, targets: Array, optimizer: Any,
                   total: int | None = None) -> tuple[Array, Array]:
        """One step -> ``(mean loss, number correct)`` of the batch, both 0-d on the device.

        ``total``: the rows of the global batch of which ``x`` holds this rank's (default ``x.shape[0]``);
        the loss and count returned are then the global batch's, the same on every rank.
        """
        total = x.shape[0] if total is None else check_int(total, "total", max(1, x.shape[0]))
        if self.communicator.size == 1:
            loss, correct = self.loss_and_gradients(model, x, targets, total)
        else:
            loss, correct = self._sum_over_ranks(model, x, targets, total)
        optimizer.step(model.parameters(), model.gradients())
        return loss, correct

    def loss_and_gradients(self, model: Any, x: Array, targets: Array,
                           total: int | None = None) -> tuple[Array, Array]:
        """Leave the part's parameter gradients, its loss gradient scaled by ``x.shape[0] / total``, in the
        model; returns ``(share * mean loss, number correct)``."""
        share = 1.0 if total is None else x.shape[0] / total
        loss, correct, _ = part_loss_and_gradients(model, x, targets, share)
        return loss, correct

    def _sum_over_ranks(self, model: Any, x: Array, targets: Array, total: int) -> tuple[Array, Array]:
        """This rank's share-weighted part, then ONE all-reduce of its gradients, loss and count."""
        if mixes_rows(model):
            raise ValueError("a model with a layer that mixes the rows of a batch (e.g. BatchNorm) cannot be "
                             "split over ranks exactly: each rank would use its own rows' statistics")
        xp = model.xp
        if x.shape[0]:
            loss, correct = self.loss_and_gradients(model, x, targets, total)
        else:  # a last batch smaller than the number of ranks leaves this rank nothing: it adds zeros
            model.set_gradients([xp.zeros_like(p) for p in model.parameters()])
            loss = xp.zeros((), dtype=model.dtype, device=model.device)
            correct = xp.zeros((), dtype=xp.int64, device=model.device)
        stats = loss_and_count(loss, correct)
        self.communicator.allreduce_sum([*model.gradients(), stats])
        return stats[0], xp.astype(stats[1], xp.int64)

    def predict(self, model: Any, x: Array) -> Array:
        """The model's outputs for ``x (N, ...)`` in evaluation mode (no cache kept)."""
        return model.forward(x, train=False)

    def close(self) -> None:
        """Release what the execution holds (threads); it may be used again afterwards."""

    def __enter__(self) -> Execution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._ranks()})"

    def _ranks(self) -> str:
        """``communicator=...`` for the repr of a distributed execution, else nothing."""
        return f"communicator={self.communicator!r}" if self.communicator.size > 1 else ""


def chunks(n: int, rows: int) -> list[slice]:
    """``[0, n)`` in consecutive slices of ``rows`` rows (the last may be shorter); one empty slice for n = 0."""
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)] or [slice(0, 0)]


def add_in_order(parts: Sequence[Sequence[Array]]) -> list[Array]:
    """``parts[0] + parts[1] + ...`` element-wise for aligned lists of arrays, always in this order."""
    total = list(parts[0])
    for part in parts[1:]:
        total = [a + b for a, b in zip(total, part, strict=True)]
    return total


class ChunkedExecution(Execution):
    """The batch in fixed chunks of ``chunk_rows`` rows over ``threads`` threads (NumPy).

    Each thread runs its chunks on its own replica of the layers (its own caches and gradients), which
    reads the model's parameter arrays afresh every step. Gradients are added in chunk order, so the
    numbers do not depend on ``threads``. A model with a row-mixing layer (``mixes_rows``) is trained
    in one piece; prediction is always chunked (no layer mixes rows in evaluation mode).
    """

    def __init__(self, threads: int | None = None, chunk_rows: int = CHUNK_ROWS,
                 communicator: Communicator | None = None) -> None:
        super().__init__(communicator)
        self.threads = (default_threads(self.communicator.local_size) if threads is None
                        else check_int(threads, "threads", 1))
        self.chunk_rows = check_int(chunk_rows, "chunk_rows", 1)
        self._pool: ThreadPoolExecutor | None = None
        self._replicas: dict[int, list[Any]] = {}

    def __repr__(self) -> str:
        ranks = self._ranks()
        return f"ChunkedExecution(threads={self.threads}, chunk_rows={self.chunk_rows}{', ' + ranks if ranks else ''})"

    def loss_and_gradients(self, model: Any, x: Array, targets: Array,
                           total: int | None = None) -> tuple[Array, Array]:
        if mixes_rows(model):  # in one piece: the threads go to BLAS instead
            with blas_threads(self.threads):
                return super().loss_and_gradients(model, x, targets, total)
        n = x.shape[0]
        total = n if total is None else total

        def run(replica: Any, part: slice) -> tuple[Array, Array, list]:
            return part_loss_and_gradients(replica, x[part, ...], targets[part, ...],
                                           (part.stop - part.start) / total)

        results = self._map(model, run, chunks(n, self.chunk_rows))
        loss, correct = add_in_order([r[:2] for r in results])
        model.set_gradients(add_in_order([r[2] for r in results]))
        return loss, correct

    def predict(self, model: Any, x: Array) -> Array:
        parts = self._map(model, lambda replica, part: replica.forward(x[part, ...], train=False),
                          chunks(x.shape[0], self.chunk_rows))
        return parts[0] if len(parts) == 1 else array_api_compat.array_namespace(x).concat(parts, axis=0)

    def _map(self, model: Any, fn: Any, parts: list[slice]) -> list[Any]:
        """``[fn(replica, part) for part in parts]`` in order, over at most ``threads`` replicas."""
        count = min(self.threads, len(parts))
        replicas = self._replicas_of(model, count)
        with blas_threads(1):
            if count == 1:
                return [fn(model, part) for part in parts]
            groups = [parts[i::count] for i in range(count)]  # thread i takes chunks i, i + count, ...
            done = list(self._thread_pool().map(lambda r, g: [fn(r, p) for p in g], replicas, groups))
        return [done[i % count][i // count] for i in range(len(parts))]

    def _replicas_of(self, model: Any, count: int) -> list[Any]:
        """``count`` models sharing ``model``'s parameter arrays: ``model`` itself, then shallow replicas."""
        replicas = self._replicas.setdefault(id(model), [])
        while len(replicas) < count - 1:
            replicas.append(model.replica())
        for replica in replicas[:count - 1]:
            replica.share_parameters(model)
        return [model, *replicas[:count - 1]]

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="arraycnn")
            weakref.finalize(self, self._pool.shutdown, wait=False)  # no thread outlives its execution
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None
        self._replicas.clear()


def default_threads(ranks_here: int = 1) -> int:
    """Threads for :class:`ChunkedExecution`: ``ARRAYCNN_THREADS`` if set, else the usable cores (at most
    ``MAX_THREADS``). ``ranks_here``: the processes of a distributed run on this machine, which share its
    cores unless the launcher bound each to its own."""
    env = os.environ.get(THREADS_ENV)
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {env!r}")
        return int(env)
    machine = os.cpu_count() or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else machine
    if cores == machine:  # not bound by the launcher: the ranks on this machine share it
        cores //= check_int(ranks_here, "ranks_here", 1)
    return max(1, min(cores, MAX_THREADS))


def default_execution(xp: Any, communicator: Communicator | None = None, threads: int | None = None) -> Execution:
    """What a namespace wants: chunks over ``threads`` threads for NumPy (one op runs on one core); the whole
    batch in one piece for a GPU or a library that parallelises inside each op. ``communicator``: the
    ranks of a data-parallel run (default one process)."""
    if backend_name(xp) == "numpy":
        return ChunkedExecution(threads, communicator=communicator)
    return Execution(communicator)


@cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit NumPy's BLAS to ``n`` threads inside the block: the chunks' threads are the parallelism, and
    one BLAS thread per product keeps every chunk's numbers independent of how many there are."""
    with _blas_controller().limit(limits=n, user_api="blas"):
        yield
