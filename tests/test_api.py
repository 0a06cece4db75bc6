"""The public API: argument checking (exception type and a message naming the argument), weights in and out,
moving between namespaces, predict/evaluate/History, metrics against scikit-learn, and the low-level loop."""

import contextlib
import math
import re
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

import gpunet as gn

rng0 = np.random.default_rng(0)
X = rng0.normal(size=(12, 4))
LABELS = np.arange(12) % 3
BINARY = (X[:, 0] > 0).astype(float)


def classifier(device="cpu", dtype="float64"):
    return gn.Sequential([gn.Dense(4, 5, "tanh"), gn.Dense(5, 3, "softmax")], device=device, dtype=dtype, seed=0)


def binary_model(device="cpu", dtype="float64"):
    return gn.Sequential([gn.Dense(4, 3, "tanh"), gn.Dense(3, 1, "sigmoid")], device=device, dtype=dtype, seed=0)


def with_value(a, index, value):
    a = np.array(a, dtype=float)
    a[index] = value
    return a


def assert_rejected(model, call, exc, match):
    """``call()`` raises ``exc`` matching ``match`` and leaves the model's weights bitwise unchanged."""
    before = model.get_weights()
    with pytest.raises(exc, match=match):
        call()
    for a, b in zip(before, model.get_weights()):
        assert a.tobytes() == b.tobytes()


# -- construction ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, match", [
    (lambda: gn.Dense(0, 3), ValueError, "in_features must be a positive integer; received in_features=0"),
    (lambda: gn.Dense(4, -1), ValueError, "out_features must be a positive integer"),
    (lambda: gn.Dense(4.0, 3), TypeError, "in_features must be a positive integer; received float"),
    (lambda: gn.Dense(True, 3), TypeError, "in_features"),
    (lambda: gn.Dense(4, "3"), TypeError, "out_features"),
    (lambda: gn.Dense(4, 3, "swishy"), ValueError, r"unknown activation 'swishy'; expected one of \['elu', 'gelu'"),
    (lambda: gn.Dense(4, 3, activation=5), TypeError, "activation must be a name"),
    (lambda: gn.Dense(4, 3, init="orthogonal"), ValueError, r"unknown init 'orthogonal'; expected one of \['auto'"),
    (lambda: gn.Dense(4, 3, init=None), TypeError, "init must be one of"),
    (lambda: gn.Sequential([]), TypeError, "layers must be a non-empty list"),
    (lambda: gn.Sequential("dense"), TypeError, "layers must be a non-empty list"),
    (lambda: gn.Sequential([gn.Dense(4, 3), "x"]), TypeError, r"layers\[1\] must be a gpunet.Dense"),
    (lambda: gn.Sequential([gn.Dense(4, 3), gn.Dense(2, 1)]), ValueError,
     r"layer sizes do not chain: layers\[0\] has out_features=3 but layers\[1\] has in_features=2"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], dtype="float16"), ValueError,
     r"unknown dtype 'float16'; expected one of \['float32', 'float64'\]"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], dtype=np.float32), TypeError, "dtype must be one of"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], device="gpu"), ValueError,
     "device must be 'cpu', 'cuda', 'cuda:N', 'auto' or an Array API namespace module; received device='gpu'"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], device="cuda:x"), ValueError, "device must be 'cuda' or 'cuda:N'"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], device=3), TypeError, "device must be"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], seed=1.5), TypeError, "seed must be a non-negative integer"),
    (lambda: gn.Sequential([gn.Dense(4, 3)], fused="yes"), TypeError, "fused must be True, False or None"),
])
def test_construction_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_same_dense_twice_is_refused():
    layer = gn.Dense(3, 3)
    with pytest.raises(ValueError, match="layers must be distinct"):
        gn.Sequential([layer, layer])


@pytest.mark.parametrize("make, exc, match", [
    (lambda: gn.optim.SGD(lr=-1), ValueError, r"lr must be in \[0.0, inf\); received lr=-1"),
    (lambda: gn.optim.Adam(lr=math.nan), ValueError, "lr must be finite"),
    (lambda: gn.optim.RMSprop(lr=math.inf), ValueError, "lr must be finite"),
    (lambda: gn.optim.Adagrad(lr="0.1"), TypeError, "lr must be a real number"),
    (lambda: gn.optim.SGD(momentum=1.0), ValueError, r"momentum must be in \[0.0, 1.0\); received momentum=1.0"),
    (lambda: gn.optim.SGD(momentum=-0.1), ValueError, "momentum must be in"),
    (lambda: gn.optim.SGD(lr=0.1, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (lambda: gn.optim.SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening = 0"),
    (lambda: gn.optim.Adam(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0.0, 1.0\)"),
    (lambda: gn.optim.AdamW(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in"),
    (lambda: gn.optim.Adam(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    (lambda: gn.optim.Adam(betas=0.9), TypeError, "betas must be a pair"),
    (lambda: gn.optim.Adam(eps=-1e-8), ValueError, "eps must be in"),
    (lambda: gn.optim.AdamW(weight_decay=-0.01), ValueError, "weight_decay must be in"),
    (lambda: gn.optim.RMSprop(alpha=1.0), ValueError, "alpha must be in"),
    (lambda: gn.optim.Adagrad(lr_decay=-1), ValueError, "lr_decay must be in"),
    (lambda: gn.losses.Huber(delta=0), ValueError, "delta must be a finite number > 0"),
    (lambda: gn.losses.BinaryCrossEntropy(from_logits=1), TypeError, "from_logits must be True or False"),
    (lambda: gn.activations.LeakyReLU(negative_slope=1.5), ValueError, "negative_slope"),
    (lambda: gn.activations.ELU(alpha=0), ValueError, "alpha must be a positive"),
])
def test_hyperparameter_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# -- bad input to fit / predict / evaluate --------------------------------------------------------------------------
BAD_X = [
    pytest.param(X[:, :3], ValueError, "X has 3 features per sample but the model expects 4", id="3-features"),
    pytest.param(X[0], ValueError, r"X must be 2-D \(n_samples, n_features=4\); received shape \(4,\)", id="1-D"),
    pytest.param(X[None], ValueError, "X must be 2-D", id="3-D"),
    pytest.param(X[:0], ValueError, r"X must not be empty; received shape \(0, 4\)", id="empty"),
    pytest.param(with_value(X, (2, 1), np.nan), ValueError, r"X must be finite; X\[2, 1\] = nan", id="nan"),
    pytest.param(with_value(X, (5, 3), -np.inf), ValueError, r"X must be finite; X\[5, 3\] = -inf", id="inf"),
    pytest.param(X.astype(complex), TypeError, "X must be real-valued", id="complex"),
    pytest.param(X.astype(object), TypeError, "X must be a numeric array", id="object"),
    pytest.param(X.astype(str), TypeError, "X must be a numeric array", id="string"),
    pytest.param([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], TypeError, "X must be a numeric array", id="ragged"),
]


@pytest.mark.parametrize("bad, exc, match", BAD_X)
@pytest.mark.parametrize("method", ["fit", "train_on_batch", "predict", "evaluate"])
def test_bad_features_are_refused(method, bad, exc, match):
    model = classifier()
    y = LABELS[: len(bad)] if isinstance(bad, np.ndarray) and bad.ndim == 2 else LABELS
    call = {
        "fit": lambda: model.fit(bad, y, loss="cce"),
        "train_on_batch": lambda: model.train_on_batch(bad, y, "cce", "sgd"),
        "predict": lambda: model.predict(bad),
        "evaluate": lambda: model.evaluate(bad, y, loss="cce"),
    }[method]
    match = match.replace("X", "x") if method == "train_on_batch" else match
    assert_rejected(model, call, exc, match)


BAD_CCE_Y = [
    pytest.param(with_value(LABELS, 4, -1), ValueError, r"y holds class indices, which must be in \[0, 2\].*found -1",
                 id="negative-label"),
    pytest.param(with_value(LABELS, 4, 1.5), ValueError, "y holds class indices, which must be whole numbers",
                 id="fractional-label"),
    pytest.param(with_value(LABELS, 4, 3), ValueError, r"must be in \[0, 2\] for a model with 3 outputs; found 3",
                 id="label-too-large"),
    pytest.param(LABELS[:5], ValueError, "X has 12 samples but y has 5", id="length-mismatch"),
    pytest.param(np.eye(4)[LABELS], ValueError, r"y for categorical cross-entropy must be class indices \(n,\) or "
                 r"one-hot/probability rows \(n, 3\); received shape \(12, 4\)", id="one-hot-too-wide"),
    pytest.param(np.eye(3)[LABELS] * 0.5, ValueError, "y rows must sum to 1", id="rows-not-summing-to-1"),
    pytest.param(np.eye(3)[LABELS] * 2 - 0.5, ValueError, r"y rows must be probabilities in \[0, 1\]",
                 id="rows-outside-0-1"),
    pytest.param(with_value(LABELS, 0, np.nan), ValueError, r"y must be finite; y\[0\] = nan", id="nan"),
    pytest.param(with_value(LABELS, 0, np.inf), ValueError, "y must be finite", id="inf"),
    pytest.param(LABELS.astype(complex), TypeError, "y must be real-valued", id="complex"),
    pytest.param(LABELS.astype(str), TypeError, "y must be a numeric array", id="string"),
    pytest.param(LABELS[:, None, None], ValueError, "y for categorical cross-entropy must be", id="3-D"),
]


@pytest.mark.parametrize("bad, exc, match", BAD_CCE_Y)
@pytest.mark.parametrize("method", ["fit", "evaluate", "validation_data"])
def test_bad_class_targets_are_refused(method, bad, exc, match):
    model = classifier()
    call = {
        "fit": lambda: model.fit(X, bad, loss="cce"),
        "evaluate": lambda: model.evaluate(X, bad, loss="cce"),
        "validation_data": lambda: model.fit(X, LABELS, loss="cce", validation_data=(X, bad)),
    }[method]
    if method == "validation_data":  # the message names the argument: validation_data[0] / [1] instead of X / y
        match = re.sub(r"\by\b", r"validation_data\\[1\\]", match.replace("X has", r"validation_data\[0\] has"))
    assert_rejected(model, call, exc, match)


@pytest.mark.parametrize("bad, match", [
    pytest.param(with_value(BINARY, 3, 1.5), r"y for binary cross-entropy must lie in \[0, 1\]", id="above-1"),
    pytest.param(with_value(BINARY, 3, -0.5), r"y for binary cross-entropy must lie in \[0, 1\]", id="below-0"),
    pytest.param(np.stack([BINARY, BINARY], axis=1), r"y must have shape \(n, 1\) to match the model's 1 output",
                 id="two-columns"),
])
def test_bad_binary_targets_are_refused(bad, match):
    model = binary_model()
    assert_rejected(model, lambda: model.fit(X, bad, loss="bce"), ValueError, match)


@pytest.mark.parametrize("name", ["batch_size", "epochs"])
@pytest.mark.parametrize("value, exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                        ("32", TypeError)])
def test_bad_batch_size_and_epochs(name, value, exc):
    model = classifier()
    assert_rejected(model, lambda: model.fit(X, LABELS, loss="cce", **{name: value}), exc,
                    f"{name} must be a positive integer")
    if name == "batch_size":
        with pytest.raises(exc, match="batch_size must be a positive integer"):
            model.predict(X, batch_size=value)
        with pytest.raises(exc, match="batch_size must be a positive integer"):
            model.evaluate(X, LABELS, loss="cce", batch_size=value)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(loss="hinge"), ValueError, r"unknown loss 'hinge'; expected one of \['bce', 'cce', 'huber', 'mae', 'mse'\]"),
    (dict(loss=5), TypeError, "loss must be a name or a gpunet.losses.Loss"),
    (dict(optimizer="lbfgs"), ValueError,
     r"unknown optimizer 'lbfgs'; expected one of \['adagrad', 'adam', 'adamw', 'rmsprop', 'sgd'\]"),
    (dict(optimizer=0.1), TypeError, "optimizer must be a name or a gpunet.optim.Optimizer"),
    (dict(metrics=["auc"]), ValueError,
     r"unknown metric 'auc'; expected one of \['accuracy', 'f1', 'mae', 'mse', 'precision', 'r2', 'recall'\]"),
    (dict(metrics=[len]), TypeError, "metrics must be names"),
    (dict(shuffle=1), TypeError, "shuffle must be True or False"),
    (dict(validation_data=X), TypeError, r"validation_data must be a pair \(X_val, y_val\)"),
    (dict(validation_data=(X[:, :2], LABELS)), ValueError, r"validation_data\[0\] has 2 features"),
])
def test_bad_fit_options(kwargs, exc, match):
    model = classifier()
    assert_rejected(model, lambda: model.fit(X, LABELS, **{"loss": "cce", **kwargs}), exc, match)


def test_evaluate_needs_a_loss_before_any_fit():
    with pytest.raises(ValueError, match="evaluate\\(\\) needs loss="):
        classifier().evaluate(X, LABELS)


def test_arrays_of_another_namespace_are_refused():
    xps = pytest.importorskip("array_api_strict")
    model = classifier()
    assert_rejected(model, lambda: model.predict(xps.asarray(X)), TypeError,
                    "X is a array_api_strict array but the model runs on cpu")


def test_torch_tensor_is_refused_by_a_cpu_model():
    torch = pytest.importorskip("torch")
    model = classifier()
    tensor = torch.tensor(X)
    for call in (lambda: model.fit(tensor, LABELS, loss="cce"), lambda: model.predict(tensor),
                 lambda: model.evaluate(tensor, LABELS, loss="cce")):
        assert_rejected(model, call, TypeError, r"X is a torch array but the model runs on cpu \(numpy\)")
    assert_rejected(model, lambda: model.fit(X, torch.tensor(LABELS), loss="cce"), TypeError, "y is a torch array")


# -- weights --------------------------------------------------------------------------------------------------------
def test_get_weights_returns_host_copies(device):
    model = classifier(device)
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(4, 5), (5,), (5, 3), (3,)]
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float64 for w in weights)
    reference = [w.copy() for w in weights]
    for w in weights:
        w += 1.0
    for a, b in zip(model.get_weights(), reference):
        np.testing.assert_array_equal(a, b)


def test_set_weights_round_trip(device, rng):
    model = classifier(device)
    new = [rng.normal(size=w.shape) for w in model.get_weights()]
    model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    params = model.parameters()
    model.set_weights(tuple(w * 2 for w in new))  # in place: parameters keep their identity
    assert all(p is q for p, q in zip(params, model.parameters()))
    np.testing.assert_array_equal(gn.to_numpy(model.parameters()[2]), new[2] * 2)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda w: w[:3], ValueError, r"weights must hold 4 arrays \[W1, b1, ...\]; received 3"),
    (lambda w: w + [w[0]], ValueError, "weights must hold 4 arrays"),
    (lambda w: {i: a for i, a in enumerate(w)}, TypeError, "weights must be a list of arrays"),
    (lambda w: [w[0].T] + w[1:], ValueError, r"weights\[0\] must have shape \(4, 5\); received \(5, 4\)"),
    (lambda w: w[:3] + [w[3][:2]], ValueError, r"weights\[3\] must have shape \(3,\)"),
    (lambda w: w[:3] + [with_value(w[3], 1, np.nan)], ValueError,
     r"weights\[3\] must be finite; weights\[3\]\[1\] = nan"),
    (lambda w: [with_value(w[0], (0, 0), np.inf)] + w[1:], ValueError, r"weights\[0\] must be finite"),
    (lambda w: w[:3] + [w[3].astype(complex)], TypeError, r"weights\[3\] must be real-valued"),
])
def test_set_weights_checks_everything_before_setting_anything(mutate, exc, match):
    model = classifier()
    changed = [w + 1.0 for w in model.get_weights()]  # valid, different first arrays: none may be written
    assert_rejected(model, lambda: model.set_weights(mutate(changed)), exc, match)


def test_to_another_namespace_and_back():
    xps = pytest.importorskip("array_api_strict")
    model = classifier()
    model.fit(X, LABELS, loss="cce", epochs=2)
    weights, pred = model.get_weights(), gn.to_numpy(model.predict(X))
    assert model.to(xps) is model
    assert model.device == "array_api_strict"
    moved = model.predict(X)
    assert model.backend.owns(moved) and not isinstance(moved, np.ndarray)
    np.testing.assert_allclose(gn.to_numpy(moved), pred, rtol=1e-13)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))
    model.fit(X, LABELS, loss="cce", epochs=1)  # trains there
    trained = model.get_weights()
    model.to("cpu")
    assert model.device == "cpu"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), trained))
    assert isinstance(model.predict(X), np.ndarray)


# -- predict, evaluate, History -------------------------------------------------------------------------------------
def test_predict_shape_namespace_and_batching(device, backend):
    model = classifier(device)
    pred = model.predict(X)
    assert backend.owns(pred) and tuple(pred.shape) == (12, 3) and pred.dtype == backend.dtype("float64")
    host = gn.to_numpy(pred)
    np.testing.assert_allclose(host.sum(axis=1), 1.0, rtol=1e-14)
    for batch_size in (1, 5, 12, 100):
        np.testing.assert_allclose(gn.to_numpy(model.predict(X, batch_size=batch_size)), host, rtol=1e-13)
    single = gn.Sequential([gn.Dense(4, 1)], device=device, dtype="float32", seed=0).predict(X.tolist())
    assert tuple(single.shape) == (12, 1) and single.dtype == backend.dtype("float32")


def test_evaluate_and_history(device):
    model = classifier(device)
    X_val, y_val = X[::2] + 0.1, LABELS[::2]
    before = model.evaluate(X, LABELS, loss="cce", metrics=["accuracy"])
    assert set(before) == {"loss", "accuracy"}
    proba = gn.to_numpy(model.predict(X))
    assert before["loss"] == pytest.approx(skm.log_loss(LABELS, proba), rel=1e-12)
    assert before["accuracy"] == pytest.approx(skm.accuracy_score(LABELS, proba.argmax(axis=1)))

    epochs = 4
    history = model.fit(X, LABELS, loss="cce", optimizer=gn.optim.SGD(lr=0.5), epochs=epochs, batch_size=None,
                        validation_data=(X_val, y_val), metrics=["accuracy"])
    assert isinstance(history, gn.History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == epochs for v in history.history.values()) and history.epoch == list(range(epochs))
    # full batch: epoch 0's training loss is the loss of the initial weights
    assert history["loss"][0] == pytest.approx(before["loss"], rel=1e-12)
    assert history["accuracy"][0] == pytest.approx(before["accuracy"])
    # validation numbers are computed after the epoch: the last ones describe the final model
    after = model.evaluate(X_val, y_val)  # loss and metrics default to the last fit's
    assert after == pytest.approx({"loss": history["val_loss"][-1], "accuracy": history["val_accuracy"][-1]},
                                  rel=1e-12)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_optimizer_by_name(name, device):
    model = binary_model(device)
    history = model.fit(X, BINARY, loss="bce", optimizer=name, epochs=15, batch_size=4, shuffle=False)
    assert history["loss"][-1] < history["loss"][0]
    assert type(gn.optim.get(name)).__name__.lower() == name


# -- metrics against scikit-learn -----------------------------------------------------------------------------------
def test_binary_metrics_match_sklearn(device):
    model = binary_model(device)
    model.set_weights([w * 3 for w in model.get_weights()])
    proba = gn.to_numpy(model.predict(X)).ravel()
    got = model.evaluate(X, BINARY, loss="bce", metrics=["accuracy", "mse", "mae", "r2"])
    assert 0 < got["accuracy"] < 1  # a meaningful comparison: neither all right nor all wrong
    expected = {"loss": skm.log_loss(BINARY, proba), "accuracy": skm.accuracy_score(BINARY, proba > 0.5),
                "mse": skm.mean_squared_error(BINARY, proba), "mae": skm.mean_absolute_error(BINARY, proba),
                "r2": skm.r2_score(BINARY, proba)}
    assert got == pytest.approx(expected, rel=1e-12)


def test_multiclass_metrics_match_sklearn(device):
    model = classifier(device)
    proba = gn.to_numpy(model.predict(X))
    onehot = np.eye(3)[LABELS]
    got = model.evaluate(X, LABELS, loss="cce", metrics=["accuracy", "mse", "mae", "r2"])
    expected = {"loss": skm.log_loss(LABELS, proba), "accuracy": skm.accuracy_score(LABELS, proba.argmax(axis=1)),
                "mse": skm.mean_squared_error(onehot, proba), "mae": skm.mean_absolute_error(onehot, proba),
                "r2": skm.r2_score(onehot, proba)}
    assert 0 < got["accuracy"] < 1
    assert got == pytest.approx(expected, rel=1e-12)


def test_regression_metrics_and_training_metrics_match_sklearn(device, rng):
    """Two outputs (r2 is the uniform average); per-epoch training metrics sum over batches exactly."""
    model = gn.Sequential([gn.Dense(4, 2)], device=device, dtype="float64", seed=0)
    Y = np.stack([X @ [1.0, 0.5, 0.0, 0.0], X[:, 2] ** 2], axis=1) + 0.1 * rng.normal(size=(12, 2))
    got = model.evaluate(X, Y, loss="mse", metrics=["mse", "mae", "r2"])
    pred = gn.to_numpy(model.predict(X))
    expected = {"loss": skm.mean_squared_error(Y, pred), "mse": skm.mean_squared_error(Y, pred),
                "mae": skm.mean_absolute_error(Y, pred), "r2": skm.r2_score(Y, pred)}
    assert got == pytest.approx(expected, rel=1e-12)
    # batch size 1 without shuffling: the epoch's metric is over the predictions made before each step
    preds = []
    probe = gn.Sequential([gn.Dense(4, 2)], device=device, dtype="float64", seed=0)
    optimizer = gn.optim.SGD(lr=0.05)
    for i in range(12):
        preds.append(gn.to_numpy(probe.predict(X[i:i + 1]))[0])
        probe.train_on_batch(X[i:i + 1], Y[i:i + 1], "mse", optimizer)
    history = model.fit(X, Y, loss="mse", optimizer=gn.optim.SGD(lr=0.05), batch_size=1, shuffle=False,
                        metrics=["mae", "r2"])
    preds = np.array(preds)
    assert history["mae"][0] == pytest.approx(skm.mean_absolute_error(Y, preds), rel=1e-12)
    assert history["r2"][0] == pytest.approx(skm.r2_score(Y, preds), rel=1e-12)
    assert history["loss"][0] == pytest.approx(skm.mean_squared_error(Y, preds), rel=1e-12)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_precision_recall_f1_match_sklearn(task, device):
    """evaluate() in batches of 5 against scikit-learn on the whole set: ``average="binary"`` for one sigmoid
    output, ``"macro"`` over the classes present for softmax outputs, ``zero_division=0``."""
    model = binary_model(device) if task == "binary" else classifier(device)
    model.set_weights([w * 3 for w in model.get_weights()])
    proba = gn.to_numpy(model.predict(X))
    target, loss = (BINARY, "bce") if task == "binary" else (LABELS, "cce")
    predicted = (proba[:, 0] > 0.5).astype(int) if task == "binary" else proba.argmax(axis=1)
    average = "binary" if task == "binary" else "macro"
    got = model.evaluate(X, target, loss=loss, metrics=["precision", "recall", "f1"], batch_size=5)
    expected = {name: score(np.ravel(target), predicted, average=average, zero_division=0)
                for name, score in [("precision", skm.precision_score), ("recall", skm.recall_score),
                                    ("f1", skm.f1_score)]}
    assert 0 < expected["f1"] < 1 and len({round(v, 6) for v in expected.values()}) > 1
    assert {k: got[k] for k in expected} == pytest.approx(expected, rel=1e-12)


def test_precision_recall_f1_edge_cases(rng):
    """Multi-label columns (binary=True) average like sklearn's "macro" on indicator arrays; a class nobody
    predicts scores 0; no positives anywhere gives 0; from logits the threshold is 0 (through get(loss=...))."""
    pred, target = rng.random((40, 3)), (rng.random((40, 3)) > 0.6).astype(float)
    pred[:, 2], target[:, 2] = 0.1, 0.0  # a column with no positives at all: sklearn averages it in, as 0
    for name, score in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        metric = gn.metrics.METRICS[name](binary=True)
        assert metric(pred, target) == pytest.approx(score(target, pred > 0.5, average="macro", zero_division=0),
                                                     rel=1e-12)
        never = np.tile([0.6, 0.3, 0.1], (6, 1))  # always class 0: classes 1 and 2 are true but never predicted
        labels = np.array([0, 1, 2, 0, 1, 2])
        assert gn.metrics.METRICS[name]()(never, labels) == pytest.approx(
            score(labels, never.argmax(axis=1), average="macro", zero_division=0), rel=1e-12)
        assert gn.metrics.METRICS[name]()(np.zeros((4, 1)), np.zeros(4)) == 0.0
        logits = gn.metrics.get(name, gn.losses.BinaryCrossEntropy(from_logits=True))
        assert logits.threshold == 0.0 and logits(np.array([[0.2], [-0.1]]), np.array([1.0, 1.0])) == (
            {"precision": 1.0, "recall": 0.5, "f1": 2 / 3}[name])


def test_precision_recall_f1_accumulate_over_fit_batches():
    """fit's per-epoch precision/recall/f1 merge the batches' counts: equal to sklearn on the predictions made
    before each step (batches of 5 without shuffling; 12 rows, so the last batch is ragged)."""
    model, probe = classifier(), classifier()
    optimizer, preds = gn.optim.SGD(lr=0.5), []
    for start in range(0, 12, 5):
        preds.append(gn.to_numpy(probe.predict(X[start:start + 5])).argmax(axis=1))
        probe.train_on_batch(X[start:start + 5], LABELS[start:start + 5], "cce", optimizer)
    history = model.fit(X, LABELS, loss="cce", optimizer=gn.optim.SGD(lr=0.5), batch_size=5, shuffle=False,
                        metrics=["precision", "recall", "f1"])
    preds = np.concatenate(preds)
    for name, score in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        whole = score(LABELS, preds, average="macro", zero_division=0)
        assert history[name][0] == pytest.approx(whole, rel=1e-12)
        batch_mean = np.mean([score(LABELS[s:s + 5], preds[s:s + 5], average="macro", zero_division=0)
                              for s in range(0, 12, 5)])
        assert abs(batch_mean - whole) > 1e-3  # an average of batch scores would differ


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_functional_metrics_match_sklearn(dtype, rng):
    target = rng.normal(size=(200, 2))
    pred = target + 0.5 * rng.normal(size=target.shape)
    p, t = pred.astype(dtype), target.astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert gn.metrics.mse(p, t) == pytest.approx(skm.mean_squared_error(t, p), rel=tol)
    assert gn.metrics.mae(p, t) == pytest.approx(skm.mean_absolute_error(t, p), rel=tol)
    assert gn.metrics.r2(p, t) == pytest.approx(skm.r2_score(t.astype(float), p.astype(float)), rel=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that one row's R2 is undefined
        assert np.isnan(skm.r2_score(t[:1], p[:1])) and np.isnan(gn.metrics.r2(p[:1], t[:1]))
    assert gn.metrics.accuracy(p, t) == pytest.approx(skm.accuracy_score(t.argmax(1), p.argmax(1)))
    assert gn.metrics.accuracy(p[:, :1], t[:, :1] > 0) == pytest.approx(skm.accuracy_score(t[:, 0] > 0, p[:, 0] > 0.5))


@pytest.mark.parametrize("dtype, offset", [("float32", 1e3), ("float64", 1e8)])
@pytest.mark.parametrize("path", ["functional", "evaluate"])
def test_r2_is_stable_for_targets_far_from_zero(path, dtype, offset, rng):
    target = offset + rng.normal(size=(200, 2))
    pred = target + 0.5 * rng.normal(size=target.shape)
    p, t = pred.astype(dtype), target.astype(dtype)
    if path == "functional":
        got = gn.metrics.r2(p, t)
    else:  # an identity model predicts p from p
        model = gn.Sequential([gn.Dense(2, 2)], dtype=dtype)
        model.set_weights([np.eye(2), np.zeros(2)])
        got = model.evaluate(p, t, loss="mse", metrics=["r2"])["r2"]
    assert got == pytest.approx(skm.r2_score(t.astype(float), p.astype(float)), abs=1e-3)


class _CountingNamespace:
    """An Array API namespace that counts ``asarray`` calls (a host -> device copy on a GPU) and forwards the rest."""

    def __init__(self, xp):
        self._xp, self.asarray_calls = xp, 0

    def asarray(self, *args, **kwargs):
        self.asarray_calls += 1
        return self._xp.asarray(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._xp, name)


@pytest.mark.parametrize("name", sorted(gn.metrics.METRICS))
def test_metric_stats_copy_nothing_to_the_device(name, backend, to_xp, monkeypatch):
    """A batch's statistics call no ``xp.asarray`` (per batch, on a GPU, a host -> device copy): counts are ints."""
    counting = _CountingNamespace(backend.xp)
    monkeypatch.setattr(gn.metrics, "array_namespace", lambda *arrays: counting)
    pred, target = to_xp(rng0.random((6, 3))), to_xp(np.eye(3)[LABELS[:6]])
    metric = gn.metrics.get(name)
    stats = metric.stats(pred, target)
    assert counting.asarray_calls == 0
    merged = metric.combine(stats, metric.stats(pred, target))
    assert counting.asarray_calls == 0
    counts = {"accuracy": 6, "mae": 18, "mse": 18, "r2": 6}  # rows or elements; precision & co. count on the device
    if name in counts:
        assert type(stats[1]) is int and stats[1] == counts[name]
        assert type(merged[1]) is int and merged[1] == 2 * stats[1]


# -- warnings -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation, loss, match", [
    ("linear", gn.losses.CategoricalCrossEntropy(), "expects probabilities from a softmax output layer"),
    ("softmax", gn.losses.CategoricalCrossEntropy(from_logits=True), "applies the softmax itself"),
    ("linear", gn.losses.BinaryCrossEntropy(), "expects probabilities from a sigmoid output layer"),
    ("sigmoid", gn.losses.BinaryCrossEntropy(from_logits=True), "applies the sigmoid itself"),
])
def test_mismatched_output_layer_and_loss_warn(activation, loss, match):
    """The warning points at the user's call (this file), not into gpunet."""
    model = gn.Sequential([gn.Dense(4, 3, activation)], dtype="float64", seed=0)
    with pytest.warns(UserWarning, match=match) as record:
        # the log of a linear output's negative "probabilities" is NaN (as in torch): the fit diverges at once
        with contextlib.suppress(gn.NonFiniteLossError):
            model.fit(X, np.eye(3)[LABELS], loss=loss, epochs=1)
    assert len(record) == 1 and record[0].filename == __file__
    with pytest.warns(UserWarning, match=match) as record:
        model.train_on_batch(X, np.eye(3)[LABELS], loss, "sgd")
    assert len(record) == 1 and record[0].filename == __file__


@pytest.mark.parametrize("activation, loss", [("softmax", "cce"), ("sigmoid", "bce"), ("linear", "mse")])
def test_matching_output_layer_and_loss_do_not_warn(activation, loss):
    model = gn.Sequential([gn.Dense(4, 3, activation)], dtype="float64", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(X, np.eye(3)[LABELS], loss=loss, epochs=1)


# -- the low-level loop ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, loss, target, exact", [
    (binary_model, gn.losses.MSE(), BINARY, True),  # the same operations as fit: bitwise equal
    (classifier, gn.losses.CategoricalCrossEntropy(), LABELS, False),  # fit uses the combined softmax gradient
])
def test_low_level_loop_equals_one_full_batch_epoch(make, loss, target, exact, device, to_xp):
    manual, fitted = make(device), make(device)
    optimizer = gn.optim.Adam(lr=0.05)
    for _ in range(3):
        pred = manual(to_xp(X))
        manual.backward(loss.grad(pred, target))
        optimizer.step(manual)
    assert optimizer.steps == 3
    fitted.fit(X, target, loss=loss, optimizer=gn.optim.Adam(lr=0.05), epochs=3, batch_size=None, shuffle=False)
    for a, b in zip(manual.get_weights(), fitted.get_weights()):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert not np.array_equal(manual.get_weights()[0], make(device).get_weights()[0])


def test_backward_and_step_need_their_prerequisites():
    model = classifier()
    with pytest.raises(RuntimeError, match="optimizer.step\\(model\\) needs gradients"):
        gn.optim.SGD().step(model)
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward\\(\\) first"):
        model.backward(np.zeros((12, 3)))
    pred = model(X)
    with pytest.raises(ValueError, match=r"grad_out must be an array of the model's namespace with shape \(12, 3\)"):
        model.backward(np.zeros((12, 2)))
    with pytest.raises(TypeError, match="x must be an array of the model's namespace"):
        model([[0.0] * 4])
    assert pred.shape == (12, 3)


# -- ownership: optimizer state and layers belong to one model ---------------------------------------------------------
def test_optimizer_state_does_not_leak_between_models():
    """An optimizer stepping a second model starts fresh (torch: one optimizer per parameter set)."""
    X, y = np.ones((4, 2)), np.zeros(4)
    opt = gn.optim.SGD(lr=0.1, momentum=0.9)
    first = gn.Sequential([gn.Dense(2, 1)], dtype="float64")
    first.set_weights([np.ones((2, 1)), np.zeros(1)])
    first.fit(X, y, optimizer=opt, batch_size=None)
    second = gn.Sequential([gn.Dense(2, 1)], dtype="float64")
    second.set_weights([np.zeros((2, 1)), np.zeros(1)])  # zero loss and zero gradient: nothing may move
    with pytest.warns(UserWarning, match="this SGD last updated another model"):
        second.fit(X, y, optimizer=opt, batch_size=None)
    np.testing.assert_array_equal(second.get_weights()[0], np.zeros((2, 1)))
    assert opt.steps == 1


def test_a_layer_cannot_belong_to_two_models():
    layer = gn.Dense(2, 1)
    gn.Sequential([layer])
    with pytest.raises(ValueError, match=r"layers\[0\] already belongs to another model"):
        gn.Sequential([layer])


def test_negative_seed_is_a_value_error():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        gn.Sequential([gn.Dense(2, 1)], seed=-1)
