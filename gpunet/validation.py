"""Argument checks shared by every public entry point.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, wrong value) with a message
that names the argument, says what was expected and quotes what came. Checks run once per call, never per batch.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings

import numpy as np
from array_api_compat import array_namespace

from .backend import Backend, array_library, to_numpy


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; received {type(value).__name__}: {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; received {name}={value!r}")
    return int(value)


def warn_at_caller(message: str, category=UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside the gpunet package: the user's call, however deep
    inside gpunet the warning arises (``model.save``, ``gn.save`` and ``pickle`` reach the same code). Only rank 0
    of a data-parallel job warns."""
    from . import distributed

    if not distributed.is_leader():  # a data-parallel job warns once, from rank 0
        return
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= 0; received {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0; received {name}={value!r}")
    return int(value)


def real_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; received {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; received {name}={value!r}")
    return value


def positive_number(name: str, value) -> float:
    value = real_number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; received {name}={value!r}")
    return value


def number_in(name: str, value, low: float, high: float, *, high_inclusive: bool = False) -> float:
    """``value`` in ``[low, high)`` (or ``[low, high]``)."""
    value = real_number(name, value)
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}; received {name}={value!r}")
    return value


def one_of(name: str, value, choices) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {sorted(choices)}; received {type(value).__name__}: {value!r}")
    key = value.strip().lower()
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")
    return key


def _dtype_kind(x) -> str:
    """NumPy's kind letter of ``x``'s dtype ('f', 'i', 'u', 'b', 'c', 'O', 'U', ...), for any namespace."""
    if isinstance(x, np.ndarray):
        return x.dtype.kind
    xp = array_namespace(x)
    for kind, group in (("b", "bool"), ("i", "signed integer"), ("u", "unsigned integer"), ("f", "real floating"),
                        ("c", "complex floating")):
        if xp.isdtype(x.dtype, group):
            return kind
    return "O"


def as_array(name: str, data, backend: Backend):
    """``data`` as an array of ``backend``, without copying arrays the backend already owns.

    Host data (NumPy arrays, lists, scalars) is accepted for every backend and moved later, once. Arrays of
    another library (a CuPy array for a CPU model, a torch tensor for a NumPy model...) are refused: move them
    explicitly, once, rather than have gpunet copy between libraries behind your back. (A CuPy array on another
    GPU of the same library is copied to the model's GPU: see :meth:`gpunet.backend.Backend.to_device`.)
    """
    if backend.owns(data):
        return data
    if isinstance(data, (np.ndarray, np.generic)) or not _is_foreign_array(data):
        try:
            return np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be a numeric array; could not convert it ({exc})") from None
    raise TypeError(
        f"{name} is a {array_library(data)} array but the model runs on {backend.label} ({backend.name}); "
        f"move it first (e.g. gpunet.to_numpy({name}) or model.to(...))"
    )


def _is_foreign_array(data) -> bool:
    return hasattr(data, "__array_namespace__") or hasattr(data, "__dlpack__")


def numeric(name: str, x):
    """Refuse non-numeric, complex and empty arrays; bool and integers are fine (they are cast)."""
    kind = _dtype_kind(x)
    if kind == "c":
        raise TypeError(f"{name} must be real-valued; received a complex array of dtype {x.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array; received dtype {x.dtype}")
    if math.prod(x.shape) == 0:
        raise ValueError(f"{name} must not be empty; received shape {tuple(x.shape)}")
    return x


def within_dtype(name: str, x, dtype: str):
    """Refuse finite values that the cast to ``dtype`` would turn into infinity (float64 data for a float32 model)."""
    limit = float(np.finfo(dtype).max)
    if _dtype_kind(x) == "f" and np.dtype(str(x.dtype).split(".")[-1]).itemsize > np.dtype(dtype).itemsize:
        xp = array_namespace(x)
        big = float(xp.max(xp.abs(x)))
        if big > limit:
            raise ValueError(f"{name} must be finite as {dtype}: it holds {big:.6g}, beyond the largest {dtype} "
                             f"({limit:.6g}); scale the data or use dtype='float64'")
    return x


def finite(name: str, x, offset: int = 0):
    """Refuse NaN and infinity, naming the first offending index; ``offset``: the row of ``x[0]`` in the data it was
    cut from (a chunk of a memory-mapped file), added to the row in the message."""
    if _dtype_kind(x) != "f":
        return x
    xp = array_namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        bad = np.argwhere(~np.isfinite(to_numpy(x)))[0]
        index = tuple(int(i) for i in bad)
        value = to_numpy(x)[index]
        shown = (index[0] + offset,) + index[1:] if index else index
        raise ValueError(f"{name} must be finite; {name}[{', '.join(map(str, shown))}] = {value}")
    return x


def rows(x) -> int | None:
    """The number of rows of an array-like (None when it has no shape)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except (ValueError, TypeError):
            return None
    return int(shape[0]) if len(shape) else None


def features(name: str, x, n_features: int, offset: int = 0):
    """A 2-D ``(n, n_features)`` numeric finite array (``offset`` as in :func:`finite`)."""
    numeric(name, x)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features={n_features}); received shape {tuple(x.shape)}"
            + (" (reshape a single sample with x[None, :] or a single feature with x[:, None])" if x.ndim == 1 else "")
        )
    if x.shape[1] != n_features:
        raise ValueError(f"{name} has {x.shape[1]} features per sample but the model expects {n_features}")
    return finite(name, x, offset)


# -- DataFrames (pandas, polars) and pyarrow Tables of numeric columns ----------------------------------------------
def table_features(name: str, X, expected: list[str] | None):
    """``(host array, column names)`` for a pandas/polars DataFrame or pyarrow Table of numeric (or boolean)
    columns, with the columns put in the order of ``expected`` when given (matched by name: a missing or an
    unexpected column is an error); ``(X, None)`` for anything else. Raw tables (text, dates, blanks) are for
    :class:`gpunet.tabular.TableTransform` / :class:`gpunet.TableModel`."""
    from .tabular import is_table

    if not is_table(X):
        if expected is not None and X is not None:  # as scikit-learn warns: columns by position, not by name
            warn_at_caller(f"{name} has no column names, but the model was fitted on a table with columns "
                           f"{some(list(expected))}: its columns are taken in that order (pass a DataFrame to "
                           f"match them by name)")
        return X, None
    arrow = type(X).__module__.split(".")[0] == "pyarrow"
    names = [str(c) for c in (X.column_names if arrow else X.columns)]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"{name} has duplicate column names {dupes}; each column needs its own name")
    if expected is not None and names != list(expected):
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in expected]
        if missing or extra:
            raise ValueError(f"{name} does not have the model's columns: "
                             + "; ".join(([f"missing: {missing}"] if missing else [])
                                         + ([f"unexpected: {extra}"] if extra else []))
                             + f" (the model was fitted on {len(expected)}: {some(list(expected))})")
    order = list(expected) if expected is not None else names
    position = {c: i for i, c in enumerate(names)}
    columns = []
    for column in order:
        if arrow:
            values = X.column(position[column]).to_numpy(zero_copy_only=False)
        elif type(X).__module__.split(".")[0] == "polars":
            values = X.get_column(column).to_numpy()
        else:
            series = X.iloc[:, position[column]]
            kind = getattr(series.dtype, "kind", "O")
            values = series.to_numpy(dtype=np.float64, na_value=np.nan) if kind in "biuf" and series.hasnans \
                else series.to_numpy()
        values = np.asarray(values)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"{name} column {column!r} holds {values.dtype} values, not numbers; encode raw tables with "
                            f"gpunet.tabular.TableTransform (or train a gpunet.TableModel)")
        columns.append(values)
    if not columns:
        raise ValueError(f"{name} has no columns")
    return np.column_stack(columns), names if expected is None else list(expected)


def some(names: list, limit: int = 8) -> str:
    """``names`` in a message: all of them, or the first ``limit`` and how many more."""
    return str(names) if len(names) <= limit else f"{names[:limit]} and {len(names) - limit} more"
