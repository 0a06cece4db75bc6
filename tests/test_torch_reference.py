"""gpunet against PyTorch, its semantic reference, in float64 on NumPy.

Activations and losses are compared value and gradient (torch autograd) to 1e-12; optimizers and ``fit`` are
compared parameter by parameter after several steps to 1e-10. The torch side is written independently with
``torch.nn.functional`` and ``torch.optim`` on leaf tensors laid out as ``nn.Linear`` (weight = gpunet ``W.T``).
"""

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gpunet as gn  # noqa: E402
from gpunet import activations, losses, optim  # noqa: E402

SINGLE_OP = dict(rtol=1e-12, atol=1e-12)
TRAINING = dict(rtol=1e-10, atol=1e-10)

TORCH_ACTIVATIONS = {
    "linear": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, negative_slope=0.01),
    "elu": lambda z: F.elu(z, alpha=1.0),
    "softplus": lambda z: F.softplus(z, beta=1.0, threshold=20.0),
    "silu": F.silu,
    "gelu": lambda z: F.gelu(z, approximate="tanh"),
    "softmax": lambda z: F.softmax(z, dim=-1),
}


# -- helpers ----------------------------------------------------------------------------------------------------------
def t64(a, grad=False):
    """A float64 torch tensor copied from host data."""
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def host(a):
    """A NumPy array from a gpunet result or a torch tensor."""
    if isinstance(a, torch.Tensor):
        return a.detach().numpy()
    return np.asarray(gn.to_numpy(a))


def assert_close(actual, expected, tol=SINGLE_OP):
    actual, expected = host(actual), host(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **tol)


def torch_value_and_grad(fn, x):
    """``fn(x)`` and ``d fn / dx`` by torch autograd (``fn`` returns a scalar)."""
    xt = t64(x, grad=True)
    value = fn(xt)
    value.backward()
    return value, xt.grad


# -- 1. activations ---------------------------------------------------------------------------------------------------
EDGE_VALUES = [
    0.0, -0.0, 1e-9, -1e-9, 0.5, -0.5, 3.0, -3.0,
    19.5, 20.0, np.nextafter(20.0, 21.0), 20.5, 21.0, -20.5, 30.0, -30.0,
    50.0, -50.0, 700.0, -700.0, 1e4, -1e4, 1.0, -1.0,
]


def activation_inputs(rng):
    """Random pre-activations plus rows of edge values (zeros, softplus's threshold 20, +-50, +-700, +-1e4)."""
    edges = np.array(EDGE_VALUES).reshape(-1, 8)
    return np.concatenate([rng.normal(0.0, 3.0, size=(6, 8)), edges, edges[:, ::-1]])


def test_every_activation_has_a_torch_reference():
    assert set(TORCH_ACTIVATIONS) == set(activations.ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(activations.ACTIVATIONS))
def test_activation_forward_and_vjp_match_torch(name, rng):
    act = activations.get(name)
    z = activation_inputs(rng)
    dy = rng.normal(size=z.shape)

    zt = t64(z, grad=True)
    yt = TORCH_ACTIVATIONS[name](zt)
    yt.backward(t64(dy))

    y = act.forward(z.copy())
    assert_close(y, yt)
    assert_close(act.backward(dy, z, y), zt.grad)
    if not act.uses_input:  # documented: z may be None when the derivative is written from y
        assert_close(act.backward(dy, None, y), zt.grad)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu"])
def test_activation_derivative_at_zero_is_torchs(name):
    """Exactly 0: relu's derivative is 0, leaky_relu's the slope, elu's alpha, as in torch."""
    z = np.zeros((1, 3))
    dy = np.array([[1.0, -2.0, 3.0]])
    zt = t64(z, grad=True)
    TORCH_ACTIVATIONS[name](zt).backward(t64(dy))
    act = activations.get(name)
    assert_close(act.backward(dy, z, act.forward(z)), zt.grad)
    assert np.all(host(zt.grad) == {"relu": 0.0, "leaky_relu": 0.01, "elu": 1.0}[name] * dy)



@pytest.mark.parametrize("name", ["relu", "leaky_relu", "elu"])
def test_activation_derivative_with_infinities_is_torchs(name):
    """Infinite pre-activations and upstream gradients (no NaN: torch is not deterministic there, see
    tests/test_nonfinite.py): the reference and the NumPy ops give torch's values (relu: 0 wherever the output is
    <= 0, even for an infinite dy). Arrays longer than any vector width, so torch's vectorised path runs too."""
    from gpunet.backend import ops_for

    z = np.tile([[-1.0, -1.0, 0.0, 2.0, np.inf, -np.inf, 0.5, -3.0]], (1, 4))
    dy = np.tile([[np.inf, -np.inf, np.inf, np.inf, 3.0, -np.inf, -np.inf, 2.0]], (1, 4))
    zt = t64(z, grad=True)
    TORCH_ACTIVATIONS[name](zt).backward(t64(dy))
    act = activations.get(name)
    y = act.forward(z.copy())
    saved = z if act.uses_input else None
    with np.errstate(invalid="ignore"):  # elu at z = -inf: -inf * 0 is NaN in torch too
        assert_close(act.backward(dy.copy(), saved, y), zt.grad)
        assert_close(ops_for(np).act_grad(act, dy.copy(), saved, y), zt.grad)


# -- 2. losses --------------------------------------------------------------------------------------------------------
def check_loss(loss, pred, target, torch_loss, torch_target):
    """Value and gradient of ``loss`` against ``torch_loss(pred_tensor, torch_target)`` and autograd."""
    value, grad = torch_value_and_grad(lambda p: torch_loss(p, torch_target), pred)
    assert_close(loss(pred, target), value)
    assert_close(loss.grad(pred, target), grad)


def regression_data(rng, n=7, k=3):
    """Predictions and targets; residuals exactly 0 in a few places and a large magnitude."""
    pred = rng.normal(size=(n, k))
    target = rng.normal(size=(n, k))
    target[0, :] = pred[0, :]  # r = 0
    pred[1, 0], target[1, 0] = 1e4, -1e4
    return pred, target


REGRESSION = [
    pytest.param(losses.MSE(), torch.nn.MSELoss(), id="mse"),
    pytest.param(losses.MAE(), torch.nn.L1Loss(), id="mae"),
    *[pytest.param(losses.Huber(d), torch.nn.HuberLoss(delta=d), id=f"huber-{d}") for d in (0.5, 1.0, 2.0)],
]


@pytest.mark.parametrize("loss, torch_loss", REGRESSION)
def test_regression_loss_matches_torch(loss, torch_loss, rng):
    pred, target = regression_data(rng)
    check_loss(loss, pred, target, torch_loss, t64(target))


@pytest.mark.parametrize("loss, torch_loss", REGRESSION)
def test_single_output_with_flat_targets(loss, torch_loss, rng):
    pred, target = rng.normal(size=(9, 1)), rng.normal(size=9)
    check_loss(loss, pred, target, torch_loss, t64(target.reshape(-1, 1)))


def test_mae_gradient_is_zero_at_zero_residual(rng):
    pred = rng.normal(size=(4, 2))
    target = pred.copy()
    target[0, 0] += 1.0
    check_loss(losses.MAE(), pred, target, torch.nn.L1Loss(), t64(target))
    grad = host(losses.MAE().grad(pred, target))
    assert grad[0, 0] == -1.0 / 8 and np.all(grad.ravel()[1:] == 0.0)


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_at_residual_exactly_delta(delta):
    target = np.array([[0.25, 0.25, 0.25, 0.25, -1.0]])
    pred = target + np.array([[delta, -delta, 0.0, 3 * delta, -0.5 * delta]])
    assert np.all(np.abs(pred - target)[0, :2] == delta)  # exactly on the boundary
    check_loss(losses.Huber(delta), pred, target, torch.nn.HuberLoss(delta=delta), t64(target))


BCE_PROB = losses.BinaryCrossEntropy()
BCE_LOGITS = losses.BinaryCrossEntropy(from_logits=True)


@pytest.mark.parametrize("shape", [(8, 3), (8, 1)])
def test_bce_on_probabilities_matches_bceloss(shape, rng):
    pred = rng.uniform(0.01, 0.99, size=shape)
    target = rng.uniform(0.0, 1.0, size=shape)
    target[0, :] = np.round(target[0, :])  # hard labels too
    flat = target[:, 0] if shape[1] == 1 else target  # (n,) targets for a single output
    check_loss(BCE_PROB, pred, flat, torch.nn.BCELoss(), t64(target))


SATURATED_PRED = np.array([[0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 1e-300]])
SATURATED_TARGET = np.array([[0.0, 1.0, 0.0, 1.0, 0.5, 0.25, 1.0, 1.0]])


def test_bce_at_probabilities_exactly_zero_and_one():
    """torch clamps the logs at -100; away from the gradient's floor the gradients agree too."""
    pred, target = SATURATED_PRED, SATURATED_TARGET
    value, grad = torch_value_and_grad(lambda p: F.binary_cross_entropy(p, t64(target)), pred)
    assert_close(BCE_PROB(pred, target), value)
    unfloored = pred * (1 - pred) > 1e-6  # also where p - y == 0: a zero gradient whatever the floor
    unfloored |= pred == target
    assert_close(host(BCE_PROB.grad(pred, target))[unfloored], host(grad)[unfloored])


def test_bce_gradient_floor_matches_bceloss():
    """torch divides by max(p (1 - p), EPSILON) with EPSILON a C++ float: float32(1e-12) = 9.99999996e-13."""
    pred, target = SATURATED_PRED, SATURATED_TARGET
    _, grad = torch_value_and_grad(lambda p: F.binary_cross_entropy(p, t64(target)), pred)
    floor = float(np.float32(1e-12))
    assert_close(grad, (pred - target) / np.maximum(pred * (1 - pred), floor) / pred.size)  # torch's own formula
    assert_close(BCE_PROB.grad(pred, target), grad)


@pytest.mark.parametrize("shape", [(8, 3), (8, 1)])
def test_bce_with_logits_matches_bcewithlogitsloss(shape, rng):
    pred = rng.normal(0.0, 4.0, size=shape)
    pred[:4, 0] = [1e4, -1e4, 50.0, -50.0]
    target = rng.uniform(0.0, 1.0, size=shape)
    target[:2, 0] = [0.3, 1.0]
    flat = target[:, 0] if shape[1] == 1 else target
    check_loss(BCE_LOGITS, pred, flat, torch.nn.BCEWithLogitsLoss(), t64(target))
    assert np.isfinite(host(BCE_LOGITS(pred, flat))) and np.all(np.isfinite(host(BCE_LOGITS.grad(pred, flat))))


def classification_data(rng, n=10, k=4):
    logits = rng.normal(0.0, 2.0, size=(n, k))
    labels = rng.integers(0, k, size=n)
    labels[:k] = np.arange(k)  # every class appears
    return logits, labels, np.eye(k)[labels]


@pytest.mark.parametrize("target_form", ["indices", "one_hot"])
def test_cce_on_probabilities_matches_nllloss_of_log(target_form, rng):
    logits, labels, one_hot = classification_data(rng)
    prob = host(F.softmax(t64(logits), dim=-1))
    target = labels if target_form == "indices" else one_hot
    check_loss(losses.CategoricalCrossEntropy(), prob, target,
               lambda p, y: F.nll_loss(torch.log(p), y), torch.tensor(labels))


@pytest.mark.parametrize("target_form", ["indices", "one_hot", "probabilities", "rows_summing_to_1-5e-5"])
def test_cce_from_logits_matches_crossentropyloss(target_form, rng):
    logits, labels, one_hot = classification_data(rng)
    soft = host(F.softmax(t64(rng.normal(size=one_hot.shape)), dim=-1))
    near = soft * (1 - 5e-5)  # accepted (rows within 1e-4 of 1); torch's gradient is softmax * sum(y) - y
    target, torch_target = {
        "indices": (labels, torch.tensor(labels)),  # torch: class indices
        "one_hot": (one_hot, t64(one_hot)),  # torch: probability targets
        "probabilities": (soft, t64(soft)),
        "rows_summing_to_1-5e-5": (near, t64(near)),
    }[target_form]
    check_loss(losses.CategoricalCrossEntropy(from_logits=True), logits, target,
               torch.nn.CrossEntropyLoss(), torch_target)


@pytest.mark.parametrize("target_form", ["indices", "probabilities"])
def test_cce_from_logits_with_huge_spreads(target_form):
    logits = np.array([[1e4, -1e4, 0.0], [0.0, 1e4, -1e4], [-1e4, 0.0, 1e4], [5e3, 5e3, -1e4]])
    labels = np.array([0, 2, 1, 1])
    soft = np.array([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    target, torch_target = (labels, torch.tensor(labels)) if target_form == "indices" else (soft, t64(soft))
    check_loss(losses.CategoricalCrossEntropy(from_logits=True), logits, target,
               torch.nn.CrossEntropyLoss(), torch_target)


# -- networks on both sides -------------------------------------------------------------------------------------------
def make_model(sizes, acts, seed=0, fused=None):
    layers = [gn.Dense(a, b, act) for a, b, act in zip(sizes[:-1], sizes[1:], acts)]
    return gn.Sequential(layers, device="cpu", dtype="float64", seed=seed, fused=fused)


def torch_params(model):
    """Leaf tensors ``[weight1, bias1, ...]`` in ``nn.Linear`` layout, copied from the gpunet model."""
    return [t64(w.T if w.ndim == 2 else w, grad=True) for w in model.get_weights()]


def torch_forward(model, params, x, logits=False):
    """The gpunet model's forward pass in torch; ``logits=True`` stops before the last activation."""
    for i, layer in enumerate(model.layers):
        x = F.linear(x, params[2 * i], params[2 * i + 1])
        if not (logits and i == len(model.layers) - 1):
            x = TORCH_ACTIVATIONS[layer.activation.name](x)
    return x


def assert_same_parameters(model, params, tol=TRAINING):
    for mine, theirs in zip(model.get_weights(), params):
        assert_close(mine, theirs.T if theirs.ndim == 2 else theirs, tol)


# -- 3. optimizers ----------------------------------------------------------------------------------------------------
OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, lr_decay=0.01)),
]


def _case_id(case):
    name, kwargs = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else name


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference_ops"])
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=[_case_id(c) for c in OPTIMIZER_CASES])
def test_optimizer_steps_match_torch_optim(case, fused, rng):
    name, kwargs = case
    model = make_model([4, 6, 5, 2], ["tanh", "relu", None], seed=3, fused=fused)
    optimizer = getattr(optim, name)(**kwargs)
    params = torch_params(model)
    torch_optimizer = getattr(torch.optim, name)(params, **kwargs)
    loss = losses.MSE()
    for step in range(5):
        x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 2))
        if step % 2 == 0:
            value = model.train_on_batch(x, y, loss, optimizer)
        else:  # the low-level loop
            pred = model.forward(x)
            value = float(loss(pred, y))
            model.backward(loss.grad(pred, y))
            optimizer.step(model)

        torch_optimizer.zero_grad()
        torch_loss = F.mse_loss(torch_forward(model, params, t64(x)), t64(y))
        torch_loss.backward()
        torch_optimizer.step()

        assert value == pytest.approx(torch_loss.item(), rel=1e-10)
        assert_same_parameters(model, params)
    assert optimizer.steps == 5


# -- 4. training with fit ---------------------------------------------------------------------------------------------
def _mse(out, y):
    return F.mse_loss(out, y)


def _cross_entropy(logits, y):
    return F.cross_entropy(logits, y)


def _bce(prob, y):
    return F.binary_cross_entropy(prob, y)


def _huber(out, y):
    return F.huber_loss(out, y, delta=1.0)


def _l1(out, y):
    return F.l1_loss(out, y)


def fit_data(rng, kind, n=50, n_in=3, n_out=2):
    """``(X, gpunet targets, torch targets)`` for a regression/classification task."""
    X = rng.normal(size=(n, n_in))
    if kind == "regression":
        y = np.tanh(X @ rng.normal(size=(n_in, n_out))) + 0.1 * rng.normal(size=(n, n_out))
        return X, y, t64(y)
    if kind == "binary":
        y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float64)
        return X, y, t64(y.reshape(-1, 1))
    labels = rng.integers(0, n_out, size=n)
    if kind == "indices":
        return X, labels, torch.tensor(labels)
    one_hot = np.eye(n_out)[labels]  # kind == "one_hot": torch takes them as probability targets
    return X, one_hot, t64(one_hot)


FIT_CASES = {
    "tanh-mse-sgd_momentum": (["tanh", None], 2, "regression", losses.MSE(), _mse, False,
                              ("SGD", dict(lr=0.05, momentum=0.9))),
    "relu-softmax-cce_indices-adam": (["relu", "softmax"], 4, "indices", losses.CategoricalCrossEntropy(),
                                      _cross_entropy, True, ("Adam", dict(lr=0.01))),
    "sigmoid-bce-sgd_nesterov": (["tanh", "sigmoid"], 1, "binary", losses.BinaryCrossEntropy(), _bce, False,
                                 ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True))),
    "linear-cce_logits-adamw": (["gelu", None], 4, "one_hot", losses.CategoricalCrossEntropy(from_logits=True),
                                _cross_entropy, False, ("AdamW", dict(lr=0.01, weight_decay=0.05))),
    "elu-softplus-huber-rmsprop": (["elu", "softplus"], 2, "regression", losses.Huber(1.0), _huber, False,
                                   ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5))),
    "leaky_relu-mse-adagrad": (["leaky_relu", None], 2, "regression", losses.MSE(), _mse, False,
                               ("Adagrad", dict(lr=0.05, lr_decay=0.01))),
    # MAE's bias gradient is a sum of +-1/n that can cancel to 0 (torch) or to 1e-18 (gpunet, another summation
    # order); adaptive optimizers turn that rounding into a visible step, so MAE trains with plain SGD here.
    "silu-mae-sgd_dampening": (["silu", None], 2, "regression", losses.MAE(), _l1, False,
                               ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.2, weight_decay=0.01))),
}


@pytest.mark.parametrize("batch_size", [16, None], ids=["batch16", "full_batch"])
@pytest.mark.parametrize("case", list(FIT_CASES))
def test_fit_matches_a_torch_training_loop(case, batch_size, rng):
    acts, n_out, kind, loss, torch_loss, torch_on_logits, (opt_name, opt_kwargs) = FIT_CASES[case]
    X, y, y_torch = fit_data(rng, kind, n_out=n_out)
    model = make_model([3, 8, n_out], acts, seed=11)
    params = torch_params(model)
    torch_optimizer = getattr(torch.optim, opt_name)(params, **opt_kwargs)
    epochs, n = 3, X.shape[0]

    history = model.fit(X, y, loss=loss, optimizer=getattr(optim, opt_name)(**opt_kwargs), epochs=epochs,
                        batch_size=batch_size, shuffle=False)

    step = n if batch_size is None else batch_size
    Xt = t64(X)
    expected_losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, n, step):  # 16, 16, 16, 2: the last batch is partial
            xb, yb = Xt[start:start + step], y_torch[start:start + step]
            torch_optimizer.zero_grad()
            batch_loss = torch_loss(torch_forward(model, params, xb, logits=torch_on_logits), yb)
            batch_loss.backward()
            torch_optimizer.step()
            total += batch_loss.item() * xb.shape[0]
        expected_losses.append(total / n)

    assert_same_parameters(model, params)
    np.testing.assert_allclose(history["loss"], expected_losses, rtol=1e-10, atol=0)


# -- 5. whole-network gradient ----------------------------------------------------------------------------------------
NETWORKS = [
    pytest.param(["gelu", "silu", "softmax"], losses.MSE(), F.mse_loss, id="gelu-silu-softmax-mse"),
    pytest.param(["elu", "leaky_relu", "sigmoid"], losses.Huber(0.5),
                 lambda p, y: F.huber_loss(p, y, delta=0.5), id="elu-leaky_relu-sigmoid-huber"),
    pytest.param(["softplus", "relu", "tanh"], losses.MAE(), F.l1_loss, id="softplus-relu-tanh-mae"),
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference_ops"])
@pytest.mark.parametrize("acts, loss, torch_loss", NETWORKS)
def test_network_gradient_matches_autograd(acts, loss, torch_loss, fused, rng):
    model = make_model([5, 7, 6, 4], acts, seed=5, fused=fused)
    x, y = rng.normal(size=(9, 5)), rng.uniform(size=(9, 4))

    pred = model.forward(x.copy())
    dx = model.backward(loss.grad(pred, y))

    params, xt = torch_params(model), t64(x, grad=True)
    out = torch_forward(model, params, xt)
    torch_loss(out, t64(y)).backward()

    assert_close(pred, out)
    assert_close(dx, xt.grad)
    for mine, theirs in zip(model.gradients(), params):
        assert_close(mine, theirs.grad.T if theirs.ndim == 2 else theirs.grad)
