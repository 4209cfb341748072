"""The backend seam: name resolution, clear errors, identical host-drawn parameters, transfers."""

from __future__ import annotations

import numpy as np
import pytest

from arraycnn import backend


def test_known_backends_resolve():
    assert backend.backend_name(backend.get_namespace("numpy")) == "numpy"
    assert backend.backend_name(backend.get_namespace("array_api_strict")) == "array_api_strict"
    import array_api_strict

    assert backend.get_namespace(array_api_strict) is backend.get_namespace("array_api_strict")
    assert backend.get_namespace(np) is backend.get_namespace("numpy")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'tensorflowish'.*numpy, cupy, array_api_strict"):
        backend.get_namespace("tensorflowish")
    with pytest.raises(ValueError, match="is not an Array API library"):
        backend.get_namespace("json")
    with pytest.raises(TypeError, match="backend must be a name"):
        backend.get_namespace(3)


@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a CUDA device")
def test_cupy_without_a_device_says_so():
    with pytest.raises(backend.BackendUnavailableError, match="backend 'cupy' needs"):
        backend.get_namespace("cupy")


def test_dtypes(xp):
    assert backend.resolve_dtype(xp) == xp.float32
    assert backend.resolve_dtype(xp, "float64") == xp.float64
    assert backend.resolve_dtype(xp, xp.float64) == xp.float64
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\)"):
        backend.resolve_dtype(xp, "float16")


def test_parameters_are_identical_on_every_backend(xp):
    """Drawn once on the host from the seed, then moved: the device gets exactly the host's numbers."""
    reference = backend.random_normal(backend.host_rng(7), (3, 4), 0.1, backend.get_namespace("numpy"))
    on_xp = backend.random_normal(backend.host_rng(7), (3, 4), 0.1, xp)
    assert on_xp.dtype == xp.float32
    np.testing.assert_array_equal(backend.to_numpy(on_xp), backend.to_numpy(reference))


def test_to_device_and_back(xp, dtype):
    host = np.arange(12, dtype=np.uint8).reshape(3, 4)
    dev = backend.to_device(host, xp, dtype)
    back = backend.to_numpy(dev)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host.astype(dtype))
    np.testing.assert_array_equal(backend.to_numpy(backend.to_device(host, xp)), host)
