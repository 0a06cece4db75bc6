"""gpunet's one definition of non-finite values, held on every op and every path (the Array-API reference, the NumPy
ops, the CUDA kernels through their host stand-in):

- a NaN among the values an output element is computed from makes it NaN (forward: z; backward: dy and the saved
  y or z, which the identity's derivative does not read; softmax: a NaN anywhere in a row makes the row NaN);
- without a NaN among the inputs, no NaN appears where the math is defined (infinities give torch's values: the
  torch comparisons are in tests/test_torch_reference.py, which leave NaN out because torch's CPU kernels disagree
  with themselves there, e.g. ELU's backward returns dy or NaN depending on the array's length).
"""

import sys
from pathlib import Path

import array_api_compat.numpy as anp
import numpy as np
import pytest

from gpunet import activations, losses
from gpunet.backend import Ops, ops_for
from gpunet.backend.cuda_ops import CupyOps

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_kernel import HostElementwiseKernel  # noqa: E402

PATHS = {"reference": Ops(anp), "numpy": ops_for(np),
         "cupy_host": CupyOps(anp, elementwise_kernel=HostElementwiseKernel)}
ALL = [cls() for cls in activations.ACTIVATIONS.values()] + [activations.LeakyReLU(0.0), activations.ELU(0.3)]
# longer than any SIMD width, with NaN, infinities, zeros and both branches of every activation
BASE = np.array([-3.0, -0.0, 0.0, 0.5, 2.0, 25.0, -25.0, np.inf, -np.inf, 1e4, -1e4, 7.0, -0.3, 0.1, 3.0, -7.0])


def rows(dtype):
    """(z, dy) of shape (4, 16) and the masks of their NaNs: a NaN-free row, NaN in z, NaN in dy, NaN in both."""
    z = np.tile(BASE, (4, 1)).astype(dtype)
    dy = np.tile(np.roll(BASE, 5), (4, 1)).astype(dtype)
    dy[np.isinf(dy)] = 1.5  # infinite upstream gradients: torch's values, compared in test_torch_reference.py
    z[1, [0, 4, 9]] = np.nan
    dy[2, [2, 5, 11]] = np.nan
    z[3, 6], dy[3, 7] = np.nan, np.nan
    return z, dy


def assert_nan_exactly_where(actual, expected_nan, what):
    np.testing.assert_array_equal(np.isnan(actual), expected_nan, err_msg=f"{what}: NaN positions")


def expected_nan(activation, z, dy):
    """Where the definition puts NaN: at the NaN inputs (softmax: their rows), and where the math itself gives NaN
    on the same inputs with every NaN replaced by a number (0 * inf products such as ELU's at z = -inf)."""
    nan_z, nan_dy = np.isnan(z), np.isnan(dy)
    clean_z, clean_dy = np.where(nan_z, 1.0, z), np.where(nan_dy, 1.0, dy)
    clean_y = activation.forward(clean_z)
    reads_saved = not isinstance(activation, activations.Identity)  # its derivative, 1, reads neither y nor z
    forward = nan_z | np.isnan(clean_y)
    backward = (nan_z & reads_saved) | nan_dy | np.isnan(activation.backward(clean_dy, clean_z, clean_y))
    if not activation.elementwise:  # softmax couples a row
        forward, backward = (np.repeat(m.any(axis=1, keepdims=True), z.shape[1], axis=1) for m in (forward, backward))
    return forward, backward


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ALL, ids=repr)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_activations_nan_in_nan_out(path, activation, dtype):
    ops = PATHS[path]
    z, dy = rows(dtype)
    with np.errstate(all="ignore"):
        forward, backward = expected_nan(activation, z, dy)
        saved, y = ops.bias_act(z.copy(), np.zeros(z.shape[1], dtype), activation)
        dz = ops.act_grad(activation, dy.copy(), saved, y)
    assert_nan_exactly_where(y, forward, f"{activation!r} forward")
    assert_nan_exactly_where(dz, backward, f"{activation!r} backward")
    assert forward[1].any() and backward[2].any()  # the premise: NaNs to propagate


def test_the_math_gives_nan_only_at_infinities():
    """The other premise: on NaN-free inputs, an elementwise activation's own NaNs are 0 * inf products at
    z = +-inf (silu, gelu, leaky_relu(0) forward at -inf; elu's backward at -inf, silu's at +inf), nowhere else."""
    z, dy = rows("float64")
    with np.errstate(all="ignore"):
        for activation in (a for a in ALL if a.elementwise):
            forward, backward = expected_nan(activation, z[:1], dy[:1])
            assert set(np.flatnonzero(forward | backward)) <= set(np.flatnonzero(np.isinf(z[0]))), activation


LOSS_CASES = {
    "mse": (losses.MSE(), "normal"), "mae": (losses.MAE(), "normal"), "huber": (losses.Huber(0.5), "normal"),
    "bce": (losses.BinaryCrossEntropy(), "unit"), "bce_logits": (losses.BinaryCrossEntropy(from_logits=True), "normal"),
    "cce": (losses.CategoricalCrossEntropy(), "simplex"),
    "cce_logits": (losses.CategoricalCrossEntropy(from_logits=True), "normal"),
}


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_losses_nan_in_nan_out(case, rng):
    """A NaN prediction makes the loss and its gradient NaN (the clamped log of a NaN probability is NaN, not -100:
    it used to hide a NaN output behind a finite loss)."""
    loss, kind = LOSS_CASES[case]
    pred = {"normal": rng.normal(size=(5, 3)), "unit": rng.uniform(0.05, 0.95, (5, 3)),
            "simplex": rng.dirichlet(np.ones(3), 5)}[kind]
    target = rng.dirichlet(np.ones(3), 5) if loss.name == "cce" else rng.uniform(0, 1, (5, 3))
    assert np.isfinite(float(loss(pred, target))) and np.isfinite(loss.grad(pred, target)).all()
    pred[2, 1] = np.nan
    assert np.isnan(float(loss(pred, target)))
    grad = loss.grad(pred, target)
    assert np.isnan(grad[2, 1])
    if loss.name != "cce":  # elementwise losses: only that element's gradient
        assert np.isnan(grad).sum() == 1 or loss.from_logits


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("binary", [True, False])
def test_combined_cross_entropy_nan_in_nan_out(path, binary):
    ops = PATHS[path]
    p = np.array([[0.2, np.nan, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0]])
    t = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    loss, grad = ops.xent_combined(p, t, 0.5, binary)
    assert_nan_exactly_where(loss, np.isnan(p), "loss")
    assert_nan_exactly_where(grad, np.isnan(p), "gradient")
    assert loss[0, 2] == (100.0 if binary or t[0, 2] else 0.0)  # the clamp at -100 stays for p = 0


@pytest.mark.parametrize("path", sorted(PATHS))
def test_optimizer_updates_nan_in_nan_out(path):
    """A NaN gradient element makes that parameter NaN (and no other), for SGD with momentum and Adam."""
    ops = PATHS[path]
    g = np.full(40_000, 0.5)  # above the size where NumPy's updates take the BLAS path
    g[7] = np.nan
    p = np.ones_like(g)
    buf = ops.sgd_update(p, g, None, lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0)
    assert_nan_exactly_where(p, np.isnan(g), "sgd p")
    assert_nan_exactly_where(buf, np.isnan(g), "sgd momentum")
    p, m, v = np.ones_like(g), np.zeros_like(g), np.zeros_like(g)
    ops.adam_update(p, g, m, v, None, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False)
    for name, a in (("p", p), ("m", m), ("v", v)):
        assert_nan_exactly_where(a, np.isnan(g), f"adam {name}")
