"""The ``gpunet`` command (also ``python -m gpunet``): train, evaluate, predict, export, bench, info.

    gpunet train                                   # digits, best device found, progress, test report
    gpunet train --dataset csv:data.csv:price --layers 64,32 --epochs 100 --save model.safetensors --plot curves.png
    gpunet evaluate model.safetensors --dataset csv:new.csv:price
    gpunet predict model.safetensors --csv new.csv --output predictions.csv
    gpunet export model.safetensors model.onnx     # for onnxruntime: raw columns in, labels/values out
    gpunet bench --threads 2

Wrong options, missing files and malformed data end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
import warnings

import numpy as np

from . import data as data_mod

LOSSES_BY_TASK = {"regression": ("mse", "mae", "huber"), "binary": ("bce",), "multiclass": ("cce",)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpunet", description="Dense neural networks on NumPy or CUDA.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on a data set and report on its held-out test rows")
    train.add_argument("--dataset", default="digits",
                       help="digits | iris | wine | breast_cancer | diabetes | csv:PATH[:TARGET_COLUMN] (default digits)")
    train.add_argument("--task", choices=data_mod.TASKS, help="override the task inferred from the data")
    train.add_argument("--layers", default="128,64", help="hidden layer sizes, comma-separated (default 128,64)")
    train.add_argument("--activation", default="relu", help="hidden activation (default relu)")
    train.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden layer (default 0)")
    train.add_argument("--global-clipnorm", type=float, help="clip the gradients' global L2 norm to this value")
    train.add_argument("--loss", help="default: cce (multi-class), bce (binary), mse (regression)")
    train.add_argument("--optimizer", default="adam", help="sgd | adam | adamw | rmsprop | adagrad (default adam)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    train.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    train.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the shuffling")
    train.add_argument("--test-split", type=float, default=0.25, help="fraction held out for the report")
    train.add_argument("--val-split", type=float, default=0.1, help="fraction of the training rows for validation")
    train.add_argument("--early-stopping", type=int, metavar="PATIENCE", default=10,
                       help="stop after PATIENCE epochs without val_loss improvement, keeping the best weights "
                            "(0 = off; default 10)")
    train.add_argument("--save", metavar="PATH", help="save the trained model (safetensors)")
    train.add_argument("--plot", metavar="PNG", help="write training/validation curves (needs matplotlib)")
    train.add_argument("--quiet", action="store_true", help="no progress bar; only the report")

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model on a labelled data set (all rows)")
    evaluate.add_argument("model")
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--device", default="auto")

    predict = commands.add_parser("predict", help="predict the rows of a CSV file with a saved model")
    predict.add_argument("model")
    predict.add_argument("--csv", required=True, help="CSV with a header naming the model's feature columns")
    predict.add_argument("--output", help="write predictions here (default: standard output)")
    predict.add_argument("--device", default="auto")

    _add_export_parser(commands)

    # listed for --help only: main() hands `gpunet bench ...` to gpunet.bench before parsing
    commands.add_parser("bench", help="compare devices: forward/backward/step/epoch timings (gpunet bench --help)")
    commands.add_parser("info", help="versions, and whether CUDA is usable here")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are the benchmark's own (argparse would claim the dashes)
        from . import bench

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        commands = {"train": train, "evaluate": evaluate, "predict": predict, "export": export, "info": info}
        return commands[args.command](args)
    except (data_mod.DataError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"gpunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpunet: interrupted", file=sys.stderr)
        return 130


# -- train -------------------------------------------------------------------------------------------------------
def train(args) -> int:
    import gpunet as gn

    hidden = _layer_sizes(args.layers)
    for name in ("test_split", "val_split"):
        if not 0 <= getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1); received {getattr(args, name)}")
    data = data_mod.load(args.dataset, args.task)
    loss = args.loss or LOSSES_BY_TASK[data.task][0]
    if loss not in LOSSES_BY_TASK[data.task]:
        raise ValueError(f"--loss {loss} does not fit a {data.task} task; use one of {LOSSES_BY_TASK[data.task]}")
    train_rows, test_rows = data_mod.split(data, args.test_split, args.seed) if args.test_split else (
        np.arange(len(data.X)), np.arange(0))
    x_scaler = data_mod.Standardizer.fit(data.X[train_rows])
    y_scaler = data_mod.Standardizer.fit(_as_2d(data.y[train_rows])) if data.task == "regression" else None

    n_out = len(data.classes) if data.task == "multiclass" else (1 if data.task == "binary" else _as_2d(data.y).shape[1])
    out_act = {"multiclass": "softmax", "binary": "sigmoid", "regression": None}[data.task]
    sizes = [data.X.shape[1], *hidden, n_out]
    layers = [gn.Dense(a, b, args.activation, dropout=args.dropout) for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], out_act)], device=args.device,
                          dtype=args.dtype, seed=args.seed)
    optimizer = gn.optim.get(args.optimizer)
    optimizer = type(optimizer)(lr=args.lr, global_clipnorm=args.global_clipnorm,
                                **({"momentum": args.momentum} if optimizer.name == "sgd" else {}))
    callbacks = []
    if args.early_stopping and args.val_split:
        callbacks.append(gn.callbacks.EarlyStopping("val_loss", patience=args.early_stopping,
                                                    restore_best_weights=True))
    metric = "r2" if data.task == "regression" else "accuracy"
    X_train = x_scaler.transform(data.X[train_rows])
    y_train = y_scaler.transform(_as_2d(data.y[train_rows])) if y_scaler else data.y[train_rows]
    if not args.quiet:
        print(f"{data.name}: {len(data.X)} samples, {data.X.shape[1]} features, {data.task}"
              + (f" ({len(data.classes)} classes)" if data.classes else "")
              + f"; {len(train_rows)} train / {len(test_rows)} test rows")
        print(f"model: {' -> '.join(map(str, sizes))}, {args.activation}/{out_act or 'linear'}, {loss}, "
              f"{optimizer!r}, on {model.device} ({model.backend.name})")
    start = time.perf_counter()
    with warnings.catch_warnings():  # an interrupt is reported below, in one line
        warnings.filterwarnings("ignore", message="Training interrupted by user")
        history = model.fit(X_train, y_train, loss=loss, optimizer=optimizer, epochs=args.epochs,
                            batch_size=args.batch_size, validation_split=args.val_split or None, metrics=[metric],
                            verbose=0 if args.quiet else 1, callbacks=callbacks)
    seconds = time.perf_counter() - start
    epochs_run = len(history.epoch)
    print(f"trained {epochs_run} epoch(s) in {seconds:.2f} s on {model.device}"
          + (f" (early stopping: best epoch {callbacks[0].best_epoch + 1})" if callbacks and
             callbacks[0].stopped_epoch is not None else ""))
    model.metadata = {"cli": {"task": data.task, "classes": data.classes, "features": data.feature_names,
                              "target": data.target_name, "x_scaler": x_scaler.to_json(),
                              "y_scaler": y_scaler.to_json() if y_scaler else None}}
    if history.interrupted:  # Ctrl-C: fit ended cleanly, with the weights of its last finished step
        print(f"gpunet train: interrupted after {epochs_run} finished epoch(s); the model keeps its last finished "
              f"step" + (f", saving it to {args.save}" if args.save else ""), file=sys.stderr)
    if len(test_rows):
        print(_report(model, data.X[test_rows], data.y[test_rows], "test"))
    if args.save:
        model.save(args.save)
        print(f"saved {args.save}")
    if history.interrupted:
        return 130
    if args.plot:
        from .plotting import plot_history

        plot_history(history, args.plot, title=f"{data.name}: {' -> '.join(map(str, sizes))} on {model.device}")
        print(f"wrote {args.plot}")
    return 0


def _layer_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated positive integers, e.g. 128,64; received {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise ValueError(f"--layers must be positive integers; received {text!r}")
    return sizes


def _as_2d(y: np.ndarray) -> np.ndarray:
    return y.reshape(-1, 1) if y.ndim == 1 else y


# -- what a saved model knows about its data -----------------------------------------------------------------------
def _cli_meta(model) -> dict:
    meta = getattr(model, "metadata", None) or {}
    if "cli" not in meta:
        raise ValueError("this model was not trained by `gpunet train` (it lacks the data transform); use the "
                         "Python API (gpunet.load) instead")
    return meta["cli"]


def _predict(model, X: np.ndarray):
    """``(labels or values, probabilities or None)`` on the original scale of the target."""
    from .backend import to_numpy

    meta = _cli_meta(model)
    out = to_numpy(model.predict(data_mod.Standardizer.from_json(meta["x_scaler"]).transform(X))).astype(np.float64)
    if meta["task"] == "regression":
        values = data_mod.Standardizer.from_json(meta["y_scaler"]).inverse(out)
        return (values[:, 0] if values.shape[1] == 1 else values), None
    if meta["task"] == "binary":
        proba = np.hstack([1 - out, out])
    else:
        proba = out
    return proba.argmax(axis=1), proba


def _report(model, X, y, label: str) -> str:
    meta = _cli_meta(model)
    pred, _ = _predict(model, X)
    lines = []
    if meta["task"] == "regression":
        y2, p2 = _as_2d(y), _as_2d(pred)
        ss_res = ((y2 - p2) ** 2).sum(axis=0)
        ss_tot = ((y2 - y2.mean(axis=0)) ** 2).sum(axis=0)
        r2 = float(np.mean(1 - ss_res / np.where(ss_tot > 0, ss_tot, 1)))
        lines.append(f"{label}: R2 {r2:.4f}, MAE {np.abs(y2 - p2).mean():.4g}, "
                     f"RMSE {np.sqrt(((y2 - p2) ** 2).mean()):.4g} ({len(y)} rows)")
        return "\n".join(lines)
    classes = meta["classes"] or [str(i) for i in range(int(max(pred.max(), y.max())) + 1)]
    accuracy = float(np.mean(pred == y))
    lines.append(f"{label}: accuracy {accuracy:.4f} ({int(np.sum(pred == y))}/{len(y)} rows)")
    k = len(classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y.astype(np.int64), pred.astype(np.int64)), 1)
    width = max(5, max(len(c) for c in classes) + 1, len(str(matrix.max())) + 1)
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + "".join(f"{c:>{width}}" for c in classes))
    for c, row in zip(classes, matrix):
        lines.append(f"{c:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


# -- evaluate / predict --------------------------------------------------------------------------------------------
def evaluate(args) -> int:
    import gpunet as gn

    model = gn.load(args.model, device=args.device)
    meta = _cli_meta(model)
    data = data_mod.load(args.dataset, meta["task"])
    if data.X.shape[1] != model.n_inputs:
        raise ValueError(f"{args.dataset} has {data.X.shape[1]} features; the model expects {model.n_inputs}")
    y = data.y
    if meta["task"] != "regression" and meta["classes"] and data.classes and data.classes != meta["classes"]:
        index = {c: i for i, c in enumerate(meta["classes"])}
        unknown = sorted(set(data.classes) - set(index))
        if unknown:
            raise ValueError(f"{args.dataset} has classes the model never saw: {unknown}")
        y = np.array([index[data.classes[i]] for i in data.y])
    print(f"{args.model} on {model.device}")
    print(_report(model, data.X, y, data.name))
    return 0


def predict(args) -> int:
    import gpunet as gn

    model = gn.load(args.model, device=args.device)
    meta = _cli_meta(model)
    X = _read_features(args.csv, meta["features"], meta["target"])
    pred, proba = _predict(model, X)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if meta["task"] == "regression":
        names = [meta["target"]] if pred.ndim == 1 else [f"{meta['target']}_{i}" for i in range(pred.shape[1])]
        writer.writerow(names)
        writer.writerows(_as_2d(pred).tolist())
    else:
        classes = meta["classes"]
        writer.writerow([meta["target"]] + [f"p_{c}" for c in classes])
        for label, p in zip(pred, proba):
            writer.writerow([classes[label], *(f"{v:.6g}" for v in p)])
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
        print(f"wrote {len(pred)} predictions to {args.output}")
    else:
        sys.stdout.write(buffer.getvalue())
    return 0


def _read_features(path: str, features: list[str], target: str) -> np.ndarray:
    """The model's feature columns from a CSV (by header name; the target column, if present, is ignored)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise data_mod.DataError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise data_mod.DataError(f"{path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    missing = [f for f in features if f not in header]
    if missing:
        raise data_mod.DataError(f"{path} lacks the model's feature column(s) {missing}; its columns: {header}")
    columns = [header.index(f) for f in features]
    X = np.empty((len(rows) - 1, len(features)))
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise data_mod.DataError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
        for j, i in enumerate(columns):
            try:
                X[line - 2, j] = float(row[i])
            except ValueError:
                raise data_mod.DataError(f"{path}, line {line}, column {header[i]!r}: {row[i]!r} is not a number") \
                    from None
    if not np.all(np.isfinite(X)):
        raise data_mod.DataError(f"{path} holds a non-finite feature value")
    return X


# -- export ---------------------------------------------------------------------------------------------------------
def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="write a saved model as an ONNX file, with its preprocessing (for onnxruntime)",
        description="Write MODEL as an ONNX graph (opset 17) that onnxruntime runs without gpunet. A model trained "
                    "by `gpunet train` is exported with its data transform: one (batch, 1) float64 input per raw "
                    "feature column, named as in the training CSV, and the outputs `gpunet predict` writes: "
                    "'label' (class names) and 'probabilities' for classification, 'prediction' in the target's "
                    "units for regression. Other models are exported as the bare network ('features' in). "
                    "Needs pip install 'gpunet[onnx]'.")
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
    return 0


def info(args) -> int:
    import numpy

    import gpunet as gn

    print(f"gpunet {gn.__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}")
    cuda = gn.cuda_info()
    print(f"CUDA: {cuda['reason']}")
    for d in cuda.get("devices", []):
        print(f"  cuda:{d['index']}: {d['name']}, compute capability {d['compute_capability']}, "
              f"{d['memory_gib']} GiB")
    print(f"device='auto' resolves to {gn.get_backend('auto').label}")
    return 0
