"""Captured (CUDA graph) against eager training steps, and the precision modes, on the GPU.

    python -m gpunet.bench_graphs --json graphs.json                # the issue-12 table; says why not without a GPU
    python -m gpunet.bench_graphs --shapes 784-512-256-10 --batch 256 --precisions float32

Rows, per shape x batch x precision (ReLU hidden layers, softmax + cce, SGD lr 1e-3 momentum 0.9, data on the
device): ``eager`` (``trainer._step`` on slices of the data, as ``fit(graph=False)`` runs them), ``graph`` (the
captured step, batch gather included, one ``Graph.launch`` per step, as ``fit(graph=True)`` runs them), ``floor``
(the step's matrix products alone through the same cuBLAS binding and precision, themselves captured in one graph,
so no launch overhead counts), ``torch`` (PyTorch CUDA's eager step on the same network, TF32 off for float32,
``torch.autocast`` for bf16/fp16) when torch is installed. All are CUDA-event means over ``--steps`` steps after a
warm-up epoch. Derived: graph / floor, graph / torch, eager / graph, the products' TFLOP/s over the whole graph step
and over the floor alone.

Targets of issue 12 (H100/H200): 784-512-256-10 b256 graph <= 1.3x the floor and <= 0.35x torch's eager step;
4096-4096-4096-10 b1024 bf16 >= 4x faster than float32 and its products at >= 50% of the chip's bf16 GEMM rate
(~990 TFLOP/s dense, so >= 495 TFLOP/s over the products).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import gpunet as gn
from gpunet.bench import LR, step_flops

DEFAULT_SHAPES = ["64-128-10:32", "784-512-256-10:256", "784-1024-1024-10:1024", "4096-4096-4096-10:1024"]
PEAK_TFLOPS = {"float32": 67.0, "tf32": 495.0, "bf16": 990.0, "fp16": 990.0}  # H100/H200 SXM dense


def event_clock(runtime=None):
    """``clock(fn, stream) -> seconds`` of ``fn()`` with CUDA events recorded on ``stream`` (None: the current)."""
    import cupy

    def clock(fn, stream=None):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) / 1e3
    return clock


def network(sizes, device, precision="float32"):
    layers = [gn.Dense(a, b, "relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    return gn.Sequential(layers + [gn.Dense(sizes[-2], sizes[-1], "softmax")], device=device, seed=0,
                         precision=precision)


def graph_and_eager(sizes, batch, steps, precision, device="cuda", runtime=None, clock=None, prepare=None):
    """``{"eager": s, "graph": s, "captures": n}`` per step for one shape; ``runtime``/``clock``/``prepare``
    (model -> None, e.g. host ops in tests) are injectable."""
    from gpunet import precision as precision_mod
    from gpunet.backend import graphs
    from gpunet.sources import ArraySource

    rng = np.random.default_rng(0)
    model = network(sizes, device, precision)
    if prepare is not None:
        prepare(model)
    trainer = model.trainer
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=LR, momentum=0.9))
    precision_mod.attach(model, precision)
    n = batch * steps
    X, Y, _ = trainer.prepare(rng.standard_normal((n, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], n))
    runtime = runtime or graphs.CupyRuntime()
    clock = clock or event_clock()
    with model.backend.activate():
        source = ArraySource(X, Y, None, batch, shuffle=True)
        captured = graphs.GraphEpochs(model, source, runtime)

        def graph_epoch(timed: bool):
            step = captured.begin_epoch()
            loop = lambda: [step(b) for b in range(steps)]  # noqa: E731
            if timed:
                with runtime.on(captured.stream):
                    seconds = clock(loop, captured.stream)
            else:
                loop()
            captured.end_epoch()
            return seconds / steps if timed else None

        graph_epoch(False)  # warm-up: compile, capture
        graph = graph_epoch(True)

        batches = source.epoch(trainer)
        eager_loop = lambda: [trainer._step(*batches(b)) for b in range(steps)]  # noqa: E731
        eager_loop()
        eager = clock(eager_loop) / steps
    return {"eager": eager, "graph": graph, "captures": captured.captures, "launches": captured.launches}


def floor(sizes, batch, precision, reps=20, runtime=None, clock=None, ops=None, xp=None):
    """Seconds of the step's products alone (forward x @ W, backward x^T @ dz and dz @ W^T but for the first
    layer) in ``precision`` through the cuBLAS binding, captured once and replayed ``reps`` times."""
    from gpunet.backend import graphs
    from gpunet.precision import Policy

    if xp is None:
        import array_api_compat.cupy as xp
    if ops is None:
        from gpunet.backend import ops_for

        ops = ops_for(xp)
    runtime = runtime or graphs.CupyRuntime()
    clock = clock or event_clock()
    rng = np.random.default_rng(0)
    policy = Policy(precision) if precision != "float32" else None
    low = (lambda a: a) if policy is None or policy.tf32 else \
        (lambda a: xp.astype(a, policy.low_dtype(xp)))  # noqa: E731
    f32 = lambda *shape: xp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    pairs = list(zip(sizes[:-1], sizes[1:]))
    Ws = [low(f32(a, b)) for a, b in pairs]
    acts = [low(f32(batch, a)) for a in sizes]
    grads = [low(f32(batch, a)) for a in sizes]
    outs = [f32(batch, b) for _, b in pairs]
    dWs, dxs = [f32(a, b) for a, b in pairs], [f32(batch, a) for a, _ in pairs]
    tf32 = precision == "tf32"

    def products():
        for i, W in enumerate(Ws):
            ops.matmul(acts[i], W, outs[i], **({"tf32": True} if tf32 else {}))
        for i in range(len(Ws) - 1, -1, -1):
            ops.matmul(acts[i].T, grads[i + 1], dWs[i], **({"tf32": True} if tf32 else {}))
            if i:
                ops.matmul(grads[i + 1], Ws[i].T, dxs[i], **({"tf32": True} if tf32 else {}))

    stream = runtime.stream()
    with runtime.on(stream):
        products()  # cuBLAS handle, workspace and heuristics before the capture
        runtime.synchronize(stream)
        out = []
        with runtime.capture(stream, runtime.memory_pool(), out):
            products()
        runtime.launch(out[0], stream)

        def replay():
            for _ in range(reps):
                runtime.launch(out[0], stream)

        return clock(replay, stream) / reps


def torch_step(sizes, batch, precision, steps):
    """PyTorch CUDA's eager step, seconds (None without torch): the same network, SGD momentum, autocast for
    bf16/fp16 (fp16 with a GradScaler), TF32 only for tf32."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    mods = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods[:-1]).cuda()
    opt, loss_fn = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9), torch.nn.CrossEntropyLoss()
    X = torch.randn(batch * steps, sizes[0], device="cuda")
    y = torch.randint(0, sizes[-1], (batch * steps,), device="cuda")
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def epoch():
        for s in range(0, batch * steps, batch):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=low, enabled=low is not None):
                loss = loss_fn(net(X[s:s + batch]), y[s:s + batch])
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

    epoch()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    epoch()
    stop.record()
    stop.synchronize()
    torch.backends.cuda.matmul.allow_tf32 = False
    return start.elapsed_time(stop) / 1e3 / steps


def run(shapes, precisions, steps, with_torch=True) -> list[dict]:
    rows = []
    for spec in shapes:
        shape, batch = spec.split(":")
        sizes, batch = [int(s) for s in shape.split("-")], int(batch)
        wide = max(sizes) >= 4096
        for precision in precisions if wide else ["float32"]:
            times = graph_and_eager(sizes, batch, steps, precision)
            fl = floor(sizes, batch, precision)
            peer = torch_step(sizes, batch, precision, steps) if with_torch else None
            flops = step_flops(sizes, batch)
            rows.append({"shape": shape, "batch": batch, "precision": precision, "eager_ms": times["eager"] * 1e3,
                         "graph_ms": times["graph"] * 1e3, "floor_ms": fl * 1e3,
                         "torch_eager_ms": None if peer is None else peer * 1e3,
                         "graph_over_floor": times["graph"] / fl, "eager_over_graph": times["eager"] / times["graph"],
                         "graph_over_torch": None if peer is None else times["graph"] / peer,
                         "step_tflops": flops / times["graph"] / 1e12, "floor_tflops": flops / fl / 1e12,
                         "floor_percent_of_peak": 100 * flops / fl / 1e12 / PEAK_TFLOPS[precision],
                         "captures": times["captures"]})
            print(_line(rows[-1]), flush=True)
    for row in rows:  # bf16 (and the others) against float32 at the same shape
        base = next((r for r in rows if r["shape"] == row["shape"] and r["batch"] == row["batch"]
                     and r["precision"] == "float32"), None)
        row["speedup_vs_float32"] = None if base is None else base["graph_ms"] / row["graph_ms"]
    return rows


def _line(r) -> str:
    torch = "-" if r["torch_eager_ms"] is None else f"{r['torch_eager_ms']:.3f}"
    ratio = "-" if r["graph_over_torch"] is None else f"{r['graph_over_torch']:.2f}x"
    return (f"| {r['shape']} | {r['batch']} | {r['precision']} | {r['eager_ms']:.3f} | {r['graph_ms']:.3f} | "
            f"{r['floor_ms']:.3f} | {torch} | {r['graph_over_floor']:.2f}x | {ratio} | {r['step_tflops']:.1f} | "
            f"{r['floor_tflops']:.1f} ({r['floor_percent_of_peak']:.0f}%) |")


HEADER = ("| shape | batch | precision | eager (ms) | graph (ms) | floor (ms) | torch eager (ms) | graph / floor | "
          "graph / torch | step TFLOP/s | floor TFLOP/s (% of peak) |\n|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="SHAPE:BATCH,...")
    parser.add_argument("--precisions", default="float32,tf32,bf16,fp16")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ok, why = gn.cuda_available()
    if not ok:
        print(f"no GPU benchmark: {why}")
        return 0
    print(why)
    print(HEADER)
    rows = run(args.shapes.split(","), args.precisions.split(","), args.steps, with_torch=not args.no_torch)
    for r in rows:
        if r["speedup_vs_float32"] is not None and r["precision"] != "float32":
            print(f"{r['shape']} b{r['batch']} {r['precision']}: {r['speedup_vs_float32']:.2f}x float32's graph step")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
