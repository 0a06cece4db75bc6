"""The default recipe for tables, and :class:`TableModel`: a network with the column and target transforms it was
trained with. ``gpunet train`` is a thin layer over :meth:`TableModel.train`; from Python:

>>> import pandas as pd, gpunet as gn                                                 # doctest: +SKIP
>>> table = pd.read_csv("penguins.csv")                                               # doctest: +SKIP
>>> tm = gn.TableModel.train(table, "species", seed=0)                                # doctest: +SKIP
>>> tm.predict(table.head())       # class names, one per row                         # doctest: +SKIP
>>> tm.save("penguins.safetensors")   # gpunet evaluate / predict read it              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np

from . import data as data_mod
from .tabular import TableError, TableTransform, TargetTransform, as_frame, canonical_label

METADATA_VERSION = 2  # model.metadata["cli"]["version"]; version 1 (x_scaler/features) is still read
SAMPLE_ROWS = 100_000  # train_file fits the column transform on at most this many training rows


@dataclasses.dataclass
class Recipe:
    """How a table's network is built and trained. The defaults are measured in ``scripts/compare_defaults.py``
    (README, "Default recipe").

    Attributes:
        hidden: hidden layer sizes.
        activation: hidden activation.
        dropout: dropout after each hidden layer.
        optimizer: a name of :mod:`gpunet.optim`.
        lr: learning rate.
        weight_decay: the optimizer's weight decay (AdamW's decoupled decay for "adamw").
        epochs: the most epochs.
        batch_size: rows per step.
        val_split: share of the training rows held out to pick the best epoch (early stopping).
        patience: epochs without a better validation loss before stopping (0: no early stopping, no validation).
        global_clipnorm: clip the gradients' global norm (``None``: no clipping).
        lr_schedule: "none", or "cosine" (the rate anneals to 0 over ``epochs``).
        ensemble: networks trained from different seeds (weights and shuffling; the same validation rows) whose
            output layers' inputs are averaged: one network of ``ensemble`` parallel blocks (:func:`pack`).
    """

    hidden: tuple = (128, 64)
    activation: str = "relu"
    dropout: float = 0.1
    optimizer: str = "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
    epochs: int = 200
    batch_size: int = 64
    val_split: float = 0.2
    patience: int = 30
    global_clipnorm: float | None = None
    lr_schedule: str = "none"
    momentum: float = 0.9
    ensemble: int = 5

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


OUTPUT = {"regression": (None, "mse"), "binary": ("sigmoid", "bce"), "multiclass": ("softmax", "cce")}
LOSSES_BY_TASK = {"regression": ("mse", "mae", "huber"), "binary": ("bce",), "multiclass": ("cce",)}


class TableModel:
    """A :class:`gpunet.Sequential` with its :class:`~gpunet.tabular.TableTransform` (features) and
    :class:`~gpunet.tabular.TargetTransform` (target): raw rows in, original labels or values out.

    Attributes: ``model``, ``columns``, ``target``, ``notes`` (what ``train`` did to rows and columns).
    """

    def __init__(self, model, columns: TableTransform, target: TargetTransform):
        self.model, self.columns, self.target = model, columns, target
        self.notes: list[str] = []
        # the columns the training file wrote as European numbers (3,5; 1.589): its new rows are read so too
        self.european: list[str] = []
        self.interrupted = False  # train(): whether Ctrl-C ended it (the ensemble then holds the networks so far)
        self.histories: list = []  # train(): one History per network of the ensemble
        self.best_epochs: list = []  # train(): the epoch (from 1) whose weights each network kept, None without
        # early stopping

    # -- training ---------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, table, target: str, task: str | None = None, *, recipe: Recipe | None = None, loss=None,
              categorical=(), ignore=(), test_split: float = 0.0, device="cpu", dtype: str = "float32",
              seed: int = 0, verbose: int = 0, announce=None, option_names: dict | None = None, distributed=None):
        """Fit the transforms on the training rows and train a network with ``recipe``.

        Rows whose target is missing are dropped (noted). With ``test_split`` > 0 that share of the rows is held
        out (stratified by class) and returned for a report (a pandas ``table``'s rows keep their index). Returns
        ``(table_model, the first network's History, test_frame or None)``; ``table_model.notes`` says what was
        done. ``announce(table_model, n_train, n_val, n_test)`` is called once the network is built, before
        training (the command line prints its report there);
        ``option_names`` maps ``"val_split"``/``"test_split"``/``"loss"`` to the names used in error messages.
        ``distributed``: a :class:`gpunet.distributed.World` to train every network data-parallel over.
        """
        recipe = recipe or Recipe()
        names = _option_names(target, categorical, ignore, option_names)
        frame = as_frame(table)
        if target not in frame.columns:
            raise TableError(f"there is no target column {target!r}; columns: {list(frame.columns)}")
        notes = []
        whole = frame  # before any row is dropped or held out: the row numbers are decided on it
        index = getattr(table, "index", None)  # a pandas table's: the held-out rows keep theirs, to join back
        positions = np.arange(len(frame))  # each row's in ``table``
        present = TargetTransform.present(frame[target])
        if not present.any():
            raise TableError(f"the target column {target!r} is empty: no row has a target")
        if not present.all():
            notes.append(f"{int((~present).sum())} row(s) without a {target!r} value dropped")
            frame, positions = frame[present].reset_index(drop=True), positions[present]
        target_t = TargetTransform(target).fit(frame[target], task)
        notes += target_t.notes
        labels = target_t.labels(frame[target])
        strata = None if target_t.task == "regression" else labels
        test = None
        if test_split:
            kept, held = data_mod.split(len(frame), test_split, strata, seed, names["test_split"])
            test = frame.iloc[held].reset_index(drop=True)
            if index is not None and len(index) == len(whole):
                test.index = index[positions[held]]
            frame, labels = frame.iloc[kept].reset_index(drop=True), labels[kept]
            strata = None if strata is None else labels
        if target_t.task == "regression":  # standardise with the training rows only
            target_t.mean, target_t.sd = float(labels.mean()), float(labels.std()) or 1.0
        features = frame.drop(columns=[target])
        columns = TableTransform(categorical, ignore).fit(features, source=whole)
        X = columns.transform(features)
        Y = target_t.encode(labels)
        val = None
        if recipe.patience and recipe.val_split:
            fit_rows, val_rows = data_mod.split(len(X), recipe.val_split, strata, seed + 1, names["val_split"])
            val = (X[val_rows], Y[val_rows])
            X, Y = X[fit_rows], Y[fit_rows]
        tm = cls._train_members(columns, target_t, notes, X, Y, val, 0 if test is None else len(test), recipe=recipe,
                                loss=loss, device=device, dtype=dtype, seed=seed, verbose=verbose, announce=announce,
                                names=names, distributed=distributed)
        return tm, tm.histories[0], test

    @classmethod
    def _train_members(cls, columns, target_t, notes, X, Y, val, n_test, *, recipe, loss, device, dtype, seed, verbose,
                       announce, names, distributed=None):
        """Build and train the ensemble on ``(X, Y)`` (arrays, or an ArrayStream with ``Y`` None), early stopping on
        ``val``; returns the TableModel (its ``histories``, ``best_epochs``, ``interrupted``)."""
        out_act, default_loss = OUTPUT[target_t.task]
        loss = loss or default_loss
        if loss not in LOSSES_BY_TASK[target_t.task]:
            raise TableError(f"{names['loss']} {loss} does not fit a {target_t.task} task; use one of "
                             f"{list(LOSSES_BY_TASK[target_t.task])}")
        members = [build_model(len(columns.feature_names), target_t.n_outputs, out_act, recipe, device, dtype,
                               seed + 1000 * k) for k in range(recipe.ensemble)]
        tm = cls(members[0], columns, target_t)
        tm.notes = notes
        if announce is not None:
            announce(tm, len(X), 0 if val is None else len(val[0]) if isinstance(val, tuple) else len(val), n_test)
        for k, member in enumerate(members):
            history, stop = fit(member, X, Y, val, loss, recipe, target_t.task, verbose, distributed)
            tm.histories.append(history)
            tm.best_epochs.append(None if stop is None or stop.best_epoch is None else stop.best_epoch + 1)
            if history.interrupted:  # Ctrl-C: keep the networks trained so far (this one up to its last step)
                tm.interrupted, members = True, members[:k + 1]
                break
        if len(members) > 1:
            tm.model = pack(members)
        tm._attach_metadata()
        return tm

    @classmethod
    def train_file(cls, file, target: str, task: str | None = None, *, recipe: Recipe | None = None, loss=None,
                   categorical=(), ignore=(), test_split: float = 0.0, device="cpu", dtype: str = "float32",
                   seed: int = 0, verbose: int = 0, announce=None, option_names: dict | None = None, workdir=None,
                   sample_rows: int | None = None, distributed=None):
        """:meth:`train` for a table too big to load: a :class:`gpunet.data.TableFile` read chunk by chunk.

        1. The target column alone: which rows have a target, and the distinct labels.
        2. A sample of at most ``sample_rows`` (default :data:`SAMPLE_ROWS`) of those rows (all of them for smaller
           files; otherwise a random choice from ``seed``) is read; the target transform is fitted on it (plus one row of every label only
           seen outside it) and the column transform on its training rows (the test rows held out).
        3. The test and validation rows are split as :meth:`train` splits them (the labels of every row: 8 bytes a
           row), and every row with a target is transformed, chunk by chunk, into a memory-mapped ``(rows,
           features)`` matrix of ``dtype`` in a temporary folder (under ``workdir``, else the system's; removed
           at the end: disk, ``rows * features * 4`` bytes in float32).
        4. The ensemble trains from that file (:class:`gpunet.sources.ArrayStream`: the in-memory fit's exact
           permutation); the test rows are scored from it, in batches.

        For a file of at most ``sample_rows`` rows the result is what :meth:`train` gives for the loaded table. It
        trains in one process: a ``distributed`` world of more than one rank is refused (streamed data is not
        sharded across ranks yet).
        Returns ``(table_model, the first network's History, the test scores as from :meth:`score`, or None)``.
        """
        from . import sources

        sample_rows = sample_rows or SAMPLE_ROWS
        if distributed is not None and distributed.size > 1:
            raise TableError(f"a table read in chunks (over {data_mod.STREAM_BYTES >> 20} MiB, or --stream on) trains "
                             f"in one process; this job has {distributed.size} ranks (load it with --stream off, or "
                             f"run one process)")
        recipe = recipe or Recipe()
        names = _option_names(target, categorical, ignore, option_names)
        if target not in file.columns:
            raise TableError(f"there is no target column {target!r}; columns: {list(file.columns)}")
        what = file.file.name
        present, distinct, overflow = [], set(), False
        for _, chunk in file.chunks([target]):
            column = chunk[target]
            present.append(TargetTransform.present(column))
            if not overflow:
                distinct.update(v for v in map(canonical_label, column.dropna().unique()) if v is not None)
                overflow = len(distinct) > 10_000  # a regression target: the sample tells enough
        present = np.concatenate(present)
        if not present.any():
            raise TableError(f"the target column {target!r} is empty: no row has a target")
        notes = []  # the file's own notes (delimiter, decimal commas) come first, once every column has been read
        if not present.all():
            notes.append(f"{int((~present).sum())} row(s) without a {target!r} value dropped")
        rows = np.flatnonzero(present)  # the file rows that are trained on, in order
        m = rows.size
        sample = np.arange(m) if m <= sample_rows else np.sort(
            np.random.default_rng(seed).choice(m, sample_rows, replace=False))
        sampled = file.rows(rows[sample])
        series = sampled[target]
        unseen = [] if overflow else sorted(distinct - {canonical_label(v) for v in series.unique()})
        if unseen:
            import pandas as pd

            series = pd.concat([series.astype(object), pd.Series(unseen, dtype=object)], ignore_index=True)
            notes.append(f"the transforms are fitted on a sample of {len(sample)} rows; {len(unseen)} target "
                         f"label(s) only seen outside it are known too")
        elif len(sample) < m:
            notes.append(f"the transforms are fitted on a random sample of {len(sample)} of the {m} rows")
        target_t = TargetTransform(target).fit(series, task)
        notes += target_t.notes
        labels = np.concatenate([target_t.labels(chunk[target][present[start:start + len(chunk)]], what)
                                 for start, chunk in file.chunks([target])])
        strata = None if target_t.task == "regression" else labels
        held = None
        kept = np.arange(m)
        if test_split:
            kept, held = data_mod.split(m, test_split, strata, seed, names["test_split"])
        if target_t.task == "regression":
            target_t.mean, target_t.sd = float(labels[kept].mean()), float(labels[kept].std()) or 1.0
        train_sample = np.flatnonzero(np.isin(sample, kept, assume_unique=True))
        features = sampled.iloc[train_sample].drop(columns=[target]).reset_index(drop=True)
        columns = TableTransform(categorical, ignore).fit(features, source=sampled.set_axis(rows[sample]))
        Y = target_t.encode(labels)
        with tempfile.TemporaryDirectory(prefix="gpunet-stream-", dir=workdir) as folder:
            X = np.lib.format.open_memmap(Path(folder) / "features.npy", mode="w+", dtype=dtype,
                                          shape=(m, len(columns.feature_names)))
            done, seen = 0, []
            for start, chunk in file.chunks(columns.inputs + [target]):
                kept_rows = present[start:start + len(chunk)]
                part = chunk[kept_rows]
                X[done:done + len(part)] = columns.transform(part.drop(columns=[target]), what, expected=(target,),
                                                             rows=start + np.flatnonzero(kept_rows), training=True)
                seen += [n for n in columns.notes if n not in seen]
                done += len(part)
            X.flush()
            if seen and len(sample) < m:
                notes += [f"rows outside the sample: {n}" for n in seen[:5]]
            notes = file.notes + notes
            stream = sources.ArrayStream(X, Y)
            val = None
            fit_rows = kept
            if recipe.patience and recipe.val_split:
                train_rows, val_rows = data_mod.split(len(kept), recipe.val_split,
                                                      None if strata is None else labels[kept], seed + 1,
                                                      names["val_split"])
                fit_rows, val = kept[train_rows], stream.subset(kept[val_rows])
            tm = cls._train_members(columns, target_t, notes, stream.subset(fit_rows), None, val,
                                    0 if held is None else len(held), recipe=recipe, loss=loss, device=device,
                                    dtype=dtype, seed=seed, verbose=verbose, announce=announce, names=names)
            scores = None
            if held is not None and len(held) and not tm.interrupted:
                from .backend import to_numpy

                pred, _ = target_t.decode(to_numpy(tm.model.predict(sources.ArrayStream(X).subset(held))))
                scores = tm._scores(labels[held], pred, 0)
            del X, stream, val
        return tm, tm.histories[0], scores

    # -- inference --------------------------------------------------------------------------------------------
    def outputs(self, table, what: str = "the table", rows=None):
        """``(predictions, probabilities or None)`` for the rows of ``table``: values on the target's scale, or
        class indices with ``(n, n_classes)`` probabilities. ``rows``: as for :meth:`TableTransform.transform`."""
        from .backend import to_numpy

        X = self.columns.transform(table, what, expected=(self.target.name,), rows=rows)
        return self.target.decode(to_numpy(self.model.predict(X)))

    def predict(self, table, what: str = "the table") -> np.ndarray:
        """``(n,)`` predictions: class names (object array) or numbers, one per row of ``table``."""
        pred, _ = self.outputs(table, what)
        return pred if self.target.task == "regression" else np.array(self.target.classes, dtype=object)[pred]

    def predict_proba(self, table, what: str = "the table") -> np.ndarray:
        """``(n, n_classes)`` class probabilities, columns in the order of ``target.classes``."""
        if self.target.task == "regression":
            raise TableError("a regression model has no class probabilities")
        return self.outputs(table, what)[1]

    def score(self, table, what: str = "the table") -> dict:
        """Metrics on the rows of ``table`` that have a target (rows without one are dropped and noted):
        ``{"rows", "r2", "mae", "rmse"}`` or ``{"rows", "accuracy", "confusion" ((k, k) counts, rows: true)}``;
        also ``"dropped"`` (rows without a target)."""
        frame = as_frame(table, what)
        name = self.target.name
        if name not in frame.columns:
            raise TableError(f"{what} has no target column {name!r} (the model's); columns: {list(frame.columns)}")
        present = TargetTransform.present(frame[name])
        if not present.any():
            raise TableError(f"{what}: the target column {name!r} is empty")
        frame = frame[present].reset_index(drop=True)
        y = self.target.labels(frame[name], what)
        pred, _ = self.outputs(frame, what, rows=np.flatnonzero(present))
        return self._scores(y, pred, int((~present).sum()))

    def score_file(self, file, target: str | None = None) -> dict:
        """:meth:`score` for a :class:`gpunet.data.TableFile` read chunk by chunk (memory: a chunk; regression
        sums merged with Chan's formula, classification counts in the confusion matrix); ``target``: the file's
        name for the model's target column (default: the model's)."""
        name, what = self.target.name, file.file.name
        column = target or name
        if column not in file.columns:
            raise TableError(f"{what} has no target column {column!r} (the model's); columns: {list(file.columns)}")
        k = len(self.target.classes)
        confusion = np.zeros((k, k), dtype=np.int64)
        n, mean, m2, ss_res, abs_res, dropped, notes = 0, 0.0, 0.0, 0.0, 0.0, 0, []
        for start, chunk in file.chunks():
            if column != name:
                chunk = chunk.rename(columns={column: name})
            present = TargetTransform.present(chunk[name])
            dropped += int((~present).sum())
            chunk = chunk[present].reset_index(drop=True)
            if not len(chunk):
                continue
            y = self.target.labels(chunk[name], what)
            pred, _ = self.outputs(chunk, what, rows=start + np.flatnonzero(present))
            notes += [note for note in self.columns.notes if note not in notes]
            if self.target.task == "regression":
                count, chunk_mean = len(y), float(y.mean())
                delta = chunk_mean - mean
                total = n + count
                m2 += float(((y - chunk_mean) ** 2).sum()) + delta * delta * n * count / total
                mean += delta * count / total
                n = total
                ss_res += float(((y - pred) ** 2).sum())
                abs_res += float(np.abs(y - pred).sum())
            else:
                np.add.at(confusion, (y, pred), 1)
                n += len(y)
        if n == 0:
            raise TableError(f"{what}: the target column {column!r} is empty")
        self.columns.notes = notes
        result = {"rows": n, "dropped": dropped}
        if self.target.task == "regression":
            r2 = r2_from(ss_res, m2, n)
            return result | {"r2": r2, "mae": abs_res / n, "rmse": math.sqrt(ss_res / n)}
        return result | {"accuracy": float(np.trace(confusion) / n), "confusion": confusion}

    def _scores(self, y, pred, dropped: int) -> dict:
        """:meth:`score`'s dict from the true labels or values ``y`` and the predictions ``pred``."""
        result = {"rows": len(y), "dropped": dropped}
        if self.target.task == "regression":
            return result | regression_scores(y, pred)
        k = len(self.target.classes)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (y, pred), 1)
        return result | {"accuracy": float(np.mean(pred == y)), "confusion": confusion}

    # -- persistence ------------------------------------------------------------------------------------------
    def _attach_metadata(self) -> None:
        self.model.metadata = {"cli": {"version": METADATA_VERSION, "task": self.target.task,
                                       "classes": self.target.classes, "target": self.target.name,
                                       "columns": self.columns.to_json(), "target_transform": self.target.to_json(),
                                       "european": list(self.european)}}

    def save(self, path) -> None:
        """One safetensors file: the network and, in its metadata, both transforms (``gpunet predict`` reads it)."""
        self._attach_metadata()
        self.model.save(path)

    @classmethod
    def from_model(cls, model) -> "TableModel":
        """Wrap a loaded :class:`gpunet.Sequential` whose metadata holds the transforms (saved by ``gpunet train``
        or :meth:`save`; files of gpunet 0.1's first command line, with ``x_scaler``, are read too)."""
        meta = (getattr(model, "metadata", None) or {}).get("cli")
        if not isinstance(meta, dict):
            raise TableError("this model was not trained by `gpunet train` or TableModel (its file lacks the column "
                             "transform); use the Python API (gpunet.load) instead")
        if "columns" in meta:
            columns = TableTransform.from_json(meta["columns"])
            target = TargetTransform.from_json(meta["target_transform"])
        else:  # version 1: numeric features standardised, the target scaled for regression
            scaler = meta["x_scaler"]
            columns = TableTransform.from_standardizer(meta["features"], scaler["mean"], scaler["scale"])
            target = TargetTransform(meta.get("target", "target"))
            target.task, target.classes = meta["task"], list(meta.get("classes") or [])
            if meta["task"] == "regression":
                y_scaler = meta["y_scaler"]
                target.mean, target.sd = float(y_scaler["mean"][0]), float(y_scaler["scale"][0])
            elif not target.classes:
                target.classes = [str(i) for i in range(max(model.n_outputs, 2))]
        if len(columns.feature_names) != model.n_inputs:
            raise TableError(f"the saved column transform gives {len(columns.feature_names)} features but the network "
                             f"takes {model.n_inputs}")
        if target.n_outputs != model.n_outputs:  # (a first-version file with several regression targets)
            what = {"regression": "one value", "binary": "one probability"}.get(target.task,
                                                                                 f"{target.n_outputs} probabilities")
            raise TableError(f"the network gives {model.n_outputs} outputs, but its {target.task} target "
                             f"{target.name!r} decodes {what}: `gpunet predict` and `gpunet export` cannot use it "
                             f"(gpunet.load and the bare network can)")
        table_model = cls(model, columns, target)
        table_model.european = [str(c) for c in meta.get("european", [])]
        return table_model

    @classmethod
    def load(cls, path, device="cpu") -> "TableModel":
        import gpunet as gn

        return cls.from_model(gn.load(path, device=device))

    def __repr__(self) -> str:
        return f"TableModel({self.target!r}, {self.columns!r}, {self.model!r})"


def build_model(n_in: int, n_out: int, out_act, recipe: Recipe, device, dtype, seed):
    import gpunet as gn

    sizes = [n_in, *recipe.hidden, n_out]
    layers = [gn.Dense(a, b, recipe.activation, dropout=recipe.dropout) for a, b in zip(sizes[:-2], sizes[1:-1])]
    return gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], out_act)], device=device, dtype=dtype, seed=seed)


def pack(members):
    """One :class:`gpunet.Sequential` computing the ensemble of ``members`` (same sizes and activations): hidden
    layers side by side (the first layer's weights concatenated, later ones block-diagonal), and an output layer
    whose pre-activation is the members' mean, ``act(mean_k(h_k @ W_k + b_k))``: exactly the mean prediction for a
    linear output, the mean logit (a geometric mean of probabilities) for sigmoid and softmax. For prediction: the
    zero blocks would not stay zero if the packed network were trained further."""
    import gpunet as gn

    first, k = members[0], len(members)
    weights = [m.get_weights() for m in members]
    layers, packed = [], []
    last = len(first.layers) - 1
    for i, layer in enumerate(first.layers):
        Ws = [w[2 * i] for w in weights]
        bs = [w[2 * i + 1] for w in weights]
        if i == last:
            W, b = np.vstack(Ws) / k, np.mean(bs, axis=0)
        elif i == 0:
            W, b = np.hstack(Ws), np.concatenate(bs)
        else:
            W = np.zeros((k * Ws[0].shape[0], k * Ws[0].shape[1]), dtype=Ws[0].dtype)
            for j, w in enumerate(Ws):
                W[j * w.shape[0]:(j + 1) * w.shape[0], j * w.shape[1]:(j + 1) * w.shape[1]] = w
            b = np.concatenate(bs)
        layers.append(gn.Dense(W.shape[0], W.shape[1], layer.activation))
        packed += [W, b]
    model = gn.Sequential(layers, device=first.backend.xp if first.backend.name not in ("numpy", "cupy") else
                          first.device, dtype=first.dtype, seed=first.seed)
    model.set_weights(packed)
    model.ensemble_members = k  # fit refuses it: its zero blocks would not stay zero
    model.loss, model.metrics = first.loss, first.metrics
    return model


def _option_names(target: str, categorical, ignore, given: dict | None) -> dict:
    """The names of the options in messages (``given``: the command line's), once the target is known to be in
    neither ``categorical`` nor ``ignore``."""
    names = {"val_split": "val_split", "test_split": "test_split", "loss": "loss", "categorical": "categorical",
             "ignore": "ignore", **(given or {})}
    for option, listed in (("categorical", categorical), ("ignore", ignore)):
        if target in [str(c) for c in listed]:
            raise TableError(f"{target!r} is the target column; it cannot also be in {names[option]}")
    return names


def make_optimizer(recipe: Recipe):
    import gpunet as gn

    cls = type(gn.optim.get(recipe.optimizer))
    kwargs = {"lr": recipe.lr, "global_clipnorm": recipe.global_clipnorm}
    if recipe.weight_decay:
        kwargs["weight_decay"] = recipe.weight_decay
    if cls.__name__ == "SGD":
        kwargs["momentum"] = recipe.momentum
    return cls(**kwargs)


def fit(model, X, Y, val, loss: str, recipe: Recipe, task: str, verbose: int = 0, distributed=None):
    """Train ``model`` on ``(X, Y)`` with ``recipe`` (early stopping on ``val`` when given); returns ``(History,
    the EarlyStopping callback or None)``."""
    import gpunet as gn

    callbacks = []
    stop = None
    if val is not None:
        stop = gn.callbacks.EarlyStopping("val_loss", patience=recipe.patience, restore_best_weights=True)
        callbacks.append(stop)
    if recipe.lr_schedule == "cosine":
        callbacks.append(gn.callbacks.CosineAnnealingLR(T_max=recipe.epochs))
    metric = "r2" if task == "regression" else "accuracy"
    # X: arrays, or a gpunet.sources.ArrayStream that carries the targets (Y is then None)
    history = model.fit(X, Y, loss=loss, optimizer=make_optimizer(recipe), epochs=recipe.epochs,
                        batch_size=min(recipe.batch_size, len(X)), validation_data=val, metrics=[metric],
                        verbose=verbose, callbacks=callbacks, distributed=distributed)
    return history, stop


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict:
    """``{"r2", "mae", "rmse"}`` as scikit-learn's ``r2_score`` (NaN for fewer than 2 rows), ``mean_absolute_error``,
    root of ``mean_squared_error``."""
    residual = y - pred
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float((residual ** 2).sum())
    return {"r2": r2_from(ss_res, ss_tot, len(y)), "mae": float(np.abs(residual).mean()),
            "rmse": math.sqrt(float((residual ** 2).mean()))}


def r2_from(ss_res: float, ss_tot: float, n: int) -> float:
    """scikit-learn's ``r2_score`` from the sums of squares: NaN below 2 rows, 1 or 0 for a constant target."""
    if n < 2:
        return math.nan
    return 1 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
