"""On a GPU: the fused CUDA kernels against the unfused CuPy reference, CPU/GPU training parity, devices and arrays,
and no host transfers inside the training loop.

Every test needs CuPy and a visible GPU: the module is marked ``gpu`` and skipped otherwise (CI has none; run it on a
GPU machine, e.g. with ``scripts/gpu_run.sh``). The core tests of the other files also run on CuPy through conftest's
``device`` fixture; this file holds what is specific to CUDA. The kernel comparisons reuse the case tables and
drivers of tests/test_cuda_ops_host.py, which runs the same kernels on the host.
"""

import collections
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet import optim
from gpunet.array_utils import one_hot
from gpunet.backend.cuda_ops import CupyOps
from gpunet.backend import Ops, fused_default, ops_for

CUDA_OK, CUDA_WHY = gn.cuda_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA_OK, reason=f"no usable GPU: {CUDA_WHY}")]

if str(Path(__file__).resolve().parent) not in sys.path:  # tests/ is no package: import the module beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cuda_ops_host import (  # noqa: E402
    ADAM_CASES, DTYPES, ELEMENTWISE, LOSS_STEPS, SGD_CASES, TRAINING_CASES, activation_inputs, compare_act_grad,
    compare_adam, compare_bias_act, compare_loss, compare_sgd, loss_inputs, optimizer_inputs, training_model,
    training_problem)

# more than 2^20 elements (many blocks of CuPy's launch, and a ragged last one); odd sizes
BIG_2D = (4099, 257)
BIG_1D = (2**20 + 3,)
# fused kernels vs separate CuPy operations: FMA contraction and operation order differ, the math library does not
GPU_TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}
PARITY_TOL = dict(rtol=1e-9, atol=1e-11)  # float64 training, NumPy/BLAS vs CuPy/cuBLAS
# Adam divides by sqrt(v) + eps: where the decayed gradient g + wd p cancels to ~1e-7 (float32 rounding, which the
# kernel's FMA changes), eps = 1e-8 turns a one-ulp difference into a percent of the step (seen on 1 element in 2^20).
# An eps above that rounding keeps the comparison well-conditioned; the formula is the same.
ADAM_EPS = 1e-3


@pytest.fixture(scope="module")
def cupy():
    import cupy

    return cupy


@pytest.fixture(scope="module")
def cxp(cupy):
    import array_api_compat.cupy

    return array_api_compat.cupy


@pytest.fixture(scope="module")
def fused_ops(cxp):
    ops = ops_for(cxp, fused=True)
    assert isinstance(ops, CupyOps)
    return ops


@pytest.fixture(scope="module")
def reference_ops(cxp):
    return ops_for(cxp, fused=False)


# -- every fused kernel against the unfused CuPy expression ----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ELEMENTWISE, ids=repr)
def test_activation_kernels(fused_ops, reference_ops, cupy, activation, dtype, rng):
    z, b, dy = activation_inputs(rng, BIG_2D, dtype, cupy.asarray)
    compare_bias_act(fused_ops, reference_ops, activation, z, b, GPU_TOL)
    compare_act_grad(fused_ops, reference_ops, activation, dy, z, GPU_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", sorted(LOSS_STEPS))
def test_loss_kernels(fused_ops, reference_ops, cupy, step, dtype, rng):
    compare_loss(fused_ops, reference_ops, step, *loss_inputs(rng, step, BIG_2D, dtype, cupy.asarray), GPU_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_kernels(fused_ops, reference_ops, cupy, case, dtype, rng):
    compare_sgd(fused_ops, reference_ops, *optimizer_inputs(rng, BIG_1D, dtype, cupy.asarray), GPU_TOL,
                **SGD_CASES[case])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_kernels(fused_ops, reference_ops, cupy, case, dtype, rng):
    compare_adam(fused_ops, reference_ops, *optimizer_inputs(rng, BIG_1D, dtype, cupy.asarray), GPU_TOL,
                 **ADAM_CASES[case], eps=ADAM_EPS)


def test_ops_for_cupy_and_the_fused_switch(cxp, monkeypatch):
    monkeypatch.delenv("GPUNET_FUSED", raising=False)
    assert fused_default() and isinstance(ops_for(cxp), CupyOps) and ops_for(cxp) is ops_for(cxp, fused=True)
    assert type(ops_for(cxp, fused=False)) is Ops
    assert isinstance(gn.Sequential([gn.Dense(3, 2, "relu")], device="cuda").ops, CupyOps)
    monkeypatch.setenv("GPUNET_FUSED", "0")
    assert not fused_default() and type(ops_for(cxp)) is Ops
    model = gn.Sequential([gn.Dense(3, 2, "relu")], device="cuda")
    assert model.fused is False and type(model.ops) is Ops


# -- training: the same run on the CPU and the GPU --------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("case", ["relu+tanh/softmax-cce/sgd-nesterov", "silu+softplus/linear-huber/adamw-amsgrad",
                                  "gelu+leaky_relu/sigmoid-bce/adam"])
def test_fit_parity_cpu_cuda(case, fused, rng):
    hidden, output, loss, make_optimizer, _ = TRAINING_CASES[case]
    X, y, n_out, metrics = training_problem(rng, loss)
    runs = {}
    for device in ("cpu", "cuda"):
        model = training_model(hidden, output, X.shape[1], n_out, "float64", device=device, fused=fused)
        history = model.fit(X, y, loss=loss, optimizer=make_optimizer(), epochs=4, batch_size=16,
                            validation_split=0.25, metrics=metrics).history
        runs[device] = history, model.get_weights()
    (h_cpu, w_cpu), (h_gpu, w_gpu) = runs["cpu"], runs["cuda"]
    assert h_gpu.keys() == h_cpu.keys() and len(h_gpu["loss"]) == 4
    for key in h_cpu:
        np.testing.assert_allclose(h_gpu[key], h_cpu[key], **PARITY_TOL, err_msg=key)
    for a, b in zip(w_gpu, w_cpu, strict=True):
        np.testing.assert_allclose(a, b, **PARITY_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_seed_same_initial_weights(dtype):
    def model(device):
        layers = [gn.Dense(7, 16, "relu"), gn.Dense(16, 8, "tanh", init="glorot_normal"), gn.Dense(8, 3, "softmax")]
        return gn.Sequential(layers, device=device, dtype=dtype, seed=3)

    for cpu, gpu in zip(model("cpu").get_weights(), model("cuda").get_weights(), strict=True):
        assert gpu.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(gpu, cpu)


# -- arrays and devices -----------------------------------------------------------------------------------------------
def _classifier(device="cuda", **kwargs):
    return gn.Sequential([gn.Dense(4, 8, "relu"), gn.Dense(8, 1, "sigmoid")], device=device, seed=0, **kwargs)


def test_arrays_live_on_the_device_and_move_on_request(cupy, rng):
    X = rng.standard_normal((40, 4))
    y = (X[:, 0] > 0).astype(float)
    model = _classifier()
    assert model.device == "cuda:0" and isinstance(model.ops, CupyOps)
    model.fit(X, y, loss="bce", epochs=2)  # host data is accepted, and moved to the GPU once
    assert all(isinstance(p, cupy.ndarray) for p in model.parameters())
    pred = model.predict(X)
    assert isinstance(pred, cupy.ndarray) and pred.shape == (40, 1)
    weights = model.get_weights()
    assert all(type(w) is np.ndarray for w in weights)

    model.to("cpu")
    assert model.device == "cpu" and not isinstance(model.ops, CupyOps)
    assert all(type(p) is np.ndarray for p in model.parameters())
    np.testing.assert_allclose(model.predict(X), cupy.asnumpy(pred), rtol=1e-5, atol=1e-6)
    model.fit(X, y, epochs=1)
    moved = model.get_weights()
    model.to("cuda")
    assert model.device == "cuda:0" and isinstance(model.predict(X), cupy.ndarray)
    for a, b in zip(model.get_weights(), moved, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cupy_data_for_a_cpu_model_is_refused(cupy):
    model = _classifier(device="cpu")
    X, y = cupy.zeros((3, 4)), cupy.zeros(3)
    with pytest.raises(TypeError, match="cupy array but the model runs on cpu"):
        model.fit(X, y, loss="bce")
    with pytest.raises(TypeError, match="cupy array but the model runs on cpu"):
        model.predict(X)


def test_device_index_out_of_range(cupy):
    count = cupy.cuda.runtime.getDeviceCount()
    with pytest.raises(ValueError, match=f"there are {count} GPU"):
        _classifier(device=f"cuda:{count}")


def test_second_gpu(cupy, rng):
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two or more GPUs")
    model = _classifier(device="cuda:1")
    X = rng.standard_normal((40, 4))
    model.fit(X, X[:, 0] > 0, loss="bce", optimizer="adam", epochs=2)
    assert model.device == "cuda:1"
    assert all(p.device.id == 1 for p in model.parameters())
    assert all(s.device.id == 1 for state in model.optimizer.state for s in state.values() if s is not None)
    assert model.predict(X).device.id == 1


def test_arrays_on_another_gpu_are_copied_to_the_models(cupy, rng):
    """A cuda:0 model given CuPy arrays on GPU 1 copies them to GPU 0 (checks included) and trains as on host data."""
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two or more GPUs")
    X = rng.standard_normal((40, 4))
    labels = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    with cupy.cuda.Device(1):
        X1, labels1 = cupy.asarray(X), cupy.asarray(labels)
        onehot = one_hot(labels1, 3, cupy.float64)
    assert onehot.device.id == 1  # CuPy ignores device=: one_hot makes the labels' GPU current
    np.testing.assert_array_equal(cupy.asnumpy(onehot), np.eye(3)[labels])

    def model():
        return gn.Sequential([gn.Dense(4, 8, "relu"), gn.Dense(8, 3, "softmax")], device="cuda:0", dtype="float64",
                             seed=0)

    on_host, on_gpu1 = model(), model()
    on_host.fit(X, labels, loss="cce", optimizer="adam", epochs=2, metrics=["accuracy"])
    on_gpu1.fit(X1, labels1, loss="cce", optimizer="adam", epochs=2, metrics=["accuracy"])
    assert all(p.device.id == 0 for p in on_gpu1.parameters())
    for a, b in zip(on_host.get_weights(), on_gpu1.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert on_gpu1.predict(X1).device.id == 0 and on_gpu1(X1).device.id == 0
    assert on_gpu1.evaluate(X1, labels1) == pytest.approx(on_host.evaluate(X, labels), rel=1e-12)
    assert X1.device.id == 1 and labels1.device.id == 1


# -- host transfers ---------------------------------------------------------------------------------------------------
@pytest.fixture
def host_reads(cupy, monkeypatch):
    """A Counter of device -> host reads of CuPy arrays by kind, counted while the test runs.

    Counted: ``ndarray.get`` (which ``cupy.asnumpy`` and ``gpunet.to_numpy`` call) and the Python-level scalar
    reads ``float()``, ``int()``, ``bool()``, ``operator.index()``, ``.item()`` and ``.tolist()``. Not seen: copies
    made inside CuPy's C code without these methods (none of gpunet's own Python reaches them). A read made inside
    another (``bool()`` calls ``get`` through Cython's dispatch to the patched method) counts once, as the outer one.
    """
    counts, depth = collections.Counter(), [0]
    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(cupy.ndarray, name, None)
        if original is None:
            continue

        def counted(self, *args, _original=original, _name=name, **kwargs):
            counts[_name] += depth[0] == 0
            depth[0] += 1
            try:
                return _original(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(cupy.ndarray, name, counted)
    return counts


def test_training_loop_reads_the_device_once_per_epoch(cupy, host_reads, rng):
    """With the data on the GPU, an epoch of 16 batches reads back one array (the batch losses, with ``.get``) and
    one scalar (the "weights finite" flag, with ``bool``); argument checks add a constant per ``fit``."""
    X = cupy.asarray(rng.standard_normal((512, 8)))
    y = cupy.asarray(rng.integers(0, 3, 512))

    def reads(epochs):
        model = gn.Sequential([gn.Dense(8, 16, "gelu"), gn.Dense(16, 3, "softmax")], device="cuda", seed=0)
        host_reads.clear()
        model.fit(X, y, loss="cce", optimizer=optim.Adam(), epochs=epochs, batch_size=32, metrics=None)
        return collections.Counter(host_reads)

    one, four = reads(1), reads(4)
    per_epoch = {kind: (four[kind] - one[kind]) / 3 for kind in four | one}
    assert per_epoch.get("get", 0) <= 1, per_epoch
    assert sum(n for kind, n in per_epoch.items() if kind != "get") <= 1, per_epoch
