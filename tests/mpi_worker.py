"""Scenarios run by tests/test_distributed.py on every rank: ``mpiexec -n P python -m mpi4py mpi_worker.py NAME``.

Each prints ``rank R: ...`` lines the test reads; a failed check raises, which ends the job non-zero.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from arraycnn.backend import get_namespace, resolve_device, to_device, to_numpy
from arraycnn.distributed import get_communicator


def say(rank: int, text: str) -> None:
    """One line in ONE write, so mpiexec never interleaves two ranks' lines."""
    os.write(1, f"rank {rank}: {text}\n".encode())


def collectives(backend: str = "numpy", device: str | None = None) -> None:
    """Sums, broadcasts and scalars against their closed forms; the fused buffer writes back in place
    (on ``device`` of ``backend``: array-api-strict's ``device1`` stands in for a GPU without NCCL)."""
    xp = get_namespace(backend)
    device = resolve_device(xp, device)
    comm = get_communicator(True, xp)
    r, p = comm.rank, comm.size
    shapes = [(3, 2), (), (5,), (1, 4, 1)]
    arrays = [xp.asarray(to_device(np.full(s, r + 1.0) + np.arange(int(np.prod(s))).reshape(s), xp, "float64", device))
              for s in shapes]
    arrays[1] = xp.reshape(arrays[1], ())  # to_device gives 0-d host arrays one axis
    ids = [id(a) for a in arrays]
    assert all(a.device == arrays[0].device for a in arrays) and (device is None or arrays[0].device == device)
    comm.allreduce_sum(arrays)
    assert [id(a) for a in arrays] == ids
    assert all(a.device == arrays[0].device for a in arrays) and (device is None or arrays[0].device == device)
    for s, a in zip(shapes, arrays, strict=True):
        expected = p * (p + 1) / 2 + p * np.arange(int(np.prod(s))).reshape(s)
        np.testing.assert_array_equal(to_numpy(a), expected)
    root = p - 1
    mine = [to_device(np.full((2, 3), float(r)), xp, "float32", device),
            xp.reshape(to_device(np.asarray([r * 10.0]), xp, "float32", device), ())]
    comm.broadcast(mine, root=root)
    np.testing.assert_array_equal(to_numpy(mine[0]), np.full((2, 3), float(root)))
    assert float(to_numpy(mine[1])) == root * 10.0
    assert comm.allreduce_scalars([1, r, 0.5]) == [p, p * (p - 1) / 2, 0.5 * p]
    assert comm.broadcast_scalars([r, -r], root=root) == [root, -root]
    assert comm.any(r == p - 1) and not comm.any(False)
    comm.allreduce_sum(arrays)
    assert not comm.stop_requested()  # the vote that rode in the all-reduce
    assert not comm.stop_requested()  # a vote of its own
    assert 0 <= comm.local_rank < comm.local_size <= p
    say(r, f"ok {type(comm).__name__} size {p} local {comm.local_rank}/{comm.local_size}")


def fail() -> None:
    """The last rank raises while the others wait in a collective that can never complete."""
    comm = get_communicator(True)
    say(comm.rank, "started")
    comm.barrier()
    if comm.rank == comm.size - 1:
        raise RuntimeError("rank failure on purpose")
    comm.allreduce_sum([np.zeros(4)])
    time.sleep(60)  # never reached when the job is aborted
    say(comm.rank, "still running")


def interrupt() -> None:
    """Rank 1 alone gets SIGINT before step 3: every rank must stop after the same step, together."""
    comm = get_communicator(True)
    grads = [np.ones(8)]
    step = 0
    with comm.deferred_interrupts():
        while step < 50:
            step += 1
            if comm.rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs at the next bytecode boundary
            comm.allreduce_sum(grads)
            grads[0][...] = 1.0
            if comm.stop_requested():
                break
    say(comm.rank, f"stopped after step {step}")


def train() -> None:
    """fit over the ranks against fit in one process, in the same job: 65 images at batch 32 leave a last
    batch of one row, so on 4 ranks three ranks hold none. Every rank must end with rank 0's parameters."""
    from arraycnn import data
    from arraycnn.execution import default_execution
    from arraycnn.models import tutorial_cnn
    from arraycnn.optim import Adam
    from arraycnn.train import fit

    xp = get_namespace("numpy")
    comm = get_communicator(True, xp)
    ds = data.load_dataset("mnist", "bundled", None, 65, 20, seed=0, log=None)

    def run(communicator):
        model = tutorial_cnn(xp, "float64", 0)
        model.execution = default_execution(xp, communicator, threads=1)
        history = fit(model, ds, Adam(1e-3), epochs=2, batch_size=32, seed=0, augment=True, progress=False,
                      log=lambda line: None)
        return model, history

    _, alone = run(None)
    model, ranks = run(comm)
    rel = max(abs(a[k] - b[k]) / abs(b[k]) for a, b in zip(ranks, alone, strict=True)
              for k in ("train_loss", "test_loss"))
    mine = np.concatenate([np.ravel(to_numpy(p)) for p in model.parameters()])
    root = mine.copy()
    comm.broadcast([root])
    say(comm.rank, f"rel {rel:.3e} same-as-rank-0 {np.array_equal(root, mine)}")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
