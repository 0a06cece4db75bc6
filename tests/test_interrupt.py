"""Ctrl-C ends training cleanly, as in Keras and scikit-learn: ``fit`` returns the History of the finished epochs
with the weights of the last finished step (or, where the interrupt arrives as an exception, of the last finished
epoch), says which in a warning, and the command line saves what it has when ``--save`` was given."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpunet as gn
from gpunet import callbacks as cbs


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=n)


def model():
    return gn.Sequential([gn.Dense(3, 8, "tanh"), gn.Dense(8, 1)], dtype="float64", seed=0)


class At(cbs.Callback):
    """At batch ``batch`` of epoch ``epoch``: record the weights, then ``action()``; records each epoch's starting
    weights too."""

    def __init__(self, epoch, batch, action):
        self.epoch, self.batch, self.action = epoch, batch, action
        self.started, self.after_step, self.current = {}, None, None

    def on_epoch_begin(self, epoch):
        self.current = epoch
        self.started[epoch] = self.model.get_weights()

    def on_batch_end(self, batch, running_logs):
        if (self.current, batch) == (self.epoch, self.batch):
            self.after_step = self.model.get_weights()
            self.action()


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def raise_interrupt():
    raise KeyboardInterrupt


def assert_weights(actual, expected):
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_stops_after_the_current_step():
    X, y = data()
    net, at = model(), At(2, 4, ctrl_c)
    with pytest.warns(UserWarning, match=r"Training interrupted by user .* epoch 3 after batch 5 of 8: the model "
                                         r"keeps the weights of that last finished step") as caught:
        history = net.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.05, momentum=0.9), epochs=10, batch_size=8,
                          callbacks=[at])
    assert caught[0].filename == __file__
    assert history.interrupted and history.epoch == [0, 1]
    assert_weights(net.get_weights(), at.after_step)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_the_interrupted_model_resumes_where_it_stopped():
    """The model and its optimizer are consistent after the interrupt: training on continues normally."""
    X, y = data()
    net = model()
    opt = gn.optim.Adam(lr=0.01)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        net.fit(X, y, loss="mse", optimizer=opt, epochs=5, batch_size=8, callbacks=[At(1, 2, ctrl_c)])
    assert opt.steps == 8 + 3
    history = net.fit(X, y, epochs=2, batch_size=8)
    assert not history.interrupted and np.all(np.isfinite(history["loss"]))


def test_keyboard_interrupt_as_an_exception_restores_the_epoch_start():
    """Raised mid-epoch (from another thread's point of view, or by a second Ctrl-C): the step may be half done, so
    the model goes back to the weights (and optimizer state) its epoch started with."""
    X, y = data()
    net, at = model(), At(1, 3, raise_interrupt)
    opt = gn.optim.SGD(lr=0.05, momentum=0.9)
    with pytest.warns(UserWarning, match=r"in epoch 2: the model keeps the weights it had when that epoch began"):
        history = net.fit(X, y, loss="mse", optimizer=opt, epochs=10, batch_size=8, callbacks=[at])
    assert history.interrupted and history.epoch == [0]
    assert_weights(net.get_weights(), at.started[1])
    assert opt.steps == 8


def test_a_second_ctrl_c_interrupts_at_once():
    def twice():
        ctrl_c()
        ctrl_c()

    X, y = data()
    net, at = model(), At(0, 2, twice)
    with pytest.warns(UserWarning, match="when that epoch began"):
        history = net.fit(X, y, loss="mse", epochs=3, batch_size=8, callbacks=[at])
    assert history.interrupted and history.epoch == []
    assert_weights(net.get_weights(), at.started[0])


def test_early_stopping_does_not_restore_over_an_interrupt():
    X, y = data()
    net, at = model(), At(3, 0, ctrl_c)
    stopper = cbs.EarlyStopping("loss", patience=50, restore_best_weights=True)
    with pytest.warns(UserWarning, match="last finished step"):
        net.fit(X, y, loss="mse", optimizer=gn.optim.SGD(lr=0.05), epochs=10, batch_size=8, callbacks=[stopper, at])
    assert_weights(net.get_weights(), at.after_step)


def test_sklearn_wrapper_keeps_the_model_on_ctrl_c():
    from gpunet.sklearn import MLPRegressor

    X, y = data(200)
    reg = MLPRegressor(hidden_layer_sizes=(8,), batch_size=32, max_iter=50, random_state=0)
    original = gn.Sequential.fit

    def fit_then_interrupt(self, *args, callbacks=None, **kwargs):
        return original(self, *args, callbacks=[*(callbacks or []), At(2, 1, ctrl_c)], **kwargs)

    gn.Sequential.fit = fit_then_interrupt
    try:
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            reg.fit(X, y)
    finally:
        gn.Sequential.fit = original
    assert reg.n_iter_ == 2 and len(reg.loss_curve_) == 2
    assert reg.predict(X[:3]).shape == (3,)


@pytest.mark.slow
def test_command_line_saves_what_it_has_on_ctrl_c(tmp_path):
    """`gpunet train --save`, interrupted once training runs: exit 130, one line saying so, and a loadable file."""
    target = tmp_path / "m.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--epochs", "100000",
                                "--early-stopping", "0", "--save", str(target)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "model:" not in line and time.monotonic() < deadline:  # the model line comes right before fit
            line = process.stdout.readline()
        time.sleep(1.5)  # into the first epochs
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "gpunet train: interrupted" in err and f"saving it to {target}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert f"saved {target}" in out and "test: accuracy" in out
    loaded = gn.load(target)
    assert loaded.metadata["cli"]["task"] == "multiclass"
    assert loaded.ensemble_members == 1  # the recipe's first network, interrupted: the others never started


@pytest.mark.parametrize("epoch", [1, 2])
def test_ctrl_c_during_an_epochs_callbacks_stops_there(epoch):
    """A SIGINT during validation or the epoch's callbacks (a checkpoint...) ends the fit after that epoch,
    without training into the next one, and the last epoch's too is reported as interrupted."""
    class CtrlCAtEpochEnd(cbs.Callback):
        def on_epoch_end(self, e, logs):
            if e == epoch:
                ctrl_c()

    X, y = data()
    net = model()
    with pytest.warns(UserWarning, match=rf"after epoch {epoch + 1}: the model keeps the weights of that finished"):
        history = net.fit(X, y, loss="mse", optimizer="sgd", epochs=3, batch_size=8, callbacks=[CtrlCAtEpochEnd()])
    assert history.interrupted and history.epoch == list(range(epoch + 1))
    assert net.optimizer.steps == 8 * (epoch + 1)
