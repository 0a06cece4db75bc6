"""Metrics: accuracy, precision, recall, f1 (binary, multi-label and multi-class), mse, mae, r2.

A metric computes statistics of a batch on the device (``stats``), merges them across batches (``combine``: a sum
for most) and turns the totals into one number at the end (``result``), so a per-epoch training metric is exact over
the whole epoch, not an average of batch averages. Row and element counts stay Python integers, so a batch copies
nothing to or from the device; the totals are read once per epoch (one device-to-host copy per device array).
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace, device

from .array_utils import one_hot
from .backend import on_device_of, to_numpy


class Metric:
    """Base class. ``direction`` says which way is better, ``"max"`` or ``"min"`` (Keras's ``_direction``): callbacks
    in ``mode="auto"`` follow it, and refuse a metric that does not declare one."""

    name = "metric"
    direction = None

    def stats(self, pred, target) -> tuple:
        """Sums over a batch (0-d or 1-d arrays of pred's namespace; counts as Python ints, which need no copy to
        the device); ``pred`` and ``target`` are ``(n, k)``."""
        raise NotImplementedError

    def combine(self, a: tuple, b: tuple) -> tuple:
        """Merge the statistics of two disjoint sets of rows (arrays stay on the device)."""
        return tuple(x + y for x, y in zip(a, b))

    def result(self, totals: list[np.ndarray]) -> float:
        """The metric from the combined ``stats`` (host arrays, or the Python counts)."""
        raise NotImplementedError

    def __call__(self, pred, target) -> float:
        """The metric of one set of predictions; ``target`` as ``pred``, or ``(n,)`` (class indices for k > 1)."""
        xp = array_namespace(pred)
        with on_device_of(pred):  # CuPy runs kernels on the current GPU: make it pred's
            target = xp.asarray(target, device=device(pred))
            if target.ndim == 1:
                k = pred.shape[1]
                target = one_hot(xp.astype(target, xp.int64), k, pred.dtype) if k > 1 else xp.reshape(target, (-1, 1))
            return self.result([to_numpy(s) for s in self.stats(pred, xp.astype(target, pred.dtype))])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Mean(Metric):
    """The mean of ``values(pred, target)`` over all its elements; stats are ``(sum, count)``: a float64 device sum
    and a Python int."""

    def values(self, pred, target):
        raise NotImplementedError

    def stats(self, pred, target):
        xp = array_namespace(pred)
        v = self.values(pred, target)
        return xp.sum(xp.astype(v, xp.float64)), math.prod(v.shape)

    def result(self, totals):
        return float(totals[0]) / float(totals[1])


class Accuracy(_Mean):
    """Share of correct predictions.

    Multi-class (``binary=False``, ``k > 1``): ``argmax(pred) == argmax(target)``. Binary or multi-label
    (``binary=True`` or ``k == 1``): each element is predicted positive when ``pred > threshold`` (0.5 for
    probabilities, 0 for logits) and compared with ``target > 0.5``.
    """

    name = "accuracy"
    direction = "max"

    def __init__(self, binary: bool | None = None, threshold: float = 0.5):
        self.binary = binary
        self.threshold = threshold

    def values(self, pred, target):
        if self.binary or (self.binary is None and pred.shape[1] == 1):
            return (pred > self.threshold) == (target > 0.5)
        xp = array_namespace(pred)
        return xp.argmax(pred, axis=1) == xp.argmax(target, axis=1)


class MeanSquaredError(_Mean):
    name = "mse"
    direction = "min"

    def values(self, pred, target):
        r = pred - target
        return r * r


class MeanAbsoluteError(_Mean):
    name = "mae"
    direction = "min"

    def values(self, pred, target):
        return array_namespace(pred).abs(pred - target)


class R2(Metric):
    """Coefficient of determination ``1 - SS_res / SS_tot`` per output, averaged over outputs
    (scikit-learn's ``r2_score`` with ``multioutput="uniform_average"``; NaN for fewer than 2 rows).

    ``SS_tot`` is accumulated from centred batch statistics merged by Chan et al.'s formula, so targets far from
    zero (a mean of 1e3 with unit spread, in float32) lose no accuracy to cancellation.
    """

    name = "r2"
    direction = "max"

    def stats(self, pred, target):
        xp = array_namespace(pred)
        r = pred - target
        n = pred.shape[0]  # a Python int: the merge weights n_b / n are computed on the host
        mean = xp.mean(target, axis=0)
        d = target - mean
        return xp.sum(r * r, axis=0), n, mean, xp.sum(d * d, axis=0)

    def combine(self, a, b):
        ss_res_a, n_a, mean_a, m2_a = a
        ss_res_b, n_b, mean_b, m2_b = b
        n = n_a + n_b
        delta = mean_b - mean_a
        return (ss_res_a + ss_res_b, n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n))

    def result(self, totals):
        ss_res, n, _, ss_tot = (np.asarray(t, dtype=np.float64) for t in totals)
        if n < 2:  # scikit-learn: undefined (NaN, with a warning there)
            return float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            # scikit-learn's convention for a constant target: 1 if predicted exactly, else 0
            r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
        return float(np.mean(r2))


class _Classification(Metric):
    """Per-class true positives, false positives and false negatives (float64 device sums), merged across batches,
    for precision, recall and F1 with scikit-learn's definitions.

    Binary or multi-label (``binary=True`` or ``k == 1``): a column is predicted positive where ``pred >
    threshold`` (0.5 for probabilities, 0 for logits) and is positive where ``target > 0.5``; ``k == 1`` is
    ``average="binary"`` (the positive class), several columns ``average="macro"`` over all of them. Multi-class
    (``k > 1``): the class of a row is its argmax, averaged as ``average="macro"`` over the classes present in the
    targets or the predictions. An undefined ratio (no predicted or no true positives) counts 0 (``zero_division=0``).
    """

    direction = "max"

    def __init__(self, binary: bool | None = None, threshold: float = 0.5):
        self.binary = binary
        self.threshold = threshold

    def _columns(self, pred) -> bool:
        """Binary or multi-label: each column on its own (else multi-class, by argmax)."""
        return bool(self.binary or (self.binary is None and pred.shape[1] == 1))

    def stats(self, pred, target):
        xp = array_namespace(pred)
        if self._columns(pred):
            p, t = pred > self.threshold, target > 0.5
        else:
            k = pred.shape[1]
            classes = xp.arange(k, device=device(pred))
            p = xp.argmax(pred, axis=1)[:, None] == classes[None, :]
            t = xp.argmax(target, axis=1)[:, None] == classes[None, :]

        def count(m):
            return xp.sum(xp.astype(m, xp.float64), axis=0)

        # the last entry says how to average: over every column, or over the classes present
        return count(p & t), count(p & ~t), count(~p & t), self._columns(pred)

    def combine(self, a, b):
        return (*(x + y for x, y in zip(a[:3], b[:3])), a[3])

    def result(self, totals):
        tp, fp, fn = (np.asarray(t, dtype=np.float64) for t in totals[:3])
        # multi-class: sklearn's labels are those in the targets or the predictions; columns: every column counts
        present = np.ones(tp.shape, bool) if totals[3] else tp + fp + fn > 0
        if not present.any():
            return 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = np.nan_to_num(self._score(tp, fp, fn), nan=0.0)
        return float(np.mean(scores[present]))

    @staticmethod
    def _score(tp, fp, fn):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(binary={self.binary}, threshold={self.threshold})"


class Precision(_Classification):
    """``tp / (tp + fp)``: of the predicted positives, the share that is right (see :class:`_Classification`)."""

    name = "precision"

    @staticmethod
    def _score(tp, fp, fn):
        return tp / (tp + fp)


class Recall(_Classification):
    """``tp / (tp + fn)``: of the true positives, the share that is found (see :class:`_Classification`)."""

    name = "recall"

    @staticmethod
    def _score(tp, fp, fn):
        return tp / (tp + fn)


class F1(_Classification):
    """``2 tp / (2 tp + fp + fn)``, the harmonic mean of precision and recall (see :class:`_Classification`)."""

    name = "f1"

    @staticmethod
    def _score(tp, fp, fn):
        return 2 * tp / (2 * tp + fp + fn)


METRICS = {"accuracy": Accuracy, "mse": MeanSquaredError, "mae": MeanAbsoluteError, "r2": R2,
           "precision": Precision, "recall": Recall, "f1": F1}
_ALIASES = {"acc": "accuracy", "mean_squared_error": "mse", "mean_absolute_error": "mae", "r2_score": "r2",
            "f1_score": "f1"}


def get(metric, loss=None) -> Metric:
    """A :class:`Metric` from a name or an instance; ``loss`` tunes the classification metrics (bce: element-wise,
    logits: threshold 0)."""
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str):
        raise TypeError(f"metrics must be names or gpunet.metrics.Metric objects; received {metric!r}")
    key = _ALIASES.get(metric.strip().lower(), metric.strip().lower())
    if key not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    if key in ("accuracy", "precision", "recall", "f1") and loss is not None:
        binary = True if loss.name == "bce" else None
        return METRICS[key](binary=binary, threshold=0.0 if loss.from_logits else 0.5)
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
