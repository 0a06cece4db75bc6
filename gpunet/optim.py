"""Gradient-descent optimizers with the update rules of ``torch.optim``, to the letter.

``optimizer.step(model)`` updates ``model.parameters()`` in place from ``model.gradients()``. Like torch, weight
decay applies to every parameter, biases included. State (momentum buffers, moment estimates) is created on the
first step, on the model's device, one entry per parameter in ``model.parameters()`` order; it belongs to that
model (it follows the model across ``model.to(...)``), and stepping another model starts fresh state.

| gpunet                            | torch.optim  | update                                                   |
|-----------------------------------|--------------|----------------------------------------------------------|
| ``SGD(lr, momentum, dampening, nesterov, weight_decay)`` | SGD | ``buf = mu buf + (1 - dampening) g``; ``p -= lr buf`` |
| ``Adam(lr, betas, eps, weight_decay, amsgrad)``          | Adam | bias-corrected moments, eps outside the square root |
| ``AdamW(...)``                                           | AdamW | ``p *= 1 - lr wd``, then Adam without decay       |
| ``RMSprop(lr, alpha, eps, weight_decay, momentum, centered)`` | RMSprop |                                              |
| ``Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)`` | Adagrad |                              |

Gradient clipping, Keras's optimizer keywords with torch's arithmetic (at most one of them, as in Keras), applied
in place to ``model.gradients()`` before the update (before weight decay is added, as torch's utilities do when
called between ``backward()`` and ``step()``):

- ``global_clipnorm=c``: ``torch.nn.utils.clip_grad_norm_(all parameters, c)``: every gradient times
  ``min(1, c / (total_norm + 1e-6))``, ``total_norm`` the L2 norm of all gradients together;
- ``clipnorm=c``: the same for each gradient array on its own (Keras's ``clipnorm``; torch's ``1e-6`` keeps a
  zero gradient finite, so the result is at most ``1e-6`` relative off Keras's ``c / max(norm, c)``);
- ``clipvalue=c``: ``torch.nn.utils.clip_grad_value_``: every element clamped to ``[-c, c]``.

The norms stay on the device (no host read). Non-finite gradients are not an error (torch's default): an infinite
norm scales the finite entries to 0 and the infinite ones to NaN, as in torch, and ``TerminateOnNaN`` or the
divergence roll-back of ``fit`` deal with the loss.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import validation
from .backend import flat, to_numpy


CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")


class DeviceScalars:
    """An optimizer's learning rate and step count on the device, for ops that declare ``device_scalars`` (CuPy):
    a captured (CUDA graph) step reads them at every replay instead of the values frozen at capture.

    ``s`` (float64): ``[lr, completed steps, step size, sqrt(1 - beta2^t), 1 - lr wd, 0, 0, 0]``: the host writes
    ``lr`` and the step count (schedules, loading, roll-back); the ``gn_step_prepare`` kernel advances the count and
    computes the bias corrections of each step on the device. ``amp``: the loss scaler's state
    ``[scale, growth tracker, found_inf, 1 / scale]`` (:class:`gpunet.precision.GradScaler`), or a constant "no
    scaler" one; a step with ``found_inf`` set is skipped by the update kernels and not counted.
    """

    def __init__(self, xp, lr: float, steps: int):
        import numpy as _np

        self.s = xp.asarray(_np.array([lr, steps, 0, 0, 0, 0, 0, 0], dtype=_np.float64))
        self.no_scaler = xp.asarray(_np.array([1.0, 0.0, 0.0, 1.0], dtype=_np.float64))
        self.amp = self.no_scaler
        self.xp = xp

    def write(self, index: int, value: float) -> None:
        self.s[index] = value

    def steps(self) -> int:
        """The device's step count (one device read)."""
        return int(to_numpy(self.s[1:2])[0])


class Optimizer:
    """Base class. Subclasses define ``_new_state(p)`` and ``_update(ops, p, g, state, ws)`` (``ws``: a workspace
    for scratch arrays of the parameters' shapes, or None), and pass the clipping keywords (``clipnorm``,
    ``clipvalue``, ``global_clipnorm``: see the module docstring) on to this constructor. ``lr`` may be 0 (no
    update, as in torch)."""

    name = "optimizer"

    def __init__(self, lr: float, *, clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None):
        self._dev = None  # DeviceScalars, made by the first update on ops with device scalars (CuPy)
        self.lr = validation.number_in("lr", lr, 0.0, float("inf"))
        for key, value in zip(CLIPPING, (clipnorm, clipvalue, global_clipnorm)):
            setattr(self, key, None if value is None else validation.positive_number(key, value))
        chosen = {k: getattr(self, k) for k in CLIPPING if getattr(self, k) is not None}
        if len(chosen) > 1:
            raise ValueError(f"set at most one of clipnorm, clipvalue and global_clipnorm; received {chosen}")
        self.steps = 0  # completed steps (torch's per-parameter "step", shared by all parameters here)
        # the rate a closed-form schedule (StepLR, CosineAnnealingLR...) started from: torch's param_group
        # "initial_lr", saved with the optimizer so that a resumed fit continues the schedule
        self.initial_lr = None
        self.state = None
        self._backend = None
        self._model = None  # weak reference to the model the state belongs to

    # the learning rate and the step count: plain numbers, mirrored into the device scalars when those exist, so a
    # schedule that sets ``optimizer.lr`` between epochs reaches a captured step too
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = value
        if getattr(self, "_dev", None) is not None:
            self._dev.write(0, float(value))

    @property
    def steps(self) -> int:
        """Completed steps. On the device-scalar path the device counts them (a skipped fp16 step does not count);
        :meth:`sync_steps` reads that count back."""
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        self._steps = value
        if getattr(self, "_dev", None) is not None:
            self._dev.write(1, float(value))

    def sync_steps(self) -> None:
        """Take the step count from the device scalars (after captured or loss-scaled steps; one device read)."""
        if self._dev is not None:
            self._steps = self._dev.steps()

    def device_scalars(self, model) -> "DeviceScalars":
        """The device scalars on ``model``'s device (made on first request, moved with the model)."""
        if self._dev is None or self._dev_backend != model.backend:
            with model.backend.activate():
                self._dev = DeviceScalars(model.xp, float(self._lr), int(self._steps))
            self._dev_backend = model.backend
        return self._dev

    def _prepare_args(self) -> tuple:
        """``(beta1, beta2, weight decay for AdamW's decay term)`` of :func:`gn_step_prepare` (Adam overrides)."""
        return 0.0, 0.0, 0.0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def hyperparameters(self) -> dict:
        """The constructor arguments, as the optimizer holds them now (``lr`` may have been changed); clipping
        keywords only when set."""
        own = {k: v for k, v in vars(self).items()
               if not k.startswith("_") and k not in ("steps", "state", "initial_lr", *CLIPPING)}
        return {"lr": self.lr} | own | {k: getattr(self, k) for k in CLIPPING if getattr(self, k) is not None}

    def step(self, model) -> None:
        """Apply one update to every parameter of ``model`` from its current gradients (:meth:`gpunet.Sequential.
        gradients`, set by ``model.backward``)."""
        grads = model.gradients()
        if any(g is None for g in grads):
            raise RuntimeError("optimizer.step(model) needs gradients: call model.backward(...) first")
        self.apply(model, grads, model.trainer.workspaces.shared)

    @property
    def state(self) -> list | None:
        """One ``{name: array or None}`` per parameter (``model.parameters()`` order), or ``None`` before the first
        step. Assigning it (loading, rolling back) makes the next flat update gather it again."""
        return self._state

    @state.setter
    def state(self, value) -> None:
        self._state, self._flat = value, None

    def apply(self, model, grads, ws=None, flat_grads=None, *, amp=None, low=None) -> None:
        """Clip ``grads`` (in place) and update ``model.parameters()`` from them; ``ws``: scratch space for the
        update (the trainer's shared workspace). The state is made on the first step, moved when the model moved,
        and started afresh for another model.

        ``flat_grads``: the flat array ``grads`` are views of, laid out as the model's flat parameters (the
        trainer's, on NumPy): then the state is kept flat too and one update covers every parameter.

        Mixed precision (:mod:`gpunet.precision`): ``low``, the flat low-precision copy of the parameters that the
        update rewrites in the same pass; ``amp``, the loss scaler's device state, whose found_inf flag makes the
        device-scalar kernels skip the step (the NumPy path skips the call itself)."""
        params = model.parameters()
        if self.state is None or self._model is None or self._model() is not model:  # first step, or another model
            other = None if self._model is None else self._model()
            if other is not None and self.steps:  # one optimizer for two live models: each switch starts afresh
                validation.warn_at_caller(
                    f"this {type(self).__name__} last updated another model (step {self.steps}): its state starts "
                    f"afresh for this one, and would again for the other; give each model its own optimizer")
            self.steps = 0
            with model.backend.activate():
                self.state = [self._new_state(p) for p in params]
            self._backend, self._model = model.backend, weakref.ref(model)
        elif self._backend is not model.backend and self._backend != model.backend:  # the model moved: follow it
            self.attach(model)
        ops = model.ops
        with model.backend.activate():  # new state lands on the model's GPU
            dev = None
            if ops.device_scalars:  # made with the count of completed steps, which gn_step_prepare advances
                dev = self.device_scalars(model)
                dev.amp = dev.no_scaler if amp is None else amp
                ops.step_prepare(dev, *self._prepare_args())
            self._steps += 1
            if self.clipnorm is not None or self.clipvalue is not None or self.global_clipnorm is not None:
                self._clip(grads, model.xp)
            flat_path = flat_grads is not None and model._flat_params is not None
            if flat_path:
                state = self._flat_state(model)
                self._update(ops, model._flat_params, flat_grads, state, ws, dev=dev,
                             **({"low": low} if self._writes_low and low is not None else {}))
                self._slice_new_state(model)
            else:
                for p, g, state in zip(params, grads, self.state):
                    self._update(ops, p, g, state, ws, dev=dev)
            if low is not None and not (flat_path and self._writes_low):  # a separate pass for the other rules
                ops.cast_into(model._flat_params, low)

    _writes_low = False  # True where the update kernels write the low-precision copy in their own pass

    def _flat_state(self, model) -> dict:
        """``{name: flat array or None}`` behind the per-parameter state, gathered (one copy) when the state was
        made or assigned per parameter; the per-parameter entries become views of it."""
        if self._flat is None:
            shapes = [tuple(p.shape) for p in model.parameters()]
            self._flat = {}
            for name in self._state[0]:
                entries = [s[name] for s in self._state]
                if all(e is None for e in entries):
                    self._flat[name] = None
                    continue
                whole, parts = flat.gather(model.xp, [e if e is not None else model.xp.zeros(shape, dtype=p.dtype)
                                                      for e, shape, p in zip(entries, shapes, model.parameters())],
                                           model._flat_params.dtype)
                self._flat[name] = whole
                for s, part in zip(self._state, parts):
                    s[name] = part
        return self._flat

    def _slice_new_state(self, model) -> None:
        """A flat entry the update made (SGD's momentum buffer on its first step): cut it into the per-parameter
        state."""
        for name, whole in self._flat.items():
            if whole is not None and self._state[0][name] is None:
                for s, part in zip(self._state, flat.views(whole, [tuple(p.shape) for p in model.parameters()])):
                    s[name] = part

    def attach(self, model) -> None:
        """Bind the state (if any) to ``model``: copied onto its device and dtype, so the next step continues it."""
        if self.state is not None:
            self.state = [self._move_state(s, model.backend, p.dtype) for s, p in zip(self.state, model.parameters())]
            self._backend, self._model = model.backend, weakref.ref(model)

    def __getstate__(self) -> dict:
        """Pickle with the state on the host (unbound: :meth:`attach` binds it to the unpickled model)."""
        state = dict(vars(self))
        state.update(_backend=None, _model=None, _flat=None, _dev=None, _dev_backend=None,
                     _state=None if self.state is None else
                     [{k: None if v is None else to_numpy(v) for k, v in s.items()} for s in self.state])
        return state

    def _clip(self, grads, xp) -> None:
        """Clip ``grads`` in place as the clipping keyword asks."""
        if self.clipvalue is not None:
            for g in grads:
                g[...] = xp.clip(g, -self.clipvalue, self.clipvalue)
            return
        norms = [xp.linalg.vector_norm(g) for g in grads]  # 0-d arrays: no host read
        if self.global_clipnorm is not None:  # the norm of the norms, without stacking them (a host upload on CuPy)
            total = norms[0] * norms[0]
            for norm in norms[1:]:
                total = total + norm * norm
            norms, limit = [xp.sqrt(total)] * len(grads), self.global_clipnorm
        else:
            limit = self.clipnorm
        for g, norm in zip(grads, norms):
            g *= xp.clip(limit / (norm + 1e-6), max=1.0)

    def reset(self) -> None:
        """Forget all state (momentum, moments, step count)."""
        self.steps, self.state, self._backend, self._model = 0, None, None, None

    def owns_state(self, model) -> bool:
        """Whether the state (if any) belongs to ``model``: its next step continues it (an optimizer that last
        stepped another model, or whose state was unbound by pickling, starts afresh)."""
        return self.state is not None and self._model is not None and self._model() is model

    def state_dict(self, model=None) -> dict:
        """Host copies ``{"class", "hyperparameters", "steps", "state", "initial_lr"}``; ``state`` is ``None``
        before the first step, else one ``{name: NumPy array or None}`` per parameter (``model.parameters()``
        order). With ``model``: the state only if it belongs to that model (else ``None`` and 0 steps: what its next
        step would start from). Used by :mod:`gpunet.io` and data-parallel training."""
        state = None if self.state is None else [
            {k: None if v is None else np.array(to_numpy(v), copy=True) for k, v in s.items()} for s in self.state]
        steps = self.steps
        if model is not None and not self.owns_state(model):
            state, steps = None, 0
        return {"class": type(self).__name__, "hyperparameters": self.hyperparameters(), "steps": steps,
                "state": state, "initial_lr": self.initial_lr}

    def load_state_dict(self, state_dict: dict, model) -> None:
        """Adopt a :meth:`state_dict` (hyperparameters re-checked by the constructor): the state is copied onto
        ``model``'s device and bound to ``model``, so the next ``step(model)`` continues it instead of restarting."""
        if state_dict.get("class", type(self).__name__) != type(self).__name__:
            raise ValueError(f"a {state_dict['class']} state cannot be loaded into {type(self).__name__}")
        fresh = type(self)(**state_dict["hyperparameters"])
        steps, state, params = state_dict["steps"], state_dict["state"], model.parameters()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer; received steps={steps!r}")
        if state is not None:
            if len(state) != len(params):
                raise ValueError(f"the optimizer state has {len(state)} entries; the model has {len(params)} "
                                 f"parameters")
            names = sorted(fresh._new_state(np.zeros(1)))
            for i, (s, p) in enumerate(zip(state, params)):
                if sorted(s) != names:
                    raise ValueError(f"optimizer state {i} holds {sorted(s)}; {fresh!r} keeps {names}")
                for k, v in s.items():
                    if v is not None and tuple(v.shape) != tuple(p.shape):
                        raise ValueError(f"optimizer state {i}.{k} has shape {tuple(v.shape)}; parameter {i} "
                                         f"has shape {tuple(p.shape)}")
            with model.backend.activate():
                state = [{k: None if v is None else model.backend.from_host(np.array(to_numpy(v), copy=True),
                                                                            model.dtype)
                          for k, v in s.items()} for s in state]
        initial_lr = state_dict.get("initial_lr")
        if initial_lr is not None:
            initial_lr = validation.number_in("initial_lr", initial_lr, 0.0, float("inf"))
        for k in [*fresh.hyperparameters(), *CLIPPING]:
            setattr(self, k, getattr(fresh, k))
        self.state, self.steps, self.initial_lr = state, steps, initial_lr
        self._backend, self._model = (None, None) if state is None else (model.backend, weakref.ref(model))

    @staticmethod
    def _move_state(state: dict, backend, dtype) -> dict:
        name = str(dtype).split(".")[-1]
        return {k: (None if v is None else backend.from_host(to_numpy(v), name)) for k, v in state.items()}

    def _new_state(self, p) -> dict:
        raise NotImplementedError

    def _update(self, ops, p, g, state: dict, ws=None, dev=None) -> None:
        raise NotImplementedError


def _zeros_like(p):
    from array_api_compat import array_namespace

    return array_namespace(p).zeros_like(p)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay (``torch.optim.SGD``).

    >>> SGD(lr=0.1, momentum=0.9)
    SGD(lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0)
    """

    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, **clipping):
        super().__init__(lr, **clipping)
        self.momentum = validation.number_in("momentum", momentum, 0.0, 1.0)
        self.dampening = validation.number_in("dampening", dampening, 0.0, 1.0, high_inclusive=True)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False; received {nesterov!r}")
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0 (as in torch.optim.SGD); "
                             f"received momentum={momentum!r}, dampening={dampening!r}")
        self.nesterov = nesterov
        self.weight_decay = validation.number_in("weight_decay", weight_decay, 0.0, float("inf"))

    def _new_state(self, p):
        return {"momentum_buffer": None}

    _writes_low = True

    def _update(self, ops, p, g, state, ws=None, dev=None, low=None):
        state["momentum_buffer"] = ops.sgd_update(
            p, g, state["momentum_buffer"], lr=self.lr, momentum=self.momentum, dampening=self.dampening,
            nesterov=self.nesterov, weight_decay=self.weight_decay, ws=ws, dev=dev, low=low)


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; weight decay is added to ``g``."""

    name = "adam"
    _decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, **clipping):
        super().__init__(lr, **clipping)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair (beta1, beta2); received {betas!r}")
        self.betas = (validation.number_in("betas[0]", betas[0], 0.0, 1.0),
                      validation.number_in("betas[1]", betas[1], 0.0, 1.0))
        self.eps = validation.number_in("eps", eps, 0.0, float("inf"))
        self.weight_decay = validation.number_in("weight_decay", weight_decay, 0.0, float("inf"))
        if not isinstance(amsgrad, bool):
            raise TypeError(f"amsgrad must be True or False; received {amsgrad!r}")
        self.amsgrad = amsgrad

    def _new_state(self, p):
        return {"exp_avg": _zeros_like(p), "exp_avg_sq": _zeros_like(p),
                "max_exp_avg_sq": _zeros_like(p) if self.amsgrad else None}

    _writes_low = True

    def _prepare_args(self) -> tuple:
        return self.betas[0], self.betas[1], self.weight_decay if self._decoupled else 0.0

    def _update(self, ops, p, g, state, ws=None, dev=None, low=None):
        ops.adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"], step=self.steps,
                        lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                        weight_decay=self.weight_decay, decoupled=self._decoupled, ws=ws, dev=dev, low=low)


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): ``p *= 1 - lr wd`` before the Adam step."""

    name = "adamw"
    _decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, **clipping):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, **clipping)


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``): ``v = alpha v + (1 - alpha) g^2``, ``p -= lr g / (sqrt(v) + eps)``."""

    name = "rmsprop"

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, **clipping):
        super().__init__(lr, **clipping)
        self.alpha = validation.number_in("alpha", alpha, 0.0, 1.0)
        self.eps = validation.number_in("eps", eps, 0.0, float("inf"))
        self.weight_decay = validation.number_in("weight_decay", weight_decay, 0.0, float("inf"))
        self.momentum = validation.number_in("momentum", momentum, 0.0, 1.0)
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be True or False; received {centered!r}")
        self.centered = centered

    def _new_state(self, p):
        return {"square_avg": _zeros_like(p), "grad_avg": _zeros_like(p) if self.centered else None,
                "momentum_buffer": _zeros_like(p) if self.momentum > 0 else None}

    def _update(self, ops, p, g, state, ws=None, dev=None):
        ops.rmsprop_update(p, g, state["square_avg"], state["grad_avg"], state["momentum_buffer"], lr=self.lr,
                           alpha=self.alpha, eps=self.eps, momentum=self.momentum, weight_decay=self.weight_decay,
                           ws=ws)


class Adagrad(Optimizer):
    """Adagrad (``torch.optim.Adagrad``): ``s += g^2``, ``p -= lr / (1 + (t - 1) lr_decay) g / (sqrt(s) + eps)``."""

    name = "adagrad"

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, **clipping):
        super().__init__(lr, **clipping)
        self.lr_decay = validation.number_in("lr_decay", lr_decay, 0.0, float("inf"))
        self.weight_decay = validation.number_in("weight_decay", weight_decay, 0.0, float("inf"))
        self.initial_accumulator_value = validation.number_in(
            "initial_accumulator_value", initial_accumulator_value, 0.0, float("inf"))
        self.eps = validation.number_in("eps", eps, 0.0, float("inf"))

    def _new_state(self, p):
        return {"sum": _zeros_like(p) + self.initial_accumulator_value}

    def _update(self, ops, p, g, state, ws=None, dev=None):
        ops.adagrad_update(p, g, state["sum"], step=self.steps, lr=self.lr, lr_decay=self.lr_decay, eps=self.eps,
                           weight_decay=self.weight_decay, ws=ws)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def get(optimizer) -> Optimizer:
    """An :class:`Optimizer` from a name (default hyperparameters, as torch's) or an instance.

    >>> get("adam")
    Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False)
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        key = optimizer.strip().lower()
        if key in OPTIMIZERS:
            return OPTIMIZERS[key]()
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)} or an Optimizer")
    raise TypeError(f"optimizer must be a name or a gpunet.optim.Optimizer; received {type(optimizer).__name__}")
