"""Gradient clipping (``clipnorm``, ``clipvalue``, ``global_clipnorm`` on every optimizer) against
``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` called between ``backward()`` and ``step()``."""

import numpy as np
import pytest

import gpunet as gn
from gpunet import losses, optim

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-12)

# (optimizer, its hyperparameters, clipping keyword, value); the values bite: the gradients here have norms ~1-5
CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01), "global_clipnorm", 0.5),
    ("SGD", dict(lr=0.1), "global_clipnorm", 1e3),  # never active: plain SGD
    ("SGD", dict(lr=0.1, momentum=0.5), "clipnorm", 0.3),
    ("SGD", dict(lr=0.1, momentum=0.5), "clipvalue", 0.05),
    ("Adam", dict(lr=0.01, weight_decay=0.1), "global_clipnorm", 0.2),
    ("AdamW", dict(lr=0.01), "clipnorm", 0.1),
    ("RMSprop", dict(lr=0.01, momentum=0.5), "clipvalue", 0.02),
    ("Adagrad", dict(lr=0.1), "global_clipnorm", 0.4),
]


def torch_clip(params, keyword, value):
    if keyword == "global_clipnorm":
        torch.nn.utils.clip_grad_norm_(params, value)
    elif keyword == "clipnorm":
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], value)
    else:
        torch.nn.utils.clip_grad_value_(params, value)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference_ops"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[2]}={c[3]}" for c in CASES])
def test_clipped_steps_match_torch(case, fused, rng):
    name, hyper, keyword, value = case
    layers = [gn.Dense(4, 6, "tanh"), gn.Dense(6, 5, "relu"), gn.Dense(5, 2)]
    model = gn.Sequential(layers, device="cpu", dtype="float64", seed=3, fused=fused)
    twin = gn.Sequential([gn.Dense(4, 6, "tanh"), gn.Dense(6, 5, "relu"), gn.Dense(5, 2)], device="cpu",
                         dtype="float64", seed=3, fused=fused)  # trained by train_on_batch, the trainer's step
    optimizer = getattr(optim, name)(**hyper, **{keyword: value})
    twin_optimizer = getattr(optim, name)(**hyper, **{keyword: value})
    params = [torch.tensor(w.T if w.ndim == 2 else w, requires_grad=True) for w in model.get_weights()]
    torch_optimizer = getattr(torch.optim, name)(params, **hyper)
    for _ in range(4):
        x, y = rng.normal(size=(12, 4)), 3 * rng.normal(size=(12, 2))
        model.backward(losses.MSE().grad(model.forward(x), y))  # the public loop: gradients(), then step
        optimizer.step(model)
        twin.train_on_batch(x, y, losses.MSE(), twin_optimizer)

        torch_optimizer.zero_grad()
        out = torch.tensor(x)
        for i in range(3):
            out = F.linear(out, params[2 * i], params[2 * i + 1])
            out = torch.tanh(out) if i == 0 else F.relu(out) if i == 1 else out
        F.mse_loss(out, torch.tensor(y)).backward()
        torch_clip(params, keyword, value)
        for mine, theirs in zip(model.gradients(), params):  # the model's gradients are clipped in place too
            np.testing.assert_allclose(mine, (theirs.grad.T if theirs.ndim == 2 else theirs.grad).numpy(), **TOL)
        torch_optimizer.step()
        for mine, twins, theirs in zip(model.get_weights(), twin.get_weights(), params):
            np.testing.assert_allclose(mine, (theirs.T if theirs.ndim == 2 else theirs).detach().numpy(), **TOL)
            np.testing.assert_allclose(twins, mine, **TOL)


def test_global_clipnorm_by_hand():
    """Gradients (3, 4) and (12,): total norm 13, so a limit of 6.5 halves both (up to torch's 1e-6)."""
    model = gn.Sequential([gn.Dense(1, 2, "linear")], device="cpu", dtype="float64")
    model.layers[0].dW, model.layers[0].db = np.array([[3.0, 4.0]]), np.array([12.0, 0.0])
    optim.SGD(lr=1.0, global_clipnorm=6.5)._clip(model.gradients(), model.xp)
    np.testing.assert_allclose(model.layers[0].dW, [[1.5, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(model.layers[0].db, [6.0, 0.0], rtol=1e-6)


def test_clipping_runs_on_the_strict_namespace(rng):
    """Only standard functions (vector_norm, stack, clip) are used: array-api-strict trains to NumPy's weights."""
    array_api_strict = pytest.importorskip("array_api_strict")
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    weights = []
    for device in ("cpu", array_api_strict):
        model = gn.Sequential([gn.Dense(3, 4, "tanh"), gn.Dense(4, 1)], device=device, dtype="float64", seed=1)
        opt = optim.Adam(lr=0.05, clipnorm=0.1)
        for _ in range(3):
            model.train_on_batch(x, y, "mse", opt)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(clipnorm=0), ValueError, "clipnorm must be a finite number > 0"),
    (dict(clipvalue=-1.0), ValueError, "clipvalue must be a finite number > 0"),
    (dict(global_clipnorm=float("inf")), ValueError, "global_clipnorm"),
    (dict(clipnorm="1"), TypeError, "clipnorm"),
    (dict(clipnorm=1.0, clipvalue=0.5), ValueError, "at most one of clipnorm, clipvalue and global_clipnorm"),
    (dict(clip_norm=1.0), TypeError, "clip_norm"),
])
def test_bad_clipping_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        optim.SGD(lr=0.1, **kwargs)


def test_clipping_is_a_hyperparameter_only_when_set(tmp_path, rng):
    assert "clip" not in repr(optim.Adam())
    opt = optim.Adam(lr=0.01, global_clipnorm=2.0)
    assert repr(opt) == ("Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False, "
                         "global_clipnorm=2.0)")
    model = gn.Sequential([gn.Dense(3, 2)], device="cpu", seed=0)
    model.train_on_batch(rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), "mse", opt)
    state = opt.state_dict()
    again = optim.Adam()
    again.load_state_dict(state, model)
    assert again.global_clipnorm == 2.0 and again.clipnorm is None and repr(again) == repr(opt)
    clipped_the_other_way = optim.Adam(clipvalue=0.5)  # loading replaces every clipping keyword
    clipped_the_other_way.load_state_dict(state, model)
    assert clipped_the_other_way.global_clipnorm == 2.0 and clipped_the_other_way.clipvalue is None
    plain = optim.Adam(lr=0.01)
    unclipped = optim.Adam(global_clipnorm=1.0)
    unclipped.load_state_dict(plain.state_dict(), model)
    assert unclipped.global_clipnorm is None and "clip" not in repr(unclipped)
