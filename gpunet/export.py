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

**The command line's graph** (``preprocessing=True``, ``gpunet export``) wraps the network in the column and
target transforms that ``gpunet train`` saved in ``model.metadata["cli"]`` (:class:`gpunet.TableModel`:
:class:`~gpunet.tabular.TableTransform` and :class:`~gpunet.tabular.TargetTransform`), so it takes the raw columns
that ``gpunet predict`` reads and gives what it writes. One ``(batch, 1)`` input per column the transform reads (left
out columns are no inputs), named as the column:

| column kind                | input                                   | in the graph                                  |
|----------------------------|-----------------------------------------|-----------------------------------------------|
| numeric (and placeholders) | float64, NaN = missing (the placeholder | ``(where(isnan(x), median, x) - mean) / sd``, |
|                            | such as "?" given as NaN)               | ``isnan(x)`` as the missing indicator         |
| boolean (yes/no, ...)      | string, ``""`` = missing                | ``LabelEncoder``: its words in any case, 1/0, |
|                            |                                         | to 1/0/NaN, then as numeric                   |
| categorical                | string, ``""`` = missing                | ``LabelEncoder`` to the category's index,     |
|                            |                                         | ``Equal`` to 0..k-1: one-hot, unseen = zeros  |
| date                       | float64 seconds since 1970-01-01 UTC,   | the calendar by floor divisions (Hinnant's    |
|                            | NaN = missing                           | civil_from_days): the training's parts        |

Outputs: ``"label"`` (the class names) and ``"probabilities"``, or ``"prediction"`` in the target's units
(:meth:`TargetTransform.decode`). A float64 graph computes the features exactly as ``TableTransform.transform``
does (the season's sine and cosine to 1e-15). String cells are compared exactly (ONNX has no strip; the caller
strips them), and a whole-number category also matches pandas' float text ("3" as "3.0"). The string columns use
``LabelEncoder`` of ``ai.onnx.ml`` (opset 2, imported only by graphs with such columns): ONNX's ``Equal`` compares
strings only from opset 19, and ``StringNormalizer``'s lower-casing depends on the platform's locales. See
:func:`_cli_inputs`, :func:`cli_inputs` (what each input expects, also saved in ``metadata_props["columns"]``) and
:func:`_cli_outputs`.

The model's description travels in its properties: ``producer_name`` "gpunet", ``producer_version`` the gpunet
version, a ``doc_string`` naming the inputs and outputs, and ``metadata_props`` (JSON strings) ``architecture``,
``dtype``, ``loss``, ``metrics``, ``optimizer`` and, when the model has one, ``metadata`` (``model.metadata``: for a
command-line model its task, classes, column and target transforms); the command line's graph adds ``columns``.

What the graph does not do: check its inputs. ``model.predict`` refuses NaN, infinity and float64 values beyond the
float32 range; the bare graph computes with them (a NaN row gives NaN outputs). In the command line's graph NaN is
a missing cell, and a row with a value that ``gpunet predict`` refuses (an infinite number or date, a boolean cell
that is none of its words) gives NaN probabilities or prediction, and the label ``""``; an unseen category is all
zeros there as in gpunet, and where ``gpunet predict`` notes what the rows held that training did not, the graph
says nothing.

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

import itertools
import json
import re

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

    ``preprocessing=True`` (a model trained by ``gpunet train``, or :class:`gpunet.TableModel`'s network after
    ``save``): inputs are the raw columns, one ``(batch, 1)`` tensor per column the model reads, named as in the
    training data, in its order: float64 for numbers and dates (NaN = missing; dates in seconds since 1970-01-01
    UTC), strings for categories and booleans (``""`` = missing); outputs ``"label"`` ``(batch,)`` strings (the
    class names) and ``"probabilities"`` ``(batch, n_classes)`` float64 for classification, ``"prediction"``
    ``(batch,)`` float64 in the target's units for regression: what ``gpunet predict`` writes. ValueError for a
    model whose metadata the graph cannot hold (see :func:`cli_table_model`).
    """
    onnx = _import_onnx()
    from . import __version__
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a gpunet.Sequential; received {type(model).__name__}")
    _check_activations(model)
    g = _Graph(onnx, model.dtype)
    extra = {}
    if preprocessing:
        tm = cli_table_model(model)
        inputs, x, refused = _cli_inputs(g, tm.columns, model)
        outputs = _cli_outputs(g, tm.target, _network(g, model, x), refused)
        _check_input_names(g, [i.name for i in inputs], [o.name for o in outputs])
        extra["columns"] = cli_inputs(tm.columns)
    else:
        name = _output_name(model)
        inputs = [g.value_info("features", model.dtype, ["batch", model.n_inputs])]
        g.rename(_network(g, model, "features"), name)
        outputs = [g.value_info(name, model.dtype, ["batch", model.n_outputs])]
    helper = onnx.helper
    graph = helper.make_graph(g.nodes, "gpunet.Sequential", inputs, outputs, initializer=g.initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(ML_DOMAIN, ML_OPSET)] if g.uses_ml else [])
    proto = helper.make_model(graph, producer_name="gpunet", producer_version=__version__,
                              doc_string=_doc_string(model, inputs, outputs), opset_imports=opsets,
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, _properties(model, extra))
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
        self.uses_ml = False  # whether a node is an ai.onnx.ml operator (the command line's string columns)

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        """Append one node with a single output; returns the output's name (also the node's). ``domain=ML_DOMAIN``
        (an ``ai.onnx.ml`` operator) makes the model import that opset too."""
        name = f"{self.scope}{op_type}_{len(self.nodes)}"
        self.uses_ml = self.uses_ml or attributes.get("domain") == ML_DOMAIN
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

    def value_info(self, name: str, dtype: str, shape: list, doc_string: str = ""):
        """A graph input or output: ``name``, element type ``dtype``, ``shape`` of sizes and named dynamic axes."""
        return self.onnx.helper.make_tensor_value_info(name, self.element_type(dtype), shape, doc_string)

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
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder (string -> int64) since ai.onnx.ml 2
INPUT_TYPES = {"numeric": "float64", "boolean": "string", "categorical": "string", "date": "float64"}
DATE_UNIT = "seconds since 1970-01-01 00:00 UTC"
_BOOLEAN_CODES = {"false": 0, "true": 1, "missing": 2, "unknown": 3}  # LabelEncoder's int64 codes of a boolean cell


def cli_metadata(model) -> dict | None:
    """``model.metadata["cli"]``, the data transform of a model trained by ``gpunet train``; ``None`` for others."""
    metadata = getattr(model, "metadata", None)
    cli = metadata.get("cli") if isinstance(metadata, dict) else None
    return cli if isinstance(cli, dict) else None


def cli_table_model(model):
    """The :class:`gpunet.TableModel` (network, column and target transforms) of a model trained by ``gpunet train``,
    checked for export: read from ``metadata["cli"]`` as ``gpunet predict`` reads it (version 2, or version 1's
    ``x_scaler``/``features`` as numeric columns). ValueError, saying why, for anything the graph cannot hold."""
    from .recipe import TableModel

    if cli_metadata(model) is None:
        raise ValueError("preprocessing=True needs a model trained by `gpunet train` (model.metadata['cli'] holds its "
                         "data transform); this model has none: export it without preprocessing")
    try:
        tm = TableModel.from_model(model)
    except KeyError as exc:
        raise ValueError(f"the model's command-line metadata (model.metadata['cli']) lacks {exc}; it cannot be "
                         f"exported with its preprocessing") from None
    for c in tm.columns.columns:
        if c.get("kind") not in (*INPUT_TYPES, "left out"):
            raise ValueError(f"column {c.get('name')!r}: unknown column kind {c.get('kind')!r} in the model's "
                             f"metadata; this gpunet exports {sorted(INPUT_TYPES)}")
        unknown = sorted(set(c["parts"]) - set(_DATE_PARTS)) if c["kind"] == "date" else []
        if unknown:
            raise ValueError(f"date column {c['name']!r}: unknown date part(s) {unknown} in the model's metadata; "
                             f"this gpunet computes {list(_DATE_PARTS)}")
    return tm


def cli_inputs(columns) -> list[dict]:
    """What each input of the command-line graph expects, one dict per column the :class:`TableTransform`
    ``columns`` reads (left-out columns are no inputs), in the training table's order: ``name``, ``kind``,
    ``type`` (``"float64"`` or ``"string"``, each input ``(batch, 1)``), ``missing`` (how a missing cell is given)
    and, by kind, ``placeholder`` (numeric), ``true``/``false`` (boolean: the words, any case), ``categories``,
    ``format`` and ``unit`` (date). Saved in the ONNX file's ``metadata_props["columns"]`` (JSON)."""
    specs = []
    for c in columns.columns:
        kind = c["kind"]
        if kind == "left out":
            continue
        spec = {"name": c["name"], "kind": kind, "type": INPUT_TYPES[kind],
                "missing": "" if INPUT_TYPES[kind] == "string" else "NaN"}
        if kind == "numeric" and c.get("placeholder") is not None:
            spec["placeholder"] = c["placeholder"]
        elif kind == "boolean":
            spec["true"] = sorted({k.lower() for k, v in c["map"].items() if v == 1.0})
            spec["false"] = sorted({k.lower() for k, v in c["map"].items() if v != 1.0})
        elif kind == "categorical":
            spec["categories"] = list(c["categories"])
        elif kind == "date":
            spec["format"], spec["unit"] = c["format"], DATE_UNIT
        specs.append(spec)
    return specs


def _input_doc(spec: dict) -> str:
    """The doc_string of one raw-column input."""
    kind = spec["kind"]
    if kind == "numeric":
        extra = f"; the placeholder {spec['placeholder']!r} as NaN" if "placeholder" in spec else ""
        return f"numeric column: float64 (batch, 1), NaN = missing{extra}"
    if kind == "boolean":
        return (f"boolean column: string (batch, 1), {'/'.join(spec['true'])} or 1 = true, "
                f"{'/'.join(spec['false'])} or 0 = false (any case), '' = missing")
    if kind == "categorical":
        return (f"categorical column: string (batch, 1), one of {len(spec['categories'])} categories (others: all "
                f"zeros), '' = missing")
    fmt = f" (in training: text of format {spec['format']})" if spec["format"] else ""
    return f"date column: float64 (batch, 1), {DATE_UNIT}{fmt}, NaN = missing"


def _cli_inputs(g: _Graph, columns, model) -> tuple[list, str, str | None]:
    """The raw columns as the network's input: :class:`~gpunet.tabular.TableTransform` ``columns`` in ONNX
    operators, computing what :meth:`~gpunet.tabular.TableTransform.transform` computes, in float64.

    One ``(batch, 1)`` input per column it reads (:func:`cli_inputs`), named as the column. Numeric and boolean
    columns (vectorised together): ``(where(isnan(x), fill, x) - mean) / sd``, and ``isnan(x)`` as 0/1 for those
    with a missing indicator; a boolean cell is looked up (``LabelEncoder``, every case of its words, 1/0, ``""``
    missing) as 1, 0 or NaN. Categorical: ``LabelEncoder`` to the category's index (-1 when unseen, ``""`` to the
    missing category when training had one), then ``Equal`` against ``0..k-1`` cast to 0/1. Dates: the parts
    (:func:`_date_parts`) of the seconds since 1970 (whole seconds, UTC), standardised, and the indicator. The
    blocks are concatenated and put in ``feature_names`` order by one Gather, then cast to the model's dtype.

    Returns ``(inputs, the (batch, n_inputs) tensor, refused)``: ``refused`` ``(batch, 1)`` float64 is 0, or NaN in a
    row holding a value that ``gpunet predict`` refuses (an infinite number or date, a boolean cell that is none of
    its words), for :func:`_cli_outputs` to add to the outputs (``None`` when no column can refuse). Added to the
    outputs rather than the features: whether an activation keeps NaN (``Relu`` is ``max(x, 0)``) is up to the
    runtime.
    """
    inputs, specs = [], cli_inputs(columns)
    numeric = []  # (tensor (batch, 1) float64, column, feature position) of numeric and boolean columns
    blocks, positions = [], []  # (batch, w) float64 blocks and their feature positions
    poison = []  # (batch, w) float64: 0, or NaN in a row that `gpunet predict` refuses
    indicators = []  # (index within `numeric`, feature position)
    p = 0
    used = [c for c in columns.columns if c["kind"] != "left out"]
    for i, (c, spec) in enumerate(zip(used, specs)):
        name, kind = c["name"], c["kind"]
        g.scope = f"gpunet/columns.{i}/"
        inputs.append(g.value_info(name, spec["type"], ["batch", 1], _input_doc(spec)))
        if kind in ("numeric", "boolean"):
            numeric.append((name if kind == "numeric" else _boolean_values(g, name, c, poison), c, p))
            p += 1
            if c["indicator"]:
                indicators.append((len(numeric) - 1, p))
                p += 1
        elif kind == "categorical":
            block, width = _one_hot(g, name, c)
            blocks.append(block)
            positions.extend(range(p, p + width))
            p += width
        else:
            block, width = _date_features(g, name, c, poison)
            blocks.append(block)
            positions.extend(range(p, p + width))
            p += width
    if p != model.n_inputs:
        raise ValueError(f"the model's column transform gives {p} features but its first layer takes "
                         f"{model.n_inputs} inputs")
    g.scope = "gpunet/columns/"
    if numeric:
        x = _concat(g, [t for t, _, _ in numeric])
        z, gaps = _standardise(g, x, [c for _, c, _ in numeric])
        poison.append(g.op("Mul", g.op("ReduceSum", z, g.constant([1], np.int64), keepdims=1),
                           g.constant(0, np.float64)))  # NaN where an infinite number makes z infinite
        blocks.insert(0, z)
        positions[:0] = [q for _, _, q in numeric]
        if indicators:
            which = [j for j, _ in indicators]
            if which != list(range(len(numeric))):
                gaps = g.op("Gather", gaps, g.constant(which, np.int64), axis=1)
            blocks.insert(1, g.op("Cast", gaps, to=g.element_type("float64")))
            positions[len(numeric):len(numeric)] = [q for _, q in indicators]
    x = _concat(g, blocks)
    if positions != list(range(p)):
        x = g.op("Gather", x, g.constant(np.argsort(positions), np.int64), axis=1)
    refused = (poison[0] if len(poison) == 1 else g.op("Sum", *poison)) if poison else None
    if model.dtype != "float64":
        x = g.op("Cast", x, to=g.element_type(model.dtype))
    g.scope = "gpunet/"
    return inputs, x, refused


def _concat(g: _Graph, tensors: list[str]) -> str:
    return tensors[0] if len(tensors) == 1 else g.op("Concat", *tensors, axis=1)


def _standardise(g: _Graph, x: str, stats: list[dict]) -> tuple[str, str]:
    """``((where(isnan(x), fill, x) - mean) / sd, isnan(x))`` of the ``(batch, k)`` float64 ``x``, one ``{"fill",
    "mean", "sd"}`` per column: :meth:`TableTransform._standardise`'s operations in its order."""
    def vector(key):
        return g.constant([s[key] for s in stats], np.float64)

    gaps = g.op("IsNaN", x)
    filled = g.op("Where", gaps, vector("fill"), x)
    return g.op("Div", g.op("Sub", filled, vector("mean")), vector("sd")), gaps


def _label_encoder(g: _Graph, x: str, keys: list[str], codes: list[int], default: int) -> str:
    """``codes[keys.index(cell)]`` for each string cell of ``x``, ``default`` for others (``(batch, 1)`` int64)."""
    return g.op("LabelEncoder", x, domain=ML_DOMAIN, keys_strings=keys, values_int64s=codes, default_int64=default)


def _case_variants(word: str) -> list[str]:
    """Every spelling of the lower-case ``word`` whose ``lower()`` is ``word`` ("yes", "Yes", "yES", ...): gpunet
    compares boolean words in any case, and ONNX (without a locale-dependent StringNormalizer) only exactly."""
    spellings = {"".join(letters) for letters in itertools.product(*[(ch.lower(), ch.upper()) for ch in word])}
    return sorted(s for s in spellings if s.lower() == word)


def _boolean_values(g: _Graph, name: str, c: dict, poison: list) -> str:
    """A boolean column's string cells as 1.0 (true), 0.0 (false) or NaN (missing, ``""``), as
    :func:`gpunet.tabular._numeric_values` reads them: the column's words in any case, ``"1"``/``"0"`` (and
    ``"1.0"``/``"0.0"``, pandas' text of a float column), ``true``/``false`` in any case (a column of booleans);
    any other text makes its row's ``poison`` NaN."""
    keys, codes = [], []
    words = {k.lower(): int(v == 1.0) for k, v in c["map"].items()}
    for word, code in sorted(words.items()):
        for spelling in _case_variants(word):
            keys.append(spelling)
            codes.append(code)
    values = [("1", 1), ("0", 0), ("1.0", 1), ("0.0", 0), ("", _BOOLEAN_CODES["missing"])]
    values += [(spelling, int(word == "true")) for word in ("true", "false") for spelling in _case_variants(word)]
    for text, code in values:
        if text not in keys:
            keys.append(text)
            codes.append(code)
    code = _label_encoder(g, name, keys, codes, _BOOLEAN_CODES["unknown"])
    poison.append(g.op("Gather", g.constant([0.0, 0.0, 0.0, np.nan], np.float64), code, axis=0))
    return g.op("Gather", g.constant([0.0, 1.0, np.nan, np.nan], np.float64), code, axis=0)


def _one_hot(g: _Graph, name: str, c: dict) -> tuple[str, int]:
    """A categorical column's string cells one-hot as :meth:`TableTransform._transform_categorical`: one 0/1 column
    per training category (exact text; a whole number also as pandas writes it in a float column, "3" as "3.0"),
    then ``(missing)`` for ``""`` when training had missing cells; an unseen category (or ``""`` without a missing
    category) all zeros. Returns ``(block (batch, width) float64, width)``."""
    categories = list(c["categories"])
    keys, codes = list(categories), list(range(len(categories)))
    for i, category in enumerate(categories):
        alias = category + ".0"
        if re.fullmatch(r"-?\d+", category) and alias not in keys:
            keys.append(alias)
            codes.append(i)
    width = len(categories)
    if c["missing_category"]:
        keys.append("")
        codes.append(width)
        width += 1
    code = _label_encoder(g, name, keys, codes, -1)
    hot = g.op("Equal", code, g.constant(np.arange(width), np.int64))
    return g.op("Cast", hot, to=g.element_type("float64")), width


_DATE_PARTS = ("year", "month", "season_sin", "season_cos", "weekday", "hour")


def _date_features(g: _Graph, name: str, c: dict, poison: list) -> tuple[str, int]:
    """A date column given as float64 seconds since 1970-01-01 00:00 UTC: the parts of
    :func:`gpunet.tabular._date_parts` that training kept, standardised, then the missing indicator.

    Whole seconds (``floor``, as pandas' ``second`` truncates), days ``floor(s / 86400)``, the civil date by Howard
    Hinnant's ``civil_from_days`` (proleptic Gregorian, floor divisions: exact in float64 for any date pandas
    holds), the day of the year, leap years, the weekday (1970-01-01 was a Thursday, Monday = 0) and the decimal
    hour, each in the order of operations of ``_date_parts`` (the cosine as a sine). Returns ``(block (batch, width) float64, width)``.
    """
    def k(value):
        return g.constant(value, np.float64)

    def op(kind, *args, **attributes):
        return g.op(kind, *args, **attributes)

    def floor_div(a, b):
        return op("Floor", op("Div", a, k(b)))

    poison.append(op("Where", op("IsInf", name), k(np.nan), k(0)))
    parts = list(c["parts"])
    seconds = op("Floor", name)
    days = floor_div(seconds, 86400)
    values = {}
    if {"year", "month", "season_sin", "season_cos"} & set(parts):
        z = op("Add", days, k(719468))  # days since 0000-03-01
        era = floor_div(z, 146097)  # 400-year eras
        doe = op("Sub", z, op("Mul", era, k(146097)))  # [0, 146096]
        yoe = floor_div(op("Sub", op("Add", op("Sub", doe, floor_div(doe, 1460)), floor_div(doe, 36524)),
                           floor_div(doe, 146096)), 365)  # [0, 399]
        day_of_march_year = op("Sub", doe, op("Sub", op("Add", op("Mul", yoe, k(365)), floor_div(yoe, 4)),
                                              floor_div(yoe, 100)))  # [0, 365], March 1 = 0
        mp = floor_div(op("Add", op("Mul", day_of_march_year, k(5)), k(2)), 153)  # [0, 11], March = 0
        month = op("Where", op("Less", mp, k(10)), op("Add", mp, k(3)), op("Sub", mp, k(9)))
        year = op("Add", op("Add", yoe, op("Mul", era, k(400))),
                  op("Cast", op("LessOrEqual", month, k(2)), to=g.element_type("float64")))

        def divisible(n):
            return op("Equal", op("Mod", year, k(n), fmod=1), k(0))

        leap = op("Or", op("And", divisible(4), op("Not", divisible(100))), divisible(400))
        length = op("Where", leap, k(366), k(365))
        day_of_year = op("Where", op("GreaterOrEqual", day_of_march_year, k(306)),
                         op("Sub", day_of_march_year, k(305)),
                         op("Add", op("Add", day_of_march_year, k(60)), op("Cast", leap, to=g.element_type("float64"))))
        elapsed = op("Sub", day_of_year, k(1))
        values["year"] = op("Add", year, op("Div", elapsed, length))
        values["month"] = month
        season = op("Div", op("Mul", k(2 * np.pi), elapsed), length)
        # cos as sin(pi/2 - angle), within 1.2e-16 of NumPy's cos: onnxruntime 1.21 has no float64 Cos kernel
        values["season_sin"] = op("Sin", season)
        values["season_cos"] = op("Sin", op("Sub", k(np.pi / 2), season))
    if "weekday" in parts:
        shifted = op("Add", days, k(3))
        values["weekday"] = op("Sub", shifted, op("Mul", floor_div(shifted, 7), k(7)))
    if "hour" in parts:
        of_day = op("Sub", seconds, op("Mul", days, k(86400)))
        hour = floor_div(of_day, 3600)
        rest = op("Sub", of_day, op("Mul", hour, k(3600)))
        minute = floor_div(rest, 60)
        second = op("Sub", rest, op("Mul", minute, k(60)))
        values["hour"] = op("Add", op("Add", hour, op("Div", minute, k(60))), op("Div", second, k(3600)))
    z, _ = _standardise(g, _concat(g, [values[part] for part in parts]), [c["parts"][part] for part in parts])
    if not c["indicator"]:
        return z, len(parts)
    missing = op("Cast", op("IsNaN", name), to=g.element_type("float64"))
    return op("Concat", z, missing, axis=1), len(parts) + 1


def _cli_outputs(g: _Graph, target, y: str, refused: str | None) -> list:
    """The network's ``(batch, n_outputs)`` output ``y`` decoded as :meth:`TargetTransform.decode`, in float64.

    Regression: ``"prediction"`` ``(batch,)`` = ``y[:, 0] * sd + mean`` (the target's units). Binary:
    ``"probabilities"`` ``[1 - p, p]``; multi-class: the softmax rows. Classification also gives ``"label"``:
    ``classes[argmax(probabilities)]`` (the first of equal maxima, as NumPy's argmax), ``""`` for a row whose
    probabilities are NaN. ``refused`` (``(batch, 1)``, 0 or NaN, from :func:`_cli_inputs`) is added to the values
    or probabilities. Returns the outputs' value infos.
    """
    task = target.task
    if task not in CLI_OUTPUTS:
        raise ValueError(f"unknown task {task!r} in the model's metadata; expected one of {list(CLI_OUTPUTS)}")
    if g.dtype != np.float64:
        y = g.op("Cast", y, to=g.element_type("float64"))
    if task == "regression":
        y = g.op("Squeeze", y, g.constant([1], np.int64))
        y = g.op("Add", g.op("Mul", y, g.constant(target.sd, np.float64)), g.constant(target.mean, np.float64))
        if refused is not None:
            y = g.op("Add", y, g.op("Squeeze", refused, g.constant([1], np.int64)))
        g.rename(y, "prediction")
        return [g.value_info("prediction", "float64", ["batch"])]
    classes = list(target.classes)
    proba = g.op("Concat", g.op("Sub", g.constant(1, np.float64), y), y, axis=1) if task == "binary" else y
    if refused is not None:
        proba = g.op("Add", proba, refused)
    label = g.op("Gather", g.tensor("gpunet/classes", np.array(classes, dtype=object)),
                 g.op("ArgMax", proba, axis=1, keepdims=0), axis=0)
    undefined = g.op("IsNaN", g.op("ReduceSum", proba, g.constant([1], np.int64), keepdims=0))
    label = g.op("Where", undefined, g.tensor("gpunet/no_label", np.array("", dtype=object)), label)
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
def _properties(model, extra: dict) -> dict[str, str]:
    """``metadata_props``: what the model is and how it was trained, as JSON strings, and ``extra`` (the command
    line's graph: ``columns``, what each input expects)."""
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
    props.update(extra)
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

