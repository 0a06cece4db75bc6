"""Time one training step (forward, loss gradient, backward, SGD update) on every device present, side by side.

    gpunet bench --threads 2                          # or: python scripts/bench_step.py --threads 2
    gpunet bench --shapes 784-1024-1024-10 --batch 1024      # on a GPU machine

For each MLP shape and batch size it reports the median step time of: gpunet on NumPy, gpunet on CuPy with and
without the fused kernels (when a GPU is visible), PyTorch CPU and CUDA (when installed), and the floor: the
step's matrix products alone in NumPy (CPU) or CuPy (GPU). Ratios are ``time / floor`` and ``gpunet / torch`` on the same device. Float32, softmax + cce,
SGD with momentum; PyTorch uses linear logits + CrossEntropyLoss, its idiomatic equivalent, TF32 off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import gpunet as gn


def timed(step, sync, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after ``warmup`` runs; ``sync`` waits for the device."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpunet_step(sizes, batch, device, rng, fused=True):
    layers = [gn.Dense(a, b, "relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], "softmax")], device=device, seed=0, fused=fused)
    X = rng.standard_normal((batch, sizes[0]))
    y = rng.integers(0, sizes[-1], batch)
    loss, opt = gn.losses.get("cce"), gn.optim.SGD(lr=0.01, momentum=0.9)
    Xd, Yd = model._data("X", X, "y", y, loss)
    combined = model._output_pairing(loss)

    def step():
        model._train_step(Xd, Yd, loss, opt, combined)

    return step, model


def floor_step(sizes, batch, xp, rng):
    """The step's matrix products alone: forward x @ W, backward x.T @ dz and dz @ W.T (not for the first layer)."""
    Ws = [xp.asarray(rng.standard_normal((a, b)), dtype=xp.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    acts = [xp.asarray(rng.standard_normal((batch, a)), dtype=xp.float32) for a in sizes]

    def step():
        for i, W in enumerate(Ws):
            acts[i] @ W
        for i in range(len(Ws) - 1, -1, -1):
            acts[i].T @ acts[i + 1]
            if i:
                acts[i + 1] @ Ws[i].T

    return step


def torch_step(sizes, batch, device, rng, weights):
    import torch

    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(weights[2 * i].T))
            lin.bias.copy_(torch.as_tensor(weights[2 * i + 1]))
        mods += [lin, torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods[:-1]).to(device)
    X = torch.as_tensor(rng.standard_normal((batch, sizes[0])), dtype=torch.float32, device=device)
    y = torch.as_tensor(rng.integers(0, sizes[-1], batch), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(X), y).backward()
        opt.step()

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpunet bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="2-3-2,64-128-10,784-512-256-10",
                        help="comma-separated MLP shapes, layer sizes joined by '-'")
    parser.add_argument("--batch", default="1,32,256", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for NumPy and PyTorch")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    try:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if args.threads:
            torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    cuda_ok, why = gn.cuda_available()
    print(f"GPU: {why}" if cuda_ok else f"GPU part skipped: {why}")

    rows = []
    for shape in args.shapes.split(","):
        sizes = [int(s) for s in shape.split("-")]
        for batch in (int(b) for b in args.batch.split(",")):
            rng = np.random.default_rng(0)
            step, model = gpunet_step(sizes, batch, "cpu", rng)
            cpu = {"floor": timed(floor_step(sizes, batch, np, rng), lambda: None, args.repeats),
                   "gpunet": timed(step, lambda: None, args.repeats)}
            if torch is not None:
                cpu["torch"] = timed(torch_step(sizes, batch, "cpu", rng, model.get_weights()), lambda: None,
                                     args.repeats)
            rows.append((shape, batch, "cpu", cpu))
            if cuda_ok:
                import cupy

                sync = cupy.cuda.Device().synchronize
                step, _ = gpunet_step(sizes, batch, "cuda", rng)
                unfused, _ = gpunet_step(sizes, batch, "cuda", rng, fused=False)
                gpu = {"floor": timed(floor_step(sizes, batch, cupy, rng), sync, args.repeats),
                       "gpunet": timed(step, sync, args.repeats), "unfused": timed(unfused, sync, args.repeats)}
                if torch is not None and torch.cuda.is_available():
                    gpu["torch"] = timed(torch_step(sizes, batch, "cuda", rng, model.get_weights()),
                                         torch.cuda.synchronize, args.repeats)
                rows.append((shape, batch, "cuda", gpu))

    print(f"\ntrain step, float32, median of {args.repeats}, threads={args.threads or 'all'}")
    print("| shape | batch | device | floor (ms) | gpunet (ms) | unfused (ms) | torch (ms) | gpunet / floor | "
          "gpunet / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape, batch, device, t in rows:
        ms = {k: f"{t[k] * 1e3:.3f}" if k in t else "-" for k in ("unfused", "torch")}
        vs_torch = f"{t['gpunet'] / t['torch']:.2f}x" if "torch" in t else "-"
        print(f"| {shape} | {batch} | {device} | {t['floor'] * 1e3:.3f} | {t['gpunet'] * 1e3:.3f} | {ms['unfused']} | "
              f"{ms['torch']} | {t['gpunet'] / t['floor']:.2f}x | {vs_torch} |")


if __name__ == "__main__":
    main()
