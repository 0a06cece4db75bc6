"""Column handling (gpunet.tabular) held to scikit-learn's encoders and hand-computed values; DataFrames in
Sequential.fit/predict/evaluate; TableModel in Python."""

import json
import warnings

import numpy as np
import pytest

import gpunet as gn
from gpunet.tabular import TableError, TableTransform, TargetTransform, canonical_label

pd = pytest.importorskip("pandas")
sklearn_preprocessing = pytest.importorskip("sklearn.preprocessing")


def messy(n=40, seed=0):
    """Numbers with blanks, text categories with blanks, a yes/no column, ISO dates, a name per row, a row
    number, a constant, and a numeric column whose placeholder for missing is '?'."""
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, n).round(3)
    x[[3, 7]] = np.nan
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[[2, 5]] = None
    q = rng.integers(0, 50, n).astype(str).astype(object)
    q[4] = "?"
    return pd.DataFrame({
        "x": x, "colour": colour, "member": rng.choice(["yes", "no"], n),
        "day": [f"2021-{m:02d}-{d:02d}" for m, d in zip(rng.integers(1, 13, n), rng.integers(1, 29, n))],
        "name": [f"customer {i}" for i in range(n)], "row": np.arange(n), "const": 5, "q": q,
    })


def test_numeric_columns_match_sklearn_imputer_scaler_and_indicator():
    table = messy()
    t = TableTransform().fit(table)
    out = t.transform(table)
    names = t.feature_names
    x = table["x"].to_numpy()
    observed = ~np.isnan(x)
    scaler = sklearn_preprocessing.StandardScaler().fit(x[observed, None])
    z = out[:, names.index("x")]
    np.testing.assert_allclose(z[observed], scaler.transform(x[observed, None])[:, 0], rtol=1e-12)
    np.testing.assert_allclose(z[~observed], (np.median(x[observed]) - scaler.mean_[0]) / scaler.scale_[0])
    from sklearn.impute import MissingIndicator

    np.testing.assert_array_equal(out[:, names.index("x=missing")], MissingIndicator().fit_transform(x[:, None])[:, 0])


def test_categories_match_sklearn_one_hot_with_unknown_as_zeros():
    table = messy()
    t = TableTransform().fit(table)
    names = t.feature_names
    cols = [i for i, n in enumerate(names) if n.startswith("colour=") and n != "colour=(missing)"]
    assert [names[i] for i in cols] == ["colour=blue", "colour=green", "colour=red"]
    new = messy(seed=1)
    new.loc[0, "colour"] = "purple"  # unseen in training
    encoder = sklearn_preprocessing.OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    encoder.fit(table[["colour"]].dropna())
    expected = encoder.transform(new[["colour"]].fillna("(none)"))
    out = t.transform(new)
    np.testing.assert_array_equal(out[:, cols], expected)
    np.testing.assert_array_equal(out[:, names.index("colour=(missing)")], new["colour"].isna().to_numpy())
    assert out[0, cols].sum() == 0 and any("unseen in training ('purple')" in n for n in t.notes)


def test_what_happens_to_each_column():
    t = TableTransform().fit(messy())
    kinds = {c["name"]: c["kind"] for c in t.columns}
    assert kinds == {"x": "numeric", "colour": "categorical", "member": "boolean", "day": "date", "name": "left out",
                     "row": "left out", "const": "left out", "q": "numeric"}
    reasons = {c["name"]: c.get("reason") for c in t.columns}
    assert "ID-like" in reasons["name"] and "row number" in reasons["row"] and "constant" in reasons["const"]
    assert t.inputs == ["x", "colour", "member", "day", "q"]
    text = "\n".join(t.describe())
    assert "left out: name (ID-like" in text and "'?' read as missing" in text and "1 = yes" in text
    out = t.transform(messy())
    member = out[:, t.feature_names.index("member")]
    yes = (messy()["member"] == "yes").to_numpy()
    np.testing.assert_allclose(member, (yes - yes.mean()) / yes.std())
    assert np.isnan(out).sum() == 0 and out.dtype == np.float64


def test_dates_become_decimal_year_season_month_weekday():
    table = pd.DataFrame({"when": ["2020-07-02", "2021-01-01", "2019-03-15", None], "v": [1.0, 2.0, 3.0, 4.0]})
    t = TableTransform().fit(table)
    column = t.columns[0]
    assert column["kind"] == "date" and column["format"] == "%Y-%m-%d" and column["indicator"]
    assert list(column["parts"]) == ["year", "month", "season_sin", "season_cos", "weekday"]
    years = np.array([2020 + 183 / 366, 2021.0, 2019 + 73 / 365])  # 2020-07-02: day 184 of a leap year
    out = t.transform(table)
    stats = column["parts"]["year"]
    np.testing.assert_allclose(out[:3, 0] * stats["sd"] + stats["mean"], years, rtol=1e-12)
    assert stats["fill"] == pytest.approx(np.median(years))
    weekday = out[:3, t.feature_names.index("when.weekday")] * column["parts"]["weekday"]["sd"] + \
        column["parts"]["weekday"]["mean"]
    np.testing.assert_allclose(weekday, [3, 4, 4])  # Thursday, Friday, Friday
    assert out[3, t.feature_names.index("when=missing")] == 1.0


def test_json_round_trip_gives_the_same_features():
    table = messy()
    t = TableTransform().fit(table)
    again = TableTransform.from_json(json.loads(json.dumps(t.to_json())))
    np.testing.assert_array_equal(again.transform(messy(seed=3)), t.transform(messy(seed=3)))
    assert again.feature_names == t.feature_names


def test_columns_are_matched_by_name_and_missing_ones_refused():
    table = messy()
    t = TableTransform().fit(table)
    shuffled = table[list(reversed(table.columns))].assign(extra=1)
    expected = t.transform(table)
    np.testing.assert_array_equal(t.transform(shuffled), expected)
    assert t.notes == ["column(s) unknown in training ignored: ['extra']"]
    assert t.transform(table.drop(columns=["name", "row"])).shape[0] == len(table)  # left-out columns not needed
    with pytest.raises(TableError, match=r"lacks the column\(s\) \['colour'\]"):
        t.transform(table.drop(columns=["colour"]))
    bad = table.assign(x=table["x"].astype(object))
    bad.loc[1, "x"] = "abc"
    with pytest.raises(TableError, match="row 2, column 'x': 'abc' is not a number"):
        t.transform(bad)


def test_unnamed_index_duplicates_and_user_choices():
    table = pd.DataFrame({"Unnamed: 0": np.arange(10) * 2, "code": [1, 2, 3, 1, 2, 3, 1, 2, 3, 1],
                          "v": np.linspace(0, 1, 10)})
    t = TableTransform(categorical=["code"], ignore=["v"]).fit(table)
    assert [c["kind"] for c in t.columns] == ["left out", "categorical", "left out"]
    assert t.feature_names == ["code=1", "code=2", "code=3"]
    with pytest.raises(TableError, match="duplicate column names"):
        TableTransform().fit(pd.DataFrame([[1, 2], [3, 4]], columns=["a", "a"]))
    with pytest.raises(TableError, match="no usable feature column"):
        TableTransform().fit(pd.DataFrame({"a": [None, None, None], "b": [1, 1, 1]}))


def test_polars_and_pyarrow_tables_give_the_pandas_features():
    pl = pytest.importorskip("polars")
    pa = pytest.importorskip("pyarrow")
    table = messy().drop(columns=["q"])
    t = TableTransform().fit(table)
    np.testing.assert_array_equal(TableTransform().fit(pl.from_pandas(table)).transform(pl.from_pandas(table)),
                                  t.transform(table))
    np.testing.assert_array_equal(t.transform(pa.Table.from_pandas(table)), t.transform(table))


@pytest.mark.parametrize("values, task, classes", [
    ([0, 1, 1, 0, 1, 0, 1, 0, 1, 1], "binary", ["0", "1"]),
    (["b", "a", "c", "a", "b", "c"], "multiclass", ["a", "b", "c"]),
    ([2.5, 1.0, 3.0, 4.0, 5.5, 6.0], "regression", []),
    ([True, False, True, True], "binary", ["False", "True"]),
    (list(range(30)) * 2, "regression", []),  # 30 whole numbers: inferred as a number
])
def test_target_task_inference(values, task, classes):
    t = TargetTransform("y").fit(pd.Series(values))
    assert (t.task, t.classes) == (task, classes)


def test_target_overrides_and_labels():
    codes = pd.Series(list(range(30)) * 2)
    t = TargetTransform("y").fit(codes, "multiclass")  # more than 20 whole numbers: still classes when asked
    assert len(t.classes) == 30 and t.classes[:3] == ["0", "1", "2"]
    cylinders = pd.Series([4, 6, 8, 4, 6, 8, 4, 4, 8, 6])
    t = TargetTransform("cylinders").fit(cylinders, "regression")
    np.testing.assert_array_equal(t.labels(cylinders), cylinders.to_numpy(float))  # values, never class indices
    t = TargetTransform("y").fit(pd.Series([0, 1, 0, 1]))
    np.testing.assert_array_equal(t.labels(pd.Series([0.0, 1.0, 1.0])), [0, 1, 1])  # 0.0 is the label 0
    np.testing.assert_array_equal(t.labels(pd.Series([1, 1])), [1, 1])  # one class is fine when scoring
    with pytest.raises(TableError, match=r"label\(s\) the model never saw: \['2'\]"):
        t.labels(pd.Series([0, 2]))
    with pytest.raises(TableError, match="holds labels such as 'a', not numbers"):
        TargetTransform("y").fit(pd.Series(["a", "b"]), "regression")
    with pytest.raises(TableError, match="not whole, such as 2.5"):
        TargetTransform("y").fit(pd.Series([1.0, 2.5, 3.0]), "multiclass")
    with pytest.raises(TableError, match="binary needs exactly 2"):
        TargetTransform("y").fit(pd.Series(["a", "b", "c"]), "binary")
    assert [canonical_label(v) for v in (1.0, "1", " 1 ", np.int64(1), np.float32(1))] == ["1"] * 5


# -- Sequential with DataFrames ------------------------------------------------------------------------------------
def test_sequential_fit_predict_evaluate_match_dataframe_columns_by_name(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=64), "b": rng.normal(size=64), "c": rng.normal(size=64)})
    y = (2 * frame["a"] - frame["c"]).to_numpy()
    model = gn.Sequential([gn.Dense(3, 1)], dtype="float64", seed=0)
    model.fit(frame, y, loss="mse", optimizer="adam", epochs=3, validation_data=(frame[["c", "a", "b"]], y))
    assert model.feature_names == ["a", "b", "c"]
    with pytest.warns(UserWarning, match=r"X has no column names, but the model was fitted on a table with columns "
                                         r"\['a', 'b', 'c'\]: its columns are taken in that order") as record:
        expected = model.predict(frame.to_numpy())  # as scikit-learn: positions are trusted, and that is said
    assert record[0].filename == __file__
    np.testing.assert_array_equal(model.predict(frame[["c", "b", "a"]]), expected)
    with pytest.warns(UserWarning, match="X has no column names"):
        by_position = model.evaluate(frame.to_numpy(), y)["loss"]
    assert model.evaluate(frame[["b", "a", "c"]], y)["loss"] == by_position
    model.save(tmp_path / "m.safetensors")
    loaded = gn.load(tmp_path / "m.safetensors")
    assert loaded.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.predict(frame[["b", "c", "a"]]), expected)
    with pytest.raises(ValueError, match=r"^X does not have the model's columns: missing: \['c'\]; unexpected: "
                                         r"\['d'\] \(the model was fitted on 3: \['a', 'b', 'c'\]\)$"):
        loaded.predict(frame.rename(columns={"c": "d"}))
    with pytest.raises(TypeError, match="column 's' holds .* not numbers; encode raw tables"):
        gn.Sequential([gn.Dense(2, 1)]).predict(pd.DataFrame({"n": [1.0], "s": ["x"]}))
    pl = pytest.importorskip("polars")
    np.testing.assert_array_equal(model.predict(pl.from_pandas(frame[["b", "a", "c"]])), expected)


def test_table_model_in_python(tmp_path):
    table = pd.read_csv(__file__.rsplit("/", 1)[0] + "/data/penguins.csv")
    tm, history, test = gn.TableModel.train(table, "species", recipe=gn.Recipe(ensemble=2, epochs=60), seed=0,
                                            test_split=0.25)
    assert tm.target.classes == ["Adelie", "Chinstrap", "Gentoo"] and len(tm.histories) == 2
    score = tm.score(test)
    assert score["accuracy"] >= 0.95 and score["confusion"].sum() == len(test)
    predicted = tm.predict(test)
    assert set(predicted) <= set(tm.target.classes) and len(predicted) == len(test)
    assert np.mean(predicted == test["species"].to_numpy()) == pytest.approx(score["accuracy"])
    pd.testing.assert_frame_equal(test, table.loc[test.index])  # the held-out rows keep their index in `table`
    tm.save(tmp_path / "p.safetensors")
    again = gn.TableModel.load(tmp_path / "p.safetensors")
    np.testing.assert_allclose(again.predict_proba(test), tm.predict_proba(test), rtol=1e-6)


def test_pack_is_the_mean_of_its_members():
    from gpunet.recipe import build_model, pack

    members = [build_model(3, 2, None, gn.Recipe(hidden=(5, 4)), "cpu", "float64", s) for s in range(3)]
    x = np.random.default_rng(0).normal(size=(7, 3))
    np.testing.assert_allclose(pack(members).predict(x), np.mean([m.predict(x) for m in members], axis=0),
                               rtol=1e-12, atol=1e-14)


def test_a_row_number_is_left_out_after_the_test_split():
    """A file sorted by class with a 0..n-1 id: the id predicts the class perfectly on held-out rows of that file
    and nowhere else, so it must not become a feature even though the training rows are a subset of it. Decided on
    the whole column (``source``), a feature of repeated integers stays one whatever the split."""
    table = pd.read_csv(__file__.rsplit("/", 1)[0] + "/data/penguins.csv").sort_values("species")
    table.insert(0, "rid", np.arange(len(table)))
    table.loc[table.index[[5, 200]], "species"] = None  # dropped: the test rows still keep their index
    tm, _, test = gn.TableModel.train(table, "species", recipe=gn.Recipe(ensemble=1, epochs=1), seed=0,
                                      test_split=0.25)
    pd.testing.assert_frame_equal(test, table.loc[test.index])
    assert len(test) == 86 and not test.index.equals(pd.RangeIndex(86))
    rid = next(c for c in tm.columns.columns if c["name"] == "rid")
    assert rid == {"name": "rid", "kind": "left out", "reason": "row number (0..343, one per row)"}
    assert "rid" not in tm.columns.inputs
    whole = table.reset_index(drop=True)
    subset = whole.iloc[::3]  # ids stepping by 3: a number on its own, a row number in its file
    assert next(c for c in TableTransform().fit(subset).columns if c["name"] == "rid")["kind"] == "numeric"
    fitted = TableTransform().fit(subset, source=whole)
    assert next(c for c in fitted.columns if c["name"] == "rid")["kind"] == "left out"
    later = whole.iloc[100:].copy()  # a file's rows 100.. numbered from 1, every 5th row gone (a sample, say)
    later["rid"] += 1
    later = later[later.index % 5 != 0]
    reason = next(c for c in TableTransform().fit(later.iloc[::2], source=later).columns if c["name"] == "rid")
    assert reason["reason"] == "row number (102..344: each row's position in the file + 1)"
    with pytest.raises(ValueError, match="source must hold the table's rows and more"):
        TableTransform().fit(whole, source=subset)
    with pytest.raises(TypeError, match="source must be a pandas or polars DataFrame"):
        TableTransform().fit(subset, source=[1, 2])
    # 30 ages with repeats: some split leaves its training half unique within the table's span; still a number
    rng = np.random.default_rng(28)
    people = pd.DataFrame({"age": rng.integers(20, 50, 30), "y": rng.normal(size=30)})
    for seed in range(40):
        half = people.sample(15, random_state=seed)
        assert TableTransform().fit(half.drop(columns="y"), source=people).columns[0]["kind"] == "numeric"


def test_dates_in_another_format_are_refused_not_read_as_missing():
    """A date written another way than training's is an error naming its row, whatever their share (a chunk, one
    row); text that is no date is a missing cell, as in training; a table whose training rows mixed formats keeps
    reading the other format as missing."""
    t = TableTransform().fit(messy())
    assert t.columns[3]["other_formats"] == 0
    other = messy(seed=1)
    iso = other["day"].copy()
    other["day"] = pd.to_datetime(iso).dt.strftime("%d/%m/%Y")
    with pytest.raises(TableError, match=r"the table, row 1, column 'day': '\d\d/\d\d/2021' is a date in another "
                                         r"format than training's %Y-%m-%d \(40 such cell\(s\)\)"):
        t.transform(other)
    other["day"] = iso
    other.loc[5, "day"] = "2021/03/04"  # one stray cell that reads as a date: refused too, named by file row
    with pytest.raises(TableError, match=r"new.csv, row 106, column 'day': '2021/03/04' .*\(1 such cell"):
        t.transform(other, "new.csv", rows=range(100, 140))
    assert t.transform(other, training=True).shape == (40, len(t.feature_names))  # the training file's rows
    with pytest.raises(ValueError, match=r"rows must give one row number per row of the table \(40\); received 39"):
        t.transform(other, "new.csv", rows=range(100, 139))
    other.loc[5, "day"] = "soon"  # text that is no date: missing, and said
    out = t.transform(other)
    assert any("day: 1 cell(s) are not dates in the training format" in n for n in t.notes)
    year = t.feature_names.index("day.year")
    np.testing.assert_array_equal(out[[4, 6], year], t.transform(messy(seed=1))[[4, 6], year])
    mixed = messy()
    mixed.loc[[3, 9], "day"] = ["04/05/2021", "06/07/2021"]  # training itself had 2 cells in another format
    tolerant = TableTransform().fit(mixed)
    assert tolerant.columns[3]["other_formats"] == 2
    assert tolerant.transform(pd.DataFrame(other.assign(day="03/04/2021"))).shape[0] == 40
    held_out = messy()  # the format check covers source rows training did not learn from
    held_out.loc[30, "day"] = "30/12/2021"
    assert TableTransform().fit(held_out.iloc[:30], source=held_out).columns[3]["other_formats"] == 1


def test_day_first_dates_are_read_day_first_without_pandas_warnings():
    """The first cell 01/02/2020 reads either way: the format is the reading under which the column parses
    (month first when both do, as pandas); pandas' dayfirst warnings stay inside."""
    days = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(0, 400, 7), unit="D")
    table = pd.DataFrame({"dmy": days.strftime("%d/%m/%Y"), "mdy": days.strftime("%m/%d/%Y"),
                          "dots": days.strftime("%d.%m.%Y"), "v": np.arange(len(days)) % 5})
    table.loc[0, ["dmy", "mdy"]] = ["01/02/2020", "02/01/2020"]  # both 1 February
    ambiguous = pd.DataFrame({"when": ["01/02/2020", "03/04/2020", "05/06/2020", "07/08/2020"], "v": [1, 2, 3, 5]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = TableTransform().fit(table)
        both = TableTransform().fit(ambiguous)
    formats = {c["name"]: c.get("format") for c in t.columns}
    assert formats == {"dmy": "%d/%m/%Y", "mdy": "%m/%d/%Y", "dots": "%d.%m.%Y", "v": None}
    out = t.transform(table)
    names = t.feature_names
    np.testing.assert_array_equal(out[:, names.index("dmy.year")], out[:, names.index("mdy.year")])
    assert both.columns[0]["format"] == "%m/%d/%Y" and both.columns[0]["ambiguous"] == "%d/%m/%Y"
    assert "when (%m/%d/%Y) (ambiguous: every date also reads as %d/%m/%Y)" in "\n".join(both.describe())
    assert "ambiguous" not in t.columns[0]


def test_unique_integers_named_like_an_id_are_left_out():
    """A saved split index (`id`, rows of a class-sorted table) or random customer numbers: unique integers whose
    name's last word is an ID word are IDs; unique integers named otherwise, or repeated ones, stay numbers."""
    rng = np.random.default_rng(4)
    n = 60
    table = pd.DataFrame({"id": rng.permutation(300)[:n], "CustomerID": rng.choice(90_000, n, replace=False) + 10_000,
                          "paid": rng.choice(10_000, n, replace=False), "heat_index": rng.choice(900, n, replace=False),
                          "order id": rng.integers(0, 9, n), "x": rng.normal(size=n)})
    t = TableTransform().fit(table)
    kinds = {c["name"]: (c["kind"], c.get("reason", "")) for c in t.columns}
    assert kinds["id"] == ("left out", f"ID-like integers ({n} distinct values, one per row, named like an ID)")
    assert kinds["CustomerID"][0] == "left out" and kinds["paid"][0] == kinds["heat_index"][0] == "numeric"
    assert kinds["order id"][0] == "numeric"  # repeated values: not an ID
    assert t.inputs == ["paid", "heat_index", "order id", "x"]
    repeated = pd.concat([table, table.iloc[:5]], ignore_index=True)  # unique in the training half, not the file
    half = TableTransform().fit(repeated.iloc[:n], source=repeated)
    assert {c["name"]: c["kind"] for c in half.columns}["id"] == "numeric"


def test_datetimes_and_booleans_feed_columns_trained_on_their_text():
    """A model trained on text dates (%d.%m.%Y) and yes/no words reads a Parquet-style table of datetime64 and bool
    values as the same features: those values are unambiguous whatever the training text was."""
    rng = np.random.default_rng(6)
    days = pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 900, 50), unit="D")
    rainy = rng.random(50) < 0.4
    text = pd.DataFrame({"date": days.strftime("%d.%m.%Y"), "rainy": np.where(rainy, "Yes", "no"),
                         "x": rng.normal(size=50)})
    t = TableTransform().fit(text)
    assert [c["kind"] for c in t.columns] == ["date", "boolean", "numeric"]
    typed = pd.DataFrame({"date": days, "rainy": rainy, "x": text["x"]})
    np.testing.assert_array_equal(t.transform(typed), t.transform(text))
    aware = typed.assign(date=typed["date"].dt.tz_localize("UTC"))
    np.testing.assert_array_equal(t.transform(aware), t.transform(text))
    words = text.assign(rainy=np.where(rainy, "TRUE", "false"))
    np.testing.assert_array_equal(t.transform(words), t.transform(text))


@pytest.mark.parametrize("values, doubt", [
    ([f"{m:.3f} kg".replace(".", ",") for m in np.linspace(3, 6, 60)],
     "holds numbers with a unit ('3,000 kg', ...), read as 60 classes; for a regression, write the numbers alone"),
    ([str(v) for v in np.arange(60) % 7] + ["?"] * 3,
     "holds numbers and '?', taken as a class; leave a target that is unknown blank"),
    ([f"code {v}" for v in range(30)] * 2, "has 30 classes, most of them on 1 or 2 rows: if it is a quantity"),
    (["Adelie", "Gentoo", "Chinstrap"] * 20, None),
])
def test_doubts_about_an_inferred_classification_are_noted(values, doubt):
    target = TargetTransform("mass").fit(pd.Series(values))
    assert target.task == "multiclass"
    if doubt is None:
        assert target.notes == []
    else:
        assert len(target.notes) == 1 and target.notes[0].startswith(f"the target 'mass' {doubt}")
    assert TargetTransform("mass").fit(pd.Series(values), "multiclass").notes == []  # asked for: no doubt


def test_table_scores_are_scikit_learns_down_to_one_row():
    from sklearn import metrics as skm

    from gpunet.recipe import regression_scores

    rng = np.random.default_rng(2)
    for y, pred in [(rng.normal(size=9), rng.normal(size=9)), (np.full(4, 2.0), np.full(4, 2.0)),
                    (np.full(4, 2.0), np.arange(4.0)), (np.array([3.0]), np.array([2.5]))]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns that R2 of one row is undefined
            want = skm.r2_score(y, pred)
        got = regression_scores(y, pred)
        assert got["r2"] == pytest.approx(want, nan_ok=True, rel=1e-12)
        assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)
        assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), rel=1e-12)


def test_a_few_classes_with_units_or_a_time_are_no_doubt():
    assert TargetTransform("plan").fit(pd.Series(["3G", "4G", "5G"] * 10)).notes == []
    assert TargetTransform("rank").fit(pd.Series(["1st", "2nd", "3rd"] * 10)).notes == []
    t = TableTransform().fit(messy())
    other = messy(seed=1)
    other.loc[[2, 3, 4, 5], "day"] = ["10:30", "3 pm", "1/2", "1 2"]  # no date: missing cells, not refusals
    t.transform(other)
    assert any("day: 4 cell(s) are not dates in the training format" in n for n in t.notes)
