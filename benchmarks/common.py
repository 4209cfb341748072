"""Machinery shared by the benchmark scripts: thread pinning, timing, statistics, memory, machine facts, tables.

Only the standard library is imported here (threadpoolctl, if installed, when threads are pinned).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "ARRAYCNN_THREADS",  # arraycnn's chunk threads on NumPy (arraycnn.execution.default_threads)
)
_LOADED_TOO_EARLY = ("numpy", "torch", "tensorflow")
DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


# -- threads ------------------------------------------------------------------------------------------
_limits: list[object] = []  # keeps threadpoolctl's limits alive for the life of the process


def pin_threads(threads: int) -> None:
    """Pin every BLAS/OpenMP pool to ``threads``: the environment for libraries loaded later, threadpoolctl's
    limits for those already loaded (NumPy's OpenBLAS, torch's OpenMP).

    Without threadpoolctl, libraries already loaded can only have been pinned by the caller's environment
    (``OMP_NUM_THREADS=2 python -m benchmarks.cpu``); anything else is a RuntimeError, never a silent
    mismatch. PyTorch's and TensorFlow's own pools are pinned by :mod:`benchmarks.peers` when built.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    loaded = [name for name in _LOADED_TOO_EARLY if name in sys.modules]
    unpinned = [var for var in THREAD_ENV_VARS if os.environ.get(var) != str(threads)]
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter drowns the table
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if loaded and unpinned:
            raise RuntimeError(
                f"{', '.join(loaded)} loaded before the threads were pinned and threadpoolctl is not installed: "
                f"pip install threadpoolctl, or start with {unpinned[0]}={threads}"
            ) from None
        return
    _limits.append(threadpool_limits(limits=threads))


def blas_threads() -> str:
    """The thread count of each BLAS/OpenMP library loaded now, as threadpoolctl sees them (if installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "pinned through the environment (threadpoolctl not installed to check)"
    seen = {f"{info['internal_api']} {info['num_threads']}" for info in threadpool_info()}
    return ", ".join(sorted(seen)) or "no BLAS/OpenMP library loaded"


# -- timing and statistics -------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """Median and range of repeated measurements (seconds, unless said otherwise)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("samples must not be empty")
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))


def seconds_per_call(fn: Callable[[], object], calls: int, sync: Callable[[], None] | None = None) -> float:
    """Wall time of ``calls`` back-to-back calls of ``fn``, divided by ``calls``; ``sync`` ends the run (GPU)."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) / calls


def calls_for(seconds_one_call: float, target_seconds: float) -> int:
    """How many calls make a run last about ``target_seconds`` (at least one)."""
    return max(1, round(target_seconds / max(seconds_one_call, 1e-9)))


def alternate(measures: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, Stats]:
    """Call each measurement ``warmup`` times (discarded), then ``repeats`` rounds that call each once.

    Within a round the engines follow one another; the order rotates every round, so no engine always
    runs first (after another's caches were filled) or last. Each measurement returns one sample.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(measures)
    for name in names:
        for _ in range(warmup):
            measures[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measures[name]())
    return {name: Stats.of(values) for name, values in samples.items()}


def ratio(ours: Stats, theirs: Stats) -> float:
    """``ours.median / theirs.median``: below 1 means ours takes less (time or memory)."""
    return ours.median / theirs.median


DISAGREE = 0.10  # a figure whose runs differ by more than this (relative to the smaller) is flagged
FLAG = "⚠"


def disagreement(values: Sequence[float]) -> float:
    """How far apart one figure's runs are: ``(max - min) / min`` (0 for a single run)."""
    low, high = min(values), max(values)
    if high == low:
        return 0.0
    return (high - low) / low if low > 0 else float("inf")


def fmt_runs(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """One figure's value in each run: ``'7.2 ms / 7.41 ms'``, ending in ``' ⚠'`` when they disagree by
    more than :data:`DISAGREE`."""
    text = " / ".join(fmt(v) for v in values)
    return f"{text} {FLAG}" if disagreement(values) > DISAGREE else text


# -- formatting ------------------------------------------------------------------------------------
def fmt_seconds(seconds: float) -> str:
    """``0.0072 -> '7.20 ms'``, ``12.3 -> '12.3 s'``."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_rate(per_second: float) -> str:
    """``65800 -> '65.8k'``."""
    if per_second >= 1e3:
        return f"{per_second / 1e3:.3g}k"
    return f"{per_second:.3g}"


def fmt_time_stats(s: Stats) -> str:
    """``'7.20 ms (7.1–7.5)'``: median, then min–max in the median's unit."""
    text = fmt_seconds(s.median)
    unit = text.split()[1]
    scale = {"s": 1.0, "ms": 1e3, "µs": 1e6}[unit]
    return f"{text} ({s.low * scale:.3g}–{s.high * scale:.3g})"


def fmt_rate_stats(s: Stats, items: int) -> str:
    """Throughput of ``items`` per run whose times are ``s``: ``'65.8k/s (64.1k–66.0k)'``."""
    return f"{fmt_rate(items / s.median)}/s ({fmt_rate(items / s.high)}–{fmt_rate(items / s.low)})"


def fmt_mib(kib: float) -> str:
    """``163840 -> '160 MiB'``, ``1536 -> '1.5 MiB'``."""
    mib = kib / 1024
    return f"{mib:.0f} MiB" if abs(mib) >= 100 else f"{mib:.3g} MiB"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header column."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, header has {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def publish(text: str, docs: Path, marker: str, no_write: bool) -> None:
    """Print a report and, unless ``no_write``, put it between ``marker``'s comments in ``docs``."""
    print("\n" + text)
    if not no_write:
        write_between_markers(docs, marker, text)
        print(f"\nwritten into {docs}")


def write_between_markers(path: Path, name: str, content: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``.

    When the file or the markers are missing they are appended, so a rerun replaces rather than adds.
    """
    start, end = markers(name)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{content.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i < 0 and j < 0:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    elif i < 0 or j < i:
        raise ValueError(f"{path}: markers {start!r} and {end!r} are unpaired or out of order")
    else:
        text = text[:i] + block + text[j + len(end) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# -- memory (Linux: /proc/self/status) ------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_kib() -> int:
    """Resident set size of this process now, KiB."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size of this process since start or since :func:`reset_peak_rss`, KiB."""
    return _status_kib("VmHWM")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")


# -- machine facts ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_line() -> str:
    """``'AMD EPYC, 2 usable cores (2 logical), Linux 6.1, Python 3.11.9'``."""
    return (
        f"{cpu_model()}, {usable_cores()} usable cores ({os.cpu_count()} logical), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def load_average() -> str:
    """The 1-minute load average against the usable cores: ``'0.12 on 2 cores'`` (other work skews timings)."""
    return f"{os.getloadavg()[0]:.2f} on {usable_cores()} cores"


def _cpu_seconds() -> tuple[float, float, float]:
    """(machine busy, machine total, this process's and its waited-for children's) CPU seconds so far."""
    with open("/proc/stat", encoding="ascii") as stat:
        jiffies = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    total, idle = sum(jiffies), jiffies[3] + jiffies[4]
    t = os.times()
    return (total - idle) / hz, total / hz, t.user + t.system + t.children_user + t.children_system


class OtherWork:
    """How much of the machine's CPU other processes (and other VMs, via steal time) took since creation.

    Linux only (``/proc/stat``); elsewhere :meth:`share` is None. Timings are only as good as this is small.
    """

    def __init__(self) -> None:
        self._start = _cpu_seconds() if Path("/proc/stat").exists() else None

    def share(self) -> float | None:
        """Fraction of all cores' time used by others since creation (0 on an otherwise idle machine)."""
        if self._start is None:
            return None
        busy, total, ours = (now - then for now, then in zip(_cpu_seconds(), self._start, strict=True))
        return max(0.0, busy - ours) / total if total > 0 else 0.0

    def describe(self) -> str:
        """``'3 % of the CPU went to other work during the run.'`` plus a warning when that is over 10 %."""
        share = self.share()
        if share is None:
            return "other work on the machine was not measured (no /proc/stat)."
        text = f"{100 * share:.0f} % of the CPU went to other work during the run."
        if share > 0.10:
            text += (" **Warning: the machine was busy; timings are pessimistic and noisy, multi-threaded ones "
                     "most (a thread pool that waits for a descheduled thread stalls): rerun on an idle machine.**")
        return text


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def versions(modules: Mapping[str, object]) -> str:
    """``{'numpy': numpy_module, ...} -> 'numpy 2.4.6, torch 2.13.0'`` (modules without ``__version__`` skipped)."""
    return ", ".join(f"{name} {mod.__version__}" for name, mod in modules.items() if hasattr(mod, "__version__"))
