"""Central finite-difference checks of every analytic gradient in gpunet, in float64, on every namespace.

Each check perturbs a host float64 copy one entry at a time, evaluates the scalar function on the ``device``
fixture's namespace (NumPy, array_api_strict, CuPy), and compares ``(f(x + h) - f(x - h)) / 2h`` with the analytic
gradient. Running on array_api_strict proves that the math uses only the Array API.
"""

import numpy as np
import pytest

import gpunet as gn
from gpunet import activations, losses

H = 1e-6  # central-difference step: truncation error ~H^2, rounding error ~1e-16 |f| / H
RTOL, ATOL = 1e-7, 5e-9  # ATOL: the rounding error of the quotient, ~eps |f| / H for |f| up to ~20


def numerical_gradient(f, x):
    """``df/dx`` of a scalar function ``f`` of a host float64 array, by central differences entry by entry."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        original = x[i]
        x[i] = original + H
        f_plus = f(x)
        x[i] = original - H
        f_minus = f(x)
        x[i] = original
        grad[i] = (f_plus - f_minus) / (2 * H)
    return grad


def assert_gradient(analytic, numeric):
    np.testing.assert_allclose(gn.to_numpy(analytic), numeric, rtol=RTOL, atol=ATOL)


# -- activations ----------------------------------------------------------------------------------------------------
def activation_input(name, rng):
    """A (4, 6) pre-activation with large and small values, away from the points where f' jumps."""
    z = rng.normal(0.0, 2.0, size=(4, 6))
    z[0, :3] = [-8.0, 7.5, 0.3]  # saturating sigmoid/tanh, small positive
    if name in ("relu", "leaky_relu", "elu"):
        z[np.abs(z) < 1e-2] += 0.05  # the kink at 0
    if name == "softplus":
        z[1, :4] = [19.5, 20.5, 25.0, -25.0]  # both sides of torch's threshold at 20, but not at it
    return z


@pytest.mark.parametrize("name", sorted(activations.ACTIVATIONS))
def test_activation_backward_matches_finite_differences(name, backend, to_xp, rng):
    act = activations.ACTIVATIONS[name]()
    z = activation_input(name, rng)
    dy = to_xp(rng.normal(size=z.shape))
    zx = to_xp(z)
    y = act.forward(zx)
    # activations that declare uses_input=False must not need z: layers pass None for it
    dz = act.backward(dy, zx if act.uses_input else None, y)

    def f(zh):
        return float(backend.xp.sum(dy * act.forward(to_xp(zh))))

    assert_gradient(dz, numerical_gradient(f, z))


# -- losses ---------------------------------------------------------------------------------------------------------
N, K = 5, 3


def _residuals(rng, away_from, margin=0.05):
    """(N, K) residuals of both signs and magnitudes around 1, none within ``margin`` of ``+-away_from``."""
    r = rng.uniform(0.1, 2.0, size=(N, K)) * rng.choice([-1.0, 1.0], size=(N, K))
    close = np.abs(np.abs(r) - away_from) < margin
    r[close] += 3 * margin * np.sign(r[close])
    return r


LABELS = np.array([0, 2, 1, 2, 0])
ONE_HOT = np.eye(K)[LABELS]


def _soft_rows(rng):
    t = rng.uniform(0.1, 1.0, size=(N, K))
    return t / t.sum(axis=1, keepdims=True)


CCE_TARGETS = {"index": lambda rng: LABELS, "onehot": lambda rng: ONE_HOT, "soft": _soft_rows}


def _loss_case(name, rng):
    """``(loss, pred, target)`` host arrays for one named case."""
    target = rng.normal(size=(N, K))
    if name == "mse":
        return losses.MSE(), rng.normal(size=(N, K)), target
    if name == "mae":
        return losses.MAE(), target + _residuals(rng, 0.0, margin=0.1), target
    if name == "huber":
        return losses.Huber(delta=0.7), target + _residuals(rng, 0.7), target
    if name.startswith("bce"):
        target = np.concatenate([rng.integers(0, 2, size=(N, 1)), rng.uniform(0, 1, size=(N, K - 1))], axis=1)
        if name == "bce":
            return losses.BinaryCrossEntropy(), rng.uniform(0.05, 0.95, size=(N, K)), target
        return losses.BinaryCrossEntropy(from_logits=True), rng.normal(0, 3, size=(N, K)), target
    make_target = CCE_TARGETS[name.split("-")[1]]
    if name.startswith("cce_logits"):
        return losses.CategoricalCrossEntropy(from_logits=True), rng.normal(0, 3, size=(N, K)), make_target(rng)
    return losses.CategoricalCrossEntropy(), rng.uniform(0.05, 0.95, size=(N, K)), make_target(rng)


LOSS_CASES = ["mse", "mae", "huber", "bce", "bce_logits", "cce-index", "cce-onehot", "cce-soft",
              "cce_logits-index", "cce_logits-onehot", "cce_logits-soft"]


def _target_xp(target, to_xp):
    return to_xp(target, "int64") if np.issubdtype(target.dtype, np.integer) else to_xp(target)


@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_grad_matches_finite_differences(case, to_xp, rng):
    loss, pred, target = _loss_case(case, rng)
    t = _target_xp(target, to_xp)
    grad = loss.grad(to_xp(pred), t)
    assert tuple(grad.shape) == pred.shape
    assert_gradient(grad, numerical_gradient(lambda p: float(loss(to_xp(p), t)), pred))


@pytest.mark.parametrize("case", LOSS_CASES)
def test_value_and_grad_agrees_with_call_and_grad(case, backend, to_xp, rng):
    """The (value, grad) pair fit uses, on a prepared target, equals the public ``loss(p, y)`` and ``loss.grad``."""
    loss, pred, target = _loss_case(case, rng)
    p, t = to_xp(pred), _target_xp(target, to_xp)
    prepared = backend.xp.astype(loss.prepare_target(t, K), backend.xp.float64)
    value, grad = loss.value_and_grad(p, prepared)
    np.testing.assert_allclose(float(value), float(loss(p, t)), rtol=1e-14)
    np.testing.assert_allclose(gn.to_numpy(grad), gn.to_numpy(loss.grad(p, t)), rtol=1e-14)


# -- combined output activation + loss gradients ---------------------------------------------------------------------
COMBINED = [
    pytest.param(losses.BinaryCrossEntropy, "sigmoid", (N, 1), "hard", id="bce-sigmoid-1"),
    pytest.param(losses.BinaryCrossEntropy, "sigmoid", (N, K), "soft", id="bce-sigmoid-multilabel"),
    pytest.param(losses.CategoricalCrossEntropy, "softmax", (N, K), "hard", id="cce-softmax-onehot"),
    pytest.param(losses.CategoricalCrossEntropy, "softmax", (N, K), "soft", id="cce-softmax-soft"),
]


@pytest.mark.parametrize("loss_cls, act_name, shape, kind", COMBINED)
def test_logits_grad_matches_finite_differences_through_activation(loss_cls, act_name, shape, kind, to_xp, rng):
    loss, act = loss_cls(), activations.get(act_name)
    assert loss.pairs_with == act_name
    z = rng.normal(0, 2, size=shape)
    if loss_cls is losses.BinaryCrossEntropy:
        target = rng.integers(0, 2, size=shape).astype(float) if kind == "hard" else rng.uniform(0, 1, size=shape)
    else:
        target = ONE_HOT if kind == "hard" else _soft_rows(rng)
    t = to_xp(target)
    prob = act(to_xp(z))
    value, grad = loss.value_and_logits_grad(prob, t)

    def f(zh):
        return float(loss(act(to_xp(zh)), t))

    np.testing.assert_allclose(float(value), f(z), rtol=1e-13)
    assert_gradient(grad, numerical_gradient(f, z))


# -- whole networks -------------------------------------------------------------------------------------------------
def _classes(rng, n, k):
    return rng.integers(0, k, size=n)


NETWORKS = {
    "tanh-gelu-softmax-cce": (
        lambda: [gn.Dense(3, 4, "tanh"), gn.Dense(4, 5, "gelu"), gn.Dense(5, 3, "softmax")],
        losses.CategoricalCrossEntropy(), lambda rng: _classes(rng, 6, 3)),
    "silu-sigmoid-bce": (
        lambda: [gn.Dense(3, 4, "silu"), gn.Dense(4, 2, "sigmoid")],
        losses.BinaryCrossEntropy(), lambda rng: rng.integers(0, 2, size=(6, 2)).astype(float)),
    "softplus-elu-linear-huber": (
        lambda: [gn.Dense(3, 5, "softplus"), gn.Dense(5, 4, "elu"), gn.Dense(4, 2)],
        losses.Huber(delta=0.5), lambda rng: rng.normal(0, 1.5, size=(6, 2))),
    "tanh-linear-cce_logits": (
        lambda: [gn.Dense(3, 4, "tanh"), gn.Dense(4, 3)],
        losses.CategoricalCrossEntropy(from_logits=True), lambda rng: _classes(rng, 6, 3)),
}


@pytest.fixture(params=sorted(NETWORKS))
def network(request, device, rng):
    """``(model, loss, X, y)``: a float64 model on the fixture's device with non-trivial biases."""
    make_layers, loss, make_target = NETWORKS[request.param]
    model = gn.Sequential(make_layers(), device=device, dtype="float64", seed=3)
    model.set_weights([w + (rng.normal(0, 0.3, size=w.shape) if w.ndim == 1 else 0) for w in model.get_weights()])
    return model, loss, rng.normal(size=(6, 3)), make_target(rng)


def _loss_at(model, loss, X, y):
    return float(loss(model.predict(X), y))


def test_network_parameter_and_input_gradients(network, to_xp):
    model, loss, X, y = network
    if isinstance(loss, losses.Huber):  # the check is only meaningful if both branches of Huber are used
        r = np.abs(gn.to_numpy(model.predict(X)) - y)
        assert (r < loss.delta).any() and (r > loss.delta).any()
        assert np.abs(r - loss.delta).min() > 1e-3
    x = to_xp(X)
    pred = model.forward(x)
    dx = model.backward(loss.grad(pred, y))
    analytic = [gn.to_numpy(g) for g in model.gradients()]

    weights = model.get_weights()
    for k, w in enumerate(weights):
        def f(wk, k=k):
            model.set_weights(weights[:k] + [wk] + weights[k + 1:])
            return _loss_at(model, loss, X, y)

        numeric = numerical_gradient(f, w)
        model.set_weights(weights)
        np.testing.assert_allclose(analytic[k], numeric, rtol=RTOL, atol=ATOL, err_msg=f"parameter {k}")
    assert tuple(dx.shape) == X.shape
    assert_gradient(dx, numerical_gradient(lambda xh: _loss_at(model, loss, xh, y), X))


def test_training_step_uses_the_true_gradient(network):
    """fit's own path (combined softmax/sigmoid + cross-entropy gradient, fused ops) takes ``w - lr * dL/dw``:
    one SGD(lr=1) step on the full batch recovers the finite-difference gradient."""
    model, loss, X, y = network
    before = model.get_weights()
    numeric = []
    for k, w in enumerate(before):
        def f(wk, k=k):
            model.set_weights(before[:k] + [wk] + before[k + 1:])
            return _loss_at(model, loss, X, y)

        numeric.append(numerical_gradient(f, w))
    model.set_weights(before)
    model.fit(X, y, loss=loss, optimizer=gn.optim.SGD(lr=1.0), epochs=1, batch_size=None, shuffle=False)
    for k, (w0, w1) in enumerate(zip(before, model.get_weights())):
        np.testing.assert_allclose(w0 - w1, numeric[k], rtol=RTOL, atol=ATOL, err_msg=f"parameter {k}")
