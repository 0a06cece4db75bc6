"""Raw tables to numbers and back: what ``gpunet train`` does to each column, reusable from Python.

Two transforms, both learnt on training rows only, both saved as JSON (``to_json``/``from_json``) so that a saved
model applies exactly the same transform to raw rows later (``gpunet evaluate``/``predict``, :func:`gpunet.load`):

- :class:`TableTransform`: feature columns -> a float64 matrix ``(n, len(transform.feature_names))``. Columns are
  matched by name, never by position.
- :class:`TargetTransform`: the target column -> class indices (classification) or numbers (regression), the task,
  the class names, and the standardisation of a regression target.

What happens to a column (decided by :meth:`TableTransform.fit`, listed by :meth:`TableTransform.describe`):

=============  ==================================================  ============================================
kind           recognised as                                       becomes
=============  ==================================================  ============================================
numeric        numbers (integer or not), also text columns whose   ``(x - mean) / sd``; missing cells -> the
               cells are numbers but for one placeholder token     training median, plus a 0/1 ``COL=missing``
               ("?", "-", ...), which is then read as missing      column when training had missing cells
boolean        True/False, yes/no, y/n, t/f (any case)             1/0, then as numeric
categorical    text or pandas categories with at most              one-hot ``COL=VALUE`` columns (0/1); a
               ``max_categories`` distinct values (more: the       missing cell is its own category when
               ``max_categories`` most frequent, when they cover   training had any; a category unseen in
               at least half the rows), or a column named in       training -> all zeros (counted in
               ``categorical=``                                    ``notes``)
date           datetime values, or text whose first value gives    decimal year, month, day of week, hour (each
               a date format (``pandas``' guess) that parses       part that varies in training), standardised;
               >= 95% of the cells                                 missing -> median + ``COL=missing``
left out       empty, constant, unnamed (a saved pandas index),    nothing (one line in ``describe()``; not
               a row number (0..n-1 integers), ID-like or free     needed at transform time)
               text (every value distinct, or too many distinct
               values), or named in ``ignore=``
=============  ==================================================  ============================================

Labels are compared in a canonical text form (:func:`canonical_label`): whole numbers as integers (``1.0`` and
``1`` are the same label ``"1"``), other text stripped of surrounding spaces.

>>> import pandas as pd
>>> table = pd.DataFrame({"size": [1.0, 2.0, None, 4.0], "colour": ["red", "blue", "red", None]})
>>> transform = TableTransform().fit(table)
>>> transform.feature_names
['size', 'size=missing', 'colour=blue', 'colour=red', 'colour=(missing)']
>>> transform.transform(table).round(3).tolist()[2]
[-0.267, 1.0, 0.0, 1.0, 0.0]
"""

from __future__ import annotations

import collections
import math
import numbers
import re
import warnings

import numpy as np

MAX_CATEGORIES = 40  # skrub's TableVectorizer default cardinality threshold for one-hot encoding
DATE_PARSE_SHARE = 0.95  # share of a text column's cells that must parse with the guessed date format
PLACEHOLDER_SHARE = 0.05  # at most this share of a numeric column may be one non-numeric placeholder token
BOOLEAN_WORDS = (("true", "false"), ("yes", "no"), ("y", "n"), ("t", "f"))  # (1, 0), compared in lower case
TASKS = ("regression", "binary", "multiclass")
FORMAT = 1  # bump when a reader of the previous JSON would misread a new one


class TableError(ValueError):
    """A table that cannot be used as asked, with a message for the user (missing column, unknown label...)."""


# -- tables of any library as pandas DataFrames -------------------------------------------------------------------
def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("tables (CSV, Parquet, DataFrames) need pandas: pip install 'gpunet[data]'") from None
    return pandas


def is_table(obj) -> bool:
    """True for a pandas or polars DataFrame or a pyarrow Table (checked by type name: imports nothing)."""
    module = type(obj).__module__.split(".")[0]
    return (module in ("pandas", "polars") and type(obj).__name__ == "DataFrame") or (
        module == "pyarrow" and type(obj).__name__ == "Table")


def as_frame(table, what: str = "table"):
    """``table`` (pandas/polars DataFrame, pyarrow Table, or a dict of equal-length columns) as a pandas DataFrame
    with string column names and a fresh 0..n-1 index. Duplicate column names are refused: they make "the column
    named X" ambiguous."""
    pd = _pandas()
    module = type(table).__module__.split(".")[0]
    if module == "polars" or (module == "pyarrow" and hasattr(table, "to_pandas")):
        names = list(table.columns) if module == "polars" else list(table.column_names)
        _refuse_duplicates(names, what)
        table = table.to_pandas()
    elif isinstance(table, dict):
        table = pd.DataFrame(table)
    elif not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas or polars DataFrame, a pyarrow Table or a dict of columns; "
                        f"received {type(table).__name__}")
    names = [str(c) for c in table.columns]
    _refuse_duplicates(names, what)
    frame = table.reset_index(drop=True)
    frame.columns = names
    return frame


def _refuse_duplicates(names, what: str) -> None:
    seen, dupes = set(), []
    for name in map(str, names):
        if name in seen and name not in dupes:
            dupes.append(name)
        seen.add(name)
    if dupes:
        raise TableError(f"{what} has duplicate column names {dupes}: rename them so each column has its own name")


# -- labels --------------------------------------------------------------------------------------------------------
def canonical_label(value) -> str | None:
    """The text form in which labels and categories are compared, or ``None`` for a missing cell.

    >>> [canonical_label(v) for v in (1, 1.0, "1", " yes ", 2.5, True, float("nan"), "", None)]
    ['1', '1', '1', 'yes', '2.5', 'True', None, None, None]
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)
    if _is_missing_scalar(value):
        return None
    text = str(value).strip()
    return text or None


def _is_missing_scalar(value) -> bool:
    try:
        pd = _pandas()
        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def _labels(series) -> list:
    """Canonical labels of a column, ``None`` where missing."""
    return [canonical_label(v) for v in series.tolist()]


def _sort_labels(labels) -> list[str]:
    """Numeric labels in numeric order, others alphabetically (numbers first)."""
    def key(label):
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)
    return sorted(labels, key=key)


# -- the feature transform -----------------------------------------------------------------------------------------
class TableTransform:
    """Raw feature columns -> float64 features, learnt by :meth:`fit` (see the module docstring for the rules).

    Args:
        categorical: column names to one-hot whatever they hold (integer codes of categories, say).
        ignore: column names to leave out.
        max_categories: the most one-hot columns one text column gets (default 40, skrub's threshold).

    After ``fit``: ``columns`` (one JSON-able dict per input column, in the table's order), ``feature_names``
    (the output columns), ``inputs`` (the columns ``transform`` needs), ``describe()`` (one line per column kind).
    After each ``transform``: ``notes``, lines about what the rows held that training did not (unseen categories,
    missing cells in columns that had none, extra columns ignored).
    """

    def __init__(self, categorical=(), ignore=(), max_categories: int = MAX_CATEGORIES):
        self.categorical = [str(c) for c in categorical]
        self.ignore = [str(c) for c in ignore]
        if isinstance(max_categories, bool) or not isinstance(max_categories, numbers.Integral) or max_categories < 1:
            raise ValueError(f"max_categories must be a positive integer; received {max_categories!r}")
        self.max_categories = int(max_categories)
        self.columns: list[dict] | None = None
        self.notes: list[str] = []

    # -- fit ----------------------------------------------------------------------------------------------------
    def fit(self, table, source=None) -> "TableTransform":
        """Decide and learn each column's transform from ``table`` (training rows only; at least 2 rows).

        ``source``: the table ``table``'s rows were drawn from (before a test split, a sample, or dropping the rows
        without a target), with each row's 0-based position in the file as its integer index (a fresh table's
        ``0..n-1``). Whether a column is a row number is decided on ``source``'s cells, so that it is still
        recognised in a subset; nothing is learnt from them.
        """
        frame = as_frame(table)
        self._source = (frame, np.arange(len(frame)))
        if source is not None:
            index = np.asarray(getattr(source, "index", []))
            whole = as_frame(source, "source")
            if len(whole) < len(frame):
                raise ValueError(f"source must hold the table's rows and more; it has {len(whole)} rows, the table "
                                 f"{len(frame)}")
            integer = index.size == len(whole) and np.issubdtype(index.dtype, np.integer)
            self._source = (whole, index if integer else np.arange(len(whole)))
        unknown = [c for c in self.categorical + self.ignore if c not in frame.columns]
        if unknown:
            raise TableError(f"no column(s) {unknown} to treat as asked; columns: {list(frame.columns)}")
        if len(frame) < 2:
            raise TableError(f"a table needs at least 2 rows to learn from; received {len(frame)}")
        self.columns = [self._fit_column(name, frame[name]) for name in frame.columns]
        if not self.feature_names:
            kept = "; ".join(f"{c['name']}: {c['reason']}" for c in self.columns)
            raise TableError(f"no usable feature column: {kept or 'the table has no feature columns'}")
        return self

    def _fit_column(self, name: str, series) -> dict:
        pd = _pandas()
        column = {"name": name}
        if name in self.ignore:
            return column | {"kind": "left out", "reason": "ignored as asked"}
        if name == "" or re.fullmatch(r"Unnamed: \d+", name):
            return column | {"kind": "left out", "reason": "unnamed column (a saved row index?)"}
        present = series.notna() & ~series.astype(str).str.strip().eq("")
        n_present = int(present.sum())
        if n_present == 0:
            return column | {"kind": "left out", "reason": "empty (no values)"}
        dtype = series.dtype
        if name in self.categorical:
            return self._fit_categorical(column, series, forced=True)
        if pd.api.types.is_bool_dtype(dtype):
            return self._fit_numeric(column | {"kind": "boolean", "map": {"True": 1.0, "False": 0.0}}, series)
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return self._fit_date(column | {"format": None}, series)
        if pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
            return self._fit_numeric(column | {"kind": "numeric"}, series)
        if isinstance(dtype, pd.CategoricalDtype):
            return self._fit_categorical(column, series, forced=True)
        # text (object / string dtype): booleans, numbers with one placeholder token, dates, categories
        labels = [v for v in _labels(series) if v is not None]
        distinct = set(labels)
        lowered = {v.lower() for v in distinct}
        for true, false in BOOLEAN_WORDS:
            if lowered == {true, false}:
                return self._fit_numeric(column | {"kind": "boolean", "map": {
                    v: (1.0 if v.lower() == true else 0.0) for v in sorted(distinct)}}, series)
        numeric = _numbers(labels)
        bad = [v for v, x in zip(labels, numeric) if x is None]
        if bad and len(set(bad)) == 1 and len(bad) <= PLACEHOLDER_SHARE * len(labels) and len(bad) < len(labels):
            return self._fit_numeric(column | {"kind": "numeric", "placeholder": bad[0]}, series)
        fmt, other = _date_format(labels)
        if fmt is not None:
            return self._fit_date(column | {"format": fmt} | ({"ambiguous": other} if other else {}), series)
        return self._fit_categorical(column, series, forced=False)

    def _fit_numeric(self, column: dict, series) -> dict:
        x = _numeric_values(column, series)
        observed = x[~np.isnan(x)]
        if observed.size == 0:
            return column | {"kind": "left out", "reason": "no numeric values"}
        integer = bool(np.all(observed == np.round(observed)))
        missing = observed.size < x.size
        distinct = np.unique(observed)
        if distinct.size == 1 and not missing:
            return {"name": column["name"], "kind": "left out", "reason": f"constant ({_fmt(distinct[0])})"}
        if column["kind"] == "numeric" and integer and not missing and x.size >= 3:
            order = self._row_number(column, x)
            if order:
                return {"name": column["name"], "kind": "left out", "reason": f"row number ({order})"}
            if _named_like_an_id(column["name"]) and distinct.size == x.size and self._unique_in_source(column):
                return {"name": column["name"], "kind": "left out",
                        "reason": f"ID-like integers ({x.size} distinct values, one per row, named like an ID)"}
        sd = float(observed.std())
        return column | {"integer": integer, "mean": float(observed.mean()), "sd": sd if sd > 0 else 1.0,
                         "fill": float(np.median(observed)), "indicator": bool(missing),
                         "n_missing": int(x.size - observed.size)}

    def _unique_in_source(self, column: dict) -> bool:
        """Whether the column's cells in the source (the table before a split) are unique too."""
        whole = self._source[0]
        if column["name"] not in whole.columns:
            return True
        cells = whole[column["name"]]
        return bool(cells.notna().all() and cells.nunique() == len(cells))

    def _row_number(self, column: dict, x: np.ndarray) -> str | None:
        """How the integers ``x`` of a training column (or the source's cells of it) number the source's rows:
        unique and consecutive in any order, or the row's position plus a constant; None when they do not."""
        whole, positions = self._source
        if len(whole) != x.size and column["name"] in whole.columns:  # the column before the split
            try:
                x = _numeric_values(column, whole[column["name"]])
            except TableError:  # text in rows outside training: no row number
                return None
            if np.isnan(x).any() or not np.all(x == np.round(x)):
                return None
        elif len(whole) != x.size:
            positions = np.arange(x.size)
        distinct = np.unique(x)
        if distinct.size != x.size:
            return None
        if distinct[-1] - distinct[0] == x.size - 1:
            return f"{_fmt(distinct[0])}..{_fmt(distinct[-1])}, one per row"
        offset = x - positions
        if np.all(offset == offset[0]):
            return f"{_fmt(distinct[0])}..{_fmt(distinct[-1])}: each row's position in the file + {_fmt(offset[0])}"
        return None

    def _fit_date(self, column: dict, series) -> dict:
        values = values_parsed = _parse_dates(series, column["format"])
        parts = _date_parts(values)
        observed = ~np.isnan(parts["year"])
        days = values.dt.day.to_numpy(dtype=np.float64, na_value=np.nan)[observed]
        stats = {}
        for part, values in parts.items():
            v = values[observed]
            if part == "weekday" and np.ptp(days) == 0:
                continue  # one day of the month (monthly or yearly dates): the weekday is an accident of the calendar
            if v.size and np.ptp(v) > 0:
                stats[part] = {"mean": float(v.mean()), "sd": float(v.std()), "fill": float(np.median(v))}
        if not stats:
            return {"name": column["name"], "kind": "left out", "reason": "constant date"}
        missing = int((~observed).sum())
        other = 0  # cells of the source in another date format: tolerated (as missing) later only if any
        if column["format"] is not None:
            whole = self._source[0]
            if column["name"] in whole.columns and len(whole) != len(series):
                cells = whole[column["name"]]
                other = int(_dates_in_another_format(cells, _parse_dates(cells, column["format"])).sum())
            else:
                other = int(_dates_in_another_format(series, values_parsed).sum())
        return column | {"kind": "date", "parts": stats, "indicator": missing > 0, "n_missing": missing,
                         "other_formats": other}

    def _fit_categorical(self, column: dict, series, forced: bool) -> dict:
        labels = _labels(series)
        present = [v for v in labels if v is not None]
        counts: dict[str, int] = {}
        for v in present:
            counts[v] = counts.get(v, 0) + 1
        missing = len(present) < len(labels)
        if len(counts) == 1 and not missing:
            return column | {"kind": "left out", "reason": f"constant ({next(iter(counts))!r})"}
        note = None
        if not forced and len(counts) == len(present) and len(present) > 2:
            return column | {"kind": "left out",
                             "reason": f"ID-like text ({len(counts)} distinct values, one per row)"}
        by_count = sorted(counts, key=lambda v: (-counts[v], v))
        if len(counts) > self.max_categories:
            top = by_count[:self.max_categories]
            covered = sum(counts[v] for v in top)
            if not forced and covered < 0.5 * len(present):
                return column | {"kind": "left out", "reason": f"free text or ID-like ({len(counts)} distinct values; "
                                                               f"the {self.max_categories} most frequent cover "
                                                               f"{covered / len(present):.0%} of the rows)"}
            note = (f"the {self.max_categories} most frequent of {len(counts)} values (covering "
                    f"{covered / len(present):.0%} of the rows); the others count as unseen")
            by_count = top
        categories = _sort_labels(by_count)
        return column | {"kind": "categorical", "categories": categories, "missing_category": missing,
                         "note": note}

    # -- transform --------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """The output columns, in order: ``COL`` for numbers, ``COL=VALUE`` for one-hot, ``COL.year`` for dates."""
        self._check_fitted()
        names = []
        for c in self.columns:
            kind = c["kind"]
            if kind in ("numeric", "boolean"):
                names.append(c["name"])
            elif kind == "date":
                names.extend(f"{c['name']}.{part}" for part in c["parts"])
            elif kind == "categorical":
                names.extend(f"{c['name']}={v}" for v in c["categories"])
                if c["missing_category"]:
                    names.append(f"{c['name']}=(missing)")
            if kind in ("numeric", "boolean", "date") and c["indicator"]:
                names.append(f"{c['name']}=missing")
        return names

    @property
    def inputs(self) -> list[str]:
        """The columns :meth:`transform` needs (those not left out), in training order."""
        self._check_fitted()
        return [c["name"] for c in self.columns if c["kind"] != "left out"]

    @property
    def left_out(self) -> list[str]:
        self._check_fitted()
        return [c["name"] for c in self.columns if c["kind"] == "left out"]

    def transform(self, table, what: str = "the table", expected=(), rows=None, training: bool = False) -> np.ndarray:
        """``(n, len(feature_names))`` float64 features of ``table``'s rows, matched to the training columns by
        name, in any order. A missing column is an error; columns unknown in training are ignored and listed in
        ``notes`` (except those named in ``expected``, such as the target). ``rows``: the 0-based rows of ``what``
        that the table's rows are (a chunk of a file: ``range(start, stop)``), so that an error names its row.

        A date in another format than training's (``18/08/2021`` where training read ``%Y-%m-%d``) is an error,
        unless training met such cells too or ``training`` is set (rows of the table training came from): those
        are missing cells, as text that is no date at all is (noted)."""
        self._check_fitted()
        frame = as_frame(table, what)
        if rows is not None and len(rows) != len(frame):
            raise ValueError(f"rows must give one row number per row of the table ({len(frame)}); received "
                             f"{len(rows)}")
        missing = [name for name in self.inputs if name not in frame.columns]
        if missing:
            raise TableError(f"{what} lacks the column(s) {missing} the model was trained on; its columns: "
                             f"{list(frame.columns)}")
        known = {c["name"] for c in self.columns} | set(map(str, expected))
        extra = [name for name in frame.columns if name not in known]
        self.notes = [f"column(s) unknown in training ignored: {extra}"] if extra else []
        blocks = []
        for c in self.columns:
            if c["kind"] == "left out":
                continue
            series = frame[c["name"]]
            if c["kind"] == "date":
                blocks.append(self._transform_date(c, series, what, rows, training))
            else:
                blocks.append(getattr(self, f"_transform_{c['kind'].replace(' ', '_')}")(c, series, what, rows))
        out = np.column_stack(blocks) if blocks else np.empty((len(frame), 0))
        return np.ascontiguousarray(out, dtype=np.float64)

    def fit_transform(self, table) -> np.ndarray:
        return self.fit(table).transform(table)

    def _transform_numeric(self, c: dict, series, what: str, rows) -> np.ndarray:
        x = _numeric_values(c, series, what, rows)
        return self._standardise(c, c, x)

    _transform_boolean = _transform_numeric

    def _standardise(self, c: dict, stats: dict, x: np.ndarray, indicator: bool = True) -> np.ndarray:
        gaps = np.isnan(x)
        n_gaps = int(gaps.sum())
        if n_gaps and not c["indicator"] and indicator:
            self.notes.append(f"{c['name']}: {n_gaps} missing cell(s), none in training: filled with the training "
                              f"median {_fmt(stats['fill'])}")
        z = (np.where(gaps, stats["fill"], x) - stats["mean"]) / stats["sd"]
        return np.column_stack([z, gaps.astype(np.float64)]) if c["indicator"] and indicator else z[:, None]

    def _transform_date(self, c: dict, series, what: str, rows, training: bool) -> np.ndarray:
        pd = _pandas()
        given = _present(series)
        cells = series
        if c["format"] is None and not pd.api.types.is_datetime64_any_dtype(series.dtype):
            series = pd.to_datetime(series, errors="coerce")
        values = _parse_dates(series, c["format"])
        parts = _date_parts(values)
        unparsed = int((given & np.isnan(parts["year"])).sum())
        if unparsed and c["format"] is not None and not training and not c.get("other_formats"):
            other = _dates_in_another_format(cells, values)
            if other.any():
                row = int(np.flatnonzero(other)[0])
                raise TableError(f"{_cell(what, row, rows, c)}: {cells.iloc[row]!r} is a date in another format "
                                 f"than training's {c['format']} ({int(other.sum())} such cell(s)): write the "
                                 f"dates as the training table did")
        if unparsed:
            self.notes.append(f"{c['name']}: {unparsed} cell(s) are not dates in the training format "
                              f"{c['format'] or 'datetime'}: treated as missing")
        blocks = [self._standardise(c, stats, parts[part], indicator=False) for part, stats in c["parts"].items()]
        gaps = np.isnan(parts["year"])
        if gaps.any() and not c["indicator"]:
            self.notes.append(f"{c['name']}: {int(gaps.sum())} missing date(s), none in training: filled with the "
                              f"training medians")
        if c["indicator"]:
            blocks.append(gaps.astype(np.float64)[:, None])
        return np.column_stack(blocks)

    def _transform_categorical(self, c: dict, series, what: str, rows) -> np.ndarray:
        index = {v: i for i, v in enumerate(c["categories"])}
        k = len(index)
        out = np.zeros((len(series), k + int(c["missing_category"])))
        unseen: dict[str, int] = {}
        n_gaps = 0
        for row, label in enumerate(_labels(series)):
            if label is None:
                if c["missing_category"]:
                    out[row, k] = 1.0
                else:
                    n_gaps += 1
            elif label in index:
                out[row, index[label]] = 1.0
            else:
                unseen[label] = unseen.get(label, 0) + 1
        if unseen:
            shown = ", ".join(repr(v) for v in sorted(unseen, key=lambda v: -unseen[v])[:5])
            self.notes.append(f"{c['name']}: {sum(unseen.values())} cell(s) hold categories unseen in training "
                              f"({shown}{', ...' if len(unseen) > 5 else ''}): encoded as all zeros")
        if n_gaps:
            self.notes.append(f"{c['name']}: {n_gaps} missing cell(s), none in training: encoded as all zeros")
        return out

    # -- reporting and persistence ----------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """One line per kind of treatment, naming the columns (and what was learnt where it helps)."""
        self._check_fitted()
        groups: dict[str, list[str]] = {}
        for c in self.columns:
            kind = c["kind"]
            if kind in ("numeric", "boolean"):
                label = "boolean -> 1/0" if kind == "boolean" else (
                    "integer" if c["integer"] else "numeric") + " -> standardised"
                detail = c["name"]
                extras = []
                if kind == "boolean":
                    extras.append("1 = " + "/".join(k for k, v in c["map"].items() if v == 1.0))
                if c.get("placeholder") is not None:
                    extras.append(f"{c['placeholder']!r} read as missing")
                if c["indicator"]:
                    extras.append(f"{c['n_missing']} missing -> median {_fmt(c['fill'])} + indicator")
                if extras:
                    detail += f" ({'; '.join(extras)})"
            elif kind == "date":
                label = "date -> " + ", ".join(c["parts"]) + " (standardised)"
                detail = c["name"] + (f" ({c['format']})" if c["format"] else "")
                if c.get("ambiguous"):
                    detail += f" (ambiguous: every date also reads as {c['ambiguous']})"
                if c["indicator"]:
                    detail += f" ({c['n_missing']} missing -> median + indicator)"
            elif kind == "categorical":
                label = "categories -> one-hot"
                shown = ", ".join(c["categories"][:6]) + (", ..." if len(c["categories"]) > 6 else "")
                detail = (f"{c['name']} ({len(c['categories'])}: {shown}"
                          + ("; missing is a category" if c["missing_category"] else "")
                          + (f"; {c['note']}" if c["note"] else "") + ")")
            else:
                label = "left out"
                detail = f"{c['name'] or '(unnamed)'} ({c['reason']})"
            groups.setdefault(label, []).append(detail)
        lines = []
        for label, details in groups.items():
            shown = details if len(details) <= 8 else details[:6] + [f"... {len(details) - 7} more", details[-1]]
            lines.append(f"{label}: {', '.join(shown)}" + (f" [{len(details)} columns]" if len(details) > 1 else ""))
        return lines

    def to_json(self) -> dict:
        self._check_fitted()
        return {"format": FORMAT, "max_categories": self.max_categories, "categorical": self.categorical,
                "ignore": self.ignore, "columns": self.columns}

    @classmethod
    def from_json(cls, d: dict) -> "TableTransform":
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("columns"), list):
            raise TableError(f"unknown column transform (format {d.get('format') if isinstance(d, dict) else d!r}); "
                             f"this gpunet reads format {FORMAT}")
        transform = cls(d.get("categorical", ()), d.get("ignore", ()), d.get("max_categories", MAX_CATEGORIES))
        transform.columns = d["columns"]
        return transform

    @classmethod
    def from_standardizer(cls, names, mean, scale) -> "TableTransform":
        """The transform of a model saved before column handling: every column numeric, ``(x - mean) / scale``,
        no missing values allowed before (now filled with the mean)."""
        transform = cls()
        transform.columns = [{"name": str(n), "kind": "numeric", "integer": False, "mean": float(m), "sd": float(s),
                              "fill": float(m), "indicator": False, "n_missing": 0}
                             for n, m, s in zip(names, mean, scale)]
        return transform

    def _check_fitted(self) -> None:
        if self.columns is None:
            raise RuntimeError("the TableTransform is not fitted yet: call fit(table) first")

    def __repr__(self) -> str:
        if self.columns is None:
            return "TableTransform(not fitted)"
        return f"TableTransform({len(self.inputs)} columns -> {len(self.feature_names)} features)"


def _present(series) -> np.ndarray:
    """True where a cell holds something (not NaN/None/NA and not blank text)."""
    return np.array([canonical_label(v) is not None if isinstance(v, str) else not _isnull(v)
                     for v in series.tolist()], dtype=bool)


def _isnull(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    return _is_missing_scalar(v) or (isinstance(v, np.datetime64) and np.isnat(v))


def _numbers(labels) -> list:
    out = []
    for v in labels:
        try:
            f = float(v)
            out.append(f if math.isfinite(f) else None)
        except (TypeError, ValueError):
            out.append(None)
    return out


def _cell(what: str | None, row: int, rows, c: dict) -> str:
    """Names the cell of column ``c`` in the table's ``row``: its row in ``what`` (1 = the first data row)."""
    return f"{what or 'the table'}, row {(row if rows is None else int(rows[row])) + 1}, column {c['name']!r}"


def _numeric_values(c: dict, series, what: str | None = None, rows=None) -> np.ndarray:
    """A numeric/boolean column's values as float64 with NaN where missing; text that is no number (and not the
    column's placeholder) is an error naming the cell (``rows``: as for :meth:`TableTransform.transform`)."""
    pd = _pandas()
    mapping = c.get("map")
    if mapping is not None:
        keys = {k.lower(): v for k, v in mapping.items()}
        values = []
        for row, label in enumerate(_labels(series)):
            if label is None:
                values.append(math.nan)
            elif label.lower() in keys:
                values.append(keys[label.lower()])
            elif label in ("1", "0"):
                values.append(float(label))
            elif label.lower() in ("true", "false"):  # a boolean value (a Parquet or DataFrame column of bools)
                values.append(float(label.lower() == "true"))
            else:
                raise TableError(f"{_cell(what, row, rows, c)}: {label!r} is not one of the boolean values "
                                 f"{sorted(mapping)} seen in training")
        return np.array(values, dtype=np.float64)
    if pd.api.types.is_bool_dtype(series.dtype) or (pd.api.types.is_numeric_dtype(series.dtype)
                                                    and not isinstance(series.dtype, pd.CategoricalDtype)):
        x = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        x = np.empty(len(series))
        for row, label in enumerate(_labels(series)):
            if label is None or label == c.get("placeholder"):
                x[row] = np.nan
                continue
            try:
                x[row] = float(label)
            except ValueError:
                raise TableError(f"{_cell(what, row, rows, c)}: {label!r} is not a number (the column held numbers in "
                                 f"training)") from None
    if np.isinf(x).any():
        row = int(np.flatnonzero(np.isinf(x))[0])
        raise TableError(f"{_cell(what, row, rows, c)}: {x[row]} is not finite")
    return x


def _date_format(labels) -> tuple[str | None, str | None]:
    """``(format, the other reading)``: the date format of a text column when its first value gives one and >= 95%
    of the cells parse with it (else None), and the day-first (month-first) format when it reads the cells as well
    (the dates are ambiguous: every day <= 12)."""
    pd = _pandas()
    from pandas.tseries.api import guess_datetime_format

    first = next((v for v in labels if v), None)
    if first is None or not re.search(r"\d", first) or not re.search(r"[-/:. T]", first):
        return None, None
    formats = []
    for dayfirst in (False, True):  # 01/02/2020 is read month first, then day first: whichever the column holds
        try:
            with warnings.catch_warnings():  # pandas warns when the text contradicts dayfirst: we try both
                warnings.simplefilter("ignore")
                fmt = guess_datetime_format(first, dayfirst=dayfirst)
        except (ValueError, TypeError):
            fmt = None
        if fmt is not None and fmt not in formats:
            formats.append(fmt)
    cells = pd.Series(labels, dtype=object)
    shares = [pd.to_datetime(cells, format=fmt, errors="coerce").notna().mean() for fmt in formats]
    if not shares or max(shares) < DATE_PARSE_SHARE:
        return None, None
    best = int(np.argmax(shares))  # a tie keeps the month-first reading, pandas' default
    tied = [fmt for fmt, share in zip(formats, shares) if share == shares[best] and fmt != formats[best]]
    return formats[best], tied[0] if tied else None


def _parse_dates(series, fmt: str | None):
    pd = _pandas()
    if pd.api.types.is_datetime64_any_dtype(series.dtype):  # datetimes need no format (a text-trained column too)
        values = series
    elif fmt is None:
        values = pd.to_datetime(series, errors="coerce")
    else:
        text = pd.Series([canonical_label(v) if isinstance(v, str) else (None if _isnull(v) else str(v))
                          for v in series.tolist()], dtype=object)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = pd.to_datetime(text, format=fmt, errors="coerce")
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values


_NUMBER_WITH_UNIT = re.compile(r"\s*[-+]?\d+([.,]\d+)*\s*[^\W\d_%]{1,6}\.?|\s*[-+]?\d+([.,]\d+)*\s*%")

ID_WORDS = {"id", "idx", "uuid", "guid"}  # a name's last word that makes unique integers an ID (not index: heat_index)


def _named_like_an_id(name: str) -> bool:
    """``id``, ``customer_id``, ``CustomerID``, ``PassengerId``: the last word of the name is an ID word."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return bool(words) and words[-1].lower() in ID_WORDS


# three groups of digits with date separators (2021-08-18, 18/08/2021, 18.08.2021), or a day and a month's name
_DATE_SHAPE = (r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{1,2}[ -](?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
               r"|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2}")


def _dates_in_another_format(series, parsed) -> np.ndarray:
    """``(n,)`` bool: the cells of a text date column that ``parsed`` (its datetimes in the column's format)
    missed but that read as a date otherwise (shaped as one, :data:`_DATE_SHAPE`, and read by pandas' mixed
    formats)."""
    pd = _pandas()
    missed = _present(series) & parsed.isna().to_numpy()
    out = np.zeros(len(series), dtype=bool)
    if missed.any():
        text = pd.Series([str(canonical_label(v)) for v in series[missed].tolist()], dtype=object)
        shaped = text.str.contains(_DATE_SHAPE).to_numpy()  # (not 10:30, 3 pm, 1/2: no day, month and year)
        if shaped.any():
            with warnings.catch_warnings():  # pandas warns about dayfirst and per-element parsing
                warnings.simplefilter("ignore")
                dated = pd.to_datetime(text[shaped], format="mixed", errors="coerce").notna().to_numpy()
            out[np.flatnonzero(missed)[shaped]] = dated
    return out


def _date_parts(values) -> dict[str, np.ndarray]:
    """``{"year": decimal year, "month", "weekday" (Monday 0), "hour" (decimal)}`` as float64, NaN where missing."""
    dt = values.dt
    days = np.where(dt.is_leap_year.fillna(False).to_numpy(dtype=bool), 366.0, 365.0)
    as_float = lambda s: s.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)  # noqa: E731
    season = 2 * np.pi * (as_float(dt.day_of_year) - 1) / days
    return {
        "year": as_float(dt.year) + (as_float(dt.day_of_year) - 1) / days,
        "month": as_float(dt.month),
        "season_sin": np.sin(season),
        "season_cos": np.cos(season),
        "weekday": as_float(dt.day_of_week),
        "hour": as_float(dt.hour) + as_float(dt.minute) / 60 + as_float(dt.second) / 3600,
    }


def _fmt(v: float) -> str:
    return f"{v:.4g}"


# -- the target ----------------------------------------------------------------------------------------------------
class TargetTransform:
    """The target column: task, class names, and the numbers the network trains on.

    ``fit(series, task=None)`` infers the task when none is given: text, booleans, or at most
    ``max(2, min(20, n // 5))`` distinct whole numbers -> classification (``"binary"`` with 2 classes, else
    ``"multiclass"``); other numbers -> ``"regression"``. A given task is obeyed where the values allow it:
    ``"regression"`` needs numbers (it regresses on their values, never on class indices), ``"multiclass"``
    takes any labels (whole numbers included, however many), ``"binary"`` exactly 2. Missing cells are not
    allowed here: drop those rows first (:meth:`present`).

    Regression targets are standardised for training (``encode``) and mapped back by ``decode``.
    """

    def __init__(self, name: str = "target"):
        self.name = str(name)
        self.task: str | None = None
        self.classes: list[str] = []
        self.mean = 0.0
        self.sd = 1.0
        self.inferred = False
        self.notes: list[str] = []  # after fit: doubts about the inferred task, for the training report

    @staticmethod
    def present(series) -> np.ndarray:
        """``(n,)`` bool: rows whose target cell is not missing."""
        return np.array([canonical_label(v) is not None for v in series.tolist()], dtype=bool)

    def fit(self, series, task: str | None = None) -> "TargetTransform":
        if task is not None and task not in TASKS:
            raise TableError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        labels = _labels(series)
        if any(v is None for v in labels):
            raise TableError(f"the target column {self.name!r} has missing cells; drop those rows first")
        if not labels:
            raise TableError(f"the target column {self.name!r} has no values")
        numbers_ = _numbers(labels)
        numeric = all(x is not None for x in numbers_) and not _is_bool_series(series)
        distinct = sorted(set(labels))
        whole = numeric and all(float(x).is_integer() for x in numbers_)
        self.inferred = task is None
        if task is None:
            few = whole and len(distinct) <= max(2, min(20, len(labels) // 5))
            task = "regression" if numeric and not few else ("binary" if len(distinct) == 2 else "multiclass")
        if task == "regression":
            if not numeric:
                example = next(v for v, x in zip(labels, numbers_) if x is None) if not all(
                    x is not None for x in numbers_) else labels[0]
                raise TableError(f"the target column {self.name!r} holds labels such as {example!r}, not numbers: it "
                                 f"cannot be a regression target")
            y = np.array(numbers_, dtype=np.float64)
            sd = float(y.std())
            self.task, self.classes, self.mean, self.sd = task, [], float(y.mean()), sd if sd > 0 else 1.0
            return self
        if numeric and not whole:
            example = next(v for v, x in zip(labels, numbers_) if not float(x).is_integer())
            raise TableError(f"the target column {self.name!r} holds numbers that are not whole, such as {example}: a "
                             f"regression target, not classes")
        if len(distinct) < 2:
            raise TableError(f"the target column {self.name!r} holds a single class {distinct[0]!r}: nothing to learn")
        if task == "binary" and len(distinct) != 2:
            raise TableError(f"the target column {self.name!r} holds {len(distinct)} classes; binary needs exactly 2")
        self.task, self.classes = task, _sort_labels(distinct)
        self.notes = self._doubts(labels, numbers_) if self.inferred else []
        return self

    def _doubts(self, labels: list[str], numbers_: list) -> list[str]:
        """What makes an inferred classification look like a quantity: labels that are numbers with a unit
        (``3.750 kg``), classes of one or two rows each, or numbers but for one token (``?``) taken as a class."""
        counts = collections.Counter(labels)
        with_unit = [v for v in counts if _NUMBER_WITH_UNIT.fullmatch(v)]
        words = {v for v, x in zip(labels, numbers_) if x is None}
        if len(counts) > 10 and len(with_unit) >= 0.8 * len(counts):  # (not 1st/2nd/3rd, 3G/4G/5G)
            return [f"the target {self.name!r} holds numbers with a unit ({with_unit[0]!r}, ...), read as "
                    f"{len(counts)} classes; for a regression, write the numbers alone"]
        if len(words) == 1 and len(counts) > 2:
            return [f"the target {self.name!r} holds numbers and {next(iter(words))!r}, taken as a class; leave a "
                    f"target that is unknown blank (its row is dropped)"]
        if len(counts) > 20 and np.median(list(counts.values())) <= 2:
            return [f"the target {self.name!r} has {len(counts)} classes, most of them on 1 or 2 rows: if it is a "
                    f"quantity, train a regression (task 'regression')"]
        return []

    @property
    def n_outputs(self) -> int:
        return 1 if self.task in ("regression", "binary") else len(self.classes)

    def labels(self, series, what: str = "the table") -> np.ndarray:
        """``(n,)`` class indices (int64) or values (float64) on the original scale; every cell must be present,
        and a class the model never saw is an error naming it."""
        labels = _labels(series)
        if any(v is None for v in labels):
            raise TableError(f"{what}: the target column {self.name!r} has missing cells; drop those rows first")
        if self.task == "regression":
            values = _numbers(labels)
            bad = next((v for v, x in zip(labels, values) if x is None), None)
            if bad is not None:
                raise TableError(f"{what}: the target column {self.name!r} holds {bad!r}, not a number")
            return np.array(values, dtype=np.float64)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise TableError(f"{what}: the target column {self.name!r} holds label(s) the model never saw: "
                             f"{unknown[:10]}; the model knows {self.classes}")
        return np.array([index[v] for v in labels], dtype=np.int64)

    def encode(self, y: np.ndarray) -> np.ndarray:
        """What the network trains on: standardised ``(n, 1)`` values for regression; class indices otherwise."""
        return ((y - self.mean) / self.sd)[:, None] if self.task == "regression" else y

    def decode(self, outputs: np.ndarray):
        """Network outputs ``(n, n_outputs)`` -> ``(predictions, probabilities or None)``: values on the target's
        scale ``(n,)``, or class indices ``(n,)`` with ``(n, n_classes)`` probabilities."""
        out = np.asarray(outputs, dtype=np.float64)
        if self.task == "regression":
            return out[:, 0] * self.sd + self.mean, None
        proba = np.hstack([1 - out, out]) if self.task == "binary" else out
        return proba.argmax(axis=1), proba

    def describe(self) -> str:
        if self.task == "regression":
            return (f"target {self.name!r}: numbers -> regression (standardised: mean {_fmt(self.mean)}, "
                    f"sd {_fmt(self.sd)})")
        shown = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
        return f"target {self.name!r}: {len(self.classes)} classes -> {self.task} ({shown})"

    def to_json(self) -> dict:
        return {"name": self.name, "task": self.task, "classes": self.classes, "mean": self.mean, "sd": self.sd}

    @classmethod
    def from_json(cls, d: dict) -> "TargetTransform":
        target = cls(d["name"])
        target.task, target.classes = d["task"], list(d.get("classes") or [])
        target.mean, target.sd = float(d.get("mean", 0.0)), float(d.get("sd", 1.0))
        if target.task not in TASKS:
            raise TableError(f"unknown task {target.task!r} in the saved target")
        return target

    def __repr__(self) -> str:
        return f"TargetTransform({self.name!r}, task={self.task!r}, classes={self.classes})"


def _is_bool_series(series) -> bool:
    pd = _pandas()
    return pd.api.types.is_bool_dtype(series.dtype)
