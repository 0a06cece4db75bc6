"""Dropout (``Dense(..., dropout=p)``): torch's inverted dropout in training, nothing at inference, seeded masks."""

import numpy as np
import pytest

import gpunet as gn
from gpunet import losses, optim

TOL = dict(rtol=1e-12, atol=1e-13)


def dropout_model(fused=None, device="cpu", seed=0, dtype="float64"):
    layers = [gn.Dense(4, 8, "relu", dropout=0.3), gn.Dense(8, 6, "tanh", dropout=0.5), gn.Dense(6, 3, "softmax")]
    return gn.Sequential(layers, device=device, dtype=dtype, seed=seed, fused=fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference_ops"])
def test_forward_and_backward_match_torch_with_the_same_masks(fused, rng):
    """The model's own masks, replayed in torch: ``y = act(x W + b) * noise`` per hidden layer; loss, input and
    parameter gradients agree to 1e-12."""
    torch = pytest.importorskip("torch")
    model = dropout_model(fused)
    x, labels = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    out = model.forward(model.xp.asarray(x), training=True)
    masks = [layer._cache[3] for layer in model.layers[:-1]]
    for mask, layer in zip(masks, model.layers):
        assert set(np.unique(mask)) <= {0.0, 1 / (1 - layer.dropout)}
    loss = losses.CategoricalCrossEntropy()
    dx = model.backward(loss.grad(out, labels))

    params = [torch.tensor(w.T if w.ndim == 2 else w, requires_grad=True) for w in model.get_weights()]
    xt = torch.tensor(x, requires_grad=True)
    h = xt
    for i, act in enumerate([torch.relu, torch.tanh]):
        h = act(torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])) * torch.tensor(masks[i])
    probs = torch.softmax(torch.nn.functional.linear(h, params[4], params[5]), dim=1)
    torch_loss = torch.nn.functional.nll_loss(torch.log(probs), torch.tensor(labels))
    torch_loss.backward()
    np.testing.assert_allclose(out, probs.detach().numpy(), **TOL)
    np.testing.assert_allclose(float(loss(out, labels)), torch_loss.item(), **TOL)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL)
    for mine, theirs in zip(model.gradients(), params):
        np.testing.assert_allclose(mine, (theirs.grad.T if theirs.ndim == 2 else theirs.grad).numpy(), **TOL)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_keep_one_minus_p_and_scale_by_its_inverse(p, dtype):
    model = gn.Sequential([gn.Dense(50, 200, "relu", dropout=p), gn.Dense(200, 1)], dtype=dtype, seed=1)
    model.forward(model.xp.ones((100, 50), dtype=model.xp.float32 if dtype == "float32" else model.xp.float64),
                  training=True)
    mask = model.layers[0]._cache[3]
    kept = mask != 0
    n = mask.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)  # 20000 draws: 5 sigma
    np.testing.assert_array_equal(mask[kept], np.asarray(1, dtype) / np.asarray(1 - p, dtype))


def test_inference_never_drops(rng):
    model = dropout_model()
    x = rng.normal(size=(7, 4))
    first = model.predict(x)
    np.testing.assert_array_equal(model.predict(x), first)
    np.testing.assert_array_equal(model.forward(x), first)
    h = x
    for layer in model.layers:  # by hand, no masks
        h = layer.activation.forward(h @ layer.W + layer.b)
    np.testing.assert_allclose(first, h, **TOL)
    trained = model.forward(x, training=True)
    assert not np.allclose(trained, first)
    again = model.forward(x, training=True)  # the public forward returns fresh arrays, not training workspaces
    assert not np.allclose(again, trained) and not np.shares_memory(again, trained)
    with pytest.raises(TypeError, match="training must be True or False"):
        model.forward(x, training="yes")


def fitted_weights(seed, fused=None, device="cpu"):
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(64, 4)), rng.integers(0, 3, 64)
    model = dropout_model(fused, device=device, seed=seed)
    model.fit(X, y, loss="cce", optimizer=optim.SGD(lr=0.1, momentum=0.9), epochs=3, batch_size=16)
    return model.get_weights()


def test_masks_are_seeded_and_the_same_on_every_ops_and_namespace():
    """The same seed draws the same masks: NumPy's in-place ops, the Array-API reference and array-api-strict
    (host draws, moved) train to the same weights; another seed trains elsewhere."""
    base = fitted_weights(0)
    others = [fitted_weights(0), fitted_weights(0, fused=False)]
    strict = pytest.importorskip("array_api_strict")
    others.append(fitted_weights(0, device=strict))
    for weights in others:
        for a, b in zip(base, weights):
            np.testing.assert_allclose(a, b, **TOL)
    assert not np.allclose(fitted_weights(1)[0], base[0])


@pytest.mark.parametrize("dropout, error", [(-0.1, ValueError), (1.0, ValueError), (float("nan"), ValueError),
                                            ("0.5", TypeError), (True, TypeError)])
def test_bad_dropout(dropout, error):
    with pytest.raises(error, match="dropout"):
        gn.Dense(3, 2, "relu", dropout=dropout)


def test_no_dropout_on_the_output_layer():
    with pytest.raises(ValueError, match="output layer cannot have dropout"):
        gn.Sequential([gn.Dense(3, 4, "relu"), gn.Dense(4, 2, "softmax", dropout=0.2)])


def test_dropout_is_saved_and_shown(tmp_path, capsys):
    model = dropout_model()
    assert repr(model.layers[0]) == "Dense(4, 8, activation='relu', dropout=0.3)"
    assert model.summary() is None and "0: Dense(relu, dropout=0.3)" in capsys.readouterr().out  # as Keras
    shown = []
    model.summary(print_fn=shown.append)
    assert len(shown) == 1 and shown[0].splitlines()[1].startswith("0: Dense(relu, dropout=0.3)")
    assert shown[0].splitlines()[-1] == f"total parameters: {model.count_params():,} (float64, on cpu)"
    assert capsys.readouterr().out == ""
    model.save(tmp_path / "m.safetensors")
    loaded = gn.load(tmp_path / "m.safetensors")
    assert [layer.dropout for layer in loaded.layers] == [0.3, 0.5, 0.0]


def test_dropout_still_learns_digits():
    """A wide network on digits with dropout 0.5 learns as well as without (test accuracy > 0.96 for both)."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    for dropout in (0.0, 0.5):
        model = gn.Sequential([gn.Dense(64, 256, "relu", dropout=dropout), gn.Dense(256, 10, "softmax")], seed=0)
        model.fit(X_train, y_train, loss="cce", optimizer=optim.Adam(lr=2e-3), epochs=15, batch_size=32)
        assert np.mean(np.argmax(model.predict(X_test), axis=1) == y_test) > 0.96, dropout


def test_dropout_on_every_device(device, rng):
    """NumPy, array-api-strict and CuPy (its masks drawn on the GPU): kept fraction, scale, no dropout at inference."""
    model = gn.Sequential([gn.Dense(20, 500, "relu", dropout=0.4), gn.Dense(500, 2)], device=device, seed=0)
    x = rng.normal(size=(64, 20))
    model.train_on_batch(x, rng.normal(size=(64, 2)), "mse", optim.SGD(lr=0.01))
    mask = gn.to_numpy(model.layers[0]._cache[3])
    assert abs((mask != 0).mean() - 0.6) < 5 * np.sqrt(0.24 / mask.size)
    np.testing.assert_allclose(mask[mask != 0], 1 / np.float32(0.6), rtol=1e-7)
    np.testing.assert_array_equal(gn.to_numpy(model.predict(x)), gn.to_numpy(model.predict(x)))


def test_resumed_training_with_dropout_matches_uninterrupted(tmp_path):
    """The dropout generator's state is saved with the model: 2 + 2 epochs through a file equal 4 epochs, bit for bit;
    restarting the masks from the seed does not."""
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(64, 4)), rng.integers(0, 3, 64)

    def run(model, epochs, **kwargs):
        model.fit(X, y, epochs=epochs, batch_size=16, **kwargs)
        return model

    straight = run(dropout_model(), 4, loss="cce", optimizer=optim.SGD(lr=0.1, momentum=0.9))
    run(dropout_model(), 2, loss="cce", optimizer=optim.SGD(lr=0.1, momentum=0.9)).save(tmp_path / "m.safetensors")
    resumed = run(gn.load(tmp_path / "m.safetensors"), 2)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    control = gn.load(tmp_path / "m.safetensors")
    control.trainer.dropout_rng = np.random.default_rng(control.trainer.seeds[1])  # the masks from the seed again
    run(control, 2)
    assert not np.array_equal(control.get_weights()[0], straight.get_weights()[0])


def test_roll_back_replays_the_same_masks():
    """A diverged epoch is rolled back and replayed: with dropout, the replay draws the masks the first pass drew,
    so the kept weights are those of the clean steps before the bad batch."""
    from gpunet.callbacks import NonFiniteLossError

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.normal(size=(64, 1))
    y[48:] = 1e300  # batch 4 of 4 overflows

    def model():
        return gn.Sequential([gn.Dense(4, 8, "tanh", dropout=0.5), gn.Dense(8, 1)], dtype="float64", seed=0)

    diverged = model()
    with pytest.raises(NonFiniteLossError):
        diverged.fit(X, y, loss="mse", optimizer=optim.SGD(lr=0.01), epochs=1, batch_size=16, shuffle=False)
    clean = model()  # the two steps before the batch whose loss was computed with the kept weights
    clean.fit(X[:32], y[:32], loss="mse", optimizer=optim.SGD(lr=0.01), epochs=1, batch_size=16, shuffle=False)
    for a, b in zip(diverged.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(a, b)
