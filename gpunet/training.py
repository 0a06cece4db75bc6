"""The epoch loop behind ``Sequential.fit``: batches, callbacks, divergence roll-back, interrupts.

The steps themselves and their device-side sums are the model's :class:`gpunet.trainer.Trainer`'s. Nothing here
checks arguments: ``fit`` has done that once. Per batch nothing moves between host and device, unless a callback
calls its ``running_logs()`` (the progress bar does, at most every ``refresh`` seconds). Per epoch there is one
host -> device copy of the shuffled row order (when shuffling), one read of the batch losses, one of a "weights
finite" flag, one per device array of each metric's statistics (one for accuracy, mse and mae; three for r2), and
the validation pass; rolling back a diverged epoch reads the flag once per replayed step. A source whose batches can
be read only once per epoch (``source.replayable`` False: an iterable of batches) rolls a diverged epoch back to its
start instead of replaying its finite steps; a source of unknown length (``source.sizes`` None) ends its epoch when
``batch(b)`` returns None.

Ctrl-C: in the main thread, the first SIGINT during ``fit`` lets the current step finish and ends the fit there (a
second one interrupts at once); elsewhere the KeyboardInterrupt arrives as an exception, and the fit restores the
weights the interrupted epoch started with. Either way ``fit`` returns the History and warns which weights the model
keeps.
"""

from __future__ import annotations

import itertools
import signal
import threading

import numpy as np

from .backend import to_numpy
from .callbacks import History, NonFiniteLossError
from .validation import warn_at_caller


def run(model, source, val, **kwargs) -> History:
    """Train ``model`` (its trainer configured) on the batches of ``source`` (:mod:`gpunet.sources`); ``val`` is
    ``None``, device ``(X_val, Y_val)`` or ``(X_val, Y_val, W_val)``, or an object evaluated in batches
    (``val.evaluate(model, loss, metrics)``: :class:`gpunet.sources.Evaluation`); ``parallel`` a
    :class:`gpunet.distributed.DataParallel` (its epoch totals, validation, interrupts and divergence agreed across
    ranks); ``graph``: run the epochs as replays of
    captured CUDA graphs where they apply (:func:`gpunet.backend.graphs.plan`: ``"auto"``, True, False). Returns the
    History (also in ``callbacks``).

    NumPy's overflow warnings are silenced: divergence is detected and reported by the loop itself.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), _Interrupts() as interrupts:
        return _run(model, source, val, interrupts=interrupts, **kwargs)


class _Interrupts:
    """SIGINT as a request: the first one sets :attr:`requested` (the loop ends after the current step), a second
    raises KeyboardInterrupt at once. Installed only in the main thread over Python's default handler; elsewhere
    KeyboardInterrupt stays an exception."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _run(model, source, val, *, epochs, initial_epoch, callbacks, interrupts, parallel=None, undo=None,
         graph="auto") -> History:
    from .backend import graphs

    trainer = model.trainer
    captured = graphs.plan(model, source, callbacks, graph)  # None: eager steps
    n, sizes = source.n, source.sizes
    steps = len(sizes) if sizes is not None else getattr(source, "steps", None)
    history = next(cb for cb in callbacks if isinstance(cb, History))
    history.interrupted = False
    model.stop_training = False
    try:
        for cb in callbacks:
            cb.model = model
            cb.on_train_begin({"epochs": epochs, "initial_epoch": initial_epoch, "steps": steps,
                               "samples": n, "batch_size": source.batch, "validation": val is not None})
    except BaseException:  # a callback refusing the fit (a monitor with no direction...): the model as it was
        if undo is not None:
            undo()
        raise
    try:
        return _epochs(model, source, val, epochs, initial_epoch, callbacks, interrupts, parallel, history,
                       captured)
    finally:  # also after an exception: no epoch left open, no batch (and so no copy of the data) held
        trainer._epoch = None
        for layer in model.layers:
            layer._cache = None


def _epochs(model, source, val, epochs, initial_epoch, callbacks, interrupts, parallel, history,
            captured) -> History:
    trainer, sizes = model.trainer, source.sizes

    def interrupted() -> bool:  # agreed across ranks: they stop at the same step
        return interrupts.requested if parallel is None else parallel.world.any(interrupts.requested)

    def running_logs():
        return {"loss": trainer.running_loss()}

    def weights_finite():  # (every rank's replica is the same, but the decision must be too)
        finite = trainer.weights_finite()
        return finite if parallel is None else parallel.world.all(finite)

    note, snapshot, epoch = None, None, initial_epoch
    try:
        for epoch in range(initial_epoch, epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            snapshot = trainer.snapshot()
            if captured is None:
                batch = source.epoch(trainer)

                def step(b):
                    return trainer._step(*batch(b))

                trainer.begin_epoch(sizes)
            else:  # CUDA graphs: the batch gathered, the step and its sums on the device, one launch per step
                step = captured.begin_epoch()
            stop = False
            for b in range(len(sizes)) if sizes is not None else itertools.count():
                if captured is None:
                    arrays = batch(b)
                    if arrays is None:  # the end of an epoch of unknown length (an iterable of batches)
                        break
                    trainer._step(*arrays)
                else:
                    step(b)
                for cb in callbacks:
                    cb.on_batch_end(b, running_logs)
                stop = interrupted()
                if stop:
                    break
            totals = trainer.end_epoch() if captured is None else captured.end_epoch()
            if parallel is not None:
                totals = parallel.merge(totals)
            done = len(totals.batch_losses)
            if not (totals.finite and weights_finite()):
                bad = totals.first_nonfinite
                bad = done if bad is None else bad
                if getattr(source, "replayable", True):
                    kept = _roll_back(trainer, snapshot, step, max(bad - 1, 0), weights_finite)
                else:  # its batches cannot be read again: back to where the epoch began
                    trainer.restore(snapshot)
                    kept = 0
                error = NonFiniteLossError(_divergence_message(epoch, bad, totals.batch_losses, kept, done), epoch,
                                           min(bad, done - 1), history)
                for cb in callbacks:  # TerminateOnNaN raises the error or stops quietly (like any exception in
                    cb.on_nonfinite(error)  # fit, a raised one skips the callbacks' on_train_end)
                break
            if stop:
                of = f" of {len(sizes)}" if sizes is not None else ""
                note = (f"in epoch {epoch + 1} after batch {done}{of}: the model keeps the weights of "
                        f"that last finished step")
                break
            logs = {"loss": totals.loss, **totals.metrics}
            if val is not None:
                if isinstance(val, tuple):  # (X, Y) or (X, Y, W)
                    evaluate = model._evaluate if parallel is None else parallel.evaluate
                    weights = val[2] if len(val) > 2 else None
                    scores = evaluate(val[0], val[1], trainer.loss, trainer.metrics, W=weights)
                else:  # streamed validation data, evaluated in batches
                    scores = val.evaluate(model, trainer.loss, trainer.metrics)
                logs.update({f"val_{k}": v for k, v in scores.items()})
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            if interrupted():  # Ctrl-C during validation or the epoch's callbacks
                note = f"after epoch {epoch + 1}: the model keeps the weights of that finished epoch"
                break
            if model.stop_training:
                break
    except KeyboardInterrupt:  # as an exception, anywhere in the epoch: back to where the epoch started
        trainer._epoch = None
        if captured is not None:  # the graphs' stream finishes before the restore writes on the legacy stream
            captured.interrupted()
        if snapshot is not None:
            trainer.restore(snapshot)
        note = (f"in epoch {epoch + 1}: the model keeps the weights it had when that epoch began"
                if snapshot is not None else "before the first epoch: the model is unchanged")
    history.interrupted = note is not None
    for cb in callbacks:
        cb.on_train_end({"interrupted": history.interrupted})
    if note is not None:
        warn_at_caller(f"Training interrupted by user (KeyboardInterrupt) {note}; the history holds the "
                       f"{len(history.epoch)} finished epoch(s).")
    return history


def _roll_back(trainer, snapshot, step, target: int, weights_finite) -> int:
    """Restore the epoch's start and replay up to ``target`` steps, stopping before any step that leaves a
    non-finite weight (a finite loss does not prove finite weights). Returns the number of steps replayed."""
    trainer.restore(snapshot)
    good = 0
    for b in range(target):
        step(b)
        if not weights_finite():
            break
        good = b + 1
    if good < target:
        trainer.restore(snapshot)
        for b in range(good):
            step(b)
    return good


def _divergence_message(epoch, bad, batch_losses, keep, n_batches) -> str:
    if bad < n_batches:
        what = f"the loss became {batch_losses[bad]} at epoch {epoch + 1}, batch {bad + 1} of {n_batches}"
    else:
        what = f"the weights became non-finite in the last update of epoch {epoch + 1}"
    kept = (f"the weights with which batch {keep + 1}'s finite loss ({batch_losses[keep]:.6g}) was computed"
            if keep > 0 else f"the weights epoch {epoch + 1} started with")
    return (f"training diverged: {what}. The model keeps {kept}. Lower the learning rate, scale the inputs, or "
            f"check the targets.")


def split_validation(n: int, fraction: float, labels, rng: np.random.Generator, name: str = "validation_split",
                     single_rows: str = "refuse"):
    """Host index arrays ``(kept, held out)`` holding out ``fraction`` of ``n`` rows, drawn from ``rng``; stratified
    by ``labels`` (host integer class per row) when given, else uniform. Stratified, each class gives
    ``round(fraction * count)`` rows, at least 1 and leaving at least 1; a class of a single row is refused
    (``single_rows="refuse"``, fit's ``validation_split``) or stays on the kept side (``"keep"``, the command line's
    splits). Raises ValueError (naming the split ``name``) when a side would be empty."""
    if labels is None:
        n_out = int(round(fraction * n))
        if not 1 <= n_out <= n - 1:
            raise ValueError(f"{name}={fraction} of {n} rows leaves {n_out} held out and {n - n_out} kept; both "
                             f"need at least 1")
        order = rng.permutation(n)
        return np.sort(order[n_out:]), np.sort(order[:n_out])
    classes, counts = np.unique(labels, return_counts=True)
    if single_rows == "refuse" and counts.min() < 2:
        raise ValueError(f"{name} is stratified by class, but class {classes[np.argmin(counts)]} has only "
                         f"{counts.min()} sample; each class needs at least 2 (or pass validation_data)")
    kept, held = [], []
    for c, count in zip(classes, counts):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_out = 0 if count < 2 else min(max(int(round(fraction * count)), 1), count - 1)
        held.append(rows[:n_out])
        kept.append(rows[n_out:])
    kept, held = np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))
    if held.size == 0:
        raise ValueError(f"{name}={fraction} holds out no rows: every class has a single row of the {n} rows it "
                         f"splits")
    return kept, held


def class_labels(Y, loss):
    """Host class index per row of prepared targets ``Y`` for classification losses (cce: argmax; single-output
    bce: ``y > 0.5``), else ``None``."""
    if loss.name == "cce":
        return to_numpy(Y).argmax(axis=1)
    if loss.name == "bce" and Y.shape[1] == 1:
        return (to_numpy(Y)[:, 0] > 0.5).astype(np.int64)
    return None
