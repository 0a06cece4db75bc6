"""The reference implementation of the steps a backend may specialise: :class:`Ops`.

:class:`Ops` is written only with Array API functions; it is what runs on array-api-strict, PyTorch tensors and any
other conforming namespace, and the oracle that tests hold every specialisation to (:class:`~.numpy_ops.NumpyOps`,
:class:`~.cuda_ops.CupyOps`).

Parameter updates are in place (``p -= ...``): parameters keep their identity across steps, so optimizer state and
user references stay valid. Namespaces with immutable arrays (JAX) are therefore not supported.
"""

from __future__ import annotations

import math

import array_api_compat
from array_api_compat import array_namespace

from .. import array_utils


def clamped_log(p):
    """``max(log p, -100)`` (``BCELoss``'s clamp) with no ``log(0)`` evaluated: -100 at ``p = 0``; NaN for a NaN or
    negative ``p``, as torch's ``clamp(log p, min=-100)``."""
    xp = array_namespace(p)
    zero = p == 0
    return xp.where(zero, -100.0, xp.maximum(xp.log(xp.where(zero, 1.0, p)), -100.0))


def xent(p, target, binary: bool):
    """Cross-entropy of probabilities ``p`` per element, logs clamped at -100 (:func:`clamped_log`): binary
    ``-(t log p + (1 - t) log(1 - p))`` (``BCELoss``), or ``-t log p`` (cce; the caller sums a row)."""
    if binary:
        return -(target * clamped_log(p) + (1 - target) * clamped_log(1 - p))
    return -(target * clamped_log(p))


class Ops:
    """Reference implementation of the fusable steps for one Array API namespace ``xp``."""

    # True when layers should hand ``out=`` arrays from the trainer's workspaces to matmul/dense/sum_rows/dropout;
    # every method also takes the workspace itself (``ws``) where it needs scratch, and ignores it here
    reuses_buffers = False
    # True when the optimizer updates read the learning rate and step count from device scalars (``dev``), so that
    # a captured step sees the values of each replay (CupyOps)
    device_scalars = False

    def __init__(self, xp):
        self.xp = xp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.xp.__name__})"

    # -- layers ---------------------------------------------------------------------------------------------------
    def matmul(self, a, b, out=None):
        """``a @ b``; specialisations write into ``out`` when given."""
        return a @ b

    def sum_rows(self, a, out=None, ws=None):
        """``sum(a, axis=0)``; specialisations write into ``out`` when given."""
        return self.xp.sum(a, axis=0)

    def bias_act(self, z, b, activation, ws=None):
        """``y = activation(z + b)`` for ``z`` of shape ``(n, out)`` (owned by the caller, may be overwritten).

        Returns ``(z_saved, y)``: ``z_saved`` is the pre-activation when ``activation.uses_input`` (backward
        needs it), else ``None``.
        """
        z = z + b
        return (z if activation.uses_input else None), activation.forward(z)

    def dense(self, x, W, b, activation, out=None, ws=None):
        """A dense layer's forward: ``activation(x @ W + b)`` for ``x`` ``(n, in)``, ``W`` ``(in, out)``, ``b``
        ``(out,)``; returns ``(z_saved, y)`` as :meth:`bias_act` does. ``out`` ``(n, out)``, when given, receives
        the pre-activation (and may be ``y`` itself); ``ws``: the step's workspace (for ``y`` where it is kept
        apart), or None."""
        return self.bias_act(self.matmul(x, W, out), b, activation)

    def dropout_mask(self, rng, p: float, shape: tuple, like, out=None):
        """Inverted-dropout noise of ``shape``, with ``like``'s dtype and device: 0 with probability ``p``, ``1 / (1 - p)`` elsewhere
        (``torch.nn.functional.dropout``: ``bernoulli(1 - p) / (1 - p)``). ``rng.random(shape, dtype=...)`` draws
        the uniforms (see :meth:`gpunet.backend.Backend.random_generator`); an element is kept where its uniform is
        ``>= p``. Specialisations draw into ``out``."""
        xp = self.xp
        name = "float32" if like.dtype == xp.float32 else "float64"
        u = xp.asarray(rng.random(tuple(shape), dtype=name), device=array_api_compat.device(like))
        return xp.astype(u >= p, like.dtype) / (1 - p)

    def dropout(self, y, mask, out=None):
        """``y * mask`` (into ``out`` in specialisations)."""
        return y * mask

    def act_grad(self, activation, dy, z, y, ws=None):
        """``dz = dy * f'(z)`` (softmax: the row Jacobian-vector product); ``z`` is ``None`` unless ``uses_input``.

        May overwrite ``dy`` (layers pass arrays they own); ``ws``: the step's workspace for scratch, if any.
        """
        return activation.backward(dy, z, y)

    def cast_into(self, src, dst) -> None:
        """``dst[...] = src`` converted to ``dst``'s dtype (round to nearest even): low-precision copies."""
        dst[...] = self.xp.astype(src, dst.dtype)

    # -- the step's loss and bookkeeping ---------------------------------------------------------------------------
    def loss_and_grad(self, loss, pred, target, combined: bool, ws=None):
        """``(batch loss (0-d), dL/dpred)`` of ``loss``; ``combined``: the combined softmax/sigmoid + cross-entropy
        gradient with respect to the logits. Specialisations write into ``ws`` (the step's workspace)."""
        if combined:
            return loss.value_and_logits_grad(pred, target, self)
        return loss.value_and_grad(pred, target, self)

    def record(self, losses, counter, value, b: int) -> None:
        """The batch loss ``value`` into ``losses[b]`` (specialisations: at the device counter ``counter``, which
        they advance; here ``b``, the host's count, is the same number)."""
        losses[b] = value

    # -- losses: elementwise loss and the gradient of the mean, in one pass --------------------------------------
    def huber(self, pred, target, delta: float, scale: float):
        """Huber loss per element and ``scale`` times its derivative in ``pred``; ``r = pred - target``.

        ``l = 0.5 r^2``, ``dl = r`` where ``|r| <= delta``; ``l = delta (|r| - 0.5 delta)``, ``dl = delta sign(r)``
        elsewhere.
        """
        xp = self.xp
        r = pred - target
        a = xp.abs(r)
        # q = min(|r|, delta): 0.5 q^2 + q (|r| - q) is both branches at once, and squares nothing beyond delta
        q = xp.minimum(a, delta)
        loss = 0.5 * q * q + q * (a - q)
        grad = scale * xp.clip(r, -delta, delta)
        return loss, grad

    def bce_logits(self, z, target, scale: float):
        """Binary cross-entropy of logits ``z`` per element, ``max(z, 0) - z t + log1p(exp(-|z|))``, and
        ``scale (sigmoid(z) - t)``."""
        xp = self.xp
        loss = xp.maximum(z, 0) - z * target + xp.log1p(xp.exp(-xp.abs(z)))
        return loss, scale * (array_utils.sigmoid(z) - target)

    def xent_combined(self, p, target, scale: float, binary: bool):
        """Cross-entropy of probabilities ``p`` per element (:func:`xent`) and the combined gradient with respect to
        the logits, ``scale (p - t)``: sigmoid + bce (``binary``) or softmax + cce."""
        return xent(p, target, binary), scale * (p - target)

    # -- optimizers (torch.optim update rules, in place on p and the state; ws: scratch of the parameters' shapes) --
    def sgd_update(self, p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, ws=None, dev=None,
                   low=None):
        """One ``torch.optim.SGD`` step on ``p``; returns the momentum buffer (``None`` without momentum).

        ``dev``: the optimizer's device scalars (:class:`gpunet.optim.DeviceScalars`), which specialisations that
        declare ``device_scalars`` read instead of ``lr``/``step`` (a captured step); ignored here. ``low``: a
        low-precision copy of ``p`` written after the update (mixed precision), or None.

        ``g += wd p``; ``buf = g`` on the first step, else ``buf = momentum buf + (1 - dampening) g``;
        the step direction is ``g + momentum buf`` (Nesterov) or ``buf``; ``p -= lr direction``.
        """
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            if buf is None:
                buf = self.xp.asarray(g, copy=True)
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g
        if low is not None:
            self.cast_into(p, low)
        return buf

    def adam_update(self, p, g, m, v, vmax, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, ws=None,
                    dev=None, low=None):
        """One ``torch.optim.Adam`` (``decoupled=False``) or ``AdamW`` (``decoupled=True``) step, in place.

        ``m``/``v`` are the first and second moment estimates, ``vmax`` the running maximum of ``v`` for AMSGrad
        (``None`` without it); ``step`` counts from 1. ``dev``, ``low``: as in :meth:`sgd_update`.
        """
        if weight_decay:
            if decoupled:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        if vmax is not None:
            vmax[...] = self.xp.maximum(vmax, v)
            v = vmax
        step_size = lr / (1 - beta1**step)
        denom = self.xp.sqrt(v) / math.sqrt(1 - beta2**step) + eps
        p -= step_size * (m / denom)
        if low is not None:
            self.cast_into(p, low)

    def rmsprop_update(self, p, g, square_avg, grad_avg, buf, *, lr, alpha, eps, momentum, weight_decay, ws=None):
        """One ``torch.optim.RMSprop`` step, in place; ``grad_avg`` is ``None`` unless centered, ``buf`` unless
        momentum > 0."""
        xp = self.xp
        if weight_decay:
            g = g + weight_decay * p
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if grad_avg is not None:
            grad_avg += (1 - alpha) * (g - grad_avg)
            avg = xp.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = xp.sqrt(square_avg) + eps
        if buf is not None:
            buf *= momentum
            buf += g / avg
            p -= lr * buf
        else:
            p -= lr * (g / avg)

    def adagrad_update(self, p, g, state_sum, *, step, lr, lr_decay, eps, weight_decay, ws=None):
        """One ``torch.optim.Adagrad`` step, in place."""
        if weight_decay:
            g = g + weight_decay * p
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum += g * g
        p -= clr * (g / (self.xp.sqrt(state_sum) + eps))
