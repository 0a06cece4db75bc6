"""The command line on tables it does not load (issue 13 part 3): ``--stream on`` (or files over
``gpunet.data.STREAM_BYTES``) reads CSV/Parquet chunk by chunk; for a file no bigger than the transform's sample the
trained networks, the reports and the predictions are those of the loading path, bit for bit."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn
from gpunet import cli, data, recipe

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")

PENGUINS = Path(__file__).parent / "data" / "penguins.csv"
FAST = ["--device", "cpu", "--quiet", "--ensemble", "2", "--epochs", "30"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(data, "CHUNK_ROWS", 37)  # many chunks, the last one partial


def weights_of(path):
    return gn.load(path).get_weights()


def report(out):
    """The output without the timing line and the saved path."""
    return [line for line in out.splitlines() if not line.startswith(("trained ", "saved "))]


@pytest.fixture
def messy_table(tmp_path):
    """A regression table with text categories, blanks, a date, an ID and rows without a target."""
    rng = np.random.default_rng(3)
    n = 600
    a, b = rng.normal(0, 1, n), rng.uniform(0, 10, n)
    shop = rng.choice(["north", "south", "east"], n)
    value = 3 * a - 0.5 * b + (shop == "north") * 2 + rng.normal(0, 0.2, n)
    frame = pd.DataFrame({"id": [f"row{i}" for i in range(n)], "a": a, "b": b, "shop": shop,
                          "day": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
                          "value": value})
    frame.loc[rng.choice(n, 15, replace=False), "b"] = np.nan
    frame.loc[rng.choice(n, 9, replace=False), "value"] = np.nan
    return frame


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_streamed_training_equals_loading_the_file(kind, messy_table, tmp_path, capsys, small_chunks):
    path = tmp_path / f"messy.{kind}"
    if kind == "csv":
        messy_table.to_csv(path, index=False, sep=";", decimal=",")  # decimal commas, decided on the first chunk
    else:
        messy_table.to_parquet(path, row_group_size=100)
    runs = {}
    for stream in ("off", "on"):
        model = tmp_path / f"{stream}.safetensors"
        code, out, err = run(capsys, "train", "--dataset", f"{kind}:{path}:value", *FAST, "--stream", stream,
                             "--save", model)
        assert code == 0, err
        runs[stream] = (report(out), weights_of(model))
    assert runs["on"][0] == runs["off"][0]
    assert "9 row(s) without a 'value' value dropped" in "\n".join(runs["on"][0])
    assert all(np.array_equal(x, y) for x, y in zip(runs["on"][1], runs["off"][1]))
    outputs = {}
    for stream in ("off", "on"):
        code, out, err = run(capsys, "evaluate", tmp_path / "on.safetensors", "--dataset", f"{kind}:{path}",
                             "--device", "cpu", "--stream", stream)
        assert code == 0, err
        code, predicted, perr = run(capsys, "predict", tmp_path / "on.safetensors", f"--{kind}", path, "--device",
                                    "cpu", "--stream", stream)
        assert code == 0, perr
        outputs[stream] = (out, predicted, perr)
    assert outputs["on"][0] == outputs["off"][0] and outputs["on"][2] == outputs["off"][2]  # report, notes
    # predictions of 37-row chunks: float32 BLAS rounds a product of few rows differently (an ulp or so)
    on, off = (list(csv.reader(io.StringIO(outputs[s][1]))) for s in ("on", "off"))
    assert on[0] == off[0] == ["id", "value"] and len(on) == len(off) == 601
    assert [r[0] for r in on] == [r[0] for r in off]
    np.testing.assert_allclose([float(r[1]) for r in on[1:]], [float(r[1]) for r in off[1:]], rtol=1e-5, atol=1e-5)


def test_streamed_classification_with_a_sample(tmp_path, capsys, small_chunks, monkeypatch):
    """A sample smaller than the file: the transforms are fitted on it (noted), a class seen only outside it is
    known, and the networks learn about as well as from the loaded file."""
    monkeypatch.setattr(recipe, "SAMPLE_ROWS", 150)
    table = pd.read_csv(PENGUINS)
    rare = table.iloc[[0]].copy()
    rare["species"] = "Emperor"  # one row of a fourth class, at the end of the file: outside a 150-row sample
    big = pd.concat([table, table, rare], ignore_index=True)
    path = tmp_path / "penguins.csv"
    big.to_csv(path, index=False)
    # a seed whose sample (a random choice of 150 of the 689 rows, from the seed) leaves out the last row
    seed = next(s for s in range(20) if len(big) - 1 not in np.random.default_rng(s).choice(len(big), 150, False))
    code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:species", *FAST, "--epochs", "60",
                         "--stream", "on", "--seed", seed, "--save", tmp_path / "p.safetensors")
    assert code == 0, err
    assert "4 classes" in out and "Emperor" in out
    assert "the transforms are fitted on a sample of 150 rows; 1 target label(s) only seen outside it" in out
    assert float(out.split("test: accuracy ")[1].split()[0]) > 0.9
    model = gn.TableModel.load(tmp_path / "p.safetensors")
    assert model.target.classes == ["Adelie", "Chinstrap", "Emperor", "Gentoo"]


def test_files_over_the_threshold_stream_by_default(tmp_path, capsys, monkeypatch):
    path = tmp_path / "penguins.csv"
    pd.read_csv(PENGUINS).to_csv(path, index=False)
    monkeypatch.setattr(data, "STREAM_BYTES", path.stat().st_size - 1)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:species", "--device", "cpu", "--ensemble", "1",
                         "--epochs", "2")
    assert code == 0, err
    assert "penguins: 344 rows, 8 columns (streamed from the file)" in out
    monkeypatch.setattr(data, "STREAM_BYTES", path.stat().st_size)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:species", "--device", "cpu", "--ensemble", "1",
                         "--epochs", "2")
    assert code == 0 and "streamed" not in out


def one_line_error(code, err, message):
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_files_give_one_line_and_status_2(tmp_path, capsys):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    for command in (["train", "--dataset", f"parquet:{broken}:y", *FAST],
                    ["evaluate", "model.safetensors", "--dataset", f"parquet:{broken}"]):
        if command[0] == "evaluate":
            code, _, _ = run(capsys, "train", "--dataset", f"csv:{PENGUINS}:species", *FAST, "--save",
                             tmp_path / "model.safetensors")
            command[1] = str(tmp_path / "model.safetensors")
        code, out, err = run(capsys, *command, "--stream", "on")
        one_line_error(code, err, "is not a readable Parquet file")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,y\n1,2,0\n3,4\n5,6,1\n")
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{ragged}:y", *FAST, "--stream", "on")[::2],
                   "line 3: 2 fields, but the header has 3")
    table = pd.read_csv(PENGUINS)
    path = tmp_path / "p.csv"
    table.to_csv(path, index=False)
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{path}:nothing", *FAST, "--stream", "on")[::2],
                   "there is no target column 'nothing'")
    code, _, err = run(capsys, "predict", tmp_path / "model.safetensors", "--csv", ragged, "--stream", "on",
                       "--output", tmp_path / "out.csv")
    assert code == 2 and not (tmp_path / "out.csv").exists() and not (tmp_path / "out.csv.part").exists()


def test_a_bad_cell_is_named_by_its_row_in_the_file_when_streamed(messy_table, tmp_path, capsys, small_chunks):
    """Chunks of 37 rows: the row a prediction's error names is the file's (1 = the first data row), not the
    chunk's, in the loading and the streaming path alike."""
    good = tmp_path / "good.csv"
    messy_table.to_csv(good, index=False)
    code, _, err = run(capsys, "train", "--dataset", f"csv:{good}:value", *FAST, "--save", tmp_path / "m.safetensors")
    assert code == 0, err
    bad = messy_table.copy()
    bad["a"] = bad["a"].astype(object)
    bad.loc[100, "a"] = "n/a?"  # file row 101, in the third chunk
    dated = messy_table.copy()
    dated.loc[150:, "day"] = pd.to_datetime(messy_table["day"][150:]).dt.strftime("%d.%m.%Y")
    path = tmp_path / "bad.csv"
    for stream in ("off", "on"):
        bad.to_csv(path, index=False)
        one_line_error(*run(capsys, "predict", tmp_path / "m.safetensors", "--csv", path, "--stream", stream)[::2],
                       "row 101, column 'a': 'n/a?' is not a number (the column held numbers in training)")
        dated.to_csv(path, index=False)
        one_line_error(*run(capsys, "predict", tmp_path / "m.safetensors", "--csv", path, "--stream", stream)[::2],
                       "row 151, column 'day': '30.05.2024' is a date in another format than training's %Y-%m-%d")
        code, out, err = run(capsys, "evaluate", tmp_path / "m.safetensors", "--dataset", f"csv:{path}", "--stream",
                             stream)  # rows without a target (9 of them) are dropped first: still the file's row
        one_line_error(code, err, "row 151, column 'day': '30.05.2024' is a date in another format")


def test_stray_dates_in_the_training_file_never_stop_its_own_training(messy_table, tmp_path, capsys, small_chunks,
                                                                     monkeypatch):
    """Cells of the training file that training read as missing (no date at all, clustered in one chunk; a date in
    another format outside the transform's sample) are read so in every chunk, loaded or streamed."""
    monkeypatch.setattr(recipe, "SAMPLE_ROWS", 150)
    table = messy_table.copy()
    table.loc[100:117, "day"] = "unknown"  # 18 of 600 (3%), all in rows 101..118
    seed = 0
    rows = np.flatnonzero(table["value"].notna().to_numpy())  # train_file's sample: 150 of the rows with a target
    sampled = set(rows[np.random.default_rng(seed).choice(len(rows), 150, replace=False)])
    outside = max(r for r in rows if r not in sampled)
    table.loc[outside, "day"] = "05/06/2024"
    path = tmp_path / "stray.csv"
    table.to_csv(path, index=False)
    for stream in ("off", "on"):
        code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:value", *FAST, "--stream", stream,
                             "--seed", seed)
        assert code == 0, err
        assert "test: R2" in out



def european(value: float, decimals: int) -> str:
    """1589.25 -> '1.589,25' (a German spreadsheet's export)."""
    return f"{value:,.{decimals}f}".replace(",", "X").replace(".", ",").replace("X", ".")


@pytest.mark.parametrize("stream", ["off", "on"])
def test_european_numbers_read_as_the_same_numbers_in_a_comma_file(tmp_path, capsys, small_chunks, stream):
    """penguins written the European way (';', decimal commas, '.' thousands in the body mass, a '?' placeholder in
    a decimal-comma column, a mixed column of dot decimals): the same numbers, columns, notes and network as the
    plain CSV, loaded or streamed."""
    table = pd.read_csv(PENGUINS)
    table["bill_length_mm"] = table["bill_length_mm"].astype(object)
    table.loc[[5, 40, 77], "bill_length_mm"] = "?"
    plain, eu = tmp_path / "plain.csv", tmp_path / "eu.csv"
    table.to_csv(plain, index=False)
    written = table.copy()
    written["bill_length_mm"] = [v if v == "?" or pd.isna(v) else european(float(v), 1)
                                 for v in table["bill_length_mm"]]
    written["bill_depth_mm"] = [None if pd.isna(v) else european(v, 1) for v in table["bill_depth_mm"]]
    written["body_mass_g"] = [None if pd.isna(v) else european(v, 0) for v in table["body_mass_g"]]  # 3.750
    written.to_csv(eu, index=False, sep=";")  # flipper_length_mm stays 181.0: a column of dot decimals
    assert "3.750" in eu.read_text() and "39,1" in eu.read_text()
    frame, notes = data.read_table(eu)
    np.testing.assert_array_equal(frame["body_mass_g"].to_numpy(), table["body_mass_g"].to_numpy())
    np.testing.assert_array_equal(frame["flipper_length_mm"].to_numpy(), table["flipper_length_mm"].to_numpy())
    assert "eu.csv: column 'body_mass_g' has '.' as thousands separator (1.589 = 1589): read as numbers" in notes
    assert "eu.csv: column 'bill_length_mm' has decimal commas: read as numbers" in notes
    outputs = {}
    for path in (plain, eu):
        model = tmp_path / f"{path.stem}.safetensors"
        code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:species", *FAST, "--stream", stream,
                             "--save", model)
        assert code == 0, err
        assert "bill_length_mm ('?' read as missing; " in out
        outputs[path.stem] = ([line for line in report(out) if "eu.csv" not in line and "';'" not in line],
                              weights_of(model))
    assert outputs["eu"][0] == outputs["plain"][0]
    assert all(np.array_equal(a, b) for a, b in zip(outputs["eu"][1], outputs["plain"][1]))


@pytest.mark.parametrize("stream", ["off", "on"])
def test_number_readings_are_decided_once_per_column_and_kept_for_new_rows(tmp_path, capsys, small_chunks, stream):
    """Decimal commas that first appear after the file's first 1000 rows; a column blank for whole chunks; '.'
    thousands with decimal commas (1.589,5) as the only decimals: the loaded and the streamed reading agree, and a
    model's new rows are read as its training file was (a predict file of 3.750-style masses alone: 3750)."""
    n = 1200
    rng = np.random.default_rng(0)
    price = [f"{i % 50}" if i < 1100 else f"{i % 50},5" for i in range(n)]  # commas from row 1101 on only
    blank = ["" if 200 <= i < 400 else f"{v:.3f}" for i, v in enumerate(rng.normal(size=n))]
    mass = [european(v, 1) for v in rng.uniform(1000, 5000, n)]  # 1.589,5
    y = [f"{v:.4f}" for v in rng.normal(size=n)]
    path = tmp_path / "eu.csv"
    path.write_text("price;blank;mass;y\n" + "".join(f"{a};{b};{c};{d}\n" for a, b, c, d in
                                                      zip(price, blank, mass, y)))
    frame, notes = data.read_table(path)
    assert [str(frame[c].dtype) for c in ("price", "blank", "mass")] == ["float64"] * 3
    np.testing.assert_allclose(frame["price"][[0, 1150]], [0.0, 0.5])
    np.testing.assert_allclose(frame["mass"], [float(m.replace(".", "").replace(",", ".")) for m in mass])
    file = data.TableFile(path)
    streamed = pd.concat([chunk for _, chunk in file.chunks()], ignore_index=True)
    pd.testing.assert_frame_equal(streamed, frame)
    assert file.european == ["mass", "price"] and file.notes == notes
    model = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "train", "--dataset", f"csv:{path}:y", *FAST, "--epochs", "2", "--stream", stream,
                         "--save", model)
    assert code == 0, err
    assert "numeric -> standardised: price, blank (" in out and "left out" not in out
    assert gn.TableModel.load(model).european == ["mass", "price"]
    new = tmp_path / "new.csv"
    new.write_text("price;blank;mass\n3;0.5;3.750\n4;0.25;1.589\n")  # nothing here says the file is European
    code, predicted, err = run(capsys, "predict", model, "--csv", new, "--stream", stream)
    assert code == 0, err
    tm = gn.TableModel.load(model)
    want = tm.predict(pd.DataFrame({"price": [3.0, 4.0], "blank": [0.5, 0.25], "mass": [3750.0, 1589.0]}))
    got = [float(row[-1]) for row in list(csv.reader(io.StringIO(predicted)))[1:]]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("rows", [None, 3, 500])
def test_readings_agree_loaded_and_chunked_on_late_or_mixed_evidence(tmp_path, monkeypatch, rows):
    """The review's cases: decimal commas that first appear after row 1000 (the whole file decides: 1.589 is 1589
    everywhere); a European file's column of integers that later holds 12.5 and 1.250 (a plain column: 1.25)."""
    late = tmp_path / "late.csv"
    late.write_text("a;y\n" + "".join(f"1.589;{i % 3}\n" for i in range(1005)) + "2,5;0\n")
    integers = tmp_path / "integers.csv"
    integers.write_text("a;b\n12;1,5\n13;2\n14;3\n12.5;4\n1.250;5\n")
    for path, column, want in ((late, "a", [1589.0] * 1005 + [2.5]), (integers, "a", [12, 13, 14, 12.5, 1.25])):
        loaded, _ = data.read_table(path)
        np.testing.assert_array_equal(loaded[column].to_numpy(dtype=float), want)
        if rows is not None:
            monkeypatch.setattr(data, "CHUNK_ROWS", rows)
        chunked = pd.concat([chunk for _, chunk in data.TableFile(path).chunks()], ignore_index=True)
        np.testing.assert_array_equal(chunked[column].to_numpy(dtype=float), want)


def test_a_new_file_with_dot_decimals_is_read_so_for_a_models_european_column(tmp_path, capsys):
    """A model's European column in a new file without decimal commas: European (3.750 = 3750) unless the
    file's column holds a plain decimal (20.125 beside 15.5: dot decimals, read so, not 20125)."""
    rng = np.random.default_rng(1)
    mass, flipper = rng.uniform(3000, 6000, 120), rng.uniform(14, 22, 120)
    path = tmp_path / "eu.csv"
    path.write_text("mass;flipper;y\n" + "".join(f"{european(m, 0)};{european(f, 1)};{european(m / 1000 + f, 3)}\n"
                                                for m, f in zip(mass, flipper)))
    model = tmp_path / "m.safetensors"
    assert cli.main(["train", "--dataset", f"csv:{path}:y", *FAST, "--epochs", "5", "--save", str(model)]) == 0
    capsys.readouterr()
    tm = gn.TableModel.load(model)
    assert set(tm.european) >= {"mass", "flipper"}
    dotted = tmp_path / "dotted.csv"
    dotted.write_text("mass;flipper\n3750;20.125\n1200;15.5\n")
    frame, _ = data.read_table(dotted, european=tm.european)
    np.testing.assert_array_equal(frame["flipper"].to_numpy(), [20.125, 15.5])
    np.testing.assert_array_equal(frame["mass"].to_numpy(), [3750, 1200])
    european_new = tmp_path / "european.csv"
    european_new.write_text("mass;flipper\n3.750;20\n1.200;15\n")  # nothing but the model says European
    frame, _ = data.read_table(european_new, european=tm.european)
    np.testing.assert_array_equal(frame["mass"].to_numpy(), [3750, 1200])


@pytest.mark.parametrize("stream", ["off", "on"])
def test_a_windows_1252_export_is_read_as_such_and_said(tmp_path, capsys, small_chunks, stream):
    """Excel's "CSV (semicolon)" on a Western European Windows: cp1252 bytes (é, °, €), ';' and decimal commas.
    Read as Windows-1252 with a note, the same table as its UTF-8 twin; a file neither UTF-8 nor cp1252 is refused
    in one line."""
    rng = np.random.default_rng(2)
    n = 90
    town = rng.choice(["Orléans", "Köln", "Málaga"], n)
    temp = rng.normal(12, 5, n)
    price = 2 * temp + (town == "Köln") * 5 + rng.normal(0, 0.3, n)
    lines = ["ville;température °C;prix €"] + [f"{t};{european(v, 1)};{european(p, 2)}"
                                                for t, v, p in zip(town, temp, price)]
    cp, utf = tmp_path / "cp1252.csv", tmp_path / "utf8.csv"
    cp.write_bytes("\r\n".join(lines).encode("cp1252"))
    utf.write_bytes("\r\n".join(lines).encode("utf-8"))
    frame, notes = data.read_table(cp)
    assert notes[0].startswith("cp1252.csv: not UTF-8 (invalid continuation byte at byte ") and \
        notes[0].endswith("read as Windows-1252 (cp1252)")
    pd.testing.assert_frame_equal(frame, data.read_table(utf)[0])
    assert list(frame.columns) == ["ville", "température °C", "prix €"] and set(frame["ville"]) == set(town)
    code, out, err = run(capsys, "train", "--dataset", f"csv:{cp}:prix €", *FAST, "--epochs", "5", "--stream",
                         stream)
    assert code == 0, err
    assert "not UTF-8" in out and "categories -> one-hot: ville (3: Köln, Málaga, Orléans)" in out
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"a;b\n1;\x81\x8d\n2;3\n")  # bytes Windows-1252 leaves undefined
    one_line_error(*run(capsys, "train", "--dataset", f"csv:{broken}:b", *FAST, "--stream", stream)[::2],
                   "is not UTF-8 text (invalid start byte at byte 6), nor Windows-1252; save it as UTF-8")
