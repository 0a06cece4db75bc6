"""Property tests (Hypothesis): random networks, every loss on random shapes and values, target preparation, and
``fit`` on garbage-ish input.

They run on NumPy; one small property also runs on array_api_strict (slow under Hypothesis). Example counts are
modest so the file stays well under 30 seconds.
"""

import math
import re

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a test extra; machines without it skip this file

from hypothesis import HealthCheck, assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import gpunet as gn  # noqa: E402
from gpunet import activations, losses  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["float32", "float64"]


def finite(dtype, bound):
    """Finite floats of ``dtype`` with ``|x| <= bound``."""
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32 if dtype == "float32" else 64)


def host(a):
    return np.asarray(gn.to_numpy(a), dtype=np.float64)


def assert_finite(*arrays):
    for a in arrays:
        assert np.all(np.isfinite(host(a))), a


# -- random networks ------------------------------------------------------------------------------------------------
HIDDEN_ACTIVATIONS = sorted(set(activations.ACTIVATIONS) - {"softmax"})


@st.composite
def networks(draw):
    """``(sizes, activation names, dtype, seed, x)``: depth 1..3, sizes 1..8, softmax only last, |x| <= 1e3."""
    depth = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 8), min_size=depth + 1, max_size=depth + 1))
    names = [draw(st.sampled_from(HIDDEN_ACTIVATIONS)) for _ in range(depth - 1)]
    names.append(draw(st.sampled_from(sorted(activations.ACTIVATIONS))))
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(hnp.arrays(dtype, (draw(st.integers(1, 6)), sizes[0]), elements=finite(dtype, 1e3)))
    return sizes, names, dtype, draw(st.integers(0, 2**32 - 1)), x


def build(sizes, names, dtype, seed, fused):
    layers = [gn.Dense(a, b, act) for a, b, act in zip(sizes[:-1], sizes[1:], names)]
    return gn.Sequential(layers, dtype=dtype, seed=seed, fused=fused)


@SETTINGS
@given(networks(), st.data())
def test_random_networks_forward_and_backward(net, data):
    sizes, names, dtype, seed, x = net
    n = x.shape[0]
    grad_out = data.draw(hnp.arrays(dtype, (n, sizes[-1]), elements=finite(dtype, 10.0)), label="grad_out")
    results = []
    for fused in (True, False):  # NumPy's in-place ops and the Array-API reference
        model = build(sizes, names, dtype, seed, fused=fused)
        y = model(x)
        dx = model.backward(grad_out)
        assert tuple(y.shape) == (n, sizes[-1]) and y.dtype == np.dtype(dtype)
        assert tuple(dx.shape) == x.shape
        assert_finite(y, dx, *model.gradients())
        assert [tuple(g.shape) for g in model.gradients()] == [tuple(p.shape) for p in model.parameters()]
        results.append([host(a) for a in (y, dx, *model.gradients())])
    rtol, atol = (1e-4, 1e-4) if dtype == "float32" else (1e-10, 1e-10)
    for fused, reference in zip(*results):
        scale = max(1.0, float(np.abs(reference).max()))
        np.testing.assert_allclose(fused, reference, rtol=rtol, atol=atol * scale)


# -- losses ---------------------------------------------------------------------------------------------------------
LOSS_KINDS = ["mse", "mae", "huber", "bce", "bce_logits", "cce", "cce_logits"]


@st.composite
def probability_rows(draw, dtype, n, k):
    """``(n, k)`` rows of non-negative numbers summing to 1 (one-hot rows, exact zeros and ones included)."""
    raw = draw(hnp.arrays(np.float64, (n, k), elements=st.sampled_from([0.0, 1.0]) | st.floats(0, 1)))
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    return (raw / raw.sum(axis=1, keepdims=True)).astype(dtype)


@st.composite
def loss_cases(draw, dtypes=DTYPES):
    """``(loss, pred, target)`` with pred in the loss's domain and a valid target in any accepted form."""
    kind = draw(st.sampled_from(LOSS_KINDS))
    dtype = draw(st.sampled_from(dtypes))
    n, k = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    big = finite(dtype, 2.0**50)  # about 1e15: large, yet (2^51)^2 fits in float32
    if kind in ("bce", "cce"):
        pred = draw(probability_rows(dtype, n, k)) if kind == "cce" else \
            draw(hnp.arrays(dtype, (n, k), elements=st.sampled_from([0.0, 1.0]) | finite(dtype, 1.0).map(abs)))
    else:
        pred = draw(hnp.arrays(dtype, (n, k), elements=big))
    if kind.startswith("cce"):
        target = draw(st.one_of(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)),
                                probability_rows(dtype, n, k)))
    elif kind.startswith("bce"):
        target = draw(hnp.arrays(dtype, (n, k), elements=finite(dtype, 1.0).map(abs)))
    else:
        target = draw(hnp.arrays(dtype, (n, k), elements=big))
    if k == 1 and not kind.startswith("cce") and draw(st.booleans()):
        target = target[:, 0]  # (n,) for a single output (cce reads (n,) as class indices)
    loss = {
        "mse": losses.MSE, "mae": losses.MAE, "bce": losses.BinaryCrossEntropy, "cce": losses.CategoricalCrossEntropy,
        "huber": lambda: losses.Huber(delta=draw(st.floats(1e-3, 1e3))),
        "bce_logits": lambda: losses.BinaryCrossEntropy(from_logits=True),
        "cce_logits": lambda: losses.CategoricalCrossEntropy(from_logits=True),
    }[kind]()
    return loss, pred, target


def check_loss(loss, pred, target, xp):
    value, grad = loss(pred, target), loss.grad(pred, target)
    assert_finite(value, grad)
    assert float(value) >= 0
    assert tuple(grad.shape) == tuple(pred.shape) and grad.dtype == pred.dtype
    prepared = xp.astype(loss.prepare_target(target, pred.shape[1]), pred.dtype)
    rtol = 1e-5 if pred.dtype == xp.float32 else 1e-12
    # value is the mean of the row losses (the form sample weights use)
    np.testing.assert_allclose(float(value), float(xp.mean(loss.row_values(pred, prepared))), rtol=rtol, atol=0)
    # the (value, gradient) pair fit uses agrees with the public calls
    fused_value, fused_grad = loss.value_and_grad(pred, prepared)
    np.testing.assert_allclose(float(fused_value), float(value), rtol=rtol, atol=0)
    np.testing.assert_allclose(host(fused_grad), host(grad), rtol=rtol, atol=0)
    if loss.pairs_with is not None:  # probabilities of the matching output layer
        logits_value, logits_grad = loss.value_and_logits_grad(pred, prepared)
        assert_finite(logits_value, logits_grad)
        np.testing.assert_allclose(float(logits_value), float(value), rtol=rtol, atol=0)


@SETTINGS
@given(loss_cases())
def test_every_loss_is_finite_non_negative_and_the_mean_of_its_rows(case):
    check_loss(*case, np)


@settings(SETTINGS, max_examples=25)
@given(loss_cases(dtypes=["float64"]))
def test_every_loss_on_array_api_strict(case):
    xps = pytest.importorskip("array_api_strict")
    loss, pred, target = case
    check_loss(loss, xps.asarray(pred), xps.asarray(target), xps)


# -- target preparation ---------------------------------------------------------------------------------------------
LABEL_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]


@SETTINGS
@given(st.integers(1, 6), st.sampled_from(LABEL_DTYPES), st.data())
def test_class_indices_round_trip_to_one_hot(k, dtype, data):
    labels = data.draw(hnp.arrays(dtype, data.draw(st.integers(1, 10)), elements=st.integers(0, k - 1)))
    one_hot = losses.CategoricalCrossEntropy().prepare_target(labels, k)
    assert one_hot.shape == (len(labels), k)
    np.testing.assert_array_equal(one_hot.argmax(axis=1), labels.astype(np.int64))
    np.testing.assert_array_equal(one_hot.sum(axis=1), 1)
    assert set(np.unique(one_hot)) <= {0, 1}


ANY_DTYPES = ["float64", "float32", "float16", "int64", "int8", "uint8", "bool", "complex128", "object", "str",
              "datetime64[s]", "list"]


@st.composite
def garbage(draw, shape=None):
    """Arrays (or nested lists, scalars, None) of random shape and dtype with values in [-10, 10], NaN and inf
    sprinkled into the floating ones."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([None, "abc", 3.0, [[1.0, 2.0], [3.0]], {"a": 1}, [], [[]]]))
    shape = shape if shape is not None else draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    dirty = draw(st.booleans())
    elements = st.floats(-10, 10) | (st.sampled_from([math.nan, math.inf, -math.inf]) if dirty else st.integers(0, 3))
    base = draw(hnp.arrays(np.float64, shape, elements=elements))
    dtype = draw(st.sampled_from(ANY_DTYPES))
    if dtype == "list":
        return base.tolist()
    if dtype in ("float64", "float32", "float16", "complex128", "object", "str"):
        return base.astype(dtype)
    return np.round(np.nan_to_num(base, nan=0.0, posinf=1.0, neginf=-1.0)).astype(dtype)


@st.composite
def near_valid_targets(draw, n, k):
    """Valid class indices, one-hot rows or targets in [0, 1] for ``n`` rows and ``k`` outputs, or one of those
    slightly off (a row too many or too few, labels out of range, values outside [0, 1])."""
    off = draw(st.sampled_from(["valid", "valid", "rows", "values"]))
    m = draw(st.sampled_from([n - 1, n + 1])) if off == "rows" and n > 1 else n
    labels = st.integers(-1, k) if off == "values" else st.integers(0, k - 1)
    values = st.floats(-1.0, 2.0) if off == "values" else st.floats(0.0, 1.0)
    return draw(st.one_of(
        hnp.arrays(np.int64, (m,), elements=labels),
        hnp.arrays(np.float64, (m, k), elements=st.sampled_from([0.0, 1.0])).map(_one_hot_rows),
        hnp.arrays(np.float64, (m, k), elements=values),
    ))


def _one_hot_rows(a):
    """``a`` with each row made one-hot: a 1 at its first non-zero (at 0 in an all-zero row)."""
    out = np.zeros_like(a)
    out[np.arange(len(a)), np.argmax(a, axis=1)] = 1.0
    return out


def valid_features(n, k):
    return hnp.arrays(np.float64, (n, k), elements=st.floats(-10, 10))


@SETTINGS
@given(st.sampled_from(LOSS_KINDS), st.integers(1, 4), st.data())
def test_prepare_target_accepts_or_refuses_with_value_or_type_error(kind, k, data):
    loss = {"bce_logits": losses.BinaryCrossEntropy(from_logits=True),
            "cce_logits": losses.CategoricalCrossEntropy(from_logits=True)}.get(kind) or losses.get(kind)
    y = data.draw(st.one_of(garbage(), near_valid_targets(data.draw(st.integers(1, 5)), k)), label="y")
    assume(isinstance(y, np.ndarray))  # prepare_target takes arrays; fit converts host data first
    try:
        prepared = loss.prepare_target(y, k)
    except (ValueError, TypeError):
        event("refused")
        return
    event("accepted")
    assert prepared.ndim == 2 and prepared.shape == (y.shape[0], k)


# -- fit on garbage-ish input ---------------------------------------------------------------------------------------
N_IN, N_OUT = 3, 2
FIT_LOSSES = {  # loss: valid targets for it
    "mse": lambda n: hnp.arrays(np.float64, (n, N_OUT), elements=st.floats(-10, 10)),
    "mae": lambda n: hnp.arrays(np.float64, (n, N_OUT), elements=st.floats(-10, 10)),
    "huber": lambda n: hnp.arrays(np.float64, (n, N_OUT), elements=st.floats(-10, 10)),
    losses.BinaryCrossEntropy(from_logits=True): lambda n: hnp.arrays(np.float64, (n, N_OUT),
                                                                       elements=st.floats(0, 1)),
    losses.CategoricalCrossEntropy(from_logits=True): lambda n: hnp.arrays(np.int64, (n,),
                                                                           elements=st.integers(0, N_OUT - 1)),
}


def trained_model():
    """A model whose Adam already holds state, so a refused fit has something to disturb."""
    model = gn.Sequential([gn.Dense(N_IN, 4, "tanh"), gn.Dense(4, N_OUT)], dtype="float64", seed=0)
    model.fit(np.ones((4, N_IN)), np.zeros((4, N_OUT)), loss="mse", optimizer=gn.optim.Adam(lr=0.01), epochs=1)
    return model


def fingerprint(model) -> list:
    state = model.optimizer.state_dict()
    arrays = model.get_weights() + [v for s in state["state"] for v in s.values() if v is not None]
    return [a.tobytes() for a in arrays] + [state["steps"]]


@settings(SETTINGS, max_examples=100)
@given(st.data())
def test_fit_on_garbage_refuses_with_value_or_type_error_and_changes_nothing(data):
    n = data.draw(st.integers(1, 6), label="n")
    loss = data.draw(st.sampled_from(list(FIT_LOSSES)), label="loss")
    X = data.draw(st.one_of(valid_features(n, N_IN), garbage(shape=(n, N_IN)), garbage()), label="X")
    y = data.draw(st.one_of(FIT_LOSSES[loss](n), near_valid_targets(n, N_OUT), garbage()), label="y")
    options = data.draw(st.fixed_dictionaries({
        "batch_size": st.sampled_from([None, 1, 2, 32]) | st.sampled_from([0, -1, 1.5, "2", np.float64(2)]),
        "epochs": st.sampled_from([1, 2]) | st.sampled_from([0, True, 1.0, None]),
    }), label="options")
    model = trained_model()
    before = fingerprint(model)
    try:
        model.fit(X, y, loss=loss, **options)
    except (ValueError, TypeError) as exc:
        event("refused")
        assert re.search(r"\b(X|y|batch_size|epochs)\b", str(exc)), f"no argument named in {exc}"
        assert fingerprint(model) == before
        return
    event("trained")
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
