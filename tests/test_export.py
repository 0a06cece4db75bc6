"""ONNX export (gpunet.export, model.export, `gpunet export`) held to model.predict, NumPy formulas and `gpunet predict`
through onnxruntime."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import gpunet as gn
from gpunet import activations, cli, export

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
    """A model carrying the metadata `gpunet train` saves, without training."""
    last = {"binary": "sigmoid", "multiclass": "softmax", "regression": None}[task]
    model = gn.Sequential([gn.Dense(len(features), 4, "relu"), gn.Dense(4, n_out, last)], dtype=dtype, seed=0)
    k = len(features)
    model.metadata = {"cli": {"task": task, "classes": list(classes) if task != "regression" else [],
                              "features": list(features), "target": "t",
                              "x_scaler": {"mean": [0.5] * k, "scale": [2.0] * k},
                              "y_scaler": {"mean": [10.0, -3.0][:n_out], "scale": [4.0, 0.5][:n_out]}
                              if task == "regression" else None}}
    return model


@pytest.mark.parametrize("columns", [["a", "label"], ["a", "a"], ["a", ""], ["a", "probabilities"]])
def test_column_names_that_cannot_name_inputs_are_refused(ort, columns):
    with pytest.raises(ValueError, match="cannot name ONNX inputs"):
        export.to_onnx(cli_model(columns), preprocessing=True)


def test_column_names_with_spaces_and_internal_looking_names_work(ort):
    model = cli_model(["mean radius", "classes", "const_0", "x/y"])
    sess = session(ort, export.to_onnx(model, preprocessing=True))
    assert [i.name for i in sess.get_inputs()] == ["mean radius", "classes", "const_0", "x/y"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_target_regression_in_the_targets_units(ort, dtype):
    """The CLI trains one target; the graph also decodes several (`(batch, k)` values), as cli._predict does."""
    model = cli_model(["a", "b", "c"], task="regression", n_out=2, dtype=dtype)
    X = np.random.default_rng(0).standard_normal((37, 3)) * 5
    sess = session(ort, export.to_onnx(model, preprocessing=True))
    (got,) = sess.run(["prediction"], {c: X[:, [j]] for j, c in enumerate("abc")})
    want, _ = cli._predict(model, X)
    assert got.shape == (37, 2) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * 4)


# -- the command line: raw CSV rows in, the labels and values of `gpunet predict` out --------------------------------
def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def raw_feeds(sess, path):
    """onnxruntime's inputs from a CSV: one (n, 1) float64 column per input, by header name (the README's way)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {i.name: np.array([[float(r[i.name])] for r in rows]) for i in sess.get_inputs()}


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """A CSV of 150 rows: three numeric features on different scales, a binary and a 3-class text target and a
    continuous one; and 40 new rows without targets."""
    pytest.importorskip("sklearn")
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
    write_csv(folder / "train.csv", header + ["pet", "kind", "price"],
              [[*map(repr, x), b, k, repr(p)] for x, b, k, p in zip(X.tolist(), binary, species, price.tolist())])
    new, _ = table(40)
    write_csv(folder / "new.csv", header, [list(map(repr, x)) for x in new.tolist()])
    return folder


def train_and_export(capsys, folder, target, dtype="float32", drop=()):
    train_csv = folder / f"train_{target}.csv"
    rows = read_rows(folder / "train.csv")
    keep = [j for j, h in enumerate(rows[0]) if h == target or h not in ("pet", "kind", "price")]
    write_csv(train_csv, [rows[0][j] for j in keep], [[r[j] for j in keep] for r in rows[1:]])
    model, onnx_path = folder / f"{target}_{dtype}.safetensors", folder / f"{target}_{dtype}.onnx"
    assert cli.main(["train", "--dataset", f"csv:{train_csv}:{target}", "--save", str(model), "--quiet",
                     "--epochs", "3", "--device", "cpu", "--dtype", dtype, "--layers", "16,8"]) == 0
    assert cli.main(["export", str(model), str(onnx_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {onnx_path} (ONNX opset 17, with the training preprocessing)" in out
    return model, onnx_path


@pytest.mark.parametrize("target,dtype", [("pet", "float32"), ("kind", "float32"), ("kind", "float64")])
def test_cli_classifier_gives_the_labels_of_gpunet_predict(ort, capsys, tabular, target, dtype):
    model, onnx_path = train_and_export(capsys, tabular, target, dtype)
    sess = session(ort, onnx_path)
    assert [i.name for i in sess.get_inputs()] == ["height cm", "ratio", "offset"]
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    feeds = raw_feeds(sess, tabular / "new.csv")
    labels, proba = sess.run(None, feeds)
    pred_csv = tabular / f"pred_{target}_{dtype}.csv"
    assert cli.main(["predict", str(model), "--csv", str(tabular / "new.csv"), "--output", str(pred_csv)]) == 0
    written = read_rows(pred_csv)
    classes = ["no", "yes"] if target == "pet" else ["cat", "dog", "fish"]
    assert written[0] == [target] + [f"p_{c}" for c in classes]
    assert labels.tolist() == [r[0] for r in written[1:]] and labels.dtype == object
    np.testing.assert_allclose(proba, [[float(v) for v in r[1:]] for r in written[1:]], rtol=1e-5, atol=1e-6)
    _, want = cli._predict(gn.load(model), np.hstack(list(feeds.values())))  # unrounded: to the tolerance
    close(proba, want, dtype)
    assert proba.shape == (40, len(classes)) and proba.dtype == np.float64


def test_cli_regression_gives_the_values_of_gpunet_predict(ort, capsys, tabular):
    model, onnx_path = train_and_export(capsys, tabular, "price")
    sess = session(ort, onnx_path)
    assert [o.name for o in sess.get_outputs()] == ["prediction"]
    (values,) = sess.run(None, raw_feeds(sess, tabular / "new.csv"))
    pred_csv = tabular / "pred_price.csv"
    assert cli.main(["predict", str(model), "--csv", str(tabular / "new.csv"), "--output", str(pred_csv)]) == 0
    written = read_rows(pred_csv)
    assert written[0] == ["price"] and values.shape == (40,) and values.dtype == np.float64
    scale = gn.load(model).metadata["cli"]["y_scaler"]["scale"][0]  # float32 network: 1e-5 of the target's scale
    np.testing.assert_allclose(values, [float(r[0]) for r in written[1:]], rtol=1e-5, atol=1e-5 * scale)


def test_cli_export_of_a_python_model_is_the_bare_network(ort, capsys, tmp_path):
    model = gn.Sequential([gn.Dense(3, 2, "softmax")])
    model.save(tmp_path / "m.safetensors")
    assert cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")]) == 0
    assert "inputs features -> outputs probabilities" in capsys.readouterr().out
    x = np.ones((1, 3), np.float32)
    close(session(ort, tmp_path / "m.onnx").run(None, {"features": x})[0], model.predict(x), "float32")


@pytest.mark.parametrize("problem,message", [
    ("missing model", "No such file"),
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
