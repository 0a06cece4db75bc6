"""CuPy ops: the fusable steps as ``cupy.ElementwiseKernel`` one-liners over the sources in ``kernels/``.

Each kernel's operation is one call of a template function from ``kernels/*.cuh`` (given as the preamble), so the
CUDA math lives in one place that the host compiler also builds for tests. Kernels are declared once per ops object
(one per namespace per process, see :func:`gpunet.backend.ops_for`) and compiled by CuPy on first use per dtype and
device; CuPy caches the binaries on disk, so later processes start fast. Steps with no kernel here (softmax, which
couples a row; custom activations and subclasses that override a built-in's math; RMSprop, Adagrad) fall back to the Array-API reference of :class:`gpunet.backend.Ops`.

Kernel names are ``gpunet_<step>`` (``gpunet_relu_fwd``, ``gpunet_gelu_bwd``, ``gpunet_adam``...), so a profiler
trace reads like the code.

This module imports CuPy only when a :class:`CupyOps` is made without an explicit ``elementwise_kernel`` factory;
the tests pass a host stand-in that compiles the very same declarations with the host C++ compiler.
"""

from __future__ import annotations

import math

from .. import activations
from .kernel_sources import kernel_source
from .reference import Ops


class CupyOps(Ops):
    """Fused CUDA kernels for CuPy arrays; results equal :class:`gpunet.backend.Ops` within float rounding.

    Args:
        xp: the CuPy namespace (``array_api_compat.cupy``), or any namespace the kernel factory accepts.
        elementwise_kernel: the factory with ``cupy.ElementwiseKernel``'s signature
            ``(in_params, out_params, operation, name=..., preamble=...)``; default ``cupy.ElementwiseKernel``.
    """

    def __init__(self, xp, elementwise_kernel=None):
        super().__init__(xp)
        if elementwise_kernel is None:
            import cupy

            elementwise_kernel = cupy.ElementwiseKernel
        self._elementwise_kernel = elementwise_kernel
        self._kernels: dict = {}

    def kernel(self, name: str, in_params: str, out_params: str, operation: str, source: str):
        """The ``gpunet_<name>`` kernel, declared on first request and reused after."""
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = self._elementwise_kernel(in_params, out_params, operation, name=f"gpunet_{name}",
                                              preamble=kernel_source(source))
            self._kernels[name] = kernel
        return kernel

    # -- layers ---------------------------------------------------------------------------------------------------
    def bias_act(self, z, b, activation):
        """``z += b`` and the activation in one pass, in place on ``z`` (also kept when backward needs it)."""
        name = _kernel(activation)
        if name is None:
            return super().bias_act(z, b, activation)
        param = activation.kernel_arg()
        if activation.uses_input:
            y = self.xp.empty_like(z)
            kernel = self.kernel(f"{name}_fwd_keep", "T b, T a", "T z, T y", f"z = z + b; y = gn_{name}_fwd(z, a)",
                                 "activations.cuh")
            kernel(b, param, z, y)
            return z, y
        kernel = self.kernel(f"{name}_fwd", "T b, T a", "T z", f"z = gn_{name}_fwd(z + b, a)", "activations.cuh")
        kernel(b, param, z)
        return None, z

    def act_grad(self, activation, dy, z, y, ws=None):
        name = _kernel(activation)
        if name is None:
            return super().act_grad(activation, dy, z, y, ws)
        kernel = self.kernel(f"{name}_bwd", "T dy, T s, T a", "T dz", f"dz = gn_{name}_bwd(dy, s, a)",
                             "activations.cuh")
        return kernel(dy, z if activation.uses_input else y, activation.kernel_arg())

    # -- losses ---------------------------------------------------------------------------------------------------
    def huber(self, pred, target, delta, scale):
        kernel = self.kernel("huber", "T p, T t, T delta, T scale", "T loss, T grad",
                             "gn_huber(p, t, delta, scale, loss, grad)", "losses.cuh")
        return kernel(pred, target, delta, scale)

    def bce_logits(self, z, target, scale):
        kernel = self.kernel("bce_logits", "T z, T t, T scale", "T loss, T grad",
                             "gn_bce_logits(z, t, scale, loss, grad)", "losses.cuh")
        return kernel(z, target, scale)

    def xent_combined(self, p, target, scale, binary):
        step = "bce_sigmoid" if binary else "cce_softmax"
        kernel = self.kernel(step, "T p, T t, T scale", "T loss, T grad", f"gn_{step}(p, t, scale, loss, grad)",
                             "losses.cuh")
        return kernel(p, target, scale)

    # -- optimizers -----------------------------------------------------------------------------------------------
    def sgd_update(self, p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, ws=None):
        if not momentum:
            kernel = self.kernel("sgd", "T g, T lr, T wd", "T p", "gn_sgd(p, g, lr, wd)", "optimizers.cuh")
            kernel(g, lr, weight_decay, p)
            return None
        first = buf is None
        if first:
            buf = self.xp.empty_like(p)
        kernel = self.kernel("sgd_momentum", "T g, T lr, T mu, T omd, T wd, bool nesterov, bool first",
                             "T p, T buf", "gn_sgd_momentum(p, g, buf, lr, mu, omd, wd, nesterov, first)",
                             "optimizers.cuh")
        kernel(g, lr, momentum, 1.0 - dampening, weight_decay, nesterov, first, p, buf)
        return buf

    def adam_update(self, p, g, m, v, vmax, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, ws=None):
        decay = 1.0 - lr * weight_decay if decoupled else 1.0
        l2 = 0.0 if decoupled else weight_decay
        scalars = (decay, l2, 1.0 - beta1, beta2, 1.0 - beta2, lr / (1 - beta1**step),
                   math.sqrt(1 - beta2**step), eps)
        params = "T g, T decay, T wd, T omb1, T b2, T omb2, T step_size, T bc2_sqrt, T eps"
        if vmax is None:
            kernel = self.kernel("adam", params, "T p, T m, T v",
                                 "gn_adam(p, g, m, v, decay, wd, omb1, b2, omb2, step_size, bc2_sqrt, eps)",
                                 "optimizers.cuh")
            kernel(g, *scalars, p, m, v)
        else:
            kernel = self.kernel("adam_amsgrad", params, "T p, T m, T v, T vmax",
                                 "gn_adam_amsgrad(p, g, m, v, vmax, decay, wd, omb1, b2, omb2, step_size, bc2_sqrt, "
                                 "eps)", "optimizers.cuh")
            kernel(g, *scalars, p, m, v, vmax)


def _kernel(activation) -> str | None:
    """The ``gn_<name>_fwd``/``_bwd`` pair of ``kernels/activations.cuh`` for ``activation``: its declared built-in
    math when that is elementwise (softmax couples a row: the reference runs it), else None (custom activations and
    subclasses that override the math run their own methods)."""
    name = activations.builtin_kernel(activation)
    return name if name is not None and activation.elementwise else None
