"""Loss functions with the definitions and reductions of PyTorch (mean over elements, cce: mean over rows).

| gpunet                                      | definition                                              | PyTorch            |
|---------------------------------------------|---------------------------------------------------------|--------------------|
| ``MSE()`` "mse"                             | mean((p - y)^2)                                         | MSELoss            |
| ``MAE()`` "mae"                             | mean(|p - y|); gradient sign(p - y), 0 at 0             | L1Loss             |
| ``Huber(delta=1)`` "huber"                  | 0.5 r^2 if |r| <= delta else delta (|r| - delta / 2)    | HuberLoss(delta)   |
| ``BinaryCrossEntropy()`` "bce"              | -mean(y log p + (1 - y) log(1 - p)), logs clamped -100  | BCELoss            |
| ``BinaryCrossEntropy(from_logits=True)``    | mean(max(z, 0) - z y + log(1 + exp(-|z|)))              | BCEWithLogitsLoss  |
| ``CategoricalCrossEntropy()`` "cce"         | mean over rows of -sum_k y_k log p_k, logs clamped -100 | NLLLoss(log p)     |
| ``CategoricalCrossEntropy(from_logits=True)``| mean over rows of -sum_k y_k log_softmax(z)_k          | CrossEntropyLoss   |

Deliberate differences from PyTorch, all at the edges:

- cce on probabilities clamps ``log p`` at -100 as ``BCELoss`` does (PyTorch's ``NLLLoss(log p)`` returns inf at
  ``p = 0``), and its gradient divides by ``max(p, 1e-12)``, as ``BCELoss``'s does.
- Models ending in softmax + cce or sigmoid + bce use the combined gradient ``(p - y) / n`` with respect to the
  logits. PyTorch's autograd through ``BCELoss`` gives a zero gradient where the sigmoid saturates to exactly 0 or 1;
  the combined form keeps the true gradient there.

Targets: ``(n, k)`` like the predictions; ``(n,)`` for single-output models; for cce also ``(n,)`` class indices.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from . import array_utils, validation
from .backend import to_numpy
from .backend import ops_for
from .backend.reference import xent

_EPS = 9.999999960041972e-13  # BCELoss's floor for its gradient's denominator: float32(1e-12), even for float64


class Loss:
    """Base class: ``loss(pred, target)`` is the scalar loss (0-d array), ``loss.grad(pred, target)`` its gradient.

    ``pred`` has shape ``(n, k)``; see :meth:`prepare_target` for the accepted targets.
    """

    name = "loss"
    from_logits = False

    @property
    def pairs_with(self) -> str | None:
        """The output activation whose derivative cancels against this loss's (softmax for cce, sigmoid for bce)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- public: any target form, checked -------------------------------------------------------------------------
    def __call__(self, pred, target):
        return self.value(*self._checked(pred, target))

    def grad(self, pred, target):
        """Gradient of the loss with respect to ``pred``, shape of ``pred``."""
        return self.gradient(*self._checked(pred, target))

    def _checked(self, pred, target):
        """``(pred, target)`` as floating arrays of one namespace: host data (lists, NumPy) joins pred's namespace,
        and integer or bool predictions become float64."""
        if not _is_array(pred):
            pred = validation.as_array("pred", pred, _HostOnly())
        validation.numeric("pred", pred)
        if pred.ndim != 2:
            raise ValueError(f"pred must be 2-D (n_samples, n_outputs); received shape {tuple(pred.shape)}")
        xp = array_namespace(pred)
        if not xp.isdtype(pred.dtype, "real floating"):
            pred = xp.astype(pred, xp.float64)
        if not _same_namespace(target, xp):
            target = xp.asarray(to_numpy(validation.as_array("target", target, _HostOnly())), device=device_of(pred))
        t = self.prepare_target(target, pred.shape[1], name="target")
        if t.shape[0] != pred.shape[0]:
            raise ValueError(f"target has {t.shape[0]} rows but pred has {pred.shape[0]}")
        return pred, xp.astype(t, pred.dtype)

    # -- targets ---------------------------------------------------------------------------------------------------
    def prepare_target(self, y, n_outputs: int, name: str = "y"):
        """Check ``y`` and return it as an ``(n, n_outputs)`` array of the same namespace (any dtype).

        Accepts ``(n, n_outputs)``, and ``(n,)`` when ``n_outputs == 1``.
        """
        validation.numeric(name, y)
        validation.finite(name, y)
        xp = array_namespace(y)
        if y.ndim == 1 and n_outputs == 1:
            y = xp.reshape(y, (-1, 1))
        if y.ndim != 2 or y.shape[1] != n_outputs:
            raise ValueError(
                f"{name} must have shape (n, {n_outputs}) to match the model's {n_outputs} output(s)"
                + (" or (n,)" if n_outputs == 1 else "") + f"; received shape {tuple(y.shape)}"
            )
        return y

    # -- internal: prepared targets of pred's dtype ---------------------------------------------------------------
    def value(self, pred, target, ops=None):
        """Scalar loss for a prepared target (same shape and dtype as ``pred``); ``ops`` as in
        :meth:`value_and_grad`."""
        raise NotImplementedError

    def gradient(self, pred, target):
        """Gradient with respect to ``pred`` for a prepared target."""
        raise NotImplementedError

    def row_values(self, pred, target, ops=None):
        """The loss of each row, ``(n,)``, for a prepared target: ``value`` is their mean."""
        return array_namespace(pred).mean(self.elementwise(pred, target, ops), axis=1)

    def weighted_value(self, pred, target, w, ops=None):
        """The batch loss with row weights ``w`` ``(n, 1)``, Keras's ``sum(w_i loss_i) / n`` (training's and
        validation's); :meth:`value` when ``w`` is None."""
        if w is None:
            return self.value(pred, target, ops)
        return array_namespace(pred).sum(self.row_values(pred, target, ops) * w[:, 0]) / pred.shape[0]

    def elementwise(self, pred, target, ops=None):
        """The loss of each element, shape of ``pred``, for a prepared target."""
        raise NotImplementedError

    def value_and_grad(self, pred, target, ops=None):
        """``(value, gradient)`` for a prepared target; ``ops`` (default ``ops_for`` pred's namespace) runs the
        steps a backend fuses."""
        return self.value(pred, target), self.gradient(pred, target)

    def value_and_logits_grad(self, prob, target, ops=None):
        """For a model whose output activation is :attr:`pairs_with`: the loss of the probabilities ``prob`` and
        its gradient with respect to the logits, ``(prob - target) / n`` (``n`` as in the mean)."""
        raise NotImplementedError(f"{self!r} has no combined gradient")


class _HostOnly:
    """A stand-in backend that owns nothing, so ``as_array`` only accepts host data."""

    label = name = "host"

    def owns(self, x) -> bool:
        return False


def _is_array(x) -> bool:
    try:
        array_namespace(x)
        return True
    except TypeError:
        return False


def _same_namespace(x, xp) -> bool:
    try:
        return array_namespace(x) is xp
    except TypeError:
        return False


def _size(x) -> int:
    return math.prod(x.shape)


class MSE(Loss):
    """Mean squared error, ``mean((pred - target)^2)`` (``torch.nn.MSELoss``).

    >>> import numpy as np
    >>> float(MSE()(np.array([[1.0], [3.0]]), np.array([0.0, 1.0])))
    2.5
    """

    name = "mse"

    def elementwise(self, pred, target, ops=None):
        r = pred - target
        return r * r

    def value(self, pred, target, ops=None):
        return array_namespace(pred).mean(self.elementwise(pred, target, ops))

    def gradient(self, pred, target):
        return (2.0 / _size(pred)) * (pred - target)


class MAE(Loss):
    """Mean absolute error, ``mean(|pred - target|)`` (``torch.nn.L1Loss``); gradient ``sign(r) / n``, 0 at 0."""

    name = "mae"

    def elementwise(self, pred, target, ops=None):
        return array_namespace(pred).abs(pred - target)

    def value(self, pred, target, ops=None):
        return array_namespace(pred).mean(self.elementwise(pred, target, ops))

    def gradient(self, pred, target):
        return array_namespace(pred).sign(pred - target) / _size(pred)


class Huber(Loss):
    """Huber loss (``torch.nn.HuberLoss(delta)``, not ``SmoothL1Loss``): quadratic within ``delta``, linear beyond.

    Formula: ``0.5 r^2`` if ``|r| <= delta`` else ``delta (|r| - 0.5 delta)``, ``r = pred - target``, mean over all.
    """

    name = "huber"

    def __init__(self, delta: float = 1.0):
        self.delta = validation.positive_number("delta", delta)

    def __repr__(self) -> str:
        return f"Huber(delta={self.delta})"

    def value_and_grad(self, pred, target, ops=None):
        ops = ops or ops_for(array_namespace(pred))
        loss, grad = ops.huber(pred, target, self.delta, 1.0 / _size(pred))
        return ops.xp.mean(loss), grad

    def elementwise(self, pred, target, ops=None):
        return (ops or ops_for(array_namespace(pred))).huber(pred, target, self.delta, 1.0)[0]

    def value(self, pred, target, ops=None):
        return self.value_and_grad(pred, target, ops)[0]

    def gradient(self, pred, target):
        return self.value_and_grad(pred, target)[1]


class _CrossEntropy(Loss):
    """Shared by the two cross-entropies: ``from_logits`` and the output activation they combine with."""

    activation = ""  # the output activation whose Jacobian cancels against the loss's on probabilities

    def __init__(self, from_logits: bool = False):
        if not isinstance(from_logits, bool):
            raise TypeError(f"from_logits must be True or False; received {from_logits!r}")
        self.from_logits = from_logits

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits})"

    @property
    def pairs_with(self):
        return None if self.from_logits else self.activation


class BinaryCrossEntropy(_CrossEntropy):
    """Binary cross-entropy on probabilities (``BCELoss``) or, with ``from_logits=True``, on logits
    (``BCEWithLogitsLoss``, stable for any logit). Targets in ``[0, 1]``, mean over all elements."""

    name = "bce"
    activation = "sigmoid"

    def prepare_target(self, y, n_outputs, name="y"):
        y = super().prepare_target(y, n_outputs, name)
        xp = array_namespace(y)
        if not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError(f"{name} for binary cross-entropy must lie in [0, 1]; found values outside it")
        return y

    def value_and_grad(self, pred, target, ops=None):
        if not self.from_logits:
            return super().value_and_grad(pred, target)
        ops = ops or ops_for(array_namespace(pred))
        loss, grad = ops.bce_logits(pred, target, 1.0 / _size(pred))
        return ops.xp.mean(loss), grad

    def elementwise(self, pred, target, ops=None):
        if self.from_logits:
            return (ops or ops_for(array_namespace(pred))).bce_logits(pred, target, 1.0)[0]
        return xent(pred, target, binary=True)

    def value(self, pred, target, ops=None):
        return array_namespace(pred).mean(self.elementwise(pred, target, ops))

    def gradient(self, pred, target):
        if self.from_logits:
            return self.value_and_grad(pred, target)[1]
        xp = array_namespace(pred)
        return (pred - target) / (xp.maximum(pred * (1 - pred), _EPS) * _size(pred))

    def value_and_logits_grad(self, prob, target, ops=None):
        ops = ops or ops_for(array_namespace(prob))
        loss, grad = ops.xent_combined(prob, target, 1.0 / _size(prob), binary=True)
        return ops.xp.mean(loss), grad


class CategoricalCrossEntropy(_CrossEntropy):
    """Categorical cross-entropy on softmax probabilities, or with ``from_logits=True`` on logits
    (``CrossEntropyLoss``, by log-sum-exp). Targets: class indices ``(n,)`` or probability rows ``(n, k)``.

    Formula: ``mean over rows of -sum_k y_k log p_k``.
    """

    name = "cce"
    activation = "softmax"

    def prepare_target(self, y, n_outputs, name="y"):
        validation.numeric(name, y)
        validation.finite(name, y)
        xp = array_namespace(y)
        if y.ndim == 1:
            labels = xp.astype(y, xp.int64) if xp.isdtype(y.dtype, "bool") else y
            if not xp.isdtype(labels.dtype, "integral"):
                if not bool(xp.all(labels == xp.round(labels))):
                    raise ValueError(f"{name} holds class indices, which must be whole numbers; found fractions")
            low, high = int(xp.min(labels)), int(xp.max(labels))
            if low < 0 or high >= n_outputs:
                bad = low if low < 0 else high
                raise ValueError(
                    f"{name} holds class indices, which must be in [0, {n_outputs - 1}] for a model with "
                    f"{n_outputs} outputs; found {bad}"
                )
            return array_utils.one_hot(xp.astype(labels, xp.int64), n_outputs, xp.float64)
        if y.ndim != 2 or y.shape[1] != n_outputs:
            raise ValueError(
                f"{name} for categorical cross-entropy must be class indices (n,) or one-hot/probability rows "
                f"(n, {n_outputs}); received shape {tuple(y.shape)}"
            )
        if not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError(f"{name} rows must be probabilities in [0, 1]; found values outside it")
        row_sums = xp.sum(xp.astype(y, xp.float64), axis=1)
        if not bool(xp.all(xp.abs(row_sums - 1) <= 1e-4)):
            raise ValueError(f"{name} rows must sum to 1 (one-hot or probabilities); found a row summing to "
                             f"{float(row_sums[int(xp.argmax(xp.abs(row_sums - 1)))])}")
        return y

    def elementwise(self, pred, target, ops=None):
        xp = array_namespace(pred)
        if not self.from_logits:
            return xent(pred, target, binary=False)
        # a log-probability of -inf (logits ~1e38 apart in float32) costs nothing where the target is 0
        logp = array_utils.log_softmax(pred, axis=-1)
        return -(target * xp.where(target == 0, xp.zeros_like(logp), logp))

    def row_values(self, pred, target, ops=None):
        return array_namespace(pred).sum(self.elementwise(pred, target, ops), axis=1)

    def value(self, pred, target, ops=None):
        return array_namespace(pred).sum(self.elementwise(pred, target, ops)) / pred.shape[0]

    def gradient(self, pred, target):
        xp = array_namespace(pred)
        n = pred.shape[0]
        if self.from_logits:
            total = xp.sum(target, axis=-1, keepdims=True)
            return (array_utils.softmax(pred, axis=-1) * total - target) / n
        return -target / (xp.maximum(pred, _EPS) * n)

    def value_and_logits_grad(self, prob, target, ops=None):
        ops = ops or ops_for(array_namespace(prob))
        loss, grad = ops.xent_combined(prob, target, 1.0 / prob.shape[0], binary=False)
        return ops.xp.sum(loss) / prob.shape[0], grad


LOSSES = {"mse": MSE, "mae": MAE, "huber": Huber, "bce": BinaryCrossEntropy, "cce": CategoricalCrossEntropy}
_ALIASES = {
    "mean_squared_error": "mse", "l2": "mse",
    "mean_absolute_error": "mae", "l1": "mae",
    "binary_crossentropy": "bce", "binary_cross_entropy": "bce",
    "categorical_crossentropy": "cce", "categorical_cross_entropy": "cce", "cross_entropy": "cce",
    "sparse_categorical_crossentropy": "cce",
}


def get(loss) -> Loss:
    """A :class:`Loss` from a name (``"mse"``, ``"mae"``, ``"huber"``, ``"bce"``, ``"cce"``) or an instance.

    >>> get("huber")
    Huber(delta=1.0)
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    if isinstance(loss, str):
        key = loss.strip().lower()
        key = _ALIASES.get(key, key)
        if key in LOSSES:
            return LOSSES[key]()
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} or a gpunet.losses.Loss")
    raise TypeError(f"loss must be a name or a gpunet.losses.Loss; received {type(loss).__name__}: {loss!r}")


def mse(pred, target):
    """Functional :class:`MSE`."""
    return MSE()(pred, target)


def mae(pred, target):
    """Functional :class:`MAE`."""
    return MAE()(pred, target)


def huber(pred, target, delta: float = 1.0):
    """Functional :class:`Huber`."""
    return Huber(delta)(pred, target)


def binary_cross_entropy(pred, target, from_logits: bool = False):
    """Functional :class:`BinaryCrossEntropy`."""
    return BinaryCrossEntropy(from_logits)(pred, target)


def categorical_cross_entropy(pred, target, from_logits: bool = False):
    """Functional :class:`CategoricalCrossEntropy`."""
    return CategoricalCrossEntropy(from_logits)(pred, target)
