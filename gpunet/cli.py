"""The ``gpunet`` command (also ``python -m gpunet``): train, evaluate, predict, export, bench, info.

    gpunet train                                   # digits, best device found, progress, test report
    gpunet train --dataset csv:penguins.csv:species --save penguins.safetensors
    gpunet evaluate penguins.safetensors --dataset csv:new.csv
    gpunet predict penguins.safetensors --csv new.csv --output predictions.csv
    gpunet export penguins.safetensors penguins.onnx   # for onnxruntime: raw columns in, labels/values out
    gpunet bench --threads 2

Raw tables work as they are: what each column becomes is decided on the training rows by
:class:`gpunet.tabular.TableTransform` (listed in the report) and saved with the model, so ``evaluate`` and
``predict`` match columns by name and apply the same transform. CSV/Parquet files larger than 256 MiB
(``gpunet.data.STREAM_BYTES``; ``--stream on|off`` decides instead) are never loaded whole: ``train`` fits the
transforms on a sample and trains from a transformed memory-mapped copy (:meth:`gpunet.TableModel.train_file`),
``evaluate`` and ``predict`` read them chunk by chunk. Wrong options, missing files and malformed data end
with one line on stderr (``gpunet <command>: error: ...``) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import os
import sys
import time
import warnings

import numpy as np

from . import data as data_mod
from . import distributed
from . import recipe as recipe_mod
from .tabular import TASKS, TableError

_DEFAULT = recipe_mod.Recipe()


_OPTION_NAMES = {"val_split": "--val-split", "test_split": "--test-split", "loss": "--loss",
                 "categorical": "--categorical", "ignore": "--ignore"}  # TableModel's messages in command-line words


def _add_device_and_stream(command) -> None:
    """The options train, evaluate and predict share: where to compute and whether to stream the file."""
    command.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    command.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                         help="read CSV/Parquet files chunk by chunk instead of loading them (auto: files over "
                              f"{data_mod.STREAM_BYTES >> 20} MiB)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="gpunet", description="Dense neural networks on NumPy or CUDA.")
    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train on a data set and report on its held-out test rows",
        description="Train a network on a bundled data set or a CSV/Parquet table, report on held-out test rows, "
                    "and optionally save it. Raw columns are handled as they are: numbers standardised (missing "
                    "cells filled, with an indicator), text one-hot, dates expanded, ID-like columns left out; "
                    "the report lists what was done to each column.")
    train.add_argument("--dataset", default="digits",
                       help="digits | iris | wine | breast_cancer | diabetes | csv:PATH[:TARGET] | "
                            "parquet:PATH[:TARGET] (default digits; without TARGET, --target or the last column)")
    train.add_argument("--target", help="the target column (instead of ...:TARGET in --dataset)")
    train.add_argument("--delimiter", help="CSV delimiter (default: detected among , ; tab |); \\t for tab")
    train.add_argument("--task", choices=TASKS, help="override the task inferred from the target column")
    train.add_argument("--categorical", default="", metavar="COLS",
                       help="comma-separated columns to one-hot whatever they hold (e.g. integer codes)")
    train.add_argument("--ignore", default="", metavar="COLS", help="comma-separated columns to leave out")
    train.add_argument("--layers", help=f"hidden layer sizes, comma-separated (default "
                                        f"{','.join(map(str, _DEFAULT.hidden))})")
    train.add_argument("--activation", help=f"hidden activation (default {_DEFAULT.activation})")
    train.add_argument("--dropout", type=float, help=f"dropout after each hidden layer (default {_DEFAULT.dropout:g})")
    train.add_argument("--global-clipnorm", type=float, help="clip the gradients' global L2 norm to this value")
    train.add_argument("--loss", help="default: cce (multi-class), bce (binary), mse (regression)")
    train.add_argument("--optimizer", help=f"sgd | adam | adamw | rmsprop | adagrad (default {_DEFAULT.optimizer})")
    train.add_argument("--lr", type=float, help=f"learning rate (default {_DEFAULT.lr:g})")
    train.add_argument("--weight-decay", type=float, help=f"weight decay (default {_DEFAULT.weight_decay:g})")
    train.add_argument("--momentum", type=float, help=f"SGD momentum (default {_DEFAULT.momentum:g})")
    train.add_argument("--ensemble", type=int, metavar="K",
                       help=f"train K networks from different seeds and average them (default {_DEFAULT.ensemble})")
    train.add_argument("--lr-schedule", choices=("none", "cosine"),
                       help=f"learning-rate schedule over --epochs (default {_DEFAULT.lr_schedule})")
    train.add_argument("--epochs", type=int, help=f"the most epochs (default {_DEFAULT.epochs})")
    train.add_argument("--batch-size", type=int, help=f"rows per step (default {_DEFAULT.batch_size})")
    _add_device_and_stream(train)
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    train.add_argument("--seed", type=int, default=0, help="seeds the splits, the weights and the shuffling")
    train.add_argument("--test-split", type=float, default=0.25,
                       help="fraction held out for the report (default 0.25; 0 = train on every row)")
    train.add_argument("--val-split", type=float,
                       help=f"fraction of the training rows that picks the best epoch (default {_DEFAULT.val_split:g})")
    train.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                       help=f"stop after PATIENCE epochs without a better validation loss, keeping the best weights "
                            f"(0 = off, no validation rows; default {_DEFAULT.patience})")
    train.add_argument("--save", metavar="PATH", help="save the trained model with its column transform (safetensors)")
    train.add_argument("--plot", metavar="PNG", help="write training/validation curves (needs matplotlib)")
    train.add_argument("--quiet", action="store_true", help="no progress bar; only the report")

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model on a labelled data set (all rows)",
        description="Score a model saved by `gpunet train --save` on every row of a labelled data set: columns are "
                    "matched by name and transformed as in training; rows without a target are dropped. Reports "
                    "R2/MAE/RMSE or accuracy and the confusion matrix.")
    evaluate.add_argument("model", help="a .safetensors file written by gpunet train --save")
    evaluate.add_argument("--dataset", required=True,
                          help="a bundled name, csv:PATH[:TARGET] or parquet:PATH[:TARGET] (default TARGET: the "
                               "model's target column name)")
    evaluate.add_argument("--delimiter", help="CSV delimiter (default: detected)")
    _add_device_and_stream(evaluate)

    predict = commands.add_parser(
        "predict", help="predict the rows of a CSV or Parquet file with a saved model",
        description="Predict every row of a table with a model saved by `gpunet train --save`. Columns are matched "
                    "by name (extra columns are ignored, missing ones are an error); the output has one row per "
                    "input row: the columns left out in training as IDs (a different value on every row) or row "
                    "numbers (when present), the prediction (the "
                    "original class label, or the value), and for classification one probability per class.")
    predict.add_argument("model", help="a .safetensors file written by gpunet train --save")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", metavar="PATH", help="CSV with a header naming the model's feature columns")
    source.add_argument("--parquet", metavar="PATH", help="Parquet file with the model's feature columns")
    predict.add_argument("--delimiter", help="CSV delimiter (default: detected)")
    predict.add_argument("--output", help="write predictions here (default: standard output)")
    _add_device_and_stream(predict)

    _add_export_parser(commands)

    # listed for --help only: main() hands `gpunet bench ...` to gpunet.bench before parsing
    commands.add_parser("bench", help="compare devices: forward/backward/step/epoch timings (gpunet bench --help)",
                        description="Device comparison; its options: gpunet bench --help")
    commands.add_parser("info", help="versions, and whether CUDA is usable here",
                        description="Print the versions of gpunet, NumPy and Python, and whether CUDA is usable.")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are the benchmark's own (argparse would claim the dashes)
        from . import bench

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    args.world = None
    try:
        if distributed.launched_size() > 1:  # under mpiexec/srun: train data-parallel; rank 0 reports and saves
            args.world = distributed.init()
            if args.world.rank != 0:
                if args.command != "train":
                    return 0  # evaluate/predict/info: rank 0 alone does them
                _silence_stdout()
        commands = {"train": train, "evaluate": evaluate, "predict": predict, "export": export, "info": info}
        return commands[args.command](args)
    except FloatingPointError as exc:  # gpunet.NonFiniteLossError: a diverging fit (every rank raises it)
        first = str(exc).split(". The model keeps")[0]
        return _fail(args, f"{first}; lower --lr (it was {_lr(args):g}) or set --global-clipnorm", 2)
    except OSError as exc:  # "[Errno 2] No such file or directory: 'm.safetensors'" -> "m.safetensors: no such ..."
        where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name)
        where = f"{where}: " if where else ""
        return _fail(args, f"{where}{exc.strerror.lower()}" if exc.strerror else str(exc), 2)
    except (ValueError, TypeError, ImportError) as exc:  # DataError and TableError are ValueErrors
        return _fail(args, str(exc), 2)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)


def _fail(args, message: str, status: int) -> int:
    """``message`` as one line on stderr, and ``status``; in a data-parallel job every failing rank says it (naming
    itself) and the whole job ends, since the other ranks may be waiting for it."""
    world = args.world
    several = world is not None and world.size > 1
    line = "gpunet: interrupted" if status == 130 else f"gpunet {args.command}: error: {message}"
    print(line + (f" (rank {world.rank} of {world.size})" if several else ""), file=sys.stderr, flush=True)
    if several:
        world.abort(status)
    return status


def _lr(args) -> float:
    return args.lr if getattr(args, "lr", None) is not None else _DEFAULT.lr


# -- output that survives a closed pipe (gpunet train | head) -------------------------------------------------------
def _say(text: str = "") -> None:
    """Print a line of the report; once standard output is a closed pipe, later lines go nowhere (the run goes on,
    and the model is still saved)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would raise again
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
    sys.stdout = open(os.devnull, "w")


def _note(text: str) -> None:
    """A note about the data for a command whose standard output is data (predict): on standard error."""
    print(f"note: {text}", file=sys.stderr)


# -- train -------------------------------------------------------------------------------------------------------
def _recipe(args) -> recipe_mod.Recipe:
    """The recipe from the options, each checked in command-line words."""
    def check(option, value, ok, expected):
        if value is not None and not ok(value):
            raise ValueError(f"{option} must be {expected}; received {value}")

    check("--epochs", args.epochs, lambda v: v > 0, "a positive integer")
    check("--batch-size", args.batch_size, lambda v: v > 0, "a positive integer")
    check("--lr", args.lr, lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0")
    check("--weight-decay", args.weight_decay, lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0")
    check("--momentum", args.momentum, lambda v: 0 <= v < 1, "in [0, 1)")
    check("--dropout", args.dropout, lambda v: 0 <= v < 1, "in [0, 1)")
    check("--global-clipnorm", args.global_clipnorm, lambda v: np.isfinite(v) and v > 0, "a finite number > 0")
    check("--early-stopping", args.early_stopping, lambda v: v >= 0, "an integer >= 0 (0 = off)")
    check("--ensemble", args.ensemble, lambda v: v > 0, "a positive integer")
    check("--test-split", args.test_split, lambda v: 0 <= v < 1, "in [0, 1)")
    check("--val-split", args.val_split, lambda v: 0 <= v < 1, "in [0, 1)")
    import gpunet as gn

    for option, value, registry in (("--optimizer", args.optimizer, gn.optim.OPTIMIZERS),
                                    ("--activation", args.activation, gn.activations.ACTIVATIONS)):
        if value is not None and value.strip().lower() not in registry:
            raise ValueError(f"unknown {option.lstrip('-')} {value!r}; expected one of {sorted(registry)}")
    return _DEFAULT.replace(
        hidden=None if args.layers is None else tuple(_layer_sizes(args.layers)),
        activation=args.activation and args.activation.strip().lower(), dropout=args.dropout,
        optimizer=args.optimizer and args.optimizer.strip().lower(), lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, epochs=args.epochs, batch_size=args.batch_size, val_split=args.val_split,
        patience=args.early_stopping, global_clipnorm=args.global_clipnorm, lr_schedule=args.lr_schedule,
        ensemble=args.ensemble)


def _check_destinations(args) -> None:
    """Refuse, before any training, a --save or --plot that could only fail after it."""
    for option, path in (("--save", args.save), ("--plot", args.plot)):
        if path:
            _check_writable(option, path)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise ImportError("--plot needs matplotlib: pip install 'gpunet[plot]' (or leave out --plot)")


def _check_writable(option: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OSError(f"{option} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise OSError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OSError(f"{option} {path}: the folder {folder} is not writable")


def _columns_option(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _verbosity(quiet: bool) -> int:
    """fit's ``verbose``: none with --quiet, a progress bar on a terminal, else a line per epoch (a log file or a
    pipe would get every redraw of the bar)."""
    return 0 if quiet else 1 if sys.stdout.isatty() else 2


def _train_file(file, target, args, recipe, quiet, announce):
    return recipe_mod.TableModel.train_file(
        file, target, args.task, recipe=recipe, loss=args.loss,
        categorical=_columns_option(args.categorical), ignore=_columns_option(args.ignore),
        test_split=args.test_split, device=args.device, dtype=args.dtype, seed=args.seed,
        verbose=_verbosity(quiet), announce=announce, distributed=args.world,
        option_names=_OPTION_NAMES)


def _train_table(table, target, args, recipe, quiet, announce):
    return recipe_mod.TableModel.train(
        table.frame, target, args.task, recipe=recipe, loss=args.loss,
        categorical=_columns_option(args.categorical), ignore=_columns_option(args.ignore),
        test_split=args.test_split, device=args.device, dtype=args.dtype, seed=args.seed,
        verbose=_verbosity(quiet), announce=announce, distributed=args.world,
        option_names=_OPTION_NAMES)


def _table_file(spec: str, args, european=()):
    """A :class:`gpunet.data.TableFile` when ``spec`` names a CSV/Parquet file that streams (``--stream``), else
    None. ``european``: the columns a model's training file wrote as European numbers."""
    parsed = data_mod.table_spec(spec)
    if parsed is None or not data_mod.should_stream(parsed[1], args.stream):
        return None
    kind, path, target = parsed
    file = data_mod.TableFile(path, kind, _delimiter(args.delimiter), european)
    file.target = target
    return file


def train(args) -> int:
    recipe = _recipe(args)
    _check_destinations(args)
    file = _table_file(args.dataset, args)
    if file is not None:
        table = data_mod.Table(file.name, None, file.target, file.notes)
        rows, columns = file.n_rows, file.columns
    else:
        table = data_mod.load(args.dataset, _delimiter(args.delimiter))
        rows, columns = len(table.frame), list(table.frame.columns)
    target = args.target or table.target
    notes = [] if file is not None else list(table.notes)  # a file's notes come with the model's (tm.notes)
    if target is None:
        target = str(columns[-1])
        notes.append(f"target: the last column, {target!r} (name another with --target or csv:PATH:COLUMN)")
    quiet = args.quiet
    if not quiet:
        _say(f"{table.name}: {rows} rows, {len(columns)} columns" + (" (streamed from the file)" if file else ""))

    def announce(tm, n_train, n_val, n_test):
        model = tm.model
        for line in notes + tm.notes:
            _say(f"note: {line}")
        _say(tm.target.describe())
        _say(f"columns -> {len(tm.columns.feature_names)} features:")
        for line in tm.columns.describe():
            _say(f"  {line}")
        sizes = [model.n_inputs] + [layer.out_features for layer in model.layers]
        _say(f"rows: {n_train} train / {n_val} validation / {n_test} test")
        _say(f"model: {' -> '.join(map(str, sizes))}, {model.layers[0].activation.name}/"
             f"{model.layers[-1].activation.name}, {args.loss or recipe_mod.OUTPUT[tm.target.task][1]}, "
             f"{recipe_mod.make_optimizer(recipe)!r}, on {model.device} ({model.backend.name})")

    start = time.perf_counter()
    with warnings.catch_warnings():  # an interrupt is reported below, in one line
        warnings.filterwarnings("ignore", message="Training interrupted by user")
        if file is not None:  # (its test rows are scored from the transformed file before it is removed)
            tm, history, test_scores = _train_file(file, target, args, recipe, quiet, announce)
            test = None
        else:
            tm, history, test = _train_table(table, target, args, recipe, quiet, announce)
    seconds = time.perf_counter() - start
    epochs = ", ".join(str(len(h.epoch)) for h in tm.histories)
    best = ", ".join(str(b) for b in tm.best_epochs if b is not None)
    networks = f"{len(tm.histories)} networks, " if len(tm.histories) > 1 else ""
    _say(f"trained {networks}{epochs} epoch(s) in {seconds:.2f} s on {tm.model.device}"
         + (f" (best validation epoch{'s' if len(tm.best_epochs) > 1 else ''} {best} kept)" if best else ""))
    if tm.interrupted and distributed.is_leader():  # Ctrl-C: training ended cleanly, with what it had so far
        print(f"gpunet train: interrupted; the model keeps the {len(tm.histories)} network(s) trained so far, the "
              f"last one up to its last finished step" + (f", saving it to {args.save}" if args.save else ""),
              file=sys.stderr)
    if file is None:
        test_scores = tm.score(test, "test") if test is not None and len(test) else None
    if test_scores is not None:
        _say(_report_scores(tm, test_scores, "test"))
    tm.european = file.european if file is not None else table.european  # new rows are read as training's were
    if args.save:
        tm.save(args.save)
        _say(f"saved {args.save}")
    if tm.interrupted:
        return 130
    if args.plot:
        from .plotting import plot_history

        sizes = [tm.model.n_inputs] + [layer.out_features for layer in tm.model.layers]
        plot_history(history, args.plot, title=f"{table.name}: {' -> '.join(map(str, sizes))} on {tm.model.device}")
        _say(f"wrote {args.plot}")
    return 0


def _delimiter(text: str | None) -> str | None:
    if text is None:
        return None
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(text, text)


def _layer_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated positive integers, e.g. 128,64; received {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise ValueError(f"--layers must be positive integers; received {text!r}")
    return sizes


def _report(tm, frame, label: str) -> str:
    """The scores of ``tm`` on the rows of ``frame``, with the confusion matrix for classification."""
    return _report_scores(tm, tm.score(frame, label), label)


def _report_scores(tm, scores: dict, label: str) -> str:
    """Lines of :meth:`gpunet.TableModel.score`'s ``scores``, with the confusion matrix for classification."""
    lines = [f"note: {n}" for n in _transform_notes(tm)]
    if scores["dropped"]:
        lines.append(f"note: {scores['dropped']} row(s) without a {tm.target.name!r} value left out")
    if tm.target.task == "regression":
        r2 = "n/a (fewer than 2 rows)" if math.isnan(scores["r2"]) else f"{scores['r2']:.4f}"
        lines.append(f"{label}: R2 {r2}, MAE {scores['mae']:.4g}, RMSE {scores['rmse']:.4g} ({scores['rows']} rows)")
        return "\n".join(lines)
    matrix, classes = scores["confusion"], tm.target.classes
    correct = int(np.trace(matrix))
    lines.append(f"{label}: accuracy {scores['accuracy']:.4f} ({correct}/{scores['rows']} rows)")
    width = max(5, max(len(c) for c in classes) + 1, len(str(matrix.max())) + 1)
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + "".join(f"{c:>{width}}" for c in classes))
    for c, row in zip(classes, matrix):
        lines.append(f"{c:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _transform_notes(tm) -> list[str]:
    return list(tm.columns.notes)


# -- evaluate / predict --------------------------------------------------------------------------------------------
def _load(path: str, device):
    return recipe_mod.TableModel.load(path, device=device)


def evaluate(args) -> int:
    tm = _load(args.model, args.device)
    file = _table_file(args.dataset, args, tm.european)
    if file is not None:
        scores = tm.score_file(file, file.target)
        _say(f"{args.model} on {tm.model.device}")
        for note in file.notes:
            _say(f"note: {note}")
        _say(_report_scores(tm, scores, file.name))
        return 0
    table = data_mod.load(args.dataset, _delimiter(args.delimiter), tm.european)
    frame = table.frame
    name = tm.target.name
    if table.target is not None and table.target != name:  # the file names the model's target differently
        if table.target not in frame.columns:
            raise TableError(f"{args.dataset} has no column {table.target!r}; columns: {list(frame.columns)}")
        if name in frame.columns:
            raise TableError(f"{args.dataset} has both {table.target!r} and the model's target column {name!r}; "
                             f"name the target column {name!r} or drop the other")
        frame = frame.rename(columns={table.target: name})
    _say(f"{args.model} on {tm.model.device}")
    for note in table.notes:
        _say(f"note: {note}")
    _say(_report(tm, frame, table.name))
    return 0


def predict(args) -> int:
    tm = _load(args.model, args.device)
    if args.output:
        _check_writable("--output", args.output)
    path, kind = (args.csv, "csv") if args.csv else (args.parquet, "parquet")
    if data_mod.should_stream(path, args.stream):  # chunk by chunk, each written as soon as it is predicted
        file = data_mod.TableFile(path, kind, _delimiter(args.delimiter), tm.european)
        chunks = file.chunks()
    else:
        file, (frame, notes) = None, data_mod.read_table(path, kind, _delimiter(args.delimiter), tm.european)
        chunks = iter([(0, frame)])
    ids = None
    target = tm.target.name
    count, seen = 0, []
    with _predictions_out(args.output) as out:
        for start, frame in chunks:
            pred, proba = tm.outputs(frame, path, range(start, start + len(frame)))
            seen += [note for note in _transform_notes(tm) if note not in seen]
            if ids is None:
                ids = [c["name"] for c in tm.columns.columns if c["kind"] == "left out" and c["name"] in frame.columns
                       and c["reason"].startswith(("ID-like", "row number"))]
                header = ids + [target] + ([] if tm.target.task == "regression" else
                                           [f"p_{c}" for c in tm.target.classes])
                out.write(_csv_rows([header]))
            columns = [frame[c].tolist() for c in ids]
            if tm.target.task == "regression":
                rows = ([*(col[i] for col in columns), repr(float(v))] for i, v in enumerate(pred))
            else:
                classes = tm.target.classes
                rows = ([*(col[i] for col in columns), classes[label], *(f"{v:.6g}" for v in p)]
                        for i, (label, p) in enumerate(zip(pred, proba)))
            out.write(_csv_rows(rows))
            count += len(pred)
    for note in (file.notes if file is not None else notes) + seen:  # a file's, once all of it is read
        _note(note)
    if args.output:
        _say(f"wrote {count} predictions to {args.output}")
    return 0


def _csv_rows(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class _predictions_out:
    """Where ``predict`` writes: the ``--output`` file (written beside it and renamed when complete, so a failed
    run leaves no half file) or standard output (a closed pipe ends the writing quietly)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        if self.path:
            self._tmp = f"{self.path}.part"
            self._handle = open(self._tmp, "w", newline="", encoding="utf-8")
        return self

    def write(self, text: str) -> None:
        if self.path:
            self._handle.write(text)
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()

    def __exit__(self, kind, exc, tb):
        if self.path:
            self._handle.close()
            if kind is None:
                os.replace(self._tmp, self.path)
            else:
                os.unlink(self._tmp)


# -- export ---------------------------------------------------------------------------------------------------------
def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="write a saved model as an ONNX file, with its preprocessing (for onnxruntime)",
        description="Write MODEL as an ONNX graph (opset 17) that onnxruntime runs without gpunet. A model trained "
                    "by `gpunet train` is exported with its column and target transforms: one (batch, 1) input per "
                    "raw column the model reads, named as in the training CSV (numbers and dates float64 with NaN "
                    "for missing, dates as seconds since 1970-01-01 UTC; categories and yes/no columns as strings "
                    "with '' for missing), and the outputs `gpunet predict` writes: 'label' (class names) and "
                    "'probabilities' for classification, 'prediction' in the target's units for regression. Other "
                    "models are exported as the bare network ('features' in). Needs pip install 'gpunet[onnx]'.")
    export.add_argument("model", help="a .safetensors file written by gpunet (gpunet train --save, model.save)")
    export.add_argument("output", help="the ONNX file to write (its folder must exist)")


def export(args) -> int:
    import gpunet as gn
    from . import export as export_mod

    model = gn.load(args.model, device="cpu")
    preprocessing = export_mod.cli_metadata(model) is not None
    proto = export_mod.to_onnx(model, preprocessing=preprocessing)
    export_mod.write(proto, args.output)
    inputs = [i.name for i in proto.graph.input]
    shown = ", ".join(inputs) if len(inputs) <= 6 else ", ".join(inputs[:5]) + f", ... ({len(inputs)} columns)"
    kind = ", with the training preprocessing" if preprocessing else ""
    print(f"wrote {args.output} (ONNX opset {export_mod.OPSET}{kind}): inputs {shown} -> outputs "
          f"{', '.join(o.name for o in proto.graph.output)}")
    if preprocessing:
        specs = json.loads({p.key: p.value for p in proto.metadata_props}["columns"])
        groups = {"numbers (float64, NaN = missing)": [s["name"] for s in specs if s["kind"] == "numeric"],
                  "text (string, '' = missing)": [s["name"] for s in specs if s["type"] == "string"],
                  f"dates (float64 {export_mod.DATE_UNIT}, NaN = missing)":
                      [s["name"] + (f" (was text {s['format']})" if s["format"] else "") for s in specs
                       if s["kind"] == "date"]}
        for label, names in groups.items():
            if names:
                listed = ", ".join(names) if len(names) <= 8 else ", ".join(names[:7]) + f", ... ({len(names)})"
                print(f"  {label}: {listed}")
    return 0


def info(args) -> int:
    import numpy

    import gpunet as gn

    _say(f"gpunet {gn.__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}")
    cuda = gn.cuda_info()
    _say(f"CUDA: {cuda['reason']}")
    for d in cuda.get("devices", []):
        _say(f"  cuda:{d['index']}: {d['name']}, compute capability {d['compute_capability']}, "
             f"{d['memory_gib']} GiB")
    _say(f"device='auto' resolves to {gn.get_backend('auto').label}")
    return 0
