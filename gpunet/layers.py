"""The dense (fully connected) layer."""

from __future__ import annotations

import math

import numpy as np

from . import activations, validation

INITS = ("auto", "he_uniform", "he_normal", "glorot_uniform", "glorot_normal", "zeros")


def init_weight(rng: np.random.Generator, shape: tuple[int, int], init: str) -> np.ndarray:
    """A float64 host array of ``shape = (fan_in, fan_out)`` drawn by the named scheme.

    He (Kaiming): variance ``2 / fan_in``; Glorot (Xavier): variance ``2 / (fan_in + fan_out)``. Uniform variants
    draw from ``[-limit, limit]`` with ``limit = sqrt(3 variance)``.
    """
    fan_in, fan_out = shape
    if init == "zeros":
        return np.zeros(shape)
    family, dist = init.split("_")
    variance = 2.0 / fan_in if family == "he" else 2.0 / (fan_in + fan_out)
    if dist == "uniform":
        limit = math.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, size=shape)
    return rng.normal(0.0, math.sqrt(variance), size=shape)


class Dense:
    """``y = activation(x @ W + b)``: ``x`` is ``(n, in_features)``, ``W`` is ``(in_features, out_features)``,
    ``b`` is ``(out_features,)``, ``y`` is ``(n, out_features)``.

    Args:
        in_features, out_features: sizes of the input and output rows.
        activation: a name (see :mod:`gpunet.activations`), ``None`` for identity, or an Activation.
        init: ``"auto"`` (He uniform for the ReLU family, Glorot uniform otherwise), ``"he_uniform"``,
            ``"he_normal"``, ``"glorot_uniform"``, ``"glorot_normal"`` or ``"zeros"``. Biases start at zero.
        dropout: probability in ``[0, 1)`` of zeroing each output in training (``fit``, ``train_on_batch``,
            ``forward(training=True)``), the kept ones scaled by ``1 / (1 - dropout)``: a ``torch.nn.Dropout`` /
            ``keras.layers.Dropout`` after this layer. Inference never drops. Not on a model's output layer.

    The weights exist once the layer is part of a model (:class:`gpunet.Sequential` builds it on its device).

    >>> Dense(4, 3, activation="relu")
    Dense(4, 3, activation='relu')
    """

    def __init__(self, in_features: int, out_features: int, activation=None, init: str = "auto",
                 dropout: float = 0.0):
        self.in_features = validation.positive_int("in_features", in_features)
        self.out_features = validation.positive_int("out_features", out_features)
        self.activation = activations.get(activation)
        self.init = validation.one_of("init", init, INITS)
        self.dropout = validation.number_in("dropout", dropout, 0.0, 1.0)
        self._rng = None  # the model's dropout generator, set by build()
        self.W = self.b = None  # set by build()
        self.dW = self.db = None  # set by backward()
        self.xp = self.ops = None  # the model's namespace and its ops, set by build()
        self._cache = None  # (x, z or None, y) from the last forward
        self._workspaces = {}  # training-step arrays reused from step to step where ops.reuses_buffers

    def __repr__(self) -> str:
        drop = f", dropout={self.dropout}" if self.dropout else ""
        return f"Dense({self.in_features}, {self.out_features}, activation={self.activation.name!r}{drop})"

    @property
    def n_params(self) -> int:
        return self.in_features * self.out_features + self.out_features

    def initial_weights(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Fresh float64 host ``(W, b)`` drawn from ``rng``."""
        init = self.init
        if init == "auto":
            init = "he_uniform" if self.activation.relu_family else "glorot_uniform"
        return init_weight(rng, (self.in_features, self.out_features), init), np.zeros(self.out_features)

    def build(self, ops, W, b, rng=None) -> None:
        """Adopt ``W`` and ``b``, arrays of namespace ``ops.xp``, and compute with ``ops``; ``rng`` draws the dropout
        masks (the model calls this)."""
        self.xp, self.ops, self._rng = ops.xp, ops, rng
        self.W, self.b = W, b
        self.dW = self.db = None
        self._cache = None
        self._workspaces = {}

    def parameters(self) -> list:
        return [self.W, self.b]

    def gradients(self) -> list:
        return [self.dW, self.db]

    def _workspace(self, name: str, shape: tuple):
        """A persistent array for a training step's intermediate (``None`` where the ops allocate their own)."""
        if not self.ops.reuses_buffers:
            return None
        key = (name, shape)
        buf = self._workspaces.get(key)
        if buf is None:
            buf = self._workspaces[key] = self.xp.empty(shape, dtype=self.W.dtype)
        return buf

    def forward(self, x, training: bool = False, reuse: bool | None = None):
        """``(n, in_features) -> (n, out_features)``; keeps what :meth:`backward` needs.

        ``training=True`` applies dropout. ``reuse`` (default: ``training``, as inside ``fit``) computes into
        workspaces that the next such call overwrites.
        """
        shape = (x.shape[0], self.out_features)
        reuse = training if reuse is None else reuse
        z, y = self.ops.dense(x, self.W, self.b, self.activation, self._workspace("z", shape) if reuse else None)
        mask = None
        if training and self.dropout:
            buffers = (self._workspace("mask", shape), self._workspace("dropped", shape)) if reuse else (None, None)
            y_dropped, mask = self.ops.dropout(y, self.dropout, self._rng, *buffers)
        self._cache = (x, z, y, mask)
        return y if mask is None else y_dropped

    def backward(self, dy, *, input_grad: bool = True, through_activation: bool = True):
        """Gradients from ``dy = dL/dy`` (shape of the output, owned by the caller: it may be overwritten):
        sets ``dW``, ``db``; returns ``dL/dx``.

        ``through_activation=False`` treats ``dy`` as ``dL/dz`` already (the combined softmax/sigmoid +
        cross-entropy gradient). ``input_grad=False`` skips ``dL/dx`` (the first layer in training) and returns None.
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        x, z, y, mask = self._cache
        if mask is not None:  # through the dropout: the same noise
            dy *= mask
        dz = self.ops.act_grad(self.activation, dy, z, y) if through_activation else dy
        self.dW = self.ops.matmul(x.T, dz, self._workspace("dW", self.W.shape))
        self.db = self.ops.sum_rows(dz, self._workspace("db", self.b.shape))
        if not input_grad:
            return None
        return self.ops.matmul(dz, self.W.T, self._workspace("dx", (dz.shape[0], self.in_features)))

