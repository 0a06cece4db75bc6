"""Robustness: every bad input in one table, numerics at the edges of float32/float64, training on badly scaled
data, and determinism.

The table (``BAD_INPUTS``) is the one place that lists every refused input. Each row is called on a freshly trained
subject (a model plus the optimizer holding its state) and must raise the given exception with a message that names
the offending argument and matches the row's pattern; afterwards the weights, the optimizer state and the fit
defaults must be bitwise unchanged, and training on must give bitwise the same weights as on a twin that never saw
the bad call (so no hidden state, such as the shuffling generator, moved either).
"""

import json
import math
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet import activations, array_utils, losses, metrics, optim
from gpunet.layers import INITS
from gpunet.backend import ops_for

rng0 = np.random.default_rng(0)
X = rng0.normal(size=(12, 4))
LABELS = np.arange(12) % 3
TARGET = X[:, :1] - X[:, 1:2]  # a regression target, (12, 1)
BINARY = (X[:, 0] > 0).astype(float)


def with_value(a, index, value):
    a = np.array(a, dtype=float)
    a[index] = value
    return a


def torch_tensor(a):
    """A torch tensor, created when a row runs (the row is skipped without torch)."""
    return pytest.importorskip("torch").tensor(np.asarray(a))


def strict_array(a):
    return pytest.importorskip("array_api_strict").asarray(np.asarray(a))


def names(valid) -> str:
    """The pattern of a message listing the valid names, as ``['a', 'b', ...]``."""
    return re.escape(str(sorted(valid)))


# -- subjects: trained models whose optimizers hold state ----------------------------------------------------------
def _classifier(device="cpu"):
    model = gn.Sequential([gn.Dense(4, 5, "tanh"), gn.Dense(5, 3, "softmax")], device=device, dtype="float64",
                          seed=0)
    model.fit(X, LABELS, loss="cce", optimizer=optim.Adam(lr=0.01), epochs=1, batch_size=4, metrics=["accuracy"])
    return model


def _regressor():
    model = gn.Sequential([gn.Dense(4, 3, "relu"), gn.Dense(3, 1)], dtype="float32", seed=0)
    model.fit(X, TARGET, loss="mse", optimizer=optim.SGD(lr=0.01, momentum=0.9), epochs=1, batch_size=4)
    return model


def _strict_classifier():
    return _classifier(pytest.importorskip("array_api_strict"))


SUBJECTS = {  # name: (factory, the data it trains on)
    "classifier": (_classifier, (X, LABELS)),  # float64, cce, Adam
    "regressor": (_regressor, (X, TARGET)),  # float32, mse, SGD with momentum
    "strict": (_strict_classifier, (X, LABELS)),  # the classifier on array_api_strict
}


def fingerprint(model) -> list:
    """What a refused call must leave alone: the weights, the optimizer's hyperparameters, step count and state,
    and the loss/optimizer/metrics the next fit defaults to."""
    state = model.optimizer.state_dict()
    arrays = model.get_weights() + [v for s in state["state"] for v in s.values() if v is not None]
    return ([(a.dtype.str, a.shape, a.tobytes()) for a in arrays]
            + [repr(state["hyperparameters"]), state["steps"], id(model.loss), id(model.optimizer),
               [id(m) for m in model.metrics]])


def train_on(model, data):
    """One more shuffled mini-batch epoch with the last fit's loss and optimizer; the resulting weights."""
    model.fit(*data, epochs=1, batch_size=4)
    return model.get_weights()


# -- the table ------------------------------------------------------------------------------------------------------
def case(id, subject, call, exc, arg, match="", marks=()):
    """A row: ``call(model)`` (``call()`` when ``subject`` is None) raises ``exc``; the message names ``arg`` and
    matches ``match``."""
    return pytest.param(subject, call, exc, arg, match, id=id, marks=marks)


# bad feature arrays, refused identically by every method taking X
BAD_FEATURES = [
    ("3-features", X[:, :3], ValueError, "has 3 features per sample but the model expects 4"),
    ("1-D", X[0], ValueError, r"must be 2-D \(n_samples, n_features=4\); received shape \(4,\) \(reshape"),
    ("3-D", X[None], ValueError, r"must be 2-D \(n_samples, n_features=4\); received shape \(1, 12, 4\)"),
    ("0-D", 1.5, ValueError, r"must be 2-D .*received shape \(\)"),
    ("empty-rows", X[:0], ValueError, r"must not be empty; received shape \(0, 4\)"),
    ("empty-columns", X[:, :0], ValueError, r"must not be empty; received shape \(12, 0\)"),
    ("nan", with_value(X, (2, 1), np.nan), ValueError, r"must be finite; X\[2, 1\] = nan"),
    ("inf", with_value(X, (5, 3), np.inf), ValueError, r"must be finite; X\[5, 3\] = inf"),
    ("-inf", with_value(X, (0, 0), -np.inf), ValueError, r"must be finite; X\[0, 0\] = -inf"),
    ("nan-float32", with_value(X, (7, 2), np.nan).astype(np.float32), ValueError, r"X\[7, 2\] = nan"),
    ("strings", X.astype(str), TypeError, "must be a numeric array; received dtype <U"),
    ("object", X.astype(object), TypeError, "must be a numeric array; received dtype object"),
    ("none", None, TypeError, "must be a numeric array"),
    ("datetime", X.astype("datetime64[s]"), TypeError, "must be a numeric array; received dtype datetime64"),
    ("complex", X.astype(complex), TypeError, "must be real-valued; received a complex array"),
    ("ragged", [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], TypeError, "must be a numeric array; could not convert it"),
]
FEATURE_METHODS = {  # method: (call with bad X, the argument's name)
    "fit": (lambda bad: lambda m: m.fit(bad, LABELS[:_rows(bad)]), "X"),
    "predict": (lambda bad: lambda m: m.predict(bad), "X"),
    "evaluate": (lambda bad: lambda m: m.evaluate(bad, LABELS[:_rows(bad)]), "X"),
    "train_on_batch": (lambda bad: lambda m: m.train_on_batch(bad, LABELS[:_rows(bad)], "cce", m.optimizer), "x"),
    "validation_data": (lambda bad: lambda m: m.fit(X, LABELS, validation_data=(bad, LABELS[:_rows(bad)])),
                        "validation_data[0]"),
}


def _rows(bad):
    """Labels to pair with a bad X: as many as it has rows when it is 2-D (so only X is at fault)."""
    return len(bad) if isinstance(bad, np.ndarray) and bad.ndim == 2 else len(LABELS)


def _feature_rows():
    rows = []
    for method, (make_call, arg) in FEATURE_METHODS.items():
        for id, bad, exc, match in BAD_FEATURES:
            rows.append(case(f"{method}-X-{id}", "classifier", make_call(bad), exc, arg,
                             match.replace(r"X\[", re.escape(arg) + r"\[")))
    return rows


# bad class targets for the cce classifier (fit, evaluate and validation_data[1] check them the same way)
BAD_CLASS_TARGETS = [
    ("negative-label", with_value(LABELS, 4, -1), ValueError, r"holds class indices, which must be in \[0, 2\] "
     r"for a model with 3 outputs; found -1"),
    ("fractional-label", with_value(LABELS, 4, 1.5), ValueError, "holds class indices, which must be whole numbers"),
    ("label-too-large", with_value(LABELS, 4, 3), ValueError, r"must be in \[0, 2\] for a model with 3 outputs; "
     "found 3"),
    ("uint-label-too-large", LABELS.astype(np.uint64) + 2, ValueError, "found 4"),
    ("one-hot-too-wide", np.eye(4)[LABELS], ValueError, r"for categorical cross-entropy must be class indices "
     r"\(n,\) or one-hot/probability rows \(n, 3\); received shape \(12, 4\)"),
    ("one-hot-too-narrow", np.eye(2)[LABELS % 2], ValueError, r"received shape \(12, 2\)"),
    ("column-of-labels", LABELS[:, None], ValueError, r"received shape \(12, 1\)"),
    ("3-D", LABELS[:, None, None], ValueError, r"received shape \(12, 1, 1\)"),
    ("0-D", 1, ValueError, r"received shape \(\)"),
    ("rows-summing-to-0.5", np.eye(3)[LABELS] * 0.5, ValueError, "rows must sum to 1 .*found a row summing to 0.5"),
    ("rows-summing-to-1.2", np.eye(3)[LABELS] * 0.6 + 0.2, ValueError, "rows must sum to 1 .*found a row summing "
     "to 1.2"),
    ("rows-outside-0-1", np.eye(3)[LABELS] * 2 - 0.5, ValueError, r"rows must be probabilities in \[0, 1\]"),
    ("nan", with_value(LABELS, 3, np.nan), ValueError, r"must be finite; y\[3\] = nan"),
    ("inf", with_value(LABELS, 0, np.inf), ValueError, r"must be finite; y\[0\] = inf"),
    ("nan-one-hot", with_value(np.eye(3)[LABELS], (6, 2), np.nan), ValueError, r"y\[6, 2\] = nan"),
    ("strings", LABELS.astype(str), TypeError, "must be a numeric array; received dtype <U"),
    ("object", LABELS.astype(object), TypeError, "must be a numeric array; received dtype object"),
    ("complex", LABELS.astype(complex), TypeError, "must be real-valued"),
    ("empty", LABELS[:0], ValueError, r"must not be empty; received shape \(0,\)"),
]
TARGET_METHODS = {
    "fit": (lambda bad: lambda m: m.fit(X, bad), "y"),
    "evaluate": (lambda bad: lambda m: m.evaluate(X, bad), "y"),
    "validation_data": (lambda bad: lambda m: m.fit(X, LABELS, validation_data=(X, bad)), "validation_data[1]"),
}


def _target_rows():
    rows = []
    for method, (make_call, arg) in TARGET_METHODS.items():
        for id, bad, exc, match in BAD_CLASS_TARGETS:
            rows.append(case(f"{method}-y-{id}", "classifier", make_call(bad), exc, arg,
                             match.replace(r"y\[", re.escape(arg) + r"\[")))
    return rows


def _positive_int_rows():
    calls = {  # id: (call with the value, the argument)
        "fit-batch_size": (lambda v: lambda m: m.fit(X, LABELS, batch_size=v), "batch_size"),
        "fit-epochs": (lambda v: lambda m: m.fit(X, LABELS, epochs=v), "epochs"),
        "predict-batch_size": (lambda v: lambda m: m.predict(X, batch_size=v), "batch_size"),
        "evaluate-batch_size": (lambda v: lambda m: m.evaluate(X, LABELS, batch_size=v), "batch_size"),
    }
    values = [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("32", TypeError),
              (np.float64(2.0), TypeError)]
    rows = [case(f"{id}={value!r}", "classifier", make_call(value), exc, arg, "must be a positive integer")
            for id, (make_call, arg) in calls.items() for value, exc in values]
    return rows + [case("fit-epochs=None", "classifier", calls["fit-epochs"][0](None), TypeError, "epochs")]


def _optimizer_rows():
    rows = []
    for cls in optim.OPTIMIZERS.values():
        for value, exc, match in [(-0.1, ValueError, r"must be in \[0.0, inf\); received lr=-0.1"),
                                  (math.nan, ValueError, "must be finite; received lr=nan"),
                                  (math.inf, ValueError, "must be finite; received lr=inf"),
                                  ("0.1", TypeError, "must be a real number; received str"),
                                  (None, TypeError, "must be a real number; received NoneType"),
                                  (1j, TypeError, "must be a real number; received complex")]:
            rows.append(case(f"{cls.__name__}-lr={value!r}", None, lambda c=cls, v=value: c(lr=v), exc, "lr", match))
    for cls in (optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad):
        rows.append(case(f"{cls.__name__}-eps<0", None, lambda c=cls: c(eps=-1e-8), ValueError, "eps",
                         r"must be in \[0.0, inf\); received eps=-1e-08"))
    for cls in (optim.Adam, optim.AdamW):
        for betas, arg in [((1.0, 0.999), "betas[0]"), ((-0.1, 0.999), "betas[0]"), ((0.9, 1.0), "betas[1]"),
                           ((0.9, 1.5), "betas[1]"), ((0.9, -1e-3), "betas[1]")]:
            rows.append(case(f"{cls.__name__}-betas={betas}", None, lambda c=cls, b=betas: c(betas=b), ValueError, arg,
                             r"must be in \[0.0, 1.0\)"))
        rows.append(case(f"{cls.__name__}-betas-nan", None, lambda c=cls: c(betas=(math.nan, 0.9)), ValueError,
                         "betas[0]", "must be finite"))
        for betas in (0.9, (0.9, 0.99, 0.999), "0.9,0.99"):
            rows.append(case(f"{cls.__name__}-betas={betas!r}", None, lambda c=cls, b=betas: c(betas=b), TypeError,
                             "betas", r"must be a pair \(beta1, beta2\)"))
    for cls in (optim.SGD, optim.RMSprop):
        for value in (1.0, -0.1, 2.0):
            rows.append(case(f"{cls.__name__}-momentum={value}", None, lambda c=cls, v=value: c(momentum=v),
                             ValueError, "momentum", rf"must be in \[0.0, 1.0\); received momentum={value}"))
    return rows + [
        case("SGD-nesterov-without-momentum", None, lambda: optim.SGD(nesterov=True), ValueError, "nesterov",
             "needs momentum > 0"),
        case("SGD-dampening>1", None, lambda: optim.SGD(dampening=1.5), ValueError, "dampening", r"\[0.0, 1.0\]"),
        case("AdamW-weight_decay<0", None, lambda: optim.AdamW(weight_decay=-0.01), ValueError, "weight_decay"),
        case("Adam-amsgrad=1", None, lambda: optim.Adam(amsgrad=1), TypeError, "amsgrad", "must be True or False"),
        case("RMSprop-alpha=1", None, lambda: optim.RMSprop(alpha=1.0), ValueError, "alpha", r"\[0.0, 1.0\)"),
        case("Adagrad-lr_decay<0", None, lambda: optim.Adagrad(lr_decay=-1), ValueError, "lr_decay"),
    ]


def _loss_and_layer_hyperparameter_rows():
    rows = [case(f"Huber-delta={value!r}", None, lambda v=value: losses.Huber(delta=v), exc, "delta", match)
            for value, exc, match in [(0, ValueError, "must be a finite number > 0; received delta=0.0"),
                                      (-1, ValueError, "must be a finite number > 0"),
                                      (math.nan, ValueError, "must be finite"),
                                      (math.inf, ValueError, "must be finite"),
                                      ("1", TypeError, "must be a real number")]]
    for cls in (losses.BinaryCrossEntropy, losses.CategoricalCrossEntropy):
        rows.append(case(f"{cls.__name__}-from_logits=1", None, lambda c=cls: c(from_logits=1), TypeError,
                         "from_logits", "must be True or False"))
    return rows + [
        case("LeakyReLU-slope=1.5", None, lambda: activations.LeakyReLU(1.5), ValueError, "negative_slope"),
        case("ELU-alpha=0", None, lambda: activations.ELU(0), ValueError, "alpha", "positive finite"),
        case("ELU-alpha=inf", None, lambda: activations.ELU(math.inf), ValueError, "alpha", "positive finite"),
    ]


def _construction_rows():
    def seq(*layers, **kwargs):
        return lambda: gn.Sequential(list(layers) or [gn.Dense(4, 3)], **kwargs)

    def dense(**kwargs):
        return lambda: gn.Dense(**{"in_features": 4, "out_features": 3, **kwargs})

    rows = [case(f"Dense-{arg}={value!r}", None, dense(**{arg: value}), exc, arg, "must be a positive integer")
            for arg in ("in_features", "out_features")
            for value, exc in [(0, ValueError), (-2, ValueError), (4.0, TypeError), (True, TypeError),
                               ("3", TypeError), (None, TypeError)]]
    return rows + [
        case("Dense-unknown-activation", None, lambda: gn.Dense(4, 3, "swishy"), ValueError, "activation",
             "unknown activation 'swishy'; expected one of " + names(activations.ACTIVATIONS)),
        case("Dense-activation=5", None, lambda: gn.Dense(4, 3, 5), TypeError, "activation", "must be a name"),
        case("activations.get-unknown", None, lambda: activations.get("mish"), ValueError, "activation",
             names(activations.ACTIVATIONS)),
        case("Dense-unknown-init", None, lambda: gn.Dense(4, 3, init="orthogonal"), ValueError, "init",
             "unknown init 'orthogonal'; expected one of " + names(INITS)),
        case("Dense-init=None", None, lambda: gn.Dense(4, 3, init=None), TypeError, "init", names(INITS)),
        case("Sequential-empty", None, lambda: gn.Sequential([]), TypeError, "layers", "must be a non-empty list"),
        case("Sequential-not-a-list", None, lambda: gn.Sequential("dense"), TypeError, "layers"),
        case("Sequential-not-a-layer", None, lambda: gn.Sequential([gn.Dense(4, 3), "x"]), TypeError, "layers[1]",
             "must be a gpunet.Dense; received str"),
        case("Sequential-sizes-do-not-chain", None, seq(gn.Dense(4, 3), gn.Dense(2, 1)), ValueError, "in_features",
             r"do not chain: layers\[0\] has out_features=3 but layers\[1\] has in_features=2"),
        case("Sequential-unknown-dtype", None, seq(dtype="float16"), ValueError, "dtype",
             "unknown dtype 'float16'; expected one of " + names(["float32", "float64"])),
        case("Sequential-dtype-object", None, seq(dtype=np.float32), TypeError, "dtype",
             names(["float32", "float64"])),
        case("Sequential-unknown-device", None, seq(device="gpu"), ValueError, "device",
             "must be 'cpu', 'cuda', 'cuda:N', 'auto' or an Array API namespace module; received device='gpu'"),
        case("Sequential-device-cuda:x", None, seq(device="cuda:x"), ValueError, "device", "'cuda:N'"),
        case("Sequential-device=3", None, seq(device=3), TypeError, "device", "'cpu', 'cuda', 'cuda:N', 'auto'"),
        case("Sequential-device-not-a-namespace", None, seq(device=math), TypeError, "device",
             "is not an Array API namespace"),
        case("Sequential-seed=1.5", None, seq(seed=1.5), TypeError, "seed", "non-negative integer"),
        case("Sequential-seed=-1", None, seq(seed=-1), ValueError, "seed", "non-negative integer"),
        case("Sequential-fused='yes'", None, seq(fused="yes"), TypeError, "fused"),
    ]


def _name_rows():
    """Unknown names list the valid ones; wrong kinds say what is expected."""
    fit = lambda **kw: lambda m: m.fit(X, LABELS, **kw)  # noqa: E731
    return [
        case("fit-unknown-loss", "classifier", fit(loss="hinge"), ValueError, "loss",
             "unknown loss 'hinge'; expected one of " + names(losses.LOSSES)),
        case("evaluate-unknown-loss", "classifier", lambda m: m.evaluate(X, LABELS, loss="hinge"), ValueError,
             "loss", names(losses.LOSSES)),
        case("fit-loss=5", "classifier", fit(loss=5), TypeError, "loss", "must be a name or a gpunet.losses.Loss"),
        case("fit-unknown-optimizer", "classifier", fit(optimizer="lbfgs"), ValueError, "optimizer",
             "unknown optimizer 'lbfgs'; expected one of " + names(optim.OPTIMIZERS)),
        case("fit-optimizer=0.1", "classifier", fit(optimizer=0.1), TypeError, "optimizer", "must be a name"),
        case("fit-optimizer-class", "classifier", fit(optimizer=optim.Adam), TypeError, "optimizer",
             "received type"),
        case("train_on_batch-unknown-optimizer", "classifier",
             lambda m: m.train_on_batch(X, LABELS, "cce", "lbfgs"), ValueError, "optimizer",
             names(optim.OPTIMIZERS)),
        case("fit-unknown-metric", "classifier", fit(metrics=["roc_auc"]), ValueError, "metric",
             "unknown metric 'roc_auc'; expected one of " + names(metrics.METRICS)),
        case("fit-unknown-metric-str", "classifier", fit(metrics="auc"), ValueError, "metric",
             names(metrics.METRICS)),
        case("evaluate-unknown-metric", "classifier", lambda m: m.evaluate(X, LABELS, metrics=["roc_auc"]), ValueError,
             "metric", names(metrics.METRICS)),
        case("fit-metric-not-a-name", "classifier", fit(metrics=[len]), TypeError, "metrics", "must be names"),
        case("fit-metrics=5", "classifier", fit(metrics=5), TypeError, "metrics"),
        case("fit-shuffle=1", "classifier", fit(shuffle=1), TypeError, "shuffle", "must be True or False"),
        case("fit-verbose=3", "classifier", fit(verbose=3), ValueError, "verbose", "must be 0, 1 or 2"),
        case("fit-callbacks-not-callbacks", "classifier", fit(callbacks=[print]), TypeError, "callbacks[0]"),
    ]


def _other_rows():
    fit = lambda **kw: lambda m: m.fit(X, LABELS, **kw)  # noqa: E731
    weights = lambda change: lambda m: m.set_weights(change([w + 1.0 for w in m.get_weights()]))  # noqa: E731
    p3 = np.full((2, 3), 1 / 3)
    return [
        # X and y disagree
        case("fit-length-mismatch", "classifier", lambda m: m.fit(X, LABELS[:5]), ValueError, "y",
             "X has 12 samples but y has 5"),
        case("evaluate-length-mismatch", "classifier", lambda m: m.evaluate(X[:4], LABELS), ValueError, "X",
             "X has 4 samples but y has 12"),
        case("validation_data-length-mismatch", "classifier", fit(validation_data=(X, LABELS[:3])), ValueError,
             "validation_data[1]", r"validation_data\[0\] has 12 samples but validation_data\[1\] has 3"),
        # regression / binary targets
        case("fit-y-columns-do-not-match-output", "regressor", lambda m: m.fit(X, np.ones((12, 2))), ValueError,
             "y", r"must have shape \(n, 1\) to match the model's 1 output\(s\) or \(n,\); received shape \(12, 2\)"),
        case("fit-regression-y-3-D", "regressor", lambda m: m.fit(X, np.ones((12, 1, 1))), ValueError, "y",
             r"received shape \(12, 1, 1\)"),
        case("fit-y-nan-regression", "regressor", lambda m: m.fit(X, with_value(TARGET, (9, 0), np.nan)),
             ValueError, "y", r"must be finite; y\[9, 0\] = nan"),
        case("fit-bce-target-above-1", "regressor",
             lambda m: m.fit(X, with_value(BINARY, 3, 1.5), loss=losses.BinaryCrossEntropy(from_logits=True)),
             ValueError, "y", r"for binary cross-entropy must lie in \[0, 1\]"),
        case("fit-bce-target-below-0", "regressor",
             lambda m: m.fit(X, with_value(BINARY, 3, -0.5), loss=losses.BinaryCrossEntropy(from_logits=True)),
             ValueError, "y", r"must lie in \[0, 1\]"),
        # arrays of another library
        case("fit-torch-X", "classifier", lambda m: m.fit(torch_tensor(X), LABELS), TypeError, "X",
             r"X is a torch array but the model runs on cpu \(numpy\); move it first"),
        case("fit-torch-y", "classifier", lambda m: m.fit(X, torch_tensor(LABELS)), TypeError, "y",
             "y is a torch array"),
        case("predict-torch-X", "classifier", lambda m: m.predict(torch_tensor(X)), TypeError, "X", "torch array"),
        case("evaluate-strict-X", "classifier", lambda m: m.evaluate(strict_array(X), LABELS), TypeError, "X",
             "X is a array_api_strict array but the model runs on cpu"),
        case("fit-strict-y", "classifier", lambda m: m.fit(X, strict_array(LABELS)), TypeError, "y",
             "array_api_strict array"),
        case("validation_data-strict-X", "classifier", fit(validation_data=(strict_array(X), LABELS)), TypeError,
             "validation_data[0]", "array_api_strict array"),
        case("strict-model-torch-X", "strict", lambda m: m.fit(torch_tensor(X), LABELS), TypeError, "X",
             r"torch array but the model runs on array_api_strict"),
        case("forward-host-X", "classifier", lambda m: m(X.tolist()), TypeError, "x", "use predict"),
        # the strict model checks its own arrays as thoroughly as NumPy ones
        case("strict-model-nan-X", "strict", lambda m: m.fit(strict_array(with_value(X, (1, 2), np.nan)), LABELS),
             ValueError, "X", r"X\[1, 2\] = nan"),
        case("strict-model-fractional-labels", "strict", lambda m: m.fit(strict_array(X), strict_array(LABELS + 0.5)),
             ValueError, "y", "whole numbers"),
        case("strict-model-complex-y", "strict", lambda m: m.fit(X, strict_array(LABELS.astype(complex))),
             TypeError, "y", "must be real-valued"),
        case("strict-model-empty-X", "strict", lambda m: m.predict(strict_array(X[:0])), ValueError, "X",
             "must not be empty"),
        # numpy scalars are host data, not a foreign library
        case("predict-numpy-scalar-X", "classifier", lambda m: m.predict(np.float64(1.0)), ValueError, "X",
             r"must be 2-D"),
        case("fit-numpy-scalar-y", "classifier", lambda m: m.fit(X, np.int64(1)), ValueError, "y",
             r"received shape \(\)"),
        # finite float64 data that overflows the model's float32
        case("fit-X-overflows-float32", "regressor", lambda m: m.fit(X * 1e300, TARGET), ValueError, "X",
             "finite"),
        case("set_weights-overflow-float32", "regressor",
             lambda m: m.set_weights([w.astype(np.float64) * 1e300 for w in m.get_weights()]), ValueError,
             "weights[0]", "finite"),
        # validation_data / validation_split
        case("validation_data-not-a-pair", "classifier", fit(validation_data=X), TypeError, "validation_data",
             r"must be a pair \(X_val, y_val\)"),
        case("validation_data-four", "classifier", fit(validation_data=(X, LABELS, LABELS, LABELS)), TypeError,
             "validation_data", r"must be a pair \(X_val, y_val\), a triple \(X_val, y_val, val_sample_weight\)"),
        case("validation_data-negative-weights", "classifier", fit(validation_data=(X, LABELS, -np.ones(len(X)))),
             ValueError, "validation_data[2]", "must be non-negative"),
        case("validation_data-dict", "classifier", fit(validation_data={"X": X, "y": LABELS}), TypeError,
             "validation_data", "must be a pair"),
        case("validation_data-and-split", "classifier", fit(validation_data=(X, LABELS), validation_split=0.2),
             ValueError, "validation_split", "give validation_data or validation_split, not both"),
        case("validation_split=1", "classifier", fit(validation_split=1.0), ValueError, "validation_split",
             r"must be in \[0.0, 1.0\)"),
        case("validation_split=0", "classifier", fit(validation_split=0.0), ValueError, "validation_split",
             r"must be in \(0, 1\)"),
        case("validation_split=nan", "classifier", fit(validation_split=math.nan), ValueError, "validation_split",
             "must be finite"),
        # set_weights: every array is checked before any is written
        case("set_weights-too-few", "classifier", weights(lambda w: w[:3]), ValueError, "weights",
             r"must hold 4 arrays \[W1, b1, ...\]; received 3"),
        case("set_weights-too-many", "classifier", weights(lambda w: w + w[:1]), ValueError, "weights",
             "received 5"),
        case("set_weights-not-a-list", "classifier", weights(lambda w: dict(enumerate(w))), TypeError, "weights",
             "must be a list of arrays"),
        case("set_weights-transposed", "classifier", weights(lambda w: [w[0].T] + w[1:]), ValueError, "weights[0]",
             r"must have shape \(4, 5\); received \(5, 4\)"),
        case("set_weights-bias-shape", "classifier", weights(lambda w: w[:3] + [w[3][:2]]), ValueError,
             "weights[3]", r"must have shape \(3,\); received \(2,\)"),
        case("set_weights-nan", "classifier", weights(lambda w: w[:3] + [with_value(w[3], 1, np.nan)]), ValueError,
             "weights[3]", r"must be finite; weights\[3\]\[1\] = nan"),
        case("set_weights-inf", "classifier", weights(lambda w: [with_value(w[0], (2, 1), -np.inf)] + w[1:]),
             ValueError, "weights[0]", r"weights\[0\]\[2, 1\] = -inf"),
        case("set_weights-complex", "classifier", weights(lambda w: w[:3] + [w[3].astype(complex)]), TypeError,
             "weights[3]", "must be real-valued"),
        case("set_weights-strings", "classifier", weights(lambda w: w[:2] + [w[2].astype(str)] + w[3:]), TypeError,
             "weights[2]", "must be a numeric array"),
        case("set_weights-none", "classifier", weights(lambda w: w[:1] + [None] + w[2:]), TypeError, "weights[1]",
             "must be a numeric array"),
        case("set_weights-ragged", "classifier", weights(lambda w: [[[1.0, 2.0], [3.0]]] + w[1:]), TypeError,
             "weights[0]", "numeric array"),
        # public loss calls
        case("loss-shape-mismatch", None, lambda: losses.MSE()(np.zeros((3, 2)), np.zeros((3, 3))), ValueError,
             "target", r"must have shape \(n, 2\).*received shape \(3, 3\)"),
        case("loss-row-mismatch", None, lambda: losses.MSE()(np.zeros((3, 1)), np.zeros(4)), ValueError, "target",
             "target has 4 rows but pred has 3"),
        case("loss-pred-1-D", None, lambda: losses.MSE()(np.zeros(3), np.zeros(3)), ValueError, "pred",
             r"must be 2-D \(n_samples, n_outputs\); received shape \(3,\)"),
        case("loss-grad-pred-1-D", None, lambda: losses.Huber().grad(np.zeros(3), np.zeros(3)), ValueError, "pred",
             "must be 2-D"),
        case("loss-pred-3-D", None, lambda: losses.MAE()(np.zeros((3, 1, 1)), np.zeros(3)), ValueError, "pred",
             "must be 2-D"),
        case("loss-pred-empty", None, lambda: losses.MSE()(np.zeros((0, 1)), np.zeros(0)), ValueError, "pred",
             "must not be empty"),
        case("loss-pred-object", None, lambda: losses.MSE()(np.zeros((3, 1), dtype=object), np.zeros(3)), TypeError,
             "pred", "must be a numeric array"),
        case("loss-pred-complex", None, lambda: losses.MSE()(np.zeros((3, 1), dtype=complex), np.zeros(3)),
             TypeError, "pred", "must be real-valued"),
        case("loss-pred-ragged-list", None, lambda: losses.MSE()([[1.0], [1.0, 2.0]], [1.0, 2.0]), TypeError, "pred"),
        case("loss-target-nan", None, lambda: losses.MSE()(np.zeros((2, 1)), [np.nan, 0.0]), ValueError, "target",
             r"target\[0\] = nan"),
        case("loss-target-torch", None, lambda: losses.MSE()(np.zeros((2, 1)), torch_tensor([0.0, 1.0])), TypeError,
             "target", "torch array"),
        case("loss-bce-target-outside", None, lambda: losses.BinaryCrossEntropy()(p3[:, :1], [2.0, 0.0]), ValueError,
             "target", r"must lie in \[0, 1\]"),
        case("loss-cce-label-too-large", None, lambda: losses.CategoricalCrossEntropy()(p3, [0, 3]), ValueError,
             "target", r"must be in \[0, 2\].*found 3"),
        case("loss-cce-rows-not-summing-to-1", None,
             lambda: losses.CategoricalCrossEntropy(from_logits=True).grad(p3, np.full((2, 3), 0.5)), ValueError,
             "target", "rows must sum to 1"),
        case("losses.get-5", None, lambda: losses.get(5), TypeError, "loss"),
        case("optim.get-unknown", None, lambda: optim.get("newton"), ValueError, "optimizer", names(optim.OPTIMIZERS)),
        case("metrics.get-unknown", None, lambda: metrics.get("auc"), ValueError, "metric", names(metrics.METRICS)),
    ]


BAD_INPUTS = (_feature_rows() + _target_rows() + _positive_int_rows() + _optimizer_rows()
              + _loss_and_layer_hyperparameter_rows() + _construction_rows() + _name_rows() + _other_rows())


@pytest.mark.parametrize("subject, call, exc, arg, match", BAD_INPUTS)
def test_bad_input_is_refused_and_changes_nothing(subject, call, exc, arg, match):
    model = SUBJECTS[subject][0]() if subject else None
    before = fingerprint(model) if model else None
    with pytest.raises(exc) as info:
        call(model) if model else call()
    message = str(info.value)
    assert re.search(rf"(?<![\w\[]){re.escape(arg)}(?![\w\[])", message), f"the message does not name {arg}"
    assert re.search(match, message), f"{match!r} not in {message!r}"
    if model is None:
        return
    assert fingerprint(model) == before
    # nothing hidden moved either: training on is bitwise the same as on a twin that never saw the bad call
    factory, data = SUBJECTS[subject]
    for a, b in zip(train_on(model, data), train_on(factory(), data)):
        assert a.tobytes() == b.tobytes()


def test_the_table_has_unique_ids():
    ids = [p.id for p in BAD_INPUTS]
    assert len(ids) == len(set(ids))


def test_numpy_data_is_fine_for_an_array_api_strict_model():
    """Host data is accepted everywhere (moved once); only arrays of another library are refused."""
    model = _strict_classifier()
    model.fit(X.tolist(), LABELS, validation_data=(X, LABELS.tolist()))
    model.fit(strict_array(X), LABELS)
    model.set_weights(model.get_weights())
    assert tuple(model.predict(X).shape) == (12, 3)
    assert set(model.evaluate(X, strict_array(LABELS), metrics=["accuracy"])) == {"loss", "accuracy"}
    assert model.backend.owns(model.predict(X)) and model.xp is not np


@pytest.mark.parametrize("device_name", ["numpy", pytest.param("array_api_strict")])
def test_bool_class_labels_are_accepted_on_every_namespace(device_name):
    labels = LABELS > 0
    if device_name == "numpy":
        model, y = _classifier(), labels
    else:
        model, y = _strict_classifier(), strict_array(labels)
    model.fit(X, y)


@pytest.mark.parametrize("int_dtype", [np.int64, np.int8])
@pytest.mark.parametrize("loss", [losses.MSE(), losses.MAE(), losses.BinaryCrossEntropy()], ids=repr)
def test_public_loss_on_integer_predictions_keeps_fractional_targets(loss, int_dtype):
    pred, target = np.array([[1.0], [0.0]]), np.array([0.5, 0.25])
    np.testing.assert_allclose(float(loss(pred.astype(int_dtype), target)), float(loss(pred, target)), rtol=1e-12)
    np.testing.assert_allclose(loss.grad(pred.astype(int_dtype), target), loss.grad(pred, target), rtol=1e-12)


# -- numerics at the extremes ---------------------------------------------------------------------------------------
DTYPES = ["float32", "float64"]


def host(a):
    return np.asarray(gn.to_numpy(a), dtype=np.float64)


def assert_finite(*arrays):
    for a in arrays:
        assert np.all(np.isfinite(host(a))), host(a)


LOGIT_LOSSES = {
    "mse": losses.MSE, "mae": losses.MAE, "huber": losses.Huber,
    "bce_logits": lambda: losses.BinaryCrossEntropy(from_logits=True),
    "cce_logits": lambda: losses.CategoricalCrossEntropy(from_logits=True),
}


def _logit_cases():
    """(loss, magnitude, dtype) where the true loss and gradient are finite in that dtype."""
    return [pytest.param(name, magnitude, dtype, id=f"{name}-{magnitude:g}-{dtype}")
            for name in LOGIT_LOSSES for dtype in DTYPES for magnitude in (1e4, 1e30)
            if (name, magnitude, dtype) != ("mse", 1e30, "float32")]  # (1e30)^2 overflows float32: inf is right


@pytest.mark.parametrize("name, magnitude, dtype", _logit_cases())
def test_losses_are_finite_for_huge_logits(name, magnitude, dtype, to_xp):
    loss = LOGIT_LOSSES[name]()
    m = magnitude
    z = to_xp([[m, -m, 0.0], [-m, m, 0.0], [0.0, 0.0, 0.0], [m, m, -m]], dtype)
    for target in (np.eye(3)[[0, 0, 2, 1]], np.eye(3)[[1, 2, 0, 2]], np.full((4, 3), 1 / 3)):
        t = to_xp(target, dtype)
        value, grad = loss.value_and_grad(z, t)
        assert_finite(value, grad, loss.value(z, t), loss.gradient(z, t), loss(z, target), loss.grad(z, target))
        assert float(value) >= 0 and tuple(grad.shape) == (4, 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_from_logits_is_exact_for_huge_spreads(dtype, to_xp):
    """Logits 2e4 apart: the right class costs 0, the wrong one 1e4 (float32 and float64 both hold these)."""
    z = to_xp([[1e4, -1e4, 0.0]], dtype)
    cce = losses.CategoricalCrossEntropy(from_logits=True)
    assert float(cce.value(z, to_xp([[1.0, 0.0, 0.0]], dtype))) == 0.0
    assert float(cce.value(z, to_xp([[0.0, 0.0, 1.0]], dtype))) == 1e4
    np.testing.assert_array_equal(host(cce.gradient(z, to_xp([[0.0, 0.0, 1.0]], dtype))), [[1.0, 0.0, -1.0]])
    bce = losses.BinaryCrossEntropy(from_logits=True)
    assert float(bce.value(to_xp([[1e4, -1e4]], dtype), to_xp([[1.0, 1.0]], dtype))) == 5e3


def test_cross_entropy_from_logits_at_the_float32_limit(to_xp):
    z = to_xp([[3e38, -3e38]], "float32")
    t = to_xp([[1.0, 0.0]], "float32")
    cce = losses.CategoricalCrossEntropy(from_logits=True)
    assert float(cce.value(z, t)) == 0.0
    np.testing.assert_array_equal(host(cce.gradient(z, t)), [[0.0, 0.0]])


PROBABILITY_LOSSES = {"bce": losses.BinaryCrossEntropy, "cce": losses.CategoricalCrossEntropy}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PROBABILITY_LOSSES)
def test_cross_entropy_of_probabilities_0_and_1_is_finite(name, dtype, to_xp):
    """Probabilities of exactly 0 and 1, right and wrong: logs clamp at -100, gradients divide by >= 1e-12."""
    loss = PROBABILITY_LOSSES[name]()
    p = to_xp(np.eye(3)[[0, 1, 2, 0]], dtype)
    targets = [np.eye(3)[[0, 1, 2, 0]], np.eye(3)[[1, 2, 0, 1]], np.full((4, 3), 1 / 3)]
    for target in targets:
        t = to_xp(target, dtype)
        value, logits_grad = loss.value_and_logits_grad(p, t)
        assert_finite(value, logits_grad, loss.value(p, t), loss.gradient(p, t), *loss.value_and_grad(p, t))
        assert 0 <= float(value) <= 100 * 3
    right, wrong = (float(loss.value(p, to_xp(t, dtype))) for t in targets[:2])
    assert right == 0.0
    assert wrong == pytest.approx(100.0 if name == "cce" else 200.0 / 3)  # bce: 2 of 3 elements wrong a row


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_huge_spreads(dtype, to_xp):
    np.testing.assert_array_equal(host(array_utils.softmax(to_xp([[1e4, -1e4, 0.0]], dtype))), [[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(host(activations.Softmax()(to_xp([[-1e4, 1e4]], dtype))), [[0.0, 1.0]])


def test_softmax_at_the_float32_limit(to_xp):
    np.testing.assert_array_equal(host(array_utils.softmax(to_xp([[3e38, -3e38]], "float32"))), [[1.0, 0.0]])


# f(z) and f'(z) at z = -1e4 and +1e4; none of these overflows in float32
ACTIVATION_LIMITS = {
    "linear": ([-1e4, 1e4], [1.0, 1.0]),
    "sigmoid": ([0.0, 1.0], [0.0, 0.0]),
    "tanh": ([-1.0, 1.0], [0.0, 0.0]),
    "relu": ([0.0, 1e4], [0.0, 1.0]),
    "leaky_relu": ([-100.0, 1e4], [0.01, 1.0]),
    "elu": ([-1.0, 1e4], [0.0, 1.0]),
    "softplus": ([0.0, 1e4], [0.0, 1.0]),
    "silu": ([0.0, 1e4], [0.0, 1.0]),
    "gelu": ([0.0, 1e4], [0.0, 1.0]),
    "softmax": ([0.0, 1.0], [0.0, 0.0]),  # one row [-1e4, 1e4]; the gradient of sum(y) is 0
}


def test_activation_limits_cover_every_activation():
    assert set(ACTIVATION_LIMITS) == set(activations.ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ACTIVATION_LIMITS))
def test_activations_at_plus_minus_1e4(name, dtype, backend, to_xp):
    """Forward and backward at +-1e4, by the activation itself and by the ops the layers run (in-place on NumPy)."""
    act = activations.ACTIVATIONS[name]()
    expected_y, expected_dz = ACTIVATION_LIMITS[name]
    rtol = 1e-6 if dtype == "float32" else 1e-12
    ops = ops_for(backend.xp)
    z = lambda: to_xp([[-1e4, 1e4]], dtype)  # noqa: E731  (fresh: the ops may overwrite their inputs)
    for run in ("activation", "ops"):
        if run == "activation":
            y = act.forward(z())
            dz = act.backward(backend.xp.ones_like(y), z() if act.uses_input else None, y)
        else:
            z_saved, y = ops.bias_act(z(), to_xp([0.0, 0.0], dtype), act)
            dz = ops.act_grad(act, backend.xp.ones_like(y), z_saved, y)
        np.testing.assert_allclose(host(y), [expected_y], rtol=rtol, atol=0)
        np.testing.assert_allclose(host(dz), [expected_dz], rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype, magnitude", [("float32", 1e20), ("float64", 1e200)])
def test_gelu_backward_far_beyond_1e4(dtype, magnitude):
    act = activations.GELU()
    z = np.array([[-magnitude, magnitude]], dtype=dtype)
    with np.errstate(all="ignore"):  # only the values are under test here
        y = act.forward(z)
        dz = act.backward(np.ones_like(z), z, y)
    np.testing.assert_array_equal(host(y), host(z) * [[0.0, 1.0]])
    np.testing.assert_array_equal(host(dz), [[0.0, 1.0]])


def _log1p_exp(v):
    """``log(1 + exp(v))`` in float64 closed form, for moderate ``v``."""
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


# (function, input row, exact float64 result)
STABLE_HELPERS = [
    ("softmax", [1e4, -1e4, 0.0], [1.0, 0.0, 0.0]),
    ("softmax", [1e4, 1e4], [0.5, 0.5]),
    ("softmax", [1e4 - 1.0, 1e4], [1 / (1 + math.e), math.e / (1 + math.e)]),
    ("log_softmax", [1e4, 0.0], [0.0, -1e4]),
    ("log_softmax", [1e4, -1e4, 0.0], [0.0, -2e4, -1e4]),
    ("logsumexp", [1e4, 1e4], 1e4 + math.log(2.0)),
    ("logsumexp", [-1e4, -1e4], -1e4 + math.log(2.0)),
    ("logsumexp", [1e4, -1e4, 0.0], 1e4),
    ("sigmoid", [-1e4, 0.0, 1e4], [0.0, 0.5, 1.0]),
    ("sigmoid", [-80.0, 80.0], [math.exp(-80.0) / (1 + math.exp(-80.0)), 1.0]),
    ("softplus", [-1e4, 1e4], [0.0, 1e4]),
    ("softplus", [-30.0, 15.0, 30.0], [_log1p_exp(-30.0), _log1p_exp(15.0), 30.0]),
    ("log_sigmoid", [-1e4, 1e4], [-1e4, 0.0]),
    ("log_sigmoid", [-30.0, 30.0], [-_log1p_exp(30.0), -_log1p_exp(-30.0)]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn, z, expected", STABLE_HELPERS, ids=[f"{f}{z}" for f, z, _ in STABLE_HELPERS])
def test_stable_helpers_are_finite_and_accurate_at_the_extremes(fn, z, expected, dtype, to_xp):
    got = getattr(array_utils, fn)(to_xp([z], dtype))
    assert_finite(got)
    rtol = 2e-7 if dtype == "float32" else 1e-15
    np.testing.assert_allclose(host(got), np.asarray([expected]).reshape(host(got).shape), rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_keeps_small_differences_at_large_offsets(dtype, to_xp):
    tail = math.log1p(math.exp(-10.0))
    for z, expected in [([1e4, 1e4 - 10.0], [-tail, -10.0 - tail]), ([-1e4, -1e4], [-math.log(2.0)] * 2)]:
        # PyTorch's order, (z - max) - log(sum exp): log(1 + 4.5e-5) keeps ~3 digits in float32, ~11 in float64
        # (the former z - (max + log sum) returned exactly 0 for the first entry)
        np.testing.assert_allclose(host(array_utils.log_softmax(to_xp([z], dtype))), [expected],
                                   rtol=1e-3 if dtype == "float32" else 1e-10)


# -- training on badly scaled data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e3, 1e5])
def test_fit_on_large_feature_scales_stays_finite_in_float32(scale, device):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(120, 6))
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0.5)
    model = gn.Sequential([gn.Dense(6, 16, "relu"), gn.Dense(16, 3)], device=device, dtype="float32", seed=0)
    history = model.fit(features * scale, labels, loss=losses.CategoricalCrossEntropy(from_logits=True),
                        optimizer=optim.Adam(lr=1e-2), epochs=4, batch_size=32, metrics=["accuracy"])
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert np.all(np.isfinite(host(model.predict(features * scale))))


# -- determinism ----------------------------------------------------------------------------------------------------
DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, json
    import numpy as np
    import gpunet as gn

    def train(optimizer, seed=0):
        rng = np.random.default_rng(5)
        X = rng.normal(size=(50, 3))
        y = (X[:, 0] - X[:, 2] > 0).astype(int) + (X[:, 1] > 1)
        model = gn.Sequential([gn.Dense(3, 6, "tanh"), gn.Dense(6, 3, "softmax")], dtype="float32", seed=seed)
        model.fit(X, y, loss="cce", optimizer=optimizer, epochs=3, batch_size=8, shuffle=True)
        return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()

    def runs():
        return {"adam": train(gn.optim.Adam(lr=0.01)), "sgd": train(gn.optim.SGD(lr=0.1, momentum=0.9)),
                "adam-seed-1": train(gn.optim.Adam(lr=0.01), seed=1)}

    if __name__ == "__main__":
        print(json.dumps(runs()))
""")


@pytest.fixture(scope="module")
def determinism(tmp_path_factory):
    """The script above, as a module of this process and as a separate process's output."""
    path = tmp_path_factory.mktemp("determinism") / "train_and_hash.py"
    path.write_text(DETERMINISM_SCRIPT)
    namespace = {"__name__": "train_and_hash"}
    exec(compile(DETERMINISM_SCRIPT, str(path), "exec"), namespace)
    package_root = str(Path(gn.__file__).resolve().parents[1])  # this gpunet, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=True, timeout=120,
                         env=env)
    return namespace["runs"], json.loads(out.stdout)


def test_same_seed_gives_bitwise_identical_training_in_one_process(determinism):
    runs, _ = determinism
    first, second = runs(), runs()
    assert first == second
    assert first["adam"] != first["adam-seed-1"]  # a different seed: another initialisation and shuffling order


def test_same_seed_gives_bitwise_identical_training_across_processes(determinism):
    runs, other_process = determinism
    assert runs() == other_process


def test_same_seed_same_training_on_every_namespace(device):
    def weights():
        model = gn.Sequential([gn.Dense(4, 5, "relu"), gn.Dense(5, 3, "softmax")], device=device, dtype="float64",
                              seed=11)
        model.fit(X, LABELS, loss="cce", optimizer=optim.Adam(lr=0.05), epochs=3, batch_size=5, shuffle=True)
        return model.get_weights()

    for a, b in zip(weights(), weights()):
        assert a.tobytes() == b.tobytes()


def _global_random_state():
    """Python's and NumPy's global generators, comparable with ==."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return random.getstate(), keys.tobytes(), position, has_gauss, cached_gaussian


@pytest.fixture
def global_random_state_restored():
    """Reseeding the global generators is part of the test; leave them as they were for the tests that follow."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


@pytest.mark.parametrize("seed", [0, None])
@pytest.mark.usefixtures("global_random_state_restored")
def test_training_neither_uses_nor_changes_the_global_random_state(seed):
    def train(global_seed):
        np.random.seed(global_seed)
        random.seed(global_seed)
        before = _global_random_state()
        model = gn.Sequential([gn.Dense(4, 5, "relu"), gn.Dense(5, 3, "softmax")], dtype="float32", seed=seed)
        initial = model.get_weights()
        model.fit(X, LABELS, loss="cce", optimizer="adam", epochs=2, batch_size=4, shuffle=True,
                  validation_split=0.25)
        model.predict(X)
        assert _global_random_state() == before, "gpunet touched the global random state"
        return initial, model.get_weights()

    first, second = train(1), train(2)
    if seed is not None:  # the global seed has no effect: seeded runs agree bitwise
        for a, b in zip(first[0] + first[1], second[0] + second[1]):
            assert a.tobytes() == b.tobytes()
    else:  # seed=None draws fresh entropy, not from NumPy's global generator
        assert not np.array_equal(first[0][0], second[0][0])

