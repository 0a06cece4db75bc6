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
            ``model.forward(x, training=True)``), the kept ones scaled by ``1 / (1 - dropout)``: a
            ``torch.nn.Dropout`` / ``keras.layers.Dropout`` after this layer. Inference never drops. Not on a
            model's output layer.

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
        self.W = self.b = None  # set by build()
        self.dW = self.db = None  # set by Sequential.backward()
        self.xp = self.ops = None  # the model's namespace and its ops, set by build()
        self._cache = None  # (x, z or None, y, dropout mask or None) from the last forward
        # mixed precision (gpunet.precision.attach): the policy of training steps and the low-precision copy of W
        self._mp = self._W_low = None
        self._low = None  # (x as the products read it, W as they read it) from the last training forward

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

    def build(self, ops, W, b) -> None:
        """Adopt ``W`` and ``b``, arrays of namespace ``ops.xp``, and compute with ``ops`` (the model calls this)."""
        self.xp, self.ops = ops.xp, ops
        self.W, self.b = W, b
        self.dW = self.db = None
        self._cache = None
        self._mp = self._W_low = self._low = None

    def parameters(self) -> list:
        return [self.W, self.b]

    def gradients(self) -> list:
        """``[dW, db]`` of the last :meth:`gpunet.Sequential.backward` (``None`` before it)."""
        return [self.dW, self.db]

    def _buffer(self, ws, name: str, shape: tuple, shared: bool = False):
        """The workspace array for ``name`` when ``ws`` is given and the ops write into buffers, else ``None`` (the
        ops then allocate). ``shared``: an array of a parameter's shape, common to every batch size."""
        if ws is None or not self.ops.reuses_buffers:
            return None
        return (ws.shared if shared else ws).array((self, name), shape, self.W.dtype)

    def forward(self, x, ws=None, mask=None):
        """``(n, in_features) -> (n, out_features)``; keeps what :meth:`backward` needs.

        ``mask``: inverted-dropout noise ``(n, out_features)`` multiplied into the output (training; the model's
        trainer draws it), or ``None``. ``ws``: the training step's workspace, which receives the results (valid
        until the next step on that workspace); ``None`` allocates new arrays.
        """
        shape = (x.shape[0], self.out_features)
        mp = self._mp if ws is not None else None
        if mp is None:
            z, y = self.ops.dense(x, self.W, self.b, self.activation, self._buffer(ws, "z", shape), ws)
        else:  # the product in the low precision (float32 accumulation and output), the rest in float32
            x_low = mp.cast(self.ops, x, ws, (self, "x"))
            W_low = self._W_low if self._W_low is not None else mp.cast(self.ops, self.W, ws.shared, (self, "W"))
            self._low = (x_low, W_low)
            z, y = self.ops.bias_act(mp.product(self.ops, x_low, W_low, self._buffer(ws, "z", shape)), self.b,
                                     self.activation, ws)
        self._cache = (x, z, y, mask)
        if mask is None:
            return y
        return self.ops.dropout(y, mask, self._buffer(ws, "dropped", shape))

    def backward(self, dy, ws=None, *, input_grad: bool = True, through_activation: bool = True):
        """Gradients from ``dy = dL/dy`` (shape of the output, owned by the caller: it may be overwritten), for the
        last :meth:`forward`: returns ``(dx, dW, db)``.

        ``through_activation=False`` treats ``dy`` as ``dL/dz`` already (the combined softmax/sigmoid +
        cross-entropy gradient). ``input_grad=False`` skips ``dL/dx`` (the first layer in training): ``dx`` is
        None. ``ws`` as in :meth:`forward`.
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        x, z, y, mask = self._cache
        if mask is not None:  # through the dropout: the same noise
            dy *= mask
        dz = self.ops.act_grad(self.activation, dy, z, y, ws) if through_activation else dy
        if self._mp is not None and ws is not None and self._low is not None:
            return self._backward_low(dz, ws, input_grad)
        dW = self.ops.matmul(x.T, dz, self._buffer(ws, "dW", self.W.shape, shared=True))
        db = self.ops.sum_rows(dz, self._buffer(ws, "db", self.b.shape, shared=True), ws)
        if not input_grad:
            return None, dW, db
        return self.ops.matmul(dz, self.W.T, self._buffer(ws, "dx", (dz.shape[0], self.in_features))), dW, db

    def _backward_low(self, dz, ws, input_grad: bool):
        """:meth:`backward`'s products in the low precision of ``self._mp`` (the bias gradient in float32)."""
        mp, (x_low, W_low) = self._mp, self._low
        dz_low = mp.cast(self.ops, dz, ws, (self, "dz"))
        dW = mp.product(self.ops, x_low.T, dz_low, self._buffer(ws, "dW", self.W.shape, shared=True))
        db = self.ops.sum_rows(dz, self._buffer(ws, "db", self.b.shape, shared=True), ws)
        if not input_grad:
            return None, dW, db
        return mp.product(self.ops, dz_low, W_low.T, self._buffer(ws, "dx", (dz.shape[0], self.in_features))), dW, db

    def __getstate__(self) -> dict:
        """Pickle the configuration and host copies of ``W`` and ``b``; the model rebuilds the rest on its device."""
        from .backend import to_numpy

        state = dict(vars(self))
        state.update(W=None if self.W is None else to_numpy(self.W), b=None if self.b is None else to_numpy(self.b),
                     xp=None, ops=None, dW=None, db=None, _cache=None, _mp=None, _W_low=None, _low=None)
        return state
