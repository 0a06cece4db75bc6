"""NumPy specialisation of the reference ops: in-place ``out=`` arithmetic, reused workspaces, NumPy's own BLAS."""

from __future__ import annotations

import math

import numpy as np

from .. import activations  # the module (imported while gpunet.activations itself loads): read at call time
from . import blas
from .reference import Ops

class NumpyOps(Ops):
    """NumPy specialisation: the same results as :class:`Ops` up to rounding, with in-place ``out=`` arithmetic into
    the trainer's workspaces (see :mod:`gpunet.backend.workspaces`): a steady-state step of a relu/tanh/linear/
    softmax network allocates nothing layer-sized (``tests/test_memory.py``); the other activations run the
    reference formulas, which allocate their temporaries. Without a workspace (``ws=None``: public calls) every
    result is a new array. The object holds no arrays: one serves every model, in any thread."""

    reuses_buffers = True

    def sum_rows(self, a, out=None, ws=None):
        if a.shape[0] < 64:
            return np.sum(a, axis=0, out=out)
        # ones @ a: a BLAS matrix-vector product on all threads (np.sum: one)
        ones = np.ones(a.shape[0], a.dtype) if ws is None else ws.array("ones", (a.shape[0],), a.dtype, fill=1)
        return np.matmul(ones, a, out=out)

    def matmul(self, a, b, out=None):
        if a.shape[1] == 1:  # an outer product (dW at batch 1): BLAS gemm with k = 1 is ~10x slower than this
            return np.multiply(a, b, out=out)
        return np.matmul(a, b, out=out)

    def dense(self, x, W, b, activation, out=None, ws=None):
        if out is None:
            out = np.empty((x.shape[0], W.shape[1]), dtype=np.result_type(x, W))
        gemm = blas.matrix_blas(x, W, out)
        if gemm is None:
            return self.bias_act(self.matmul(x, W, out), b, activation)
        np.copyto(out, b)  # z starts as the bias rows: the threaded gemm adds x @ W (beta = 1), no pass of its own
        gemm.gemm(x, W, out)
        return self._activate(out, activation)

    def bias_act(self, z, b, activation, ws=None):
        np.add(z, b, out=z)
        return self._activate(z, activation)

    def _activate(self, z, activation):
        """``(z_saved, y)`` for the pre-activation ``z``, in place where the activation allows."""
        kernel = activations.builtin_kernel(activation)
        if activation.uses_input or kernel is None:
            return (z if activation.uses_input else None), activation.forward(z)
        if kernel == "relu":
            return None, np.maximum(z, 0, out=z)
        if kernel == "tanh":
            return None, np.tanh(z, out=z)
        if kernel == "linear":
            return None, z
        if kernel == "softmax" and z.ndim == 2:  # in place, shifted by the row maximum so exp never overflows
            with np.errstate(over="ignore"):  # -huge - (+huge) is -inf, whose exp is the 0 it should be
                np.subtract(z, z.max(axis=1, keepdims=True), out=z)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            return None, z
        return None, activation.forward(z)

    def dropout_mask(self, rng, p, shape, like, out=None):
        mask = np.empty(shape, like.dtype) if out is None else out
        rng.random(dtype=mask.dtype, out=mask)  # uniforms in [0, 1) of the dtype, then the noise in place
        np.greater_equal(mask, p, out=mask)
        return np.divide(mask, 1 - p, out=mask)

    def dropout(self, y, mask, out=None):
        return np.multiply(y, mask, out=out)

    def act_grad(self, activation, dy, z, y, ws=None):
        kernel = activations.builtin_kernel(activation)
        if kernel == "relu":
            return self._relu_grad(dy, y, ws)
        if kernel == "linear":
            return dy
        if kernel in ("tanh", "sigmoid"):
            t = _scratch(ws, y)
            if kernel == "tanh":  # 1 - y^2
                np.multiply(y, y, out=t)
                np.subtract(1, t, out=t)
            else:  # y (1 - y)
                np.subtract(1, y, out=t)
                t *= y
            return np.multiply(dy, t, out=dy)
        return activation.backward(dy, z, y)

    def xent_combined(self, p, target, scale: float, binary: bool):
        if binary:
            loss = np.multiply(target, _clamped_log(p))
            loss += (1 - target) * _clamped_log(1 - p)
        else:
            loss = np.multiply(target, _clamped_log(p))
        np.negative(loss, out=loss)
        grad = np.subtract(p, target)
        grad *= scale
        return loss, grad

    def _relu_grad(self, dy, y, ws):
        """0 where ``y <= 0``, else ``dy`` (an infinite ``dy`` gives 0, not ``inf * 0 = NaN``), in place: ``dy``'s
        bits AND an all-zeros/all-ones mask. Branch-free, so 10x faster than ``np.copyto(dy, 0, where=...)`` on
        random signs. A NaN in ``y`` or ``dy`` makes their dot product NaN (one BLAS pass over both; an infinite
        ``dy`` can make it NaN too, which only costs time): then the reference's ``where`` runs, which keeps NaN."""
        if np.isnan(np.vdot(y, dy)):
            np.copyto(dy, np.where(y > 0, dy, np.where(y <= 0, np.minimum(np.abs(dy), 0), y)))
            return dy
        ints = np.dtype(f"i{dy.itemsize}")
        mask = _scratch(ws, y, dtype=ints)
        np.less_equal(y, 0, out=mask, casting="unsafe")  # 1 or 0
        np.subtract(mask, 1, out=mask)  # 0 or -1 (all bits set)
        bits = dy.view(ints)
        np.bitwise_and(bits, mask, out=bits)
        return dy

    def _decayed(self, p, g, weight_decay, ws):
        """``g + weight_decay p`` in a scratch array (the gradient itself stays as backward left it)."""
        if not weight_decay:
            return g
        out = np.multiply(p, weight_decay, out=_scratch(ws, p, 1))
        return np.add(out, g, out=out)

    def cast_into(self, src, dst) -> None:
        np.copyto(dst, src, casting="unsafe")

    def sgd_update(self, p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, ws=None, dev=None,
                   low=None):
        buf = self._sgd(p, g, buf, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, ws=ws)
        if low is not None:
            self.cast_into(p, low)
        return buf

    def _sgd(self, p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, ws=None):
        new_buffer = momentum and buf is None
        if new_buffer:
            buf = np.empty_like(p)
        # dampening 1 would be axpy with a = 0, which BLAS skips: an inf/NaN in g would not reach buf as in torch
        vector = blas.vector_blas(p, g, buf) if dampening != 1 and p.size >= blas.MIN_SIZE else None
        if vector:  # on the threads of NumPy's BLAS (3 passes with momentum, as the 4 ufunc passes on one core)
            g = self._decayed(p, g, weight_decay, ws)
            if new_buffer:
                np.copyto(buf, g)
            elif momentum:
                vector.scal(momentum, buf)
                vector.axpy(1 - dampening, g, buf)
            if not momentum or nesterov:
                vector.axpy(-lr, g, p)
            if momentum:
                vector.axpy(-lr * momentum if nesterov else -lr, buf, p)
            return buf
        for blocks in _blocks(p, g, buf) if p.size >= blas.MIN_SIZE else [(p, g, buf)]:
            self._sgd_block(*blocks, new_buffer, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                            weight_decay=weight_decay, ws=ws)
        return buf

    def _sgd_block(self, p, g, buf, new_buffer, *, lr, momentum, dampening, nesterov, weight_decay, ws):
        g = self._decayed(p, g, weight_decay, ws)
        direction = g
        if momentum:
            if new_buffer:
                np.copyto(buf, g)
            else:
                buf *= momentum
                if dampening:
                    buf += np.multiply(g, 1 - dampening, out=_scratch(ws, p))
                else:
                    buf += g
            direction = buf
            if nesterov:
                direction = np.multiply(buf, momentum, out=_scratch(ws, p))
                direction += g
        p -= np.multiply(direction, lr, out=_scratch(ws, p))

    def adam_update(self, p, g, m, v, vmax, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, ws=None,
                    dev=None, low=None):
        self._adam(p, g, m, v, vmax, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                   decoupled=decoupled, ws=ws)
        if low is not None:
            self.cast_into(p, low)

    def _adam(self, p, g, m, v, vmax, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, ws=None):
        vector = blas.vector_blas(p, g, m, v, vmax)
        if vector:  # 9 passes instead of 13, the scaled adds on the BLAS threads
            if weight_decay and decoupled:
                vector.scal(1 - lr * weight_decay, p)
            elif weight_decay:
                g = self._decayed(p, g, weight_decay, ws)
            s = _scratch(ws, p)
            vector.scal(beta1, m)  # m = b1 m + (1 - b1) g
            vector.axpy(1 - beta1, g, m)
            np.multiply(g, g, out=s)  # v = b2 v + (1 - b2) g^2
            vector.scal(beta2, v)
            vector.axpy(1 - beta2, s, v)
            if vmax is not None:
                np.maximum(vmax, v, out=vmax)
                v = vmax
            bc2 = math.sqrt(1 - beta2**step)  # m / (sqrt(v) / bc2 + eps) = bc2 m / (sqrt(v) + bc2 eps)
            np.sqrt(v, out=s)
            s += bc2 * eps
            np.divide(m, s, out=s)
            vector.axpy(-lr / (1 - beta1**step) * bc2, s, p)
            return
        for blocks in _blocks(p, g, m, v, vmax):
            self._adam_block(*blocks, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                             weight_decay=weight_decay, decoupled=decoupled, ws=ws)

    def _adam_block(self, p, g, m, v, vmax, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, ws):
        if weight_decay and decoupled:
            p *= 1 - lr * weight_decay
        elif weight_decay:
            g = self._decayed(p, g, weight_decay, ws)
        s = _scratch(ws, p)
        np.subtract(g, m, out=s)
        s *= 1 - beta1
        m += s
        v *= beta2
        np.multiply(g, g, out=s)
        s *= 1 - beta2
        v += s
        if vmax is not None:
            np.maximum(vmax, v, out=vmax)
            v = vmax
        np.sqrt(v, out=s)
        s /= math.sqrt(1 - beta2**step)
        s += eps
        np.divide(m, s, out=s)
        s *= lr / (1 - beta1**step)
        p -= s


# NumPy's optimizer updates make several passes over every array (SGD with momentum 4, Adam 11): run them block by
# block, so that a block of each array stays in the core's L2 cache between passes and the arrays cross the memory
# bus about once per step instead of once per pass. 128 KiB per array keeps Adam's 7 arrays within a 1 MiB L2.
UPDATE_BLOCK_BYTES = 128 * 1024


def _blocks(p, *arrays):
    """Aligned 1-D views ``(p[i:j], a[i:j], ...)`` of ``p`` and equal-size ``arrays`` (``None`` entries stay None),
    block by block; ``[(p, *arrays)]`` whole when they are small or not all C-contiguous."""
    step = UPDATE_BLOCK_BYTES // p.itemsize
    whole = (p, *arrays)
    if p.size < 2 * step or not all(a is None or a.flags.c_contiguous for a in whole):
        return [whole]
    flat = [None if a is None else a.reshape(-1) for a in whole]
    return [tuple(None if a is None else a[i:i + step] for a in flat) for i in range(0, p.size, step)]


def _scratch(ws, like, slot: int = 0, dtype=None):
    """A scratch array shaped like ``like`` (of ``dtype``, default ``like``'s): from the workspace ``ws``, reused from
    step to step, or a new one without a workspace."""
    if ws is None:
        return np.empty_like(like, dtype=dtype)
    return ws.array(("scratch", slot), like.shape, like.dtype if dtype is None else dtype)


def _clamped_log(p):
    """:func:`~.reference.clamped_log` for NumPy arrays in two passes: ``maximum`` clamps ``log(0) = -inf`` to -100
    and keeps the NaN of ``log`` (a NaN or negative ``p``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(p)
    return np.maximum(out, -100.0, out=out)
