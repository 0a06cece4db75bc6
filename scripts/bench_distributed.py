"""Data-parallel scaling on this machine: the step time and the all-reduce's share of it for P ranks.

    python scripts/bench_distributed.py --ranks 1,2 --threads 2      # P = 1 and 2, the cores shared out evenly

For each P it launches ``mpiexec -n P`` on itself (``--worker``). Each rank trains a 784-512-256-10 ReLU network
(float32, SGD momentum) with a global batch of ``--batch`` rows, so a rank computes ``batch / P`` rows per step, with
``threads / P`` BLAS threads. It reports, from rank 0: the median step (forward, backward, the SUM all-reduce of the
flat gradient buffer, the update), the median all-reduce alone on the same buffer, and the epoch throughput of
``fit(distributed=...)`` in samples/s. The speed-up is P=1's step over P's; on one machine the ranks share the memory
bus and the cores, so it shows the cost of the machinery rather than what a cluster gains.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def worker(args) -> None:
    from threadpoolctl import threadpool_limits

    import gpunet as gn

    world = gn.distributed.init()
    sizes = [int(s) for s in args.shape.split("-")]
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    X, y = rng.standard_normal((n, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], n)
    layers = [gn.Dense(a, b, "relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], "softmax")], seed=0)
    opt = gn.optim.SGD(lr=1e-3, momentum=0.9)
    with threadpool_limits(max(1, args.threads // world.size)):
        model.fit(X, y, loss="cce", optimizer=opt, epochs=1, batch_size=args.batch, distributed=world)  # warm-up
        epochs = []
        for _ in range(3):
            start = time.perf_counter()
            model.fit(X, y, epochs=1, batch_size=args.batch, distributed=world)
            epochs.append(time.perf_counter() - start)
        steps_per_epoch = -(-n // args.batch)
        buffer = model.trainer.flat_grads
        reduce_times = []
        for _ in range(50):
            if world.comm is not None:
                world.comm.Barrier()
            start = time.perf_counter()
            world.allreduce_(buffer)
            reduce_times.append(time.perf_counter() - start)
    if world.rank == 0:
        epoch = statistics.median(epochs)
        print(json.dumps({"ranks": world.size, "threads_per_rank": max(1, args.threads // world.size),
                          "step_ms": epoch / steps_per_epoch * 1e3, "allreduce_ms": statistics.median(reduce_times) * 1e3,
                          "samples_per_s": n / epoch, "buffer_floats": int(buffer.size)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shape", default="784-512-256-10")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="batches per epoch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    rows = []
    for ranks in [int(r) for r in args.ranks.split(",")]:
        command = [sys.executable, __file__, "--worker", "--shape", args.shape, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(([mpiexec, "-n", str(ranks)] if ranks > 1 else []) + command, capture_output=True,
                              text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode:
            sys.exit(f"P={ranks} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_ms"]
    print(f"{args.shape}, global batch {args.batch}, float32, SGD momentum; {args.threads} threads shared out")
    print(f"{'ranks':>5} {'threads/rank':>12} {'step (ms)':>10} {'all-reduce (ms)':>16} {'share':>6} "
          f"{'samples/s':>10} {'speed-up':>8}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['threads_per_rank']:>12} {r['step_ms']:>10.2f} {r['allreduce_ms']:>16.3f} "
              f"{r['allreduce_ms'] / r['step_ms']:>6.0%} {r['samples_per_s']:>10.0f} {base / r['step_ms']:>7.2f}x")


if __name__ == "__main__":
    main()
