"""Device resolution, lazy CuPy import, and the kernel-source loader."""

import subprocess
import sys

import numpy as np
import pytest

import gpunet as gn
from gpunet import kernel_sources
from gpunet.backend import get_backend, to_numpy


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
