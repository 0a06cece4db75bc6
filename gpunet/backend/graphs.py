"""CUDA-graph captured training steps: :class:`GraphEpochs` runs ``fit``'s epochs as replays of captured steps.

One captured step does, on the device and nothing else::

    gather   x, y = rows order[counter * batch : ...] of the device-resident X, Y     (the batch counter on the device)
    step     forward, loss, backward, (loss scaling), optimizer update                 (lr and step count on the device)
    record   losses[counter] = batch loss; the metrics' counts += this batch's; counter += 1

One graph per batch shape (full batches, the last partial one), captured after a warm-up step run eagerly on the
same stream (NVRTC compiles every kernel, the optimizer state, the workspaces and cuBLAS's workspace are made), then
replayed with one ``Graph.launch`` per step. What capture needs, and where it comes from:

- static buffers: the trainer's workspaces are fixed per batch size, and inside a step the CuPy ops write every
  result into them (:class:`gpunet.backend.cuda_ops.CupyOps`); the batch is gathered into workspace buffers too;
- no host reads, syncs or allocations inside: matrix products through gpunet's own cuBLAS binding (CuPy refuses
  cuBLAS on a capturing stream, cupy/cupy issue 6290: :mod:`gpunet.backend.cublas`), the loss value and the bias
  gradient as products with a ones vector, counters in device memory; the capture runs under a private memory pool
  kept with the graph, so a stray allocation cannot hand graph-owned memory to someone else;
- scalars read at replay: the learning rate and the step count are device scalars of the optimizer
  (:class:`gpunet.optim.DeviceScalars`; schedules write them between epochs), Adam's bias corrections are computed
  on the device (``gn_step_prepare``), the fp16 loss scale too (``gn_scaler_update``);
- a graph that would read moved buffers is never replayed: its buffers' identities are checked before each launch
  (a roll-back restores the optimizer state into new arrays), and a stale graph is captured again.

Ordering: the steps run on a non-blocking stream of their own. Each epoch starts after the device finished what the
legacy stream was given (data uploads, a schedule's new learning rate) and ends by waiting for the stream, so the
epoch's one read of the losses, the finiteness check, validation and callbacks see finished work, as in eager mode.

The runtime (CuPy's ``Stream``/``Graph``/``MemoryPool``) is injectable: ``tests/fake_cuda.py`` records launches on
the host stand-in and replays them, and refuses host reads and allocations during capture.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import activations

WARMUP_STEPS = 1  # eager steps per batch shape before capture (the first compiles and allocates everything)


class CupyRuntime:
    """CuPy's stream-capture API, as :class:`GraphEpochs` uses it."""

    def __init__(self):
        import cupy

        self.cupy = cupy

    def stream(self):
        return self.cupy.cuda.Stream(non_blocking=True)

    def memory_pool(self):
        return self.cupy.cuda.MemoryPool()

    @contextlib.contextmanager
    def on(self, stream):
        with stream:
            yield

    @contextlib.contextmanager
    def capture(self, stream, pool, out: list):
        """Capture what runs inside into ``out[0]`` (a ``cupy.cuda.Graph``), allocating from ``pool``."""
        with stream, self.cupy.cuda.using_allocator(pool.malloc):
            stream.begin_capture()
            try:
                yield
            finally:
                out.append(stream.end_capture())

    def launch(self, graph, stream) -> None:
        graph.launch(stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def device_synchronize(self) -> None:
        self.cupy.cuda.Device().synchronize()


def runtime_for(model):
    """The capture runtime for ``model``'s backend: CuPy's on CuPy, else None (graphs never apply)."""
    if model.backend.name != "cupy":
        return None
    return CupyRuntime()


class GraphUnavailable(Exception):
    """Why a fit cannot run as captured steps (the message lists every reason)."""


def reasons(model, source, callbacks, hooks) -> list[str]:
    """Everything that keeps this fit from running as captured steps (empty: graphs apply)."""
    from .. import callbacks as callbacks_mod
    from .. import optim
    from ..sources import ArraySource
    from .cuda_ops import CupyOps, _kernel, _loss_plan

    trainer = model.trainer
    why = []
    if not isinstance(model.ops, CupyOps):
        why.append(f"the model computes with {model.ops!r} (fused=False or a custom ops object), which allocates "
                   f"per step")
        return why
    if model._flat_params is None or trainer.flat_grads is None:
        why.append("the parameters are not views of one flat array")
    if not isinstance(source, ArraySource):
        why.append(f"the data source {type(source).__name__} has no device-side batch gather")
    elif source.arrays[2] is not None:
        why.append("sample_weight / class_weight (weighted rows) have no capturable loss")
    for cb in callbacks:
        if type(cb).on_batch_end is not callbacks_mod.Callback.on_batch_end and not (
                isinstance(cb, callbacks_mod.ProgressBar) and cb.verbose != 1):
            why.append(f"{type(cb).__name__} runs Python after every batch (on_batch_end)"
                       + (" (the progress bar of verbose=1; verbose=2 prints per epoch)"
                          if isinstance(cb, callbacks_mod.ProgressBar) else ""))
    if hooks:
        why.append(f"{len(hooks)} gradient hook(s) run Python between backward and update")
    if any(layer.dropout for layer in model.layers):
        why.append("dropout masks are drawn by CuPy's generator per call (not verified capturable yet)")
    for i, layer in enumerate(model.layers):
        act = layer.activation
        if _kernel(act) is None and not (activations.builtin_kernel(act) == "softmax"):
            why.append(f"layers[{i}]'s activation {act!r} has no kernel (custom activations run Python)")
    optimizer = trainer.optimizer
    if type(optimizer) not in (optim.SGD, optim.Adam, optim.AdamW):
        why.append(f"{type(optimizer).__name__} has no capturable update (SGD, Adam and AdamW have)")
    elif any(getattr(optimizer, k) is not None for k in optim.CLIPPING):
        why.append("gradient clipping is not capturable yet")
    loss = trainer.loss
    probe = _Shape((1, model.n_outputs))
    if _loss_plan(loss, probe, trainer.combined) is None:
        why.append(f"the loss {loss!r} has no kernel for this output layer")
    for metric in trainer.metrics:
        if metric_recorder(metric) is None:
            why.append(f"the metric {metric.name!r} has no capturable statistics (accuracy has)")
    return why


class _Shape:
    def __init__(self, shape):
        self.shape = shape


def metric_recorder(metric):
    """A capturable recorder of ``metric``'s epoch statistics, or None (accuracy only, for now)."""
    from .. import metrics

    if type(metric) is metrics.Accuracy:
        return _AccuracyRecorder(metric)
    return None


class _AccuracyRecorder:
    """Accuracy's statistics ``(correct, count)`` summed on the device: a kernel marks each row (multi-class:
    argmax agreement) or element (binary / multi-label) correct in float64, a product with ones adds them into a
    float64 accumulator (beta = 1); the count is known on the host from the batch shapes."""

    def __init__(self, metric):
        self.metric = metric

    def columns(self, pred_shape) -> bool:
        return bool(self.metric.binary or (self.metric.binary is None and pred_shape[1] == 1))

    def count(self, rows: int, outputs: int) -> int:
        return rows * outputs if self.columns((rows, outputs)) else rows

    def record(self, ops, pred, y, ws, total) -> None:
        ops.accuracy_into(pred, y, self.metric.threshold, self.columns(pred.shape), ws, total)


class GraphEpochs:
    """Epochs of captured steps for one ``fit`` (see the module docstring). ``training.run`` calls
    :meth:`begin_epoch` (which returns ``step(b)``), then :meth:`end_epoch` (the epoch's totals, as
    :meth:`gpunet.trainer.Trainer.end_epoch` returns them)."""

    def __init__(self, model, source, runtime, warmup: int = WARMUP_STEPS):
        self.model, self.source, self.runtime, self.warmup = model, source, runtime, warmup
        trainer = model.trainer
        xp = model.xp
        self.ops = model.ops
        self.stream = runtime.stream()
        X, Y, _ = source.arrays
        n, sizes = source.n, source.sizes
        dtype = model.backend.dtype(model.dtype)
        with model.backend.activate(), runtime.on(self.stream):
            self.order = xp.asarray(np.arange(n, dtype=np.int64))
            self.counter = xp.zeros(1, dtype=xp.int32)
            self.losses = xp.zeros(len(sizes), dtype=dtype)
            self.recorders = [metric_recorder(m) for m in trainer.metrics]
            self.totals = [xp.zeros((1, 1), dtype=xp.float64) for _ in self.recorders]
        # the gather kernel reads rows by pointer arithmetic: C-contiguous copies of strided user arrays (once per fit)
        with model.backend.activate():
            self.X, self.Y = (a if a.flags.c_contiguous else a.copy(order="C") for a in (X, Y))
        self.graphs: dict = {}  # rows -> {"graph", "pool", "key", "eager"}
        self.launches = 0  # replays, for tests and benchmarks
        self.captures = 0
        self.failed = None  # why a capture failed: the fit's remaining steps are eager
        self._done = 0
        self._recording = False

    # -- the captured function ------------------------------------------------------------------------------------
    def _run_step(self, rows: int) -> None:
        """Gather the next batch, step, record: what a graph holds (also run eagerly as warm-up)."""
        model, trainer, ops = self.model, self.model.trainer, self.ops
        ws = trainer.workspaces.for_rows(rows)
        x = ws.array(("batch", "x"), (rows, model.n_inputs), self.X.dtype)
        y = ws.array(("batch", "y"), (rows, model.n_outputs), self.Y.dtype)
        ops.gather(self.X, self.order, self.counter, self.source.batch, x)
        ops.gather(self.Y, self.order, self.counter, self.source.batch, y)
        pred = trainer.forward(x, ws)
        value, grads = trainer.backward(pred, y, None, ws)
        trainer.update(grads)
        for recorder, total in zip(self.recorders, self.totals):
            recorder.record(ops, pred, y, ws, total)
        ops.record(self.losses, self.counter, value, 0)

    def _key(self) -> tuple:
        """The objects whose buffers a graph captured (held, so identity cannot be reused): when any differs now,
        the graph would read or write stale memory and is captured again."""
        model = self.model
        optimizer, mixed = model.trainer.optimizer, getattr(model.trainer, "mixed", None)
        return (model._flat_params, model.trainer.flat_grads, optimizer, optimizer._flat, optimizer._dev,
                getattr(optimizer, "state", None), *(() if mixed is None else mixed.key()),
                *(layer.W for layer in model.layers))

    def _same(self, a: tuple, b: tuple) -> bool:
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))

    def step(self, b: int) -> None:
        rows = self.source.sizes[b]
        runtime, stream = self.runtime, self.stream
        if not self._recording:  # a roll-back's replay: after restores on the legacy stream, and read right after
            runtime.device_synchronize()
        with self.model.backend.activate(), runtime.on(stream):
            if b != self._done:  # replays from the epoch's start (roll-back): the device counter follows
                self.counter[...] = b
            if self.failed is not None:
                self._run_step(rows)
                self._done = b + 1
                return
            entry = self.graphs.get(rows)
            if entry is not None and not self._same(entry["key"], self._key()):
                entry = self.graphs[rows] = None
            if entry is None or entry["eager"] < self.warmup:
                if entry is None:
                    entry = self.graphs[rows] = {"graph": None, "pool": None, "key": None, "eager": 0}
                self._run_step(rows)
                entry["eager"] += 1
                entry["key"] = self._key()
            else:
                if entry["graph"] is None:
                    out, pool = [], runtime.memory_pool()
                    try:
                        with runtime.capture(stream, pool, out):
                            self._run_step(rows)
                    except Exception as exc:  # noqa: BLE001  (CUDA refused something: go on eagerly, and say so)
                        self._capture_failed(exc)
                        self._run_step(rows)
                        self._done = b + 1
                        return
                    entry["graph"], entry["pool"] = out[0], pool
                    entry["key"] = self._key()
                    self.captures += 1
                runtime.launch(entry["graph"], stream)
                self.launches += 1
        self._done = b + 1
        if not self._recording:  # (and the host's step count follows the device's, as end_epoch makes it)
            runtime.synchronize(stream)
            self.model.trainer.optimizer.sync_steps()

    # -- epochs ---------------------------------------------------------------------------------------------------
    def begin_epoch(self):
        """Start recording an epoch: the row order into the fixed order buffer, counters and sums zeroed; returns
        ``step(b)``."""
        model, trainer = self.model, self.model.trainer
        runtime = self.runtime
        source = self.source
        order = trainer.epoch_order(source.n) if source.shuffle and source.batch < source.n else None
        runtime.device_synchronize()  # uploads and a schedule's lr (legacy stream) before this stream's steps
        with model.backend.activate(), runtime.on(self.stream):
            if order is not None:
                self.order[...] = order
            self.counter[...] = 0
            self.losses[...] = 0
            for total in self.totals:
                total[...] = 0
        if getattr(trainer, "mixed", None) is not None:
            trainer.mixed.refresh(model)
        self._done, self._recording = 0, True
        return self.step

    def _capture_failed(self, exc) -> None:
        """A capture raised: warn once, and run the rest of the fit eagerly (the failed capture ran nothing, so
        the step runs now; the host's step count, advanced by the captured Python, is read back)."""
        from ..validation import warn_at_caller

        self.failed = f"{type(exc).__name__}: {exc}"
        self.model.trainer.optimizer.sync_steps()
        warn_at_caller(f"capturing the training step as a CUDA graph failed ({self.failed}); the fit goes on with "
                       f"eager steps", GraphFallbackWarning)

    def interrupted(self) -> None:
        """Wait for the stream after an interrupt (before a restore on the legacy stream)."""
        self.runtime.synchronize(self.stream)
        self._recording = False

    def end_epoch(self):
        """Wait for the stream; the epoch's totals (one read of the losses, one per metric)."""
        from ..backend import to_numpy
        from ..trainer import EpochTotals

        self.runtime.synchronize(self.stream)
        self._recording = False
        done = self._done
        losses = to_numpy(self.losses).astype(np.float64)[:done]
        sizes = np.asarray(self.source.sizes, dtype=np.float64)[:done]
        values, stats = {}, []
        outputs = self.model.n_outputs
        for recorder, total in zip(self.recorders, self.totals):
            count = sum(recorder.count(int(r), outputs) for r in sizes)
            stats.append([to_numpy(total)[0, 0], count])
            values[recorder.metric.name] = recorder.metric.result(stats[-1])
        optimizer = self.model.trainer.optimizer
        optimizer.sync_steps()
        return EpochTotals(losses, sizes, values, stats)


def plan(model, source, callbacks, graph):
    """``GraphEpochs`` for this fit, or None for eager steps. ``graph``: ``"auto"`` (graphs where they apply; on
    CuPy a warning says once why not), ``True`` (a ValueError naming every reason where they cannot), ``False``."""
    from ..validation import warn_at_caller

    if graph is False:
        return None
    runtime = runtime_for(model)
    if runtime is None:
        if graph is True:
            raise ValueError(f"graph=True needs CUDA graphs, which only the CuPy backend has; this model is on "
                             f"{model.backend.name}")
        return None
    why = reasons(model, source, callbacks, model.trainer.gradient_hooks)
    if why:
        text = "; ".join(why)
        if graph is True:
            raise ValueError(f"graph=True, but this fit cannot run as captured CUDA graphs: {text}")
        warn_at_caller(f"fit(graph='auto') runs eager steps, not CUDA graphs: {text}", GraphFallbackWarning)
        return None
    return GraphEpochs(model, source, runtime)


class GraphFallbackWarning(UserWarning):
    """``fit(graph="auto")`` on a GPU runs eager steps, and says why."""
