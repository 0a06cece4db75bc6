"""ONNX export (gpunet.export, model.export, `gpunet export`) held to model.predict, NumPy formulas and `gpunet predict`
through onnxruntime."""

import csv
import functools
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet import activations, cli, export
from gpunet.recipe import TableModel
from gpunet.tabular import TableError, TableTransform, TargetTransform

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
# every built-in, two of them also with a non-default parameter
ACTIVATIONS = [*activations.ACTIVATIONS, activations.LeakyReLU(0.2), activations.ELU(alpha=0.5)]


def ids(value):
    return repr(value) if isinstance(value, activations.Activation) else str(value)


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="needs the onnx package: pip install 'gpunet[onnx]'")
    return pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'gpunet[onnx]'")


def session(ort, model_or_path):
    """An onnxruntime CPU session (one thread: the test machine is shared) on a ModelProto or a file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else model_or_path.SerializeToString()
    return ort.InferenceSession(os.fspath(source) if not isinstance(source, bytes) else source, options,
                                providers=["CPUExecutionProvider"])


def close(got, want, dtype):
    """Equal to the dtype's tolerance, relative above 1 and absolute below; NaN where NaN, inf where inf."""
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def probe(act, dtype, n=1):
    """A one-layer model ``act(x @ I + 0)``: the activation applied to the input itself (exact for n = 1)."""
    model = gn.Sequential([gn.Dense(n, n, act)], dtype=dtype)
    model.set_weights([np.eye(n), np.zeros(n)])
    return model


# -- the network: every activation and output kind equals model.predict ---------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ["linear", "sigmoid", "softmax"])
@pytest.mark.parametrize("hidden", ACTIVATIONS, ids=ids)
def test_every_hidden_activation_and_output_kind_equals_predict(ort, hidden, output, dtype):
    model = gn.Sequential([gn.Dense(7, 16, hidden), gn.Dense(16, 12, hidden), gn.Dense(12, 4, output)],
                          dtype=dtype, seed=3)
    sess = session(ort, export.to_onnx(model))
    name = {"linear": "outputs", "sigmoid": "probabilities", "softmax": "probabilities"}[output]
    assert [o.name for o in sess.get_outputs()] == [name]
    rng = np.random.default_rng(0)
    for n in (1, 37, 256):
        x = (3 * rng.standard_normal((n, 7))).astype(dtype)
        (got,) = sess.run(None, {"features": x})
        assert got.dtype == np.dtype(dtype) and got.shape == (n, 4)
        close(got, model.predict(x), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output", ACTIVATIONS, ids=ids)
def test_every_activation_as_the_output_layer_equals_predict(ort, output, dtype):
    model = gn.Sequential([gn.Dense(5, 9, "tanh"), gn.Dense(9, 3, output)], dtype=dtype, seed=1)
    sess = session(ort, export.to_onnx(model))
    rng = np.random.default_rng(1)
    for n in (1, 37, 256):
        x = (4 * rng.standard_normal((n, 5))).astype(dtype)
        close(sess.run(None, {"features": x})[0], model.predict(x), dtype)


def test_hand_computed_formulas_in_float64(ort):
    """softplus's threshold, the GELU tanh form, ELU's alpha, leaky ReLU's slope and the sigmoid against NumPy
    formulas written here, on the activations' own inputs."""
    z = np.concatenate([np.linspace(-30, 30, 601), [-1e-9, 1e-9, 19.999, 20.0, 20.001, 50.0]])
    formulas = {
        "softplus": np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20)))),
        "gelu": 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
        activations.ELU(alpha=0.5): np.where(z > 0, z, 0.5 * np.expm1(np.minimum(z, 0))),
        activations.LeakyReLU(0.2): np.where(z > 0, z, 0.2 * z),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "silu": z / (1 + np.exp(-z)),
    }
    for act, want in formulas.items():
        got = session(ort, export.to_onnx(probe(act, "float64"))).run(None, {"features": z[:, None]})[0][:, 0]
        # absolute 1e-14 where GELU's 1 + tanh cancels (z < -5, in any order of evaluation), relative elsewhere
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14, err_msg=str(act))
    softplus = session(ort, export.to_onnx(probe("softplus", "float64")))
    at = softplus.run(None, {"features": np.array([[20.0], [20.001]])})[0][:, 0]
    assert at[1] == 20.001 and at[0] > 20.0  # z itself only above the threshold
    np.testing.assert_allclose(at[0], np.log1p(np.exp(20.0)), rtol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ids)
def test_extreme_and_non_finite_inputs_as_model_forward(ort, act, dtype):
    """NaN, infinities, +-1e30, +-1e4, the softplus threshold, the GELU clamp, subnormals: what the activation
    gives in gpunet (forward: predict refuses non-finite input) it gives in onnxruntime, NaN for NaN, inf for inf;
    relative to the tolerance down to the smallest normal number (float32 subnormals differ in their last bits)."""
    values = [-np.inf, -1e30, -1e4, -200, -100.5, -100, -88, -50, -20.5, -20, -17, -10, -1, -1e-3, -1e-6, -1e-30,
              -1e-40, -0.0, 0.0, 1e-40, 1e-30, 1e-6, 1e-3, 1, 10, 17, 19.999, 20, 20.001, 50, 88, 100, 100.5, 1e4,
              1e30, np.inf, np.nan]
    x = np.array(values, dtype=dtype)[:, None]
    model = probe(act, dtype)
    with np.errstate(all="ignore"):
        want = model(x)
    got = session(ort, export.to_onnx(model)).run(None, {"features": x})[0]
    np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=np.finfo(dtype).tiny)
    finite = np.isfinite(x[:, 0])
    with np.errstate(all="ignore"):
        close(got[finite], model.predict(x[finite]), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_rows_at_the_extremes(ort, dtype):
    x = np.array([[1e30, -1e30], [-1e4, 1e4], [0.0, 0.0], [88.0, -88.0], [1e30, 1e30], [-1e30, -1e30]], dtype=dtype)
    model = probe("softmax", dtype, n=2)
    got = session(ort, export.to_onnx(model)).run(None, {"features": x})[0]
    close(got, model.predict(x), dtype)
    np.testing.assert_array_equal(got[:2], [[1, 0], [0, 1]])


# -- the graph's names, shapes and properties -------------------------------------------------------------------------
def test_names_shapes_and_properties(ort):
    onnx = pytest.importorskip("onnx")
    model = gn.Sequential([gn.Dense(4, 6, "elu", dropout=0.5), gn.Dense(6, 3)], dtype="float64", seed=0)
    X, y = np.random.default_rng(0).standard_normal((40, 4)), np.arange(40) % 3
    model.fit(X, y, loss=gn.losses.CategoricalCrossEntropy(from_logits=True), optimizer="adam", epochs=2,
              metrics=["accuracy"])
    model.metadata = {"experiment": "unit test", "rows": 40}
    proto = export.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.producer_name == "gpunet" and proto.producer_version == gn.__version__
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", export.OPSET)] and export.OPSET == 17
    assert "features" in proto.doc_string and "logits" in proto.doc_string
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("features", "logits")  # a linear output trained from logits
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inp) == ["batch", 4] and dims(out) == ["batch", 3]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert sorted(i.name for i in proto.graph.initializer if i.name.startswith("layers.")) == [
        "layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    props = {p.key: json.loads(p.value) if p.key != "dtype" else p.value for p in proto.metadata_props}
    assert props["dtype"] == "float64"
    assert props["architecture"] == [
        {"in_features": 4, "out_features": 6, "activation": {"name": "elu", "args": {"alpha": 1.0}}},
        {"in_features": 6, "out_features": 3, "activation": {"name": "linear", "args": {}}}]
    assert props["loss"] == {"name": "cce", "args": {"from_logits": True}}
    assert props["metrics"] == ["accuracy"] and props["optimizer"]["name"] == "adam"
    assert props["optimizer"]["steps"] == 4 and props["metadata"] == model.metadata
    x = X[:5]  # dropout is for training only: inference is the plain network
    close(session(ort, proto).run(None, {"features": x})[0], model.predict(x), "float64")


def test_output_names_say_what_they_hold(ort):
    def name(last, **fit):
        model = gn.Sequential([gn.Dense(2, 2, last)])
        if fit:
            model.fit(np.zeros((4, 2)), np.zeros((4, 2)), epochs=1, **fit)
        return export.to_onnx(model).graph.output[0].name

    assert name("softmax") == name("sigmoid") == "probabilities"
    assert name(None) == name("tanh") == name("relu") == "outputs"
    assert name(None, loss=gn.losses.BinaryCrossEntropy(from_logits=True)) == "logits"


def test_model_export_writes_a_file_onnxruntime_runs(ort, tmp_path):
    model = gn.Sequential([gn.Dense(3, 5, "gelu"), gn.Dense(5, 2, "softmax")], seed=2)
    path = tmp_path / "model.onnx"
    model.export(path)
    x = np.random.default_rng(0).standard_normal((37, 3)).astype(np.float32)
    close(session(ort, path).run(["probabilities"], {"features": x})[0], model.predict(x), "float32")
    assert not [p for p in os.listdir(tmp_path) if p != "model.onnx"]  # no temporary file left


# -- refusals ---------------------------------------------------------------------------------------------------------
class Cube(activations.Activation):
    name = "cube"

    def forward(self, z):
        return z * z * z


class MyReLU(activations.ReLU):  # a subclass that keeps the built-in's name: still Python code
    def forward(self, z):
        return 2 * super().forward(z)


@pytest.mark.parametrize("custom", [Cube(), MyReLU()], ids=["custom", "subclass"])
def test_custom_activation_is_refused_naming_the_layer(ort, tmp_path, custom):
    model = gn.Sequential([gn.Dense(2, 3, "relu"), gn.Dense(3, 3, custom), gn.Dense(3, 1)])
    with pytest.raises(TypeError, match=r"layers\[1\].*" + type(custom).__name__):
        model.export(tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


def test_every_built_in_activation_has_an_onnx_form():
    assert set(export._ACTIVATIONS) == set(activations.ACTIVATIONS.values())


@pytest.mark.parametrize("fmt", ["tflite", "ONNX", None])
def test_other_formats_are_refused(tmp_path, fmt):
    model = gn.Sequential([gn.Dense(2, 1)])
    with pytest.raises(ValueError, match=r"format must be one of \['onnx'\]; received format="):
        model.export(tmp_path / "m.onnx", format=fmt)
    assert not os.listdir(tmp_path)


def test_a_missing_folder_is_refused_before_writing(ort, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gn.Sequential([gn.Dense(2, 1)]).export(tmp_path / "missing" / "m.onnx")
    assert not os.listdir(tmp_path)


def test_without_onnx_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'gpunet\[onnx\]'"):
        gn.Sequential([gn.Dense(2, 1)]).export(tmp_path / "m.onnx")


def test_import_gpunet_does_not_import_onnx():
    code = "import sys, gpunet, gpunet.cli, gpunet.export; print('onnx' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_preprocessing_needs_command_line_metadata(ort):
    with pytest.raises(ValueError, match="gpunet train"):
        export.to_onnx(gn.Sequential([gn.Dense(2, 1)]), preprocessing=True)


def cli_model(features, task="binary", classes=("no", "yes"), n_out=1, dtype="float32"):
    """A model carrying the metadata `gpunet train` saves (numeric columns: (x - 0.5) / 2), without training."""
    last = {"binary": "sigmoid", "multiclass": "softmax", "regression": None}[task]
    model = gn.Sequential([gn.Dense(len(features), 4, "relu"), gn.Dense(4, n_out, last)], dtype=dtype, seed=0)
    k = len(features)
    target = TargetTransform("t")
    target.task, target.classes = task, list(classes) if task != "regression" else []
    target.mean, target.sd = (10.0, 4.0) if task == "regression" else (0.0, 1.0)
    TableModel(model, TableTransform.from_standardizer(features, [0.5] * k, [2.0] * k), target)._attach_metadata()
    return model


@pytest.mark.parametrize("columns", [["a", "label"], ["a", "a"], ["a", ""], ["a", "probabilities"],
                                     ["a", "layers.0.W"]])
def test_column_names_that_cannot_name_inputs_are_refused(ort, columns):
    with pytest.raises(ValueError, match="cannot name ONNX inputs"):
        export.to_onnx(cli_model(columns), preprocessing=True)


def test_column_names_with_spaces_and_internal_looking_names_work(ort):
    model = cli_model(["mean radius", "classes", "const_0", "x/y"])
    sess = session(ort, export.to_onnx(model, preprocessing=True))
    assert [i.name for i in sess.get_inputs()] == ["mean radius", "classes", "const_0", "x/y"]


@pytest.mark.parametrize("task,classes,n_out,message", [
    ("regression", (), 2, "gives 2 outputs, but its regression target 't' decodes one value"),
    ("multiclass", ("a", "b", "c"), 2, "gives 2 outputs, but its multiclass target 't' decodes 3 probabilities"),
])
def test_a_network_that_does_not_fit_its_target_is_refused(ort, task, classes, n_out, message):
    """`gpunet predict` decodes one regression value (TargetTransform.decode): a two-output network would lose one."""
    with pytest.raises(ValueError, match=message):
        export.to_onnx(cli_model(["a", "b"], task, classes, n_out), preprocessing=True)
    with pytest.raises(ValueError, match=message):  # and gpunet predict no longer reads its first output only
        gn.TableModel.from_model(cli_model(["a", "b"], task, classes, n_out))


def test_unknown_column_kinds_and_incomplete_metadata_are_refused(ort):
    model = cli_model(["a", "b"])
    model.metadata["cli"]["columns"]["columns"][1]["kind"] = "text"
    with pytest.raises(ValueError, match=r"gives 1 features but the network takes 2"):  # a kind it cannot encode
        export.to_onnx(model, preprocessing=True)
    model.metadata = {"cli": {"task": "binary", "features": ["a", "b"]}}  # neither version 1 nor 2
    with pytest.raises(ValueError, match=r"lacks 'x_scaler'"):
        export.to_onnx(model, preprocessing=True)


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_files_of_the_first_command_line_export_as_they_predict(ort, task):
    """Metadata version 1 (``x_scaler``/``features``): read as `gpunet predict` reads it, missing cells included."""
    model = gn.Sequential([gn.Dense(3, 5, "tanh"), gn.Dense(5, 1 if task == "regression" else 3,
                                                            None if task == "regression" else "softmax")], seed=0)
    model.metadata = {"cli": {"task": task, "classes": [] if task == "regression" else ["a", "b", "c"],
                              "features": ["u", "v", "w"], "target": "y",
                              "x_scaler": {"mean": [0.5, 0.0, -0.5], "scale": [1.0, 2.0, 4.0]},
                              "y_scaler": {"mean": [2.0], "scale": [3.0]} if task == "regression" else None}}
    X = np.random.default_rng(0).normal(0, 3, (30, 3))
    X[[1, 4], [0, 2]] = np.nan  # filled with the mean, as gpunet predict now does for these files
    frame = pd_().DataFrame(X, columns=["u", "v", "w"])
    pred, proba = gn.TableModel.from_model(model).outputs(frame)
    got = session(ort, export.to_onnx(model, preprocessing=True)).run(None, {c: X[:, [j]] for j, c in
                                                                             enumerate("uvw")})
    if task == "regression":
        np.testing.assert_allclose(got[0], pred, rtol=1e-6, atol=1e-6 * 3.0)
    else:
        assert got[0].tolist() == np.array(["a", "b", "c"])[pred].tolist()
        np.testing.assert_allclose(got[1], proba, rtol=1e-6, atol=1e-9)


# -- the command line: raw CSV rows in, what `gpunet predict` writes out ---------------------------------------------
def pd_():
    return pytest.importorskip("pandas")


@functools.lru_cache(maxsize=1)
def readme_onnx_feeds():
    """The README's ``onnx_feeds(session, frame)`` (section "Exporting to ONNX"), run as printed there: what a user
    copies is what these tests feed onnxruntime with."""
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("def onnx_feeds(session, frame):")
    end = text.index("    return feeds\n", start) + len("    return feeds\n")
    namespace = {"json": json, "np": np, "pd": pd_()}
    exec(text[start:end], namespace)
    return namespace["onnx_feeds"]


def onnx_feeds(session, frame):
    """onnxruntime's inputs from a pandas DataFrame of raw rows (as read by pd.read_csv), the README's way."""
    return readme_onnx_feeds()(session, frame)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def cli_export(capsys, train_csv, target, folder, *options, dtype="float32"):
    """`gpunet train` (20 epochs, small layers) then `gpunet export`: (model path, ONNX path, export's output)."""
    model, onnx_path = folder / f"{target}_{dtype}.safetensors", folder / f"{target}_{dtype}.onnx"
    assert cli.main(["train", "--dataset", f"csv:{train_csv}:{target}", "--save", str(model), "--quiet",
                     "--epochs", "20", "--device", "cpu", "--dtype", dtype, "--layers", "16,8", "--ensemble", "1",
                     *options]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(model), str(onnx_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {onnx_path} (ONNX opset 17, with the training preprocessing)" in out
    return model, onnx_path, out


def same_as_gpunet_predict(ort, capsys, model, onnx_path, new_csv, n_ids=0):
    """Run the exported graph on the rows of ``new_csv`` read with pandas and compare with the file `gpunet predict`
    writes: identical labels, probabilities to their 6 written digits and values exactly written, and, unrounded,
    to 1e-6 relative of TableModel.outputs (what predict computes before writing). Returns the session's outputs."""
    pd = pd_()
    sess = session(ort, onnx_path)
    got = sess.run(None, onnx_feeds(sess, pd.read_csv(new_csv)))
    pred_csv = onnx_path.with_suffix(".predictions.csv")
    assert cli.main(["predict", str(model), "--csv", str(new_csv), "--output", str(pred_csv)]) == 0
    capsys.readouterr()
    header, *written = read_rows(pred_csv)
    tm = gn.TableModel.load(model)
    pred, proba = tm.outputs(pd.read_csv(new_csv))
    if tm.target.task == "regression":
        (values,) = got
        assert header[n_ids:] == [tm.target.name] and values.shape == (len(written),) and values.dtype == np.float64
        scale = 1e-6 * tm.target.sd  # float32 network: relative to the target's spread where values cross 0
        np.testing.assert_allclose(values, [float(r[n_ids]) for r in written], rtol=1e-6, atol=scale)
        np.testing.assert_allclose(values, pred, rtol=1e-6, atol=scale)
        return got
    labels, probabilities = got
    classes = tm.target.classes
    assert header[n_ids:] == [tm.target.name] + [f"p_{c}" for c in classes]
    assert labels.dtype == object and labels.tolist() == [r[n_ids] for r in written]
    assert probabilities.shape == (len(written), len(classes)) and probabilities.dtype == np.float64
    # float32 logits carry ~1e-7 of their size: a probability far below 1 is good to ~1e-6 of itself plus ~1e-11
    np.testing.assert_allclose(probabilities, [[float(v) for v in r[n_ids + 1:]] for r in written], rtol=6e-6,
                               atol=1e-9)
    np.testing.assert_allclose(probabilities, proba, rtol=1e-6, atol=1e-9)
    return got


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """A CSV of 150 rows: three numeric features on different scales, a binary and a 3-class text target and a
    continuous one; and 40 new rows without targets."""
    pytest.importorskip("sklearn")
    pd_()
    folder = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)

    def table(n):
        X = np.column_stack([rng.normal(50, 10, n), rng.normal(0, 0.01, n), rng.uniform(-1e3, 1e3, n)])
        s = (X[:, 0] - 50) / 10 + X[:, 1] * 100 + X[:, 2] / 500
        return X, s

    X, s = table(150)
    binary = np.where(s > 0, "yes", "no")
    species = np.array(["cat", "dog", "fish"])[np.digitize(s, [-0.7, 0.7])]
    price = 1000 + 300 * s + rng.normal(0, 10, 150)
    header = ["height cm", "ratio", "offset"]
    for target, values in (("pet", binary), ("kind", species), ("price", price.tolist())):
        write_csv(folder / f"train_{target}.csv", header + [target],
                  [[*map(repr, x), v if target != "price" else repr(v)] for x, v in zip(X.tolist(), values)])
    new, _ = table(40)
    write_csv(folder / "new.csv", header, [list(map(repr, x)) for x in new.tolist()])
    return folder


@pytest.mark.parametrize("target,dtype", [("pet", "float32"), ("kind", "float32"), ("kind", "float64")])
def test_cli_classifier_gives_the_labels_of_gpunet_predict(ort, capsys, tabular, target, dtype):
    model, onnx_path, out = cli_export(capsys, tabular / f"train_{target}.csv", target, tabular, dtype=dtype)
    assert "numbers (float64, NaN = missing): height cm, ratio, offset" in out and "text" not in out
    sess = session(ort, onnx_path)
    assert [i.name for i in sess.get_inputs()] == ["height cm", "ratio", "offset"]
    assert all(i.type == "tensor(double)" and i.shape == ["batch", 1] for i in sess.get_inputs())
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    opsets = pytest.importorskip("onnx").load(onnx_path).opset_import
    assert [o.domain for o in opsets] == [""]  # numbers only: no ai.onnx.ml
    labels, proba = same_as_gpunet_predict(ort, capsys, model, onnx_path, tabular / "new.csv")
    assert set(labels) <= ({"no", "yes"} if target == "pet" else {"cat", "dog", "fish"})


def test_cli_regression_gives_the_values_of_gpunet_predict(ort, capsys, tabular):
    model, onnx_path, _ = cli_export(capsys, tabular / "train_price.csv", "price", tabular)
    assert [o.name for o in session(ort, onnx_path).get_outputs()] == ["prediction"]
    same_as_gpunet_predict(ort, capsys, model, onnx_path, tabular / "new.csv")


def messy(n, seed, target="price"):
    """Rows as `tests/test_cli_tables.py`'s messy tables: a name per row (left out), numbers with blanks, text
    categories with blanks, yes/no in mixed case with blanks, True/False, dates and times with blanks, integer
    codes (a forced category) with blanks, a count whose placeholder for missing is "?"; the target ``price``
    (numbers), ``grade`` (3 classes) or ``premium`` (yes/no)."""
    pd = pd_()
    rng = np.random.default_rng(seed)
    size = rng.uniform(1, 10, n).round(3)
    kind = rng.choice(["oak", "pine", "birch"], n).astype(object)
    member = rng.choice(["yes", "no", "Yes", "NO"], n).astype(object)
    when = pd.Timestamp("2019-06-01") + pd.to_timedelta(rng.integers(0, 700 * 24 * 60, n), unit="min")
    count = rng.integers(0, 30, n).astype(str).astype(object)
    count[rng.choice(n, max(1, n // 40), replace=False)] = "?"
    code = rng.choice([1, 2, 3], n).astype(float)
    price = 10 * size + np.select([kind == "oak", kind == "pine"], [30.0, 0.0], -20.0) + 5 * code
    price += rng.normal(0, 1, n) + np.where(np.char.lower(member.astype(str)) == "yes", 8, 0)
    frame = pd.DataFrame({"name": [f"item {seed}-{i}" for i in range(n)], "size": size, "kind": kind,
                          "member": member, "fresh": rng.choice([True, False], n).astype(object),
                          "sold": when.strftime("%Y-%m-%d %H:%M"), "count": count, "code": code})
    for column, rows in (("size", [1, 5]), ("kind", [2, 9]), ("member", [3]), ("sold", [6]), ("code", [8])):
        frame.loc[rows, column] = None
    if target == "grade":
        frame["grade"] = np.where(price > 80, "high", np.where(price > 50, "mid", "low"))
    elif target == "premium":
        frame["premium"] = np.where(price > 65, "yes", "no")
    else:
        frame["price"] = price.round(2)
    return frame


@pytest.fixture(scope="module")
def messy_csvs(tmp_path_factory):
    """Training CSVs for each target, and new rows with what training never saw: an unseen category ('maple') and
    code (7.0), yes/no spelled 'YES' and 'nO', blanks in every column."""
    folder = tmp_path_factory.mktemp("messy")
    for target in ("price", "grade", "premium"):
        messy(240, 0, target).to_csv(folder / f"train_{target}.csv", index=False)
    new = messy(60, 1).drop(columns=["price"])
    new.loc[0, "kind"], new.loc[1, "code"], new.loc[2, "member"], new.loc[4, "member"] = "maple", 7.0, "YES", "nO"
    new.loc[10, ["size", "kind", "member", "fresh", "sold", "count", "code"]] = None
    new.to_csv(folder / "new.csv", index=False)
    return folder


@pytest.mark.parametrize("target", ["price", "grade", "premium"])
def test_cli_messy_table_gives_what_gpunet_predict_writes(ort, capsys, messy_csvs, target):
    model, onnx_path, out = cli_export(capsys, messy_csvs / f"train_{target}.csv", target, messy_csvs,
                                       "--categorical", "code")
    kinds = {c["name"]: c["kind"] for c in gn.TableModel.load(model).columns.columns}
    assert kinds == {"name": "left out", "size": "numeric", "kind": "categorical", "member": "boolean",
                     "fresh": "boolean", "sold": "date", "count": "numeric", "code": "categorical"}
    assert "text (string, '' = missing): kind, member, fresh, code" in out
    assert "dates (float64 seconds since 1970-01-01 00:00 UTC, NaN = missing): sold (was text %Y-%m-%d %H:%M)" in out
    sess = session(ort, onnx_path)
    assert [(i.name, i.type) for i in sess.get_inputs()] == [
        ("size", "tensor(double)"), ("kind", "tensor(string)"), ("member", "tensor(string)"),
        ("fresh", "tensor(string)"), ("sold", "tensor(double)"), ("count", "tensor(double)"),
        ("code", "tensor(string)")]
    assert sorted(o.domain for o in pytest.importorskip("onnx").load(onnx_path).opset_import) == ["", "ai.onnx.ml"]
    same_as_gpunet_predict(ort, capsys, model, onnx_path, messy_csvs / "new.csv", n_ids=1)  # `name` comes first


def test_cli_packed_ensemble_of_penguins(ort, capsys, tmp_path):
    """The recipe's default packs an ensemble into one network: exported as it predicts. Penguins: text classes,
    'NA' cells, a category with missing cells (sex)."""
    penguins = os.path.join(os.path.dirname(__file__), "data", "penguins.csv")
    model, onnx_path, _ = cli_export(capsys, penguins, "species", tmp_path, "--ensemble", "3")
    assert gn.load(model).ensemble_members == 3
    labels, _ = same_as_gpunet_predict(ort, capsys, model, onnx_path, penguins)
    truth = pd_().read_csv(penguins)["species"]
    assert np.mean(labels == truth.to_numpy()) > 0.5


def with_features_output(proto, n_features):
    """The graph with the network's input (the transformed columns, float64 model) as a second output."""
    onnx = pytest.importorskip("onnx")
    gemm = next(node for node in proto.graph.node if node.op_type == "Gemm")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(gemm.input[0], onnx.TensorProto.DOUBLE,
                                                                 ["batch", n_features]))
    return proto


def test_the_graph_computes_table_transform_exactly(ort):
    """Every column kind, feature by feature (a float64 network's input) against TableTransform.transform:
    standardised numbers with median and indicator, a placeholder, yes/no in any case, True/False, one-hot with
    unseen categories and missing cells, and dates from 1716 to 2223 (leap days, midnights and the second before,
    before 1970); the sines within 1e-15, the rest exactly. Rows gpunet refuses (an infinite number, a boolean that
    is none of its words) give NaN probabilities and the label ''."""
    pd = pd_()
    rng = np.random.default_rng(3)
    train = messy(200, 2, "premium")
    seconds = rng.integers(-8_000_000_000, 8_000_000_000, 200)
    seconds[:20] = rng.integers(-50_000, 50_000, 20) * 86400
    seconds[20:40] = seconds[:20] - 1
    train["sold"] = pd.to_datetime(seconds, unit="s").strftime("%Y-%m-%d %H:%M:%S")
    train.loc[[7, 11], "sold"] = None
    special = ["2000-02-29 12:00:00", "1900-02-28 23:59:59", "1900-03-01 00:00:00", "2100-12-31 23:59:59",
               "1970-01-01 00:00:00", "1969-12-31 23:59:59", "2024-02-29 00:00:00"]
    new = messy(len(special) + 4, 3)
    new["sold"] = special + [None] * 4
    new.loc[0, "kind"], new.loc[1, "member"], new.loc[2, "member"], new.loc[3, "code"] = "maple", "yEs", "1", 7.0
    new.loc[4, "member"], new.loc[5, "member"] = "True", "FALSE"  # a column of booleans: 1 and 0, as gpunet
    columns = TableTransform(categorical=["code"]).fit(train.drop(columns=["premium"]))
    assert {c["name"]: c["kind"] for c in columns.columns}["sold"] == "date"
    target = TargetTransform("premium").fit(train["premium"])
    width = len(columns.feature_names)
    model = gn.Sequential([gn.Dense(width, 1, "sigmoid")], dtype="float64", seed=0)
    TableModel(model, columns, target)._attach_metadata()
    sess = session(ort, with_features_output(export.to_onnx(model, preprocessing=True), width))
    frame = pd.read_csv(io.StringIO(new.to_csv(index=False)))
    labels, proba, features = sess.run(None, onnx_feeds(sess, frame))
    want = columns.transform(frame)
    sines = [j for j, n in enumerate(columns.feature_names) if n.startswith("sold.season")]
    others = [j for j in range(width) if j not in sines]

    def same(got, want):
        np.testing.assert_array_equal(got[:, others], want[:, others])
        np.testing.assert_allclose(got[:, sines], want[:, sines], rtol=0, atol=1e-15)

    same(features, want)
    np.testing.assert_allclose(proba, TableModel(model, columns, target).outputs(frame)[1], rtol=1e-12)
    frame.loc[0, "size"], frame.loc[2, "member"] = np.inf, "maybe"  # gpunet predict refuses both
    for bad in ({"size": np.inf}, {"member": "maybe"}):
        with pytest.raises(TableError):
            columns.transform(frame.head(3).assign(**{k: [v] * 3 for k, v in bad.items()}))
    labels, proba, features = sess.run(None, onnx_feeds(sess, frame))
    assert np.isnan(proba[[0, 2]]).all() and labels[[0, 2]].tolist() == ["", ""]
    assert np.isfinite(proba[1]).all() and labels[1] in ("no", "yes")
    same(features[3:], want[3:])
    assert set(labels[3:]) <= {"no", "yes"}


def test_the_readme_function_refuses_what_it_cannot_read(ort, tmp_path):
    """A `;` file with decimal commas read without decimal=",", or dates in another format, is an error naming the
    column, not a table of missing cells; read as gpunet read it, the same rows feed the graph predict's way."""
    pd = pd_()
    train = messy(120, 4, "price")
    path = tmp_path / "train.csv"
    train.to_csv(path, index=False, sep=";", decimal=",")
    columns = TableTransform(categorical=["code"]).fit(train.drop(columns=["price"]))
    net = gn.Sequential([gn.Dense(len(columns.feature_names), 1)], dtype="float64", seed=0)
    table_model = TableModel(net, columns, TargetTransform("price").fit(train["price"]))
    table_model._attach_metadata()
    sess = session(ort, export.to_onnx(net, preprocessing=True))
    with pytest.raises(ValueError, match="^size: Unable to parse string"):
        onnx_feeds(sess, pd.read_csv(path, sep=";"))  # "9,87" is no number without decimal=","
    frame = pd.read_csv(path, sep=";", decimal=",")
    (prediction,) = sess.run(None, onnx_feeds(sess, frame))
    np.testing.assert_allclose(prediction, table_model.outputs(frame)[0], rtol=1e-12)
    spaced = frame.astype({"size": object, "sold": object})
    spaced.loc[0, "size"], spaced.loc[2, "sold"] = "  ", " " + str(frame.loc[2, "sold"]) + " "
    spaced.loc[4, "kind"] = " oak "  # blanks are missing cells and text is stripped, as gpunet reads them
    (got,) = sess.run(None, onnx_feeds(sess, spaced))
    np.testing.assert_allclose(got, table_model.outputs(spaced)[0], rtol=1e-12)
    frame["sold"] = pd.to_datetime(frame["sold"]).dt.strftime("%d/%m/%Y %H:%M")
    with pytest.raises(ValueError, match=r"^sold: '\d\d/\d\d/\d{4} \d\d:\d\d' is not a date of format "
                                         r"%Y-%m-%d %H:%M$"):
        onnx_feeds(sess, frame)


def test_input_descriptions(ort):
    """metadata_props["columns"] says what each input expects (the README's feeding function reads it), and each
    input's doc_string says it in words."""
    train = messy(120, 4, "price")
    columns = TableTransform(categorical=["code"]).fit(train.drop(columns=["price"]))
    target = TargetTransform("price").fit(train["price"])
    model = gn.Sequential([gn.Dense(len(columns.feature_names), 1)], seed=0)
    TableModel(model, columns, target)._attach_metadata()
    proto = export.to_onnx(model, preprocessing=True)
    specs = {s["name"]: s for s in json.loads({p.key: p.value for p in proto.metadata_props}["columns"])}
    assert list(specs) == ["size", "kind", "member", "fresh", "sold", "count", "code"]  # `name` is left out
    assert specs["count"] == {"name": "count", "kind": "numeric", "type": "float64", "missing": "NaN",
                              "placeholder": "?"}
    assert specs["member"]["true"] == ["yes"] and specs["member"]["false"] == ["no"]
    assert specs["fresh"]["true"] == ["true"] and specs["code"]["categories"] == ["1", "2", "3"]
    assert specs["sold"]["format"] == "%Y-%m-%d %H:%M" and specs["sold"]["unit"] == export.DATE_UNIT
    docs = {i.name: i.doc_string for i in proto.graph.input}
    assert "the placeholder '?' as NaN" in docs["count"] and "'' = missing" in docs["kind"]
    assert "seconds since 1970-01-01 00:00 UTC" in docs["sold"] and "%Y-%m-%d %H:%M" in docs["sold"]


def test_cli_export_of_a_python_model_is_the_bare_network(ort, capsys, tmp_path):
    model = gn.Sequential([gn.Dense(3, 2, "softmax")])
    model.save(tmp_path / "m.safetensors")
    assert cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")]) == 0
    assert "inputs features -> outputs probabilities" in capsys.readouterr().out
    x = np.ones((1, 3), np.float32)
    close(session(ort, tmp_path / "m.onnx").run(None, {"features": x})[0], model.predict(x), "float32")


@pytest.mark.parametrize("problem,message", [
    ("missing model", "nope.safetensors: no such file or directory"),
    ("missing folder", "does not exist"),
])
def test_cli_export_errors_are_one_line_with_status_2(ort, capsys, tmp_path, problem, message):
    model = tmp_path / "m.safetensors"
    gn.Sequential([gn.Dense(3, 1)]).save(model)
    args = {"missing model": [str(tmp_path / "nope.safetensors"), str(tmp_path / "m.onnx")],
            "missing folder": [str(model), str(tmp_path / "nope" / "m.onnx")]}[problem]
    assert cli.main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpunet export: error: ") and message in err and err.count("\n") == 1


def test_datetime_columns_with_a_time_zone(ort):
    """A datetime column (Parquet, a DataFrame) has no text format: the README's function gives its seconds since
    1970 UTC, and the graph computes the parts of its UTC time, as gpunet does."""
    pd = pd_()
    rng = np.random.default_rng(5)
    when = pd.Timestamp("2020-01-01", tz="Europe/Paris") + pd.to_timedelta(rng.integers(0, 10**8, 80), unit="s")
    frame = pd.DataFrame({"when": when, "x": rng.normal(size=80)})
    frame.loc[3, "when"] = pd.NaT
    columns = TableTransform().fit(frame)
    assert [c["kind"] for c in columns.columns] == ["date", "numeric"] and columns.columns[0]["format"] is None
    target = TargetTransform("y").fit(pd.Series(rng.normal(size=80)))
    width = len(columns.feature_names)
    model = gn.Sequential([gn.Dense(width, 1)], dtype="float64", seed=0)
    TableModel(model, columns, target)._attach_metadata()
    sess = session(ort, with_features_output(export.to_onnx(model, preprocessing=True), width))
    prediction, features = sess.run(None, onnx_feeds(sess, frame))
    np.testing.assert_allclose(features, columns.transform(frame), rtol=0, atol=1e-15)
    np.testing.assert_allclose(prediction, TableModel(model, columns, target).outputs(frame)[0], rtol=1e-12)


def test_cli_export_refusal_is_one_line(ort, capsys, tmp_path):
    cli_model(["a", "b"], "regression", (), 2).save(tmp_path / "m.safetensors")
    assert cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpunet export: error: the network gives 2 outputs") and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
