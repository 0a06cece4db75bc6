"""Throughput of streamed fits against the in-memory fit: ``python scripts/bench_streaming.py --threads 2``.

Writes a float32 table of ``--rows`` x ``--features`` (class labels in a second file) to a temporary folder, as a
``.npy`` file and as Parquet, then times ``fit(epochs=--epochs)`` calls of the same network and batch size (median of
``--repeats``, after one warm-up fit each, the files in the page cache) for:

- in memory: ``fit(X, y)`` on arrays already loaded (the in-memory fit's per-epoch shuffled copy included);
- memmap rows: ``fit(np.load(path, mmap_mode="r"), y)``: the exact permutation, each batch gathered from the file;
- memmap blocks: ``ArrayStream(..., shuffle="blocks")``: shuffled blocks, sequential reads;
- Parquet: ``ParquetStream`` (row groups of ``--row-group`` rows, shuffled blocks);
- batches: a generator function yielding ``(x, y)`` slices of the loaded arrays (no shuffling).

Each time is a whole ``fit`` call, so a streamed fit's one-pass check of the data is in it (the in-memory fit's
checks and its copy to the device too), spread over ``--epochs`` epochs. The cases run round robin, so that other work
on the machine slows them alike. Prints samples/s for each and the ratio to the in-memory fit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--layers", default="256,128", help="hidden sizes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed fit call")
    parser.add_argument("--row-group", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (threadpoolctl)")
    parser.add_argument("--dir", default=None, help="where the files go (default: a temporary folder)")
    args = parser.parse_args(argv)

    import gpunet as gn
    from gpunet import sources

    limits = None
    if args.threads:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        folder = Path(folder)
        rng = np.random.default_rng(0)
        X = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float32,
                                      shape=(args.rows, args.features))
        for start in range(0, args.rows, 65536):
            stop = min(start + 65536, args.rows)
            X[start:stop] = rng.standard_normal((stop - start, args.features), dtype=np.float32)
        X.flush()
        y = rng.integers(0, args.classes, args.rows)
        np.save(folder / "y.npy", y)
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        for start in range(0, args.rows, args.row_group):
            part = np.asarray(X[start:start + args.row_group])
            table = pa.table({**{f"f{j}": part[:, j] for j in range(args.features)},
                              "label": y[start:start + args.row_group]})
            writer = writer or pq.ParquetWriter(folder / "table.parquet", table.schema)
            writer.write_table(table)
        writer.close()
        del X
        mapped = np.load(folder / "X.npy", mmap_mode="r")
        loaded = np.array(mapped)
        size = (folder / "X.npy").stat().st_size
        hidden = [int(h) for h in args.layers.split(",")]
        sizes = [args.features, *hidden, args.classes]

        def model():
            layers = [gn.Dense(a, b, "relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
            return gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], "softmax")], seed=0)

        def gen():
            for start in range(0, args.rows, args.batch):
                yield loaded[start:start + args.batch], y[start:start + args.batch]

        cases = {
            "in memory (arrays)": lambda: (loaded, y),
            "memmap, exact permutation": lambda: (mapped, y),
            "memmap, shuffled blocks": lambda: (sources.ArrayStream(mapped, y, shuffle="blocks"), None),
            "Parquet, shuffled row groups": lambda: (sources.ParquetStream(folder / "table.parquet", target="label"),
                                                     None),
            "batches from a generator": lambda: (gen, None),
        }
        print(f"{args.rows} rows x {args.features} float32 ({size / 2**20:.0f} MiB), network "
              f"{'-'.join(map(str, sizes))}, batch {args.batch}, Adam, fit calls of {args.epochs} epoch(s), median of "
              f"{args.repeats}"
              + (f", {args.threads} BLAS threads" if args.threads else ""))
        runs = {}
        for name, make in cases.items():  # warm-up: workspaces, the page cache
            runs[name] = (model(), *make())
            m, X_, y_ = runs[name]
            m.fit(X_, y_, loss="cce", optimizer="adam", epochs=1, batch_size=args.batch)
        times = {name: [] for name in cases}
        for _ in range(args.repeats):  # round robin, so that whatever else runs slows every case alike
            for name, (m, X_, y_) in runs.items():
                start = time.perf_counter()
                history = m.fit(X_, y_, epochs=args.epochs, batch_size=args.batch)
                times[name].append(time.perf_counter() - start)
                assert np.isfinite(history.history["loss"][0])
        samples = args.rows * args.epochs
        results = {name: (samples / statistics.median(t), samples / max(t)) for name, t in times.items()}
        base = results["in memory (arrays)"][0]
        print(f"{'source':<32}{'samples/s (median)':>20}{'slowest':>10}{'vs in memory':>14}")
        for name, (rate, slowest) in results.items():
            print(f"{name:<32}{rate:>20,.0f}{slowest:>10,.0f}{rate / base:>13.2f}x")
    if limits is not None:
        limits.unregister()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
