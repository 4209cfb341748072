"""The communicator seam: how the processes of a data-parallel run add up their gradients.

The ONLY module that names mpi4py or NCCL. A run on ``P`` processes ("ranks") keeps one full copy of
the model per rank; every rank takes its own rows of the same global batch, and after the backward pass
the ranks' share-weighted gradients are summed with one all-reduce, so every rank takes the same
optimizer step (derivation: ``docs/distributed.md``)::

    mpiexec -n 4 python -m mpi4py examples/mnist.py --distributed

:func:`get_communicator` picks an implementation:

* :class:`Communicator` -- one process, the default: every collective is the identity;
* :class:`MPICommunicator` -- MPI through mpi4py's buffer (uppercase) calls, no pickling. NumPy arrays are
  reduced where they lie; any other library's arrays (CuPy without NCCL, PyTorch, ...) are staged through
  one host buffer per call;
* :class:`NCCLCommunicator` -- CuPy arrays reduced GPU to GPU by NCCL (``cupy.cuda.nccl``), one GPU per
  rank; MPI only carries NCCL's unique id, host scalars and the stop votes.

Every array collective packs its list of arrays into ONE flat buffer, so a step costs one all-reduce
whatever the number of parameters. A collective must be called by every rank in the same order.

Stopping together: a rank must never leave the others waiting inside a collective.

* Divergence: the loss is summed over the ranks before it is checked, so every rank sees the same value
  at the same batch and stops there.
* Ctrl-C (``mpiexec`` and ``srun`` forward it to every rank): inside :meth:`Communicator.deferred_interrupts`
  the first SIGINT only sets a flag; :meth:`Communicator.stop_requested`, called once per step, is an
  all-reduce of the flags (over MPI it rides in the step's gradient all-reduce), so all ranks stop after
  the same step. A second Ctrl-C interrupts at once.
* Anything else raised on one rank: ``python -m mpi4py`` (or :meth:`Communicator.abort`) ends the job.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import array_api_compat
import numpy as np

from .backend import Array, pack, to_device, to_numpy, unpack_into

#: Launcher variables that tell how many ranks ``mpiexec``/``srun`` started (MPICH/Intel MPI/PMI-2,
#: Open MPI, MVAPICH2, Slurm's ``srun``).
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
NCCL_UNIQUE_ID_BYTES = 128  # nccl.h
MPI_EXTRA_HINT = "pip install 'arraycnn[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"

__all__ = [
    "LAUNCHER_SIZE_VARS",
    "Communicator",
    "DistributedUnavailableError",
    "MPICommunicator",
    "NCCLCommunicator",
    "StopRequested",
    "get_communicator",
    "launcher_size",
]


class DistributedUnavailableError(RuntimeError):
    """A distributed run cannot start: mpi4py missing, or a launcher that does not match mpi4py's MPI."""


class StopRequested(KeyboardInterrupt):
    """Ctrl-C, agreed on by every rank at the same step (see :meth:`Communicator.stop_requested`)."""


def launcher_size() -> tuple[int, str] | None:
    """``(ranks, variable)`` as the launcher's environment states them, or None outside a launcher."""
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value), var
    return None


def _check_arrays(arrays: Sequence[Array], name: str = "arrays") -> tuple[Any, Any]:
    """``(namespace, dtype)`` shared by every array; TypeError naming the first one that differs."""
    if isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence) or not arrays:
        raise TypeError(f"{name} must be a non-empty list of arrays, got {type(arrays).__name__}")
    for i, a in enumerate(arrays):
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name}[{i}] must be an array, got {type(a).__name__}")
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError:
        raise TypeError(f"{name} must all come from one array library") from None
    dtype = arrays[0].dtype
    for i, a in enumerate(arrays):
        if a.dtype != dtype:
            raise TypeError(f"{name}[{i}] has dtype {a.dtype}, but {name}[0] has {dtype}: one buffer holds one dtype")
    return xp, dtype


class Communicator:
    """One process (the default): ``rank`` 0 of ``size`` 1, and every collective leaves its input as it is.

    The interface every implementation offers:

    * ``rank``, ``size`` -- this process's index and the number of processes;
    * ``local_rank``, ``local_size`` -- the same among the processes of this machine (``local_rank``
      picks the GPU); :meth:`rows` -- this rank's rows of a global batch;
    * :meth:`allreduce_sum` (in place, one fused buffer), :meth:`broadcast` (in place),
      :meth:`allreduce_scalars` (host floats), :meth:`broadcast_scalars`;
    * :meth:`deferred_interrupts`, :meth:`stop_requested`, :meth:`barrier`, :meth:`abort` -- stopping
      together.
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    _interrupted = False  # set by the SIGINT handler of deferred_interrupts
    _vote: bool | None = None  # the stop vote that rode in the last allreduce_sum (MPI), not yet asked for

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that logs, plots and writes files."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` rows: ``[n r / P, n (r + 1) / P)``."""
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    # -- array collectives ------------------------------------------------------------------------------
    def allreduce_sum(self, arrays: Sequence[Array]) -> None:
        """Replace every array by its sum over the ranks, in place: ``a <- sum_r a_r``.

        ``arrays``: a list of arrays of one library, one device and one dtype (any shapes, 0-d included);
        they travel as one flat buffer, so the call costs one all-reduce whatever their number.
        """
        xp, _ = _check_arrays(arrays)
        if self.size > 1:
            flat = self._allreduce_flat(pack(arrays, xp))
            unpack_into(flat, arrays, xp)

    def broadcast(self, arrays: Sequence[Array], root: int = 0) -> None:
        """Overwrite every rank's arrays with rank ``root``'s, in place (one flat buffer, as above)."""
        xp, _ = _check_arrays(arrays)
        self._check_root(root)
        if self.size > 1:
            flat = self._broadcast_flat(pack(arrays, xp), root)
            unpack_into(flat, arrays, xp)

    # -- host collectives -------------------------------------------------------------------------------
    def allreduce_scalars(self, values: Sequence[float]) -> list[float]:
        """The sum over the ranks of each host number (loss sums, correct counts), in float64."""
        host = self._host_vector(values)
        if self.size > 1:
            self._host_allreduce(host)
        return host.tolist()

    def broadcast_scalars(self, values: Sequence[float], root: int = 0) -> list[float]:
        """Rank ``root``'s host numbers on every rank (float64)."""
        host = self._host_vector(values)
        self._check_root(root)
        if self.size > 1:
            self._host_broadcast(host, root)
        return host.tolist()

    # -- stopping together ------------------------------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one rank."""
        return self.allreduce_scalars([1.0 if flag else 0.0])[0] > 0

    @contextmanager
    def deferred_interrupts(self) -> Iterator[None]:
        """Inside the block, on more than one rank, a first Ctrl-C is only noted (see
        :meth:`stop_requested`); a second interrupts at once. One process keeps Python's Ctrl-C as it is."""
        self._interrupted = False
        if self.size == 1 or threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum: int, frame: Any) -> None:
            self._interrupted = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts whatever runs

        previous = signal.signal(signal.SIGINT, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def stop_requested(self) -> bool:
        """Has any rank seen Ctrl-C inside :meth:`deferred_interrupts`? The same answer on every rank
        (a collective: call it at the same point on every rank, e.g. after every step). Over MPI the vote
        rides in the last :meth:`allreduce_sum`'s buffer (one more element), so a step pays no second
        collective for it; without one since the last call, it is an all-reduce of its own."""
        if self.size == 1:
            return False
        if self._vote is not None:
            vote, self._vote = self._vote, None
            return vote
        return self.any(self._interrupted)

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, code: int) -> NoReturn:
        """End every rank of the job with exit status ``code`` (one process: ``SystemExit(code)``)."""
        raise SystemExit(code)

    # -- what an implementation provides ----------------------------------------------------------------
    def _allreduce_flat(self, flat: Array) -> Array:
        raise NotImplementedError

    def _broadcast_flat(self, flat: Array, root: int) -> Array:
        raise NotImplementedError

    def _host_allreduce(self, host: np.ndarray) -> None:
        raise NotImplementedError

    def _host_broadcast(self, host: np.ndarray, root: int) -> None:
        raise NotImplementedError

    # -- checks -----------------------------------------------------------------------------------------
    def _check_root(self, root: int) -> None:
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"root must be a rank in [0, {self.size}), got {root!r}")

    @staticmethod
    def _host_vector(values: Sequence[float]) -> np.ndarray:
        host = np.array([float(v) for v in values], dtype=np.float64)
        if host.ndim != 1:
            raise TypeError(f"values must be a sequence of numbers, got {values!r}")
        return host


class MPICommunicator(Communicator):
    """MPI through mpi4py's buffer calls (``Allreduce``/``Bcast`` on NumPy buffers, no pickling).

    NumPy arrays are reduced in the flat buffer where it lies. Arrays of any other library (CuPy without
    NCCL, PyTorch, ...) are staged: one copy of the flat buffer to the host and one back per call.
    """

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self._MPI, self._comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def allreduce_sum(self, arrays: Sequence[Array]) -> None:
        xp, dtype = _check_arrays(arrays)
        if self.size == 1:
            return
        flag = xp.full((1,), 1.0 if self._interrupted else 0.0, dtype=dtype, device=array_api_compat.device(arrays[0]))
        flat = pack([*arrays, flag], xp)  # the stop vote rides as one more element
        host = self._to_host(flat)
        self._comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        self._vote = bool(host[-1] > 0)
        unpack_into(self._from_host(host, flat), arrays, xp)

    def _allreduce_flat(self, flat: Array) -> Array:
        host = self._to_host(flat)
        self._comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        return self._from_host(host, flat)

    def _broadcast_flat(self, flat: Array, root: int) -> Array:
        host = self._to_host(flat)
        self._comm.Bcast(host, root=root)
        return self._from_host(host, flat)

    def _host_allreduce(self, host: np.ndarray) -> None:
        self._comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)

    def _host_broadcast(self, host: np.ndarray, root: int) -> None:
        self._comm.Bcast(host, root=root)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int) -> NoReturn:
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(code)
        raise SystemExit(code)  # pragma: no cover - Abort does not return

    @staticmethod
    def _to_host(flat: Array) -> np.ndarray:
        """The buffer MPI works on: ``flat`` itself for NumPy, else a writable host copy."""
        if isinstance(flat, np.ndarray):
            return flat
        return np.array(to_numpy(flat), copy=True)

    @staticmethod
    def _from_host(host: np.ndarray, flat: Array) -> Array:
        if host is flat:
            return flat
        return to_device(host, array_api_compat.array_namespace(flat), device=array_api_compat.device(flat))


class NCCLCommunicator(MPICommunicator):
    """CuPy arrays reduced by NCCL, GPU to GPU, on the current stream; one GPU per rank.

    ``device``: the CUDA device id this rank uses (default: its ``local_rank``: one GPU per rank); it is
    made current, and the NCCL communicator is bound to it. Rank 0 draws NCCL's unique
    id and MPI carries it (``Bcast`` of its 128 bytes). Host scalars and stop votes go over MPI.
    """

    def __init__(self, comm: Any, device: int | None = None) -> None:
        super().__init__(comm)
        import cupy
        from cupy.cuda import nccl

        self._cupy, self._nccl = cupy, nccl
        self.device = self.local_rank if device is None else int(device)
        cupy.cuda.Device(self.device).use()
        uid = np.zeros(NCCL_UNIQUE_ID_BYTES, np.int64)
        if self.rank == 0:
            uid[:] = nccl.get_unique_id()
        comm.Bcast(uid, root=0)
        self._comm_nccl = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, device={self.device})"

    allreduce_sum = Communicator.allreduce_sum  # no vote in NCCL's buffer: reading it would wait for the GPU

    def _nccl_type(self, flat: Array) -> Any:
        if not isinstance(flat, self._cupy.ndarray):
            return None
        return self._types.get(np.dtype(flat.dtype))

    def _allreduce_flat(self, flat: Array) -> Array:
        kind = self._nccl_type(flat)
        if kind is None:  # host arrays or a dtype NCCL is not given here: MPI
            return super()._allreduce_flat(flat)
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm_nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, kind, self._nccl.NCCL_SUM, stream)
        return flat

    def _broadcast_flat(self, flat: Array, root: int) -> Array:
        kind = self._nccl_type(flat)
        if kind is None:
            return super()._broadcast_flat(flat, root)
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm_nccl.bcast(flat.data.ptr, flat.size, kind, root, stream)
        return flat


def _nccl_usable() -> bool:
    """True when CuPy imports, was given NCCL (``nvidia-nccl-cu12``, the ``cuda12`` extra) and sees a GPU."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError:
        return False
    try:
        return bool(getattr(nccl, "available", True)) and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError without a driver
        return False


def get_communicator(distributed: bool = False, xp: Any = None, device: int | None = None) -> Communicator:
    """The communicator of this process.

    ``distributed=False``: :class:`Communicator` (one process). ``distributed=True``: MPI's world, with
    NCCL when ``xp`` is CuPy's namespace and NCCL is installed (``device``: this rank's GPU, default its
    local rank), else MPI (host-staged for arrays other than NumPy's).

    Raises :class:`DistributedUnavailableError` when mpi4py is missing (naming the ``mpi`` extra), or when
    the launcher's environment says more ranks than MPI reports: an ``mpiexec`` from another MPI than the
    one mpi4py is built on starts N independent one-process runs, which must not train as if alone.
    """
    if not distributed:
        return Communicator()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailableError(f"--distributed needs mpi4py: {MPI_EXTRA_HINT} ({exc})") from None
    comm = MPI.COMM_WORLD
    stated = launcher_size()
    if stated is not None and stated[0] != comm.Get_size():
        library = " ".join(MPI.Get_library_version().splitlines()[0].split())
        raise DistributedUnavailableError(
            f"the launcher started {stated[0]} ranks ({stated[1]}={stated[0]}), but MPI reports "
            f"{comm.Get_size()}: this mpiexec belongs to another MPI than mpi4py's ({library}). Launch with "
            f"the mpiexec of that MPI (with the 'mpi' extra: {os.path.join(sys.prefix, 'bin', 'mpiexec')}), "
            "or rebuild mpi4py against your system MPI (docs/distributed.md)")
    if xp is not None and array_api_compat.is_cupy_namespace(xp) and _nccl_usable():
        return NCCLCommunicator(comm, device)
    return MPICommunicator(comm)
