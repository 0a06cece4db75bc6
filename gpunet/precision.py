"""Mixed precision: ``precision="float32" | "tf32" | "bf16" | "fp16"`` on a model (``Sequential(precision=...)``) or
a fit (``fit(precision=...)``), following ``torch.autocast`` and ``torch.amp.GradScaler``.

What runs in which precision (the op lists of ``torch.autocast``, as they apply to gpunet's steps):

| in the low precision (inputs rounded to it, products accumulated and written in float32) | in float32 |
|---|---|
| the forward product ``x @ W`` of every layer | bias add and activation, softmax |
| the backward products ``x^T @ dz`` (dW) and ``dz @ W^T`` (dx) | losses and their gradients, the batch loss |
| | sums: the bias gradient, metrics; gradient clipping norms |
| | the optimizer update and its state (master weights) |

``tf32``: float32 storage, products on TF32 tensor cores (cuBLAS's ``CUBLAS_COMPUTE_32F_FAST_TF32``: inputs with a
10-bit mantissa). ``bf16`` / ``fp16``: the parameters stay float32 (master weights, as the optimizer state); the
optimizer's update kernel writes their bfloat16 / float16 copy in the same pass (SGD, Adam, AdamW; other rules a
separate cast), and the products read that copy; activations and gradients are cast to it before each product.
``fp16`` scales the loss dynamically with GradScaler's rule (:class:`GradScaler`): start at 2^16, double after 2000
steps without inf/NaN gradients, halve and skip the step (the optimizer's step count does not advance) on any.
``bf16`` has float32's exponent range and needs no scaler. Mixed precision applies to training steps; ``predict``
and ``evaluate`` compute in float32 from the master weights.

On a GPU the products are cuBLAS ``cublasGemmEx`` calls with 16-bit inputs and float32 output and compute type
(:mod:`gpunet.backend.cublas`). On NumPy the same modes run as an emulation, for tests and laptops: float16 and
ml_dtypes' bfloat16 storage, each product computed in float32 from the rounded inputs (which is exact for the
products themselves: 11- or 8-bit mantissas multiply into float32 without rounding), TF32 as float32 rounded to a
10-bit mantissa. Slow, and the same arithmetic up to the order of the float32 sums.
"""

from __future__ import annotations

import math

import numpy as np

PRECISIONS = ("float32", "tf32", "bf16", "fp16")
FLOAT32_MAX = float(np.finfo(np.float32).max)

# torch.autocast's lists, as gpunet applies them (for the README and error messages)
LOW_PRECISION_OPS = ("layer forward product x @ W", "backward product x^T @ dz (dW)", "backward product dz @ W^T (dx)")
FLOAT32_OPS = ("bias add", "activations", "softmax", "losses and loss gradients", "batch loss sum", "bias gradient sum",
               "metrics", "gradient clipping", "optimizer update and state", "loss scaling")


def check(name) -> str:
    """``name`` if it is a precision mode, else a ValueError."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; received precision={name!r}")
    return name


def bfloat16():
    """ml_dtypes' bfloat16 (NumPy storage; CuPy 14 accepts the same dtype)."""
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover
        raise ImportError("precision='bf16' stores bfloat16 through the ml_dtypes package: pip install ml_dtypes") \
            from exc
    return np.dtype(ml_dtypes.bfloat16)


def round_tf32(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32 ``a`` rounded to TF32's 10-bit mantissa (to nearest, ties to even) into ``out``; NaN and infinities
    stay as they are."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x0FFF) + ((u >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000))
    rounded = np.where((u & np.uint32(0x7F800000)) == np.uint32(0x7F800000), u, rounded)
    np.copyto(out, rounded.view(np.float32))
    return out


class Policy:
    """Where a training step's products run (see the module docstring); one per precision mode."""

    def __init__(self, name: str):
        self.name = check(name)
        self.tf32 = name == "tf32"
        self.low = {"bf16": "bfloat16", "fp16": "float16"}.get(name)

    def __repr__(self) -> str:
        return f"Policy({self.name!r})"

    def low_dtype(self, xp):
        return xp.float16 if self.low == "float16" else bfloat16()

    def cast(self, ops, a, ws, key):
        """``a`` as the products read it: the low-precision copy (into ``ws`` under ``key``), the TF32-rounded copy
        (NumPy), or ``a`` itself (TF32 on a GPU: the tensor cores round)."""
        if self.tf32:
            if ops.device_scalars:
                return a
            return round_tf32(a, ws.array(("mp", key), tuple(a.shape), a.dtype))
        out = ws.array(("mp", key), tuple(a.shape), self.low_dtype(ops.xp))
        ops.cast_into(a, out)
        return out

    def product(self, ops, a, b, out):
        """``out = a @ b`` for inputs made by :meth:`cast`: float32 accumulation and output."""
        if self.tf32:
            return ops.matmul(a, b, out, tf32=True) if ops.device_scalars else ops.matmul(a, b, out)
        if ops.device_scalars:  # cublasGemmEx: 16-bit A and B, float32 C and compute
            return ops.matmul(a, b, out)
        # the emulation: the rounded inputs in float32, one float32 product (exact products, float32 sums)
        xp = ops.xp
        return ops.matmul(xp.astype(a, xp.float32), xp.astype(b, xp.float32), out)


class GradScaler:
    """Dynamic loss scaling with ``torch.amp.GradScaler``'s rule (fp16 only).

    Args:
        init_scale: the first scale (2^16).
        growth_factor, backoff_factor: the scale times ``growth_factor`` after ``growth_interval`` consecutive steps
            with finite gradients, times ``backoff_factor`` after a step with an inf or NaN gradient (that step is
            skipped: the parameters, the optimizer state and its step count stay).

    The state is one float64 array of the model's namespace, ``[scale, growth tracker, found_inf, 1 / scale]``, so a
    captured step reads and writes it on the device (the kernels ``gn_unscale_check``, ``gn_scaler_update``).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.init_scale, self.growth_factor = float(init_scale), float(growth_factor)
        self.backoff_factor, self.growth_interval = float(backoff_factor), int(growth_interval)
        self.amp = None

    def attach(self, model) -> None:
        """Make the state on ``model``'s device (the scale restarts at ``init_scale``)."""
        host = np.array([self.init_scale, 0.0, 0.0, 1.0 / self.init_scale], dtype=np.float64)
        with model.backend.activate():
            self.amp = model.xp.asarray(host)

    def state_dict(self) -> dict:
        """``torch.amp.GradScaler.state_dict``'s entries (a device read on a GPU)."""
        from .backend import to_numpy

        amp = to_numpy(self.amp)
        return {"scale": float(amp[0]), "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": int(amp[1])}

    @staticmethod
    def check_state(state: dict) -> dict:
        """``state`` (a :meth:`state_dict`) if it can be loaded, else a ValueError saying why."""
        scale, tracker = float(state["scale"]), int(state["_growth_tracker"])
        if not (0 < scale < math.inf) or not 0 <= tracker < int(state["growth_interval"]):
            raise ValueError(f"a loss scaler's state needs a finite scale > 0 and a growth tracker in [0, "
                             f"growth_interval); received scale={scale!r}, _growth_tracker={tracker!r}")
        return state

    def load_state_dict(self, state: dict, model) -> None:
        """Take ``state`` (from :meth:`state_dict`), its scale and growth tracker onto ``model``'s device."""
        self.check_state(state)
        scale, tracker = float(state["scale"]), int(state["_growth_tracker"])
        self.growth_factor, self.backoff_factor = float(state["growth_factor"]), float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        with model.backend.activate():
            self.amp = model.xp.asarray(np.array([scale, tracker, 0.0, 1.0 / scale], dtype=np.float64))

    @property
    def scale(self) -> float:
        """The current scale (a device read on a GPU)."""
        from .backend import to_numpy

        return float(to_numpy(self.amp)[0])

    def scale_grad(self, ops, grad) -> None:
        """``grad *= scale``, in place (the loss gradient, before backward)."""
        if ops.device_scalars:
            ops.scale_grad(grad, self.amp)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is what the scaler looks for
                grad *= grad.dtype.type(self.amp[0])

    def unscale(self, ops, grads) -> bool:
        """``g *= 1 / scale`` for every gradient array, noting whether any result is inf or NaN. Returns whether
        the host must skip the update itself (NumPy); on a GPU the update kernels read the flag instead (False)."""
        if ops.device_scalars:
            for g in grads:
                ops.unscale_check(g, self.amp)
            return False
        found = False
        for g in grads:
            with np.errstate(over="ignore", invalid="ignore"):
                g *= g.dtype.type(self.amp[3])
            found = found or not bool(np.isfinite(g).all())
        if found:
            self.amp[2] = 1.0
        return found

    def update(self, ops) -> None:
        """GradScaler.update: back off on found_inf, else count the step and grow after ``growth_interval``."""
        if ops.device_scalars:
            ops.scaler_update(self.amp, self.growth_factor, self.backoff_factor, self.growth_interval)
            return
        amp = self.amp
        if amp[2] != 0:
            amp[0] *= self.backoff_factor
            amp[1] = 0.0
        else:
            tracker = amp[1] + 1.0
            if tracker == self.growth_interval:
                grown = amp[0] * self.growth_factor
                if grown <= FLOAT32_MAX:
                    amp[0] = grown
                tracker = 0.0
            amp[1] = tracker
        amp[2] = 0.0
        amp[3] = 1.0 / amp[0]


class MixedPrecision:
    """A model's training in a low precision: the policy, the flat low-precision copy of the parameters (bf16,
    fp16) and the loss scaler (fp16). Made by :func:`attach`; the trainer calls it at the step's hooks."""

    def __init__(self, model, name: str, scaler: GradScaler | None = None):
        from .backend import flat

        self.policy = Policy(name)
        if model.dtype != "float32":
            raise ValueError(f"precision={name!r} trains float32 master weights; the model's dtype is {model.dtype!r}")
        if model._flat_params is None or model.backend.name not in ("numpy", "cupy"):
            raise ValueError(f"precision={name!r} runs on NumPy and CuPy; this model is on {model.backend.name}")
        self.low_flat, self.low_views = None, [None] * len(model.parameters())
        if self.policy.low is not None:
            with model.backend.activate():
                self.low_flat, self.low_views = flat.empty(model.xp, [tuple(p.shape) for p in model.parameters()],
                                                           self.policy.low_dtype(model.xp))
        self.scaler = None
        if name == "fp16":
            self.scaler = scaler or GradScaler()
            self.scaler.attach(model)
        self.refresh(model)
        for layer, W_low in zip(model.layers, self.low_views[0::2]):
            layer._mp, layer._W_low = self.policy, W_low

    def key(self) -> tuple:
        """What a captured step holds of this object (for the graphs' staleness check)."""
        return self.low_flat, None if self.scaler is None else self.scaler.amp

    def refresh(self, model) -> None:
        """The low copy made again from the master weights (after ``set_weights``, a restore, a fit's start)."""
        if self.low_flat is not None:
            with model.backend.activate():
                model.ops.cast_into(model._flat_params, self.low_flat)

    @property
    def amp(self):
        return None if self.scaler is None else self.scaler.amp

    def detach(self, model) -> None:
        for layer in model.layers:
            layer._mp = layer._W_low = None


def attach(model, name: str | None, scaler: GradScaler | None = None) -> MixedPrecision | None:
    """Set ``model.trainer.mixed`` for training in ``name`` (None: the model's ``precision``); float32 detaches."""
    trainer = model.trainer
    name = check(getattr(model, "precision", "float32") if name is None else name)
    old = getattr(trainer, "mixed", None)
    if old is not None and old.policy.name == name:  # the same mode again: the loss scale carries over
        old.refresh(model)
        return old
    if old is not None:
        old.detach(model)
    pending = trainer.scaler_state
    trainer.mixed = None if name == "float32" else MixedPrecision(model, name, scaler)
    trainer.scaler_state = None  # taken up by fp16, dropped by another precision (as a detach drops a scaler)
    if name == "fp16" and scaler is None and pending is not None:
        trainer.mixed.scaler.load_state_dict(pending, model)
    return trainer.mixed
