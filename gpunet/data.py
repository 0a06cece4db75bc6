"""Tables for the command line: scikit-learn's bundled data sets, CSV and Parquet files, and a reproducible split.

Files are parsed by pandas (CSV: its C parser; Parquet: pyarrow), after checks that pandas does not make: the
delimiter (given, or detected among ``, ; TAB |``), duplicate or missing column names, and rows whose number of fields
differs from the header's (pandas would fill short rows with missing values). In a CSV file not delimited by
commas, :class:`NumberReading` finds the numbers pandas leaves as text (decimal commas, ``.`` thousands
separators). What the columns become is :mod:`gpunet.tabular`'s business; this module only reads.

Files bigger than :data:`STREAM_BYTES` are not loaded whole by the command line: :class:`TableFile` reads them
chunk by chunk (CSV: ``pandas.read_csv(chunksize=)``, after the same checks; Parquet: ``iter_batches``), and
:meth:`gpunet.TableModel.train_file` trains from them with bounded memory.
"""

from __future__ import annotations

import contextlib
import csv
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .tabular import TableError, as_frame

BUNDLED = ("digits", "iris", "wine", "breast_cancer", "diabetes")
STREAM_BYTES = 256 << 20  # the command line streams CSV/Parquet files larger than this (--stream on/off overrides)
CHUNK_ROWS = 65536  # rows per chunk when a file is read in chunks
DELIMITERS = (",", ";", "\t", "|")
_SAMPLE_LINES = 50


class DataError(TableError):
    """A data set that cannot be used, with a message for the user."""


@dataclass
class Table:
    """A raw table and its target column, as read (nothing encoded yet)."""

    name: str
    frame: object  # pandas DataFrame
    target: str | None  # None: not named by the user (train takes the last column)
    notes: list[str] = field(default_factory=list)
    european: list[str] = field(default_factory=list)  # the columns read as European numbers


def load(spec: str, delimiter: str | None = None, european=()) -> Table:
    """``"digits"``, ``"iris"``, ``"wine"``, ``"breast_cancer"``, ``"diabetes"``, ``"csv:PATH[:TARGET]"`` or
    ``"parquet:PATH[:TARGET]"`` (a bare ``PATH[:TARGET]`` ending in .csv, .tsv, .txt or .parquet works too);
    ``european`` as for :func:`read_table`."""
    parsed = table_spec(spec)
    if parsed is None:
        if spec in BUNDLED:
            return _bundled(spec)
        raise DataError(f"unknown dataset {spec!r}; expected one of {list(BUNDLED)}, csv:PATH[:TARGET_COLUMN] or "
                        f"parquet:PATH[:TARGET_COLUMN]")
    kind, path, column = parsed
    frame, notes, european = _read_file(path, kind, delimiter, european)
    return Table(Path(path).stem, frame, column, notes, european)


def _bundled(name: str) -> Table:
    try:
        from sklearn import datasets
    except ImportError:
        raise DataError("the bundled data sets come from scikit-learn: pip install 'gpunet[data]'") from None
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    names = getattr(bunch, "target_names", None)
    if name != "diabetes" and names is not None:  # class names instead of indices (digits: 0..9 either way)
        frame["target"] = [str(names[int(i)]) for i in frame["target"]]
    return Table(name, frame, "target")


def read_table(path, kind: str | None = None, delimiter: str | None = None, european=()):
    """``(pandas DataFrame, notes)`` from a CSV or Parquet file (``kind`` "csv"/"parquet", else by suffix).

    CSV: UTF-8 (a byte-order mark is dropped), or Windows-1252 where it is not UTF-8 (noted), a header row,
    ``delimiter`` or the one detected; every row must have as many fields as the header. Empty cells and pandas'
    NA markers ("NA", "NaN", "null", ...) are missing values.
    Numbers as :class:`NumberReading` reads them; ``european``: columns known to hold European numbers (those of a
    model's training file: ``TableModel.european``).
    """
    frame, notes, _ = _read_file(path, kind, delimiter, european)
    return frame, notes


def _read_file(path, kind, delimiter, european=()):
    """:func:`read_table` and the columns it read as European numbers."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{'Parquet' if kind == 'parquet' else 'CSV'} file not found: {path}")
    if kind is None:
        kind = "parquet" if file.suffix.lower() in (".parquet", ".pq") else "csv"
    if kind == "parquet":
        return _read_parquet(file), [], []
    return _read_csv(file, delimiter, european)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise DataError("reading CSV and Parquet files needs pandas: pip install 'gpunet[data]'") from None
    return pandas


def _pyarrow_parquet():
    _pandas()
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet files needs pyarrow: pip install 'gpunet[data]'") from None
    return pq


def _unreadable(file, exc) -> DataError:
    return DataError(f"{file} is not a readable Parquet file ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})")


def _read_parquet(file: Path):
    pq = _pyarrow_parquet()
    try:
        table = pq.read_table(file)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise _unreadable(file, exc) from None
    if table.num_rows == 0:
        raise DataError(f"{file} holds no rows")
    return as_frame(table, str(file))


@contextlib.contextmanager
def _no_field_limit():
    """The csv module refuses fields over 128 KiB by default; a table cell may be longer."""
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_csv(file: Path, delimiter: str | None, european=()):
    """``(frame, notes, the columns read as European numbers)``."""
    pd = _pandas()
    found = _check_csv(file, delimiter)
    delimiter, notes = found.delimiter, list(found.notes)
    reading = NumberReading(delimiter, found.commas, european)
    try:
        frame = pd.read_csv(file, sep=delimiter, encoding=found.encoding, skipinitialspace=True, low_memory=False,
                            decimal=reading.decimal, dtype=reading.dtype(found.header))
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{file} is not a readable CSV file with delimiter {_show(delimiter)} ({exc}); "
                        f"give another with --delimiter") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = reading.apply(frame)
    return as_frame(frame, str(file)), notes + reading.notes(file.name, frame.columns), reading.european


# a cell that makes a file European: a number with a decimal comma (3,5  -0,25  ,5  1.589,5)
_COMMA_DECIMAL = re.compile(r"[-+]?(\d*|[1-9]\d{0,2}(\.\d{3})+),\d+")
_INTEGER = r"[-+]?\d+"
_PLAIN = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"  # what pandas reads as a number: 12  12.5  .5  1e5
_MARKED = r"[-+]?(\d*,\d+|[1-9]\d{0,2}(\.\d{3})+(,\d+)?)"  # European and not plain-looking: 12,5  1.589  12.345,6
_GROUPS = r"[-+]?[1-9]\d{0,2}(\.\d{3}){2,}(,\d+)?"  # 1.234.567: thousands separators, whatever the file


class NumberReading:
    """How a CSV file not delimited by commas writes its numbers: pandas reads them with the file's decimal mark
    (``,`` when a cell of the file is a number with a decimal comma), and each text column left is decided once,
    on the first cells it holds, and read so in every chunk:

    - "european": ``12,5`` is 12.5, ``1.589`` is 1589 (``.`` separates thousands): a column with such cells and no
      plain decimal (``12.5``, ``0.125``), in a European file, or with a decimal comma in any file;
    - "plain": ``12.5`` as pandas reads it (a column of dot decimals in a European file).

    A cell that is no number under the column's reading (a ``?`` placeholder, a word) stays as it is, the numbers
    beside it becoming their text as pandas writes them, for :class:`gpunet.tabular.TableTransform` to decide.
    ``european``: columns known to be European numbers (a model's training file): read as text in a file without
    decimal commas, and European (``3.750`` is 3750) unless the file's column holds a plain decimal (``15.5``)."""

    def __init__(self, delimiter: str, commas: bool, european=()):
        self.active = delimiter != ","
        self.decimal = "," if self.active and commas else "."
        self.commas = self.active and commas
        # "european" | "plain" once decided; "european?" for a model's European column not yet seen in this file
        self.readings = {str(name): "european?" for name in european} if self.active else {}
        self.found: dict[str, set] = {}  # column -> {"decimal commas", "thousands"} seen while reading

    @property
    def european(self) -> list[str]:
        return sorted(name for name, how in self.readings.items() if how.startswith("european"))

    def dtype(self, header):
        """pandas' ``dtype=``: in a file without decimal commas, text for the columns known to be European (pandas
        would read 3.750 as 3.75); a European file's own ``decimal=","`` leaves 3.750 as text."""
        text = {raw: str for raw in header if self.readings.get(raw.strip(), "").startswith("european")
                and not self.commas}
        return text or None

    def apply(self, frame):
        """``frame`` (a file's rows, as pandas read them) with the numbers of its text columns read."""
        pd = _pandas()
        for name in frame.columns:
            column = frame[name]
            if not self.active or pd.api.types.is_bool_dtype(column.dtype):
                continue
            if pd.api.types.is_numeric_dtype(column.dtype):
                if self.commas and pd.api.types.is_float_dtype(column.dtype) and column.notna().any():
                    self.readings.setdefault(name, "european")  # decimals read with decimal=",": new rows too
                continue
            present = column.notna()
            if not present.any():
                if self.readings.get(name, "").startswith("european"):  # forced to text: a blank stretch
                    frame[name] = pd.to_numeric(column.astype(object))
                continue
            text = column[present].astype(str).str.strip()
            how = self.readings.get(name)
            if how in (None, "european?"):  # a model's European column: European unless this file's cells say not
                how = self._decide(text, european=how == "european?")
            if how is None:
                continue
            self.readings[name] = how
            number = text.str.fullmatch(f"{_INTEGER}|{_MARKED}" if how == "european" else _PLAIN)
            if how == "european":
                for mark, found in ((",", "decimal commas"), (".", "thousands")):
                    if (number & text.str.contains(mark, regex=False)).any():
                        self.found.setdefault(name, set()).add(found)
                text = text.where(~number, text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False))
            if not number.any():
                continue
            values = pd.to_numeric(text.where(number))
            if number.all():
                frame[name] = values.reindex(column.index)
            else:  # a placeholder or words beside the numbers: text, the numbers as pandas writes them
                frame[name] = values.astype(object).map(str).where(number, text).reindex(column.index).astype(object)
        return frame

    def _decide(self, text, european: bool = False):
        """A column's reading from its first cells: plain where a cell is a plain decimal (12.5, 0.125), else
        European in a European file (or ``european``, a model's European column), or with a decimal comma or a
        number of several thousands groups (1.234.567) in the column."""
        marked = text.str.fullmatch(_MARKED)
        plain_only = text.str.fullmatch(_PLAIN) & ~marked & ~text.str.fullmatch(_INTEGER)
        if plain_only.any():
            return "plain"
        evidence = marked & (text.str.contains(",", regex=False) | text.str.fullmatch(_GROUPS))
        if marked.any() and (self.commas or european or evidence.any()):
            return "european"
        return "plain" if text.str.fullmatch(_PLAIN).any() else None

    def notes(self, file_name: str, columns) -> list[str]:
        words = {"decimal commas": "decimal commas", "thousands": "'.' as thousands separator (1.589 = 1589)"}
        mark = [f"{file_name}: numbers read with decimal commas (12,5 = 12.5)"] if self.commas else []
        return mark + [f"{file_name}: column {name!r} has {' and '.join(words[w] for w in sorted(self.found[name]))}"
                       f": read as numbers" for name in columns if name in self.found]


class CsvFormat(NamedTuple):
    """What :func:`_check_csv` found out about a CSV file."""

    delimiter: str
    notes: list
    lines: int  # non-blank rows, the header included
    header: list
    commas: bool  # a cell is a number with a decimal comma (and the delimiter is not a comma)
    encoding: str  # "utf-8-sig", or "cp1252" for a file that is not UTF-8 (Excel's Western European export)


def _check_csv(file: Path, delimiter: str | None) -> CsvFormat:
    """The checks pandas does not make, in UTF-8 or, where the file is not UTF-8, in Windows-1252 (noted)."""
    try:
        return _check_csv_as(file, delimiter, "utf-8-sig")
    except UnicodeDecodeError as exc:
        where = f"{exc.reason} at byte {exc.start}"
    try:
        found = _check_csv_as(file, delimiter, "cp1252")
    except UnicodeDecodeError:
        raise DataError(f"{file} is not UTF-8 text ({where}), nor Windows-1252; save it as UTF-8") from None
    return found._replace(notes=[f"{file.name}: not UTF-8 ({where}): read as Windows-1252 (cp1252)"] + found.notes)


def _check_csv_as(file: Path, delimiter: str | None, encoding: str) -> CsvFormat:
    with file.open(newline="", encoding=encoding) as handle:
        sample = [line for _, line in zip(range(_SAMPLE_LINES), handle)]
    notes = []
    if not "".join(sample).strip():
        raise DataError(f"{file} is empty")
    if delimiter is None:
        delimiter = _detect_delimiter(sample)
        if delimiter != ",":
            notes.append(f"{file.name}: delimiter {_show(delimiter)} detected")
    elif len(delimiter) != 1:
        raise DataError(f"--delimiter must be one character (\\t for tab); received {delimiter!r}")
    lines, header, commas = _check_fields(file, delimiter, encoding)
    if lines < 2:
        raise DataError(f"{file} needs a header row and at least 1 data row; found {lines} row(s)")
    empty = [i + 1 for i, h in enumerate(header) if not h.strip()]
    if empty and empty != [1]:
        raise DataError(f"{file}: column(s) {empty} of the header have no name; name every column (an unnamed first "
                        f"column is taken as a saved row index and left out)")
    stripped = [h.strip() for h in header]
    dupes = sorted({h for h in stripped if stripped.count(h) > 1 and h})
    if dupes:
        raise DataError(f"{file} has duplicate column names {dupes}: rename them so each column has its own name")
    return CsvFormat(delimiter, notes, lines, header, commas, encoding)


def _detect_delimiter(sample: list[str]) -> str:
    """The delimiter among ``, ; TAB |`` that splits the sampled lines into the most fields, the same number on
    every line (quotes respected); "," when none does better than one field."""
    best, best_fields = ",", 1
    with _no_field_limit():
        for candidate in DELIMITERS:
            rows = [r for r in csv.reader(sample[:-1] if len(sample) == _SAMPLE_LINES else sample,
                                          delimiter=candidate) if r]
            counts = {len(r) for r in rows}
            if len(counts) == 1 and (fields := counts.pop()) > best_fields:
                best, best_fields = candidate, fields
    return best


def _check_fields(file: Path, delimiter: str, encoding: str = "utf-8-sig"):
    """``(number of non-blank rows, header, decimal commas)``; every row has as many fields as the header (quotes
    respected). ``decimal commas``: a cell is a number with a decimal comma (``3,5``), in a file whose delimiter
    is not a comma: the file writes numbers the European way."""
    with _no_field_limit(), file.open(newline="", encoding=encoding) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header, lines, commas = None, 0, False
        try:
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue
                lines += 1
                if header is None:
                    header = row
                    if len(header) < 2:
                        raise DataError(f"{file}: the header has one column with delimiter {_show(delimiter)}; "
                                        f"a table needs a target and at least one feature (another delimiter? "
                                        f"--delimiter)")
                elif len(row) != len(header):
                    raise DataError(f"{file}, line {reader.line_num}: {len(row)} fields, but the header has "
                                    f"{len(header)} (delimiter {_show(delimiter)}; another one? --delimiter)")
                elif not commas and delimiter != ",":
                    commas = any("," in cell and _COMMA_DECIMAL.fullmatch(cell.strip()) for cell in row)
        except csv.Error as exc:
            raise DataError(f"{file}, line {reader.line_num}: not readable as CSV ({exc})") from None
    return lines, header or [], commas


def _show(delimiter: str) -> str:
    return {"\t": "tab", ",": "','", ";": "';'", "|": "'|'"}.get(delimiter, repr(delimiter))


def split(n: int, fraction: float, labels, seed: int, option: str):
    """Reproducible ``(kept, held out)`` host row indices holding out ``fraction`` of ``n`` rows, stratified by
    ``labels`` (class index per row) when given: :func:`gpunet.training.split_validation` from ``seed``, a class
    with a single row staying on the kept side. ``option`` names the command-line option in messages."""
    from .training import split_validation

    try:
        return split_validation(n, fraction, labels, np.random.default_rng(seed), option, single_rows="keep")
    except ValueError as exc:
        raise DataError(str(exc).replace(f"{option}=", f"{option} ")) from None


class TableFile:
    """A CSV or Parquet file read chunk by chunk, for tables too big to load (the command line's streamed path).

    The checks of :func:`read_table` run when it is opened (CSV: UTF-8, delimiter, header, the number of fields of
    every row; Parquet: a readable file with rows); ``n_rows`` and ``columns`` are known then. :meth:`chunks` yields
    ``(first row, pandas DataFrame)`` pieces of :data:`CHUNK_ROWS` rows with the column names and types
    :func:`read_table` gives (CSV: pandas infers the types, or gpunet finds the numbers of a file not delimited
    by commas, chunk by chunk, so a column's type may differ between chunks where its text does; whether the file
    writes decimal commas is decided on its first rows, once). :meth:`rows` reads the given rows as one DataFrame.
    ``notes``: what reading found (the delimiter, decimal-comma and thousands columns so far).
    """

    def __init__(self, path, kind: str | None = None, delimiter: str | None = None, european=()):
        file = Path(path)
        if not file.is_file():
            raise DataError(f"{'Parquet' if kind == 'parquet' else 'CSV'} file not found: {path}")
        self.file, self.name = file, file.stem
        self.kind = kind or ("parquet" if file.suffix.lower() in (".parquet", ".pq") else "csv")
        self._notes: list[str] = []
        self._reading = NumberReading(",", False)  # CSV: set below
        if self.kind == "parquet":
            pq = _pyarrow_parquet()
            try:
                self._parquet = pq.ParquetFile(file)
            except Exception as exc:
                raise _unreadable(file, exc) from None
            self.n_rows = self._parquet.metadata.num_rows
            if self.n_rows == 0:
                raise DataError(f"{file} holds no rows")
            self.columns = [str(c) for c in self._parquet.schema_arrow.names]
            self._delimiter = None
        else:
            found = _check_csv(file, delimiter)
            self._delimiter, self._notes, self._encoding = found.delimiter, list(found.notes), found.encoding
            self._reading, self._header = NumberReading(self._delimiter, found.commas, european), found.header
            self.n_rows = found.lines - 1
            self.columns = [h.strip() for h in found.header]
        if len(set(self.columns)) != len(self.columns):
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
            raise DataError(f"{file} has duplicate column names {dupes}: rename them so each column has its own name")

    def __repr__(self) -> str:
        return f"TableFile({str(self.file)!r}, {self.kind}, {self.n_rows} rows)"

    @property
    def notes(self) -> list[str]:
        return self._notes + self._reading.notes(self.file.name, self.columns)

    @property
    def european(self) -> list[str]:
        """The columns read as European numbers so far (decided on the first chunk that holds values)."""
        return self._reading.european

    def chunks(self, columns=None, rows: int | None = None):
        """``(first row, DataFrame)`` for consecutive pieces of ``rows`` rows (default :data:`CHUNK_ROWS`) of the
        file, with only ``columns`` when given."""
        wanted = None if columns is None else [str(c) for c in columns]
        rows = rows or CHUNK_ROWS
        start = 0
        for frame in (self._parquet_chunks(wanted, rows) if self.kind == "parquet" else self._csv_chunks(wanted, rows)):
            yield start, frame
            start += len(frame)

    def rows(self, rows, columns=None):
        """The file's rows ``rows`` (sorted 0-based indices) as one DataFrame with a fresh index."""
        pd = _pandas()
        rows = np.asarray(rows, dtype=np.int64)
        parts = []
        for start, frame in self.chunks(columns):
            lo, hi = np.searchsorted(rows, [start, start + len(frame)])
            if hi > lo:
                parts.append(frame.iloc[rows[lo:hi] - start])
        if not parts:
            return pd.DataFrame(columns=self.columns if columns is None else list(columns))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)

    def _parquet_chunks(self, wanted, rows):
        import pyarrow as pa

        try:
            for batch in self._parquet.iter_batches(batch_size=rows, columns=wanted):
                yield as_frame(pa.Table.from_batches([batch]), str(self.file))
        except DataError:
            raise
        except Exception as exc:  # a damaged row group
            raise _unreadable(self.file, exc) from None

    def _csv_chunks(self, wanted, rows):
        pd = _pandas()
        usecols = None if wanted is None else (lambda c: str(c).strip() in wanted)
        try:
            reading = self._reading
            reader = pd.read_csv(self.file, sep=self._delimiter, encoding=self._encoding, skipinitialspace=True,
                                 low_memory=False, chunksize=rows, usecols=usecols, decimal=reading.decimal,
                                 dtype=reading.dtype([h for h in self._header
                                                      if wanted is None or h.strip() in wanted]))
            for frame in reader:
                frame.columns = [str(c).strip() for c in frame.columns]
                yield as_frame(reading.apply(frame), str(self.file))
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.file} is not a readable CSV file with delimiter {_show(self._delimiter)} ({exc}); "
                            f"give another with --delimiter") from None


def should_stream(path, option: str = "auto") -> bool:
    """Whether the command line streams a table file: ``option`` "on", "off", or "auto" (files larger than
    :data:`STREAM_BYTES`)."""
    if option == "auto":
        return Path(path).is_file() and Path(path).stat().st_size > STREAM_BYTES
    return option == "on"


def table_spec(spec: str):
    """``(kind, path, target or None)`` of a ``csv:``/``parquet:`` spec or a bare table path; None for a bundled
    data set or anything else."""
    kind, rest = None, spec
    for prefix in ("csv", "parquet"):
        if spec.startswith(prefix + ":"):
            kind, rest = prefix, spec[len(prefix) + 1:]
    if kind is None and spec in BUNDLED:
        return None
    path, _, column = rest.partition(":")
    if kind is None:
        suffix = Path(path).suffix.lower()
        if suffix not in (".csv", ".tsv", ".txt", ".parquet", ".pq"):
            return None
        kind = "parquet" if suffix in (".parquet", ".pq") else "csv"
    return kind, path, column or None
