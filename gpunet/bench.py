"""Compare devices: forward, backward, train step and epoch throughput of MLPs on every device present.

    gpunet bench --threads 2                            # or: python scripts/bench_step.py --threads 2
    gpunet bench --shapes 784-1024-1024-10 --batch 32,1024 --json bench.json --plot bench.png
    gpunet bench --quick                                # a small matrix, seconds

Float32, ReLU hidden layers, softmax + cce, SGD (lr 1e-3, momentum 0.9). Implementations: gpunet on NumPy (cpu),
gpunet on CuPy with and without (``fused=False``) its fused kernels (cuda), PyTorch (linear logits +
CrossEntropyLoss, the same initial weights, TF32 off), and the floor: the phase's matrix products alone (NumPy /
CuPy, into preallocated outputs). Phases: forward; backward (loss gradient + backward); step (forward + loss +
backward + SGD update); epoch: samples/s of ``fit(epochs=1)``, its input checks included (PyTorch: the same
shuffled loop by hand) over ``--rows`` synthetic rows already on the device, at most ``--max-steps`` batches, the
median of up to 3 after a warm-up epoch. Ratios: step time / the floor's, and gpunet's / PyTorch's, on one device.

Times are medians of up to ``--repeats`` runs after 2 warm-up runs (a measurement stops early once it has 3 runs and
1 s); GPU runs are timed by CUDA events on an idle stream. GFLOP/s counts 2*n*in*out per matrix product: forward one
per layer, backward two per layer but the first (no input gradient). On the CPU, a shape x batch whose third gpunet
step exceeds ``--cpu-step-limit`` s is skipped, and so is an epoch estimated above ``--cpu-epoch-limit`` s.
On a GPU the fused-kernel bandwidth table of :mod:`gpunet.bench_kernels` follows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import gpunet as gn
from gpunet import bench_kernels

PHASES = ("forward", "backward", "step")
DEFAULT_SHAPES = "2-3-2,64-128-10,784-512-256-10,784-1024-1024-10,4096-4096-4096-10"
QUICK = ["--shapes", "2-3-2,64-128-10", "--batch", "1,32", "--rows", "256"]


def step_flops(sizes, batch: int) -> int:
    """A train step's matrix-product FLOPs: forward 1, backward 2 products per layer (1 for the first layer)."""
    return sum(2 * batch * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))


def clock_for(kind: str):
    """``clock(fn) -> seconds`` of one call: perf_counter on the CPU; CUDA events around ``fn`` on an idle stream
    for ``kind`` "cupy" or "torch" (every call waits for its stop event)."""
    if kind == "cpu":
        def clock(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        return clock
    if kind == "cupy":
        import cupy

        start, stop, elapsed = cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.get_elapsed_time
    else:
        import torch

        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        elapsed = torch.cuda.Event.elapsed_time

    def clock(fn):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return elapsed(start, stop) / 1e3
    return clock


def timed(fn, clock, repeats: int, warmup: int = 2, budget: float = 1.0, least: int = 3) -> float:
    """Median seconds of ``fn()`` over up to ``repeats`` runs after ``warmup`` runs; stops early once it has
    ``least`` runs and ``budget`` seconds spent."""
    spent = sum(clock(fn) for _ in range(warmup))
    times = []
    while len(times) < repeats and (len(times) < least or spent <= budget):
        times.append(clock(fn))
        spent += times[-1]
    return statistics.median(times)


# a small rate: the benchmark trains on random labels (and on one batch over and over), which a large one diverges on
LR = 1e-3


def gpunet_step(sizes, batch, device, rng, fused=True):
    """``(model, {phase: callable}, epoch)``; ``epoch(X, y)`` moves the data to the device and returns the call.

    The phases are the trainer's: ``forward`` (training forward into the workspaces), ``backward`` (the loss and
    its gradients from the last forward's predictions), ``step`` (forward, backward, update)."""
    layers = [gn.Dense(a, b, "relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    model = gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], "softmax")], device=device, seed=0, fused=fused)
    loss, opt = gn.losses.get("cce"), gn.optim.SGD(lr=LR, momentum=0.9)
    trainer = model.trainer
    trainer.configure(loss, opt)
    x, y, _ = trainer.prepare(rng.standard_normal((batch, sizes[0])), rng.integers(0, sizes[-1], batch))
    last = {}

    def forward():
        last["pred"] = trainer.forward(x)

    def epoch(X, y):
        data = trainer.prepare(X, y)[:2]
        return lambda: model.fit(*data, loss=loss, optimizer=opt, epochs=1, batch_size=batch)

    forward()
    phases = {"forward": forward, "backward": lambda: trainer.backward(last["pred"], y),
              "step": lambda: trainer.step(x, y)}
    return model, phases, epoch


def floor_step(sizes, batch, xp, rng) -> dict:
    """``{phase: callable}``: the matrix products alone, x @ W forward, x.T @ dz and dz @ W.T (not for layer 0)."""
    f32 = lambda *shape: xp.asarray(rng.standard_normal(shape), dtype=xp.float32)  # noqa: E731
    pairs = list(zip(sizes[:-1], sizes[1:]))
    Ws, dWs, acts, dxs = [f32(a, b) for a, b in pairs], [f32(a, b) for a, b in pairs], \
        [f32(batch, a) for a in sizes], [f32(batch, a) for a in sizes]

    def forward():
        for i, W in enumerate(Ws):
            xp.matmul(acts[i], W, out=acts[i + 1])

    def backward():
        for i in range(len(Ws) - 1, -1, -1):
            xp.matmul(acts[i].T, dxs[i + 1], out=dWs[i])
            if i:
                xp.matmul(dxs[i + 1], Ws[i].T, out=dxs[i])

    return {"forward": forward, "backward": backward, "step": lambda: (forward(), backward())}


def torch_step(sizes, batch, device, rng, weights):
    """``({phase: callable}, epoch)`` for the same network in PyTorch, from gpunet's ``weights``."""
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
    opt, loss_fn = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9), torch.nn.CrossEntropyLoss()
    out = net(X)

    def backward():  # through the graph of one forward, kept
        for p in net.parameters():
            p.grad = None
        loss_fn(out, y).backward(retain_graph=True)

    def step(xb=X, yb=y):
        opt.zero_grad(set_to_none=True)
        value = loss_fn(net(xb), yb)
        value.backward()
        opt.step()
        return value.detach()

    def epoch(X_host, y_host):  # as fit: one shuffle per epoch, slices, the losses read once at the end
        Xd, yd = torch.as_tensor(X_host, device=device), torch.as_tensor(y_host, device=device)

        def run():
            order = torch.randperm(len(yd), device=device)
            Xe, ye = Xd[order], yd[order]
            return torch.stack([step(Xe[s:s + batch], ye[s:s + batch]) for s in range(0, len(ye), batch)]).cpu()
        return run

    return {"forward": lambda: net(X), "backward": backward, "step": step}, epoch


def measure(impl, device, phases, clock, sizes, batch, args, epoch=None, data=None, skipped=None) -> dict:
    """One row: the phases' median seconds, step GFLOP/s and, given ``epoch``, the epoch's samples/s."""
    row = {"shape": "-".join(map(str, sizes)), "batch": batch, "device": device, "impl": impl}
    row.update({p: timed(phases[p], clock, args.repeats) for p in PHASES})
    row.update(step_gflops=step_flops(sizes, batch) / row["step"] / 1e9, epoch_rows=None, epoch_samples_per_s=None)
    estimate = row["step"] * -(-len(data[1]) // batch) if data else 0
    if epoch and device == "cpu" and estimate > args.cpu_epoch_limit:
        skipped.append({**{k: row[k] for k in ("shape", "batch", "device", "impl")}, "what": "epoch",
                        "why": f"estimated {estimate:.0f} s > --cpu-epoch-limit {args.cpu_epoch_limit:g} s"})
    elif epoch:  # one warm-up epoch, then the median of 1 to 3
        try:
            seconds = timed(epoch(*data), clock, min(3, args.repeats), warmup=1, least=1)
        except gn.NonFiniteLossError as exc:  # random labels can diverge; the timing is then meaningless
            skipped.append({**{k: row[k] for k in ("shape", "batch", "device", "impl")}, "what": "epoch",
                            "why": f"training diverged ({str(exc).split('.')[0]})"})
            return row
        row.update(epoch_rows=len(data[1]), epoch_samples_per_s=len(data[1]) / seconds)
    return row


def bench_device(device, sizes, batch, args, torch, skipped) -> list:
    """Rows for one shape x batch on ``device`` ("cpu" or "cuda"): gpunet (and unfused on CUDA), torch, floor."""
    rng, cpu = np.random.default_rng(0), device == "cpu"
    clock = clock_for("cpu" if cpu else "cupy")
    n = min(args.rows, args.max_steps * batch)
    data = (rng.standard_normal((n, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], n))
    model, phases, epoch = gpunet_step(sizes, batch, device, rng)
    weights = model.get_weights()
    for _ in range(2):  # the first steps allocate (and first touch) workspaces, scratch arrays and the momentum
        clock(phases["step"])
    first = clock(phases["step"])
    if cpu and first > args.cpu_step_limit:
        why = f"a step takes {first:.2f} s > --cpu-step-limit {args.cpu_step_limit:g} s"
        skipped.append({"shape": "-".join(map(str, sizes)), "batch": batch, "device": device, "impl": "all",
                        "what": "rows", "why": why})
        return []
    common = (sizes, batch, args)
    with np.errstate(all="ignore"):
        rows = [measure("gpunet", device, phases, clock, *common, epoch, data, skipped)]
        if not cpu:
            _, unfused, unfused_epoch = gpunet_step(sizes, batch, device, rng, fused=False)
            rows.append(measure("gpunet-unfused", device, unfused, clock, *common, unfused_epoch, data, skipped))
    if torch is not None and (cpu or torch.cuda.is_available()):
        t_phases, t_epoch = torch_step(sizes, batch, device, rng, weights)
        t_clock = clock if cpu else clock_for("torch")
        rows.append(measure("torch", device, t_phases, t_clock, *common, t_epoch, data, skipped))
    xp = np if cpu else __import__("cupy")
    rows.append(measure("floor", device, floor_step(sizes, batch, xp, rng), clock, *common))
    torch_s = next((r["step"] for r in rows if r["impl"] == "torch"), None)
    for r in rows:  # ratios on the same shape, batch and device
        r["step_over_floor"] = r["step"] / rows[-1]["step"]
        r["step_over_torch"] = r["step"] / torch_s if torch_s and r["impl"].startswith("gpunet") else None
    return rows


def gpu_vs_cpu(rows) -> tuple[list, dict]:
    """gpunet's CPU/CUDA speedups per shape and batch, and per shape the smallest batch where CUDA's step wins."""
    by = {(r["shape"], r["batch"], r["device"]): r for r in rows if r["impl"] == "gpunet"}
    speedups, crossover = [], {}
    for (shape, batch, device), gpu in by.items():
        cpu = by.get((shape, batch, "cpu"))
        if device != "cuda" or cpu is None:
            continue
        e_cpu, e_gpu = cpu["epoch_samples_per_s"], gpu["epoch_samples_per_s"]
        speedups.append({"shape": shape, "batch": batch, "cpu_step": cpu["step"], "cuda_step": gpu["step"],
                         "step_speedup": cpu["step"] / gpu["step"],
                         "epoch_speedup": e_gpu / e_cpu if e_cpu and e_gpu else None})
        best = crossover.get(shape)
        crossover[shape] = min(batch, best or batch) if gpu["step"] < cpu["step"] else best
    return speedups, crossover


def fmt(value, kind="ms") -> str:
    """Seconds as ms ("ms"), ratios ("x"), rates ("int"); "-" for None."""
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value * 1e3:.3f}" if value < 0.01 else f"{value * 1e3:.1f}"
    if kind == "x":
        return f"{value:.2g}" if value < 0.1 else f"{value:.2f}" if value < 10 else f"{value:,.0f}"
    return f"{value:,.0f}"


def print_report(rows, skipped, speedups, crossover, args) -> None:
    print(f"\nfloat32, median of up to {args.repeats} runs, threads={args.threads or 'all'}; "
          f"epoch: up to {args.rows} rows, at most {args.max_steps} batches\n")
    print("| shape | batch | device | forward (ms) | backward (ms) | step (ms) | step GFLOP/s | epoch (samples/s) | "
          "step / floor | step / torch |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['batch']} | {r['impl']} {r['device']} | "
              + " | ".join(fmt(r[p]) for p in PHASES)
              + f" | {fmt(r['step_gflops'], 'x')} | {fmt(r['epoch_samples_per_s'], 'int')} | "
                f"{fmt(r['step_over_floor'], 'x')} | {fmt(r['step_over_torch'], 'x')} |")
    for s in skipped:
        print(f"skipped on {s['device']}: {s['shape']} batch {s['batch']}, {s['impl']} {s['what']}: {s['why']}")
    if speedups:
        print("\ngpunet on CUDA vs on the CPU (speedup = CPU time / CUDA time)\n\n| shape | batch | CPU step (ms) | "
              "CUDA step (ms) | step speedup | epoch speedup |\n|---|---|---|---|---|---|")
        for s in speedups:
            print(f"| {s['shape']} | {s['batch']} | {fmt(s['cpu_step'])} | {fmt(s['cuda_step'])} | "
                  f"{fmt(s['step_speedup'], 'x')} | {fmt(s['epoch_speedup'], 'x')} |")
        print("\ncrossover, the smallest batch where gpunet's CUDA step beats its CPU step: "
              + "; ".join(f"{k}: {v or 'none measured'}" for k, v in crossover.items()))


def machine_info(args, torch) -> dict:
    cuda = gn.cuda_info()
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
            "gpunet": gn.__version__, "torch": getattr(torch, "__version__", None), "cupy": cuda.get("cupy"),
            "gpu": (cuda.get("devices") or [{}])[0].get("name"), "cuda": cuda, "loadavg": os.getloadavg()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads")} for p in threadpool_info()]
    return info


def plot(rows, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib); {path} not written", file=sys.stderr)
        return
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.8), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for name in dict.fromkeys(f"{r['impl']} {r['device']}" for r in rows):
            pts = [(r["batch"], r["step"] * 1e3) for r in rows if (r["shape"], f"{r['impl']} {r['device']}") ==
                   (shape, name)]
            if pts:
                ax.plot(*zip(*pts), marker="o", linestyle="--" if "floor" in name else "-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="train step (ms)", title=shape)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def int_list(sep: str):
    def parse(text: str) -> list:  # an argparse type: positive integers joined by sep
        values = [int(v) if v.strip().isdigit() else 0 for v in text.split(sep)]
        if min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected positive integers joined by {sep!r}; received {text!r}")
        return values
    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpunet bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, type=lambda t: [int_list("-")(s) for s in t.split(",")],
                        help=f"layer sizes joined by -, comma-separated (default {DEFAULT_SHAPES})")
    parser.add_argument("--batch", default="1,32,256,1024", type=int_list(","), help="(default 1,32,256,1024)")
    parser.add_argument("--quick", action="store_true", help="a small matrix: " + " ".join(QUICK))
    parser.add_argument("--threads", type=int, help="CPU threads for NumPy (threadpoolctl) and PyTorch")
    parser.add_argument("--repeats", type=int, default=30, help="most timed runs per measurement (default 30)")
    parser.add_argument("--rows", type=int, default=8192, help="rows of the epoch's data set (default 8192)")
    parser.add_argument("--max-steps", type=int, default=256, help="most batches in a timed epoch (default 256)")
    parser.add_argument("--cpu-step-limit", type=float, default=0.25, help="seconds (default 0.25)")
    parser.add_argument("--cpu-epoch-limit", type=float, default=4.0, help="seconds (default 4)")
    parser.add_argument("--kernels-log2n", type=int, default=26,
                        help="elements (2^N) of the fused-kernel bandwidth table, on a GPU (default 26)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the fused-kernel bandwidth table")
    parser.add_argument("--json", metavar="PATH", help="write every raw number and the machine's description")
    parser.add_argument("--plot", metavar="PNG", help="step time vs batch per shape (needs matplotlib)")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    argv = argv[1:] if argv[:1] == ["--"] else argv  # also `gpunet bench -- --threads 2`
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args(argv + QUICK)
    if min(map(len, args.shapes)) < 2 or min(args.repeats, args.rows, args.max_steps, args.threads or 1) < 1:
        parser.error("shapes need 2+ sizes; --repeats, --rows, --max-steps and --threads must be positive")
    if args.kernels_log2n < 10:
        parser.error("--kernels-log2n must be at least 10")

    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed: no torch rows")
    limits = contextlib.ExitStack()
    if args.threads:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            parser.error("--threads needs threadpoolctl (pip install threadpoolctl)")
        limits.enter_context(threadpool_limits(args.threads))
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        if args.threads:
            limits.callback(torch.set_num_threads, torch.get_num_threads())
            torch.set_num_threads(args.threads)
    cuda_ok, why = gn.cuda_available()
    print(f"GPU: {why}" if cuda_ok else f"GPU part skipped: {why}")
    if (load := os.getloadavg()[0]) > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} before the start: other processes share the CPU, so CPU timings "
              f"(PyTorch's thread pool above all) may be distorted")

    rows, skipped, start = [], [], time.perf_counter()
    with limits:
        for sizes in args.shapes:
            for batch in args.batch:
                for device in ("cpu", "cuda") if cuda_ok else ("cpu",):
                    rows += bench_device(device, sizes, batch, args, torch, skipped)
        info = machine_info(args, torch)
    speedups, crossover = gpu_vs_cpu(rows)
    print_report(rows, skipped, speedups, crossover, args)
    kernels = None
    if cuda_ok and not args.no_kernels:
        kernels = bench_kernels.measure(args.kernels_log2n, repeats=min(args.repeats, 20))
        bench_kernels.print_table(kernels)
    elif not args.no_kernels:
        print(f"\nfused-kernel bandwidth skipped: {why}")
    seconds = time.perf_counter() - start
    print(f"\nbenchmark took {seconds:.0f} s")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "plot")}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": info, "settings": settings, "seconds": seconds, "rows": rows, "skipped": skipped,
                       "gpu_vs_cpu": speedups, "crossover": crossover, "kernels": kernels}, handle, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
