"""The public gradient checker: passes correct backwards, catches wrong ones with a readable report."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_xp

import arraycnn
from arraycnn.functional import conv2d_backward, conv2d_forward, relu_backward, relu_forward


def test_passes_a_correct_backward(xp):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 4, 2)), rng.standard_normal((3, 2, 2, 2))
    result = arraycnn.gradcheck(conv2d_forward, conv2d_backward,
                                {"x": to_xp(xp, x, "float32"), "w": to_xp(xp, w, "float32")},
                                kwargs={"stride": 2, "padding": 1})
    assert result.ok
    assert [r.name for r in result.inputs] == ["x", "w"]
    assert all(r.checked == r_size for r, r_size in zip(result.inputs, (x.size, w.size), strict=True))
    assert "passed" in str(result)


def test_reports_where_a_wrong_backward_is_wrong(xp):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 4, 4, 1)), rng.standard_normal((2, 3, 3, 1))

    def transposed_dw_backward(dy, cache):
        dx, dw, db = conv2d_backward(dy, cache)
        return dx, xp.flip(dw, axis=(1, 2)), db  # a classic bug: the kernel gradient flipped

    with pytest.raises(arraycnn.GradcheckError) as info:
        arraycnn.gradcheck(conv2d_forward, transposed_dw_backward,
                           {"x": to_xp(xp, x, "float64"), "w": to_xp(xp, w, "float64")})
    report = str(info.value)
    assert "FAILED" in report and "w: shape (2, 3, 3, 1)" in report and "MISMATCH" in report
    assert "x: shape (1, 4, 4, 1)" in report and "worst entries" in report

    result = arraycnn.gradcheck(conv2d_forward, transposed_dw_backward,
                                {"x": to_xp(xp, x, "float64"), "w": to_xp(xp, w, "float64")},
                                raise_on_failure=False)
    assert not result.ok
    by_name = {r.name: r for r in result.inputs}
    assert by_name["x"].ok and not by_name["w"].ok
    index, analytic, numeric = by_name["w"].worst[0]
    assert len(index) == 4 and abs(analytic - numeric) == pytest.approx(by_name["w"].max_abs_err)


def test_catches_a_relu_with_the_wrong_gradient_at_negative_inputs(xp):
    x = to_xp(xp, np.array([[-1.0, 2.0], [3.0, -4.0]]), "float64")

    def leaky_backward(dy, mask):
        return relu_backward(dy, mask) + 0.1 * dy

    assert arraycnn.gradcheck(relu_forward, relu_backward, {"x": x}).ok
    result = arraycnn.gradcheck(relu_forward, leaky_backward, {"x": x}, raise_on_failure=False)
    assert not result.ok and result.inputs[0].max_abs_err > 0.01


def test_samples_large_inputs():
    x = np.random.default_rng(2).standard_normal((4, 30, 30, 1))
    w = np.random.default_rng(3).standard_normal((1, 3, 3, 1))
    result = arraycnn.gradcheck(conv2d_forward, conv2d_backward, {"x": x, "w": w}, max_entries=50)
    assert result.inputs[0].checked == 50 and result.inputs[1].checked == w.size


def test_needs_an_array():
    with pytest.raises(ValueError, match="inputs must hold at least one array"):
        arraycnn.gradcheck(relu_forward, relu_backward, {"x": None})
