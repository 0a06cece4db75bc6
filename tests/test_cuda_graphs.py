"""Captured steps, the cuBLAS binding, mixed precision and the vectorised kernel on a real GPU (marked ``gpu``;
skipped without CuPy and a visible GPU). The host twins of these tests are tests/test_graphs.py,
tests/test_precision.py and tests/test_cuda_ops_host.py; these check what only the device can: that CUDA accepts
the capture, that replays allocate nothing, and that the results match the eager steps and cupy.matmul."""

import numpy as np
import pytest

import gpunet as gn

OK, WHY = gn.cuda_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not OK, reason=f"no usable GPU: {WHY}")]


def problem(n=300, n_in=20, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    return X, np.argmax(X[:, :classes] + 0.3 * rng.standard_normal((n, classes)), axis=1)


def network(precision="float32", seed=0):
    return gn.Sequential([gn.Dense(20, 64, "relu"), gn.Dense(64, 32, "tanh"), gn.Dense(32, 4, "softmax")],
                         device="cuda", seed=seed, precision=precision)


@pytest.mark.parametrize("precision", ["float32", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize("make", [lambda: gn.optim.SGD(lr=0.05, momentum=0.9), lambda: gn.optim.AdamW(lr=3e-3)],
                         ids=["sgd", "adamw"])
def test_captured_fit_equals_eager_fit(precision, make):
    """Real stream capture, cuBLAS through gpunet's binding, replays: bit for bit the eager steps' weights and
    history (the same kernels and products in the same order), and the step count read back from the device."""
    X, y = problem()
    fit = dict(loss="cce", epochs=3, batch_size=64, metrics=["accuracy"], precision=precision)
    eager, captured = network(), network()
    h_eager = eager.fit(X, y, optimizer=make(), graph=False, **fit).history
    h_captured = captured.fit(X, y, optimizer=make(), graph=True, **fit).history
    for a, b in zip(eager.get_weights(), captured.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h_eager == h_captured
    assert captured.optimizer.steps == eager.optimizer.steps == 15


def test_replays_allocate_nothing():
    """Nothing is allocated from the captures' private pools (no allocation inside a graph), and from the second
    epoch on CuPy's pool holds the same bytes at every epoch's end."""
    import cupy

    from gpunet.backend import graphs

    class Pool(gn.callbacks.Callback):
        used = []

        def on_epoch_end(self, epoch, logs):
            self.used.append(cupy.get_default_memory_pool().used_bytes())

    X, y = problem()
    model = network()
    made = []
    plan = graphs.plan
    graphs.plan = lambda *a, **k: made.append(plan(*a, **k)) or made[-1]
    try:
        model.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=3, batch_size=64,
                  graph=True, callbacks=[Pool()])
    finally:
        graphs.plan = plan
    (runner,) = made
    # 300 rows: 4 batches of 64 and one of 44; each shape runs one eager warm-up step, then is captured
    assert runner.captures == 2 and runner.launches == 3 * 5 - 2
    assert all(entry["pool"].total_bytes() == 0 for entry in runner.graphs.values())
    assert Pool.used[1] == Pool.used[2]


def test_cupy_matmul_still_refuses_capture():
    """The obstacle gpunet's binding goes around (cupy/cupy issue 6290): if CuPy lifts it, this test says so."""
    import cupy

    a = cupy.ones((8, 8), cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            with pytest.raises(NotImplementedError, match="cuBLAS"):
                a @ a
        finally:
            stream.end_capture()


@pytest.mark.parametrize("dtype", ["float32", "tf32", "float16", "bfloat16", "float64"])
def test_cublas_binding_equals_cupy_matmul(dtype):
    import cupy

    from gpunet.backend.cublas import Gemm
    from gpunet.precision import bfloat16

    gemm = Gemm()
    rng = np.random.default_rng(0)
    in_dtype = {"tf32": np.float32, "bfloat16": bfloat16()}.get(dtype, np.dtype(dtype))
    out_dtype = np.float64 if dtype == "float64" else np.float32
    for m, k, n in [(64, 96, 32), (1, 33, 7), (257, 1, 5)]:
        a = cupy.asarray(rng.standard_normal((m, k)).astype(in_dtype))
        b = cupy.asarray(rng.standard_normal((k, n)).astype(in_dtype))
        for left, right in [(a, b), (cupy.asfortranarray(a), b), (a, cupy.asfortranarray(b))]:
            out = cupy.empty((m, n), out_dtype)
            assert gemm(left, right, out, tf32=dtype == "tf32") is out
            want = cupy.asnumpy(a).astype(np.float64) @ cupy.asnumpy(b).astype(np.float64)
            tol = {"float64": 1e-12, "float32": 1e-5, "tf32": 5e-3}.get(dtype, 1e-5)
            np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=tol, atol=tol * k)


def test_vectorised_forward_equals_the_elementwise_kernel():
    import array_api_compat.cupy as cxp
    import cupy

    from gpunet.backend.cuda_ops import CupyOps

    vec, plain = CupyOps(cxp), CupyOps(cxp)
    vec.vectorized = True
    rng = np.random.default_rng(0)
    z = cupy.asarray(rng.standard_normal((1000, 1024)).astype(np.float32))
    b = cupy.asarray(rng.standard_normal(1025).astype(np.float32))[1:]
    for name in CupyOps.VECTOR_ACTIVATIONS:
        act = gn.activations.get(name)
        assert vec.vec4_applies(z, name)
        got, want = z.copy(), z.copy()
        vec.bias_act(got, b, act)
        plain.bias_act(want, b, act)
        np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(want))


@pytest.mark.slow
def test_digits_in_every_precision_on_the_gpu():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    accuracy = {}
    for precision in ("float32", "tf32", "bf16", "fp16"):
        model = gn.Sequential([gn.Dense(64, 128, "relu"), gn.Dense(128, 10, "softmax")], device="cuda", seed=0)
        model.fit(Xtr, ytr, loss="cce", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=50, batch_size=32,
                  precision=precision, graph=True)
        accuracy[precision] = float(np.mean(np.argmax(gn.to_numpy(model.predict(Xte)), axis=1) == yte))
    for precision in ("tf32", "bf16", "fp16"):
        assert abs(accuracy[precision] - accuracy["float32"]) <= 0.005, accuracy
