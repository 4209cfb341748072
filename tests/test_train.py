"""fit: determinism, exact resume, checkpoints every epoch, NaN and Ctrl-C handling, progress, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import epoch_figures

from arraycnn import backend, data
from arraycnn.checkpoint import read_npz
from arraycnn.models import tutorial_cnn
from arraycnn.optim import SGD, Adam
from arraycnn.train import TrainingDivergedError, fit, format_epoch, load_training_state, save_training_state

BATCH = 16
KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second"}


@pytest.fixture(scope="module")
def tiny():
    """48 train / 24 test real digits: 3 batches of 16 per epoch."""
    return data.load_dataset("mnist", "bundled", train_size=48, test_size=24, log=None)


def run(ds, epochs, *, backend_name="numpy", seed=0, augment=True, **kwargs):
    """Train a fresh tutorial_cnn; returns (model, optimizer, history)."""
    model, opt = tutorial_cnn(backend_name, seed=seed), Adam()
    history = fit(model, ds, opt, epochs=epochs, batch_size=BATCH, seed=seed, augment=augment, progress=False,
                  log=lambda line: None, **kwargs)
    return model, opt, history


def test_history_records_and_log_lines(tiny):
    lines = []
    model, opt = tutorial_cnn(), Adam()
    history = fit(model, tiny, opt, epochs=2, batch_size=BATCH, seed=0, log=lines.append)
    assert [r["epoch"] for r in history] == [1, 2] and all(set(r) == KEYS for r in history)
    for r in history:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["seconds"] > 0
        assert r["images_per_second"] == pytest.approx(48 / r["seconds"])
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"])
    assert opt.t == 2 * 3
    # stdout is not a terminal under pytest: plain progress lines, then one summary line per epoch
    assert lines[0].startswith("  epoch 1/2  batch 1/3  loss ") and format_epoch(history[0], 2) in lines
    assert lines[-1] == format_epoch(history[1], 2)
    assert lines[-1].startswith("epoch 2/2  train loss ") and "img/s" in lines[-1]


def test_same_seed_same_losses_and_another_seed_differs(tiny):
    a, b, c = (epoch_figures(run(tiny, 2, seed=s)[2]) for s in (0, 0, 1))
    assert a == b
    assert a != c


def test_resume_equals_uninterrupted_bitwise(tiny, tmp_path):
    """Epochs 1..3 in one go == epoch 1, checkpoint, a NEW model and optimizer loading it, epochs 2..3."""
    straight_model, straight_opt, straight = run(tiny, 3)
    ck = tmp_path / "after1.npz"
    run(tiny, 1, checkpoint_path=ck, checkpoint_meta={"config": {"note": "x"}})
    model, opt = tutorial_cnn(seed=123), Adam(lr=0.5)  # other weights and lr: all must come from the file
    state = load_training_state(ck, model, opt)
    assert (state.epoch, state.seed, len(state.history)) == (1, 0, 1)
    assert state.meta["config"] == {"note": "x"} and state.meta["optimizer"] == "Adam" and opt.lr == 1e-3
    resumed = fit(model, tiny, opt, epochs=3, batch_size=BATCH, seed=state.seed, augment=True,
                  start_epoch=state.epoch, history=state.history, progress=False, log=lambda line: None)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert epoch_figures(resumed) == epoch_figures(straight)
    for (name, a), b in zip(straight_model.named_parameters(), model.parameters(), strict=True):
        np.testing.assert_array_equal(b, a, err_msg=name)
    for key, value in straight_opt.state_dict().items():
        np.testing.assert_array_equal(opt.state_dict()[key], value, err_msg=key)


def test_checkpoint_is_written_after_every_epoch(tiny, tmp_path):
    ck = tmp_path / "run.npz"
    epochs_seen = []
    model, opt, history = run(tiny, 2, checkpoint_path=ck,
                              on_epoch_end=lambda r: epochs_seen.append(read_npz(ck)[1]["epoch"]))
    assert epochs_seen == [1, 2]
    arrays, meta = read_npz(ck)
    assert meta["history"] == history and meta["seed"] == 0 and meta["dtype"] == "float32"
    assert {k for k in arrays if k.startswith("optim/")} == {f"optim/{k}" for k in opt.state_dict()}
    np.testing.assert_array_equal(arrays["param/7.w"], model.parameters()[4])


def test_load_training_state_refuses_wrong_files(tiny, tmp_path):
    model, opt = tutorial_cnn(), Adam()
    model.save(tmp_path / "params_only.npz")
    with pytest.raises(ValueError, match=r"params_only\.npz is not a training checkpoint"):
        load_training_state(tmp_path / "params_only.npz", model, opt)
    save_training_state(tmp_path / "adam.npz", model, opt, epoch=0, seed=0, history=[])
    before = model.parameters()[0].copy()
    with pytest.raises(ValueError, match=r"adam\.npz was trained with Adam, but the optimizer given is SGD"):
        load_training_state(tmp_path / "adam.npz", tutorial_cnn(seed=1), SGD(0.1))
    with pytest.raises(FileNotFoundError, match=r"nope\.npz does not exist"):
        load_training_state(tmp_path / "nope.npz", model, opt)
    np.testing.assert_array_equal(model.parameters()[0], before)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    ck = tmp_path / "run.npz"
    model, opt = tutorial_cnn(), Adam()
    lines = []

    def blow_up(record):
        opt.lr = 1e30  # epoch 2 then overflows float32 to inf/NaN
    with pytest.raises(TrainingDivergedError, match=r"loss is (nan|inf) in epoch 2/3") as info, \
            np.errstate(all="ignore"):
        fit(model, tiny, opt, epochs=3, batch_size=BATCH, seed=0, checkpoint_path=ck, on_epoch_end=blow_up,
            progress=False, log=lines.append)
    assert info.value.epoch == 2
    assert any("The last good state is kept: the state after epoch 1 is saved in" in line for line in lines)
    assert not all(np.isfinite(p).all() for p in model.parameters())
    arrays, meta = read_npz(ck)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert all(np.isfinite(v).all() for v in arrays.values())


def test_ctrl_c_saves_the_last_completed_epoch_and_resumes_exactly(tiny, tmp_path, monkeypatch):
    _, _, straight = run(tiny, 2)
    model, opt = tutorial_cnn(), Adam()
    calls = {"n": 0}
    real_step = model.execution.train_step

    def step_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the 2nd batch of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(model.execution, "train_step", step_then_interrupt)
    lines, ck = [], tmp_path / "interrupted.npz"
    with pytest.raises(KeyboardInterrupt):
        fit(model, tiny, opt, epochs=2, batch_size=BATCH, seed=0, augment=True, interrupt_path=ck, progress=False,
            log=lines.append)
    assert f"interrupted during epoch 2: the state after epoch 1 is saved in {ck}" in lines[-1]
    fresh, fresh_opt = tutorial_cnn(seed=9), Adam()
    state = load_training_state(ck, fresh, fresh_opt)
    assert state.epoch == 1
    resumed = fit(fresh, tiny, fresh_opt, epochs=2, batch_size=BATCH, seed=0, augment=True, start_epoch=1,
                  history=state.history, progress=False, log=lambda line: None)
    assert epoch_figures(resumed) == epoch_figures(straight)


def test_ctrl_c_in_the_first_epoch_saves_the_starting_state(tiny, tmp_path, monkeypatch):
    model, opt = tutorial_cnn(), Adam()
    start = [p.copy() for p in model.parameters()]
    monkeypatch.setattr(model.execution, "train_step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        fit(model, tiny, opt, epochs=2, batch_size=BATCH, seed=0, checkpoint_path=tmp_path / "c.npz",
            progress=False, log=lambda line: None)
    arrays, meta = read_npz(tmp_path / "c.npz")
    assert meta["epoch"] == 0
    for (name, _), p in zip(model.named_parameters(), start, strict=True):
        np.testing.assert_array_equal(arrays[f"param/{name}"], p)


def test_fit_arguments_are_checked(tiny):
    model, opt = tutorial_cnn(), Adam()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        fit(model, tiny, opt, epochs=1, batch_size=0, seed=0)
    with pytest.raises(TypeError, match="epochs must be an int"):
        fit(model, tiny, opt, epochs=1.5, batch_size=4, seed=0)
    lines = []
    assert fit(model, tiny, opt, epochs=2, batch_size=4, seed=0, start_epoch=2, history=[{"epoch": 1}],
               log=lines.append) == [{"epoch": 1}]
    assert "nothing to train" in lines[0] and opt.t == 0


def test_array_api_strict_runs_one_epoch_like_numpy(tiny):
    """Same init and batches; float32 rounding differs between the libraries' kernels, so 1e-4 relative
    (a few hundred float32 ulps accumulated over 3 steps) rather than bitwise."""
    strict_model, _, strict = run(tiny, 1, backend_name="array_api_strict")
    assert strict_model.xp is backend.get_namespace("array_api_strict")
    _, _, ref = run(tiny, 1)
    np.testing.assert_allclose(np.array(epoch_figures(strict)), np.array(epoch_figures(ref)), rtol=1e-4)


@pytest.mark.slow
def test_end_to_end_on_bundled_digits_beats_chance():
    """600 real digits, 3 epochs: seeds 0 and 1 reach 88-90 % on 200 held-out digits; chance is 10 %."""
    ds = data.load_dataset("mnist", "bundled", train_size=600, test_size=200, log=None)
    history = run(ds, 3, augment=False, seed=0)[2]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.75, history
