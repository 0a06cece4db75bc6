"""Metrics: accuracy (binary and multi-class), mse, mae, r2.

A metric accumulates sums over batches on the device (``stats``) and turns the totals into one number at the end
(``result``), so a per-epoch training metric is exact over the whole epoch, not an average of batch averages, and
costs one device-to-host copy per epoch.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, device

from .array_utils import one_hot
from .backend import to_numpy


class Metric:
    name = "metric"

    def stats(self, pred, target) -> tuple:
        """Sums over a batch (0-d or 1-d arrays of pred's namespace); ``pred`` and ``target`` are ``(n, k)``."""
        raise NotImplementedError

    def result(self, totals: list[np.ndarray]) -> float:
        """The metric from the summed ``stats`` (host arrays)."""
        raise NotImplementedError

    def __call__(self, pred, target) -> float:
        """The metric of one set of predictions; ``target`` as ``pred``, or ``(n,)`` (class indices for k > 1)."""
        xp = array_namespace(pred)
        target = xp.asarray(target, device=device(pred))
        if target.ndim == 1:
            k = pred.shape[1]
            target = one_hot(xp.astype(target, xp.int64), k, pred.dtype) if k > 1 else xp.reshape(target, (-1, 1))
        return self.result([to_numpy(s) for s in self.stats(pred, xp.astype(target, pred.dtype))])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """Share of correct predictions.

    Multi-class (``binary=False``, ``k > 1``): ``argmax(pred) == argmax(target)``. Binary or multi-label
    (``binary=True`` or ``k == 1``): each element is predicted positive when ``pred > threshold`` (0.5 for
    probabilities, 0 for logits) and compared with ``target > 0.5``.
    """

    name = "accuracy"

    def __init__(self, binary: bool | None = None, threshold: float = 0.5):
        self.binary = binary
        self.threshold = threshold

    def stats(self, pred, target):
        xp = array_namespace(pred)
        if self.binary or (self.binary is None and pred.shape[1] == 1):
            correct = (pred > self.threshold) == (target > 0.5)
        else:
            correct = xp.argmax(pred, axis=1) == xp.argmax(target, axis=1)
        return xp.sum(xp.astype(correct, pred.dtype)), xp.asarray(float(correct.shape[0] * (
            correct.shape[1] if correct.ndim == 2 else 1)), dtype=pred.dtype)

    def result(self, totals):
        return float(totals[0]) / float(totals[1])


class MeanSquaredError(Metric):
    name = "mse"

    def stats(self, pred, target):
        xp = array_namespace(pred)
        r = pred - target
        return xp.sum(r * r), xp.asarray(float(r.shape[0] * r.shape[1]), dtype=pred.dtype)

    def result(self, totals):
        return float(totals[0]) / float(totals[1])


class MeanAbsoluteError(Metric):
    name = "mae"

    def stats(self, pred, target):
        xp = array_namespace(pred)
        return xp.sum(xp.abs(pred - target)), xp.asarray(float(pred.shape[0] * pred.shape[1]), dtype=pred.dtype)

    def result(self, totals):
        return float(totals[0]) / float(totals[1])


class R2(Metric):
    """Coefficient of determination ``1 - SS_res / SS_tot`` per output, averaged over outputs
    (scikit-learn's ``r2_score`` with ``multioutput="uniform_average"``)."""

    name = "r2"

    def stats(self, pred, target):
        xp = array_namespace(pred)
        r = pred - target
        n = xp.asarray(float(pred.shape[0]), dtype=pred.dtype)
        return xp.sum(r * r, axis=0), xp.sum(target, axis=0), xp.sum(target * target, axis=0), n

    def result(self, totals):
        ss_res, sum_y, sum_y2, n = (np.asarray(t, dtype=np.float64) for t in totals)
        ss_tot = sum_y2 - sum_y * sum_y / n
        with np.errstate(divide="ignore", invalid="ignore"):
            # scikit-learn's convention for a constant target: 1 if predicted exactly, else 0
            r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
        return float(np.mean(r2))


METRICS = {"accuracy": Accuracy, "mse": MeanSquaredError, "mae": MeanAbsoluteError, "r2": R2}
_ALIASES = {"acc": "accuracy", "mean_squared_error": "mse", "mean_absolute_error": "mae", "r2_score": "r2"}


def get(metric, loss=None) -> Metric:
    """A :class:`Metric` from a name or an instance; ``loss`` tunes accuracy (bce: element-wise, logits: 0)."""
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str):
        raise TypeError(f"metrics must be names or gpunet.metrics.Metric objects; received {metric!r}")
    key = _ALIASES.get(metric.strip().lower(), metric.strip().lower())
    if key not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    if key == "accuracy" and loss is not None:
        binary = True if loss.name == "bce" else None
        return Accuracy(binary=binary, threshold=0.0 if loss.from_logits else 0.5)
    return METRICS[key]()


def accuracy(pred, target) -> float:
    """Share of correct predictions; see :class:`Accuracy`. ``target`` as ``pred``'s shape.

    >>> import numpy as np
    >>> accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    0.5
    """
    return Accuracy()(pred, target)


def mse(pred, target) -> float:
    return MeanSquaredError()(pred, target)


def mae(pred, target) -> float:
    return MeanAbsoluteError()(pred, target)


def r2(pred, target) -> float:
    return R2()(pred, target)
