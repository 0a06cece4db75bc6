"""``gpunet train/evaluate/predict`` on raw tables (issue 13): strings, blanks, dates, names, missing targets, other
delimiters, Parquet; and each wrong answer the issue lists, each test failing on the command line before it."""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet import cli

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

PENGUINS = Path(__file__).parent / "data" / "penguins.csv"  # palmerpenguins' penguins.csv (CC0)
FAST = ["--device", "cpu", "--quiet", "--ensemble", "1"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, message):
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def rows_of(text):
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture
def linear_csv(tmp_path):
    """y = 3a - 2b + c + 100 with 300 rows, the target in the middle."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(300, 3))
    frame = pd.DataFrame({"a": X[:, 0], "y": 3 * X[:, 0] - 2 * X[:, 1] + X[:, 2] + 100, "b": X[:, 1], "c": X[:, 2]})
    path = tmp_path / "linear.csv"
    frame.round(6).to_csv(path, index=False)
    return path, frame


# -- done means: raw tables from the command line ------------------------------------------------------------------
def test_penguins_csv_trains_evaluates_and_predicts_with_original_labels(capsys, tmp_path):
    model = tmp_path / "penguins.safetensors"
    code, out, err = run(capsys, "train", "--dataset", f"csv:{PENGUINS}:species", "--device", "cpu", "--quiet",
                         "--save", model)
    assert code == 0, err
    assert "island (3: Biscoe, Dream, Torgersen)" in out and "sex (2: female, male; missing is a category)" in out
    assert float(out.split("test: accuracy ")[1].split()[0]) >= 0.95
    code, out, err = run(capsys, "predict", model, "--csv", PENGUINS, "--device", "cpu")
    assert code == 0, err
    rows = rows_of(out)
    truth = pd.read_csv(PENGUINS)["species"].tolist()
    assert rows[0] == ["species", "p_Adelie", "p_Chinstrap", "p_Gentoo"] and len(rows) == 1 + len(truth)
    assert np.mean([r[0] == t for r, t in zip(rows[1:], truth)]) >= 0.97  # the class names themselves
    code, out, _ = run(capsys, "evaluate", model, "--dataset", f"csv:{PENGUINS}", "--device", "cpu")
    assert code == 0 and float(out.split("penguins: accuracy ")[1].split()[0]) >= 0.97


def messy_frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    size = rng.uniform(1, 10, n)
    kind = rng.choice(["oak", "pine", "birch"], n)
    when = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    price = 10 * size + np.select([kind == "oak", kind == "pine"], [30.0, 0.0], -20.0) + rng.normal(0, 1, n)
    frame = pd.DataFrame({"name": [f"item {i}" for i in range(n)], "size": size.round(3), "kind": kind,
                          "sold": when.strftime("%Y-%m-%d"), "price": price.round(2)})
    frame.loc[[1, 5], "size"] = np.nan
    frame.loc[[2, 9], "kind"] = None
    frame.loc[[3, 4, 8], "price"] = np.nan  # rows without a target
    return frame


def test_messy_table_strings_blanks_dates_names_missing_targets(capsys, tmp_path):
    path, model = tmp_path / "messy.csv", tmp_path / "messy.safetensors"
    messy_frame().to_csv(path, index=False)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:price", *FAST, "--save", model)
    assert code == 0, err
    assert "note: 3 row(s) without a 'price' value dropped" in out
    assert "left out: name (ID-like text (" in out and "date -> year" in out and "kind (3: birch, oak, pine" in out
    assert float(out.split("R2 ")[1].split(",")[0]) >= 0.9
    new = messy_frame(20, seed=1).drop(columns=["price"])
    new.loc[0, "kind"] = "maple"  # unseen in training
    new.to_csv(tmp_path / "new.csv", index=False)
    code, out, err = run(capsys, "predict", model, "--csv", tmp_path / "new.csv", "--device", "cpu")
    assert code == 0 and "note: kind: 1 cell(s) hold categories unseen in training ('maple')" in err
    rows = rows_of(out)
    assert rows[0] == ["name", "price"] and len(rows) == 21  # the ID column comes along, one row per input row
    assert [r[0] for r in rows[1:]] == new["name"].tolist()


def test_parquet_train_and_predict(capsys, tmp_path):
    pytest.importorskip("pyarrow")
    path, model = tmp_path / "penguins.parquet", tmp_path / "p.safetensors"
    pd.read_csv(PENGUINS).to_parquet(path)
    code, out, err = run(capsys, "train", "--dataset", f"parquet:{path}:species", *FAST, "--save", model)
    assert code == 0, err
    code, out, err = run(capsys, "predict", model, "--parquet", path, "--device", "cpu")
    assert code == 0 and len(rows_of(out)) == 345


# -- wrong answers with no error -----------------------------------------------------------------------------------
def test_evaluate_matches_columns_by_name_not_position(capsys, tmp_path, linear_csv):
    path, frame = linear_csv
    model = tmp_path / "m.safetensors"
    assert run(capsys, "train", "--dataset", f"csv:{path}:y", *FAST, "--save", model)[0] == 0
    scores = []
    for order in (["a", "y", "b", "c"], ["c", "b", "a", "y"], ["y", "c", "a", "b"]):
        shuffled = tmp_path / f"{''.join(order)}.csv"
        frame[order].round(6).to_csv(shuffled, index=False)
        code, out, err = run(capsys, "evaluate", model, "--dataset", f"csv:{shuffled}", "--device", "cpu")
        assert code == 0, err
        scores.append(float(out.split("R2 ")[1].split(",")[0]))
    assert scores[0] >= 0.95 and scores[1] == scores[0] == scores[2]  # the target is found by its saved name
    frame[["a", "y", "c"]].to_csv(tmp_path / "short.csv", index=False)
    one_line_error(*run(capsys, "evaluate", model, "--dataset", f"csv:{tmp_path / 'short.csv'}", "--device",
                        "cpu")[::2], "lacks the column(s) ['b'] the model was trained on")
    frame.assign(colour="red").to_csv(tmp_path / "extra.csv", index=False)
    code, out, _ = run(capsys, "evaluate", model, "--dataset", f"csv:{tmp_path / 'extra.csv'}", "--device", "cpu")
    assert code == 0 and "column(s) unknown in training ignored: ['colour']" in out


def test_task_regression_regresses_on_the_values_not_class_indices(capsys, tmp_path):
    rng = np.random.default_rng(0)
    cylinders = rng.choice([4, 6, 8], 300)
    frame = pd.DataFrame({"displacement": cylinders * 50 + rng.normal(0, 5, 300), "cylinders": cylinders})
    frame.to_csv(tmp_path / "cars.csv", index=False)
    model = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'cars.csv'}:cylinders", "--task",
                         "regression", *FAST, "--save", model)
    assert code == 0 and "numbers -> regression" in out, err
    code, out, _ = run(capsys, "predict", model, "--csv", tmp_path / "cars.csv", "--device", "cpu")
    predicted = np.array([float(r[0]) for r in rows_of(out)[1:]])
    assert abs(predicted[cylinders == 8].mean() - 8) < 0.3 and abs(predicted[cylinders == 4].mean() - 4) < 0.3


def test_many_whole_number_classes_with_task_multiclass(capsys, tmp_path):
    rng = np.random.default_rng(0)
    label = np.repeat(np.arange(25), 12)
    pd.DataFrame({"x": label + rng.normal(0, 0.1, label.size), "code": label}).to_csv(tmp_path / "c.csv", index=False)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'c.csv'}:code", *FAST, "--epochs", "3")
    assert code == 0 and "numbers -> regression" in out  # inferred: 25 whole numbers are a quantity
    code, out, err = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'c.csv'}:code", "--task", "multiclass",
                         *FAST, "--epochs", "3")
    assert code == 0 and "25 classes -> multiclass" in out, err


def test_evaluate_reads_float_labels_and_a_single_class(capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    frame = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "label": (x.sum(axis=1) > 0).astype(int)})
    frame.to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "m.safetensors"
    assert run(capsys, "train", "--dataset", f"csv:{tmp_path / 'train.csv'}:label", *FAST, "--save", model)[0] == 0
    frame.assign(label=frame["label"].astype(float)).to_csv(tmp_path / "floats.csv", index=False)  # 0.0 / 1.0
    accuracies = []
    for name in ("train.csv", "floats.csv"):
        code, out, err = run(capsys, "evaluate", model, "--dataset", f"csv:{tmp_path / name}", "--device", "cpu")
        assert code == 0, err
        accuracies.append(float(out.split("accuracy ")[1].split()[0]))
    assert accuracies[0] == accuracies[1] >= 0.9
    frame[frame["label"] == 1].to_csv(tmp_path / "ones.csv", index=False)
    code, out, err = run(capsys, "evaluate", model, "--dataset", f"csv:{tmp_path / 'ones.csv'}", "--device", "cpu")
    assert code == 0 and "--task" not in out + err and "accuracy" in out
    frame.assign(label=frame["label"] + 6).to_csv(tmp_path / "other.csv", index=False)
    one_line_error(*run(capsys, "evaluate", model, "--dataset", f"csv:{tmp_path / 'other.csv'}", "--device",
                        "cpu")[::2], "label(s) the model never saw: ['6', '7']")


def test_empty_target_cells_are_dropped_not_a_class(capsys, tmp_path):
    path = tmp_path / "t.csv"
    # x = 3i, not i: a column 0..59 in a file of 60 rows is a row number, left out even where targets are missing
    path.write_text("x,y\n" + "".join(f"{3 * i},{'' if i % 10 == 3 else i * 0.5}\n" for i in range(60)))
    code, out, _ = run(capsys, "train", "--dataset", f"csv:{path}:y", *FAST, "--epochs", "3")
    assert code == 0 and "numbers -> regression" in out and "6 row(s) without a 'y' value dropped" in out
    path.write_text("x,y\n" + "".join(f"{3 * i},{'' if i % 10 == 3 else 'ab'[i % 2]}\n" for i in range(60)))
    code, out, _ = run(capsys, "train", "--dataset", f"csv:{path}:y", *FAST, "--epochs", "3")
    assert code == 0 and "2 classes -> binary (a, b)" in out and "6 row(s) without" in out


def test_duplicate_column_names_are_refused(capsys, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,a,y\n1,2,3,0\n4,5,6,1\n7,8,9,0\n")
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{path}:y", *FAST)[::2], "duplicate column names ['a']")


def test_byte_order_mark_is_not_part_of_the_first_name(capsys, tmp_path, linear_csv):
    path, frame = linear_csv
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    model = tmp_path / "m.safetensors"
    assert run(capsys, "train", "--dataset", f"csv:{bom}:y", *FAST, "--save", model)[0] == 0
    assert gn.TableModel.load(model).columns.inputs == ["a", "b", "c"]
    code, out, err = run(capsys, "predict", model, "--csv", path, "--device", "cpu")  # no BOM: same names
    assert code == 0 and len(rows_of(out)) == 301, err


def test_unnamed_index_column_is_left_out(capsys, tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "label": np.repeat(["a", "b"], 100)})  # sorted by class
    frame.to_csv(tmp_path / "indexed.csv")  # pandas' default: the index as an unnamed first column
    code, out, _ = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'indexed.csv'}:label", *FAST, "--epochs",
                       "20")
    assert code == 0 and "left out: Unnamed: 0 (unnamed column" in out
    assert float(out.split("test: accuracy ")[1].split()[0]) < 0.8  # x is noise: no leak through the row index


@pytest.mark.parametrize("delimiter, shown", [(";", "';'"), ("\t", "tab")])
def test_semicolon_and_tab_files(capsys, tmp_path, linear_csv, delimiter, shown):
    path, frame = linear_csv
    other = tmp_path / "other.csv"
    frame.round(6).to_csv(other, index=False, sep=delimiter, decimal="," if delimiter == ";" else ".")
    code, out, err = run(capsys, "train", "--dataset", f"csv:{other}:y", *FAST)
    assert code == 0 and f"delimiter {shown} detected" in out, err
    assert float(out.split("R2 ")[1].split(",")[0]) >= 0.95  # decimal commas read as numbers
    option = "\\t" if delimiter == "\t" else delimiter
    assert run(capsys, "train", "--dataset", f"csv:{other}:y", "--delimiter", option, *FAST)[0] == 0
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{other}:y", "--delimiter", "|", *FAST)[::2],
                   "delimiter '|'")


def test_diverging_run_is_one_line(capsys):
    code, out, err = run(capsys, "train", "--dataset", "diabetes", "--lr", "1e6", "--optimizer", "sgd", *FAST)
    one_line_error(code, err, "training diverged")
    assert "lower --lr (it was 1e+06)" in err


def test_predict_reads_a_field_over_128_kib(capsys, tmp_path, linear_csv):
    path, frame = linear_csv
    model = tmp_path / "m.safetensors"
    assert run(capsys, "train", "--dataset", f"csv:{path}:y", *FAST, "--save", model)[0] == 0
    frame.head(3).assign(note=["x" * 200_000, "short", ""]).to_csv(tmp_path / "big.csv", index=False)
    code, out, err = run(capsys, "predict", model, "--csv", tmp_path / "big.csv", "--device", "cpu")
    assert code == 0 and len(rows_of(out)) == 4, err


def test_plot_and_save_are_checked_before_training(capsys, tmp_path, monkeypatch):
    code, out, err = run(capsys, "train", "--dataset", "iris", *FAST, "--save", tmp_path / "missing" / "m.st")
    one_line_error(code, err, "--save")
    assert "does not exist" in err and "trained" not in out
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
                        real(name, *a))
    code, out, err = run(capsys, "train", "--dataset", "iris", *FAST, "--plot", tmp_path / "c.png")
    one_line_error(code, err, "--plot needs matplotlib")
    assert out == ""


def test_closed_stdout_does_not_stop_the_save(tmp_path):
    model = tmp_path / "m.safetensors"
    process = subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--dataset", "iris", *FAST, "--save",
                                str(model)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()  # like `| head -1`
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert model.is_file()


def test_help_descriptions_and_version(capsys):
    for command, words in (("evaluate", "matched by name"), ("predict", "one row per input row"),
                           ("train", "the report lists what was done to each column")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert words in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"gpunet {gn.__version__}"


def test_messages_speak_command_line(capsys, tmp_path):
    rng = np.random.default_rng(0)
    labels = ["a"] * 30 + ["b"] * 30 + ["rare"]  # one row of a class: it stays in the training rows
    pd.DataFrame({"x": rng.normal(size=61), "label": labels}).to_csv(tmp_path / "r.csv", index=False)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'r.csv'}:label", *FAST, "--epochs", "3")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'r.csv'}:label", *FAST, "--val-split", "0.001")
    assert code == 0, err  # at least one validation row per class that has two
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("x,label\n1,a\n2,b\n3,c\n")
    code, _, err = run(capsys, "train", "--dataset", f"csv:{tiny}:label", *FAST)
    one_line_error(code, err, "--test-split 0.25 holds out no rows")
    assert "validation_data" not in err and "class 0" not in err


def test_small_data_defaults_hold_up(capsys):
    """Penguins' body mass from the other columns: the issue saw R2 0.749 with the old defaults (10% validation
    rows, patience 10); scikit-learn's MLP reaches 0.839 and RidgeCV ~0.86 on such splits."""
    code, out, err = run(capsys, "train", "--dataset", f"csv:{PENGUINS}:body_mass_g", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert float(out.split("R2 ")[1].split(",")[0]) >= 0.83


# -- bad input: one line, status 2 ---------------------------------------------------------------------------------
def test_bad_tables(capsys, tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    one_line_error(*run(capsys, "train", "--dataset", f"parquet:{tmp_path / 'broken.parquet'}", *FAST)[::2],
                   "is not a readable Parquet file")
    (tmp_path / "empty_target.csv").write_text("x,y\n1,\n2,\n3,\n")
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{tmp_path / 'empty_target.csv'}:y", *FAST)[::2],
                   "the target column 'y' is empty")
    (tmp_path / "ids.csv").write_text("id,y\n" + "".join(f"k{i},{i % 2}\n" for i in range(20)))
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{tmp_path / 'ids.csv'}:y", *FAST)[::2],
                   "no usable feature column: id: ID-like text")
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{PENGUINS}:colour", *FAST)[::2],
                   "there is no target column 'colour'")


def test_all_empty_feature_column_and_category_only_table(capsys, tmp_path):
    rng = np.random.default_rng(0)
    kind = rng.choice(["x", "y", "z"], 120)
    frame = pd.DataFrame({"kind": kind, "blank": [None] * 120, "label": np.where(kind == "x", "yes", "no")})
    frame.to_csv(tmp_path / "cats.csv", index=False)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{tmp_path / 'cats.csv'}:label", *FAST)
    assert code == 0, err
    assert "left out: blank (empty (no values))" in out and float(out.split("accuracy ")[1].split()[0]) == 1.0


def test_models_saved_by_the_first_command_line_still_predict(capsys, tmp_path, linear_csv):
    path, frame = linear_csv
    model = gn.Sequential([gn.Dense(3, 1)], dtype="float64", seed=0)
    model.set_weights([np.array([[3.0], [-2.0], [1.0]]), np.array([0.0])])
    mean, scale = [0.5, 0.0, -0.5], [1.0, 1.0, 1.0]
    model.metadata = {"cli": {"task": "regression", "classes": [], "features": ["a", "b", "c"], "target": "y",
                              "x_scaler": {"mean": mean, "scale": scale}, "y_scaler": {"mean": [2.0], "scale": [1.0]}}}
    model.save(tmp_path / "old.safetensors")
    code, out, err = run(capsys, "predict", tmp_path / "old.safetensors", "--csv", path, "--device", "cpu")
    assert code == 0, err
    expected = ((frame[["a", "b", "c"]].round(6).to_numpy() - mean) @ [3.0, -2.0, 1.0]) + 2.0
    np.testing.assert_allclose([float(r[0]) for r in rows_of(out)[1:]], expected, rtol=1e-9)


@pytest.mark.parametrize("options, message", [
    (["--ignore", "species"], "'species' is the target column; it cannot also be in --ignore"),
    (["--categorical", "island,species"], "'species' is the target column; it cannot also be in --categorical"),
    (["--test-split", "0.995", "--val-split", "0.5"],
     "--val-split 0.5 holds out no rows: every class has a single row of the 3 rows it splits"),
])
def test_options_that_contradict_the_target_or_leave_nothing_to_split(capsys, options, message):
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{PENGUINS}:species", *FAST, *options)[::2], message)
