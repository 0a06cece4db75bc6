"""The training step and the state it keeps between steps: :class:`Trainer` (``model.trainer``).

One step on a batch ``(x, y)`` of device arrays::

    masks  = dropout masks for the batch, from the trainer's generator (one per layer with dropout)
    pred   = forward through the layers, into the workspace of this batch size
    value, dL/dpred = loss (the combined (p - y) / n for softmax + cce and sigmoid + bce)
    grads  = backward through the layers: [dW1, db1, dW2, db2, ...], in the workspace
    hooks  = every gradient hook, in order: hook(trainer, grads) may change grads in place (an all-reduce across
             ranks, a penalty's gradient) and may return a value added to the batch loss (the penalty's) -- the
             point between backward and update
    update = optimizer.apply: clipping, then the update rule, in place on the parameters (on NumPy one call over
             the flat parameters, gradients and state: see gpunet.backend.flat)
    record = inside an epoch: the batch loss and the metrics' statistics, added up on the device

Nothing in a step reads the device from the host: ``fit`` reads the epoch's sums once, at its end
(:meth:`Trainer.end_epoch`). The arrays a step keeps (pre-activations, dropout masks, gradients, optimizer scratch)
live in the trainer's workspaces (:mod:`gpunet.backend.workspaces`): fixed per batch size and bounded, so they die
with the model; the NumPy ops write relu/tanh/linear/softmax and their gradients in place there, while other
activations' formulas still allocate temporaries. What the step returns (predictions, gradients) is only valid until
the next step.

The trainer also owns the generators (the shuffling order of every epoch, the dropout masks) and the snapshots
``fit`` rolls back to when an epoch diverges or is interrupted. ``model.save`` stores the generators' states, so a
loaded model shuffles and drops exactly as the saved one would have.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from .activations import builtin_kernel
from .backend import flat, to_numpy
from .backend.workspaces import Workspaces


@dataclass
class EpochTotals:
    """What an epoch's steps added up, read from the device once: the loss of every recorded batch (float64, in
    order), the batches' row counts, each metric's value over all recorded rows, and the metrics' statistics on the
    host (``None`` for a metric that saw no row), which data-parallel training merges across ranks."""

    batch_losses: np.ndarray
    sizes: np.ndarray
    metrics: dict
    stats: list

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.batch_losses)))

    @property
    def first_nonfinite(self) -> int | None:
        """The index of the first batch whose loss is NaN or infinite, or None."""
        bad = np.flatnonzero(~np.isfinite(self.batch_losses))
        return int(bad[0]) if bad.size else None

    @property
    def loss(self) -> float:
        """The mean loss per row over the recorded batches."""
        return float(np.dot(self.batch_losses, self.sizes) / self.sizes.sum())


@dataclass
class Snapshot:
    """Copies of everything a step changes: parameters, optimizer state and step count, generator states."""

    params: list
    optimizer_state: list | None
    optimizer_steps: int
    optimizer_owner: tuple  # the optimizer's (backend, weak model reference): whom its state belongs to
    shuffle_state: dict
    dropout_state: dict | None


class Trainer:
    """A model's training step (see the module docstring); ``model.trainer`` is made with the model.

    Args:
        model: the :class:`gpunet.Sequential` (held weakly: the trainer dies with its model).
        shuffle_seed, dropout_seed: ``numpy.random.SeedSequence`` for the shuffling and dropout generators.

    Attributes:
        loss, optimizer, metrics: what :meth:`configure` set (``fit`` configures them; ``None``/``[]`` before).
        gradient_hooks: callables ``hook(trainer, grads)`` run between backward and update, in order; each may
            change ``grads`` in place and return ``None`` or a 0-d array added to the batch loss.
        shuffle_rng: the ``numpy.random.Generator`` of the epochs' row orders.
        dropout_rng: the generator of the dropout masks (CuPy's on a GPU, NumPy's elsewhere; ``None`` without
            dropout).
        workspaces: the arrays the steps reuse (:class:`gpunet.backend.workspaces.Workspaces`).
        batch_rows: the rows of the batch the current (or last) step runs on, for hooks (in data-parallel training
            the whole global batch's, the same on every rank: a penalty divided by it counts once).
    """

    def __init__(self, model, shuffle_seed: np.random.SeedSequence, dropout_seed: np.random.SeedSequence):
        self._model = weakref.ref(model)
        self.seeds = (shuffle_seed, dropout_seed)
        self.shuffle_rng = np.random.default_rng(shuffle_seed)
        self.loss = self.optimizer = None
        self.metrics: list = []
        self.combined = False
        self.gradient_hooks: list = []
        self.mixed = None  # gpunet.precision.MixedPrecision while training in tf32/bf16/fp16 (precision.attach)
        # an fp16 loss scaler's state_dict for the next fp16 fit to go on from (a loaded file, a move, a pickle)
        self.scaler_state = None
        self.batch_rows = 0
        # (start, stop, total): the rows this process trains of a data-parallel batch of ``total`` rows, or None
        self.batch_share = None
        self._checked = None  # what step() last checked: the types, shapes and dtypes of its arrays
        self._epoch = None
        self.attach()

    def loss_scale_state(self) -> dict | None:
        """The fp16 loss scaler's ``state_dict`` the next fp16 fit goes on from (None: it starts afresh)."""
        mixed = self.mixed
        if mixed is not None and mixed.scaler is not None:
            return mixed.scaler.state_dict()
        return self.scaler_state

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this trainer no longer exists")
        return model

    def attach(self) -> None:
        """(Re)build what depends on the model's device: fresh workspaces, and the dropout generator (it goes on
        where NumPy draws the masks both before and after; a move to or from CuPy restarts it from its seed on the
        new device). The model calls this when it is built or moved."""
        model = self.model
        if getattr(self, "mixed", None) is not None:  # its low-precision copy lived on the old device
            self.scaler_state = self.loss_scale_state()
            self.mixed.detach(model)
            self.mixed = None
        self.workspaces = Workspaces(model.xp)
        old = getattr(self, "dropout_rng", None)
        self.dropout_rng = (model.backend.random_generator(self.seeds[1])
                            if any(layer.dropout for layer in model.layers) else None)
        if isinstance(old, np.random.Generator) and isinstance(self.dropout_rng, np.random.Generator):
            self.dropout_rng = old  # NumPy draws the masks before and after (a move between host namespaces)
        # the gradients as views of one flat array laid out as the flat parameters: one update call per step
        self.flat_grads, self._grad_views = None, None
        if model._flat_params is not None and model.ops.reuses_buffers:
            with model.backend.activate():
                self.flat_grads, self._grad_views = flat.empty(model.xp, [tuple(p.shape) for p in model.parameters()],
                                                               model._flat_params.dtype)
            for layer, dW, db in zip(model.layers, self._grad_views[0::2], self._grad_views[1::2]):
                self.workspaces.shared.adopt((layer, "dW"), dW)
                self.workspaces.shared.adopt((layer, "db"), db)

    # -- configuration --------------------------------------------------------------------------------------------
    def configure(self, loss, optimizer, metrics=()) -> None:
        """Train with ``loss`` (a Loss), ``optimizer`` (an Optimizer, whose state carries over) and ``metrics``
        (Metric objects, recorded per epoch). Warns (at the user's call) when the output layer and the loss look
        mismatched."""
        self.check_trainable()
        self.loss, self.optimizer, self.metrics = loss, optimizer, list(metrics)
        self.combined = self._pairing(loss)

    def check_trainable(self) -> None:
        """Refuse a model that packs an ensemble of networks for prediction (``model.ensemble_members > 1``)."""
        members = self.model.ensemble_members
        if members > 1:
            raise ValueError(f"this model packs an ensemble of {members} networks for prediction (block-diagonal "
                             f"weights): training it further would couple them; train the member networks instead")

    def _pairing(self, loss) -> bool:
        """True when the output activation and the loss combine into ``(p - y) / n``; warns on likely mistakes."""
        from .validation import warn_at_caller

        act = self.model.layers[-1].activation
        kernel = builtin_kernel(act)
        if loss.pairs_with is not None:
            if kernel == loss.pairs_with:
                return True
            warn_at_caller(f"{loss!r} expects probabilities from a {loss.pairs_with} output layer, but the last "
                           f"layer's activation is {act!r}; use from_logits=True for raw scores")
        elif loss.from_logits and kernel in ("sigmoid", "softmax"):
            warn_at_caller(f"{loss!r} applies the {kernel} itself, and the last layer already has activation "
                           f"{act.name!r}; use a linear last layer or from_logits=False")
        return False

    # -- the step -------------------------------------------------------------------------------------------------
    def step(self, x, y, w=None):
        """One training step on device arrays ``x`` ``(n, n_inputs)``, ``y`` ``(n, n_outputs)`` (targets as
        :meth:`prepare` makes them) and optional row weights ``w`` ``(n, 1)``; returns ``(pred, loss)``, the
        predictions before the update and the batch loss (0-d), both valid until the next step."""
        model = self._model()
        spec = (type(x), getattr(x, "shape", None), getattr(x, "dtype", None), type(y), getattr(y, "shape", None),
                getattr(y, "dtype", None), type(w), getattr(w, "shape", None), getattr(w, "dtype", None),
                model.backend, self.loss)
        if spec != self._checked:  # (arrays like the last step's were checked then: a tuple compare per step)
            self._check_step(model, x, y, w)
            self._checked = spec
        with model.backend.activate():
            return self._step(x, y, w)

    def _check_step(self, model, x, y, w) -> None:
        if self.loss is None:
            raise RuntimeError("configure(loss, optimizer) the trainer before its first step (fit does)")
        backend, dtype = model.backend, model.backend.dtype(model.dtype)
        n = x.shape[0] if backend.owns(x) and x.ndim == 2 else None
        for name, a, cols in (("x", x, model.n_inputs), ("y", y, model.n_outputs), ("w", w, 1)):
            if a is None and name == "w":
                continue
            if not (backend.owns(a) and a.ndim == 2 and a.dtype == dtype and tuple(a.shape)[1] == cols
                    and (n is None or a.shape[0] == n)) or not n:
                raise ValueError(f"{name} must be a 2-D {model.dtype} array of the model's namespace "
                                 f"({backend.name}) with shape ({'n > 0' if not n else n}, {cols}); received "
                                 f"{type(a).__name__} of shape {tuple(getattr(a, 'shape', ()))} and dtype "
                                 f"{getattr(a, 'dtype', None)}; trainer.prepare(X, y) makes them")

    def _step(self, x, y, w=None):
        """:meth:`step` without its checks (``fit`` checked the whole data once)."""
        ws = self.workspaces.for_rows(x.shape[0])
        if x.shape[0] == 0:  # an empty share of a data-parallel batch: no loss, but the same masks and update
            self.batch_rows = self.batch_share[2]
            self.dropout_masks(0, ws)
            pred, value, grads = None, self._model().xp.zeros((), dtype=x.dtype), self._zero_grads()
        else:
            pred = self.forward(x, ws)
            value, grads = self.backward(pred, y, w, ws)
        penalty = self.update(grads)
        if penalty is not None:
            value = value + penalty
        if self._epoch is not None:
            self._record(pred, y, value)
        return pred, value

    def grads_are_flat(self, grads) -> bool:
        """Whether ``grads`` are the views of :attr:`flat_grads` (a hook may have put other arrays in the list)."""
        views = self._grad_views
        return views is not None and all(g is v for g, v in zip(grads, views))

    def _zero_grads(self) -> list:
        model = self._model()
        if self.flat_grads is not None:
            self.flat_grads[...] = 0
            return list(self._grad_views)
        return [model.xp.zeros_like(p) for p in model.parameters()]

    def forward(self, x, ws=None):
        """Training forward (dropout on) of ``x``; ``ws``: the workspace to write into (default: the one of
        ``x``'s batch size)."""
        rows = x.shape[0]
        self.batch_rows = rows if self.batch_share is None else self.batch_share[2]
        ws = self.workspaces.for_rows(rows) if ws is None else ws
        return self._model()._forward(x, self.dropout_masks(rows, ws) if self.dropout_rng is not None else None, ws)

    def backward(self, pred, y, w=None, ws=None):
        """The loss of the last :meth:`forward`'s ``pred`` against ``y`` (rows weighted by ``w``) and its gradients
        ``[dW1, db1, ...]``; returns ``(loss, grads)``."""
        model, loss = self._model(), self.loss
        ws = self.workspaces.for_rows(pred.shape[0]) if ws is None else ws
        if w is None:  # (into the workspace on ops that reuse buffers: a captured step allocates nothing)
            value, grad = model.ops.loss_and_grad(loss, pred, y, self.combined, ws)
        elif self.combined:
            value, grad = loss.value_and_logits_grad(pred, y, model.ops)
        else:
            value, grad = loss.value_and_grad(pred, y, model.ops)
        if w is not None:  # Keras's convention: sum(w_i loss_i) / batch size, and so its gradient
            grad = grad * w
            value = loss.weighted_value(pred, y, w, model.ops)
        if self.batch_share is not None:  # this process's part of a larger batch: its share of the batch's mean
            start, stop, total = self.batch_share
            grad = grad * ((stop - start) / total)
        if self.mixed is not None and self.mixed.scaler is not None:  # fp16: backward from the scaled loss
            self.mixed.scaler.scale_grad(model.ops, grad)
        _, grads = model._backprop(grad, ws, through_last_activation=not self.combined, input_grad=False)
        return value, grads

    def update(self, grads):
        """The gradient hooks, then the optimizer (clipping, update rule) on the model's parameters. Returns the sum
        of what the hooks returned (a penalty's value, which the step adds to the batch loss), or None."""
        penalty = None
        for hook in self.gradient_hooks:
            value = hook(self, grads)
            if value is not None:
                penalty = value if penalty is None else penalty + value
        fused = self.grads_are_flat(grads)
        model, mixed = self._model(), self.mixed
        if mixed is None:
            self.optimizer.apply(model, grads, self.workspaces.shared, self.flat_grads if fused else None)
            return penalty
        scaler = mixed.scaler  # mixed precision: gpunet.precision (unscale, skip on inf, the low copy, the scale)
        if scaler is not None and scaler.unscale(model.ops, [self.flat_grads] if fused else grads):
            scaler.update(model.ops)  # (NumPy: the host saw an inf/NaN gradient and skips the update)
            return penalty
        self.optimizer.apply(model, grads, self.workspaces.shared, self.flat_grads if fused else None,
                             amp=mixed.amp, low=mixed.low_flat)
        if scaler is not None:
            scaler.update(model.ops)
        return penalty

    def dropout_masks(self, rows: int, ws=None) -> list:
        """One inverted-dropout mask ``(rows, out_features)`` per layer with dropout (``None`` for the others),
        drawn from :attr:`dropout_rng` layer by layer; into ``ws`` when given. With :attr:`batch_share`, the whole
        batch's masks are drawn and this process's rows returned."""
        model = self.model
        share = self.batch_share  # a data-parallel batch: draw the whole batch's masks (as one process would)
        drawn = rows if share is None else share[2]
        masks = []
        for layer in model.layers:
            if not layer.dropout:
                masks.append(None)
                continue
            shape = (drawn, layer.out_features)
            mask = model.ops.dropout_mask(self.dropout_rng, layer.dropout, shape, layer.W,
                                          layer._buffer(ws, "mask", shape))
            masks.append(mask if share is None else mask[share[0]:share[1], ...])
        return masks

    def prepare(self, X, y, sample_weight=None):
        """Host or device data -> the checked device arrays :meth:`step` takes: ``(x, y, w)``, ``w`` ``None``
        without ``sample_weight`` (see :meth:`gpunet.Sequential.fit` for what is accepted)."""
        if self.loss is None:
            raise RuntimeError("configure(loss, optimizer) the trainer before prepare(): the targets depend on the loss")
        model = self.model
        x, Y = model._data("X", X, "y", y, self.loss)
        return x, Y, model._row_weights(sample_weight, None, Y, self.loss)

    # -- the epoch's sums -----------------------------------------------------------------------------------------
    def begin_epoch(self, sizes) -> None:
        """Record the next ``len(sizes)`` steps (batches of ``sizes[b]`` rows): their losses and metric statistics
        stay on the device until :meth:`end_epoch`. ``sizes=None``: an epoch whose number of batches is unknown (an
        iterable of batches); the loss vector then grows as steps come."""
        model = self.model
        count = 64 if sizes is None else len(sizes)
        with model.backend.activate():
            losses = model.xp.zeros(count, dtype=model.backend.dtype(model.dtype))
        self._epoch = {"losses": losses, "sizes": np.zeros(count) if sizes is None else
                       np.asarray(sizes, dtype=np.float64), "done": 0, "stats": [None] * len(self.metrics)}

    def _record(self, pred, y, value) -> None:
        epoch = self._epoch
        b = epoch["done"]
        if b == epoch["sizes"].shape[0]:  # an epoch of unknown length: twice the room (rare, off the step's path)
            xp = self.model.xp
            epoch["losses"] = xp.concat([epoch["losses"], xp.zeros_like(epoch["losses"])])
            epoch["sizes"] = np.concatenate([epoch["sizes"], np.zeros_like(epoch["sizes"])])
        epoch["losses"][b] = value
        epoch["sizes"][b] = 0 if pred is None else pred.shape[0]
        for j, metric in enumerate(self.metrics if pred is not None else ()):  # (no rows: nothing to count)
            stats = metric.stats(pred, y)
            epoch["stats"][j] = stats if epoch["stats"][j] is None else metric.combine(epoch["stats"][j], stats)
        epoch["done"] = b + 1

    def running_loss(self) -> float:
        """The mean loss of the batches recorded so far in this epoch (a device read: call it rarely)."""
        epoch = self._epoch
        done = epoch["done"]
        if not done:
            return float("nan")
        return EpochTotals(to_numpy(epoch["losses"][:done]).astype(np.float64), epoch["sizes"][:done], {}, []).loss

    def end_epoch(self) -> EpochTotals:
        """Stop recording; the totals of the batches recorded since :meth:`begin_epoch` (one read per device array:
        the losses, each metric's statistics)."""
        epoch, self._epoch = self._epoch, None
        if self.mixed is not None and self.mixed.scaler is not None and self.optimizer is not None:
            self.optimizer.sync_steps()  # skipped fp16 steps are not counted, on the device
        done = epoch["done"]
        losses = to_numpy(epoch["losses"]).astype(np.float64)[:done]
        stats = [None if st is None else [s if isinstance(s, (int, bool)) else to_numpy(s) for s in st]
                 for st in epoch["stats"]]
        values = {metric.name: metric.result(st) for metric, st in zip(self.metrics, stats) if st is not None}
        return EpochTotals(losses, epoch["sizes"][:done], values, stats)

    def epoch_order(self, n: int):
        """The device index array of one epoch's shuffled row order, drawn from :attr:`shuffle_rng`."""
        model = self.model
        with model.backend.activate():
            return model.xp.asarray(self.shuffle_rng.permutation(n))

    # -- snapshots ------------------------------------------------------------------------------------------------
    def weights_finite(self) -> bool:
        """Whether every parameter is finite (one device read)."""
        model = self.model
        xp = model.xp
        flags = [xp.all(xp.isfinite(p)) for p in model.parameters()]
        return bool(xp.all(xp.stack(flags)))

    def snapshot(self) -> Snapshot:
        """Device copies of the parameters and the optimizer state, and the generators' states."""
        model, optimizer = self.model, self.optimizer
        xp = model.xp
        copy = lambda a: None if a is None else xp.asarray(a, copy=True)  # noqa: E731
        state = None if optimizer is None or optimizer.state is None else \
            [{k: copy(v) for k, v in s.items()} for s in optimizer.state]
        rng = self.dropout_rng
        return Snapshot([copy(p) for p in model.parameters()], state, 0 if optimizer is None else optimizer.steps,
                        (None, None) if optimizer is None else (optimizer._backend, optimizer._model),
                        self.shuffle_rng.bit_generator.state,
                        rng.bit_generator.state if isinstance(rng, np.random.Generator) else None)

    def restore(self, snapshot: Snapshot) -> None:
        """Put the model, its optimizer and the generators back as :meth:`snapshot` found them (CuPy's dropout
        generator lives on the GPU and goes on). The snapshot itself stays intact for another restore."""
        model, optimizer = self.model, self.optimizer
        xp = model.xp
        for p, saved in zip(model.parameters(), snapshot.params):
            p[...] = saved
        if optimizer is not None:
            if snapshot.optimizer_state is None:
                optimizer.reset()
            else:
                optimizer.state = [{k: None if v is None else xp.asarray(v, copy=True) for k, v in s.items()}
                                   for s in snapshot.optimizer_state]
                optimizer.steps = snapshot.optimizer_steps
                optimizer._backend, optimizer._model = snapshot.optimizer_owner  # (another model's: restarts)
        self.shuffle_rng.bit_generator.state = snapshot.shuffle_state
        if snapshot.dropout_state is not None:
            self.dropout_rng.bit_generator.state = snapshot.dropout_state
        if self.mixed is not None:
            self.mixed.refresh(model)  # the low-precision copy of the restored weights

    # -- persistence ----------------------------------------------------------------------------------------------
    def generator_states(self) -> dict:
        """``{"shuffle": state, "dropout": state or None}``: the NumPy bit generators' states (the dropout one only
        when NumPy draws the masks; CuPy's lives on the GPU and restarts from its seed)."""
        rng = self.dropout_rng
        return {"shuffle": self.shuffle_rng.bit_generator.state,
                "dropout": rng.bit_generator.state if isinstance(rng, np.random.Generator) else None}

    def set_generator_states(self, states: dict) -> None:
        """Adopt :meth:`generator_states`: each state names its bit generator (``"PCG64"``...), which is rebuilt.
        A dropout state is ignored where the masks are not drawn by NumPy."""
        self.shuffle_rng = generator_from_state(states["shuffle"])
        if states.get("dropout") is not None and isinstance(self.dropout_rng, np.random.Generator):
            self.dropout_rng = generator_from_state(states["dropout"])


def generator_from_state(state: dict) -> np.random.Generator:
    """A ``numpy.random.Generator`` whose bit generator (named by ``state["bit_generator"]``) has ``state``."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
