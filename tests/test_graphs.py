"""CUDA-graph captured steps without a GPU: gpunet's CuPy ops over the host kernel stand-in, the cuBLAS binding over
a fake library, and a fake stream capture that records launches and replays them (tests/fake_cuda.py).

A fit whose steps are captured and replayed must end exactly (bit for bit) where the same fit with eager steps
ends: anything the captured step did outside a recorded launch, or a scalar frozen at capture, would show. A fit
that cannot be captured falls back to eager steps with one message (``graph="auto"``) or refuses (``graph=True``).
"""

import sys
import warnings
from pathlib import Path

import array_api_compat.numpy as anp
import numpy as np
import pytest

import gpunet as gn
from gpunet.backend import graphs
from gpunet.backend.cuda_ops import CupyOps

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_cuda import CaptureError, FakeCuda  # noqa: E402


@pytest.fixture
def fake(monkeypatch):
    """A fake CUDA, the CuPy ops over it, and gpunet's graphs pointed at it for models computing with those ops;
    ``fake.plans`` collects every GraphEpochs made."""
    cuda = FakeCuda()
    cuda.ops = CupyOps(anp, elementwise_kernel=cuda.kernel, gemm=cuda.gemm())
    cuda.plans = []
    monkeypatch.setattr(graphs, "runtime_for", lambda model: cuda if model.ops is cuda.ops else None)
    plan = graphs.plan

    def recording_plan(*args, **kwargs):
        made = plan(*args, **kwargs)
        if made is not None:
            cuda.plans.append(made)
        return made

    monkeypatch.setattr(graphs, "plan", recording_plan)
    return cuda


def network(fake, sizes=(6, 16, 12, 3), hidden="relu", output="softmax", seed=0, **kwargs):
    layers = [gn.Dense(a, b, hidden) for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(gn.Dense(sizes[-2], sizes[-1], output))
    model = gn.Sequential(layers, seed=seed, **kwargs)
    if fake is not None:
        for layer in model.layers:
            layer.ops = fake.ops
    return model


def problem(n=90, n_in=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    y = np.argmax(X[:, :classes] + 0.3 * rng.standard_normal((n, classes)), axis=1)
    return X, y


FITS = {
    "sgd-nesterov/cce/accuracy": dict(loss="cce", optimizer=lambda: gn.optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
                                      metrics=["accuracy"]),
    "adam/cce": dict(loss="cce", optimizer=lambda: gn.optim.Adam(lr=0.01, weight_decay=1e-3)),
    "adamw-amsgrad/cce": dict(loss="cce", optimizer=lambda: gn.optim.AdamW(lr=0.01, amsgrad=True)),
    "sgd/bce": dict(loss="bce", optimizer=lambda: gn.optim.SGD(lr=0.2), output="sigmoid", classes=1,
                    metrics=["accuracy"]),
    "sgd-momentum/mse/tanh": dict(loss="mse", optimizer=lambda: gn.optim.SGD(lr=0.05, momentum=0.5), output=None,
                                  hidden="tanh"),
}


def _fit(fake, case, graph, epochs=3, batch_size=16, callbacks=None, **extra):
    spec = dict(FITS[case])
    classes = spec.pop("classes", 3)
    X, y = problem(classes=max(classes, 2))
    if classes == 1:
        y = (y == 0).astype(np.float32)
    if spec["loss"] == "mse":
        y = np.sin(X[:, :classes]) + 0.5 * X[:, 1:1 + classes]
    model = network(fake, sizes=(6, 16, 12, classes), hidden=spec.pop("hidden", "relu"),
                    output=spec.pop("output", "softmax"))
    optimizer = spec.pop("optimizer")()
    history = model.fit(X, y, optimizer=optimizer, epochs=epochs, batch_size=batch_size, graph=graph,
                        callbacks=callbacks, **spec, **extra)
    return model, history, optimizer


def assert_same_fit(a, b):
    (model_a, history_a, opt_a), (model_b, history_b, opt_b) = a, b
    assert history_a.history.keys() == history_b.history.keys()
    for key in history_a.history:
        np.testing.assert_array_equal(history_a.history[key], history_b.history[key], err_msg=key)
    for wa, wb in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert opt_a.steps == opt_b.steps
    for sa, sb in zip(opt_a.state_dict()["state"], opt_b.state_dict()["state"]):
        for key in sa:
            if sa[key] is not None:
                np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


@pytest.mark.parametrize("case", sorted(FITS))
def test_graph_fit_equals_eager_fit_bit_for_bit(fake, case):
    """90 rows in batches of 16: five full batches and a partial one of 10 per epoch, shuffled, 3 epochs."""
    eager = _fit(fake, case, graph=False)
    assert fake.plans == []
    captured = _fit(fake, case, graph=True)
    assert_same_fit(captured, eager)
    (runner,) = fake.plans
    assert runner.captures == 2  # one graph per batch shape
    assert runner.launches == 3 * 6 - 2  # every step but the warm-up of each shape is a replay
    assert set(fake.cublas.calls[-1]) >= {"transa", "lda"}  # the products went through the cuBLAS binding


def test_schedules_reach_the_captured_step(fake):
    """The learning rate is a device scalar: a schedule changing it between epochs changes what the replays do
    (a scalar frozen at capture would not), and ReduceLROnPlateau likewise."""
    callbacks = lambda: [gn.callbacks.StepLR(step_size=1, gamma=0.5),  # noqa: E731
                         gn.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0)]
    eager = _fit(fake, "adam/cce", graph=False, epochs=4, callbacks=callbacks())
    captured = _fit(fake, "adam/cce", graph=True, epochs=4, callbacks=callbacks())
    assert_same_fit(captured, eager)
    assert captured[2].lr <= 0.01 / 8  # the step schedule halved it every epoch


def test_a_frozen_host_scalar_would_show(fake):
    """The fake freezes kernel scalars at capture, as CUDA does: a kernel given the learning rate as a host number
    keeps the captured value on every replay."""
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    kernel = fake.kernel("T g, T lr", "T p", "p = p - lr * g", name="sgd_host_lr")
    stream, out = fake.stream(), []
    lr = 0.5
    with fake.capture(stream, None, out):
        kernel(g, lr, p)
    lr = 0.0  # noqa: F841  (too late: the graph holds 0.5)
    assert np.all(p == 1)  # capture runs nothing
    fake.launch(out[0], stream)
    fake.launch(out[0], stream)
    np.testing.assert_array_equal(p, 0.0)


def test_capture_refuses_host_reads_and_allocations(fake):
    """An output the kernel would allocate, an array-namespace call, a host read and a NumPy allocation that
    outlives the capture: each raises CaptureError."""
    kernel = fake.kernel("T x", "T y", "y = x + 1", name="inc")
    x = np.zeros(3, np.float32)
    stream = fake.stream()
    with pytest.raises(CaptureError, match="allocates its outputs"):
        with fake.capture(stream, None, []):
            kernel(x)
    with pytest.raises(CaptureError, match="xp.sum"):
        with fake.capture(stream, None, []):
            anp.sum(x)
    with pytest.raises(CaptureError, match="to_numpy"):
        with fake.capture(stream, None, []):
            gn.to_numpy(x)
    kept = []
    with pytest.raises(CaptureError, match="allocated during capture"):
        with fake.capture(stream, None, []):
            kept.append(x + 1)
    with pytest.raises(CaptureError, match="legacy"):
        with fake.capture(fake.legacy, None, []):
            pass


def test_cublas_on_another_stream_or_without_workspace_is_refused(fake):
    """The binding sets the stream and then the workspace on the handle: a call on a stream other than the
    capturing one, or a handle whose workspace was reset by cublasSetStream, would break the graph."""
    a, b, c = (np.ones((2, 2), np.float32) for _ in range(3))
    gemm = fake.gemm()
    gemm(a, b, c)  # the handle is made outside the capture (its workspace too)
    other = fake.stream()
    handle = next(iter(fake.cublas.handles))
    with pytest.raises(CaptureError, match="while stream"):
        with fake.capture(fake.stream(), None, []):
            with fake.on(other):  # (the capture's current stream switched away, as a stray `with stream` would)
                gemm(a, b, c)
    fake.cublas.handles[handle]["workspace"] = None
    stream = fake.stream()
    with fake.on(stream):
        gemm(a, b, c)  # a new stream: the binding sets the stream and the workspace again
    assert fake.cublas.handles[handle]["workspace"] is not None
    fake.cublas.cublasSetStream_v2(handle, stream.ptr)  # a reset behind the binding's back
    with pytest.raises(CaptureError, match="workspace"):
        with fake.capture(stream, None, []):
            gemm(a, b, c)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_cublas_binding_layouts(fake, dtype):
    """Row-major products through the column-major library: contiguous operands, transposed views (x.T as in the
    backward pass), row-strided views, alpha and beta, 1-row and 1-column shapes."""
    from gpunet.precision import bfloat16

    np_dtype = bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
    out_dtype = np.float64 if dtype == "float64" else np.float32
    rng = np.random.default_rng(0)
    gemm = fake.gemm()
    for m, k, n in [(5, 3, 4), (1, 7, 3), (6, 1, 2), (4, 5, 1), (1, 1, 1)]:
        base_a = rng.standard_normal((m, k + 2)).astype(np_dtype)
        cases = {"c": base_a[:, :k].copy(), "row-strided": base_a[:, :k], "transposed": base_a[:, :k].copy().T.copy().T}
        cases["transposed"] = np.ascontiguousarray(base_a[:, :k].T).T  # F-ordered
        b = rng.standard_normal((k, n)).astype(np_dtype)
        for name, a in cases.items():
            for b_op in (b, np.ascontiguousarray(b.T).T):
                out = rng.standard_normal((m, n)).astype(out_dtype)
                expected = 0.5 * (a.astype(np.float64) @ b_op.astype(np.float64)) + 2.0 * out.astype(np.float64)
                assert gemm(a, b_op, out, alpha=0.5, beta=2.0) is out
                tol = 1e-12 if dtype == "float64" else 1e-5
                np.testing.assert_allclose(out, expected, rtol=tol, atol=tol, err_msg=f"{name} {m}x{k}x{n}")
    assert gemm(np.ones((3, 4), np_dtype)[:, ::2], np.ones((2, 2), np_dtype), np.empty((3, 2), out_dtype)) is None


def test_tf32_and_compute_types(fake):
    from gpunet.backend import cublas

    a, b = np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)
    gemm = fake.gemm()
    gemm(a, b, np.empty((2, 2), np.float32), tf32=True)
    assert fake.cublas.calls[-1]["compute"] == cublas.CUBLAS_COMPUTE_32F_FAST_TF32
    gemm(a, b, np.empty((2, 2), np.float32))
    assert fake.cublas.calls[-1]["compute"] == cublas.CUBLAS_COMPUTE_32F
    with pytest.raises(TypeError, match="float32"):
        gemm(a.astype(np.float16), b.astype(np.float16), np.empty((2, 2), np.float16))


def test_roll_back_recaptures_a_stale_graph(fake):
    """A diverging epoch rolls back (restoring the optimizer state into new arrays): the graphs captured on the
    old buffers are captured again, and the end equals eager training's."""
    X, y = problem()
    X[70:, :] *= 1e30  # late rows overflow: the epoch diverges and rolls back

    def run(graph):
        model = network(fake)
        with pytest.raises(gn.NonFiniteLossError):
            model.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1, momentum=0.9), epochs=2, batch_size=16,
                      shuffle=False, graph=graph)
        return model.get_weights() + [np.array(model.optimizer.steps)]

    for a, b in zip(run(False), run(True)):
        np.testing.assert_array_equal(a, b)
    assert fake.plans[-1].captures >= 2


# -- the fallback ----------------------------------------------------------------------------------------------------
class PerBatch(gn.callbacks.Callback):
    def __init__(self):
        self.batches = 0

    def on_batch_end(self, batch, running_logs):
        self.batches += 1


def test_auto_falls_back_with_one_message_and_equal_results(fake):
    with pytest.warns(graphs.GraphFallbackWarning, match="PerBatch runs Python after every batch") as record:
        fallback = _fit(fake, "adam/cce", graph="auto", callbacks=[PerBatch()])
    assert len(record) == 1 and fake.plans == []
    assert_same_fit(fallback, _fit(fake, "adam/cce", graph=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(fake, "adam/cce", graph="auto")  # capturable: no message
    assert len(fake.plans) == 1


@pytest.mark.parametrize("change, reason", [
    (dict(callbacks=[PerBatch()]), "PerBatch runs Python after every batch"),
    (dict(verbose=1), "progress bar"),
    (dict(sample_weight=np.ones(90)), "sample_weight"),
    (dict(optimizer=gn.optim.RMSprop(lr=0.01)), "RMSprop has no capturable update"),
    (dict(optimizer=gn.optim.SGD(lr=0.1, clipnorm=1.0)), "clipping"),
    (dict(metrics=["r2"]), "'r2' has no capturable statistics"),
    (dict(loss=gn.losses.CategoricalCrossEntropy(from_logits=True)), "has no kernel"),
])
def test_graph_true_names_the_reason(fake, change, reason):
    X, y = problem()
    model = network(fake, output=None if "loss" in change else "softmax")
    fit = dict(loss="cce", optimizer=gn.optim.SGD(lr=0.1), epochs=1, batch_size=16) | change
    with pytest.raises(ValueError, match=reason):
        model.fit(X, y, graph=True, **fit)


def test_other_fallback_reasons(fake):
    X, y = problem()
    hooked = network(fake)
    hooked.trainer.gradient_hooks.append(lambda trainer, grads: None)
    with pytest.raises(ValueError, match="gradient hook"):
        hooked.fit(X, y, loss="cce", graph=True)
    dropout = gn.Sequential([gn.Dense(6, 8, "relu", dropout=0.2), gn.Dense(8, 3, "softmax")], seed=0)
    for layer in dropout.layers:
        layer.ops = fake.ops
    with pytest.raises(ValueError, match="dropout"):
        dropout.fit(X, y, loss="cce", graph=True)
    custom = network(fake, hidden=gn.activations.Activation())
    with pytest.raises(ValueError, match="has no kernel"):
        custom.fit(X, y, loss="cce", graph=True)


def test_numpy_and_other_namespaces_never_capture(fake):
    """Graphs are CUDA's: on NumPy "auto" is silent eager training, True a ValueError."""
    X, y = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        network(None).fit(X, y, loss="cce", epochs=1, graph="auto")
    with pytest.raises(ValueError, match="only the CuPy backend"):
        network(None).fit(X, y, loss="cce", epochs=1, graph=True)
    with pytest.raises(ValueError, match="graph must be"):
        network(None).fit(X, y, loss="cce", epochs=1, graph="yes")


def test_strided_data_is_gathered_from_a_contiguous_copy(fake):
    """The gather kernel indexes rows by pointer arithmetic: data given as a strided view is copied once."""
    X, y = problem()
    wide = np.zeros((X.shape[0], 2 * X.shape[1]), np.float32)
    wide[:, ::2] = X
    runs = []
    for data in (X, wide[:, ::2]):
        model = network(fake)
        model.fit(data, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1), epochs=2, batch_size=16, graph=True)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("how", ["sigint", "exception"])
def test_ctrl_c_during_captured_steps(fake, how):
    """Ctrl-C (SIGINT) during a replay ends the fit after that step with the step count read back from the
    device; a KeyboardInterrupt raised by a launch restores the epoch's start (after the stream finished)."""
    import os
    import signal

    launch = fake.launch

    def interrupting(graph, stream):
        launch(graph, stream)
        if fake.launched == 9:  # the fifth step of the second epoch
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt

    fake.launch = interrupting
    X, y = problem()
    model = network(fake)
    opt = gn.optim.SGD(lr=0.1, momentum=0.9)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        history = model.fit(X, y, loss="cce", optimizer=opt, epochs=5, batch_size=16, graph=True)
    assert history.interrupted and history.epoch == [0]
    reference = network(fake)
    if how == "sigint":  # launches 1-4 in epoch 1 (its batches 2-5), 5-9 in epoch 2: it stops after 6 + 5 steps
        assert opt.steps == 11
    else:  # back to the end of epoch 1
        reference.fit(X, y, loss="cce", optimizer=gn.optim.SGD(lr=0.1, momentum=0.9), epochs=1, batch_size=16,
                      graph=False)
        for a, b in zip(model.get_weights(), reference.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert opt.steps == 6


def test_a_failed_capture_goes_on_eagerly(fake):
    """CUDA refusing something during the capture (here: cuBLAS, as CuPy's own binding would) ends capturing for
    the fit with one warning; the steps go on eagerly and the fit ends where an eager fit ends."""
    gemm = fake.cublas.cublasGemmEx

    def refuse_in_capture(*args):
        if fake.capturing is not None:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        return gemm(*args)

    fake.cublas.cublasGemmEx = refuse_in_capture
    with pytest.warns(graphs.GraphFallbackWarning, match="capturing the training step .* failed .*NotImplemented"):
        failed = _fit(fake, "adam/cce", graph=True)
    assert fake.plans[-1].failed and fake.plans[-1].captures == 0
    fake.cublas.cublasGemmEx = gemm
    assert_same_fit(failed, _fit(fake, "adam/cce", graph=False))
