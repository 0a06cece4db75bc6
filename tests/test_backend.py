"""Device resolution, lazy CuPy import, and the kernel-source loader."""

import subprocess
import sys
import types

import numpy as np
import pytest

import gpunet as gn
from gpunet.backend import kernel_sources
from gpunet.backend import Backend, get_backend, on_device_of, to_numpy


def test_import_never_imports_cupy():
    code = "import sys, gpunet; gpunet.Sequential([gpunet.Dense(2, 1)]).fit([[0.0, 1.0]], [1.0]); " \
           "print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("spec, label", [("cpu", "cpu"), (" CPU ", "cpu"), (np, "cpu")])
def test_cpu_specs(spec, label):
    assert get_backend(spec).label == label
    assert get_backend(spec).is_numpy


def test_namespace_module_backend():
    strict = pytest.importorskip("array_api_strict")
    backend = get_backend(strict)
    assert backend.name == "array_api_strict"
    x = backend.from_host(np.arange(3.0), "float32")
    assert backend.owns(x) and not backend.owns(np.arange(3.0))
    np.testing.assert_array_equal(to_numpy(x), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("spec, error, match", [
    ("tpu", ValueError, "device must be 'cpu', 'cuda'"),
    ("cuda:x", ValueError, "cuda:N"),
    (3, TypeError, "device must be"),
])
def test_bad_device(spec, error, match):
    with pytest.raises(error, match=match):
        get_backend(spec)


def test_cuda_without_gpu_says_why():
    info = gn.cuda_info()
    if info["available"]:
        pytest.skip("a GPU is visible here")
    assert info["reason"]
    with pytest.raises(ValueError, match="not usable"):
        get_backend("cuda")
    assert get_backend("auto").label == "cpu"


def test_kernel_sources_found_and_inlined():
    files = kernel_sources.kernel_files()
    assert {"activations.cuh", "losses.cuh", "optimizers.cuh", "gpunet_common.cuh"} <= set(files)
    text = kernel_sources.kernel_source("activations.cuh")
    assert '#include "' not in text  # NVRTC gets no include path: local includes are inlined
    assert text.count("GN_FN T gn_sigmoid(") == 1  # the shared file is inlined once
    assert "gn_relu_fwd" in text and "#pragma once" not in text


# -- CuPy arrays on another GPU, with a stand-in for CuPy (no GPU needed) ----------------------------------------------
class _FakeGpus:
    """The parts of CuPy that Backend uses: ``cuda.Device(i)`` (a context setting the current GPU) and ``ndarray``."""

    def __init__(self):
        self.current = 0
        gpus = self

        class Device:
            def __init__(self, index):
                self.id = index

            def __enter__(self):
                self._previous, gpus.current = gpus.current, self.id
                return self

            def __exit__(self, *exc):
                gpus.current = self._previous

        class ndarray:  # noqa: N801 (CuPy's name)
            def __init__(self, data):  # lands on the current GPU, as CuPy's allocations do
                self.data, self.dtype, self.device = np.array(data), np.asarray(data).dtype, Device(gpus.current)

        self.cuda = types.SimpleNamespace(Device=Device)
        self.ndarray = ndarray
        # the namespace: like array-api-compat's CuPy, asarray copies an array of another GPU onto the current one
        self.xp = types.SimpleNamespace(
            float32=np.dtype("float32"), float64=np.dtype("float64"),
            asarray=lambda x: x if x.device.id == gpus.current else ndarray(x.data),
            astype=lambda x, dtype: ndarray(x.data.astype(dtype)))


@pytest.fixture
def fake_gpus(monkeypatch):
    gpus = _FakeGpus()
    module = types.ModuleType("cupy")
    module.cuda, module.ndarray = gpus.cuda, gpus.ndarray
    monkeypatch.setitem(sys.modules, "cupy", module)
    return gpus


def test_cupy_arrays_on_another_gpu_are_copied_to_the_backends(fake_gpus):
    backend = Backend(fake_gpus.xp, "cupy", cuda_index=0)
    with fake_gpus.cuda.Device(1):
        x = fake_gpus.ndarray(np.arange(3.0, dtype=np.float32))
    assert x.device.id == 1
    for moved in (backend.to_device(x), backend.cast(x, "float32"), backend.cast(x, "float64")):
        assert moved is not x and moved.device.id == 0
        np.testing.assert_array_equal(moved.data, [0.0, 1.0, 2.0])
    assert backend.cast(x, "float64").dtype == np.float64
    assert x.device.id == 1 and fake_gpus.current == 0
    here = fake_gpus.ndarray(np.arange(3.0, dtype=np.float32))  # already on GPU 0: no copy
    assert backend.to_device(here) is here and backend.cast(here, "float32") is here
    host = np.arange(3.0)
    assert backend.to_device(host) is host


def test_on_device_of_makes_a_cupy_arrays_gpu_current(fake_gpus):
    with fake_gpus.cuda.Device(1):
        x = fake_gpus.ndarray(np.zeros(2))
    with on_device_of(x):
        assert fake_gpus.current == 1
    assert fake_gpus.current == 0
    with on_device_of(np.zeros(2)):
        assert fake_gpus.current == 0
