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
import os

from .. import activations
from .kernel_sources import kernel_source
from .reference import Ops


class CupyOps(Ops):
    """Fused CUDA kernels for CuPy arrays; results equal :class:`gpunet.backend.Ops` within float rounding.

    Args:
        xp: the CuPy namespace (``array_api_compat.cupy``), or any namespace the kernel factory accepts.
        elementwise_kernel: the factory with ``cupy.ElementwiseKernel``'s signature
            ``(in_params, out_params, operation, name=..., preamble=...)``; default ``cupy.ElementwiseKernel``.
        gemm: ``gemm(a, b, out, tf32=False, alpha=1.0, beta=0.0) -> out or None``, the capturable matrix product
            (default: :class:`gpunet.backend.cublas.Gemm` on CuPy, ``numpy.matmul`` into ``out`` elsewhere).

    Inside a training step (a workspace given) every result is written into the trainer's workspaces and every
    matrix product goes through ``gemm`` (cuBLAS with a fixed workspace), so the step allocates nothing after its
    first run and can be captured into a CUDA graph (:mod:`gpunet.backend.graphs`). Public calls (no workspace)
    return new arrays as before.
    """

    reuses_buffers = True
    device_scalars = True  # optimizers keep lr and the step count on the device (captured steps read them there)

    # the vectorised in-place forward (kernels/vectorized.cuh) instead of the ElementwiseKernel: off until a GPU
    # run shows that a step gains (GPUNET_VECTORIZED=1 turns it on; bench_kernels measures both)
    vectorized = os.environ.get("GPUNET_VECTORIZED", "0").strip() == "1"
    VECTOR_ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu")

    def __init__(self, xp, elementwise_kernel=None, gemm=None, raw_kernel=None):
        super().__init__(xp)
        if elementwise_kernel is None:
            import cupy

            elementwise_kernel = cupy.ElementwiseKernel
        self._elementwise_kernel = elementwise_kernel
        self._kernels: dict = {}
        self._gemm = gemm
        self._raw_kernel = raw_kernel

    @property
    def gemm(self):
        """The matrix product into ``out`` (made on first use: cuBLAS on CuPy)."""
        if self._gemm is None:
            import array_api_compat

            if array_api_compat.is_cupy_namespace(self.xp):
                from .cublas import Gemm

                self._gemm = Gemm()
            else:
                self._gemm = _matmul_into
        return self._gemm

    def kernel(self, name: str, in_params: str, out_params: str, operation: str, source: str):
        """The ``gpunet_<name>`` kernel, declared on first request and reused after."""
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = self._elementwise_kernel(in_params, out_params, operation, name=f"gpunet_{name}",
                                              preamble=kernel_source(source))
            self._kernels[name] = kernel
        return kernel

    # -- layers ---------------------------------------------------------------------------------------------------
    def matmul(self, a, b, out=None, tf32: bool = False):
        """``a @ b``; into ``out`` through :attr:`gemm` when given (capturable), else a new array."""
        if out is None:
            return a @ b
        if self.gemm(a, b, out, tf32=tf32) is None:  # a layout cuBLAS cannot read in place (not in gpunet's steps)
            out[...] = a @ b
        return out

    def sum_rows(self, a, out=None, ws=None):
        """``sum(a, axis=0)``: with ``out`` and ``ws``, the product ``ones(1, n) @ a`` into ``out``."""
        if out is None or ws is None:
            return super().sum_rows(a, out, ws)
        ones = ws.array("ones", (a.shape[0],), a.dtype, fill=1)
        self.matmul(self.xp.reshape(ones, (1, -1)), a, self.xp.reshape(out, (1, -1)))
        return out

    def dense(self, x, W, b, activation, out=None, ws=None):
        return self.bias_act(self.matmul(x, W, out), b, activation, ws)

    def bias_act(self, z, b, activation, ws=None):
        """``z += b`` and the activation in one pass, in place on ``z`` (also kept when backward needs it: ``y``
        then goes into ``ws`` when given); softmax: one thread per row, in place."""
        name = _kernel(activation)
        if name is None:
            if activations.builtin_kernel(activation) == "softmax" and z.ndim == 2:
                kernel = self.kernel("bias_softmax_rows", "raw T b, int64 k", "raw T z",
                                     "gn_bias_softmax_row(&z[0], &b[0], i, k)", "rows.cuh")
                kernel(b, z.shape[1], z, size=z.shape[0])
                return None, z
            return super().bias_act(z, b, activation)
        param = activation.kernel_arg()
        if activation.uses_input:
            y = self.xp.empty_like(z) if ws is None else ws.like(("act_out", id(z)), z)
            kernel = self.kernel(f"{name}_fwd_keep", "T b, T a", "T z, T y", f"z = z + b; y = gn_{name}_fwd(z, a)",
                                 "activations.cuh")
            kernel(b, param, z, y)
            return z, y
        if self.vectorized and self.vec4_applies(z, name):
            self.bias_act_vec4(z, b, name, param)
            return None, z
        kernel = self.kernel(f"{name}_fwd", "T b, T a", "T z", f"z = gn_{name}_fwd(z + b, a)", "activations.cuh")
        kernel(b, param, z)
        return None, z

    def vec4_applies(self, z, name: str) -> bool:
        """Whether :meth:`bias_act_vec4` can run on ``z``: float32 C-contiguous rows of a multiple of 4 columns,
        16-byte aligned, an activation it has."""
        import numpy as np

        return (name in self.VECTOR_ACTIVATIONS and z.ndim == 2 and z.dtype == np.float32 and z.shape[1] % 4 == 0
                and z.flags.c_contiguous and _address(z) % 16 == 0)

    def bias_act_vec4(self, z, b, name: str, param: float) -> None:
        """``z = act(z + b)`` in place with float4 loads and stores in a grid-stride loop (a ``cupy.RawKernel``
        over ``kernels/vectorized.cuh``); see :meth:`vec4_applies` for what it needs."""
        key = f"vec4_{name}"
        kernel = self._kernels.get(key)
        if kernel is None:
            if self._raw_kernel is None:
                import cupy

                self._raw_kernel = cupy.RawKernel
            source = (kernel_source("vectorized.cuh") +
                      f'\nextern "C" __global__ void gpunet_{name}_fwd_vec4(float* z, const float* b, long long n4, '
                      f"long long cols4, float a) {{\n    gn_bias_act_vec4<gn_vec_{name}>(z, b, n4, cols4, a, "
                      f"blockIdx.x * (long long)blockDim.x + threadIdx.x, (long long)gridDim.x * blockDim.x);\n}}\n")
            kernel = self._kernels[key] = self._raw_kernel(source, f"gpunet_{name}_fwd_vec4")
        import numpy as np

        n4 = z.size // 4
        threads = 256
        blocks = max(1, min(-(-n4 // threads), self._resident_blocks(threads)))
        kernel((blocks,), (threads,), (z, b, np.int64(n4), np.int64(z.shape[1] // 4), np.float32(param)))

    def _resident_blocks(self, threads: int) -> int:
        """Blocks that fit on the device at once (SMs x 2048 / threads): enough for a grid-stride loop."""
        if not hasattr(self, "_sm_count"):
            try:
                import cupy

                self._sm_count = cupy.cuda.Device().attributes["MultiProcessorCount"]
            except Exception:  # noqa: BLE001  (tests without a GPU)
                self._sm_count = 132
        return self._sm_count * (2048 // threads)

    def act_grad(self, activation, dy, z, y, ws=None):
        """``dz`` into ``dy`` itself inside a step (``ws`` given), else a new array."""
        name = _kernel(activation)
        if name is None:
            if activations.builtin_kernel(activation) == "softmax" and ws is not None and dy.ndim == 2:
                kernel = self.kernel("softmax_bwd_rows", "raw T y, int64 k", "raw T dy",
                                     "gn_softmax_bwd_row(&dy[0], &y[0], i, k)", "rows.cuh")
                kernel(y, dy.shape[1], dy, size=dy.shape[0])
                return dy
            return super().act_grad(activation, dy, z, y, ws)
        kernel = self.kernel(f"{name}_bwd", "T dy, T s, T a", "T dz", f"dz = gn_{name}_bwd(dy, s, a)",
                             "activations.cuh")
        saved = z if activation.uses_input else y
        if ws is None:
            return kernel(dy, saved, activation.kernel_arg())
        return kernel(dy, saved, activation.kernel_arg(), dy)

    # -- losses ---------------------------------------------------------------------------------------------------
    def huber(self, pred, target, delta, scale, out=None):
        kernel = self.kernel("huber", "T p, T t, T delta, T scale", "T loss, T grad",
                             "gn_huber(p, t, delta, scale, loss, grad)", "losses.cuh")
        return kernel(pred, target, delta, scale, *(out or ()))

    def bce_logits(self, z, target, scale, out=None):
        kernel = self.kernel("bce_logits", "T z, T t, T scale", "T loss, T grad",
                             "gn_bce_logits(z, t, scale, loss, grad)", "losses.cuh")
        return kernel(z, target, scale, *(out or ()))

    def xent_combined(self, p, target, scale, binary, out=None):
        step = "bce_sigmoid" if binary else "cce_softmax"
        kernel = self.kernel(step, "T p, T t, T scale", "T loss, T grad", f"gn_{step}(p, t, scale, loss, grad)",
                             "losses.cuh")
        return kernel(p, target, scale, *(out or ()))

    def _pointwise_loss(self, step, pred, target, scale, out):
        kernel = self.kernel(step, "T p, T t, T scale", "T loss, T grad", f"gn_{step}(p, t, scale, loss, grad)",
                             "losses.cuh")
        return kernel(pred, target, scale, *out)

    def loss_and_grad(self, loss, pred, target, combined, ws=None):
        """Inside a step (``ws``): the built-in losses' kernels write the elementwise loss and the gradient into the
        workspace, and the batch loss is one product ``loss_row @ ones`` into a workspace scalar (no allocation,
        no host read). Custom losses, and built-ins without a kernel, run the reference."""
        plan = None if ws is None else _loss_plan(loss, pred, combined)
        if plan is None:
            return super().loss_and_grad(loss, pred, target, combined, ws)
        step, grad_scale, value_scale = plan
        out = (ws.like(("loss", "elements"), pred), ws.like(("loss", "grad"), pred))
        if step == "huber":
            self.huber(pred, target, loss.delta, grad_scale, out)
        else:
            self._pointwise_loss(step, pred, target, grad_scale, out)
        return self.batch_sum(out[0], value_scale, ws), out[1]

    def batch_sum(self, a, scale: float, ws):
        """``scale * sum(a)`` as a 0-d workspace array: the product ``a (1, N) @ ones (N, 1)``."""
        size = math.prod(a.shape)
        ones = ws.array("ones", (size,), a.dtype, fill=1)
        value = ws.array(("loss", "value"), (1, 1), a.dtype)
        xp = self.xp
        if self.gemm(xp.reshape(a, (1, size)), xp.reshape(ones, (size, 1)), value, alpha=scale) is None:
            value[...] = xp.sum(a) * scale
        return xp.reshape(value, ())

    def record(self, losses, counter, value, b: int) -> None:
        """``losses[counter] = value; counter += 1`` on the device (one thread): the index comes from device
        memory, so a captured step records each replay at the next place."""
        kernel = self.kernel("record", "raw T value", "raw T losses, raw I counter",
                             "gn_record(&losses[0], &counter[0], value[0])", "rows.cuh")
        kernel(value, losses, counter, size=1)

    def gather(self, X, order, counter, batch: int, out) -> None:
        """``out`` (rows, cols) = ``X[order[counter * batch + r]]`` for each row ``r``, read on the device."""
        kernel = self.kernel("gather", "raw T X, raw I order, raw C counter, int64 cols, int64 batch", "T x",
                             "x = gn_gather(&X[0], &order[0], &counter[0], i, cols, batch)", "rows.cuh")
        kernel(X, order, counter, out.shape[1], batch, out)

    def accuracy_into(self, pred, target, threshold: float, columns: bool, ws, total) -> None:
        """``total (1, 1) float64 += correct predictions of this batch`` (Accuracy's statistic): per element
        (binary, multi-label: ``(pred > threshold) == (target > 0.5)``) or per row (argmax agreement), as float64
        flags summed by a product with ones (beta = 1), all on the device."""
        xp = self.xp
        if columns:
            flags = ws.array(("accuracy", "flags"), tuple(pred.shape), xp.float64)
            kernel = self.kernel("accuracy_columns", "T p, T t, T thr", "float64 c",
                                 "c = ((p > thr) == (t > T(0.5))) ? 1.0 : 0.0", "gpunet_common.cuh")
            kernel(pred, target, threshold, flags)
        else:
            flags = ws.array(("accuracy", "flags"), (pred.shape[0],), xp.float64)
            kernel = self.kernel("accuracy_rows", "raw T p, raw T t, int64 k", "raw float64 c",
                                 "c[i] = gn_argmax_agrees(&p[0], &t[0], i, k)", "rows.cuh")
            kernel(pred, target, pred.shape[1], flags, size=pred.shape[0])
        size = math.prod(flags.shape)
        ones = ws.array("ones64", (size,), xp.float64, fill=1)
        if self.gemm(xp.reshape(flags, (1, size)), xp.reshape(ones, (size, 1)), total, beta=1.0) is None:
            total[...] = total + xp.sum(flags)

    def scale_grad(self, grad, amp) -> None:
        """``grad *= amp[0]`` (the loss scale, read on the device), in place."""
        kernel = self.kernel("loss_scale", "raw float64 amp", "T g", "g = g * T(amp[0])", "gpunet_common.cuh")
        kernel(amp, grad)

    def unscale_check(self, flat_grads, amp) -> None:
        """``g *= 1 / scale`` and ``amp[2] = 1`` where a result is not finite (GradScaler's unscale), in place."""
        kernel = self.kernel("unscale_check", "", "T g, raw float64 amp", "gn_unscale_check(g, &amp[0])",
                             "optimizers.cuh")
        kernel(flat_grads, amp)

    def scaler_update(self, amp, growth: float, backoff: float, interval: int) -> None:
        kernel = self.kernel("scaler_update", "float64 growth, float64 backoff, float64 interval",
                             "raw float64 amp", "gn_scaler_update(&amp[0], growth, backoff, interval)",
                             "optimizers.cuh")
        kernel(float(growth), float(backoff), float(interval), amp, size=1)

    def cast_into(self, src, dst) -> None:
        """``dst = src`` converted to ``dst``'s dtype (round to nearest even), elementwise."""
        kernel = self.kernel("cast", "T x", "L y", "y = L(x)", "gpunet_common.cuh")
        kernel(src, dst)

    # -- optimizers -----------------------------------------------------------------------------------------------
    def step_prepare(self, dev, beta1: float, beta2: float, wd: float) -> None:
        """Advance the device step count and compute the step's bias corrections (see ``gn_step_prepare``)."""
        kernel = self.kernel("step_prepare", "raw float64 amp, float64 beta1, float64 beta2, float64 wd",
                             "raw float64 s", "gn_step_prepare(&s[0], &amp[0], beta1, beta2, wd)", "optimizers.cuh")
        kernel(dev.amp, float(beta1), float(beta2), float(wd), dev.s, size=1)

    def sgd_update(self, p, g, buf, *, lr, momentum, dampening, nesterov, weight_decay, ws=None, dev=None,
                   low=None):
        first = momentum and buf is None
        if first:
            buf = self.xp.empty_like(p)
        if dev is None and low is None:  # host scalars (direct calls)
            if not momentum:
                kernel = self.kernel("sgd", "T g, T lr, T wd", "T p", "gn_sgd(p, g, lr, wd)", "optimizers.cuh")
                kernel(g, lr, weight_decay, p)
                return None
            kernel = self.kernel("sgd_momentum", "T g, T lr, T mu, T omd, T wd, bool nesterov, bool first",
                                 "T p, T buf", "gn_sgd_momentum(p, g, buf, lr, mu, omd, wd, nesterov, first)",
                                 "optimizers.cuh")
            kernel(g, lr, momentum, 1.0 - dampening, weight_decay, nesterov, first, p, buf)
            return buf
        # the learning rate from the device scalars; the whole update skipped on the loss scaler's found_inf
        tail, low_out = ("; low = L(p)", ", L low") if low is not None else ("", "")
        if not momentum:
            kernel = self.kernel("sgd_dev" + ("_low" if low is not None else ""),
                                 "T g, raw float64 s, raw float64 amp, T wd", "T p" + low_out,
                                 "if (amp[2] == 0) gn_sgd(p, g, T(s[0]), wd)" + tail, "optimizers.cuh")
            kernel(g, dev.s, dev.amp, weight_decay, p, *(() if low is None else (low,)))
            return None
        kernel = self.kernel("sgd_momentum_dev" + ("_low" if low is not None else ""),
                             "T g, raw float64 s, raw float64 amp, T mu, T omd, T wd, bool nesterov, bool first",
                             "T p, T buf" + low_out,
                             "if (amp[2] == 0) gn_sgd_momentum(p, g, buf, T(s[0]), mu, omd, wd, nesterov, first)"
                             + tail, "optimizers.cuh")
        kernel(g, dev.s, dev.amp, momentum, 1.0 - dampening, weight_decay, nesterov, bool(first), p, buf,
               *(() if low is None else (low,)))
        return buf

    def adam_update(self, p, g, m, v, vmax, *, step, lr, beta1, beta2, eps, weight_decay, decoupled, ws=None,
                    dev=None, low=None):
        if dev is None and low is None:  # host scalars (direct calls)
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
                                     "gn_adam_amsgrad(p, g, m, v, vmax, decay, wd, omb1, b2, omb2, step_size, "
                                     "bc2_sqrt, eps)", "optimizers.cuh")
                kernel(g, *scalars, p, m, v, vmax)
            return
        # step size, bias correction and AdamW's decay from the device scalars (gn_step_prepare)
        l2 = 0.0 if decoupled else weight_decay
        decay = "T(s[4])" if decoupled else "T(1)"
        tail, low_out = ("; low = L(p)", ", L low") if low is not None else ("", "")
        suffix = ("_w" if decoupled else "") + ("_low" if low is not None else "")
        params = "T g, raw float64 s, raw float64 amp, T wd, T omb1, T b2, T omb2, T eps"
        lows = () if low is None else (low,)
        if vmax is None:
            kernel = self.kernel("adam_dev" + suffix, params, "T p, T m, T v" + low_out,
                                 f"if (amp[2] == 0) gn_adam(p, g, m, v, {decay}, wd, omb1, b2, omb2, T(s[2]), "
                                 f"T(s[3]), eps)" + tail, "optimizers.cuh")
            kernel(g, dev.s, dev.amp, l2, 1.0 - beta1, beta2, 1.0 - beta2, eps, p, m, v, *lows)
        else:
            kernel = self.kernel("adam_amsgrad_dev" + suffix, params, "T p, T m, T v, T vmax" + low_out,
                                 f"if (amp[2] == 0) gn_adam_amsgrad(p, g, m, v, vmax, {decay}, wd, omb1, b2, omb2, "
                                 f"T(s[2]), T(s[3]), eps)" + tail, "optimizers.cuh")
            kernel(g, dev.s, dev.amp, l2, 1.0 - beta1, beta2, 1.0 - beta2, eps, p, m, v, vmax, *lows)


def _address(a) -> int:
    import numpy as np

    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _matmul_into(a, b, out, tf32=False, alpha=1.0, beta=0.0):
    """``out = alpha a @ b + beta out`` with the namespace's own matmul (CupyOps on a host namespace, in tests)."""
    import numpy as np

    if a.dtype.itemsize == 2:  # 16-bit inputs: float32 products and sums, as cublasGemmEx's compute type
        a, b = a.astype(np.float32), b.astype(np.float32)
    product = np.matmul(a, b)
    if alpha != 1.0:
        product = product * out.dtype.type(alpha)
    out[...] = product if beta == 0 else product + beta * out
    return out


def _loss_plan(loss, pred, combined):
    """``(kernel step, gradient scale, value scale)`` for the built-in losses with kernels (exact classes: a
    subclass may change the math), or None."""
    from .. import losses

    kind = type(loss)
    rows, size = pred.shape[0], math.prod(pred.shape)
    if combined and kind is losses.CategoricalCrossEntropy:
        return "cce_softmax", 1.0 / rows, 1.0 / rows
    if combined and kind is losses.BinaryCrossEntropy:
        return "bce_sigmoid", 1.0 / size, 1.0 / size
    if combined:
        return None
    if kind is losses.MSE:
        return "mse", 1.0 / size, 1.0 / size
    if kind is losses.MAE:
        return "mae", 1.0 / size, 1.0 / size
    if kind is losses.Huber:
        return "huber", 1.0 / size, 1.0 / size
    if kind is losses.BinaryCrossEntropy and loss.from_logits:
        return "bce_logits", 1.0 / size, 1.0 / size
    return None


def _kernel(activation) -> str | None:
    """The ``gn_<name>_fwd``/``_bwd`` pair of ``kernels/activations.cuh`` for ``activation``: its declared built-in
    math when that is elementwise (softmax couples a row: the reference runs it), else None (custom activations and
    subclasses that override the math run their own methods)."""
    name = activations.builtin_kernel(activation)
    return name if name is not None and activation.elementwise else None
