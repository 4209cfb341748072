"""The communicator seam (arraycnn/distributed.py): one process in-process, MPI under real ``mpiexec`` jobs.

The MPI tests start ``mpiexec -n P python -m mpi4py tests/mpi_worker.py SCENARIO`` as subprocesses with
timeouts, so a hang fails the test instead of stalling the suite; they skip, saying why, where mpiexec or
mpi4py is missing (``pip install -e '.[mpi]'`` brings both).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arraycnn.distributed import Communicator, DistributedUnavailableError, get_communicator

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
JOB_TIMEOUT_S = 120


def find_mpiexec() -> str | None:
    """The mpiexec beside this Python (the ``mpich`` wheel installs it there), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="mpiexec or mpi4py is missing: pip install -e '.[mpi]' (mpi4py and the mpich wheel)")


def mpirun(ranks: int, *args: str, timeout: float = JOB_TIMEOUT_S, script: Path = WORKER,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m mpi4py script args`` from the repository root; fails the test on a hang."""
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), *args]
    full_env = {**os.environ, "ARRAYCNN_THREADS": "1", "PYTHONPATH": str(HERE.parent), **(env or {})}
    return subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout, env=full_env)


def rank_lines(out: str, ranks: int) -> dict[int, str]:
    lines = dict(re.findall(r"^rank (\d+): (.*)$", out, flags=re.M))
    assert sorted(int(r) for r in lines) == list(range(ranks)), out
    return {int(r): text for r, text in lines.items()}


# --------------------------------------------------------------------------- one process


def test_single_process_collectives_leave_everything_as_it_is():
    comm = get_communicator(False)
    assert type(comm) is Communicator and (comm.rank, comm.size, comm.local_rank, comm.local_size) == (0, 1, 0, 1)
    arrays = [np.arange(6.0).reshape(2, 3), np.asarray(2.5)]
    comm.allreduce_sum(arrays)
    comm.broadcast(arrays)
    np.testing.assert_array_equal(arrays[0], np.arange(6.0).reshape(2, 3))
    assert float(arrays[1]) == 2.5
    assert comm.allreduce_scalars([3, 0.5]) == [3.0, 0.5] and comm.broadcast_scalars([7]) == [7.0]
    assert comm.any(True) and not comm.any(False)
    before = signal.getsignal(signal.SIGINT)
    with comm.deferred_interrupts():
        assert signal.getsignal(signal.SIGINT) is before  # one process keeps Python's Ctrl-C
        assert not comm.stop_requested()
    with pytest.raises(SystemExit) as exc:
        comm.abort(3)
    assert exc.value.code == 3


@pytest.mark.parametrize(("arrays", "message"), [
    ([], "non-empty list"),
    ("ab", "non-empty list"),
    ([np.zeros(2), None], r"arrays\[1\] must be an array"),
    ([np.zeros(2), np.zeros(2, np.float32)], r"arrays\[1\] has dtype float32"),
])
def test_bad_arrays_are_refused_by_name(arrays, message):
    with pytest.raises(TypeError, match=message):
        Communicator().allreduce_sum(arrays)


def test_arrays_of_two_libraries_and_a_bad_root_are_refused():
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="one array library"):
        Communicator().allreduce_sum([np.zeros(2), strict.zeros(2)])
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\), got 1"):
        Communicator().broadcast([np.zeros(2)], root=1)


def test_distributed_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(DistributedUnavailableError, match=r"pip install 'arraycnn\[mpi\]'"):
        get_communicator(True)
    assert type(get_communicator(False)) is Communicator  # one process never imports it


@needs_mpi
@pytest.mark.parametrize("var", ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE"])
def test_a_launcher_of_another_mpi_is_a_clear_error(var):
    """N processes that MPI sees as N one-rank worlds must not train as if alone."""
    code = "from arraycnn.distributed import get_communicator; get_communicator(True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
                          env={**os.environ, var: "4"}, cwd=HERE.parent)
    assert proc.returncode != 0
    assert f"the launcher started 4 ranks ({var}=4), but MPI reports 1" in proc.stderr
    assert "docs/distributed.md" in proc.stderr


# --------------------------------------------------------------------------- under mpiexec


@needs_mpi
@pytest.mark.parametrize(("ranks", "backend"), [
    (2, ["numpy"]), (4, ["numpy"]),
    (2, ["array_api_strict", "device1"]),  # host-staged path, on a device that refuses to mix (GPU stand-in)
])
def test_collectives_match_their_closed_forms(ranks, backend):
    if backend[0] != "numpy":
        pytest.importorskip(backend[0])
    proc = mpirun(ranks, "collectives", *backend)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in rank_lines(proc.stdout, ranks).values():
        assert text.startswith(f"ok MPICommunicator size {ranks}")


@needs_mpi
def test_a_rank_that_raises_ends_the_job_within_seconds():
    """The other ranks wait in an all-reduce that can never complete; the job must still end, non-zero."""
    start = time.perf_counter()
    proc = mpirun(2, "fail", timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0
    assert "rank failure on purpose" in proc.stderr
    assert "still running" not in proc.stdout
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


@needs_mpi
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step():
    proc = mpirun(2, "interrupt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = {text for text in rank_lines(proc.stdout, 2).values()}
    assert len(steps) == 1 and steps.pop().startswith("stopped after step "), proc.stdout
