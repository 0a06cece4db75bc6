"""gpunet's CuPy ops in CI, without a GPU: ``CupyOps`` built with :class:`host_kernel.HostElementwiseKernel` in place
of ``cupy.ElementwiseKernel``, so the very kernel declarations and CUDA C++ sources of ``kernels/`` run on the host.

Every fused step must equal the Array-API reference :class:`gpunet.backend.Ops` on the same inputs (up to float
rounding) and update the arrays it is given in place, and whole training runs through these ops must end where the
reference ends. The case tables and ``compare_*`` drivers here are namespace-agnostic: tests/test_cuda.py runs
them on a real GPU against the unfused CuPy reference.
"""

import re
import sys
from pathlib import Path

import array_api_compat.numpy as anp
import numpy as np
import pytest

import gpunet as gn
from gpunet import activations, losses, optim
from gpunet.backend.cuda_ops import CupyOps
from gpunet.backend import Ops, ops_for

if str(Path(__file__).resolve().parent) not in sys.path:  # tests/ is no package: import the helper beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_kernel  # noqa: E402
from host_kernel import HostElementwiseKernel  # noqa: E402

DTYPES = ("float32", "float64")
# atol is ~1e-6 (float32) / 1e-14 (float64) of the inputs' scale (3, up to 30): some formulas cancel (tanh-GELU's
# derivative for negative z), so a one-ulp difference in tanh shows in the absolute error, not the relative one
TOL = {"float32": dict(rtol=1e-6, atol=1e-5), "float64": dict(rtol=1e-13, atol=1e-13)}
TRAIN_TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-12)}
REFERENCE = Ops(anp)

# every elementwise activation, with non-default parameters too (the kernels' ``a`` argument)
ELEMENTWISE = [cls() for cls in activations.ACTIVATIONS.values() if cls.elementwise] + [
    activations.LeakyReLU(0.2), activations.ELU(0.5)]

# step -> (kinds of the (prediction, target) inputs, the call)
LOSS_STEPS = {
    "huber": (("normal", "normal"), lambda ops, p, t: ops.huber(p, t, 0.7, 1 / p.size)),
    "bce_logits": (("normal", "unit"), lambda ops, p, t: ops.bce_logits(p, t, 1 / p.size)),
    "bce_sigmoid": (("unit", "unit"), lambda ops, p, t: ops.xent_combined(p, t, 1 / p.size, binary=True)),
    "cce_softmax": (("unit", "unit"), lambda ops, p, t: ops.xent_combined(p, t, 1 / p.shape[0], binary=False)),
}

SGD_CASES = {
    "plain": dict(),
    "weight_decay": dict(weight_decay=0.1),
    "momentum": dict(momentum=0.9),
    "dampening": dict(momentum=0.8, dampening=0.3, weight_decay=0.01),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
}
ADAM_CASES = {
    "adam": dict(),
    "adam_l2": dict(weight_decay=0.1),
    "adamw": dict(weight_decay=0.05, decoupled=True),
    "amsgrad": dict(amsgrad=True, weight_decay=0.1),
    "adamw_amsgrad": dict(amsgrad=True, weight_decay=0.05, decoupled=True),
}
GRAD_SCALES = (3.0, 1.0, 0.1, 0.5)  # one optimizer step per scale; shrinking gradients make AMSGrad's max matter


# -- namespace-agnostic helpers (also used by tests/test_cuda.py) ----------------------------------------------------
def random_inputs(rng, shape, dtype, kind="normal", to_xp=np.asarray):
    """An array of ``shape``: ``"normal"`` (scale 3, led by 0, -0, 20, 20.5 (softplus's threshold), -20, +-30) or
    ``"unit"`` (in [0, 1], led by 0, 1, a denormal-size 1e-45 and 1 - 1e-7: log's clamp at -100), made on the host
    and moved by ``to_xp``."""
    if kind == "normal":
        a, special = 3 * rng.standard_normal(shape), [0.0, -0.0, 20.0, 20.5, -20.0, 30.0, -30.0]
    else:
        a, special = rng.uniform(0.0, 1.0, shape), [0.0, 1.0, 1e-45, 1 - 1e-7]
    flat = a.reshape(-1)
    flat[:len(special)] = special[:flat.size]
    return to_xp(a.astype(dtype))


def activation_inputs(rng, shape, dtype, to_xp=np.asarray):
    """``(z, b, dy)`` for the activation steps; ``b`` is 0 in the columns of ``z``'s leading special values, so that
    ``z + b`` keeps them."""
    b = random_inputs(rng, shape[1:], dtype)
    b[:7] = 0
    return random_inputs(rng, shape, dtype, to_xp=to_xp), to_xp(b), random_inputs(rng, shape, dtype, to_xp=to_xp)


def loss_inputs(rng, step, shape, dtype, to_xp=np.asarray):
    """``(prediction, target)`` for a loss step; targets in [0, 1] are flipped, so p = 0 meets t = 1 (and 1 meets 0)."""
    (pred_kind, target_kind), _ = LOSS_STEPS[step]
    target = random_inputs(rng, shape, dtype, target_kind)
    target = 1 - target if target_kind == "unit" else target
    return random_inputs(rng, shape, dtype, pred_kind, to_xp), to_xp(target)


def optimizer_inputs(rng, shape, dtype, to_xp=np.asarray):
    """``(p, grads)``: a parameter and one gradient per optimizer step."""
    return (random_inputs(rng, shape, dtype, to_xp=to_xp),
            [to_xp(s * random_inputs(rng, shape, dtype)) for s in GRAD_SCALES])


def assert_close(got, want, tol):
    """Same dtype and shape, values within ``tol[dtype]`` (NaN matches NaN)."""
    got, want = gn.to_numpy(got), gn.to_numpy(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, **tol[str(got.dtype)])


def _copy(xp, a):
    return xp.asarray(a, copy=True)


def compare_bias_act(ops, ref, activation, z, b, tol):
    """``bias_act`` works in place on ``z``: ``y`` is ``z`` itself, or ``z`` is kept (as ``z + b``) when backward
    needs it and ``y`` is new."""
    mine = _copy(ops.xp, z)
    got_z, got_y = ops.bias_act(mine, b, activation)
    want_z, want_y = ref.bias_act(_copy(ref.xp, z), b, activation)
    if activation.uses_input:
        assert got_z is mine and got_y is not mine
        assert_close(got_z, want_z, tol)
    else:
        assert got_z is None and got_y is mine
    assert_close(got_y, want_y, tol)


def compare_act_grad(ops, ref, activation, dy, z, tol):
    y = activation.forward(z)
    saved = z if activation.uses_input else None
    got = ops.act_grad(activation, _copy(ops.xp, dy), saved, y)
    assert_close(got, ref.act_grad(activation, _copy(ref.xp, dy), saved, y), tol)


def compare_loss(ops, ref, step, pred, target, tol):
    call = LOSS_STEPS[step][1]
    for got, want in zip(call(ops, pred, target), call(ref, pred, target), strict=True):
        assert_close(got, want, tol)


def compare_sgd(ops, ref, p, grads, tol, *, momentum=0.0, **hyper):
    """Steps of ``sgd_update`` from the same ``p``: ``p`` and the momentum buffer are updated in place (the buffer is
    new on the first step and returned again after), and match the reference after every step."""
    hyper = dict(lr=0.1, momentum=momentum, dampening=0.0, nesterov=False, weight_decay=0.0) | hyper
    p_ops, p_ref, buf_ops, buf_ref = _copy(ops.xp, p), _copy(ref.xp, p), None, None
    for g in grads:
        new_ops = ops.sgd_update(p_ops, g, buf_ops, **hyper)
        buf_ref = ref.sgd_update(p_ref, g, buf_ref, **hyper)
        assert_close(p_ops, p_ref, tol)
        if momentum:
            assert new_ops is not None and (buf_ops is None or new_ops is buf_ops)
            assert_close(new_ops, buf_ref, tol)
        else:
            assert new_ops is None
        buf_ops = new_ops


def compare_adam(ops, ref, p, grads, tol, *, amsgrad=False, **hyper):
    """Steps of ``adam_update`` (from step 1): ``p``, ``m``, ``v`` and ``vmax`` are updated in place and match."""
    hyper = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False) | hyper

    def fresh(xp):  # [p, m, v, vmax]
        return [_copy(xp, p), xp.zeros_like(p), xp.zeros_like(p), xp.zeros_like(p) if amsgrad else None]

    mine, want = fresh(ops.xp), fresh(ref.xp)
    for step, g in enumerate(grads, start=1):
        assert ops.adam_update(mine[0], g, *mine[1:], step=step, **hyper) is None
        ref.adam_update(want[0], g, *want[1:], step=step, **hyper)
        for got, expected in zip(mine, want):
            if expected is not None:
                assert_close(got, expected, tol)


# -- the fused steps against the reference, on the host -------------------------------------------------------------
@pytest.fixture(scope="module")
def host_ops():
    return CupyOps(anp, elementwise_kernel=HostElementwiseKernel)


@pytest.fixture
def counting_ops():
    """``(ops, declared)``: fresh host CupyOps whose kernel declarations are recorded by name."""
    declared = []

    def factory(*args, **kwargs):
        declared.append(kwargs["name"])
        return HostElementwiseKernel(*args, **kwargs)

    return CupyOps(anp, elementwise_kernel=factory), declared


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ELEMENTWISE, ids=repr)
def test_activation(host_ops, activation, dtype, rng):
    z, b, dy = activation_inputs(rng, (37, 11), dtype)
    compare_bias_act(host_ops, REFERENCE, activation, z, b, TOL)
    compare_act_grad(host_ops, REFERENCE, activation, dy, z, TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", sorted(LOSS_STEPS))
def test_loss(host_ops, step, dtype, rng):
    compare_loss(host_ops, REFERENCE, step, *loss_inputs(rng, step, (29, 7), dtype), TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_update(host_ops, case, dtype, rng):
    compare_sgd(host_ops, REFERENCE, *optimizer_inputs(rng, (13, 6), dtype), TOL, **SGD_CASES[case])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_update(host_ops, case, dtype, rng):
    compare_adam(host_ops, REFERENCE, *optimizer_inputs(rng, (13, 6), dtype), TOL, **ADAM_CASES[case])


def test_steps_without_kernels_fall_back_to_the_reference(counting_ops, rng):
    """RMSprop/Adagrad have no kernel, nor softmax's backward outside a step: the inherited reference runs, bit for
    bit. Softmax's forward is a row kernel (one thread per row), equal to the reference within rounding."""
    ops, declared = counting_ops
    softmax = activations.Softmax()
    z, b, dy = (random_inputs(rng, shape, "float64") for shape in [(9, 4), (4,), (9, 4)])
    _, y = ops.bias_act(z.copy(), b, softmax)
    np.testing.assert_allclose(y, REFERENCE.bias_act(z.copy(), b, softmax)[1], rtol=1e-15, atol=1e-17)
    assert declared == ["gpunet_bias_softmax_rows"]
    np.testing.assert_array_equal(ops.act_grad(softmax, dy.copy(), None, y),
                                  REFERENCE.act_grad(softmax, dy.copy(), None, y))
    declared.clear()
    params = []
    for impl in (ops, REFERENCE):
        p = z.copy()
        impl.rmsprop_update(p, dy, np.ones_like(p), None, None, lr=0.01, alpha=0.9, eps=1e-8, momentum=0.0,
                            weight_decay=0.0)
        impl.adagrad_update(p, dy, np.ones_like(p), step=2, lr=0.1, lr_decay=0.01, eps=1e-10, weight_decay=0.1)
        params.append(p)
    np.testing.assert_array_equal(*params)
    assert declared == []


# -- whole training runs ----------------------------------------------------------------------------------------------
# hidden activations, output activation, loss, optimizer factory, and the kernels the run must declare
TRAINING_CASES = {
    "relu+tanh/softmax-cce/sgd-nesterov": (
        ("relu", "tanh"), "softmax", "cce", lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
        {"relu_fwd", "relu_bwd", "tanh_fwd", "tanh_bwd", "bias_softmax_rows", "cce_softmax", "sgd_momentum_dev",
         "step_prepare"}),
    "gelu+leaky_relu/sigmoid-bce/adam": (
        ("gelu", "leaky_relu"), "sigmoid", "bce", lambda: optim.Adam(lr=0.01, weight_decay=1e-3),
        {"gelu_fwd_keep", "gelu_bwd", "leaky_relu_fwd", "sigmoid_fwd", "bce_sigmoid", "adam_dev"}),
    "silu+softplus/linear-huber/adamw-amsgrad": (
        ("silu", "softplus"), "linear", "huber", lambda: optim.AdamW(lr=0.01, amsgrad=True),
        {"silu_fwd_keep", "silu_bwd", "softplus_fwd_keep", "linear_fwd", "linear_bwd", "huber", "adam_amsgrad_dev_w"}),
    "elu+sigmoid/linear-bce_logits/sgd-dampening": (
        ("elu", "sigmoid"), "linear", losses.BinaryCrossEntropy(from_logits=True),
        lambda: optim.SGD(lr=0.2, momentum=0.5, dampening=0.2, weight_decay=1e-3),
        {"elu_fwd", "elu_bwd", "sigmoid_bwd", "bce_logits", "sgd_momentum_dev"}),
}


def training_problem(rng, loss, n=96, n_in=5):
    """``(X, y, n_outputs, metrics)`` for the loss: 3 classes for cce, one 0/1 output for bce, 2 outputs else."""
    X = rng.standard_normal((n, n_in))
    name = getattr(loss, "name", loss)
    if name == "cce":
        return X, np.argmax(X[:, :3] + 0.5 * rng.standard_normal((n, 3)), axis=1), 3, ["accuracy"]
    if name == "bce":
        return X, (X[:, 0] - X[:, 1] > 0).astype(float), 1, ["accuracy"]
    return X, np.stack([X[:, 0] * X[:, 1], np.sin(X[:, 2])], axis=1), 2, ["mae"]


def training_model(hidden, output, n_in, n_out, dtype, device="cpu", fused=False, ops=None):
    """A 3-layer model; with ``ops``, every layer (and so the losses and optimizers) computes with it instead."""
    model = gn.Sequential([gn.Dense(n_in, 8, hidden[0]), gn.Dense(8, 6, hidden[1]), gn.Dense(6, n_out, output)],
                          device=device, dtype=dtype, fused=fused, seed=0)
    for layer in model.layers if ops is not None else ():
        layer.ops = ops
    return model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_training_through_cupy_ops_matches_reference(counting_ops, case, dtype, rng):
    hidden, output, loss, make_optimizer, kernels = TRAINING_CASES[case]
    X, y, n_out, metrics = training_problem(rng, loss)
    ops, declared = counting_ops
    host = training_model(hidden, output, X.shape[1], n_out, dtype, ops=ops)
    reference = training_model(hidden, output, X.shape[1], n_out, dtype)
    assert host.ops is ops and reference.ops is ops_for(anp, fused=False)

    fit = dict(loss=loss, epochs=3, batch_size=32, validation_split=0.25, metrics=metrics)
    got = host.fit(X, y, optimizer=make_optimizer(), **fit).history
    want = reference.fit(X, y, optimizer=make_optimizer(), **fit).history
    assert {f"gpunet_{k}" for k in kernels} <= set(declared)
    # (val_loss of huber and bce-from-logits runs ops_for(numpy), not the model's ops, in both models: see
    # Huber.value / BinaryCrossEntropy.elementwise)
    assert got.keys() == want.keys() and len(got["loss"]) == 3
    for key in want:
        np.testing.assert_allclose(got[key], want[key], **TRAIN_TOL[dtype], err_msg=key)
    for w_got, w_want in zip(host.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(w_got, w_want, **TRAIN_TOL[dtype])


def test_kernels_are_declared_once(counting_ops, rng):
    ops, declared = counting_ops
    hidden, output, loss, make_optimizer, _ = TRAINING_CASES["gelu+leaky_relu/sigmoid-bce/adam"]
    X, y, n_out, _ = training_problem(rng, loss)
    model = training_model(hidden, output, X.shape[1], n_out, "float32", ops=ops)
    model.fit(X, y, loss=loss, optimizer=make_optimizer(), epochs=2)
    first = list(declared)
    assert first and len(set(first)) == len(first)
    assert all(re.fullmatch(r"gpunet_[a-z]+(_[a-z]+)*", name) for name in first), first
    assert {kernel.name for kernel in ops._kernels.values()} == set(first)
    assert all(kernel.name == f"gpunet_{step}" for step, kernel in ops._kernels.items())
    model.fit(X, y, epochs=2)  # the same loss and optimizer, state carried over
    model.predict(X)
    model.evaluate(X, y)
    assert declared == first


# -- the stand-in itself ----------------------------------------------------------------------------------------------
def test_stand_in_broadcasts_allocates_and_casts_scalars():
    kernel = HostElementwiseKernel("T x, T y, T s", "T z, T w", "z = x + y; w = x * y + s", name="add_mul")
    x, y = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, 1.5, 2.5], dtype=np.float32)
    z, w = kernel(x, y, 0.1)
    assert z.dtype == w.dtype == np.float32 and z.shape == w.shape == (2, 3)
    np.testing.assert_array_equal(z, x + y)
    np.testing.assert_array_equal(w, x * y + np.float32(0.1))  # the scalar is cast to T = float, as in CuPy


def test_stand_in_updates_outputs_in_place_and_takes_concrete_scalars():
    kernel = HostElementwiseKernel("T g, bool flip", "T p", "p = flip ? p + g : p - g", name="step")
    p, g = np.ones(4), np.arange(4.0)
    assert kernel(g, False, p) is p
    np.testing.assert_array_equal(p, 1 - g)
    kernel(g, True, p)
    np.testing.assert_array_equal(p, np.ones(4))


def test_stand_in_compiles_once_per_source():
    kernel = HostElementwiseKernel("T x", "T y", "y = x * x", name="square")
    kernel(np.ones(3))
    count = len(host_kernel._LIBRARIES)
    kernel(np.ones(5))
    HostElementwiseKernel("T x", "T y", "y = x * x", name="square")(np.ones(2))
    assert len(host_kernel._LIBRARIES) == count
    kernel(np.ones(3, dtype=np.float32))  # another T: another instantiation, as CuPy compiles per dtype
    assert len(host_kernel._LIBRARIES) == count + 1


def test_stand_in_poisons_outputs_it_allocates():
    """Reading an output that the caller did not pass reads NaN (on a GPU: whatever the memory held)."""
    assert np.isnan(HostElementwiseKernel("T x", "T y", "y = y + x", name="reads_y")(np.ones(3))).all()


@pytest.mark.parametrize("args, error, match", [
    ((np.ones(3, np.float32), np.ones(3)), TypeError, "type is mismatched"),
    ((np.ones(3),), TypeError, "wrong number of arguments"),
    ((np.ones(3), [1.0, 2.0, 3.0]), TypeError, "must be an array or a scalar"),
    ((np.ones(3), np.ones(3), np.ones(4)), ValueError, "cannot be broadcast"),
    ((np.ones((2, 3)), np.ones(3), np.ones((1, 3))), ValueError, "output 'z' is float64"),
    ((np.ones(3), np.ones(3), np.ones(3, np.float32)), TypeError, "type is mismatched: 'z'"),
    ((np.ones(3), np.ones(3), 0.0), TypeError, "must be an array"),
])
def test_stand_in_checks_calls(args, error, match):
    with pytest.raises(error, match=match):
        HostElementwiseKernel("T x, T y", "T z", "z = x + y", name="add")(*args)


@pytest.mark.parametrize("in_params, error", [
    ("T", ValueError), ("T x, T x", ValueError), ("T _x", ValueError),
])
def test_stand_in_checks_declarations(in_params, error):
    with pytest.raises(error):
        HostElementwiseKernel(in_params, "T z", "z = 0", name="bad")


def test_stand_in_raw_parameters_and_size():
    """``raw`` parameters are whole arrays indexed by flat C-order index (CuPy's ``CArray::operator[]``); ``size=``
    sets the loop when nothing is elementwise; raw outputs are read and written in place."""
    rows = HostElementwiseKernel("raw T z, int64 k", "raw T total", "for (int j = 0; j < k; ++j) total[i] += z[i * k + j]",
                                 name="row_sums")
    total = np.array([1.0, 2.0])
    rows(np.arange(6.0).reshape(2, 3), 3, total, size=2)
    np.testing.assert_array_equal(total, [1 + 0 + 1 + 2, 2 + 3 + 4 + 5])
    with pytest.raises(ValueError, match="loop size"):
        rows(np.arange(6.0), 3, total)
    with pytest.raises(ValueError, match="must be passed"):
        rows(np.arange(6.0), 3, size=2)
    gather = HostElementwiseKernel("raw T X, raw I order", "T x", "x = X[order[i]]", name="gather")
    np.testing.assert_array_equal(gather(np.array([5.0, 6.0, 7.0]), np.array([2, 0], np.int32), np.empty(2)), [7, 5])


def test_stand_in_half_types():
    """float16 and ml_dtypes' bfloat16 arrays: converted from float with round-to-nearest-even, as NumPy and
    ml_dtypes do (and CUDA's __float2half / __float2bfloat16)."""
    import ml_dtypes

    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100
    x[:4] = [1.00390625, 1.01171875, np.nan, np.inf]  # ties to even in bfloat16, NaN, inf
    for dtype in (np.float16, ml_dtypes.bfloat16):
        cast = HostElementwiseKernel("T x", "L y", "y = L(x)", name="cast")
        got = cast(x, np.empty(x.shape, dtype))
        np.testing.assert_array_equal(got.astype(np.float32), x.astype(dtype).astype(np.float32))
        back = HostElementwiseKernel("L y", "T x", "x = (T)(float)y", name="widen")(got, np.empty_like(x))
        np.testing.assert_array_equal(back, got.astype(np.float32))


@pytest.mark.parametrize("name", CupyOps.VECTOR_ACTIVATIONS)
def test_vectorised_bias_act_equals_the_elementwise_kernel(name):
    """kernels/vectorized.cuh (float4 loads and stores, a grid-stride loop) through a host stand-in for
    cupy.RawKernel: bit for bit the ElementwiseKernel's result, with fewer threads than vectors (the stride loop
    runs), a bias at an odd offset of a flat array (scalar bias loads), and the fallback where it does not apply."""
    from host_kernel import HostRawKernel

    activation = activations.get(name)
    vec = CupyOps(anp, elementwise_kernel=HostElementwiseKernel, raw_kernel=HostRawKernel)
    vec.vectorized, vec._sm_count = True, 1  # 8 blocks of 256 threads: 2048 threads for 3000 vectors
    plain = CupyOps(anp, elementwise_kernel=HostElementwiseKernel)
    rng = np.random.default_rng(1)
    flat = random_inputs(rng, (1 + 24,), "float32")
    b = flat[1:]  # 4 bytes past a 16-byte boundary
    z = random_inputs(rng, (500, 24), "float32")
    assert vec.vec4_applies(z, name)
    got, want = z.copy(), z.copy()
    vec.bias_act(got, b, activation)
    plain.bias_act(want, b, activation)
    np.testing.assert_array_equal(got, want)
    assert f"vec4_{name}" in vec._kernels
    odd = random_inputs(rng, (7, 6), "float32")
    assert not vec.vec4_applies(odd, name)
    got, want = odd.copy(), odd.copy()
    vec.bias_act(got, b[:6], activation)
    plain.bias_act(want, b[:6], activation)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_ops_into_workspaces_match_the_reference(dtype, rng):
    """What a step calls with a workspace (and a captured step must): each built-in loss with a kernel (value as
    a product with ones, gradient into the workspace), the bias gradient as a product, softmax's backward row
    kernel, accuracy's device counts: all equal the reference within rounding, written into the workspace."""
    import sys as _sys
    from pathlib import Path as _Path

    from gpunet import metrics
    from gpunet.backend.workspaces import Workspace

    _sys.path.insert(0, str(_Path(__file__).resolve().parent))
    from fake_cuda import FakeCuda

    fake = FakeCuda()
    ops = CupyOps(anp, elementwise_kernel=HostElementwiseKernel, gemm=fake.gemm())
    ws = Workspace(anp)
    tol = TRAIN_TOL[dtype]
    logits = random_inputs(rng, (13, 4), dtype) / 10
    probs = REFERENCE.bias_act(logits.copy(), np.zeros(4, dtype), activations.Softmax())[1]
    onehot = np.eye(4, dtype=dtype)[rng.integers(0, 4, 13)]
    cases = [(losses.CategoricalCrossEntropy(), probs, onehot, True), (losses.BinaryCrossEntropy(),
             1 / (1 + np.exp(-logits)), (onehot > 0).astype(dtype), True), (losses.MSE(), logits, onehot, False),
             (losses.MAE(), logits, onehot, False), (losses.Huber(0.3), logits, onehot, False),
             (losses.BinaryCrossEntropy(from_logits=True), logits, onehot, False)]
    for loss, pred, target, combined in cases:
        value, grad = ops.loss_and_grad(loss, pred, target, combined, ws)
        want_value, want_grad = REFERENCE.loss_and_grad(loss, pred, target, combined)
        assert grad is ws.like(("loss", "grad"), pred) and value.shape == ()
        np.testing.assert_allclose(value, want_value, **tol, err_msg=repr(loss))
        np.testing.assert_allclose(grad, want_grad, **tol, err_msg=repr(loss))
    out = np.empty(4, dtype)
    assert ops.sum_rows(logits, out, ws) is out
    np.testing.assert_allclose(out, logits.sum(axis=0), **tol)
    dy = random_inputs(rng, (13, 4), dtype)
    want = REFERENCE.act_grad(activations.Softmax(), dy.copy(), None, probs)
    got = dy.copy()
    assert ops.act_grad(activations.Softmax(), got, None, probs, ws) is got
    np.testing.assert_allclose(got, want, **tol)
    for pred, target, metric in [(probs, onehot, metrics.Accuracy()), (probs[:, :1], onehot[:, :1],
                                                                       metrics.Accuracy())]:
        total = np.zeros((1, 1))
        columns = pred.shape[1] == 1
        for _ in range(2):  # accumulated across batches
            ops.accuracy_into(pred, target, 0.5, columns, ws, total)
        assert total[0, 0] == 2 * metric.stats(pred, target)[0]
