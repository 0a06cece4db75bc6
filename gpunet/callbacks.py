"""Callbacks for ``Sequential.fit``: early stopping, checkpoints, NaN handling, learning-rate schedules, progress.

A callback is told when training begins and ends, when each epoch begins and ends (with that epoch's ``logs``:
``loss``, metrics, ``val_*``), and after each batch. It may stop training by setting ``model.stop_training = True``.
Keras's names and semantics, PyTorch's formulas for the schedules (ReduceLROnPlateau included).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time

from . import validation


class Callback:
    """Base class; every hook is optional. ``self.model`` is set before ``on_train_begin``; ``self.trainer`` is its
    :class:`gpunet.trainer.Trainer` (the loss, optimizer and metrics of this fit)."""

    model = None

    @property
    def trainer(self):
        return self.model.trainer

    def on_train_begin(self, logs: dict | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_batch_end(self, batch: int, running_logs) -> None:
        """``running_logs()`` returns ``{"loss": mean so far}``; calling it waits for the device, so call it rarely."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_nonfinite(self, error: "NonFiniteLossError") -> None:
        """The epoch diverged (a NaN or infinite loss or weight); the model is already rolled back to the last
        finite weights, and training ends after this hook. :class:`TerminateOnNaN` raises ``error`` here."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """``logs["interrupted"]``: whether Ctrl-C ended the fit (the model keeps its last finished step)."""


class History(Callback):
    """What ``fit`` returns: ``history.history["loss"]`` (and ``"val_loss"``, metrics, ``"lr"``) holds one float per
    epoch; ``history["loss"]`` is a shortcut."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted = False  # whether Ctrl-C ended the fit

    def on_epoch_end(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: round(v[-1], 6) for k, v in self.history.items()}
        return f"History(epochs={len(self.epoch)}, last={last})"


def _check_logged(callback, monitor: str, logs) -> None:
    """Refuse, before the first epoch, monitoring the validation loss or a validation metric of this fit when the
    fit has no validation data (it would only fail after an epoch; other ``val_*`` names may come from callbacks)."""
    names = {"loss", *(m.name for m in callback.trainer.metrics)}
    if (monitor.startswith("val_") and monitor[4:] in names and logs is not None
            and not logs.get("validation", True)):
        raise ValueError(f"{type(callback).__name__} monitors {monitor!r}, but this fit has no validation data; pass "
                         f"validation_data or validation_split, or monitor {monitor[4:]!r}")


def _mode(callback, monitor: str, mode: str) -> str:
    """``"min"`` or ``"max"`` for ``monitor``: ``mode`` itself, or for ``"auto"`` what Keras infers: the loss
    decreases; a metric of this fit goes the way its ``direction`` says (accuracy, precision, recall, f1, r2 up;
    mse, mae down). Anything else needs an explicit mode."""
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if name == "loss":
        return "min"
    for metric in callback.trainer.metrics:
        if metric.name == name and getattr(metric, "direction", None) in ("min", "max"):
            return metric.direction
    raise ValueError(f"{type(callback).__name__} cannot tell whether {monitor!r} should go up or down (it is not "
                     f"the loss or a metric of this fit that declares its direction); pass mode='max' or mode='min'")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights=True`` the model ends with the weights of its best epoch whenever training ends,
    whether it stopped early or ran all its epochs (not when Ctrl-C ended it: it keeps its last step's weights).
    ``mode="auto"`` infers the direction as Keras does (see :func:`_mode`); ``"min"``/``"max"`` set it.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False):
        self.monitor = monitor
        self.patience = validation.non_negative_int("patience", patience)  # 0: stop at the first bad epoch (Keras)
        self.min_delta = abs(validation.real_number("min_delta", min_delta))
        self.mode = validation.one_of("mode", mode, ("auto", "min", "max"))
        self.restore_best_weights = bool(restore_best_weights)
        self.best = self.best_epoch = self.best_weights = None
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.best = self.best_epoch = self.best_weights = self.stopped_epoch = None
        self._wait = 0
        _check_logged(self, self.monitor, logs)
        self._direction = _mode(self, self.monitor, self.mode)

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self._direction == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which fit does not log; logged: "
                             f"{sorted(logs)} (val_* needs validation_data or validation_split)")
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        interrupted = bool(logs and logs.get("interrupted"))  # Ctrl-C keeps the last step's weights, as it says
        if self.restore_best_weights and self.best_weights is not None and not interrupted:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (``gpunet.io`` format, atomically) after each epoch, or only when ``monitor`` improves
    (``save_best_only=True``). ``path`` may contain ``{epoch}`` and log keys, e.g. ``"ckpt-{epoch:03d}.safetensors"``."""

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto",
                 save_optimizer: bool = True):
        self.path = str(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = validation.one_of("mode", mode, ("auto", "min", "max"))
        self.save_optimizer = bool(save_optimizer)
        self.best = None

    def on_train_begin(self, logs=None):
        if self.save_best_only:
            _check_logged(self, self.monitor, logs)
        if logs is not None and not logs.get("validation", True) and "{val_loss" in self.path:
            raise ValueError(f"ModelCheckpoint's path {self.path!r} names a val_* value, but this fit has no "
                             f"validation data; pass validation_data or validation_split")
        self._direction = _mode(self, self.monitor, self.mode) if self.save_best_only else None
        folder = os.path.dirname(os.path.abspath(self.path))
        if "{" not in folder and not os.path.isdir(folder):  # refused before the first step, not after an epoch
            raise FileNotFoundError(f"ModelCheckpoint cannot save to {self.path}: the folder {folder} does not exist")

    def on_epoch_end(self, epoch, logs):
        if self.save_best_only:
            if self.monitor not in logs:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which fit does not log; logged: "
                                 f"{sorted(logs)}")
            value = logs[self.monitor]
            better = self.best is None or (value < self.best if self._direction == "min" else value > self.best)
            if not better:
                return
            self.best = value
        try:
            path = self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"ModelCheckpoint's path {self.path!r} names {exc}, which fit does not log; logged: "
                             f"{['epoch', *sorted(logs)]}") from None
        self.model.save(path, optimizer=None if self.save_optimizer else False)


class TerminateOnNaN(Callback):
    """What ``fit`` does when the loss or the weights become NaN or infinite (one is always active; pass your own
    to change the policy).

    ``fit`` checks once per epoch (one device read), finds the first batch whose loss was not finite, and rolls
    the model and optimizer back to the weights with which the last finite batch loss was computed (when the very
    first batch of an epoch fails: the epoch's starting weights), never keeping a non-finite weight. Then it
    raises :class:`NonFiniteLossError` (``raise_error=True``, the default; like any exception in ``fit`` this skips
    the callbacks' ``on_train_end``) or stops, Keras-style, with the history so far and a
    :class:`NonFiniteLossWarning` saying what happened.
    """

    def __init__(self, raise_error: bool = True):
        self.raise_error = bool(raise_error)

    def on_nonfinite(self, error):
        if self.raise_error:
            raise error
        from .validation import warn_at_caller

        warn_at_caller(f"gpunet: {error}", NonFiniteLossWarning)
        self.model.stop_training = True


class NonFiniteLossWarning(UserWarning):
    """Training diverged and stopped (``TerminateOnNaN(raise_error=False)``)."""


class NonFiniteLossError(FloatingPointError):
    """Training diverged. ``epoch`` and ``batch`` (0-based) locate the first non-finite loss; ``history`` holds
    the completed epochs."""

    def __init__(self, message: str, epoch: int, batch: int, history: History):
        super().__init__(message)
        self.epoch, self.batch, self.history = epoch, batch, history


class LearningRateScheduler(Callback):
    """Keras's scheduler: at the start of every epoch, ``optimizer.lr = schedule(epoch, lr)`` with ``lr`` the
    current rate (a ``schedule(epoch)`` of one argument works too). ``epoch`` is the fit's epoch index, counted from
    ``fit``'s ``initial_epoch``. The rate each epoch used is logged as ``"lr"``.

    >>> halve_after_10 = LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 else lr * 0.5)
    """

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr; received {schedule!r}")
        self.schedule = schedule
        try:
            params = inspect.signature(schedule).parameters.values()
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self._takes_lr = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):  # no signature (a builtin): Keras's current form
            self._takes_lr = True

    def on_epoch_begin(self, epoch):
        optimizer = self.trainer.optimizer
        lr = self.schedule(epoch, optimizer.lr) if self._takes_lr else self.schedule(epoch)
        optimizer.lr = validation.number_in("lr (from the schedule)", float(lr), 0.0, float("inf"))

    def on_epoch_end(self, epoch, logs):
        logs["lr"] = self.trainer.optimizer.lr


class _ClosedForm(LearningRateScheduler):
    """torch's schedulers in closed form, ``lr = formula(epoch, initial_lr)``. ``initial_lr`` is the optimizer's
    (torch's param_group ``"initial_lr"``): set to its rate by the first closed-form schedule that trains it, and
    saved with it, so a fit resumed from a file (``initial_epoch``) continues the schedule."""

    def __init__(self, formula):
        super().__init__(lambda epoch, lr: formula(epoch, self.trainer.optimizer.initial_lr))

    def on_train_begin(self, logs=None):
        optimizer = self.trainer.optimizer
        if optimizer.initial_lr is None:
            optimizer.initial_lr = optimizer.lr


class StepLR(_ClosedForm):
    """``lr = initial_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        step_size = validation.positive_int("step_size", step_size)
        gamma = validation.positive_number("gamma", gamma)
        super().__init__(lambda epoch, lr0: lr0 * gamma ** (epoch // step_size))


class ExponentialLR(_ClosedForm):
    """``lr = initial_lr * gamma ** epoch`` (``torch.optim.lr_scheduler.ExponentialLR``)."""

    def __init__(self, gamma: float):
        gamma = validation.positive_number("gamma", gamma)
        super().__init__(lambda epoch, lr0: lr0 * gamma**epoch)


class CosineAnnealingLR(_ClosedForm):
    """``lr = eta_min + (initial_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2``
    (``torch.optim.lr_scheduler.CosineAnnealingLR``'s closed form; it restarts after ``2 T_max``)."""

    def __init__(self, T_max: int, eta_min: float = 0.0):
        T_max = validation.positive_int("T_max", T_max)
        eta_min = validation.number_in("eta_min", eta_min, 0.0, float("inf"))
        super().__init__(lambda epoch, lr0: eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * epoch / T_max)) / 2)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for more than ``patience`` epochs
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``, checked at every epoch's end; the new rate applies from the next
    epoch, and the rate each epoch used is logged as ``"lr"``).

    Improvement: ``value < best (1 - threshold)`` (``threshold_mode="rel"``) or ``value < best - threshold``
    (``"abs"``), mirrored for ``mode="max"``; a NaN never improves. After a reduction, ``cooldown`` epochs pass
    before bad epochs count again. The rate never drops below ``min_lr``, and a change smaller than ``eps`` is
    skipped. Keras's callback reduces one epoch sooner (after ``patience`` bad epochs, not more than ``patience``).
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8):
        self.monitor = monitor
        self.mode = validation.one_of("mode", mode, ("auto", "min", "max"))
        self.factor = validation.number_in("factor", factor, 0.0, 1.0)
        if self.factor == 0:
            raise ValueError(f"factor must be in (0, 1); received factor={factor!r}")
        self.patience = validation.non_negative_int("patience", patience)
        self.threshold = validation.number_in("threshold", threshold, 0.0, float("inf"))
        self.threshold_mode = validation.one_of("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = validation.non_negative_int("cooldown", cooldown)
        self.min_lr = validation.number_in("min_lr", min_lr, 0.0, float("inf"))
        self.eps = validation.number_in("eps", eps, 0.0, float("inf"))
        self.best, self.num_bad_epochs, self.cooldown_counter = None, 0, 0

    def on_train_begin(self, logs=None):  # each fit starts afresh, as in Keras
        _check_logged(self, self.monitor, logs)
        self._direction = _mode(self, self.monitor, self.mode)
        self.best = math.inf if self._direction == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0

    def _improved(self, value: float) -> bool:
        if self._direction == "min":
            return value < (self.best * (1 - self.threshold) if self.threshold_mode == "rel" else
                            self.best - self.threshold)
        return value > (self.best * (1 + self.threshold) if self.threshold_mode == "rel" else
                        self.best + self.threshold)

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which fit does not log; logged: "
                             f"{sorted(logs)} (val_* needs validation_data or validation_split)")
        optimizer = self.trainer.optimizer
        logs["lr"] = optimizer.lr
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(optimizer.lr * self.factor, self.min_lr)
            if optimizer.lr - new_lr > self.eps:
                optimizer.lr = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0


class ProgressBar(Callback):
    """``verbose=1``: a tqdm bar per epoch with the running loss (read from the device at most every
    ``refresh`` seconds), then the epoch's logs. ``verbose=2``: one line per epoch."""

    def __init__(self, verbose: int = 1, refresh: float = 0.5, file=None):
        self.verbose, self.refresh = verbose, refresh
        self.file = file or sys.stdout
        self._bar = None

    def on_train_begin(self, logs=None):
        self.epochs, self.steps = logs["epochs"], logs["steps"]
        shape = (f"{logs['samples']} samples, {self.steps} steps of batch {logs['batch_size']} per epoch"
                 if logs["batch_size"] is not None else f"{self.steps or 'an unknown number of'} batches per epoch")
        print(f"Training on {self.model.device} ({self.model.backend.name}, {self.model.dtype}): {shape}",
              file=self.file)

    def on_epoch_begin(self, epoch):
        self._start = self._last = time.perf_counter()
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}", unit="step",
                             file=self.file, leave=True, dynamic_ncols=True)

    def on_batch_end(self, batch, running_logs):
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.perf_counter()
        if now - self._last >= self.refresh:
            self._last = now
            self._bar.set_postfix(loss=f"{running_logs()['loss']:.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs):
        text = " - ".join(f"{k}: {v:.4g}" for k, v in logs.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
            self._bar.close()
            self._bar = None
        else:
            print(f"Epoch {epoch + 1}/{self.epochs} - {time.perf_counter() - self._start:.2f}s - {text}",
                  file=self.file)

    def on_train_end(self, logs=None):
        if self._bar is not None:  # an interrupted epoch's bar
            self._bar.close()
            self._bar = None
