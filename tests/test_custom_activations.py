"""Custom activations and subclasses of the built-ins run their own math on every path.

Specialised ops (NumPy in place, the fused CUDA kernels) dispatch on what an activation's class declares
(:func:`gpunet.activations.builtin_kernel`), never on its name: a ReLU subclass clipping at 6 gives 6, not 10, and a
custom activation trains on the CuPy ops (here their host stand-in) through its own Python methods."""

import copy
import pickle
import sys
from pathlib import Path

import array_api_compat.numpy as anp
import numpy as np
import pytest

import gpunet as gn
from gpunet import activations
from gpunet.backend import Ops, ops_for
from gpunet.backend.cuda_ops import CupyOps

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_kernel import HostElementwiseKernel  # noqa: E402


class ReLU6(activations.ReLU):
    """min(max(z, 0), 6): keeps ReLU's name and backward's form, overrides the math."""

    def forward(self, z):
        return anp.minimum(anp.maximum(z, 0), 6.0)

    def backward(self, dy, z, y):
        return anp.where((y > 0) & (y < 6), dy, 0 * dy)


class Square(activations.Activation):
    name = "square"
    uses_input = True

    def forward(self, z):
        return z * z

    def backward(self, dy, z, y):
        return 2 * z * dy


class QuietSigmoid(activations.Sigmoid):
    """A subclass that changes nothing of the math keeps the built-in kernel."""

    def __repr__(self):
        return "QuietSigmoid()"


class FakeSoftmax(activations.Softmax):
    """Named softmax, but not softmax's math: must not pair with cce's combined gradient."""

    def forward(self, z):
        return activations.Sigmoid().forward(z)

    def backward(self, dy, z, y):
        return dy * y * (1 - y)


PATHS = {
    "reference": Ops(anp),
    "numpy": ops_for(np),
    "cupy_host": CupyOps(anp, elementwise_kernel=HostElementwiseKernel),
}


def test_builtin_kernel_follows_the_declaring_class():
    assert activations.builtin_kernel(activations.ReLU()) == "relu"
    assert activations.builtin_kernel(activations.LeakyReLU(0.2)) == "leaky_relu"
    assert activations.builtin_kernel(QuietSigmoid()) == "sigmoid"
    assert activations.builtin_kernel(ReLU6()) is None
    assert activations.builtin_kernel(Square()) is None
    assert activations.builtin_kernel(FakeSoftmax()) is None
    assert all(activations.builtin_kernel(cls()) == name for name, cls in activations.ACTIVATIONS.items())


@pytest.mark.parametrize("path", sorted(PATHS))
def test_relu6_clips_at_six_on_every_path(path):
    ops = PATHS[path]
    z = np.array([[10.0, -1.0, 3.0, 6.5]])
    _, y = ops.bias_act(z.copy(), np.zeros(4), ReLU6())
    np.testing.assert_array_equal(y, [[6.0, 0.0, 3.0, 6.0]])
    dz = ops.act_grad(ReLU6(), np.ones((1, 4)), None, y)
    np.testing.assert_array_equal(dz, [[0.0, 0.0, 1.0, 0.0]])


@pytest.mark.parametrize("path", sorted(PATHS))
def test_custom_activation_runs_its_own_math_on_every_path(path):
    ops = PATHS[path]
    z = np.array([[-3.0, 0.5, 2.0]])
    saved, y = ops.bias_act(z.copy(), np.array([1.0, 0.0, -1.0]), Square())
    np.testing.assert_array_equal(y, [[4.0, 0.25, 1.0]])
    np.testing.assert_array_equal(ops.act_grad(Square(), np.ones((1, 3)), saved, y), [[-4.0, 1.0, 2.0]])


@pytest.mark.parametrize("fused", [True, False])
def test_a_model_with_relu6_predicts_the_same_fused_or_not(fused):
    model = gn.Sequential([gn.Dense(1, 1, ReLU6(), init="zeros")], dtype="float64", fused=fused)
    model.set_weights([np.array([[1.0]]), np.array([0.0])])
    np.testing.assert_array_equal(model.predict([[10.0], [2.0]]), [[6.0], [2.0]])


def test_custom_activation_trains_through_the_cupy_ops(rng):
    """The whole loop on the CuPy ops' host stand-in equals the reference ops with a custom activation inside."""
    X, y = rng.normal(size=(48, 3)), rng.normal(size=(48, 1))
    weights = []
    for ops in (PATHS["cupy_host"], PATHS["reference"]):
        model = gn.Sequential([gn.Dense(3, 5, Square()), gn.Dense(5, 4, ReLU6()), gn.Dense(4, 1)], dtype="float64",
                              seed=0)
        for layer in model.layers:
            layer.ops = ops
        model.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.01, momentum=0.9), epochs=3, batch_size=16)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_fake_softmax_does_not_get_the_combined_gradient(rng):
    """A subclass named softmax whose math is not softmax would be trained with the wrong gradient by (p - y) / n:
    it gets a warning and the loss's own gradient instead, which finite differences confirm."""
    model = gn.Sequential([gn.Dense(3, 4, FakeSoftmax())], dtype="float64", seed=0)
    x, labels = rng.normal(size=(6, 3)), rng.integers(0, 4, 6)
    with pytest.warns(UserWarning, match="expects probabilities from a softmax output layer"):
        model.trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.1))
    assert model.trainer.combined is False
    xd, yd, _ = model.trainer.prepare(x, labels)
    _, grads = model.trainer.backward(model.trainer.forward(xd), yd)
    W = model.get_weights()[0]
    numeric = np.zeros_like(W)
    loss = gn.losses.get("cce")
    for i in np.ndindex(W.shape):
        for sign in (1, -1):
            shifted = W.copy()
            shifted[i] += sign * 1e-6
            model.set_weights([shifted, model.get_weights()[1]])
            numeric[i] += sign * float(loss(model.predict(x), labels)) / 2e-6
    np.testing.assert_allclose(grads[0], numeric, rtol=1e-6, atol=1e-8)


def test_models_with_custom_activations_copy_and_pickle(rng):
    model = gn.Sequential([gn.Dense(3, 5, ReLU6()), gn.Dense(5, 2, Square())], dtype="float64", seed=0)
    model.fit(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), loss="mse", optimizer="adam", epochs=2)
    x = rng.normal(size=(4, 3))
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(clone.layers[0].activation, ReLU6)
        np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    with pytest.raises(TypeError, match="cannot be rebuilt from a file"):  # the file format still refuses them
        model.save(Path("never-written.safetensors"))
