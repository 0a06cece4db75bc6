"""Train a dense network on scikit-learn's digits with gpunet, then the same recipe with PyTorch, side by side.

    python scripts/train_digits.py                 # best device found ("auto"), PyTorch as the peer if installed
    python scripts/train_digits.py --device cpu --threads 2 --repeats 3

Recipe (the same for both libraries): X / 16, stratified 75/25 split (random_state=0), 64-128(relu)-10(softmax),
categorical cross-entropy, SGD(lr=0.05, momentum=0.9), 50 epochs, batch 32, reshuffled each epoch in the same
order, the same initial weights. Times are wall-clock medians over ``--repeats`` whole trainings after one warm-up
training, with both libraries pinned to the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np

import gpunet as gn


def load(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)


def build(device, seed):
    return gn.Sequential([gn.Dense(64, 128, "relu"), gn.Dense(128, 10, "softmax")], device=device, seed=seed)


def train_gpunet(data, args, verbose=0):
    Xtr, Xte, ytr, yte = data
    model = build(args.device, args.seed)
    start = time.perf_counter()
    model.fit(Xtr, ytr, loss="cce", optimizer=gn.optim.SGD(lr=args.lr, momentum=args.momentum),
              epochs=args.epochs, batch_size=args.batch_size, verbose=verbose, precision=args.precision,
              graph={"auto": "auto", "on": True, "off": False}[args.graph])
    proba = model.predict(Xte)
    accuracy = float(np.mean(np.argmax(gn.to_numpy(proba), axis=1) == yte))
    return time.perf_counter() - start, accuracy, model


def train_torch(data, args, weights, device):
    """The same recipe in idiomatic PyTorch: linear logits + CrossEntropyLoss (= softmax + cce)."""
    import torch

    Xtr, Xte, ytr, yte = data
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
    with torch.no_grad():
        for layer, (W, b) in zip((net[0], net[2]), (weights[0:2], weights[2:4])):
            layer.weight.copy_(torch.as_tensor(W.T))
            layer.bias.copy_(torch.as_tensor(b))
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    X = torch.as_tensor(Xtr, dtype=torch.float32, device=device)
    y = torch.as_tensor(ytr, dtype=torch.int64, device=device)
    n = X.shape[0]
    for _ in range(args.epochs):
        order = torch.as_tensor(rng.permutation(n), device=device)
        Xe, ye = X[order], y[order]
        for i in range(0, n, args.batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(Xe[i:i + args.batch_size]), ye[i:i + args.batch_size]).backward()
            opt.step()
    with torch.no_grad():
        pred = net(torch.as_tensor(Xte, dtype=torch.float32, device=device)).argmax(1).cpu().numpy()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start, float(np.mean(pred == yte))


def median_time(fn, repeats):
    fn()  # warm-up: imports, allocator, kernel compilation
    runs = [fn() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), runs[-1][1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both libraries (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed trainings per library (median reported)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--precision", default="float32", choices=["float32", "tf32", "bf16", "fp16"],
                        help="gpunet's training precision (PyTorch stays float32)")
    parser.add_argument("--graph", default="auto", choices=["auto", "on", "off"],
                        help="fit(graph=...): CUDA-graph captured steps where they apply (GPU)")
    args = parser.parse_args(argv)

    limits = contextlib.nullcontext()
    if args.threads:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    data = load(args.seed)
    with limits:
        seconds, accuracy, model = train_gpunet(data, args, verbose=2)
        print(f"\ngpunet on {model.device}: test accuracy {accuracy:.4f}, trained in {seconds:.2f} s\n")
        rows = [("gpunet", model.device, *median_time(lambda: train_gpunet(data, args)[:2], args.repeats))]
        if not args.no_torch:
            try:
                import torch
            except ImportError:
                print("PyTorch is not installed: no peer comparison (pip install torch)")
            else:
                if args.threads:
                    torch.set_num_threads(args.threads)
                weights = build("cpu", args.seed).get_weights()
                torch_device = "cuda" if model.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
                rows.append(("torch", torch_device,
                             *median_time(lambda: train_torch(data, args, weights, torch_device), args.repeats)))
    threads = args.threads or "all"
    print(f"digits, {args.epochs} epochs, batch {args.batch_size}, SGD(lr={args.lr}, momentum={args.momentum}), "
          f"threads={threads}, median of {args.repeats}, gpunet precision={args.precision}, graph={args.graph}")
    print("| library | device | fit + predict (s) | test accuracy | time / gpunet |")
    print("|---|---|---|---|---|")
    for name, device, sec, acc in rows:
        print(f"| {name} | {device} | {sec:.3f} | {acc:.4f} | {sec / rows[0][2]:.2f}x |")
    return 0 if accuracy >= 0.965 else 1


if __name__ == "__main__":
    sys.exit(main())
