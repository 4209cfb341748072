"""arraycnn.testing: assert_matches_engine passes the engine's own ops and catches planted learner bugs."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

import arraycnn
from arraycnn import functional as F
from arraycnn import testing
from arraycnn.testing import EngineMismatchError, assert_matches_engine, tie_free_array, tied_array

ENGINE_PAIRS = {op: (getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward")) for op in testing.OPS}
# a worst-entry line of the report: an index tuple then yours, engine, difference
WORST_ENTRY = re.compile(r"^ {4}\((\d+(?:, \d+)*)\)\s+(\S+)\s+(\S+)\s+(\S+)$", re.MULTILINE)


@pytest.mark.parametrize("op", testing.OPS)
def test_engine_matches_itself(op):
    assert_matches_engine(*ENGINE_PAIRS[op], op, max_examples=15, seed=0)


@pytest.mark.parametrize("op", ["conv2d", "maxpool2d", "avgpool2d"])
def test_square_passes_ints_equal_on_both_axes(op):
    seen = []

    def forward(x, *args, **kwargs):
        seen.append((args, kwargs))
        return ENGINE_PAIRS[op][0](x, *args, **kwargs)

    assert_matches_engine(forward, ENGINE_PAIRS[op][1], op, max_examples=10, square=True, seed=1)
    hyper = [v for args, kwargs in seen for v in (*args, *kwargs.values()) if not hasattr(v, "shape")]
    assert hyper and all(isinstance(v, int) for v in hyper)


def test_other_backend():
    assert_matches_engine(*ENGINE_PAIRS["conv2d"], "conv2d", backend="array_api_strict", max_examples=5, seed=2)


# --------------------------------------------------------------------------- planted bugs


def transposed_dw_backward(dy, cache):
    """The docstring's bug: dW = dYᵀ P right, but read back with its two spatial axes swapped."""
    dx, dw, db = F.conv2d_backward(dy, cache)
    k, kh, kw, c = dw.shape
    return dx, np.reshape(dw, (k, kw, kh, c)).transpose(0, 2, 1, 3), db


def test_catches_transposed_dw_and_says_where():
    with pytest.raises(EngineMismatchError) as info:
        assert_matches_engine(F.conv2d_forward, transposed_dw_backward, "conv2d", max_examples=30, seed=0)
    report = str(info.value)
    assert "configuration: x (" in report and "stride=" in report and "padding=" in report
    assert "\n  dw: " in report
    for other in ("y", "dx", "db"):   # only the broken gradient is listed
        assert f"\n  {other}: " not in report
    assert WORST_ENTRY.search(report), report
    # the worst entries come in transposed pairs: yours at (k, i, j, c) is the engine's at (k, j, i, c)
    rows = {tuple(map(int, m[1].split(", "))): (m[2], m[3]) for m in WORST_ENTRY.finditer(report)}
    pairs = [(idx, (idx[0], idx[2], idx[1], idx[3])) for idx in rows if (idx[0], idx[2], idx[1], idx[3]) in rows]
    assert pairs, report
    for idx, swapped in pairs:
        assert rows[idx] == rows[swapped][::-1]


def test_the_docstring_example_raises():
    """The module docstring's example, run as written: the planted dw bug is reported."""
    example = testing.__doc__.split("swapped::")[1].split("\nraises,")[0]
    with pytest.raises(EngineMismatchError, match="\n  dw: "):
        exec(textwrap.dedent(example), {})


def off_by_one_padding_forward(x, w, b, stride, padding):
    """Pads one row and column too many at the bottom/right (``(p, p + 1)`` instead of ``(p, p)``)."""
    (ph, pw) = padding
    xpad = np.pad(x, ((0, 0), (ph, ph + 1), (pw, pw + 1), (0, 0)))
    return F.conv2d_forward(xpad, w, b, stride=stride, padding=0)


def test_catches_padding_off_by_one():
    with pytest.raises(EngineMismatchError) as info:
        assert_matches_engine(off_by_one_padding_forward, F.conv2d_backward, "conv2d", max_examples=30, seed=0)
    report = str(info.value)
    assert re.search(r"\n  y: yours has shape \(\d+, \d+, \d+, \d+\), the engine's \(\d+, \d+, \d+, \d+\)", report)
    assert "backward not compared" in report


def _window_slice(i, j, oh, ow, stride):
    sh, sw = stride
    return (slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw), slice(None))


def learner_maxpool_forward(x, size, stride, padding):
    """A learner's own NumPy max pooling (loops over window offsets only)."""
    (kh, kw), (ph, pw) = size, padding
    xpad = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=-np.inf)
    oh, ow = (xpad.shape[1] - kh) // stride[0] + 1, (xpad.shape[2] - kw) // stride[1] + 1
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    y = np.max([xpad[_window_slice(i, j, oh, ow, stride)] for i, j in offsets], axis=0)
    return y, (xpad, y, offsets, stride, padding, x.shape)


def learner_maxpool_backward(dy, cache, last_max=False):
    """Routes each window's gradient to its first maximum, or (the planted bug) to its last."""
    xpad, y, offsets, stride, (ph, pw), (_, h, w, _) = cache
    dxpad = np.zeros_like(xpad)
    unclaimed = np.ones(y.shape, dtype=bool)
    for i, j in (reversed(offsets) if last_max else offsets):
        view = _window_slice(i, j, y.shape[1], y.shape[2], stride)
        hit = (xpad[view] == y) & unclaimed
        unclaimed &= ~hit
        dxpad[view] += dy * hit
    return dxpad[:, ph:ph + h, pw:pw + w, :]


def last_max_backward(dy, cache):
    return learner_maxpool_backward(dy, cache, last_max=True)


def test_learner_maxpool_with_first_max_routing_passes():
    assert_matches_engine(learner_maxpool_forward, learner_maxpool_backward, "maxpool2d", max_examples=30, seed=0)


def test_catches_last_max_routing():
    with pytest.raises(EngineMismatchError) as info:
        assert_matches_engine(learner_maxpool_forward, last_max_backward, "maxpool2d", max_examples=30, seed=0)
    report = str(info.value)
    assert "\n  dx: " in report and "\n  y: " not in report
    assert "tied maxima" in report and "FIRST maximum" in report
    assert WORST_ENTRY.search(report), report


def test_last_max_routing_is_invisible_without_ties():
    """On tie-free inputs every window has one maximum, so the tie rule cannot matter."""
    assert_matches_engine(learner_maxpool_forward, last_max_backward, "maxpool2d", max_examples=20, ties=False,
                          seed=0)


def test_catches_softmax_ce_that_ignores_dloss():
    def backward(dloss, cache):
        return F.softmax_cross_entropy_backward(1.0, cache)

    with pytest.raises(EngineMismatchError, match=r"dloss=.*\n  dlogits: "):
        assert_matches_engine(F.softmax_cross_entropy_forward, backward, "softmax_cross_entropy", max_examples=20,
                              seed=0)


def test_reports_learner_exceptions_and_wrong_structure():
    def raising(x):
        raise RuntimeError("not written yet")

    with pytest.raises(EngineMismatchError, match=r"forward raised RuntimeError: not written yet\n  configuration"):
        assert_matches_engine(raising, F.relu_backward, "relu", max_examples=5)
    with pytest.raises(EngineMismatchError, match=r"must return \(output, cache\)"):
        assert_matches_engine(lambda x: np.maximum(x, 0), F.relu_backward, "relu", max_examples=5)
    with pytest.raises(EngineMismatchError, match=r"returned 2 gradient\(s\), the engine's returns 3"):
        assert_matches_engine(F.dense_forward, lambda dy, c: F.dense_backward(dy, c)[:2], "dense", max_examples=5)


def test_nan_counts_as_a_difference():
    with pytest.raises(EngineMismatchError, match=r"\n  dx: .* differ"):
        assert_matches_engine(F.relu_forward, lambda dy, mask: dy * np.nan, "relu", max_examples=5)


def test_bad_arguments():
    relu = ENGINE_PAIRS["relu"]
    with pytest.raises(ValueError, match="op must be one of"):
        assert_matches_engine(*relu, "conv3d")
    with pytest.raises(TypeError, match="callables"):
        assert_matches_engine(None, relu[1], "relu")
    with pytest.raises(ValueError, match="max_examples must be >= 1"):
        assert_matches_engine(*relu, "relu", max_examples=0)
    with pytest.raises(ValueError, match="unknown backend"):
        assert_matches_engine(*relu, "relu", backend="no_such_backend")


# --------------------------------------------------------------------------- data makers and re-exports


def test_tied_and_tie_free_arrays():
    assert len(np.unique(tie_free_array(0, (2, 5, 5, 3)))) == 150
    t = tied_array(0, (2, 5, 5, 3))
    assert t.dtype == np.float64 and set(np.unique(t)) <= {0.0, 1.0, 2.0}


def test_gradcheck_is_reexported():
    assert testing.gradcheck is arraycnn.gradcheck
    assert testing.GradcheckError is arraycnn.GradcheckError
