"""``Sequential``: a stack of dense layers with forward, backward, fit, predict and evaluate."""

from __future__ import annotations

import logging
import warnings
import weakref

import numpy as np

from . import callbacks as callbacks_mod
from . import layers as layers_mod
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optim as optim_mod
from . import sources, training, validation
from .backend import DTYPES, flat, fused_default, get_backend, ops_for, to_numpy
from .callbacks import History
from .trainer import Trainer

logger = logging.getLogger("gpunet")


class Sequential:
    """A feed-forward network: ``layers[0]`` to ``layers[-1]``, each a :class:`gpunet.Dense`.

    Args:
        layers: Dense layers whose sizes chain (``out_features`` of one is ``in_features`` of the next).
        device: ``"cpu"`` (NumPy), ``"cuda"``/``"cuda:N"`` (CuPy), ``"auto"`` (CUDA if CuPy sees a GPU, else the
            CPU; ``model.device`` says which), or an Array API namespace module such as ``array_api_strict``.
        dtype: ``"float32"`` or ``"float64"``.
        seed: seeds the initial weights (drawn on the host, then moved: the same seed gives the same weights on
            every device) and the shuffling in ``fit``. ``None`` draws fresh entropy.
        fused: use the backend's specialised steps (NumPy in-place ops, CuPy's fused CUDA kernels); ``False`` runs
            the plain Array-API reference on any device, for comparison. ``None``: on unless ``GPUNET_FUSED=0``.
        precision: the training steps' precision, ``"float32"``, ``"tf32"``, ``"bf16"`` or ``"fp16"`` (matrix
            products in it with float32 accumulation, float32 master weights; fp16 with dynamic loss scaling): see
            :mod:`gpunet.precision`. ``fit(precision=...)`` overrides it for one fit.

    >>> import gpunet as gn
    >>> model = gn.Sequential([gn.Dense(2, 3, "sigmoid"), gn.Dense(3, 1, "sigmoid")], seed=0)
    >>> model.predict([[0.0, 1.0]]).shape
    (1, 1)
    """

    def __init__(self, layers, device="cpu", dtype: str = "float32", seed: int | None = 0, fused: bool | None = None,
                 precision: str = "float32"):
        if isinstance(layers, layers_mod.Dense):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError(f"layers must be a non-empty list of gpunet.Dense; received {layers!r}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, layers_mod.Dense):
                raise TypeError(f"layers[{i}] must be a gpunet.Dense; received {type(layer).__name__}")
        for i in range(1, len(layers)):
            if layers[i].in_features != layers[i - 1].out_features:
                raise ValueError(
                    f"layer sizes do not chain: layers[{i - 1}] has out_features={layers[i - 1].out_features} "
                    f"but layers[{i}] has in_features={layers[i].in_features}"
                )
        if layers[-1].dropout:
            raise ValueError(f"the output layer cannot have dropout; received {layers[-1]!r} (dropout belongs to "
                             f"hidden layers: it drops a layer's outputs on their way to the next layer)")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("layers must be distinct Dense objects (the same object appears twice)")
        for i, layer in enumerate(layers):
            if layer.W is not None:
                raise ValueError(f"layers[{i}] already belongs to another model; give each model new Dense layers")
        self.dtype = validation.one_of("dtype", dtype, DTYPES)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be a non-negative integer or None; received {type(seed).__name__}: {seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None; received seed={seed!r}")
        self.seed = seed
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be True, False or None; received {fused!r}")
        self.fused = fused_default() if fused is None else fused
        from . import precision as precision_mod

        self.precision = precision_mod.check(precision)
        self.layers = list(layers)
        self.backend = get_backend(device)
        if device == "auto":
            logger.info("device='auto' resolved to %s", self.backend.label)
        init_seed, shuffle_seed, dropout_seed = np.random.SeedSequence(seed).spawn(3)
        rng = np.random.default_rng(init_seed)
        host = [layer.initial_weights(rng) for layer in self.layers]
        self._adopt([w for pair in host for w in pair])
        # the training step, its generators and workspaces, and the last fit's loss, optimizer and metrics
        self.trainer = Trainer(self, shuffle_seed, dropout_seed)
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        # > 1: the model packs that many networks side by side for prediction (gpunet.recipe.pack); training it
        # would couple them through its zero blocks, so the trainer refuses
        self.ensemble_members = 1
        # the column names of the DataFrame fit last saw (None: fitted on arrays); later DataFrames are matched by name
        self.feature_names: list[str] | None = None

    # the loss, metrics and optimizer of the last fit (the trainer's): defaults for the next fit and for evaluate();
    # save() stores them and load() restores them, so training resumes where it stopped
    loss = property(lambda self: self.trainer.loss, lambda self, v: setattr(self.trainer, "loss", v))
    optimizer = property(lambda self: self.trainer.optimizer, lambda self, v: setattr(self.trainer, "optimizer", v))
    metrics = property(lambda self: self.trainer.metrics, lambda self, v: setattr(self.trainer, "metrics", list(v)))

    # -- properties -----------------------------------------------------------------------------------------------
    @property
    def xp(self):
        return self.backend.xp

    @property
    def ops(self):
        """The steps this model's backend runs (reference, NumPy in-place or fused CUDA kernels)."""
        return self.layers[0].ops

    @property
    def device(self) -> str:
        """Where the weights live: ``"cpu"``, ``"cuda:0"``, or the namespace's name."""
        return self.backend.label

    @property
    def n_inputs(self) -> int:
        return self.layers[0].in_features

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].out_features

    def count_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.layers))
        return f"Sequential([{inner}], device={self.device!r}, dtype={self.dtype!r})"

    def summary(self, print_fn=None) -> None:
        """Prints a table of layers, output shapes and parameter counts, as Keras's ``summary``: through
        ``print_fn(text)`` when given (``lines.append``, a logger's ``info``), else ``print``."""
        lines = [f"{'layer':<28}{'output':<16}{'params':>10}"]
        for i, layer in enumerate(self.layers):
            drop = f", dropout={layer.dropout:g}" if layer.dropout else ""
            lines.append(f"{f'{i}: Dense({layer.activation.name}{drop})':<28}{f'(n, {layer.out_features})':<16}"
                         f"{layer.n_params:>10,}")
        lines.append(f"total parameters: {self.count_params():,} ({self.dtype}, on {self.device})")
        (print_fn or print)("\n".join(lines))

    # -- parameters -----------------------------------------------------------------------------------------------
    def parameters(self) -> list:
        """``[W1, b1, W2, b2, ...]`` as arrays of the model's namespace (updated in place by optimizers; on NumPy and
        CuPy views of one flat array)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self) -> list:
        """``[dW1, db1, ...]`` from the last :meth:`backward` (``None`` before the first)."""
        return [g for layer in self.layers for g in layer.gradients()]

    def get_weights(self) -> list[np.ndarray]:
        """Host NumPy copies ``[W1, b1, W2, b2, ...]``."""
        return [np.array(to_numpy(p), copy=True) for p in self.parameters()]

    def set_weights(self, weights) -> None:
        """Overwrite the parameters from ``[W1, b1, ...]`` (any host arrays); all are checked before any is set."""
        expected = [(layer.in_features, layer.out_features) for layer in self.layers]
        expected = [s for shape in expected for s in (shape, (shape[1],))]
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"weights must be a list of arrays [W1, b1, ...]; received {type(weights).__name__}")
        if len(weights) != len(expected):
            raise ValueError(f"weights must hold {len(expected)} arrays [W1, b1, ...]; received {len(weights)}")
        host = []
        for i, (w, shape) in enumerate(zip(weights, expected)):
            name = f"weights[{i}]"
            try:
                w = np.asarray(to_numpy(w))
            except (ValueError, TypeError) as exc:
                raise TypeError(f"{name} must be a numeric array of shape {shape}; could not convert it ({exc})") \
                    from None
            validation.numeric(name, w)
            if w.shape != shape:
                raise ValueError(f"{name} must have shape {shape}; received {w.shape}")
            host.append(validation.within_dtype(name, validation.finite(name, w), self.dtype))
        with self.backend.activate():
            for p, w in zip(self.parameters(), host):
                p[...] = self.backend.from_host(w, self.dtype)

    def to(self, device) -> "Sequential":
        """Move the parameters to another device (see the class docstring); returns ``self``."""
        backend = get_backend(device)
        host = [to_numpy(p) for p in self.parameters()]
        self.backend = backend
        self._adopt(host)
        self.trainer.attach()  # workspaces on the new device; the dropout stream restarts from its seed there
        return self

    def save(self, path, optimizer=None) -> None:
        """Write the model to a ``.safetensors`` file, atomically; :func:`gpunet.load` reads it back (see
        :func:`gpunet.io.save`: ``optimizer=None`` stores the last fit's optimizer, ``False`` none)."""
        from . import io

        io.save(self, path, optimizer=optimizer)

    def export(self, path, format: str = "onnx") -> None:
        """Write the network as an ONNX file (Keras 3's spelling), for onnxruntime or any ONNX runtime.

        The graph takes ``"features"`` ``(batch, n_inputs)`` of the model's dtype (``batch`` is dynamic) and gives
        ``model.predict``'s ``(batch, n_outputs)``, named ``"probabilities"`` (softmax or sigmoid output),
        ``"logits"`` (linear output trained with a ``from_logits=True`` loss) or ``"outputs"``. Opset 17; every
        built-in activation; gpunet's version and the training metadata in the model's properties. See
        :mod:`gpunet.export` (and its ``preprocessing=True`` for models of ``gpunet train``).

        Raises TypeError for a layer with a custom activation (naming the layer), ValueError for a format other
        than ``"onnx"``, FileNotFoundError for a missing folder, ImportError without ``pip install 'gpunet[onnx]'``.

        Example (the doctest of :mod:`gpunet.export` runs one)::

            model.export("model.onnx")
            session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
            proba = session.run(None, {"features": X.astype("float32")})[0]   # = model.predict(X)
        """
        from . import export

        export.export(self, path, format)

    def __getstate__(self) -> dict:
        """Pickle (and ``copy.deepcopy``) the model as it is: its layers (custom activations included) with host
        copies of the weights, any values (NaN and infinity too), the last fit's loss, metrics and optimizer (its
        state on the host), the generators' states, an fp16 fit's loss scale, ``metadata``, and the device to
        rebuild it on."""
        state = {k: v for k, v in vars(self).items() if k not in ("backend", "trainer")}
        trainer = self.trainer
        state["device"] = self.device if self.backend.name in ("numpy", "cupy") else self.backend.xp.__name__
        optimizer = trainer.optimizer
        state["trainer"] = {"loss": trainer.loss, "optimizer": optimizer, "metrics": trainer.metrics,
                            "generators": trainer.generator_states(), "seeds": trainer.seeds,
                            "owns_state": optimizer is not None and optimizer.owns_state(self),
                            "scaler_state": trainer.loss_scale_state()}
        state.pop("_flat_params", None)  # the parameters' flat buffer: rebuilt from the layers' weights
        return state

    def __setstate__(self, state: dict) -> None:
        """Rebuild on the pickled device, or on the CPU (with a warning) where that device is not usable here."""
        state = dict(state)
        if "gpunet_bytes" in state:  # a pickle of gpunet 0.1, which went through the file format
            from . import io

            state["gpunet_bytes"] = io.from_bytes(state["gpunet_bytes"], self._pickled_backend(state["device"]),
                                                  "<pickle>")
            self.__dict__.update(state.pop("gpunet_bytes").__dict__)
            self.trainer._model = weakref.ref(self)
            if self.optimizer is not None and self.optimizer.state is not None:
                self.optimizer._model = weakref.ref(self)
            return
        device, saved = state.pop("device"), state.pop("trainer")
        self.__dict__.update(state)
        self.backend = self._pickled_backend(device)
        self._adopt([w for layer in self.layers for w in (layer.W, layer.b)])
        trainer = self.trainer = Trainer(self, *saved["seeds"])
        trainer.set_generator_states(saved["generators"])
        trainer.loss, trainer.metrics, trainer.optimizer = saved["loss"], saved["metrics"], saved["optimizer"]
        trainer.scaler_state = saved.get("scaler_state")  # (older pickles have none)
        if trainer.optimizer is not None and saved["owns_state"]:
            trainer.optimizer.attach(self)  # its host state onto this model's device, bound to this model
        elif trainer.optimizer is not None:
            trainer.optimizer.reset()  # another model's state: this copy's next step starts afresh, as the original

    @staticmethod
    def _pickled_backend(device: str):
        """The backend of a pickled model's device, or the CPU (with a warning) where it is not usable here."""
        import importlib

        try:
            if not (device == "cpu" or device.startswith("cuda")):
                device = importlib.import_module(device)
            return get_backend(device)
        except (ImportError, ValueError) as exc:
            warnings.warn(f"gpunet: the pickled model's device {device!r} is not usable here ({exc}); loading it "
                          f"on the CPU", stacklevel=3)
            return get_backend("cpu")

    def _adopt(self, host_weights: list[np.ndarray]) -> None:
        """Build the layers on this model's backend from host ``[W1, b1, ...]``: on NumPy and CuPy the parameters are
        views of one flat array (``_flat_params``; see :mod:`gpunet.backend.flat`), elsewhere separate arrays."""
        arrays = [self.backend.from_host(w, self.dtype) for w in host_weights]
        self._flat_params = None
        if flat.supports_views(self.backend):
            with self.backend.activate():
                self._flat_params, arrays = flat.gather(self.xp, arrays, self.backend.dtype(self.dtype))
        ops = ops_for(self.xp, self.fused)
        for i, layer in enumerate(self.layers):
            layer.build(ops, arrays[2 * i], arrays[2 * i + 1])

    # -- forward and backward -------------------------------------------------------------------------------------
    def forward(self, x, training: bool = False):
        """``(n, n_inputs) -> (n, n_outputs)`` for an array of the model's namespace (a CuPy array on another GPU is
        copied to the model's); keeps what backward needs. ``training=True`` applies the layers' dropout, with
        masks from the trainer's generator (``fit`` and ``train_on_batch`` do). The output is a new array."""
        if not self.backend.owns(x):
            raise TypeError(f"x must be an array of the model's namespace ({self.backend.name}); use predict() "
                            f"for host data")
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"x must have shape (n, {self.n_inputs}); received {tuple(x.shape)}")
        if not isinstance(training, bool):
            raise TypeError(f"training must be True or False; received {training!r}")
        with self.backend.activate():
            masks = self.trainer.dropout_masks(x.shape[0]) if training else None
            return self._forward(self.backend.cast(x, self.dtype), masks)

    __call__ = forward

    def backward(self, grad_out):
        """Backpropagate ``dL/d(output)`` (shape of the last forward's output): sets every layer's ``dW``/``db``
        (:meth:`gradients`) and returns ``dL/dx``. The gradients are new arrays that no later call overwrites."""
        cache = self.layers[-1]._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward() first")
        if not self.backend.owns(grad_out) or tuple(grad_out.shape) != tuple(cache[2].shape):
            raise ValueError(f"grad_out must be an array of the model's namespace with shape "
                             f"{tuple(cache[2].shape)}; received {type(grad_out).__name__} of shape "
                             f"{tuple(getattr(grad_out, 'shape', ()))}")
        with self.backend.activate():  # a copy, on the model's GPU: backward may overwrite the gradient it is given
            grad = self.xp.asarray(grad_out, copy=True)
            dx, grads = self._backprop(grad, None, through_last_activation=True, input_grad=True)
        for i, layer in enumerate(self.layers):
            layer.dW, layer.db = grads[2 * i], grads[2 * i + 1]
        return dx

    def _forward(self, x, masks=None, ws=None):
        """Through every layer; ``masks``: one dropout mask or None per layer (None: no dropout anywhere); ``ws``:
        the training step's workspace, or None for new arrays."""
        for i, layer in enumerate(self.layers):
            x = layer.forward(x, ws, None if masks is None else masks[i])
        return x

    def _backprop(self, g, ws, *, through_last_activation: bool, input_grad: bool):
        """The chain rule from ``g = dL/d(output)`` (or ``dL/dz`` of the last layer without
        ``through_last_activation``) through the last forward: ``(dL/dx or None, [dW1, db1, ...])``."""
        last = len(self.layers) - 1
        grads = [None] * (2 * len(self.layers))
        for i in range(last, -1, -1):
            g, grads[2 * i], grads[2 * i + 1] = self.layers[i].backward(
                g, ws, input_grad=input_grad or i > 0, through_activation=through_last_activation or i < last)
        return g, grads

    # -- training -------------------------------------------------------------------------------------------------
    def fit(self, X, y=None, loss=None, optimizer=None, epochs: int = 1, batch_size: int | None = 32,
            shuffle: bool = True, validation_data=None, validation_split: float | None = None, metrics=None,
            verbose: int = 0, callbacks=None, sample_weight=None, class_weight=None,
            initial_epoch: int = 0, distributed=None, sharded: bool = False, graph="auto",
            precision: str | None = None) -> History:
        """Train by gradient descent on ``(X, y)``; returns a :class:`gpunet.callbacks.History`.

        Args:
            X: ``(n, n_inputs)`` features: host data (NumPy, lists) is moved to the model's device once, here;
                arrays of the model's own namespace are used in place (a CuPy array on another GPU is copied to the
                model's, once). Arrays of another library are refused. A pandas or polars DataFrame of numeric
                columns is converted once; its column names become ``model.feature_names`` (saved with the model),
                and later DataFrames (``predict``, ``evaluate``, ``validation_data``) are matched to them by name.
                Data bigger than memory streams (:mod:`gpunet.sources`): a ``numpy.memmap`` (always streamed, never
                copied whole), a :class:`~gpunet.sources.ArrayStream`, :class:`~gpunet.sources.ParquetStream` or
                :class:`~gpunet.sources.BatchStream`, or an iterable of ``(x, y[, sample_weight])`` batches (a list
                of such tuples, a generator function, a PyDataset-like object) given without ``y``.
            y: targets, see :meth:`gpunet.losses.Loss.prepare_target` (cce also takes class indices); None when
                ``X`` carries them (a streamed data set, batches).
            loss: a name (``"mse"``, ``"mae"``, ``"huber"``, ``"bce"``, ``"cce"``) or a Loss; ``None``: the last
                fit's loss, else ``"mse"``.
            optimizer: a name (``"sgd"``, ``"adam"``, ...: a new optimizer with torch's defaults, as a new
                ``torch.optim`` object; it warns when it replaces one that has taken steps) or an Optimizer, whose
                state carries over between fits; ``None``: the last fit's optimizer (also restored by
                :func:`gpunet.load`), else ``SGD()``.
            epochs: the index of the epoch to train up to (Keras's meaning): ``epochs - initial_epoch`` passes over
                the data.
            batch_size: ``None`` = full-batch gradient descent, ``1`` = stochastic; the last, partial batch is used.
            shuffle: reshuffle every epoch with the model's seeded generator; ``False`` keeps the order. Streamed
                data shuffles as :mod:`gpunet.sources` says (memmaps: the same permutation as in memory).
            validation_data: ``(X_val, y_val)`` or ``(X_val, y_val, val_sample_weight)`` (Keras's) evaluated after
                each epoch (``val_loss``, weighted as the training loss; ``val_<metric>``, unweighted); memmaps and
                streamed data sets are evaluated in batches.
            validation_split: instead of ``validation_data``, hold out this fraction of ``(X, y)`` (with their
                sample weights; ``class_weight`` weighs training only, as in Keras): stratified by class for cce and
                single-output bce, drawn from the model's seed.
            metrics: names or Metric objects (``"accuracy"``, ``"mse"``, ``"mae"``, ``"r2"``).
            verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
            callbacks: :mod:`gpunet.callbacks` objects (EarlyStopping, ModelCheckpoint, schedules...). A
                :class:`~gpunet.callbacks.TerminateOnNaN` is always active: a diverging fit raises
                :class:`~gpunet.callbacks.NonFiniteLossError` and keeps the last finite weights.
            sample_weight: ``(n,)`` non-negative weights of the rows: the batch loss becomes
                ``sum(w_i loss_i) / batch size`` (Keras's convention), and so does its gradient.
            class_weight: ``{class index: weight}`` for cce / single-output bce, multiplied into ``sample_weight``.
                Validation losses and metrics are unweighted.
            initial_epoch: the epoch to start from (to resume a previous fit: History, schedules and checkpoint
                names count epochs from there).
            distributed: a :class:`gpunet.distributed.World` (``gn.distributed.init()``): data-parallel training
                over its ranks, equal to one process training on the same data (``batch_size`` is the global
                batch; see :mod:`gpunet.distributed`). A world of one trains as usual.
            sharded: with ``distributed``, each rank passes only its own rows (a shard) instead of the whole data.
            graph: run the steps as replays of CUDA graphs (:mod:`gpunet.backend.graphs`): ``"auto"`` where they
                apply (CuPy; elsewhere never, silently; on CuPy a warning says once why not, e.g. a per-batch
                callback), ``True`` (a ValueError naming every reason where they cannot), ``False`` (eager steps).
            precision: this fit's precision (``None``: ``model.precision``): ``"float32"``, ``"tf32"``, ``"bf16"``,
                ``"fp16"`` (see :mod:`gpunet.precision`).

        The loss and metrics are accumulated on the device and read once per epoch. Ctrl-C (KeyboardInterrupt)
        ends the fit cleanly: it returns the History of the finished epochs (``history.interrupted`` is True) and
        warns which weights the model keeps, those of its last finished step (or, where the interrupt could only
        arrive as an exception, of its last finished epoch).
        """
        from . import distributed as distributed_mod

        if distributed is not None and not isinstance(distributed, distributed_mod.World):
            raise TypeError(f"distributed must be a gpunet.distributed.World (gn.distributed.init()) or None; "
                            f"received {type(distributed).__name__}")
        if not isinstance(sharded, bool) or (sharded and distributed is None):
            raise ValueError(f"sharded must be True or False, and True only with distributed=...; received "
                             f"sharded={sharded!r}")
        world = distributed if distributed is not None and distributed.size > 1 else None
        if world is None:
            return self._fit(X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, validation_split,
                             metrics, verbose, callbacks, sample_weight, class_weight, initial_epoch, None, graph,
                             precision)
        parallel = distributed_mod.DataParallel(world, self, sharded)
        try:  # a rank failing alone would leave the others waiting in a collective: the job ends instead
            return self._fit(X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, validation_split,
                             metrics, verbose, callbacks, sample_weight, class_weight, initial_epoch, parallel, graph,
                             precision)
        except callbacks_mod.NonFiniteLossError:  # decided on every rank alike: raised on every rank
            raise
        except BaseException as exc:
            if parallel.refuse(exc):  # refused before training, agreed by every rank: raised on every rank
                raise
            distributed_mod.abort_on_failure(world, exc)
            raise

    def _fit(self, X, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, validation_split, metrics,
             verbose, callbacks, sample_weight, class_weight, initial_epoch, parallel, graph, precision) -> History:
        trainer = self.trainer
        trainer.check_trainable()  # before anything changes
        before = (trainer.loss, trainer.optimizer, list(trainer.metrics), trainer.combined, self.feature_names,
                  trainer.shuffle_rng.bit_generator.state)

        def undo():  # a refused fit leaves the model as it was
            (trainer.loss, trainer.optimizer, trainer.metrics, trainer.combined, self.feature_names,
             trainer.shuffle_rng.bit_generator.state) = before

        if parallel is not None:
            parallel.undo = undo
            parallel.sync_generators()  # (validation_split may draw from the shuffling generator: the same rows)
        loss = losses_mod.get(loss if loss is not None else self.loss or "mse")
        previous, named = self.optimizer, isinstance(optimizer, str)
        optimizer = optim_mod.get(optimizer if optimizer is not None else previous or "sgd")
        # a name after a fit is a fresh optimizer, as a new torch.optim object is: said once the fit is accepted
        replaced = previous if named and previous is not None and previous.steps else None
        epochs = validation.positive_int("epochs", epochs)
        initial_epoch = validation.non_negative_int("initial_epoch", initial_epoch)
        if initial_epoch > epochs:
            raise ValueError(f"initial_epoch must be at most epochs (epochs is the index of the final epoch, as in "
                             f"Keras); received initial_epoch={initial_epoch}, epochs={epochs}")
        if batch_size is not None:
            batch_size = validation.positive_int("batch_size", batch_size)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False; received {shuffle!r}")
        if verbose not in (0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"verbose must be 0, 1 or 2; received verbose={verbose!r}")
        if not (graph is True or graph is False or graph == "auto"):
            raise ValueError(f"graph must be 'auto', True or False; received graph={graph!r}")
        from . import precision as precision_mod

        if precision is not None:
            precision_mod.check(precision)
        callbacks = self._callbacks(callbacks, verbose if parallel is None or parallel.world.rank == 0 else 0)
        metric_objs = self._metrics(metrics, loss)
        stream = sources.as_stream(X, y, sample_weight)
        if stream is not None:
            if parallel is not None:
                raise ValueError("distributed training reads in-memory arrays; streamed data (a memmap, "
                                 "gpunet.sources, batches) is not sharded across ranks yet")
            return self._fit_stream(stream, loss, optimizer, metric_objs, callbacks, epochs=epochs,
                                    initial_epoch=initial_epoch, batch_size=batch_size, shuffle=shuffle,
                                    validation_data=validation_data, validation_split=validation_split,
                                    class_weight=class_weight, undo=undo, graph=graph, precision=precision,
                                    replaced=replaced)
        if y is None:
            raise TypeError("fit needs y, the targets of X (or X as a streamed data set or an iterable of (x, y) "
                            "batches: see gpunet.sources)")
        X, names = validation.table_features("X", X, self.feature_names)
        if parallel is not None and parallel.sharded and validation.rows(X) == 0:  # a rank with no rows of its own
            X, Y = self._empty_shard(X, y)
        else:
            X, Y = self._data("X", X, "y", y, loss)
        W = self._row_weights(sample_weight, class_weight, Y, loss) if X.shape[0] else None
        if validation_data is not None and validation_split is not None:
            raise ValueError("give validation_data or validation_split, not both")
        val = None
        if validation_data is not None:
            val = self._validation(validation_data, loss, names or self.feature_names)
        elif validation_split is not None:
            fraction, split_rng = self._validation_split(validation_split)
            train_rows, val_rows = training.split_validation(X.shape[0], fraction, training.class_labels(Y, loss),
                                                             split_rng)
            with self.backend.activate():
                take = lambda a, rows: self.xp.take(a, self.xp.asarray(rows), axis=0)  # noqa: E731
                # the held rows keep their sample weights (Keras: class_weight weighs training only)
                held_w = W if class_weight is None else self._row_weights(sample_weight, None, Y, loss)
                val = (take(X, val_rows), take(Y, val_rows)) + (() if held_w is None else (take(held_w, val_rows),))
                X, Y = take(X, train_rows), take(Y, train_rows)
                W = None if W is None else take(W, train_rows)
        if names is not None:
            self.feature_names = names
        n = X.shape[0]
        batch = n if batch_size is None else min(batch_size, n)
        _warn_replaced(replaced, optimizer)
        self.trainer.configure(loss, optimizer, metric_objs)
        precision_mod.attach(self, precision)
        with self.backend.activate():
            if parallel is None:
                return training.run(self, sources.ArraySource(X, Y, W, batch, shuffle), val, epochs=epochs,
                                    initial_epoch=initial_epoch, callbacks=callbacks, undo=undo, graph=graph)
            parallel.start(X.shape[0], {"epochs": epochs, "initial_epoch": initial_epoch, "batch_size": batch_size,
                                        "shuffle": shuffle, "validation": val is not None, "callbacks": [
                                            type(cb).__name__ for cb in callbacks
                                            if not isinstance(cb, callbacks_mod.ProgressBar)]},  # rank 0's only
                           data=(X, Y, W))
            try:
                return training.run(self, parallel.source(X, Y, W, batch_size, shuffle), val, epochs=epochs,
                                    initial_epoch=initial_epoch, callbacks=callbacks, parallel=parallel, undo=undo,
                                    graph=graph)
            finally:
                parallel.finish()

    def _validation_split(self, validation_split):
        """``(fraction, generator)`` of a ``validation_split``: the split is drawn from ``default_rng(seed)``, or
        from the shuffling generator when the model has no seed."""
        fraction = validation.number_in("validation_split", validation_split, 0.0, 1.0)
        if fraction == 0:
            raise ValueError("validation_split must be in (0, 1); received validation_split=0.0")
        return fraction, (np.random.default_rng(self.seed) if self.seed is not None else self.trainer.shuffle_rng)

    def _fit_stream(self, stream, loss, optimizer, metric_objs, callbacks, *, epochs, initial_epoch, batch_size,
                    shuffle, validation_data, validation_split, class_weight, undo, graph, precision,
                    replaced) -> History:
        """``fit`` on a streamed data set (:mod:`gpunet.sources`): checked in one pass before training (a refused
        call changes nothing), then read batch by batch every epoch. Its steps run eagerly: captured CUDA graphs
        gather their batches on the device (``graph=True`` says so; ``"auto"`` does not warn about it)."""
        from . import precision as precision_mod

        if validation_data is not None and validation_split is not None:
            raise ValueError("give validation_data or validation_split, not both")
        if stream.single_use and epochs - initial_epoch > 1:
            raise ValueError(f"X is an iterator, which can be read only once, but fit runs {epochs - initial_epoch} "
                             f"epochs; pass a callable returning a fresh iterator (a generator function)")
        table = self._class_table(class_weight, loss)
        with self.backend.activate():
            names = stream._feature_names(self)
            labels = stream._check(self, loss, table, labels=validation_split is not None)
            val = None
            if validation_data is not None:
                val = self._validation(validation_data, loss, names or self.feature_names)
            elif validation_split is not None:
                fraction, split_rng = self._validation_split(validation_split)
                stream, held = stream._split(fraction, labels, split_rng, loss)
                val = sources.Evaluation(self, held, loss)
            n = stream.n
            batch = 1 if n is None else n if batch_size is None else min(batch_size, n)  # batches: their own sizes
            source = stream._source(self, loss, batch=batch, shuffle=shuffle, class_table=table)
        if names is not None:
            self.feature_names = names
        _warn_replaced(replaced, optimizer)
        self.trainer.configure(loss, optimizer, metric_objs)
        precision_mod.attach(self, precision)
        with self.backend.activate():
            return training.run(self, source, val, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                                undo=undo, graph=False if graph == "auto" else graph)

    def _validation(self, validation_data, loss, names):
        """Device ``(X_val, Y_val)``, or a :class:`gpunet.sources.Evaluation` of streamed validation data (checked
        here, evaluated in batches after each epoch)."""
        stream = validation_data if isinstance(validation_data, sources._Stream) else None
        listed = isinstance(validation_data, list) and validation_data and isinstance(validation_data[0], (tuple, list))
        if stream is None and (listed or not isinstance(validation_data, (tuple, list))) and \
                sources.is_batches(validation_data):  # (a list of (x, y) batches, not an (X, y, w) triple)
            stream = sources.BatchStream(validation_data)
        if stream is None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
                raise TypeError("validation_data must be a pair (X_val, y_val), a triple (X_val, y_val, "
                                "val_sample_weight), a streamed data set or batches (gpunet.sources)")
            stream = sources.as_stream(*validation_data)
        if stream is None:
            val_X, _ = validation.table_features("validation_data[0]", validation_data[0], names)
            val = self._data("validation_data[0]", val_X, "validation_data[1]", validation_data[1], loss)
            if len(validation_data) == 3 and validation_data[2] is not None:
                val += (self._row_weights(validation_data[2], None, val[1], loss, "validation_data[2]"),)
            return val
        if stream.single_use:
            raise ValueError("validation_data is an iterator, which can be read only once, but it is evaluated "
                             "after every epoch; pass a callable returning a fresh iterator")
        val_names = ("validation_data[0]", "validation_data[1]", "validation_data sample_weight")
        with self.backend.activate():
            stream._check(self, loss, None, val_names)
            return sources.Evaluation(self, stream, loss, names=val_names)

    def train_on_batch(self, x, y, loss, optimizer) -> float:
        """One gradient step on one batch (checked like ``fit``); returns the batch loss before the step.
        ``optimizer`` as for ``fit``; a name equal to the last call's optimizer's continues it (Keras's
        ``train_on_batch`` keeps the compiled optimizer), so a loop may pass ``"adam"`` every time."""
        loss = losses_mod.get(loss)
        current = self.optimizer
        if isinstance(optimizer, str) and current is not None and optim_mod.OPTIMIZERS.get(
                optimizer.strip().lower()) is type(current):
            optimizer = current  # the same name as the last call's: its state goes on (a loop passes the name)
        optimizer = optim_mod.get(optimizer)
        X, Y = self._data("x", x, "y", y, loss)
        self.trainer.configure(loss, optimizer, self.metrics if loss is self.loss else [])
        from . import precision as precision_mod

        precision_mod.attach(self, None)
        with self.backend.activate(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _, value = self.trainer._step(X, Y)
        return float(value)

    # -- inference ------------------------------------------------------------------------------------------------
    def predict(self, X, batch_size: int | None = None):
        """Outputs ``(n, n_outputs)`` for ``X`` ``(n, n_inputs)``, as an array of the model's namespace.

        ``batch_size`` bounds memory by predicting in chunks (``None``: all rows at once). Streamed data (a
        ``numpy.memmap``, a data set of :mod:`gpunet.sources`, an iterable of batches) is read batch by batch
        (``batch_size`` rows, default about 4 MiB of inputs; an iterable's own batches), checked as it comes; the
        outputs are concatenated, so they must fit in memory (``n * n_outputs`` values).
        """
        if batch_size is not None:
            batch_size = validation.positive_int("batch_size", batch_size)
        stream = sources.as_stream(X, predict=True)
        if stream is not None:
            with self.backend.activate():
                return sources.predict(self, stream, batch_size)
        X = self._features("X", X)
        with self.backend.activate():
            return self._predict(X, batch_size)

    def _predict(self, X, batch_size):
        n = X.shape[0]
        step = n if batch_size is None else batch_size
        parts = [self._forward(X[i:min(i + step, n), ...]) for i in range(0, n, step)]
        for layer in self.layers:
            layer._cache = None
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)

    def evaluate(self, X, y=None, loss=None, metrics=None, batch_size: int | None = None,
                 sample_weight=None) -> dict[str, float]:
        """``{"loss": ..., <metric>: ...}`` on ``(X, y)``; ``loss``/``metrics`` default to those of the last fit;
        ``sample_weight`` ``(n,)`` weighs the loss as in training (``sum(w * row loss) / n``, Keras's), not the
        metrics. Streamed data (as :meth:`predict` takes it, with its targets) is evaluated batch by batch: the
        loss is the mean over all rows and the metrics are merged over the batches (equal to the in-memory result
        up to rounding)."""
        loss = losses_mod.get(loss) if loss is not None else self.loss
        if loss is None:
            raise ValueError("evaluate() needs loss=... (no fit has set a default yet)")
        metric_objs = self._metrics(metrics, loss) if metrics is not None else self.metrics
        if batch_size is not None:
            batch_size = validation.positive_int("batch_size", batch_size)
        stream = sources.as_stream(X, y, sample_weight)
        if stream is not None:
            with self.backend.activate():
                return sources.Evaluation(self, stream, loss, batch_size, check=True).evaluate(self, loss, metric_objs)
        if y is None:
            raise TypeError("evaluate needs y, the targets of X (or X as a streamed data set or batches)")
        X, _ = validation.table_features("X", X, self.feature_names)
        X, Y = self._data("X", X, "y", y, loss)
        W = self._row_weights(sample_weight, None, Y, loss)
        with self.backend.activate():
            return self._evaluate(X, Y, loss, metric_objs, W, batch_size)

    def _evaluate(self, X, Y, loss, metric_objs, W=None, batch_size=None) -> dict[str, float]:
        """The loss (weighted by ``W`` ``(n, 1)`` as in training: ``sum(w * row loss) / n``) and the metrics
        (unweighted, as Keras's ``metrics``) of ``(X, Y)``."""
        pred = self._predict(X, batch_size)
        out = {"loss": float(loss.weighted_value(pred, Y, W, self.ops))}
        for metric in metric_objs:
            out[metric.name] = metric.result([to_numpy(s) for s in metric.stats(pred, Y)])
        return out

    # -- input handling (once per call) ---------------------------------------------------------------------------
    def _callbacks(self, callbacks, verbose: int) -> list:
        callbacks = [] if callbacks is None else callbacks
        if isinstance(callbacks, callbacks_mod.Callback):
            callbacks = [callbacks]
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"callbacks must be a list of gpunet.callbacks.Callback; received {callbacks!r}")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, callbacks_mod.Callback):
                raise TypeError(f"callbacks[{i}] must be a gpunet.callbacks.Callback; received {type(cb).__name__}")
        callbacks = list(callbacks)
        if not any(isinstance(cb, callbacks_mod.TerminateOnNaN) for cb in callbacks):
            callbacks.append(callbacks_mod.TerminateOnNaN())
        if verbose:
            callbacks.append(callbacks_mod.ProgressBar(verbose))
        # History last, so what other callbacks add to an epoch's logs (schedules' "lr") is recorded
        return callbacks + [History()]

    def _row_weights(self, sample_weight, class_weight, Y, loss, name: str = "sample_weight"):
        """``(n, 1)`` device weights from ``sample_weight`` (called ``name`` in messages) and ``class_weight``, or
        ``None``."""
        if sample_weight is None and class_weight is None:
            return None
        n = Y.shape[0]
        weights = np.ones(n)
        if sample_weight is not None:
            sw = np.asarray(to_numpy(validation.as_array(name, sample_weight, self.backend)))
            validation.numeric(name, sw)
            validation.finite(name, sw)
            if sw.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), one weight per sample; received {sw.shape}")
            if np.any(sw < 0) or not np.any(sw > 0):
                raise ValueError(f"{name} must be non-negative with at least one positive weight")
            weights = weights * sw
        if class_weight is not None:
            weights = weights * self._class_table(class_weight, loss)[training.class_labels(Y, loss)]
            if not np.any(weights > 0):
                raise ValueError("class_weight (with sample_weight) gives every sample weight 0: nothing to learn")
        return self._on_device(weights[:, None])

    def _class_table(self, class_weight, loss):
        """The checked weight of each class index (a host array) for ``class_weight``, or None."""
        if class_weight is None:
            return None
        if not (loss.name == "cce" or (loss.name == "bce" and self.n_outputs == 1)):
            raise ValueError("class_weight needs a classification loss (cce, or bce with one output); "
                             f"received loss {loss!r} with {self.n_outputs} output(s)")
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight must be a dict {{class index: weight}}; received {class_weight!r}")
        table = np.ones(self.n_outputs if loss.name == "cce" else 2)
        for key, value in class_weight.items():
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < len(table):
                raise ValueError(f"class_weight keys must be class indices in [0, {len(table) - 1}]; "
                                 f"received {key!r}")
            table[key] = validation.number_in(f"class_weight[{key}]", value, 0.0, float("inf"))
        return table

    def _metrics(self, metrics, loss) -> list:
        if metrics is None:
            return []
        if isinstance(metrics, (str, metrics_mod.Metric)):
            metrics = [metrics]
        if not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a name, a Metric or a list of them; received {metrics!r}")
        return [metrics_mod.get(m, loss) for m in metrics]

    def _as_array(self, name: str, data):
        """``data`` as host data or an array of the model's backend on the model's device (see
        :meth:`gpunet.backend.Backend.to_device`: a CuPy array on another GPU is copied to the model's)."""
        return self.backend.to_device(validation.as_array(name, data, self.backend))

    def _features(self, name: str, X):
        X, _ = validation.table_features(name, X, self.feature_names)
        with self.backend.activate():  # checks and copies run on the model's GPU
            X = validation.features(name, self._as_array(name, X), self.n_inputs)
            return self._on_device(validation.within_dtype(name, X, self.dtype))

    def _data(self, x_name: str, X, y_name: str, y, loss):
        """Checked ``(X, Y)`` on the device, ``Y`` prepared for ``loss`` as ``(n, n_outputs)`` of the model dtype."""
        with self.backend.activate():  # checks, one-hot targets and copies run on the model's GPU
            X = validation.features(x_name, self._as_array(x_name, X), self.n_inputs)
            X = validation.within_dtype(x_name, X, self.dtype)
            Y = loss.prepare_target(self._as_array(y_name, y), self.n_outputs, name=y_name)
            Y = validation.within_dtype(y_name, Y, self.dtype)
            if Y.shape[0] != X.shape[0]:
                raise ValueError(f"{x_name} has {X.shape[0]} samples but {y_name} has {Y.shape[0]}")
            return self._on_device(X), self._on_device(Y)

    def _empty_shard(self, X, y):
        """Device arrays ``(0, n_inputs)`` and ``(0, n_outputs)`` for a data-parallel rank whose shard is empty
        (checked for its shapes: there is nothing else to check)."""
        X, y = np.asarray(to_numpy(X)), np.asarray(to_numpy(y))
        if X.ndim != 2 or X.shape[1] != self.n_inputs or y.shape[:1] != (0,):
            raise ValueError(f"an empty shard must be X of shape (0, {self.n_inputs}) and y with 0 rows; received "
                             f"{X.shape} and {y.shape}")
        return (self._on_device(np.zeros((0, self.n_inputs))), self._on_device(np.zeros((0, self.n_outputs))))

    def _on_device(self, a):
        if isinstance(a, np.ndarray) and not self.backend.is_numpy:
            return self.backend.from_host(a, self.dtype)
        if isinstance(a, np.ndarray):
            return np.ascontiguousarray(a, dtype=self.dtype)
        return self.backend.cast(a, self.dtype)


def _warn_replaced(previous, optimizer) -> None:
    """Say that ``fit(optimizer=NAME)`` starts ``optimizer`` afresh where ``previous`` had taken steps."""
    if previous is not None:
        validation.warn_at_caller(f"optimizer={optimizer.name!r} starts a new {type(optimizer).__name__} (step 0, "
                                  f"no state); the last fit's {type(previous).__name__} at step {previous.steps} is "
                                  f"not continued: pass optimizer=None (or model.optimizer) to continue it")
