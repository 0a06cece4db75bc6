"""The epoch loop behind ``Sequential.fit``: batches, device-side accumulation, callbacks, divergence roll-back.

Nothing here checks arguments: ``fit`` has done that once. Per batch nothing moves between host and device, unless a
callback calls its ``running_logs()`` (the progress bar does, at most every ``refresh`` seconds). Per epoch there is
one host -> device copy of the shuffled row order (when shuffling), one read of the batch losses, one of a "weights
finite" flag, one per device array of each metric's statistics (one for accuracy, mse and mae; three for r2), and
the validation pass; rolling back a diverged epoch reads the flag once per replayed step.
"""

from __future__ import annotations

import numpy as np

from .backend import to_numpy
from .callbacks import History, NonFiniteLossError, TerminateOnNaN


def run(model, X, Y, W, val, **kwargs) -> History:
    """Train ``model`` on device arrays ``X`` ``(n, in)``, ``Y`` ``(n, out)``, optional row weights ``W``
    ``(n, 1)``; ``val`` is ``None`` or device ``(X_val, Y_val)``; ``combined`` is ``model._output_pairing(loss)``.
    Returns the History (also in ``callbacks``).

    NumPy's overflow warnings are silenced: divergence is detected and reported by the loop itself.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _run(model, X, Y, W, val, **kwargs)


def _run(model, X, Y, W, val, *, loss, optimizer, metrics, epochs, batch, shuffle, callbacks, combined) -> History:
    xp = model.xp
    n = X.shape[0]
    starts = list(range(0, n, batch))
    sizes = np.array([min(batch, n - s) for s in starts], dtype=np.float64)
    history = next(cb for cb in callbacks if isinstance(cb, History))
    nan_policy = next(cb for cb in callbacks if isinstance(cb, TerminateOnNaN))
    model.stop_training = False
    for cb in callbacks:
        cb.model = model
        cb.on_train_begin({"epochs": epochs, "steps": len(starts), "samples": n, "batch_size": batch})

    def step(Xe, Ye, We, b):
        rows = slice(starts[b], starts[b] + int(sizes[b]))
        return model._train_step(Xe[rows, ...], Ye[rows, ...], loss, optimizer, combined,
                                 None if We is None else We[rows, ...])

    for epoch in range(epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        Xe, Ye, We = X, Y, W
        if shuffle and batch < n:
            order = xp.asarray(model._shuffle_rng.permutation(n))
            Xe, Ye = xp.take(X, order, axis=0), xp.take(Y, order, axis=0)
            We = None if W is None else xp.take(W, order, axis=0)
        snapshot = _snapshot(model, optimizer)
        values, metric_stats = [], [None] * len(metrics)
        for b in range(len(starts)):
            pred, value = step(Xe, Ye, We, b)
            values.append(value)
            for j, metric in enumerate(metrics):
                stats = metric.stats(pred, Ye[starts[b]:starts[b] + int(sizes[b]), ...])
                metric_stats[j] = stats if metric_stats[j] is None else metric.combine(metric_stats[j], stats)
            for cb in callbacks:
                cb.on_batch_end(b, lambda: {"loss": _mean_loss(xp, values, sizes)})

        batch_losses = to_numpy(xp.stack(values)).astype(np.float64)
        if not (np.all(np.isfinite(batch_losses)) and _weights_finite(model)):
            bad = int(np.argmin(np.isfinite(batch_losses))) if not np.all(np.isfinite(batch_losses)) else len(starts)
            kept = _roll_back(model, optimizer, snapshot, lambda b: step(Xe, Ye, We, b), max(bad - 1, 0))
            message = _divergence_message(epoch, bad, batch_losses, kept, len(starts))
            if nan_policy.raise_error:  # like any exception in fit, this skips the callbacks' on_train_end
                raise NonFiniteLossError(message, epoch, min(bad, len(starts) - 1), history)
            print(f"gpunet: {message}")
            break

        logs = {"loss": float(np.dot(batch_losses, sizes) / n)}
        for metric, stats in zip(metrics, metric_stats):
            logs[metric.name] = metric.result([to_numpy(s) for s in stats])
        if val is not None:
            logs.update({f"val_{k}": v for k, v in model._evaluate(*val, loss, metrics).items()})
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end()
    return history


def _weights_finite(model) -> bool:
    xp = model.xp
    return bool(xp.all(xp.stack([xp.all(xp.isfinite(p)) for p in model.parameters()])))


def _roll_back(model, optimizer, snapshot, step, target: int) -> int:
    """Restore the epoch's start and replay up to ``target`` steps, stopping before any step that leaves a
    non-finite weight (a finite loss does not prove finite weights). Returns the number of steps replayed."""
    _restore(model, optimizer, snapshot)
    good = 0
    for b in range(target):
        step(b)
        if not _weights_finite(model):
            break
        good = b + 1
    if good < target:
        _restore(model, optimizer, snapshot)
        for b in range(good):
            step(b)
    return good


def _mean_loss(xp, values, sizes) -> float:
    done = len(values)
    return float(to_numpy(xp.stack(values)).astype(np.float64) @ sizes[:done] / sizes[:done].sum())


def _divergence_message(epoch, bad, batch_losses, keep, n_batches) -> str:
    if bad < n_batches:
        what = f"the loss became {batch_losses[bad]} at epoch {epoch + 1}, batch {bad + 1} of {n_batches}"
    else:
        what = f"the weights became non-finite in the last update of epoch {epoch + 1}"
    kept = (f"the weights with which batch {keep + 1}'s finite loss ({batch_losses[keep]:.6g}) was computed"
            if keep > 0 else f"the weights epoch {epoch + 1} started with")
    return (f"training diverged: {what}. The model keeps {kept}. Lower the learning rate, scale the inputs, or "
            f"check the targets.")


def _snapshot(model, optimizer):
    """Device copies of the parameters and the optimizer state, and the dropout generator's state (NumPy's; CuPy's
    lives on the GPU and goes on), to roll back to if the epoch diverges."""
    xp = model.xp
    copy = lambda a: None if a is None else xp.asarray(a, copy=True)  # noqa: E731
    state = None if optimizer.state is None else [{k: copy(v) for k, v in s.items()} for s in optimizer.state]
    rng = model._dropout_rng
    rng_state = rng.bit_generator.state if isinstance(rng, np.random.Generator) else None
    return [copy(p) for p in model.parameters()], state, optimizer.steps, rng_state


def _restore(model, optimizer, snapshot) -> None:
    params, state, steps, rng_state = snapshot
    if rng_state is not None:  # a replayed step draws the masks it drew the first time
        model._dropout_rng.bit_generator.state = rng_state
    for p, saved in zip(model.parameters(), params):
        p[...] = saved
    if state is None:
        optimizer.reset()
    else:
        # copies: a replay must not mutate the snapshot, which a second roll-back restores again
        optimizer.state = [{k: None if v is None else model.xp.asarray(v, copy=True) for k, v in s.items()}
                           for s in state]
        optimizer.steps = steps


def split_validation(n: int, fraction: float, labels, rng: np.random.Generator):
    """Host index arrays ``(train, validation)`` holding out ``fraction`` of ``n`` rows; stratified by ``labels``
    (host integer class per row) when given, else uniform. Raises ValueError when a side would be empty."""
    if labels is None:
        n_val = int(round(fraction * n))
        if not 1 <= n_val <= n - 1:
            raise ValueError(f"validation_split={fraction} of {n} samples leaves {n_val} for validation and "
                             f"{n - n_val} for training; both need at least 1")
        order = rng.permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"validation_split is stratified by class, but class {classes[np.argmin(counts)]} has only "
                         f"{counts.min()} sample; each class needs at least 2 (or pass validation_data)")
    train, val = [], []
    for c, count in zip(classes, counts):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(int(round(fraction * count)), 1), count - 1)
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_labels(Y, loss):
    """Host class index per row of prepared targets ``Y`` for classification losses (cce: argmax; single-output
    bce: ``y > 0.5``), else ``None``."""
    if loss.name == "cce":
        return to_numpy(Y).argmax(axis=1)
    if loss.name == "bce" and Y.shape[1] == 1:
        return (to_numpy(Y)[:, 0] > 0.5).astype(np.int64)
    return None
