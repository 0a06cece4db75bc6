"""Mixed precision (gpunet/precision.py): the emulated low-precision products against float64 on the same rounded
inputs, TF32 rounding, the loss scaler against ``torch.amp.GradScaler``, float32 master weights with the update
writing the low-precision copy, digits accuracy per mode, and the same modes through the CuPy ops on the host
(eager against captured steps, bit for bit)."""

import sys
from pathlib import Path

import array_api_compat.numpy as anp
import numpy as np
import pytest

import gpunet as gn
from gpunet import precision
from gpunet.backend import graphs, ops_for
from gpunet.backend.cuda_ops import CupyOps
from gpunet.backend.workspaces import Workspace

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_cuda import FakeCuda  # noqa: E402

LOW = {"bf16": precision.bfloat16(), "fp16": np.dtype(np.float16)}


def host_cupy_ops():
    cuda = FakeCuda()
    return CupyOps(anp, elementwise_kernel=cuda.kernel, gemm=cuda.gemm()), cuda


@pytest.mark.parametrize("ops_kind", ["numpy", "cupy-host"])
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_low_precision_products_equal_float64_on_the_rounded_inputs(mode, ops_kind):
    """cast + product: the inputs rounded to the low dtype (round to nearest even), products and sums in float32:
    within float32 summation error of float64 on the same rounded inputs, and visibly not the float32 product."""
    ops = ops_for(anp) if ops_kind == "numpy" else host_cupy_ops()[0]
    policy = precision.Policy(mode)
    rng = np.random.default_rng(0)
    ws = Workspace(anp)
    for m, k, n in [(32, 64, 16), (7, 300, 5), (1, 9, 1)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        a_low, b_low = policy.cast(ops, a, ws, ("a", m)), policy.cast(ops, b, ws, ("b", m))
        assert a_low.dtype == LOW[mode] and b_low.dtype == LOW[mode]
        np.testing.assert_array_equal(a_low, a.astype(LOW[mode]))
        out = policy.product(ops, a_low, b_low, np.empty((m, n), np.float32))
        exact = a.astype(LOW[mode]).astype(np.float64) @ b.astype(LOW[mode]).astype(np.float64)
        scale = np.abs(a_low.astype(np.float64)) @ np.abs(b_low.astype(np.float64))
        assert np.all(np.abs(out - exact) <= 2 * k * np.finfo(np.float32).eps * scale + 1e-30)
        if k > 10:
            assert np.max(np.abs(out - a.astype(np.float64) @ b)) > 1e-4  # the rounding is real
        # the transposed view the backward pass hands the product (x.T @ dz)
        at_low = policy.cast(ops, a.T, ws, ("aT", m))
        np.testing.assert_array_equal(at_low, a.T.astype(LOW[mode]))


def test_tf32_rounding():
    """10 mantissa bits, round to nearest with ties to even; NaN and infinities kept; within 2^-11 relative."""
    x = np.array([1.0, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-11 + 2**-20, np.nan, np.inf, -np.inf, 0.0, -3.3e38],
                 np.float32)
    out = precision.round_tf32(x, np.empty_like(x))
    np.testing.assert_array_equal(out[:4], np.array([1.0, 1.0, 1 + 4 * 2**-11, 1 + 2**-10], np.float32))
    assert np.isnan(out[4]) and out[5] == np.inf and out[6] == -np.inf and out[7] == 0
    r = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 1e3
    rounded = precision.round_tf32(r, np.empty_like(r))
    assert np.all((rounded.view(np.uint32) & 0x1FFF) == 0)
    assert np.all(np.abs(rounded - r) <= np.abs(r) * 2.0**-11)


def _scripted(sequence, run_step):
    """Drive a scaler through ``sequence`` (True: finite gradients, False: an inf in them): each step's scale
    after the update and the parameter."""
    return [run_step(finite) for finite in sequence]


SEQUENCE = [True, True, True, False, True, True, True, True, False, False, True, True, True, True, True]


def torch_trace(sequence, init_scale=8.0, interval=3):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=interval)

    def step(finite):
        opt.zero_grad()
        scaler.scale(torch.ones(()))  # (what makes the scaler's state; the gradients are scripted below)
        g = torch.ones(3) * scaler.get_scale()
        if not finite:
            g[1] = float("inf")
        p.grad = g
        scaler.step(opt)
        scaler.update()
        return scaler.get_scale(), p.detach().numpy().copy()

    return _scripted(sequence, step)


def gpunet_trace(sequence, ops, init_scale=8.0, interval=3):
    scaler = precision.GradScaler(init_scale=init_scale, growth_interval=interval)

    class Model:  # what GradScaler.attach reads
        backend, xp = gn.get_backend("cpu"), anp

    scaler.attach(Model)
    p = np.zeros(3, np.float32)

    def step(finite):
        g = np.ones(3, np.float32) * np.float32(scaler.amp[0])
        if not finite:
            g[1] = np.inf
        skip = scaler.unscale(ops, [g])
        if ops.device_scalars:  # the device path: the update kernel reads found_inf itself
            if scaler.amp[2] == 0:
                p[...] -= np.float32(0.1) * g
        elif not skip:
            p[...] -= np.float32(0.1) * g
        scaler.update(ops)
        return scaler.scale, p.copy()

    return _scripted(sequence, step)


@pytest.mark.parametrize("ops_kind", ["numpy", "device-kernels"])
def test_the_scaler_follows_torch_grad_scaler(ops_kind):
    """init 8, growth interval 3: scale x2 after 3 clean steps, x0.5 and a skipped step on inf; as torch."""
    ops = ops_for(anp) if ops_kind == "numpy" else host_cupy_ops()[0]
    want = torch_trace(SEQUENCE)
    got = gpunet_trace(SEQUENCE, ops)
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, p_got), (_, p_want) in zip(got, want):
        np.testing.assert_array_equal(p_got, p_want)
    assert [s for s, _ in got][:5] == [8.0, 8.0, 16.0, 8.0, 8.0]


def test_the_scaler_grows_only_to_a_finite_float32_scale():
    ops = ops_for(anp)
    got = gpunet_trace([True] * 4, ops, init_scale=2.0**127, interval=1)
    assert [s for s, _ in got] == [2.0**127] * 4  # 2^128 is no float32


def problem(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    return X, np.argmax(X[:, :3] + 0.3 * rng.standard_normal((n, 3)), axis=1)


def net(seed=0, **kwargs):
    return gn.Sequential([gn.Dense(8, 32, "relu"), gn.Dense(32, 3, "softmax")], seed=seed, **kwargs)


@pytest.mark.parametrize("mode", ["tf32", "bf16", "fp16"])
def test_master_weights_stay_float32_and_the_update_writes_the_low_copy(mode):
    X, y = problem()
    model = net(precision=mode)
    model.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=1e-2), epochs=3, batch_size=32)
    mixed = model.trainer.mixed
    assert mixed.policy.name == mode and all(p.dtype == np.float32 for p in model.parameters())
    assert all(s.dtype == np.float32 for s in model.optimizer.state[0].values() if s is not None)
    if mode != "tf32":
        np.testing.assert_array_equal(mixed.low_flat, model._flat_params.astype(LOW[mode]))
    else:
        assert mixed.low_flat is None
    float32 = net()
    float32.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=1e-2), epochs=3, batch_size=32)
    difference = max(np.max(np.abs(a - b)) for a, b in zip(model.get_weights(), float32.get_weights()))
    assert 0 < difference < 0.1  # the same training, rounded differently


def test_fit_precision_overrides_the_model_and_checks():
    X, y = problem()
    model = net(precision="bf16")
    model.fit(X, y, loss="cce", epochs=1, precision="float32")
    assert model.trainer.mixed is None and model.precision == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        model.fit(X, y, loss="cce", epochs=1, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        net(precision="half")
    with pytest.raises(ValueError, match="float32 master weights"):
        gn.Sequential([gn.Dense(8, 3, "softmax")], dtype="float64").fit(X, y, loss="cce", precision="bf16")
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="runs on NumPy and CuPy"):
        gn.Sequential([gn.Dense(8, 3, "softmax")], device=strict).fit(X, y, loss="cce", precision="fp16")


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
@pytest.mark.parametrize("carry", ["file", "file, then to()", "pickle"])
def test_save_and_load_keep_the_precision_and_the_loss_scale(mode, carry, tmp_path):
    """A fit resumed from a file (or a moved model, or a pickle) equals the uninterrupted fit bit for bit: the
    model's precision and (fp16) the loss scaler's scale and growth tracker carry over, waiting for the next fp16
    fit. The scaler grows every 3 steps here, so the scale moves."""
    import pickle

    X, y = problem()

    def start():
        model = net(precision=mode)
        if mode == "fp16":
            precision.attach(model, "fp16", precision.GradScaler(init_scale=2.0**8, growth_interval=3))
        return model

    straight = start()
    straight.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=1e-2), epochs=4, batch_size=32)
    first = start()
    first.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=1e-2), epochs=2, batch_size=32)
    first.save(tmp_path / "m.safetensors")
    resumed = {"file": lambda: gn.load(tmp_path / "m.safetensors"),
               "file, then to()": lambda: gn.load(tmp_path / "m.safetensors").to("cpu"),
               "pickle": lambda: pickle.loads(pickle.dumps(first))}[carry]()
    assert resumed.precision == mode
    if mode == "fp16":
        saved = resumed.trainer.loss_scale_state()
        assert saved == first.trainer.mixed.scaler.state_dict() and saved["scale"] == 2.0**10
        assert saved["growth_interval"] == 3 and saved["_growth_tracker"] == 2  # 8 steps: grown twice, 2 since
    resumed.fit(X, y, epochs=2, batch_size=32)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    if mode == "fp16":
        assert resumed.trainer.mixed.scaler.scale == straight.trainer.mixed.scaler.scale == 2.0**13
        fresh = gn.load(tmp_path / "m.safetensors")
        fresh.trainer.scaler_state = None  # the control: the scale restarts at 2^16
        fresh.fit(X, y, epochs=2, batch_size=32)
        assert fresh.trainer.mixed.scaler.scale != straight.trainer.mixed.scaler.scale


def test_an_fp16_file_loads_where_mixed_precision_cannot_run(tmp_path):
    """Inference anywhere: the loss scale waits for an fp16 fit, which array-api-strict refuses when asked."""
    strict = pytest.importorskip("array_api_strict")
    X, y = problem()
    model = net(precision="fp16")
    model.fit(X, y, loss="cce", epochs=1, batch_size=32)
    model.save(tmp_path / "m.safetensors")
    there = gn.load(tmp_path / "m.safetensors", device=strict)
    np.testing.assert_allclose(np.asarray(there.predict(strict.asarray(X))), model.predict(X), rtol=1e-6)
    with pytest.raises(ValueError, match="runs on NumPy and CuPy"):
        there.fit(strict.asarray(X), strict.asarray(y), epochs=1)
    assert there.trainer.scaler_state is not None  # a refused fit changes nothing


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backs_off():
    """A first scale of 2^127 overflows the scaled gradients: those steps change nothing (weights, optimizer
    state, step count) and halve the scale until the gradients are finite."""
    X, y = problem()
    model = net(precision="fp16")
    before = model.get_weights()
    optimizer = gn.optim.Adam(lr=1e-2)
    model.trainer.mixed = None
    precision.attach(model, "fp16", precision.GradScaler(init_scale=2.0**127))
    model.trainer.configure(gn.losses.get("cce"), optimizer)
    x, Y, _ = model.trainer.prepare(X[:32], y[:32])
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(3):
            model.trainer.step(x, Y)
    scale = model.trainer.mixed.scaler.scale
    skipped = round(np.log2(2.0**127 / scale))
    assert skipped >= 1 and optimizer.steps == 3 - skipped
    if optimizer.steps == 0:
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_digits_accuracy_in_every_precision():
    """The digits recipe of scripts/train_digits.py (64-128-10, SGD 0.05 momentum 0.9, 50 epochs, batch 32): tf32,
    bf16 and fp16 (emulated on NumPy) reach the float32 test accuracy within 0.5 points, on 3 splits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    for seed in (0, 1, 2):
        Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
        accuracy = {}
        for mode in precision.PRECISIONS:
            model = gn.Sequential([gn.Dense(64, 128, "relu"), gn.Dense(128, 10, "softmax")], seed=seed)
            model.fit(Xtr, ytr, loss="cce", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=50, batch_size=32,
                      precision=mode)
            accuracy[mode] = float(np.mean(np.argmax(model.predict(Xte), axis=1) == yte))
        assert accuracy["float32"] > 0.96
        for mode in ("tf32", "bf16", "fp16"):
            assert abs(accuracy[mode] - accuracy["float32"]) <= 0.005, (seed, accuracy)


# -- the CuPy ops on the host: mixed precision in eager and captured steps ----------------------------------------------
@pytest.fixture
def fake(monkeypatch):
    ops, cuda = host_cupy_ops()
    cuda.ops = ops
    monkeypatch.setattr(graphs, "runtime_for", lambda model: cuda if model.ops is ops else None)
    return cuda


def host_net(fake, **kwargs):
    model = net(**kwargs)
    for layer in model.layers:
        layer.ops = fake.ops
    return model


@pytest.mark.parametrize("mode", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("make", [lambda: gn.optim.SGD(lr=0.1, momentum=0.9), lambda: gn.optim.AdamW(lr=1e-2)],
                         ids=["sgd", "adamw"])
def test_cupy_ops_mixed_precision_captured_equals_eager(fake, mode, make):
    """The device path of every mode (cublasGemmEx with 16-bit inputs, the update kernel writing the low copy,
    the loss scaler's kernels) captured and replayed ends bit for bit where its eager steps end, and near the
    NumPy emulation (another summation order)."""
    X, y = problem(n=100)
    fit = dict(loss="cce", epochs=3, batch_size=32, precision=mode, metrics=["accuracy"])
    eager, captured, emulated = host_net(fake), host_net(fake), net()
    h_eager = eager.fit(X, y, optimizer=make(), graph=False, **fit).history
    h_captured = captured.fit(X, y, optimizer=make(), graph=True, **fit).history
    h_emulated = emulated.fit(X, y, optimizer=make(), **fit).history
    for a, b in zip(eager.get_weights(), captured.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h_eager == h_captured
    assert eager.optimizer.steps == captured.optimizer.steps == 12
    for a, b in zip(eager.get_weights(), emulated.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.02)
    np.testing.assert_allclose(h_eager["loss"], h_emulated["loss"], rtol=0.02)
    if mode != "tf32":
        np.testing.assert_array_equal(captured.trainer.mixed.low_flat, captured._flat_params.astype(LOW[mode]))
    if mode == "fp16":
        assert captured.trainer.mixed.scaler.scale == eager.trainer.mixed.scaler.scale == 2.0**16
