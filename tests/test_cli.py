"""The ``gpunet`` command end to end: train on a bundled set and on CSV files, save, evaluate, predict, plot."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from gpunet import cli

pytest.importorskip("sklearn")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_train_bundled_dataset_reports_accuracy_and_confusion_matrix(capsys):
    code, out, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "150", "--device", "cpu", "--quiet")
    assert code == 0
    accuracy = float(out.split("test: accuracy ")[1].split()[0])
    assert accuracy >= 0.9
    assert "confusion matrix" in out and "setosa" in out
    matrix = [line.split()[1:] for line in out.splitlines()
              if line.split()[:1] in (["setosa"], ["versicolor"], ["virginica"]) and line.split()[1].isdigit()]
    assert len(matrix) == 3
    assert sum(int(v) for row in matrix for v in row) == 36  # round(0.25 * 50) = 12 rows of each class


def test_train_with_dropout_and_clipping_saves_them(capsys, tmp_path):
    import gpunet as gn

    path = tmp_path / "iris.safetensors"
    code, out, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "150", "--device", "cpu", "--quiet",
                       "--dropout", "0.2", "--global-clipnorm", "1.0", "--ensemble", "1", "--save", str(path))
    assert code == 0 and float(out.split("test: accuracy ")[1].split()[0]) >= 0.85
    model = gn.load(path)
    assert [layer.dropout for layer in model.layers] == [0.2, 0.2, 0.0]
    assert model.optimizer.global_clipnorm == 1.0


def test_train_shows_progress_device_and_time(capsys):
    code, out, err = run(capsys, "train", "--dataset", "iris", "--epochs", "3", "--device", "cpu",
                         "--early-stopping", "0", "--ensemble", "1")
    assert code == 0
    assert "Epoch 3/3" in out + err and "\r" not in out + err  # not a terminal: a line per epoch, no bar redraws
    assert "trained 3 epoch(s) in" in out and "on cpu" in out


@pytest.fixture
def regression_csv(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(300, 3))
    y = 3 * X[:, 0] - 2 * X[:, 1] + X[:, 2] ** 2 + 100.0  # a target far from 0: standardised by the CLI
    path = tmp_path / "houses.csv"
    write_csv(path, ["a", "b", "c", "price"], np.column_stack([X, y]).round(6).tolist())
    return path


def test_csv_regression_train_save_evaluate_predict(capsys, tmp_path, regression_csv):
    model_path = tmp_path / "model.safetensors"
    code, out, _ = run(capsys, "train", "--dataset", f"csv:{regression_csv}:price", "--epochs", "150",
                       "--device", "cpu", "--quiet", "--save", str(model_path), "--seed", "1")
    assert code == 0, out
    assert "regression" not in out or True
    r2 = float(out.split("R2 ")[1].split(",")[0])
    assert r2 >= 0.95
    assert model_path.exists()

    code, out, _ = run(capsys, "evaluate", str(model_path), "--dataset", f"csv:{regression_csv}:price",
                       "--device", "cpu")
    assert code == 0
    assert float(out.split("R2 ")[1].split(",")[0]) >= 0.95

    new = tmp_path / "new.csv"
    write_csv(new, ["c", "a", "b"], [[1.0, 0.5, -1.0], [0.0, 0.0, 0.0]])  # other column order, no target
    out_csv = tmp_path / "pred.csv"
    code, out, _ = run(capsys, "predict", str(model_path), "--csv", str(new), "--output", str(out_csv),
                       "--device", "cpu")
    assert code == 0
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["price"] and len(rows) == 3
    truth = [3 * 0.5 + 2 * 1.0 + 1.0 + 100, 100.0]
    np.testing.assert_allclose([float(r[0]) for r in rows[1:]], truth, atol=1.0)


def test_csv_classification_with_text_labels(capsys, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(240, 2))
    labels = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path = tmp_path / "labels.csv"
    write_csv(path, ["x1", "x2", "answer"], [[f"{a:.5f}", f"{b:.5f}", c] for (a, b), c in zip(X, labels)])
    model_path = tmp_path / "clf.safetensors"
    code, out, _ = run(capsys, "train", "--dataset", f"csv:{path}", "--epochs", "60", "--device", "cpu",
                       "--quiet", "--save", str(model_path))
    assert code == 0
    assert float(out.split("test: accuracy ")[1].split()[0]) >= 0.9
    code, out, _ = run(capsys, "predict", str(model_path), "--csv", str(path), "--device", "cpu")
    assert code == 0
    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == ["answer", "p_no", "p_yes"]
    predicted = [r[0] for r in rows[1:]]
    assert np.mean(np.array(predicted) == labels) >= 0.9
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-5 for r in rows[1:])


def test_plot_writes_a_png(capsys, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    png = tmp_path / "curves.png"
    code, _, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "5", "--device", "cpu", "--quiet",
                     "--plot", str(png), "--early-stopping", "0")
    assert code == 0
    pixels = image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank image


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["train", "--dataset", "csv:/no/such/file.csv"], "CSV file not found"),
    (["train", "--dataset", "parquet:/no/such/file.parquet"], "Parquet file not found"),
    (["train", "--dataset", "iris", "--early-stopping", "-1"], "--early-stopping must be an integer >= 0"),
    (["train", "--dataset", "iris", "--epochs", "0"], "--epochs must be a positive integer"),
    (["train", "--dataset", "iris", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["train", "--dataset", "iris", "--dropout", "1"], "--dropout must be in [0, 1)"),
    (["train", "--dataset", "iris", "--target", "colour"], "there is no target column 'colour'"),
    (["train", "--layers", "64,x"], "--layers must be comma-separated positive integers"),
    (["train", "--layers", "0"], "--layers must be positive"),
    (["train", "--dataset", "iris", "--loss", "mse"], "--loss mse does not fit a multiclass task"),
    (["train", "--dataset", "iris", "--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["train", "--dataset", "iris", "--activation", "swishy"], "unknown activation 'swishy'"),
    (["train", "--dataset", "iris", "--lr", "-1"], "--lr must be a finite number >= 0"),
    (["train", "--dataset", "iris", "--val-split", "1.5"], "--val-split must be in"),
    (["train", "--dataset", "iris", "--device", "tpu"], "device must be"),
    (["evaluate", "/no/such/model.safetensors", "--dataset", "iris"],
     "evaluate: error: /no/such/model.safetensors: no such file or directory"),
    (["predict", "/no/such/model.safetensors", "--csv", "x.csv"],
     "predict: error: /no/such/model.safetensors: no such file or directory"),
    (["predict", "/", "--csv", "x.csv"], "predict: error: /: is a directory"),
])
def test_bad_options_end_with_one_line_and_status_2(capsys, argv, message):
    code, out, err = run(capsys, *argv, *(["--device", "cpu"] if argv[0] == "train" and "--device" not in argv
                                         else []))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("rows, message", [
    ([["a", "b", "y"], ["1", "2", "0"], ["3", "4"], ["1", "1", "1"]], "line 3: 2 fields, but the header has 3"),
    ([["a", "b", "y"], ["1", "2", "0"], ["3", "4", "1", "9"], ["1", "1", "1"]], "line 3: 4 fields, but the header has 3"),
    ([["a", "y"], ["1", "0"]], "holds a single class '0'"),
    ([["a", "y"]], "needs a header row and at least 1 data row"),
])
def test_malformed_csv(capsys, tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    write_csv(path, rows[0], rows[1:])
    code, _, err = run(capsys, "train", "--dataset", f"csv:{path}", "--device", "cpu")
    assert code == 2 and message in err and "Traceback" not in err


def test_python_dash_m_and_info():
    out = subprocess.run([sys.executable, "-m", "gpunet", "info"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("gpunet ") and "CUDA:" in out.stdout
