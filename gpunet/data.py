"""Data sets for the command line: scikit-learn's bundled ones and CSV files, split and standardised from a seed.

A :class:`Dataset` holds host NumPy arrays and what the model needs to know about them: the task
(``"regression"``, ``"binary"``, ``"multiclass"``), class names, and the standardisation learnt on the training rows
(features always; targets for regression), which travels with a saved model so ``evaluate``/``predict`` apply the
same transform.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BUNDLED = {"digits": "multiclass", "iris": "multiclass", "wine": "multiclass", "breast_cancer": "binary",
           "diabetes": "regression"}
TASKS = ("regression", "binary", "multiclass")


class DataError(ValueError):
    """A data set that cannot be used, with a message for the user."""


@dataclass
class Dataset:
    name: str
    X: np.ndarray  # (n, features) float64
    y: np.ndarray  # (n,) class indices (int64) or (n,) / (n, k) float64 targets
    task: str
    feature_names: list[str]
    classes: list[str] = field(default_factory=list)  # class names, index = label
    target_name: str = "target"


def load(spec: str, task: str | None = None) -> Dataset:
    """``"digits"``, ``"iris"``, ``"wine"``, ``"breast_cancer"``, ``"diabetes"`` or ``"csv:PATH[:TARGET_COLUMN]"``
    (the last column when none is named). ``task`` overrides the inferred task."""
    if spec.startswith("csv:"):
        path, _, column = spec[4:].partition(":")
        data = read_csv(path, column or None)
    elif spec in BUNDLED:
        data = _bundled(spec)
    else:
        raise DataError(f"unknown dataset {spec!r}; expected one of {sorted(BUNDLED)} or csv:PATH[:TARGET_COLUMN]")
    if task is not None and task != data.task:
        data = _retask(data, task)
    return data


def _bundled(name: str) -> Dataset:
    try:
        from sklearn import datasets
    except ImportError:
        raise DataError("the bundled data sets come from scikit-learn: pip install 'gpunet[data]'") from None
    bunch = getattr(datasets, f"load_{name}")()
    task = BUNDLED[name]
    y = bunch.target.astype(np.int64) if task != "regression" else bunch.target.astype(np.float64)
    classes = [str(c) for c in getattr(bunch, "target_names", [])] if task != "regression" else []
    features = [str(f) for f in getattr(bunch, "feature_names", [])] or [f"x{i}" for i in range(bunch.data.shape[1])]
    return Dataset(name, bunch.data.astype(np.float64), y, task, features, classes)


def read_csv(path: str, target: str | None = None) -> Dataset:
    """A CSV file with a header row; every feature column numeric. The target column may hold numbers or labels."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc})") from None
    if len(rows) < 3:
        raise DataError(f"{path} needs a header row and at least 2 data rows; found {len(rows)} row(s)")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
    if len(header) < 2:
        raise DataError(f"{path} needs at least one feature column and a target column")
    target = header[-1] if target is None else target
    if target not in header:
        raise DataError(f"{path} has no column {target!r}; columns: {header}")
    t = header.index(target)
    features = [h for i, h in enumerate(header) if i != t]
    X = np.empty((len(body), len(features)))
    for line, row in enumerate(body, start=2):
        for j, (i, cell) in enumerate((i, c) for i, c in enumerate(row) if i != t):
            try:
                X[line - 2, j] = float(cell)
            except ValueError:
                raise DataError(f"{path}, line {line}, column {header[i]!r}: {cell!r} is not a number") from None
            if not math.isfinite(X[line - 2, j]):
                raise DataError(f"{path}, line {line}, column {header[i]!r}: {cell!r} is not finite")
    labels = [row[t].strip() for row in body]
    return _from_target_column(Path(path).stem, X, labels, features, target)


def _from_target_column(name, X, labels, features, target) -> Dataset:
    """Classification when the target holds text or a few whole numbers, regression otherwise."""
    try:
        values = np.array([float(v) for v in labels])
    except ValueError:
        values = None
    if values is not None and not np.all(np.isfinite(values)):
        raise DataError(f"target column {target!r} holds a non-finite value")
    few_integers = (values is not None and np.all(values == np.round(values))
                    and len(np.unique(values)) <= max(2, min(20, len(values) // 5)))
    if values is not None and not few_integers:
        return Dataset(name, X, values, "regression", features, target_name=target)
    keys = sorted(set(labels), key=lambda v: (float(v), v) if values is not None else (0.0, v))
    index = {k: i for i, k in enumerate(keys)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    return Dataset(name, X, y, "binary" if len(keys) == 2 else "multiclass", features, keys, target)


def _retask(data: Dataset, task: str) -> Dataset:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    if task == "regression":
        return Dataset(data.name, data.X, data.y.astype(np.float64), task, data.feature_names,
                       target_name=data.target_name)
    if data.task == "regression":
        raise DataError(f"{data.name} has a continuous target; it cannot be a {task} problem")
    n_classes = len(np.unique(data.y))
    if task == "binary" and n_classes != 2:
        raise DataError(f"{data.name} has {n_classes} classes, not 2: use --task multiclass")
    return Dataset(data.name, data.X, data.y, task, data.feature_names, data.classes, data.target_name)


@dataclass
class Standardizer:
    """``(x - mean) / scale`` per column, learnt on training rows; a constant column gets scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, a: np.ndarray) -> "Standardizer":
        scale = a.std(axis=0)
        return cls(a.mean(axis=0), np.where(scale > 0, scale, 1.0))

    def transform(self, a):
        return (a - self.mean) / self.scale

    def inverse(self, a):
        return a * self.scale + self.mean

    def to_json(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "scale": np.asarray(self.scale).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Standardizer":
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["scale"], dtype=np.float64))


def split(data: Dataset, test_fraction: float, seed: int):
    """Reproducible train/test row indices from ``seed``, stratified for classification."""
    from .training import split_validation

    labels = data.y if data.task != "regression" else None
    try:
        return split_validation(len(data.X), test_fraction, labels, np.random.default_rng(seed))
    except ValueError as exc:
        raise DataError(str(exc).replace("validation_split", "the test split")) from None
