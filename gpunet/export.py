"""Export a :class:`gpunet.Sequential` to `ONNX <https://onnx.ai>`_: one graph that onnxruntime (or any ONNX runtime)
runs without gpunet or Python.

The graph is built with the ``onnx`` package's helpers, validated by ``onnx.checker.check_model(full_check=True)``
and imported only when an export is asked for (``pip install 'gpunet[onnx]'``): ``import gpunet`` never imports it.

**Opset 17** (ONNX 1.12; onnxruntime 1.13 and later; IR version 8). The operators the graph uses (Gemm, Where,
GreaterOrEqual, Clip, Softmax over the last axis, Exp, Log, Tanh, ArgMax, Gather of strings, ...) have had their
present semantics since opset 13; their later versions only add element types (bfloat16, float8, int4). So any
opset from 13 gives the same graph, and 17 is the conservative pick: a level that runtimes lagging onnxruntime
(accelerator SDKs, older mobile or web builds) implement more likely than a recent one, well inside what
onnxruntime from PyPI fully supports. ``Gelu``, an operator since opset 20, is not used: onnxruntime's kernel for
it is 3e-8 off in float64 (the explicit formula below within 1e-15), and the formula keeps the opset at 17.

**The model's graph** (:func:`to_onnx`, ``model.export(path)``): input ``"features"`` ``(batch, n_inputs)`` of the
model's dtype (float32 or float64; ``batch`` is a dynamic axis), output ``(batch, n_outputs)`` of the same dtype
named for what it holds: ``"probabilities"`` after a softmax or sigmoid, ``"logits"`` after a linear layer trained
with a ``from_logits=True`` loss, ``"outputs"`` otherwise. Each layer is ``Gemm(x, layers.{i}.W, layers.{i}.b)``
(the initializers carry the names of the safetensors file) and its activation, built from elementary operators
so that it equals gpunet's own definition (:mod:`gpunet.activations`) including its tails:

| activation   | ONNX form                                                                           |
|--------------|-------------------------------------------------------------------------------------|
| linear       | (none)                                                                              |
| sigmoid      | e = exp(-abs(z)); where(z >= 0, 1 / (1 + e), e / (1 + e))                           |
| tanh, relu   | Tanh, Relu                                                                          |
| leaky_relu   | where(z > 0, z, negative_slope * z)                                                 |
| elu          | where(z > 0, z, alpha * expm1(z)), expm1(z) = tanh(z / 2) (exp(z) + 1)              |
| softplus     | where(z > 20, z, relu(z) + log1p(exp(-abs(z)))), log1p by Kahan's log(u) e / (u - 1) |
| silu         | z * sigmoid(z), the sigmoid above                                                   |
| gelu         | c = clip(z, -100, 100); 0.5 z (1 + tanh(sqrt(2/pi) (c + 0.044715 c^3)))              |
| softmax      | Softmax(axis=-1)                                                                    |

ONNX's own Sigmoid, Softplus, Elu and LeakyRelu are not used: onnxruntime has no float64 kernel for the last three,
and its float32 Sigmoid clamps its input (sigmoid(-17) comes out 2x too large, sigmoid(-20) as 0). ONNX has no
Expm1 or Log1p; the two identities above keep their relative accuracy near 0 (``exp(z) - 1`` would not).

**The command line's graph** (``preprocessing=True``, ``gpunet export``) wraps the network in the data transform
that ``gpunet train`` saved in ``model.metadata["cli"]``, so it takes the raw columns that ``gpunet predict`` reads
and gives what it writes. See :func:`_cli_inputs` and :func:`_cli_outputs`.

The model's description travels in its properties: ``producer_name`` "gpunet", ``producer_version`` the gpunet
version, a ``doc_string`` naming the inputs and outputs, and ``metadata_props`` (JSON strings) ``architecture``,
``dtype``, ``loss``, ``metrics``, ``optimizer`` and, when the model has one, ``metadata`` (``model.metadata``: for a
command-line model its task, classes, feature names, target and scalers).

What the graph does not do: check its inputs. ``model.predict`` refuses NaN, infinity and float64 values beyond the
float32 range; the graph computes with them (a NaN row gives NaN outputs, and for a command-line classifier the
label ONNX's ArgMax picks for that row).

>>> import gpunet as gn
>>> model = gn.Sequential([gn.Dense(4, 8, "gelu"), gn.Dense(8, 3, "softmax")], seed=0)
>>> proto = to_onnx(model)
>>> [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
(['features'], ['probabilities'])
>>> import onnxruntime
>>> session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
>>> x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
>>> bool(np.allclose(session.run(None, {"features": x})[0], model.predict(x), rtol=1e-5, atol=1e-6))
True
"""

from __future__ import annotations

import json

import numpy as np

from . import activations as activations_mod

FORMATS = ("onnx",)
OPSET = 17
INSTALL_HINT = "pip install 'gpunet[onnx]'"
_MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit on one message; larger models would need ONNX's external data
_ELEMENT_TYPES = {"float32": "FLOAT", "float64": "DOUBLE", "string": "STRING"}  # names in onnx.TensorProto


# -- public -----------------------------------------------------------------------------------------------------------
def export(model, path, format: str = "onnx", *, preprocessing: bool = False) -> None:
    """Write ``model`` as an ONNX file at ``path`` (atomically, as :func:`gpunet.save` does).

    Args:
        model: a :class:`gpunet.Sequential` whose activations are all gpunet's built-ins.
        path: the file to write (``.onnx`` is customary); its folder must exist.
        format: ``"onnx"``, the only format (Keras 3's ``model.export(path, format="onnx")`` spelling).
        preprocessing: wrap the network in the data transform of a model trained by ``gpunet train`` (see
            :func:`to_onnx`).

    Raises:
        ValueError: ``format`` is not ``"onnx"``; ``preprocessing=True`` for a model without ``metadata["cli"]``.
        TypeError: ``model`` is not a Sequential, or a layer's activation is not one of gpunet's (the message names
            the layer).
        FileNotFoundError: the folder of ``path`` does not exist (nothing is written).
        ImportError: the ``onnx`` package is missing.
    """
    if format != "onnx":
        raise ValueError(f"format must be one of {list(FORMATS)}; received format={format!r}")
    write(to_onnx(model, preprocessing=preprocessing), path)


def write(proto, path) -> None:
    """Write the ``onnx.ModelProto`` ``proto`` to ``path`` atomically (a temporary file beside it, synced, renamed
    over it); FileNotFoundError, before anything is written, when the folder does not exist."""
    from . import io

    io._write_atomic(io._path(path), proto.SerializeToString())


def to_onnx(model, *, preprocessing: bool = False):
    """The ``onnx.ModelProto`` of ``model``, checked by ``onnx.checker.check_model(full_check=True)``.

    ``preprocessing=False``: input ``"features"`` ``(batch, n_inputs)``, output ``"probabilities"``, ``"logits"`` or
    ``"outputs"`` ``(batch, n_outputs)``, both of the model's dtype; the output equals ``model.predict(features)``.

    ``preprocessing=True`` (a model trained by ``gpunet train``): inputs are the raw feature columns, one
    ``(batch, 1)`` float64 tensor per column named as in the training data, in ``metadata["cli"]["features"]``
    order; outputs ``"label"`` ``(batch,)`` strings (the class names) and ``"probabilities"`` ``(batch, n_classes)``
    float64 for classification, ``"prediction"`` float64 in the target's units (``(batch,)`` for one target,
    ``(batch, n_targets)`` for several) for regression: what ``gpunet predict`` writes.
    """
    onnx = _import_onnx()
    from . import __version__
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a gpunet.Sequential; received {type(model).__name__}")
    _check_activations(model)
    g = _Graph(onnx, model.dtype)
    if preprocessing:
        cli = _cli_metadata(model)
        inputs, x = _cli_inputs(g, cli, model)
        outputs = _cli_outputs(g, cli, _network(g, model, x))
        _check_input_names(g, [i.name for i in inputs], [o.name for o in outputs])
    else:
        name = _output_name(model)
        inputs = [g.value_info("features", model.dtype, ["batch", model.n_inputs])]
        g.rename(_network(g, model, "features"), name)
        outputs = [g.value_info(name, model.dtype, ["batch", model.n_outputs])]
    helper = onnx.helper
    graph = helper.make_graph(g.nodes, "gpunet.Sequential", inputs, outputs, initializer=g.initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    proto = helper.make_model(graph, producer_name="gpunet", producer_version=__version__,
                              doc_string=_doc_string(model, inputs, outputs), opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, _properties(model))
    if proto.ByteSize() > _MAX_PROTO_BYTES:
        raise ValueError(f"the model's ONNX graph would be {proto.ByteSize() / 2**30:.1f} GiB, beyond the 2 GiB that "
                         f"one ONNX file without external data can hold")
    onnx.checker.check_model(proto, full_check=True)
    return proto


# -- the graph under construction -------------------------------------------------------------------------------------
class _Graph:
    """The nodes and initializers of one graph being built; :meth:`op` names every tensor it makes afresh."""

    def __init__(self, onnx, dtype: str):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.initializers: list = []
        self.scope = "gpunet/"  # prefix of the names made now (e.g. "gpunet/layers.0/"): no clash with column names
        self._constants: dict = {}

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        """Append one node with a single output; returns the output's name (also the node's)."""
        name = f"{self.scope}{op_type}_{len(self.nodes)}"
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [name], name=name, **attributes))
        return name

    def tensor(self, name: str, array: np.ndarray) -> str:
        """A named initializer holding ``array`` (its dtype kept: object arrays of str become string tensors)."""
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def constant(self, value, dtype=None) -> str:
        """An initializer holding ``value`` as ``dtype`` (default: the model's), shared by equal constants."""
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.tensor(f"gpunet/const_{len(self._constants)}", array)
        return self._constants[key]

    def element_type(self, dtype: str) -> int:
        """The ``onnx.TensorProto`` element type of ``"float32"``, ``"float64"`` or ``"string"``."""
        return getattr(self.onnx.TensorProto, _ELEMENT_TYPES[dtype])

    def value_info(self, name: str, dtype: str, shape: list):
        """A graph input or output: ``name``, element type ``dtype``, ``shape`` of sizes and named dynamic axes."""
        return self.onnx.helper.make_tensor_value_info(name, self.element_type(dtype), shape)

    def rename(self, old: str, new: str) -> None:
        """Give the tensor ``old`` the name ``new`` wherever nodes make or use it (graph outputs get their names)."""
        for node in self.nodes:
            node.output[:] = [new if t == old else t for t in node.output]
            node.input[:] = [new if t == old else t for t in node.input]


# -- the network ------------------------------------------------------------------------------------------------------
def _network(g: _Graph, model, x: str) -> str:
    """``model``'s layers applied to the ``(batch, n_inputs)`` tensor ``x`` of the model's dtype; returns the name
    of the ``(batch, n_outputs)`` output. Dropout is a training-time operation and has no node."""
    weights = model.get_weights()
    for i, layer in enumerate(model.layers):
        g.scope = f"gpunet/layers.{i}/"
        W = g.tensor(f"layers.{i}.W", weights[2 * i])
        b = g.tensor(f"layers.{i}.b", weights[2 * i + 1])
        x = _ACTIVATIONS[type(layer.activation)](g, g.op("Gemm", x, W, b), layer.activation)
    g.scope = "gpunet/"
    return x


def _check_activations(model) -> None:
    """Refuse a layer whose activation is not exactly one of gpunet's built-ins: a custom Activation, or a subclass
    of a built-in, is Python code that the graph cannot hold (its ``name`` proves nothing)."""
    for i, layer in enumerate(model.layers):
        act = layer.activation
        built_in = activations_mod.ACTIVATIONS.get(getattr(act, "name", None)) is type(act)
        if not built_in or type(act) not in _ACTIVATIONS:
            raise TypeError(f"cannot export layers[{i}] to ONNX: its activation {act!r} ({type(act).__module__}."
                            f"{type(act).__qualname__}) is not one of gpunet's built-in activations "
                            f"{sorted(activations_mod.ACTIVATIONS)}, and ONNX cannot hold Python code; use a "
                            f"built-in activation")


def _output_name(model) -> str:
    act = model.layers[-1].activation.name
    if act in ("softmax", "sigmoid"):
        return "probabilities"
    if act == "linear" and getattr(model.loss, "from_logits", False):
        return "logits"
    return "outputs"


# -- activations: gpunet's definitions (gpunet/activations.py, kernels/activations.cuh) in ONNX operators --------------
def _sigmoid(g: _Graph, z: str, act=None) -> str:
    """``1 / (1 + e)`` where ``z >= 0``, else ``e / (1 + e)``, ``e = exp(-|z|)``: :func:`gpunet.array_utils.sigmoid`."""
    e = g.op("Exp", g.op("Neg", g.op("Abs", z)))
    one_plus_e = g.op("Add", g.constant(1), e)
    return g.op("Where", g.op("GreaterOrEqual", z, g.constant(0)),
                g.op("Div", g.constant(1), one_plus_e), g.op("Div", e, one_plus_e))


def _log1p(g: _Graph, e: str) -> str:
    """``log(1 + e)`` for ``e >= 0``, accurate near 0 (ONNX has no Log1p): Kahan's ``log(u) * e / (u - 1)`` with
    ``u = 1 + e`` rounded (the rounding error cancels in the ratio), and ``e`` itself where ``u`` rounds to 1."""
    u = g.op("Add", g.constant(1), e)
    ratio = g.op("Div", e, g.op("Sub", u, g.constant(1)))
    return g.op("Where", g.op("Equal", u, g.constant(1)), e, g.op("Mul", g.op("Log", u), ratio))


def _expm1(g: _Graph, z: str) -> str:
    """``exp(z) - 1``, accurate near 0 (ONNX has no Expm1): ``tanh(z / 2) * (exp(z) + 1)``; -1 at ``z = -inf``."""
    return g.op("Mul", g.op("Tanh", g.op("Mul", z, g.constant(0.5))), g.op("Add", g.op("Exp", z), g.constant(1)))


def _softplus(g: _Graph, z: str, act=None) -> str:
    """``z`` above 20 (torch's threshold), else ``max(z, 0) + log1p(exp(-|z|))``:
    :func:`gpunet.array_utils.softplus`."""
    stable = g.op("Add", g.op("Relu", z), _log1p(g, g.op("Exp", g.op("Neg", g.op("Abs", z)))))
    return g.op("Where", g.op("Greater", z, g.constant(20)), z, stable)


def _gelu(g: _Graph, z: str, act=None) -> str:
    """``0.5 z (1 + tanh(sqrt(2/pi) (c + 0.044715 c^3)))``, ``c = clip(z, -100, 100)``, in gpunet's order of
    operations (the clamp only keeps ``c^3`` finite: tanh is already exactly +-1 there)."""
    c = g.op("Clip", z, g.constant(-activations_mod._GELU_CLAMP), g.constant(activations_mod._GELU_CLAMP))
    cubic = g.op("Mul", g.op("Mul", g.op("Mul", g.constant(activations_mod._GELU_K), c), c), c)
    t = g.op("Tanh", g.op("Mul", g.constant(activations_mod._GELU_C), g.op("Add", c, cubic)))
    return g.op("Mul", g.op("Mul", g.constant(0.5), z), g.op("Add", g.constant(1), t))


def _leaky_relu(g: _Graph, z: str, act) -> str:
    """``z`` where ``z > 0``, else ``negative_slope * z``."""
    return g.op("Where", g.op("Greater", z, g.constant(0)), z, g.op("Mul", g.constant(act.negative_slope), z))


def _elu(g: _Graph, z: str, act) -> str:
    """``z`` where ``z > 0``, else ``alpha * expm1(z)``."""
    return g.op("Where", g.op("Greater", z, g.constant(0)), z, g.op("Mul", g.constant(act.alpha), _expm1(g, z)))


_ACTIVATIONS = {
    activations_mod.Identity: lambda g, z, act: z,
    activations_mod.Sigmoid: _sigmoid,
    activations_mod.Tanh: lambda g, z, act: g.op("Tanh", z),
    activations_mod.ReLU: lambda g, z, act: g.op("Relu", z),
    activations_mod.LeakyReLU: _leaky_relu,
    activations_mod.ELU: _elu,
    activations_mod.Softplus: _softplus,
    activations_mod.SiLU: lambda g, z, act: g.op("Mul", z, _sigmoid(g, z)),
    activations_mod.GELU: _gelu,
    activations_mod.Softmax: lambda g, z, act: g.op("Softmax", z, axis=-1),
}


# -- the command line's data transform --------------------------------------------------------------------------------
CLI_OUTPUTS = {"regression": ("prediction",), "binary": ("label", "probabilities"),
               "multiclass": ("label", "probabilities")}


def cli_metadata(model) -> dict | None:
    """``model.metadata["cli"]``, the data transform of a model trained by ``gpunet train``; ``None`` for others."""
    metadata = getattr(model, "metadata", None)
    cli = metadata.get("cli") if isinstance(metadata, dict) else None
    return cli if isinstance(cli, dict) else None


def _cli_metadata(model) -> dict:
    cli = cli_metadata(model)
    if cli is None:
        raise ValueError("preprocessing=True needs a model trained by `gpunet train` (model.metadata['cli'] holds its "
                         "data transform); this model has none: export it without preprocessing")
    return cli


def _cli_inputs(g: _Graph, cli: dict, model) -> tuple[list, str]:
    """The raw feature columns as the network's input: ``metadata["cli"]`` mapped to ONNX inputs and nodes.

    Inputs: one ``(batch, 1)`` float64 tensor per feature column, named as the column, in the order of
    ``cli["features"]`` (the training data's). Nodes: Concat into ``(batch, k)``, then ``(x - mean) / scale`` in
    float64 with ``cli["x_scaler"]`` (:meth:`gpunet.data.Standardizer.transform`, as ``gpunet predict`` computes it),
    then a Cast to the model's dtype. Returns ``(inputs, name of the (batch, n_inputs) tensor)``. The place for the
    encoding of non-numeric columns, once the command line has it.
    """
    from .data import Standardizer

    features = list(cli["features"])
    if len(features) != model.n_inputs:
        raise ValueError(f"the model's metadata names {len(features)} feature columns but its first layer takes "
                         f"{model.n_inputs} inputs")
    inputs = [g.value_info(name, "float64", ["batch", 1]) for name in features]
    scaler = Standardizer.from_json(cli["x_scaler"])
    x = g.op("Concat", *features, axis=1) if len(features) > 1 else features[0]
    x = g.op("Div", g.op("Sub", x, g.constant(scaler.mean, np.float64)), g.constant(scaler.scale, np.float64))
    if model.dtype != "float64":
        x = g.op("Cast", x, to=g.element_type(model.dtype))
    return inputs, x


def _cli_outputs(g: _Graph, cli: dict, y: str) -> list:
    """The network's ``(batch, n_outputs)`` output ``y`` decoded as ``gpunet predict`` decodes it, in float64.

    Regression: ``"prediction"`` = ``y * scale + mean`` with ``cli["y_scaler"]`` (the target's units), ``(batch,)``
    for one target. Binary: ``"probabilities"`` ``[1 - p, p]``; multi-class: the softmax rows. Classification also
    gives ``"label"``: ``cli["classes"][argmax(probabilities)]`` (the first of equal maxima, as NumPy's argmax).
    Returns the outputs' value infos.
    """
    from .data import Standardizer

    task = cli["task"]
    if task not in CLI_OUTPUTS:
        raise ValueError(f"unknown task {task!r} in the model's metadata; expected one of {list(CLI_OUTPUTS)}")
    if g.dtype != np.float64:
        y = g.op("Cast", y, to=g.element_type("float64"))
    if task == "regression":
        scaler = Standardizer.from_json(cli["y_scaler"])
        y = g.op("Add", g.op("Mul", y, g.constant(scaler.scale, np.float64)), g.constant(scaler.mean, np.float64))
        shape = ["batch"] if scaler.mean.size == 1 else ["batch", int(scaler.mean.size)]
        if scaler.mean.size == 1:
            y = g.op("Squeeze", y, g.constant([1], np.int64))
        g.rename(y, "prediction")
        return [g.value_info("prediction", "float64", shape)]
    classes = list(cli["classes"])
    proba = g.op("Concat", g.op("Sub", g.constant(1, np.float64), y), y, axis=1) if task == "binary" else y
    label = g.op("Gather", g.tensor("gpunet/classes", np.array(classes, dtype=object)),
                 g.op("ArgMax", proba, axis=1, keepdims=0), axis=0)
    g.rename(proba, "probabilities")
    g.rename(label, "label")
    return [g.value_info("label", "string", ["batch"]),
            g.value_info("probabilities", "float64", ["batch", len(classes)])]


def _check_input_names(g: _Graph, names: list[str], outputs: list[str]) -> None:
    """Column names become input names: they must be non-empty, distinct, and not the name of a tensor inside."""
    inside = set(outputs) | {t.name for t in g.initializers} | {t for node in g.nodes for t in node.output}
    bad = sorted({n for n in names if not n or n in inside or names.count(n) > 1})
    if bad:
        raise ValueError(f"the feature column name(s) {bad} cannot name ONNX inputs (empty, repeated, or the name of "
                         f"a tensor inside the graph such as the outputs {outputs}); rename the column(s) and retrain")


# -- description ----------------------------------------------------------------------------------------------------
def _properties(model) -> dict[str, str]:
    """``metadata_props``: what the model is and how it was trained, as JSON strings."""
    def config(obj):
        return None if obj is None else {"name": getattr(obj, "name", type(obj).__name__), "args": dict(vars(obj))}

    optimizer = model.optimizer
    props = {
        "architecture": [{"in_features": layer.in_features, "out_features": layer.out_features,
                          "activation": config(layer.activation)} for layer in model.layers],
        "dtype": model.dtype,
        "loss": config(model.loss),
        "metrics": [getattr(m, "name", type(m).__name__) for m in model.metrics],
        "optimizer": None if optimizer is None else {"name": optimizer.name,
                                                     "hyperparameters": optimizer.hyperparameters(),
                                                     "steps": optimizer.steps},
    }
    if getattr(model, "metadata", None) is not None:
        props["metadata"] = model.metadata
    return {k: v if isinstance(v, str) else json.dumps(v, default=repr, allow_nan=True) for k, v in props.items()}


def _doc_string(model, inputs: list, outputs: list) -> str:
    sizes = "-".join(str(s) for s in [model.n_inputs] + [layer.out_features for layer in model.layers])
    acts = ", ".join(layer.activation.name for layer in model.layers)
    names = [i.name for i in inputs]
    shown = names if len(names) <= 8 else names[:8] + [f"... ({len(names)} in all)"]
    return (f"gpunet Sequential {sizes} ({acts}), {model.dtype}. Inputs: {', '.join(shown)}. "
            f"Outputs: {', '.join(o.name for o in outputs)}.")


def _import_onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ImportError(f"exporting to ONNX needs the onnx package ({exc}): {INSTALL_HINT}") from None
    return onnx

