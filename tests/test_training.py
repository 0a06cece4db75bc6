"""Training: a hand-derived backpropagation example, learning XOR, regression and classification problems, batch
modes and seeding, and the digits data set."""

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

import gpunet as gn


def host(a):
    return np.asarray(gn.to_numpy(a), dtype=np.float64)


# -- the seed example, derived by hand -------------------------------------------------------------------------------
# A 2-3-2 network of sigmoids. W1[i][j] joins input i to hidden neuron j; W2[j][k] joins hidden j to output k.
W1 = [[0.15, 0.25, 0.35],
      [0.20, 0.30, 0.40]]
B1 = [0.35, 0.30, 0.25]
W2 = [[0.40, 0.50],
      [0.45, 0.55],
      [0.60, 0.65]]
B2 = [0.60, 0.55]
X1, X2 = 0.05, 0.10
T1, T2 = 0.01, 0.99
LR = 0.5


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def hand_derived_example(W1=W1, B1=B1, W2=W2, B2=B2):
    """Forward pass, MSE loss, every gradient and one SGD(lr=0.5) step, neuron by neuron with scalars only."""
    # forward: hidden layer
    h1 = sigmoid(W1[0][0] * X1 + W1[1][0] * X2 + B1[0])
    h2 = sigmoid(W1[0][1] * X1 + W1[1][1] * X2 + B1[1])
    h3 = sigmoid(W1[0][2] * X1 + W1[1][2] * X2 + B1[2])
    # forward: output layer
    o1 = sigmoid(h1 * W2[0][0] + h2 * W2[1][0] + h3 * W2[2][0] + B2[0])
    o2 = sigmoid(h1 * W2[0][1] + h2 * W2[1][1] + h3 * W2[2][1] + B2[1])
    # loss: mean over the 2 outputs
    loss = ((o1 - T1) ** 2 + (o2 - T2) ** 2) / 2
    # dL/do_k = 2 (o_k - t_k) / 2; times the sigmoid's derivative o (1 - o) gives dL/dnet_k
    d_o1 = (o1 - T1) * o1 * (1 - o1)
    d_o2 = (o2 - T2) * o2 * (1 - o2)
    # output layer gradients: dL/dW2[j][k] = d_ok * h_j, dL/dB2[k] = d_ok
    gW2 = [[d_o1 * h1, d_o2 * h1],
           [d_o1 * h2, d_o2 * h2],
           [d_o1 * h3, d_o2 * h3]]
    gB2 = [d_o1, d_o2]
    # back to the hidden layer: dL/dh_j = sum_k d_ok W2[j][k], times h_j (1 - h_j)
    d_h1 = (d_o1 * W2[0][0] + d_o2 * W2[0][1]) * h1 * (1 - h1)
    d_h2 = (d_o1 * W2[1][0] + d_o2 * W2[1][1]) * h2 * (1 - h2)
    d_h3 = (d_o1 * W2[2][0] + d_o2 * W2[2][1]) * h3 * (1 - h3)
    # hidden layer gradients: dL/dW1[i][j] = d_hj * x_i, dL/dB1[j] = d_hj
    gW1 = [[d_h1 * X1, d_h2 * X1, d_h3 * X1],
           [d_h1 * X2, d_h2 * X2, d_h3 * X2]]
    gB1 = [d_h1, d_h2, d_h3]
    grads = [gW1, gB1, gW2, gB2]

    def sgd(p, g):  # p - lr g, elementwise over nested lists
        return [sgd(pi, gi) for pi, gi in zip(p, g)] if isinstance(p, list) else p - LR * g

    return {"hidden": [h1, h2, h3], "output": [o1, o2], "loss": loss, "grads": grads,
            "updated": [sgd(p, g) for p, g in zip([W1, B1, W2, B2], grads)]}


def _paths(p, prefix=()):
    """Index paths of every scalar in nested lists."""
    if not isinstance(p, list):
        return [prefix]
    return [path for i, q in enumerate(p) for path in _paths(q, prefix + (i,))]


def _with(p, path, value):
    """A copy of nested lists ``p`` with the scalar at ``path`` replaced."""
    if not path:
        return value
    return [_with(q, path[1:], value) if i == path[0] else q for i, q in enumerate(p)]


def _get(p, path):
    for i in path:
        p = p[i]
    return p


def test_hand_derivation_itself():
    """Guards the hand derivation, with no gpunet: its gradients are the finite differences of its own loss (pure
    Python), and its SGD step lowers the loss."""
    ref = hand_derived_example()
    params, h = [W1, B1, W2, B2], 1e-6
    for k, p in enumerate(params):
        for path in _paths(p):
            def loss_at(value):
                changed = params[:k] + [_with(p, path, value)] + params[k + 1:]
                return hand_derived_example(*changed)["loss"]

            x = _get(p, path)
            numeric = (loss_at(x + h) - loss_at(x - h)) / (2 * h)
            assert math.isclose(_get(ref["grads"][k], path), numeric, rel_tol=1e-7, abs_tol=1e-10)
    assert hand_derived_example(*ref["updated"])["loss"] < ref["loss"]


def test_seed_example_matches_hand_derivation(device, to_xp):
    ref = hand_derived_example()
    model = gn.Sequential([gn.Dense(2, 3, "sigmoid"), gn.Dense(3, 2, "sigmoid")], device=device, dtype="float64")
    model.set_weights([np.array(W1), np.array(B1), np.array(W2), np.array(B2)])
    x, target = to_xp([[X1, X2]]), to_xp([[T1, T2]])
    loss, optimizer = gn.losses.MSE(), gn.optim.SGD(lr=LR)

    np.testing.assert_allclose(host(model.layers[0].forward(x)), [ref["hidden"]], rtol=0, atol=1e-12)
    out = model(x)
    np.testing.assert_allclose(host(out), [ref["output"]], rtol=0, atol=1e-12)
    assert abs(float(loss(out, target)) - ref["loss"]) < 1e-12
    model.backward(loss.grad(out, target))
    for got, want in zip(model.gradients(), ref["grads"]):
        np.testing.assert_allclose(host(got), want, rtol=0, atol=1e-12)
    optimizer.step(model)
    for got, want in zip(model.get_weights(), ref["updated"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

    # fit's loop takes the very same step
    fitted = gn.Sequential([gn.Dense(2, 3, "sigmoid"), gn.Dense(3, 2, "sigmoid")], device=device, dtype="float64")
    fitted.set_weights([np.array(W1), np.array(B1), np.array(W2), np.array(B2)])
    history = fitted.fit([[X1, X2]], [[T1, T2]], loss="mse", optimizer=gn.optim.SGD(lr=LR), epochs=1)
    assert abs(history["loss"][0] - ref["loss"]) < 1e-12
    for got, want in zip(fitted.get_weights(), ref["updated"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# -- learning problems ----------------------------------------------------------------------------------------------
XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = np.array([0.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("loss, optimizer, epochs", [
    ("bce", lambda: gn.optim.SGD(lr=2.0, momentum=0.9), 200),
    ("mse", lambda: gn.optim.Adam(lr=0.1), 300),
])
def test_xor(device, loss, optimizer, epochs):
    model = gn.Sequential([gn.Dense(2, 3, "sigmoid"), gn.Dense(3, 1, "sigmoid")], device=device, dtype="float64",
                          seed=0)
    history = model.fit(XOR_X, XOR_Y, loss=loss, optimizer=optimizer(), epochs=epochs, batch_size=None,
                        metrics=["accuracy"])
    pred = host(model.predict(XOR_X)).ravel()
    assert np.all((pred > 0.5) == (XOR_Y > 0.5)), pred
    assert history["accuracy"][-1] == 1.0
    assert history["loss"][-1] < 0.1 * history["loss"][0]


def test_regression_sine(device):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=(300, 1))
    y = np.sin(x) + 0.1 * rng.normal(size=x.shape)  # noise caps the attainable R2 near 0.98
    model = gn.Sequential([gn.Dense(1, 16, "tanh"), gn.Dense(16, 1)], device=device, dtype="float64", seed=0)
    model.fit(x[:200], y[:200], loss="mse", optimizer=gn.optim.Adam(lr=0.02), epochs=60, batch_size=32)
    assert r2_score(y[200:], host(model.predict(x[200:]))) >= 0.95


def test_iris_three_classes(device):
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    model = gn.Sequential([gn.Dense(4, 16, "tanh"), gn.Dense(16, 3, "softmax")], device=device, dtype="float64",
                          seed=0)
    model.fit((X_train - mean) / std, y_train, loss="cce", optimizer=gn.optim.Adam(lr=0.05), epochs=100,
              batch_size=None)
    pred = host(model.predict((X_test - mean) / std)).argmax(axis=1)
    assert accuracy_score(y_test, pred) >= 0.93


@pytest.mark.slow
def test_digits_recipe_from_the_readme():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)
    model = gn.Sequential([gn.Dense(64, 128, "relu"), gn.Dense(128, 10, "softmax")], device="cpu",
                          dtype="float32", seed=0)
    model.fit(X_train, y_train, loss="cce", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=50,
              batch_size=32)
    pred = gn.to_numpy(model.predict(X_test)).argmax(axis=1)
    assert accuracy_score(y_test, pred) >= 0.965
    assert model.evaluate(X_test, y_test, metrics=["accuracy"])["accuracy"] == accuracy_score(y_test, pred)


# -- batch modes, shuffling and seeds -------------------------------------------------------------------------------
N_SAMPLES = 70


def small_problem():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N_SAMPLES, 3))
    return X, (X @ np.array([[1.0], [-2.0], [0.5]]) > 0).astype(float)


def small_model(device="cpu", seed=0):
    return gn.Sequential([gn.Dense(3, 4, "tanh"), gn.Dense(4, 1, "sigmoid")], device=device, dtype="float64",
                         seed=seed)


@pytest.mark.parametrize("batch_size, steps_per_epoch", [(None, 1), (1, N_SAMPLES), (32, 3), (70, 1), (500, 1)])
def test_optimizer_steps_per_epoch(device, batch_size, steps_per_epoch):
    X, y = small_problem()
    optimizer = gn.optim.SGD(lr=0.1)
    epochs = 2 if batch_size == 1 else 3
    history = small_model(device).fit(X, y, loss="bce", optimizer=optimizer, epochs=epochs, batch_size=batch_size)
    assert optimizer.steps == epochs * steps_per_epoch
    assert len(history["loss"]) == epochs


def test_minibatches_are_consecutive_slices_and_the_partial_batch_is_used(device):
    """fit(batch_size=32, shuffle=False) on 70 rows == train_on_batch on rows 0:32, 32:64, then 64:70."""
    X, y = small_problem()
    fitted, manual = small_model(device), small_model(device)
    fitted.fit(X, y, loss="bce", optimizer=gn.optim.SGD(lr=0.3), epochs=1, batch_size=32, shuffle=False)
    optimizer = gn.optim.SGD(lr=0.3)
    for start, stop in [(0, 32), (32, 64), (64, 70)]:
        manual.train_on_batch(X[start:stop], y[start:stop], "bce", optimizer)
    for a, b in zip(fitted.get_weights(), manual.get_weights()):
        np.testing.assert_array_equal(a, b)
    dropped = small_model(device)
    with pytest.warns(UserWarning, match="last updated another model"):  # (the same optimizer, afresh)
        for start, stop in [(0, 32), (32, 64)]:
            dropped.train_on_batch(X[start:stop], y[start:stop], "bce", optimizer)
    assert not np.array_equal(fitted.get_weights()[0], dropped.get_weights()[0])


def _fit_weights(model, shuffle, X, y, initial=None):
    if initial is not None:
        model.set_weights(initial)
    model.fit(X, y, loss="bce", optimizer=gn.optim.SGD(lr=0.2, momentum=0.5), epochs=3, batch_size=8,
              shuffle=shuffle)
    return model.get_weights()


def _identical(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))


def test_shuffling_and_seeds(device):
    X, y = small_problem()
    initial = small_model(seed=0).get_weights()
    # without shuffling the seed plays no part once the weights are the same
    assert _identical(_fit_weights(small_model(device, 0), False, X, y, initial),
                      _fit_weights(small_model(device, 1), False, X, y, initial))
    # with shuffling: the same seed gives bitwise the same run, another seed (same start) another order
    same_a = _fit_weights(small_model(device, 7), True, X, y, initial)
    same_b = _fit_weights(small_model(device, 7), True, X, y, initial)
    other = _fit_weights(small_model(device, 8), True, X, y, initial)
    unshuffled = _fit_weights(small_model(device, 7), False, X, y, initial)
    assert _identical(same_a, same_b)
    assert not _identical(same_a, other)
    assert not _identical(same_a, unshuffled)


def test_full_batch_ignores_shuffle(device):
    """Shuffling only reorders batches; with one full batch the result is the same as unshuffled (up to the
    summation order, which does not change either)."""
    X, y = small_problem()
    a, b = small_model(device, 3), small_model(device, 3)
    a.fit(X, y, loss="bce", optimizer="sgd", epochs=2, batch_size=None, shuffle=True)
    b.fit(X, y, loss="bce", optimizer="sgd", epochs=2, batch_size=None, shuffle=False)
    assert _identical(a.get_weights(), b.get_weights())


def test_same_seed_same_initial_weights_on_every_namespace(device):
    layers = lambda: [gn.Dense(5, 7, "relu"), gn.Dense(7, 3, "tanh"), gn.Dense(3, 2, "softmax")]  # noqa: E731
    reference = gn.Sequential(layers(), device="cpu", dtype="float64", seed=42).get_weights()
    here = gn.Sequential(layers(), device=device, dtype="float64", seed=42).get_weights()
    assert _identical(reference, here)
    assert all(w.dtype == np.float64 for w in here)
    single = gn.Sequential(layers(), device=device, dtype="float32", seed=42).get_weights()
    for w32, w64 in zip(single, reference):
        assert w32.dtype == np.float32
        np.testing.assert_array_equal(w32, w64.astype(np.float32))
    assert not _identical(reference, gn.Sequential(layers(), device="cpu", dtype="float64", seed=43).get_weights())


def test_initial_weights_follow_the_init_scheme():
    """Biases start at zero; "auto" draws He uniform for ReLU, Glorot uniform otherwise, within their limits."""
    model = gn.Sequential([gn.Dense(200, 300, "relu"), gn.Dense(300, 100, "tanh")], dtype="float64", seed=0)
    W1, b1, W2, b2 = model.get_weights()
    assert not b1.any() and not b2.any()
    he, glorot = math.sqrt(6 / 200), math.sqrt(6 / (300 + 100))
    for W, limit in [(W1, he), (W2, glorot)]:
        assert np.abs(W).max() <= limit
        assert np.abs(W).max() > 0.99 * limit
        assert abs(W.std() - limit / math.sqrt(3)) < 0.01 * limit
