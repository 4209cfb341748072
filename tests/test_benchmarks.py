"""Smoke tests of the benchmark machinery (benchmarks/): statistics, alternation, tables, markers, a tiny run.

Nothing here asserts a timing: the machine is shared and timings vary. PyTorch parts skip without torch;
TensorFlow engines are not built here (importing TensorFlow alone takes longer than this whole file).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import accuracy, common, cpu, opcount, peers, profile_ops

ROOT = Path(__file__).resolve().parent.parent

LINUX_PROC = Path("/proc/self/status").exists()


# -- common -----------------------------------------------------------------------------------------------
def test_stats_median_and_range():
    s = common.Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.runs) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError, match="samples"):
        common.Stats.of([])


def test_alternate_warms_up_then_rotates_the_order():
    calls: list[str] = []

    def measure(name: str, value: float):
        def run() -> float:
            calls.append(name)
            return value
        return run

    stats = common.alternate({"a": measure("a", 1.0), "b": measure("b", 2.0), "c": measure("c", 3.0)},
                             repeats=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, discarded
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one later
    assert {n: (s.median, s.runs) for n, s in stats.items()} == {"a": (1.0, 3), "b": (2.0, 3), "c": (3.0, 3)}
    assert common.ratio(stats["a"], stats["b"]) == 0.5
    with pytest.raises(ValueError, match="repeats"):
        common.alternate({"a": measure("a", 1.0)}, repeats=0)


def test_seconds_per_call_divides_by_calls_and_syncs_once():
    counts = {"fn": 0, "sync": 0}
    seconds = common.seconds_per_call(lambda: counts.__setitem__("fn", counts["fn"] + 1), 5,
                                      lambda: counts.__setitem__("sync", counts["sync"] + 1))
    assert counts == {"fn": 5, "sync": 1} and seconds >= 0
    assert common.calls_for(0.01, 1.0) == 100 and common.calls_for(5.0, 1.0) == 1
    with pytest.raises(ValueError, match="calls"):
        common.seconds_per_call(lambda: None, 0)


def test_formatting():
    assert common.fmt_seconds(0.0072) == "7.2 ms" and common.fmt_seconds(12.3) == "12.3 s"
    assert common.fmt_time_stats(common.Stats(0.0072, 0.0071, 0.0075, 3)) == "7.2 ms (7.1–7.5)"
    assert common.fmt_rate_stats(common.Stats(0.5, 0.25, 1.0, 3), 1000) == "2k/s (1k–4k)"
    assert common.fmt_mib(163840) == "160 MiB" and common.fmt_mib(1536) == "1.5 MiB"


def test_runs_that_disagree_by_more_than_ten_percent_are_flagged():
    assert common.disagreement([2.0]) == 0.0 and common.disagreement([2.0, 2.0]) == 0.0
    assert common.disagreement([1.0, 1.25]) == pytest.approx(0.25) == common.disagreement([1.25, 1.0])
    assert common.fmt_runs([0.0072, 0.0075], common.fmt_seconds) == "7.2 ms / 7.5 ms"  # 4 %: agrees
    assert common.fmt_runs([0.0072, 0.0080], common.fmt_seconds) == f"7.2 ms / 8 ms {common.FLAG}"  # 11 %
    assert common.fmt_runs([1.0, 1.09], "{:.2f}".format) == "1.00 / 1.09"


def test_markdown_table_checks_row_width():
    assert common.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    with pytest.raises(ValueError, match="cells"):
        common.markdown_table(["a", "b"], [["1"]])


def test_write_between_markers_appends_then_replaces(tmp_path):
    doc = tmp_path / "docs" / "bench.md"
    common.write_between_markers(doc, "t", "first")
    doc.write_text("# Title\n\nprose before\n\n" + doc.read_text() + "\nprose after\n")
    common.write_between_markers(doc, "t", "second\n")
    common.write_between_markers(doc, "u", "other")
    text = doc.read_text()
    assert "first" not in text and text.count("second") == 1 and text.count("<!-- t:start -->") == 1
    assert text.index("prose before") < text.index("second") < text.index("prose after") < text.index("other")
    doc.write_text("<!-- t:end -->\n<!-- t:start -->\n")
    with pytest.raises(ValueError, match="unpaired or out of order"):
        common.write_between_markers(doc, "t", "x")


def test_pin_threads_rejects_bad_counts():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            common.pin_threads(bad)


@pytest.mark.skipif(not LINUX_PROC, reason="resident memory is read from Linux's /proc/self/status")
def test_peak_rss_resets_to_the_current_rss():
    block = np.ones(8 * 2**20 // 8)  # 8 MiB, touched
    del block
    common.reset_peak_rss()
    assert common.peak_rss_kib() <= common.rss_kib() + 1024


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="other work is read from Linux's /proc/stat")
def test_other_work_is_a_fraction_of_the_machine():
    others = common.OtherWork()
    sum(i * i for i in range(200_000))  # some CPU of our own, which must not count as other work
    share = others.share()
    assert share is not None and 0.0 <= share <= 1.0
    assert "% of the CPU went to other work during the run" in others.describe()


# -- cpu.py -----------------------------------------------------------------------------------------------
def test_quick_flags_and_validation():
    args = cpu.parse_args(["--quick"])
    assert (args.repeats, args.run_seconds, args.rss_steps, args.epoch, args.runs) == (3, 0.3, 300, False, 2)
    assert cpu.parse_args([]).repeats == 7
    for bad in (["--threads", "0"], ["--runs", "0"]):
        with pytest.raises(SystemExit):
            cpu.parse_args(bad)


def test_rss_summary_tells_flat_from_growing():
    steps = list(range(100, 1001, 100))
    flat = cpu.rss_summary({"steps": steps, "rss": [50_000 + (s % 200 == 0) for s in steps]})
    growing = cpu.rss_summary({"steps": steps, "rss": [50_000 + 4 * s for s in steps]})
    jitter = cpu.rss_summary({"steps": steps, "rss": [50_000, 50_000, 53_000, 50_100, 50_000, 49_900, 50_100,
                                                      50_000, 50_050, 52_500]})  # bumps, no trend
    assert flat["flat"] and jitter["flat"] and not growing["flat"]
    assert growing["kib_per_1000"] == pytest.approx(4000) and growing["first"] == 50_400


def test_memory_budget_counts_activations_and_the_largest_patches():
    per_image = (784 + 2 * 6760 + 5760 + 2 * 4840 + 4000 + 110) + 22 * 22 * 90
    assert cpu.memory_budget_kib(256) == pytest.approx(256 * per_image * 4 / 1024)


def fake_results(names: list[str], second_run_arraycnn: float = 0.0105) -> dict:
    """Two runs: every engine i takes 10 (i + 1) ms in both, except arraycnn's training step in run 2."""
    def run(arraycnn_step: float) -> dict:
        t = {n: common.Stats(0.01 * (i + 1), 0.009 * (i + 1), 0.011 * (i + 1), 3) for i, n in enumerate(names)}
        steps = t | {"arraycnn": common.Stats(arraycnn_step, arraycnn_step, arraycnn_step, 3)}
        return {"steps": {64: steps}, "inference": t}

    return {"inference_batch": 1000, "memory_batch": 256, "inference_images": 10_000,
            "runs": [run(0.01), run(second_run_arraycnn)],
            "memory": {n: {"setup": 100_000, "train_peak": 150_000 + 1000 * i, "infer_peak": 160_000}
                       for i, n in enumerate(names)},
            "rss": {"steps": 1000, "first": 60_000, "last": 60_100, "max": 60_200, "kib_per_1000": 90.0,
                    "flat": True}}


META_KEYS = ("date", "machine", "cpu", "ops", "load", "versions", "threads", "data", "timing", "others")


def test_report_shows_both_runs_every_engine_and_the_ratios():
    names = ["arraycnn", "torch-nchw", "tf-graph"]
    meta = {k: k for k in META_KEYS} | {"rss_batch": "64", "cpu": "AMD EPYC 9B14"}
    text = cpu.report(names, fake_results(names), meta)
    assert "CPU: AMD EPYC 9B14." in text and "| figure (median of run 1 / run 2) |" in text
    assert "| training step, batch 64 | 10 ms / 10.5 ms | 20 ms / 20 ms | 30 ms / 30 ms |" in text
    assert "| training step, batch 64 | 0.50 / 0.53 | 0.33 / 0.35 |" in text  # arraycnn / each peer, per run
    assert "| inference, 10,000 images at batch 1000 (images/s) | 1e+03k/s / 1e+03k/s |" in text
    assert "Every timed figure agrees within 10 % between the 2 runs." in text and "flat" in text
    assert "peak RSS above setup, training at batch 256 | 0.98 | 0.96 |" in text


def test_report_flags_a_figure_whose_runs_disagree():
    names = ["arraycnn", "torch-cl"]
    meta = {k: k for k in META_KEYS} | {"rss_batch": "64"}
    text = cpu.report(names, fake_results(names, second_run_arraycnn=0.0125), meta)
    assert f"| training step, batch 64 | 10 ms / 12.5 ms {common.FLAG} | 20 ms / 20 ms |" in text
    assert f"| training step, batch 64 | 0.50 / 0.62 {common.FLAG} |" in text
    assert (f"{common.FLAG} Runs that disagree by more than 10 %: training step, batch 64, arraycnn (NumPy): "
            "10 ms vs 12.5 ms (25 %).") in text


# -- opcount.py ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_counting_namespace_counts_each_kind_of_op(backend):
    from arraycnn.backend import to_numpy

    ns = opcount.counting_namespace(backend)
    with ns.counter.recording() as ops:
        x = ns.asarray([1.0, 2.0, 3.0])       # transfer in
        y = 2.0 * x + 1.0                     # 2 kernels
        held = y
        y += 1.0                              # 1 kernel, in place: the same object
        y[0:1] = x[1:2]                       # 1 kernel (setitem), 1 view (the slice of x)
        z = ns.reshape(ns.sum(y, keepdims=True), (1, 1))   # 1 kernel, 1 view
        total = float(z[0, 0])                # 1 view, 1 host read
        host = to_numpy(y)                    # 1 host read
    assert held is y and isinstance(y, opcount.Counted) and total == 16.0
    np.testing.assert_array_equal(host, [2.0, 6.0, 8.0])
    assert ops.totals() == {"kernel": 5, "view": 3, "host read": 2, "transfer in": 1}
    assert ops.by("op") == {"__rmul__": 1, "__add__": 1, "__iadd__": 1, "__setitem__": 1, "sum": 1}
    assert ns.float32 is ns.inner.float32 and ns.finfo(ns.float32).eps > 0  # dtypes and info pass through


def test_adam_issues_one_set_of_ops_for_all_parameters():
    """Adam's kernel ops per step no longer grow with the number of tensors (8 here): 12 element-wise ops
    over the flat buffer, plus the gradients' concatenation, plus (unless the parameters were adopted as
    views of the flat buffer) the parameters' gather and one scatter per tensor."""
    plain, adopted = opcount.count_train_step("numpy"), opcount.count_train_step("numpy", adopt=True)
    tensors = 8
    assert plain.piece_table()["optimizer"]["kernel"] == 12 + 2 + tensors  # it was 12 * tensors = 96
    assert adopted.piece_table()["optimizer"]["kernel"] == 12 + 1
    assert plain.totals()["kernel"] - adopted.totals()["kernel"] == 1 + tensors
    assert plain.totals()["host read"] == 0  # a training step never waits on the device
    pieces = plain.piece_table()
    assert [p for p in pieces if p.endswith("forward") and p[0].isdigit()] == [
        "0 Conv2D forward", "1 ReLU forward", "2 MaxPool2D forward", "3 Conv2D forward", "4 ReLU forward",
        "5 MaxPool2D forward", "6 Flatten forward", "7 Dense forward", "8 ReLU forward", "9 Dense forward"]
    assert sum(row["kernel"] for row in pieces.values()) == plain.totals()["kernel"]
    assert sum(plain.by("function").values()) == plain.totals()["kernel"]


def test_strict_counts_as_numpy_without_views():
    """array-api-strict gives the same count as NumPy (one portable path), but adopt() cannot hand out views."""
    strict = opcount.count_train_step("array_api_strict", batch_size=4, adopt=True)
    assert strict.totals() == opcount.count_train_step("numpy", batch_size=4).totals()


def test_evaluate_reads_back_one_array_per_batch():
    ops = opcount.count_evaluate("numpy", images=12, batch_size=4)
    assert ops.totals()["host read"] == 3


def test_fit_reads_back_only_at_progress_points_and_in_evaluate():
    ops = opcount.count_fit("numpy", batches=10, batch_size=4)
    reads = ops.by("function", "host read")
    assert set(reads) == {"train._read_sums", "model.Sequential.evaluate"} and reads["model.Sequential.evaluate"] == 1
    assert reads["train._read_sums"] == 5  # one array (loss sum and count) at each of 4 progress points and the end


def test_opcount_report(tmp_path):
    doc = tmp_path / "bench.md"
    assert opcount.main(["--batch-size", "4", "--docs", str(doc)]) == 0
    text = doc.read_text()
    assert "| piece of one training step | kernel ops | views | host reads |" in text
    assert "| optimizer | 22 |" in text and "train_step at batch 4: " in text and "(optimizer 13)" in text
    assert "`evaluate`: 2 host reads for 2 batches (1 per batch)." in text and "`train._read_sums` 5" in text


# -- profile_ops.py and accuracy.py -----------------------------------------------------------------------
def test_profile_groups_pieces_by_layer_type():
    medians = {"0 Conv2D 28x28x1→26x26x10 forward": 2.0, "3 Conv2D 24x24x10→22x22x10 forward": 1.0,
               "2 MaxPool2D 26x26x10→24x24x10 backward": 4.0,
               "Adam.step": 0.5, profile_ops.TOTAL: 7.5, profile_ops.WHOLE: 8.0}
    assert profile_ops.by_kind(medians) == {"MaxPool2D backward": 4.0, "Conv2D forward": 3.0, "Adam.step": 0.5}
    text = profile_ops.table({64: medians}, "piece")
    assert "| 2 MaxPool2D 26x26x10→24x24x10 backward | 4000.000 ms (53 %) |" in text
    assert f"| {profile_ops.WHOLE} | 8000.000 ms |" in text


def test_profile_pieces_cover_one_training_step():
    from arraycnn import data, models, optim
    from arraycnn.backend import get_namespace

    xp = get_namespace("numpy")
    model = models.tutorial_cnn(seed=0)
    images, labels = peers.synthetic_data(2)
    before = [np.array(p) for p in model.parameters()]
    pieces = profile_ops.step_pieces(model, optim.Adam(), data.to_float_images(images, xp), data.to_labels(labels, xp))
    assert len(pieces) == 2 * len(model.layers) + 3 and all(t >= 0 for t in pieces.values())
    assert "0 Conv2D 28x28x1→26x26x10 forward" in pieces and "6 Flatten 20x20x10→4000 backward" in pieces
    assert all(not np.array_equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # Adam stepped


def saved_runs() -> dict:
    config = {"data": "d", "epochs": 2, "batch_size": 64, "lr": 1e-3, "adam_eps": 1e-7, "dtype": "float32"}
    runs = {f"{name}/{seed}": {"test_accuracy": [a, a + 0.01], "seconds": [10.0, 12.0]}
            for name, base in (("arraycnn", 0.85), ("torch-nchw", 0.84)) for seed, a in
            enumerate([base, base + 0.002, base - 0.002])}
    return {"config": config, "runs": runs}


def test_accuracy_table_medians_and_gap():
    text = accuracy.table(saved_runs())
    assert "| arraycnn (NumPy) | 0, 1, 2 | 85.00 % (84.80–85.20) | 86.00 % (85.80–86.20) |" in text
    assert "PyTorch +1.00" in text


def test_accuracy_results_resume_and_refuse_another_config(tmp_path):
    path = tmp_path / "acc.json"
    saved = saved_runs()
    assert accuracy.load_runs(path, saved["config"]) == {"config": saved["config"], "runs": {}}
    accuracy.save_runs(path, saved)
    assert accuracy.load_runs(path, saved["config"]) == saved
    with pytest.raises(ValueError, match="another configuration"):
        accuracy.load_runs(path, {**saved["config"], "epochs": 3})


# -- the engines and a tiny end-to-end run ------------------------------------------------------------------
def check_engine(engine: peers.Engine) -> None:
    images, labels = peers.synthetic_data(4)
    b = engine.batch(images, labels)
    losses = [float(engine.train_step(b)) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # Adam on one batch lowers its loss
    logits = engine.predict(b)
    assert isinstance(logits, np.ndarray) and logits.shape == (4, 10)
    assert 0.0 <= peers.accuracy(engine, images, labels, batch_size=3) <= 1.0


def test_arraycnn_engine_trains_and_predicts():
    check_engine(peers.ENGINES["arraycnn"].make(seed=0))


@pytest.mark.parametrize("name", ["torch-nchw", "torch-cl"])
def test_torch_engines_train_and_predict(name):
    pytest.importorskip("torch")
    check_engine(peers.ENGINES[name].make(seed=0, threads=1))


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="unknown engines"):
        peers.available_engines(["arraycnn", "jax"])


def test_tiny_cpu_run_writes_its_table(tmp_path):
    doc = tmp_path / "benchmarks.md"
    cmd = [sys.executable, "-m", "benchmarks.cpu", "--engines", "arraycnn", "--batch-sizes", "2", "--repeats", "1",
           "--run-seconds", "0.001", "--inference-images", "4", "--inference-batch", "2", "--memory-batch", "2",
           "--memory-steps", "1", "--rss-steps", "3", "--rss-batch", "2", "--synthetic", "--threads", "1",
           "--docs", str(doc)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = doc.read_text()
    assert text.startswith("<!-- cpu-table:start -->") and text.rstrip().endswith("<!-- cpu-table:end -->")
    for row in ("| training step, batch 2 |", "| inference, 4 images at batch 2 (images/s) |",
                "| peak RSS above setup, training at batch 2 |", "resident memory over 3 training steps",
                f"CPU: {common.cpu_model()}", "Array ops (arraycnn, train_step at batch 32: "):
        assert row in text
    assert text.count(" / ") >= 2  # each timed figure shows two runs


def test_gpu_script_dry_run_on_the_cpu(tmp_path, monkeypatch):
    from benchmarks import gpu

    monkeypatch.setenv("CUPY_TF32", "0")  # set_precision writes it; the test leaves the environment as it was
    out = tmp_path / "gpu.md"
    args = gpu.parse_args(["--dry-run", "--no-epoch", "--out", str(out), "--tests", "cupy: 1 passed"])
    assert args.batch_sizes == [4, 8] and args.precision == "fp32"
    assert gpu.main(["--dry-run", "--no-epoch", "--out", str(out), "--tests", "cupy: 1 passed"]) == 0
    text = out.read_text()
    assert "DRY RUN" in text and "Tests: cupy: 1 passed" in text and "| training step, batch 8 (images/s) |" in text
    assert "Precision: full FP32 matrix products and convolutions in both engines: CUPY_TF32=0" in text
    assert "Kernel compilation, apart from the step times: " in text and "first train_step" in text
    assert "Parity, NumPy against the device from the same start: 11 of 11 checks within their bounds." in text
    assert "Array ops: train_step at batch 32: " in text
    doc = tmp_path / "doc.md"
    gpu.main(["--insert-table", str(out), "--docs", str(doc)])
    assert "<!-- gpu-table:start -->" in doc.read_text()


def test_gpu_parity_checks_and_precision_guard(monkeypatch):
    from benchmarks import gpu

    assert gpu.Check("x", 1e-5, 2e-4).ok and not gpu.Check("x", 3e-4, 2e-4).ok
    assert not gpu.Check("x", float("nan"), 2e-4).ok  # a NaN never passes
    assert gpu.Check("loss", 3e-4, 2e-4).line() == "FAIL loss: 0.0003 (bound 0.0002)"
    monkeypatch.setenv("CUPY_TF32", "0")
    monkeypatch.setitem(sys.modules, "cupy", object())  # CuPy already imported: too late to change its mode
    with pytest.raises(RuntimeError, match="CUPY_TF32"):
        gpu.set_precision("tf32", dry_run=True)


def test_gpu_shell_script_fits_a_short_loan():
    """Every stage of gpu.sh runs under a timeout, ~6 minutes in all; no -x on the cupy tests; the benchmark
    starts from an empty kernel cache; no CPU-only test stage."""
    script = (ROOT / "benchmarks" / "gpu.sh").read_text()
    limits = [int(n) for n in re.findall(r"\btimeout (\d+) ", script)]
    assert len(limits) == 6 and sum(limits) <= 360, limits
    pytest_lines = [line for line in script.splitlines() if "-m pytest" in line]
    assert len(pytest_lines) == 1 and " -x" not in pytest_lines[0] and "-k cupy" in pytest_lines[0]
    assert 'CUPY_CACHE_DIR="$WORK/kernels-empty"' in script and "--resume" in script and "--save" in script


@pytest.mark.slow
def test_gpu_shell_script_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "GPU_TESTS": "tests/test_optim.py", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    table = (tmp_path / "gpu-table.md").read_text()
    assert "Tests: mnist.py save and resume: passed: epoch 2/2" in table and "Tests: cupy tests: " in table
    assert "11 of 11 checks" in table
    assert {p.name for p in tmp_path.iterdir()} == {"gpu-table.md", "gpu-bench.log", "mnist.log", "pytest-cupy.log"}


def test_gpu_shell_script_parses():
    for script in ("gpu.sh", "fetch_gpu_wheels.sh"):
        proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
