"""Numerically stable helpers the Array API standard does not have: softmax, log-sum-exp, sigmoid, one-hot.

Every function takes and returns arrays of any conforming namespace and never overflows: exponentials are only
taken of non-positive numbers. The one overflow left is intended: ``z - max(z)`` of logits ~1e38 apart in float32
is -inf (a probability of exactly 0), so NumPy's overflow warning is silenced there.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, device

from .backend.devices import on_device_of


def sigmoid(z):
    """``1 / (1 + exp(-z))``, computed as ``exp(-|z|)``-based halves so no ``exp`` overflows.

    >>> import numpy as np
    >>> sigmoid(np.array([-1e4, 0.0, 1e4])).tolist()
    [0.0, 0.5, 1.0]
    """
    xp = array_namespace(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def log_sigmoid(z):
    """``log(sigmoid(z)) = min(z, 0) - log1p(exp(-|z|))``, finite for every finite ``z``."""
    xp = array_namespace(z)
    return xp.minimum(z, 0) - xp.log1p(xp.exp(-xp.abs(z)))


def softplus(z, threshold: float = 20.0):
    """``log(1 + exp(z))``; returns ``z`` itself above ``threshold``, as ``torch.nn.functional.softplus`` does."""
    xp = array_namespace(z)
    stable = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
    return xp.where(z > threshold, z, stable)


def logsumexp(z, axis: int = -1, keepdims: bool = False):
    """``log(sum(exp(z), axis))`` with the row maximum taken out first."""
    xp = array_namespace(z)
    m = xp.max(z, axis=axis, keepdims=True)
    out = m + xp.log(xp.sum(xp.exp(z - m), axis=axis, keepdims=True))
    return out if keepdims else xp.squeeze(out, axis=axis)


def log_softmax(z, axis: int = -1):
    """``(z - max) - log(sum(exp(z - max)))`` along ``axis`` (PyTorch's order: exact for the largest entry)."""
    xp = array_namespace(z)
    with np.errstate(over="ignore"):
        shifted = z - xp.max(z, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def softmax(z, axis: int = -1):
    """``exp(z) / sum(exp(z))`` along ``axis``, shifted by the row maximum so it never overflows.

    >>> import numpy as np
    >>> softmax(np.array([[1000.0, 1000.0]])).tolist()
    [[0.5, 0.5]]
    """
    xp = array_namespace(z)
    with np.errstate(over="ignore"):
        e = xp.exp(z - xp.max(z, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def one_hot(labels, num_classes: int, dtype):
    """``(n,)`` integer class indices -> ``(n, num_classes)`` one-hot rows of ``dtype``, on ``labels``' device."""
    xp = array_namespace(labels)
    with on_device_of(labels):  # CuPy's arange ignores device=
        classes = xp.arange(num_classes, dtype=labels.dtype, device=device(labels))
        return xp.astype(labels[:, None] == classes[None, :], dtype)
