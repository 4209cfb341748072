"""The communicator seam (arraycnn/distributed.py): one process in-process, MPI under real ``mpiexec`` jobs.

The MPI tests start ``mpiexec -n P python -m mpi4py tests/mpi_worker.py SCENARIO`` as subprocesses with
timeouts, so a hang fails the test instead of stalling the suite; they skip, saying why, where mpiexec or
mpi4py is missing (``pip install -e '.[mpi]'`` brings both).
"""

from __future__ import annotations

import importlib.util
import json
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
from conftest import EXAMPLES, run_example

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


def mpi_command(ranks: int, script: Path, *args: str) -> list[str]:
    return [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), *args]


def mpi_env() -> dict[str, str]:
    """One thread per rank; the repository importable from any working directory."""
    return {**os.environ, "ARRAYCNN_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


def mpirun(ranks: int, *args: str, timeout: float = JOB_TIMEOUT_S, script: Path = WORKER,
           cwd: Path = HERE.parent) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m mpi4py script args``; a hang fails the test after ``timeout`` seconds."""
    return subprocess.run(mpi_command(ranks, script, *args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=mpi_env())


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


@pytest.mark.parametrize("n", [0, 1, 3, 64, 65])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_ranks_rows_cover_a_batch_once_in_order(n, size):
    parts = []
    for rank in range(size):
        comm = Communicator()
        comm.rank, comm.size = rank, size
        parts.append(comm.rows(n))
    assert [p.start for p in parts] == [0, *(p.stop for p in parts[:-1])] and parts[-1].stop == n
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


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
@pytest.mark.parametrize("ranks", [2, 4])
def test_fit_over_ranks_follows_one_process_and_keeps_every_copy_equal(ranks):
    """float64; a last batch of one row leaves ranks without rows (they add zeros); parameters bitwise equal."""
    proc = mpirun(ranks, "train")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in rank_lines(proc.stdout, ranks).values():
        rel, same = re.fullmatch(r"rel (\S+) same-as-rank-0 (True|False)", text).groups()
        assert float(rel) <= 1e-10 and same == "True", text


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


# --------------------------------------------------------------------------- examples/mnist.py --distributed

EXAMPLE = EXAMPLES / "mnist.py"
# 200 training images at global batch 64: three full batches and an uneven last one of 8 rows
TINY = ("--train-size", "200", "--test-size", "100", "--dtype", "float64", "--batch-size", "64", "--seed", "3")


def example_alone(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """examples/mnist.py in one process, one thread: what the ranks are compared with."""
    return run_example("mnist.py", cwd, *args, env={"ARRAYCNN_THREADS": "1", **(env or {})}, timeout=JOB_TIMEOUT_S)


def history(path: Path) -> list[dict]:
    return json.loads(path.read_text())["history"]


def assert_same_epochs(actual: list[dict], expected: list[dict], rtol: float) -> None:
    assert [r["epoch"] for r in actual] == [r["epoch"] for r in expected]
    for a, e in zip(actual, expected, strict=True):
        for key in ("train_loss", "test_loss"):
            assert abs(a[key] - e[key]) <= rtol * abs(e[key]), (a["epoch"], key, a[key], e[key])
        assert (a["train_acc"], a["test_acc"]) == (e["train_acc"], e["test_acc"])


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> list[dict]:
    """Two epochs of one process at batch 64 (one thread): the run the ranks must follow."""
    cwd = tmp_path_factory.mktemp("alone")
    proc = example_alone(cwd, *TINY, "--epochs", "2", "--metrics-json", "m.json")
    assert proc.returncode == 0, proc.stderr
    return history(cwd / "m.json")


@needs_mpi
@pytest.mark.parametrize(("ranks", "rtol"), [(2, 1e-12), (4, 1e-10)])
def test_ranks_follow_the_one_process_run(alone, tmp_path, ranks, rtol):
    """float64, one thread per rank: the per-epoch losses of one process at the same global batch."""
    proc = mpirun(ranks, *TINY, "--epochs", "2", "--metrics-json", "m.json", "--distributed", script=EXAMPLE,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_epochs(history(tmp_path / "m.json"), alone, rtol)
    assert proc.stdout.count("final test accuracy") == 1  # only rank 0 speaks
    assert f"ranks     {ranks} processes (MPICommunicator)" in proc.stdout


@needs_mpi
def test_resume_under_mpi_equals_the_uninterrupted_run(alone, tmp_path):
    first = mpirun(2, *TINY, "--epochs", "1", "--save", "ck.npz", "--distributed", script=EXAMPLE, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    rest = mpirun(2, "--resume", "ck.npz", "--epochs", "2", "--metrics-json", "m.json", "--distributed",
                  script=EXAMPLE, cwd=tmp_path)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "resumed   from ck.npz after epoch 1" in rest.stdout
    assert_same_epochs(history(tmp_path / "m.json"), alone, 1e-12)


@needs_mpi
def test_ctrl_c_under_mpiexec_stops_every_rank_and_rank_0_saves(tmp_path):
    """mpiexec forwards SIGINT to every rank; they agree on a step, rank 0 saves the last completed epoch."""
    cmd = mpi_command(2, EXAMPLE, "--train-size", "512", "--test-size", "100", "--epochs", "50", "--batch-size",
                      "64", "--save", "ck.npz", "--distributed")
    job = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**mpi_env(), "PYTHONUNBUFFERED": "1"})
    try:
        for line in job.stdout:
            if line.startswith("epoch  1/50"):
                break
        job.send_signal(signal.SIGINT)
        out, err = job.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        job.kill()
    assert job.returncode == 130, out + err
    assert "interrupted during epoch 2: the state after epoch 1 is saved in ck.npz" in out
    assert "--resume ck.npz --epochs 50 --distributed" in out
    meta = json.loads(str(np.load(tmp_path / "ck.npz")["meta"]))
    assert meta["epoch"] == 1


def test_example_distributed_without_mpi4py_names_the_extra(tmp_path):
    code = (f"import runpy, sys; sys.modules['mpi4py'] = None; sys.path.insert(0, {str(EXAMPLE.parent)!r}); "
            f"sys.argv = ['mnist.py', '--distributed', '--epochs', '0']; runpy.run_path({str(EXAMPLE)!r}, "
            "run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 2
    assert "--distributed needs mpi4py: pip install 'arraycnn[mpi]'" in proc.stderr


@needs_mpi
def test_example_under_another_mpis_launcher_is_a_clear_error(tmp_path):
    proc = example_alone(tmp_path, "--distributed", "--epochs", "0", env={"OMPI_COMM_WORLD_SIZE": "2"})
    assert proc.returncode == 2
    assert "the launcher started 2 ranks (OMPI_COMM_WORLD_SIZE=2), but MPI reports 1" in proc.stderr


# --------------------------------------------------------------------------- benchmarks/scaling.py


def test_scaling_projection_and_report():
    from benchmarks import scaling

    assert scaling.allreduce_model(2, 0) == pytest.approx(2 * scaling.NET_LATENCY_S)
    expected = 2 * 6 * scaling.NET_LATENCY_S + 2 * 63 / 64 * 1e9 / scaling.NET_BYTES_PER_S
    assert scaling.allreduce_model(64, 10**9) == pytest.approx(expected)
    compute = {"64": 0.016, "8": 0.003, "1": 0.001, "optimizer": 0.001}

    def run(ranks, threads, seconds):
        return {"ranks": ranks, "threads": threads, "dataset": "fashion_mnist (test)", "train_size": 6400,
                "epoch_seconds": seconds, "steps": 100, "allreduce_in_epoch_s": 0.1 * (ranks > 1),
                "stop_votes_in_epoch_s": 0.001, "allreduce_alone_s": 5e-4, "pack_unpack_s": 1e-4,
                "gradient_bytes": 806_280, "compute_s_at_rows": compute, "calls": 200, "others_share": 0.02,
                "compute_rounds": 100}

    text = scaling.report([run(1, 1, 2.0), run(1, 2, 1.2), run(2, 1, 1.0)])
    assert "| 2 x 1 | 1.0 s | 6,400 | 2.00x | 10.0 ms | 1.00 ms (10 %) | 0.500 ms (5.0 %) |" in text
    assert "| 64 | 4096 | 64 | 17.00 ms |" in text and "0.81 MB" in text


@needs_mpi
def test_divergence_under_mpi_stops_every_rank_with_status_1(tmp_path):
    proc = mpirun(2, "--train-size", "256", "--test-size", "20", "--batch-size", "32", "--optimizer", "sgd",
                  "--lr", "1e4", "--epochs", "3", "--save", "ck.npz", "--distributed", script=EXAMPLE, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("training diverged") == 1  # rank 0 alone says it
    assert "The last good state is kept: the state after epoch 0 is saved in ck.npz" in proc.stdout


@needs_mpi
def test_a_row_mixing_network_is_refused_under_mpi(tmp_path):
    proc = mpirun(2, "--model", "vgg", "--train-size", "64", "--epochs", "1", "--distributed", script=EXAMPLE,
                  cwd=tmp_path)
    assert proc.returncode == 2
    assert "--model vgg mixes them (BatchNorm, Dropout)" in proc.stderr
