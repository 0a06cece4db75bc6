"""Shared fixtures: every namespace test runs on NumPy, array-api-strict, and CuPy when a GPU is visible."""

import numpy as np
import pytest

import gpunet as gn


def _cuda_param():
    ok, why = gn.cuda_available()
    marks = [pytest.mark.gpu] + ([] if ok else [pytest.mark.skip(reason=f"no usable GPU: {why}")])
    return pytest.param("cuda", marks=marks, id="cupy")


def _strict_param():
    try:
        import array_api_strict
    except ImportError:
        return pytest.param(None, marks=pytest.mark.skip(reason="array_api_strict is not installed"),
                            id="array_api_strict")
    return pytest.param(array_api_strict, id="array_api_strict")


DEVICES = [pytest.param("cpu", id="numpy"), _strict_param(), _cuda_param()]


@pytest.fixture(params=DEVICES)
def device(request):
    """A value for ``Sequential(device=...)``: "cpu", the array_api_strict module, or "cuda"."""
    return request.param


@pytest.fixture
def backend(device):
    return gn.get_backend(device)


@pytest.fixture
def to_xp(backend):
    """``to_xp(host_array, dtype="float64")`` -> an array of the fixture's namespace."""

    def convert(a, dtype="float64"):
        return backend.from_host(np.asarray(a), dtype)

    return convert


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
