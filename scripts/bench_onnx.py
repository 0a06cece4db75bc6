"""Inference latency on the CPU: onnxruntime on the exported graph vs ``model.predict``, for 1 row and for 1024 rows.

    python scripts/bench_onnx.py --threads 2
    python scripts/bench_onnx.py --threads 1 --shapes 64-128-64-10 --activations relu,gelu --rows 1,32,1024

For each network (float32, seeded random weights: the time does not depend on their values) the script exports the
model with :func:`gpunet.export.to_onnx`, checks that onnxruntime's outputs equal ``model.predict``'s to 1e-5, then
times one call of each many times after a warm-up and prints the medians. Both run on the same number of threads:
``threadpoolctl`` limits NumPy's BLAS, ``SessionOptions.intra_op_num_threads`` onnxruntime's pool (with
``inter_op_num_threads = 1``, sequential execution, the default graph optimisations). ``model.predict`` is timed as
users call it, on a host NumPy array: its input checks (shape, finiteness, dtype range) are part of its time.

The last rows time the command line's graph (``gpunet export``: one float64 input per raw column, standardisation,
labels) of a binary classifier on ``--cli-columns`` columns, shaped as ``gpunet train --dataset breast_cancer``
builds it (30-128-64-1), against what ``gpunet predict`` computes once the CSV is read (``TableModel.outputs`` on the
pandas DataFrame: the column transform, ``model.predict``, probabilities and labels). The feeds (one ``(rows, 1)``
array per column) and the DataFrame are built outside the timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import gpunet as gn
from gpunet import export


def median_seconds(fn, budget: float, min_calls: int = 20) -> float:
    """The median of single-call times of ``fn`` over about ``budget`` seconds, after a warm-up of 10 calls."""
    for _ in range(10):
        fn()
    times, deadline = [], time.perf_counter() + budget
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for both libraries (default 1)")
    parser.add_argument("--shapes", default="64-128-64-10,784-512-256-10", help="layer sizes, comma-separated")
    parser.add_argument("--activations", default="relu,gelu", help="hidden activations (the output is softmax)")
    parser.add_argument("--rows", default="1,1024", help="batch sizes, comma-separated")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of timed calls per measurement")
    parser.add_argument("--cli-columns", type=int, default=30, help="raw columns of the CLI graph's rows (0: none)")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    rng = np.random.default_rng(0)
    print(f"gpunet {gn.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}; float32, "
          f"{args.threads} thread(s); median of single calls after warm-up\n")
    print("| network | hidden | rows | model.predict (ms) | onnxruntime (ms) | predict / onnxruntime |")
    print("|---|---|---|---|---|---|")
    rows_list = [int(r) for r in args.rows.split(",")]

    def row(network, act, rows, predict, session, feeds, reference):
        for got, want in zip(session.run(None, feeds), reference()):
            if got.dtype.kind == "f":
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(got, want)
        t_gpunet = median_seconds(predict, args.budget)
        t_ort = median_seconds(lambda: session.run(None, feeds), args.budget)
        print(f"| {network} | {act} | {rows} | {t_gpunet * 1e3:.4g} | {t_ort * 1e3:.4g} | {t_gpunet / t_ort:.2f}x |",
              flush=True)

    with threadpool_limits(args.threads):
        for shape in args.shapes.split(","):
            sizes = [int(s) for s in shape.split("-")]
            for act in args.activations.split(","):
                layers = [gn.Dense(a, b, act) for a, b in zip(sizes[:-2], sizes[1:-1])]
                model = gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], "softmax")], device="cpu", seed=0)
                session = ort.InferenceSession(export.to_onnx(model).SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
                for rows in rows_list:
                    x = rng.standard_normal((rows, sizes[0])).astype(np.float32)
                    row(shape, act, rows, lambda: model.predict(x), session, {"features": x},
                        lambda: [model.predict(x)])
        if args.cli_columns:
            import pandas as pd

            tm, columns = cli_model(args.cli_columns)
            session = ort.InferenceSession(export.to_onnx(tm.model, preprocessing=True).SerializeToString(),
                                           options, providers=["CPUExecutionProvider"])
            classes = np.array(tm.target.classes, dtype=object)
            for rows in rows_list:
                X = rng.normal(20, 10, (rows, len(columns)))
                frame = pd.DataFrame(X, columns=columns)

                def reference():
                    index, proba = tm.outputs(frame)
                    return [classes[index], proba]

                row(f"CLI graph, {len(columns)} raw columns", "relu", rows, lambda: tm.outputs(frame), session,
                    {c: X[:, [j]] for j, c in enumerate(columns)}, reference)
    return 0


def cli_model(k: int):
    """A binary classifier k-128-64-1 with the column and target transforms ``gpunet train`` saves (numeric columns
    x0, x1, ...): ``(TableModel, column names)``."""
    from gpunet.tabular import TableTransform, TargetTransform

    model = gn.Sequential([gn.Dense(k, 128, "relu"), gn.Dense(128, 64, "relu"), gn.Dense(64, 1, "sigmoid")], seed=0)
    columns = [f"x{i}" for i in range(k)]
    target = TargetTransform("y")
    target.task, target.classes = "binary", ["no", "yes"]
    tm = gn.TableModel(model, TableTransform.from_standardizer(columns, [20.0] * k, [10.0] * k), target)
    tm._attach_metadata()
    return tm, columns


if __name__ == "__main__":
    sys.exit(main())
