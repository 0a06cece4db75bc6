"""``fit``'s features, each held to an independent reference.

1. divergence (TerminateOnNaN): the roll-back against a manual replay with ``train_on_batch``;
2. EarlyStopping: against hand-computed sequences and weights captured at every epoch end;
3. learning-rate schedules: against ``torch.optim.lr_scheduler`` and the hand-written SGD step ``lr * gradient``;
4. callback hooks and ``model.stop_training``; 5. verbosity;
6. ``validation_split``: against ``split_validation`` on the model's seed and a fit with explicit validation data;
7. ``sample_weight`` / ``class_weight``: against PyTorch's per-sample losses, weighted by hand.
"""

import math

import numpy as np
import pytest

import gpunet as gn
from gpunet import callbacks as cbs
from gpunet.training import split_validation

DIVERGES = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns on the overflow we provoke


def host(a):
    return np.asarray(gn.to_numpy(a))


def assert_weights_equal(actual, expected, exact=True):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if exact:
            np.testing.assert_array_equal(a, e)
        else:
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=0)


def batches_of(n, batch):
    return [slice(s, min(s + batch, n)) for s in range(0, n, batch)]


class Recorder(cbs.Callback):
    """Records every hook, the optimizer's lr and the weights at each epoch's start and end, and the logs."""

    def __init__(self, log=None, name="rec"):
        self.log = [] if log is None else log  # a list shared between recorders shows their relative order
        self.name = name
        self.lrs, self.start_weights, self.end_weights, self.epoch_logs, self.running = [], [], [], [], []
        self.train_logs = None

    def on_train_begin(self, logs=None):
        self.log.append((self.name, "train_begin"))
        self.train_logs = dict(logs)

    def on_epoch_begin(self, epoch):
        self.log.append((self.name, "epoch_begin", epoch))
        self.lrs.append(self.model.optimizer.lr)
        self.start_weights.append(self.model.get_weights())

    def on_batch_end(self, batch, running_logs):
        self.log.append((self.name, "batch_end", batch))
        self.running.append(running_logs()["loss"])

    def on_epoch_end(self, epoch, logs):
        self.log.append((self.name, "epoch_end", epoch))
        self.end_weights.append(self.model.get_weights())
        self.epoch_logs.append(dict(logs))

    def on_train_end(self, logs=None):
        self.log.append((self.name, "train_end"))


# ====================================================================================================================
# 1. divergence
# ====================================================================================================================
# A tanh hidden layer saturates, so with a large learning rate the output layer's weights grow by a constant factor
# per step until the float32 loss overflows: lr=1 fails in the middle of epoch 4, lr=1.5 at the first batch of epoch
# 4; full-batch lr=1 at epoch 19. The replay below finds where, on each namespace, independently of fit.
_r = np.random.default_rng(0)
DIV_X = _r.normal(size=(20, 3))
DIV_Y = DIV_X @ np.array([1.0, -2.0, 0.5]) * 100 + 1000


def diverging_model(device="cpu"):
    return gn.Sequential([gn.Dense(3, 4, "tanh"), gn.Dense(4, 1)], device=device, dtype="float32", seed=1)


def replay_until_divergence(model, optimizer, X, y, batch, max_epochs):
    """``train_on_batch`` over consecutive batches, epoch after epoch, until a batch loss is not finite.

    Returns the weights before every step, the batch losses (the last one non-finite), and the batch sizes.
    """
    slices = batches_of(len(X), batch)
    before, losses = [], []
    for _ in range(max_epochs):
        for rows in slices:
            before.append(model.get_weights())
            losses.append(model.train_on_batch(X[rows], y[rows], "mse", optimizer))
            if not math.isfinite(losses[-1]):
                return before, np.array(losses), np.array([s.stop - s.start for s in slices], dtype=float)
    raise AssertionError("the replay never diverged")


def expected_divergence(before, losses, sizes):
    """Where fit must stop and what it must keep: ``(epoch, batch, kept weights, completed epochs' losses)``."""
    steps = len(sizes)
    epoch, batch = divmod(len(losses) - 1, steps)
    # the last finite loss was computed with the weights before the previous step; at an epoch's first batch, fit
    # keeps the weights the epoch started with, which are the weights before the failing step
    kept = before[-2] if batch > 0 else before[-1]
    epoch_losses = [float(np.dot(losses[e * steps:(e + 1) * steps], sizes) / sizes.sum()) for e in range(epoch)]
    return epoch, batch, kept, epoch_losses


DIVERGENCE_CASES = {
    "middle_of_an_epoch": dict(lr=1.0, batch=4),
    "first_batch_of_an_epoch": dict(lr=1.5, batch=4),
    "full_batch": dict(lr=1.0, batch=None),
}


@DIVERGES
@pytest.mark.parametrize("case", DIVERGENCE_CASES)
def test_divergence_raises_and_keeps_the_last_finite_weights(device, case):
    lr, batch = DIVERGENCE_CASES[case]["lr"], DIVERGENCE_CASES[case]["batch"]
    before, losses, sizes = replay_until_divergence(diverging_model(device), gn.optim.SGD(lr=lr), DIV_X, DIV_Y,
                                                    batch or len(DIV_X), max_epochs=40)
    epoch, bad_batch, kept, epoch_losses = expected_divergence(before, losses, sizes)
    steps = len(sizes)
    # the premise of each case
    assert epoch >= 1
    assert {"middle_of_an_epoch": 0 < bad_batch < steps - 1, "first_batch_of_an_epoch": bad_batch == 0 and steps > 1,
            "full_batch": steps == 1}[case]

    model = diverging_model(device)
    with pytest.raises(gn.NonFiniteLossError) as info:
        model.fit(DIV_X, DIV_Y, loss="mse", optimizer=gn.optim.SGD(lr=lr), epochs=40, batch_size=batch,
                  shuffle=False)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.batch) == (epoch, bad_batch)
    assert f"at epoch {epoch + 1}, batch {bad_batch + 1} of {steps}" in str(err)
    assert ("started with" in str(err)) == (bad_batch == 0)
    assert err.history.epoch == list(range(epoch))
    np.testing.assert_allclose(err.history["loss"], epoch_losses, rtol=1e-12)
    weights = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    assert_weights_equal(weights, kept, exact=device != "cuda")


@DIVERGES
def test_divergence_with_raise_error_false_stops_with_a_warning():
    before, losses, sizes = replay_until_divergence(diverging_model(), gn.optim.SGD(lr=1.0), DIV_X, DIV_Y, 4, 40)
    epoch, bad_batch, kept, epoch_losses = expected_divergence(before, losses, sizes)
    model = diverging_model()
    with pytest.warns(cbs.NonFiniteLossWarning, match="training diverged") as caught:
        history = model.fit(DIV_X, DIV_Y, loss="mse", optimizer=gn.optim.SGD(lr=1.0), epochs=40, batch_size=4,
                            shuffle=False, callbacks=[cbs.TerminateOnNaN(raise_error=False)])
    assert history.epoch == list(range(epoch))
    np.testing.assert_allclose(history["loss"], epoch_losses, rtol=1e-12)
    assert_weights_equal(model.get_weights(), kept)
    assert f"epoch {epoch + 1}, batch {bad_batch + 1}" in str(caught[0].message)
    assert caught[0].filename == __file__  # at the user's call


@DIVERGES
def test_divergence_rolls_the_optimizer_state_back():
    """Adam's moments and step count after the roll-back are those of the replay; training continues identically.

    One clean epoch first (so the state exists when the epoch starts), then a target of 1e20 in the 4th batch of 3
    rows: its float32 loss overflows, and the step's squared gradient makes Adam's second moment infinite.
    """
    X = np.random.default_rng(1).normal(size=(12, 3))
    y = X @ np.array([0.5, 1.0, -1.0])
    y_bad = y.copy()
    y_bad[10] = 1e20
    clean, bad = batches_of(12, 3), batches_of(12, 3)[:2]  # the replay stops before the failing batch

    ref, ref_opt = diverging_model(), gn.optim.Adam(lr=0.05)
    for rows in clean + bad:
        ref.train_on_batch(X[rows], y[rows], "mse", ref_opt)

    model, opt = diverging_model(), gn.optim.Adam(lr=0.05)
    model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=3, shuffle=False)
    with pytest.raises(gn.NonFiniteLossError) as info:
        model.fit(X, y_bad, epochs=1, batch_size=3, shuffle=False)
    assert (info.value.epoch, info.value.batch) == (0, 3)
    assert_weights_equal(model.get_weights(), ref.get_weights())
    assert opt.steps == ref_opt.steps == 6
    for state, ref_state in zip(opt.state, ref_opt.state):
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.all(np.isfinite(host(state[key])))
            np.testing.assert_array_equal(host(state[key]), host(ref_state[key]))

    opt.lr = ref_opt.lr = 0.01
    model.fit(X, y, epochs=2, batch_size=3, shuffle=False)
    for rows in clean + clean:
        ref.train_on_batch(X[rows], y[rows], "mse", ref_opt)
    assert_weights_equal(model.get_weights(), ref.get_weights())


@DIVERGES
def test_weights_overflowing_in_the_last_update_with_finite_losses():
    """Every batch loss is finite but the last step sends a weight to -inf: fit keeps the weights before it."""
    X, y = np.array([[1e-3], [1e-3], [1e18]]), np.zeros(3)  # the third row: loss 1e36, gradient 2e36, x lr -> inf
    start = [np.array([[1.0]]), np.array([0.0])]

    def linear():
        model = gn.Sequential([gn.Dense(1, 1)], dtype="float32", seed=0)
        model.set_weights(start)
        return model

    before, losses = [], []
    ref, opt = linear(), gn.optim.SGD(lr=1e3)
    for rows in batches_of(3, 1):
        before.append(ref.get_weights())
        losses.append(ref.train_on_batch(X[rows], y[rows], "mse", opt))
    assert np.all(np.isfinite(losses)) and not np.all(np.isfinite(ref.get_weights()[0]))  # the premise

    model = linear()
    with pytest.raises(gn.NonFiniteLossError, match="weights became non-finite in the last update of epoch 1") as info:
        model.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=1e3), epochs=3, batch_size=1, shuffle=False)
    assert (info.value.epoch, info.value.batch) == (0, 2)  # the batch whose update overflowed
    assert "keeps the weights with which batch 3's finite loss" in str(info.value)
    assert_weights_equal(model.get_weights(), before[2])


@DIVERGES
def test_rollback_never_keeps_non_finite_weights():
    model = gn.Sequential([gn.Dense(1, 1, "relu"), gn.Dense(1, 1)], dtype="float64", seed=0)
    # batch 1's step sends the hidden bias to -inf (its gradient is 2 * 4e307, times lr = 10); the relu then outputs
    # 0 and batch 2's loss is finite (400), though its own step makes other weights NaN
    model.set_weights([np.array([[1.0]]), np.array([2.5e-308]), np.array([[4e307]]), np.array([0.0])])
    with pytest.raises(gn.NonFiniteLossError):
        model.fit(np.array([[0.0], [1.0]]), np.zeros(2), loss="mse", optimizer=gn.optim.SGD(lr=10.0), epochs=1,
                  batch_size=1, shuffle=False)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# ====================================================================================================================
# 2. EarlyStopping
# ====================================================================================================================
def small_regression(n=16, seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, 2))
    return X, X @ np.array([1.0, -1.0]) + 0.1 * r.normal(size=n)


def small_model(seed=0):
    return gn.Sequential([gn.Dense(2, 3, "tanh"), gn.Dense(3, 1)], dtype="float64", seed=seed)


class FeedLogs(cbs.Callback):
    """Writes ``values[epoch]`` into ``logs[key]`` (listed before the callback that reads it)."""

    def __init__(self, key, values):
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs):
        logs[self.key] = self.values[epoch]


# (monitor, EarlyStopping kwargs, values per epoch, epochs run, stopped_epoch, best_epoch), worked out by hand
EARLY_STOPPING_CASES = [
    pytest.param("score", dict(patience=2, mode="min"), [5, 4, 4.5, 3.9, 3.95, 3.99, 3.0, 2.0], 6, 5, 3, id="min"),
    # 4 beats 5 by more than 0.2; 3.9 does not beat 4 by more than 0.2
    pytest.param("score", dict(patience=2, min_delta=0.2, mode="min"), [5, 4, 4.5, 3.9, 3.95, 3.0], 4, 3, 1,
                 id="min_delta"),
    pytest.param("score", dict(patience=2, min_delta=-0.2, mode="min"), [5, 4, 4.5, 3.9, 3.95, 3.0], 4, 3, 1,
                 id="negative_min_delta_is_its_absolute_value"),
    # a metric of the fit: auto follows its direction (accuracy: max); a tie is no improvement
    pytest.param("accuracy", dict(patience=3), [0.5, 0.6, 0.55, 0.6, 0.58, 0.7], 5, 4, 1, id="auto_accuracy"),
    pytest.param("val_f1", dict(patience=2), [0.5, 0.6, 0.7, 0.8, 0.8, 0.8], 6, 5, 3, id="auto_f1_goes_up"),
    pytest.param("val_mae", dict(patience=1), [0.5, 0.4, 0.45, 0.3], 3, 2, 1, id="auto_mae_goes_down"),
    pytest.param("val_r2", dict(patience=2, min_delta=0.05), [0.1, 0.2, 0.22, 0.26, 0.27, 0.5], 6, None, 5,
                 id="auto_r2_never_stops"),
    pytest.param("score", dict(patience=2, mode="max"), [1, 2, 1, 1, 3], 4, 3, 1, id="explicit_max"),
    pytest.param("val_accuracy", dict(patience=2, mode="min"), [0.9, 0.8, 0.85, 0.86, 0.1], 4, 3, 1,
                 id="explicit_min"),
    pytest.param("score", dict(patience=1, mode="min"), [3, 3, 3], 2, 1, 0, id="patience_1"),
]


@pytest.mark.parametrize("monitor, kwargs, values, n_epochs, stopped, best", EARLY_STOPPING_CASES)
def test_early_stopping_on_known_sequences(monitor, kwargs, values, n_epochs, stopped, best):
    X, y = small_regression()
    es = cbs.EarlyStopping(monitor=monitor, **kwargs)
    metric = monitor.removeprefix("val_")
    history = small_model().fit(X, y, epochs=len(values), callbacks=[FeedLogs(monitor, values), es],
                                metrics=[metric] if metric in gn.metrics.METRICS else None,
                                validation_data=(X, y) if monitor.startswith("val_") else None)
    assert history.epoch == list(range(n_epochs))
    assert (es.stopped_epoch, es.best_epoch, es.best) == (stopped, best, values[best])


def test_early_stopping_on_a_run_whose_validation_loss_only_grows():
    """Trained towards y, validated against -y: val_loss rises every epoch, so epoch 0 stays the best."""
    X, y = small_regression()
    es = cbs.EarlyStopping(patience=3)  # monitor="val_loss", mode auto = min
    history = small_model().fit(X, y, optimizer=gn.optim.SGD(lr=0.05), epochs=20, batch_size=None,
                                validation_data=(X, -y), callbacks=[es])
    assert np.all(np.diff(history["val_loss"]) > 0)  # the premise
    assert history.epoch == [0, 1, 2, 3]
    assert (es.stopped_epoch, es.best_epoch, es.best) == (3, 0, history["val_loss"][0])


@pytest.mark.parametrize("values, patience, stopped, best", [
    pytest.param([5, 4, 4.5, 3.9, 3.95, 3.99, 3.0], 2, 5, 3, id="stops_early"),
    pytest.param([3, 2, 1, 1.5, 1.6], 3, None, 2, id="runs_all_epochs"),
])
@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_weights(values, patience, stopped, best, restore):
    X, y = small_regression()
    rec = Recorder()
    model = small_model()
    es = cbs.EarlyStopping(monitor="score", patience=patience, mode="min",
                           restore_best_weights=restore)
    history = model.fit(X, y, epochs=len(values), batch_size=4, callbacks=[FeedLogs("score", values), es, rec])
    last = len(values) - 1 if stopped is None else stopped
    assert history.epoch == list(range(last + 1))
    assert (es.stopped_epoch, es.best_epoch) == (stopped, best)
    assert not np.array_equal(rec.end_weights[best][0], rec.end_weights[last][0])  # the premise
    assert_weights_equal(model.get_weights(), rec.end_weights[best if restore else last])


@pytest.mark.parametrize("monitor", ["val_loss", "nonexistent_metric"])
def test_early_stopping_on_a_missing_key_names_it(monitor):
    X, y = small_regression()
    with pytest.raises(ValueError, match=monitor):
        small_model().fit(X, y, epochs=2, callbacks=[cbs.EarlyStopping(monitor=monitor)])


# ====================================================================================================================
# 3. learning-rate schedules
# ====================================================================================================================
def torch_lrs(make_scheduler, lr0, epochs):
    """The rate torch's optimizer holds during each epoch, stepping the scheduler once per epoch."""
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=lr0)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def check_full_batch_sgd_used(rec, X, y, lrs):
    """Each full-batch epoch of SGD on a linear model moved the weights by exactly ``-lr * gradient``."""
    for lr, (W, b), (W1, b1) in zip(lrs, rec.start_weights, rec.end_weights):
        r = X @ W + b - y[:, None]  # the mse gradient, by hand
        np.testing.assert_allclose(W1, W - lr * 2 * X.T @ r / len(X), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b1, b - lr * 2 * r.sum(axis=0) / len(X), rtol=1e-12, atol=1e-15)


def fit_with_schedule(schedule, lr0=0.1, epochs=12):
    X, y = small_regression()
    rec = Recorder()
    model = gn.Sequential([gn.Dense(2, 1)], dtype="float64", seed=0)
    model.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=lr0), epochs=epochs, batch_size=None,
              callbacks=[schedule, rec])
    assert len(rec.lrs) == epochs
    check_full_batch_sgd_used(rec, X, y, rec.lrs)
    return rec


SCHEDULES = {
    "StepLR": (lambda: cbs.StepLR(step_size=3, gamma=0.5),
               lambda opt, lr_scheduler: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)),
    "ExponentialLR": (lambda: cbs.ExponentialLR(gamma=0.8),
                      lambda opt, lr_scheduler: lr_scheduler.ExponentialLR(opt, gamma=0.8)),
    "CosineAnnealingLR": (lambda: cbs.CosineAnnealingLR(T_max=5, eta_min=0.01),
                          lambda opt, lr_scheduler: lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.01)),
    # lr reaches 0 at epochs 4 and 12: torch holds 0.0, gpunet a tiny positive rate (SGD needs lr > 0)
    "CosineAnnealingLR_to_zero": (lambda: cbs.CosineAnnealingLR(T_max=4),
                                  lambda opt, lr_scheduler: lr_scheduler.CosineAnnealingLR(opt, T_max=4)),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_match_torch_and_drive_the_optimizer(name):
    torch = pytest.importorskip("torch")
    ours, theirs = SCHEDULES[name]
    expected = torch_lrs(lambda opt: theirs(opt, torch.optim.lr_scheduler), 0.1, 12)
    rec = fit_with_schedule(ours())
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose([logs["lr"] for logs in rec.epoch_logs], expected, rtol=1e-12, atol=1e-15)
    assert len(set(np.round(expected, 12))) > 2  # the schedule really changes the rate


def test_history_records_the_scheduled_lr():
    X, y = small_regression()
    model = gn.Sequential([gn.Dense(2, 1)], dtype="float64", seed=0)
    history = model.fit(X, y, optimizer=gn.optim.SGD(lr=0.1), epochs=4, callbacks=[cbs.StepLR(step_size=2)])
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01], rel=1e-12)


def test_learning_rate_scheduler_with_a_custom_function():
    """Keras's contract: schedule(epoch, lr) receives the current rate."""
    calls = []

    def schedule(epoch, lr):
        calls.append((epoch, lr))
        return lr / (1 + epoch) ** 2

    rec = fit_with_schedule(cbs.LearningRateScheduler(schedule), lr0=0.2, epochs=5)
    expected = [0.2]
    for epoch in range(1, 5):
        expected.append(expected[-1] / (1 + epoch) ** 2)
    assert [e for e, _ in calls] == list(range(5))
    np.testing.assert_allclose([lr for _, lr in calls], [0.2] + expected[:-1], rtol=1e-15)
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-15)


def test_learning_rate_scheduler_follows_keras_documented_example():
    """Keras's own example: constant for 10 epochs, then times exp(-0.1) each epoch (the initial rate would make it
    constant after epoch 10); a one-argument schedule(epoch) works too."""
    def scheduler(epoch, lr):
        return lr if epoch < 10 else lr * math.exp(-0.1)

    rec = fit_with_schedule(cbs.LearningRateScheduler(scheduler), lr0=0.1, epochs=15)
    np.testing.assert_allclose(rec.lrs, [0.1] * 10 + [0.1 * math.exp(-0.1 * k) for k in range(1, 6)], rtol=1e-12)
    rec = fit_with_schedule(cbs.LearningRateScheduler(lambda epoch: 0.5 ** epoch), lr0=0.1, epochs=3)
    np.testing.assert_allclose(rec.lrs, [1.0, 0.5, 0.25], rtol=1e-15)


def test_learning_rate_scheduler_errors():
    with pytest.raises(TypeError, match="schedule"):
        cbs.LearningRateScheduler(0.1)
    X, y = small_regression()
    goes_negative = cbs.LearningRateScheduler(lambda epoch, lr0: 0.01 - 0.02 * epoch)  # 0.01, then -0.01
    with pytest.raises(ValueError, match="lr"):
        small_model().fit(X, y, optimizer=gn.optim.SGD(lr=0.01), epochs=2, callbacks=[goes_negative])
    reaches_zero = cbs.LearningRateScheduler(lambda epoch, lr0: 0.01 - 0.01 * epoch)  # 0 is allowed, as in torch
    small_model().fit(X, y, optimizer=gn.optim.SGD(lr=0.01), epochs=2, callbacks=[reaches_zero])


# ====================================================================================================================
# 4. custom callbacks
# ====================================================================================================================
def test_hooks_are_called_in_order_with_the_right_arguments():
    X, y = small_regression(n=10)
    log = []
    first, second = Recorder(log, "first"), Recorder(log, "second")
    model = small_model()
    history = model.fit(X, y, epochs=2, batch_size=4, shuffle=False, callbacks=[first, second])
    steps = 3  # 4 + 4 + 2 rows
    expected = [("train_begin",)]
    for epoch in range(2):
        expected += [("epoch_begin", epoch)] + [("batch_end", b) for b in range(steps)] + [("epoch_end", epoch)]
    expected += [("train_end",)]
    # the two callbacks are told of every event, in the order they were given
    assert log == [(name, *event) for event in expected for name in ("first", "second")]
    assert first.model is model and second.model is model
    assert first.train_logs == {"epochs": 2, "initial_epoch": 0, "steps": steps, "samples": 10, "batch_size": 4,
                                "validation": False}
    assert [logs["loss"] for logs in first.epoch_logs] == history["loss"]
    # the running loss after an epoch's last batch is the epoch's loss
    np.testing.assert_allclose(first.running[steps - 1::steps], history["loss"], rtol=1e-12)


def test_single_callback_is_accepted():
    X, y = small_regression()
    rec = Recorder()
    small_model().fit(X, y, epochs=3, callbacks=rec)
    assert len(rec.epoch_logs) == 3


class StopAt(cbs.Callback):
    def __init__(self, epoch, hook):
        self.epoch, self.hook, self.batches = epoch, hook, 0
        self.current = None

    def on_epoch_begin(self, epoch):
        self.current = epoch

    def on_batch_end(self, batch, running_logs):
        self.batches += 1
        if self.hook == "batch" and self.current == self.epoch:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs):
        if self.hook == "epoch" and epoch == self.epoch:
            self.model.stop_training = True


@pytest.mark.parametrize("hook", ["epoch", "batch"])
def test_stop_training_ends_fit_after_the_current_epoch(hook):
    X, y = small_regression(n=10)
    model = small_model()
    stopper = StopAt(1, hook)
    history = model.fit(X, y, epochs=10, batch_size=4, callbacks=[stopper])
    assert history.epoch == [0, 1]
    assert stopper.batches == 2 * 3  # the epoch in which it was set ran to its end
    assert len(model.fit(X, y, epochs=3).epoch) == 3  # the flag does not leak into the next fit


@pytest.mark.parametrize("bad", ["early_stopping", 3, {"cb": cbs.History()}, [object()], [cbs.EarlyStopping],
                                 [cbs.History(), None]])
def test_bad_callbacks_are_refused(bad):
    X, y = small_regression()
    with pytest.raises(TypeError, match="callbacks"):
        small_model().fit(X, y, callbacks=bad)


# ====================================================================================================================
# 5. verbosity
# ====================================================================================================================
def test_verbose_2_prints_one_line_per_epoch(capsys):
    X, y = small_regression()
    history = small_model().fit(X, y, epochs=3, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("Epoch ")]
    assert len(epoch_lines) == 3
    for i, (line, loss) in enumerate(zip(epoch_lines, history["loss"])):
        assert line.startswith(f"Epoch {i + 1}/3") and f"loss: {loss:.4g}" in line


def test_verbose_1_shows_a_progress_bar(capsys):
    X, y = small_regression()
    small_model().fit(X, y, epochs=2, batch_size=4, verbose=1)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Epoch 1/2" in text and "Epoch 2/2" in text and "4/4" in text  # tqdm's count of steps


def test_verbose_0_is_silent(capsys):
    X, y = small_regression()
    small_model().fit(X, y, epochs=2)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("verbose", [3, -1, True, "2"])
def test_bad_verbose(verbose):
    X, y = small_regression()
    with pytest.raises(ValueError, match="verbose"):
        small_model().fit(X, y, verbose=verbose)


# ====================================================================================================================
# 6. validation_split
# ====================================================================================================================
SEED = 7


def check_split_fit(model_factory, X, y, loss, fraction, labels, sample_weight=None):
    """fit with validation_split holds out the rows ``split_validation`` draws from ``default_rng(seed)``, trains
    exactly as a fit on the other rows (and their sample weights) with those (and theirs, as Keras) as
    validation_data, and logs ``evaluate`` on them."""
    train_rows, val_rows = split_validation(len(X), fraction, labels, np.random.default_rng(SEED))
    rec = Recorder()
    model = model_factory()
    history = model.fit(X, y, loss=loss, epochs=3, batch_size=8, validation_split=fraction, callbacks=[rec],
                        sample_weight=sample_weight)
    assert rec.train_logs["samples"] == len(train_rows)
    held_w = None if sample_weight is None else sample_weight[val_rows]
    assert history["val_loss"][-1] == pytest.approx(
        model.evaluate(X[val_rows], y[val_rows], sample_weight=held_w)["loss"], rel=1e-12)

    explicit = model_factory().fit(X[train_rows], y[train_rows], loss=loss, epochs=3, batch_size=8,
                                   validation_data=(X[val_rows], y[val_rows], held_w),
                                   sample_weight=None if sample_weight is None else sample_weight[train_rows])
    assert explicit.history == history.history
    return val_rows


@pytest.mark.parametrize("weighted", [False, True])
def test_validation_split_regression(weighted):
    X, y = small_regression(n=40)
    sample_weight = np.random.default_rng(5).uniform(0.5, 2.0, 40) if weighted else None
    val_rows = check_split_fit(lambda: small_model(SEED), X, y, "mse", 0.2, None, sample_weight)
    assert len(val_rows) == round(0.2 * 40)
    assert not np.array_equal(val_rows, np.arange(32, 40))  # drawn at random, not the last rows


def stratified_count(fraction, count):
    return min(max(round(fraction * count), 1), count - 1)


@pytest.mark.parametrize("loss, counts, fraction", [
    pytest.param("cce", [30, 7, 3], 0.2, id="cce"),
    pytest.param("cce", [4, 2, 3], 0.9, id="cce_capped_at_count_minus_1"),
    pytest.param("bce", [9, 3], 0.5, id="bce"),
])
def test_validation_split_is_stratified_for_classification(loss, counts, fraction):
    r = np.random.default_rng(3)
    labels = r.permutation(np.repeat(np.arange(len(counts)), counts))
    X = r.normal(size=(len(labels), 2)) + labels[:, None]
    n_out = len(counts) if loss == "cce" else 1
    y = labels if loss == "cce" else labels.astype(float)

    def factory():
        return gn.Sequential([gn.Dense(2, n_out, "softmax" if loss == "cce" else "sigmoid")], dtype="float64",
                             seed=SEED)

    val_rows = check_split_fit(factory, X, y, loss, fraction, labels)
    assert np.bincount(labels[val_rows], minlength=len(counts)).tolist() == [stratified_count(fraction, c)
                                                                             for c in counts]


@pytest.mark.parametrize("kwargs, match", [
    (dict(validation_split=0.0), "validation_split"),
    (dict(validation_split=1.0), "validation_split"),
    (dict(validation_split=1.5), "validation_split"),
    (dict(validation_split=-0.1), "validation_split"),
    (dict(validation_split=0.01), "both need at least 1"),  # 16 rows: nothing held out
    (dict(validation_split=0.2, validation_data=(np.zeros((2, 2)), np.zeros(2))), "not both"),
])
def test_validation_split_errors(kwargs, match):
    X, y = small_regression()
    with pytest.raises(ValueError, match=match):
        small_model().fit(X, y, **kwargs)


def test_validation_split_refuses_a_class_with_one_sample():
    X = np.random.default_rng(0).normal(size=(12, 2))
    y = np.array([0] * 6 + [1] + [2] * 5)
    model = gn.Sequential([gn.Dense(2, 3, "softmax")], dtype="float64")
    with pytest.raises(ValueError, match="class 1 has only 1 sample"):
        model.fit(X, y, loss="cce", validation_split=0.2)


# ====================================================================================================================
# 7. sample_weight and class_weight, against PyTorch
# ====================================================================================================================
def torch_row_losses():
    """Per-sample losses of the logits ``z``: mean over outputs (mse, mae, huber, bce), sum over classes (cce)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    return {
        "mse": lambda z, t: F.mse_loss(z, t, reduction="none").mean(1),
        "mae": lambda z, t: F.l1_loss(z, t, reduction="none").mean(1),
        "huber": lambda z, t: F.huber_loss(z, t, reduction="none", delta=0.5).mean(1),
        "bce": lambda z, t: F.binary_cross_entropy(torch.sigmoid(z), t, reduction="none").mean(1),
        "bce_logits": lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction="none").mean(1),
        "cce": lambda z, t: F.nll_loss(torch.log(F.softmax(z, dim=1)), t.long(), reduction="none"),
        "cce_logits": lambda z, t: F.cross_entropy(z, t.long(), reduction="none"),
    }


# name: (gpunet loss, output activation, outputs)
WEIGHTED_CASES = {
    "mse": (gn.losses.MSE(), None, 2),
    "mae": (gn.losses.MAE(), None, 2),
    "huber": (gn.losses.Huber(delta=0.5), None, 2),
    "bce": (gn.losses.BinaryCrossEntropy(), "sigmoid", 1),  # the combined gradient (p - y) / n
    "bce_logits": (gn.losses.BinaryCrossEntropy(from_logits=True), None, 1),
    "cce": (gn.losses.CategoricalCrossEntropy(), "softmax", 3),  # the combined gradient
    "cce_logits": (gn.losses.CategoricalCrossEntropy(from_logits=True), None, 3),
}
N_W = 12


def weighted_problem(name, seed=0):
    """``(model, X, y, host targets for torch)``; classification targets are class indices."""
    loss, activation, k = WEIGHTED_CASES[name]
    r = np.random.default_rng(seed)
    X = r.normal(size=(N_W, 3))
    if loss.name == "cce":
        y = r.integers(0, k, N_W)
    elif loss.name == "bce":
        y = r.integers(0, 2, N_W).astype(float)
    else:
        y = 1.5 * r.normal(size=(N_W, k))  # huber: residuals on both sides of delta
    model = gn.Sequential([gn.Dense(3, 5, "tanh"), gn.Dense(5, k, activation)], dtype="float64", seed=seed)
    return model, X, y, (y if y.ndim == 2 or loss.name == "cce" else y[:, None])


def torch_weighted_sgd(name, weights, X, t, w, lr, slices):
    """SGD through ``slices`` with batch loss ``sum(w_i loss_i) / batch size``; returns the weights and the
    size-weighted mean of the batch losses."""
    torch = pytest.importorskip("torch")
    row_loss = torch_row_losses()[name]
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in weights]
    tt, wt, Xt = (torch.tensor(np.asarray(a, dtype=np.float64)) for a in (t, w, X))
    total = 0.0
    for rows in slices:
        W1, b1, W2, b2 = params
        z = torch.tanh(Xt[rows] @ W1 + b1) @ W2 + b2
        value = (wt[rows] * row_loss(z, tt[rows])).sum() / len(Xt[rows])
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        total += value.item() * len(Xt[rows])
    return [p.detach().numpy() for p in params], total / len(X)


def sample_weights(seed=1):
    w = np.random.default_rng(seed).uniform(0.0, 3.0, N_W)
    w[[2, 7]] = 0.0
    return w


@pytest.mark.parametrize("batch_size", [None, 5], ids=["full_batch", "minibatches"])
@pytest.mark.parametrize("name", WEIGHTED_CASES)
def test_sample_weight_matches_torch(name, batch_size):
    model, X, y, t = weighted_problem(name)
    w = sample_weights()
    lr = 0.3
    expected_weights, expected_loss = torch_weighted_sgd(name, model.get_weights(), X, t, w, lr,
                                                         batches_of(N_W, batch_size or N_W))
    history = model.fit(X, y, loss=WEIGHTED_CASES[name][0], optimizer=gn.optim.SGD(lr=lr), epochs=1,
                        batch_size=batch_size, shuffle=False, sample_weight=w)
    assert history["loss"][0] == pytest.approx(expected_loss, rel=1e-10, abs=1e-12)
    for actual, expected in zip(model.get_weights(), expected_weights):
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["mse", "cce"])
def test_sample_weight_of_ones_is_no_weight(name):
    runs = []
    for sw in (None, np.ones(N_W)):
        model, X, y, _ = weighted_problem(name)
        history = model.fit(X, y, loss=WEIGHTED_CASES[name][0], epochs=3, batch_size=5, sample_weight=sw)
        runs.append((history["loss"], model.get_weights()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-13)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ["mse", "cce"])
def test_weights_follow_their_rows_when_shuffled(name):
    """Rows of weight 0 do not count, wherever shuffling puts them: changing their targets changes nothing."""
    w = sample_weights()
    runs = []
    for garbage in (False, True):
        model, X, y, _ = weighted_problem(name)
        if garbage:
            y = y.copy()
            y[w == 0] = 0 if name == "cce" else 1e3
        history = model.fit(X, y, loss=WEIGHTED_CASES[name][0], epochs=3, batch_size=4, shuffle=True,
                            sample_weight=w)
        runs.append((history["loss"], model.get_weights()))
    assert runs[0][0] == runs[1][0]
    assert_weights_equal(runs[0][1], runs[1][1])


CLASS_WEIGHT_CASES = {
    "cce_indices": ("cce", {0: 1, 1: 3, 2: 0.5}, lambda y: y),
    "cce_one_hot": ("cce", {0: 1, 1: 3, 2: 0.5}, lambda y: np.eye(3)[y]),
    "bce": ("bce", {0: 2.0, 1: 0.25}, lambda y: y),
}


@pytest.mark.parametrize("case", CLASS_WEIGHT_CASES)
@pytest.mark.parametrize("with_sample_weight", [False, True])
def test_class_weight_is_the_matching_sample_weight(case, with_sample_weight):
    name, class_weight, targets = CLASS_WEIGHT_CASES[case]
    sw = sample_weights() if with_sample_weight else np.ones(N_W)
    runs = []
    for kwargs in ("class", "sample"):
        model, X, y, _ = weighted_problem(name)
        per_row = sw * np.array([class_weight[int(c)] for c in y])
        fit_kwargs = (dict(class_weight=class_weight, sample_weight=sw if with_sample_weight else None)
                      if kwargs == "class" else dict(sample_weight=per_row))
        history = model.fit(X, targets(y), loss=name, epochs=2, batch_size=5, **fit_kwargs)
        runs.append((history["loss"], model.get_weights()))
    assert runs[0][0] == runs[1][0]
    assert_weights_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("mse", dict(sample_weight=np.ones(N_W - 1)), ValueError, "sample_weight must have shape"),
    ("mse", dict(sample_weight=np.ones((N_W, 1))), ValueError, "sample_weight must have shape"),
    ("mse", dict(sample_weight=np.r_[-1.0, np.ones(N_W - 1)]), ValueError, "non-negative"),
    ("mse", dict(sample_weight=np.zeros(N_W)), ValueError, "at least one positive"),
    ("mse", dict(sample_weight=np.r_[np.nan, np.ones(N_W - 1)]), ValueError, "finite"),
    ("mse", dict(sample_weight=["a"] * N_W), TypeError, "numeric"),
    ("mse", dict(class_weight={0: 1.0}), ValueError, "classification loss"),
    ("cce", dict(class_weight={3: 1.0}), ValueError, r"class indices in \[0, 2\]"),
    ("cce", dict(class_weight={-1: 1.0}), ValueError, "class indices"),
    ("cce", dict(class_weight={"0": 1.0}), ValueError, "class indices"),
    ("cce", dict(class_weight={0: -1.0}), ValueError, "class_weight"),
    ("cce", dict(class_weight=[1.0, 2.0, 3.0]), TypeError, "dict"),
    ("bce", dict(class_weight={2: 1.0}), ValueError, r"class indices in \[0, 1\]"),
])
def test_weight_errors(name, kwargs, error, match):
    model, X, y, _ = weighted_problem(name)
    with pytest.raises(error, match=match):
        model.fit(X, y, loss=WEIGHTED_CASES[name][0], **kwargs)


# -- ReduceLROnPlateau against torch's, fed the same monitored values -----------------------------------------------
PLATEAU_VALUES = [1.0, 0.9, 0.9, 0.95, 0.9, 0.89995, 0.91, 0.8, 0.8, 0.8, 0.8, 0.8, float("nan"), 0.79, 0.8, 0.8,
                  0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
PLATEAU_CASES = [
    dict(),
    dict(patience=1, factor=0.5),
    dict(patience=2, factor=0.5, cooldown=2),
    dict(patience=0, factor=0.3, min_lr=0.01),
    dict(patience=1, threshold=0.05, threshold_mode="abs"),
    dict(patience=1, mode="max", factor=0.5),
    dict(patience=1, mode="max", threshold_mode="abs", threshold=0.0),
    dict(patience=0, factor=0.9, eps=0.02),
]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=str)
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    expected = []
    for value in PLATEAU_VALUES:
        expected.append(opt.param_groups[0]["lr"])
        scheduler.step(value)

    class Trainer:
        optimizer, metrics = gn.optim.SGD(lr=0.1), []

    class Holder:
        trainer = Trainer()

    callback = cbs.ReduceLROnPlateau(monitor="val_loss", **kwargs)
    callback.model = Holder()
    callback.on_train_begin()
    logged = []
    for epoch, value in enumerate(PLATEAU_VALUES):
        logs = {"val_loss": value}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs["lr"])
    np.testing.assert_allclose(logged, expected, rtol=1e-15)


def test_reduce_lr_on_plateau_in_fit():
    """A learning rate far too small makes the training loss plateau (relative change < 1e-4): reduced after
    patience + 1 flat epochs; History holds the rate each epoch used."""
    X, y = small_regression()
    model = gn.Sequential([gn.Dense(2, 1)], dtype="float64", seed=0)
    history = model.fit(X, y, optimizer=gn.optim.SGD(lr=1e-6), epochs=6, batch_size=None,
                        callbacks=[cbs.ReduceLROnPlateau(monitor="loss", patience=2, factor=0.5)])
    assert history["lr"] == pytest.approx([1e-6] * 4 + [5e-7] * 2, rel=1e-12)


@pytest.mark.parametrize("kwargs, error", [
    (dict(factor=1.0), ValueError), (dict(factor=0.0), ValueError), (dict(patience=-1), ValueError),
    (dict(patience=1.5), TypeError), (dict(cooldown=True), TypeError), (dict(threshold_mode="relative"), ValueError),
    (dict(min_lr=-1.0), ValueError), (dict(mode="up"), ValueError),
])
def test_reduce_lr_on_plateau_bad_arguments(kwargs, error):
    with pytest.raises(error):
        cbs.ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_needs_its_monitor():
    X, y = small_regression()
    with pytest.raises(ValueError, match="val_loss"):
        small_model().fit(X, y, optimizer=gn.optim.SGD(lr=0.01), epochs=1, callbacks=[cbs.ReduceLROnPlateau()])


def test_initial_epoch_resumes_the_history_and_the_schedules():
    """Keras's initial_epoch: fit(epochs=2), then fit(epochs=5, initial_epoch=2) equals one fit(epochs=5), bit for
    bit, with the History, the schedule and the checkpoint names counting on from epoch 2."""
    X, y = small_regression(n=24)

    def schedule():
        return cbs.StepLR(step_size=3, gamma=0.5)

    straight, rec = small_model(), Recorder()
    straight.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=5, batch_size=8,
                 callbacks=[schedule(), rec])
    resumed, step_lr, rec2 = small_model(), schedule(), Recorder()
    first = resumed.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=8,
                        callbacks=[step_lr])
    second = resumed.fit(X, y, epochs=5, initial_epoch=2, batch_size=8, callbacks=[step_lr, rec2])
    assert first.epoch == [0, 1] and second.epoch == [2, 3, 4]
    assert rec2.lrs == rec.lrs[2:] == [0.05, 0.025, 0.025]
    assert_weights_equal(resumed.get_weights(), straight.get_weights())
    assert second["loss"] == [logs["loss"] for logs in rec.epoch_logs][2:]


@pytest.mark.parametrize("initial_epoch, error", [(-1, ValueError), (6, ValueError), (1.5, TypeError)])
def test_initial_epoch_is_checked(initial_epoch, error):
    X, y = small_regression()
    model = small_model()
    before = model.get_weights()
    with pytest.raises(error, match="initial_epoch"):
        model.fit(X, y, epochs=5, initial_epoch=initial_epoch)
    assert_weights_equal(model.get_weights(), before)


@pytest.mark.parametrize("make", [lambda: cbs.StepLR(step_size=1, gamma=0.5), lambda: cbs.ExponentialLR(gamma=0.5),
                                  lambda: cbs.CosineAnnealingLR(T_max=4)], ids=["step", "exponential", "cosine"])
def test_a_schedule_resumed_from_a_file_continues(tmp_path, make):
    """The closed-form schedules start from the optimizer's initial_lr (torch's param_group "initial_lr"), saved
    with it: 2 epochs, save, load, 2 more from initial_epoch=2 equal 4 epochs (the rate used to compound)."""
    X, y = small_regression(n=32)
    full = small_model()
    expected = full.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.1), epochs=4, batch_size=8,
                        callbacks=[make()])
    part = small_model()
    part.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.1), epochs=2, batch_size=8, callbacks=[make()])
    part.save(tmp_path / "m.safetensors")
    resumed = gn.load(tmp_path / "m.safetensors")
    assert resumed.optimizer.initial_lr == 0.1
    history = resumed.fit(X, y, epochs=4, initial_epoch=2, batch_size=8, callbacks=[make()])
    assert history["lr"] == expected["lr"][2:]
    assert_weights_equal(resumed.get_weights(), full.get_weights())


def test_train_on_batch_with_an_optimizer_name_continues_it():
    """A loop that passes "adam" every time trains with one Adam (its moments build up), as Keras's train_on_batch
    keeps the compiled optimizer; torch.optim.Adam over the same batches is the reference."""
    torch = pytest.importorskip("torch")
    X, y = small_regression(n=12)
    model = gn.Sequential([gn.Dense(2, 1)], dtype="float64", seed=0)
    W, b = (torch.tensor(w, requires_grad=True) for w in model.get_weights())
    opt = torch.optim.Adam([W, b], lr=1e-3)
    for rows in (slice(0, 4), slice(4, 8), slice(8, 12)):
        model.train_on_batch(X[rows], y[rows], "mse", "adam")
        opt.zero_grad()
        ((torch.tensor(X[rows]) @ W + b)[:, 0] - torch.tensor(y[rows])).pow(2).mean().backward()
        opt.step()
    assert model.optimizer.steps == 3
    np.testing.assert_allclose(model.get_weights()[0], W.detach().numpy(), rtol=1e-12)


class Refuses(cbs.Callback):
    def on_train_begin(self, logs=None):
        raise ValueError("refused by a callback")


@pytest.mark.parametrize("refusal", ["callback", "direction", "no_validation"])
def test_a_fit_its_callbacks_refuse_changes_nothing(refusal):
    """A fit refused before its first epoch (a callback's on_train_begin, a monitor with no direction, a val_*
    monitor without validation data) leaves the loss, optimizer, metrics, feature names and generators as they
    were, with seed=None too (validation_split draws from the shuffling generator)."""
    X, y = small_regression()
    model = gn.Sequential([gn.Dense(2, 3, "tanh"), gn.Dense(3, 1)], dtype="float64", seed=None)
    model.fit(X, y, loss="mse", optimizer=gn.optim.Adam(lr=0.05), metrics=["r2"], epochs=1)
    before = (model.loss, model.optimizer, [m.name for m in model.metrics], model.optimizer.steps,
              model.trainer.shuffle_rng.bit_generator.state, model.get_weights())
    callback = {"callback": Refuses(), "direction": cbs.EarlyStopping("my_score"),
                "no_validation": cbs.EarlyStopping("val_loss")}[refusal]
    with pytest.raises(ValueError):
        model.fit(X, y, loss="mae", optimizer=gn.optim.SGD(lr=0.5), metrics=["mae"], epochs=3,
                  validation_split=0.25 if refusal != "no_validation" else None, callbacks=[callback])
    assert (model.loss, model.optimizer, [m.name for m in model.metrics], model.optimizer.steps) == before[:4]
    assert model.trainer.shuffle_rng.bit_generator.state == before[4]
    assert_weights_equal(model.get_weights(), before[5])


def test_early_stopping_with_patience_zero_stops_at_the_first_bad_epoch():
    """Keras's default patience is 0: the first epoch without improvement stops training."""
    X, y = small_regression()
    es = cbs.EarlyStopping("score", patience=0, mode="min")
    history = small_model().fit(X, y, epochs=6, callbacks=[FeedLogs("score", [5, 4, 4.5, 3, 2, 1]), es])
    assert history.epoch == [0, 1, 2] and es.best_epoch == 1


def test_validation_sample_weights_weigh_the_loss_as_keras_and_class_weight_does_not():
    """validation_data=(X, y, w) as Keras takes it: val_loss = sum(w * row loss) / n (the training loss's
    reduction), computed here by hand with torch; the metrics stay unweighted; class_weight weighs training only,
    also for the rows validation_split holds out; a streamed triple gives the same."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, labels = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
    w = rng.uniform(0.2, 3.0, 30)
    model = gn.Sequential([gn.Dense(3, 3, "softmax")], dtype="float64", seed=1)
    history = model.fit(X[:20], labels[:20], loss="cce", epochs=1, batch_size=5, metrics=["accuracy"],
                        validation_data=(X[20:], labels[20:], w[20:]))
    p = torch.tensor(model.predict(X[20:]))
    rows = torch.nn.functional.nll_loss(torch.log(p), torch.tensor(labels[20:]), reduction="none").numpy()
    assert history["val_loss"][0] == pytest.approx(float((w[20:] * rows).sum() / 10), rel=1e-12)
    assert history["val_accuracy"][0] == pytest.approx(float(np.mean(p.numpy().argmax(1) == labels[20:])))
    assert model.evaluate(X[20:], labels[20:], sample_weight=w[20:])["loss"] == pytest.approx(history["val_loss"][0])
    streamed = gn.sources.ArrayStream(X[20:], labels[20:], sample_weight=w[20:])
    assert model.evaluate(streamed)["loss"] == pytest.approx(history["val_loss"][0], rel=1e-12)
    batches = [(X[20 + i:23 + i], labels[20 + i:23 + i]) for i in (0, 3, 6)]  # a list of 3 batches: no triple
    unweighted = model.evaluate(X[20:29], labels[20:29])["loss"]
    assert model.fit(X[:20], labels[:20], epochs=1, optimizer=gn.optim.SGD(lr=0.0),
                     validation_data=batches)["val_loss"][0] == pytest.approx(unweighted, rel=1e-12)
    with pytest.raises(ValueError, match=r"validation_data\[2\] must have shape \(10,\)"):
        model.fit(X[:20], labels[:20], epochs=1, validation_data=(X[20:], labels[20:], w[:3]))
    weighted = gn.Sequential([gn.Dense(3, 3, "softmax")], dtype="float64", seed=1)
    plain = gn.Sequential([gn.Dense(3, 3, "softmax")], dtype="float64", seed=1)
    a = weighted.fit(X, labels, loss="cce", epochs=1, optimizer=gn.optim.SGD(lr=0.0), validation_split=0.3,
                     class_weight={0: 5.0, 1: 1.0, 2: 1.0})
    b = plain.fit(X, labels, loss="cce", epochs=1, optimizer=gn.optim.SGD(lr=0.0), validation_split=0.3)
    assert a["val_loss"] == b["val_loss"] and a["loss"] != b["loss"]  # lr 0: only the training loss is weighted
