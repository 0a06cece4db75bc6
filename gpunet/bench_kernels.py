"""Bandwidth of every fused CuPy kernel against the device's copy bandwidth and the unfused CuPy expression.

    gpunet bench                                     # runs this table too when a GPU is present
    python scripts/bench_kernels.py                  # this table alone; says why not without a GPU
    python scripts/bench_kernels.py --log2n 24 --dtype float64

Each kernel runs on 2^log2n elements; GB/s counts the fewest bytes it must move (each input read once, each output
written once). The copy bandwidth is a device-to-device ``cupy.copyto`` (read + write). Times are CUDA-event means
over ``--repeats`` runs after a warm-up; the first call, which compiles the kernel (or loads it from CuPy's disk
cache), is reported apart. Two minimal ElementwiseKernels (a copy, an in-place scale) show what CuPy's generated
loop itself reaches: the ceiling for gpunet's kernels, which are ElementwiseKernels too.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import gpunet as gn
from gpunet import activations


def cases(ops, xp, n: int, dtype) -> list:
    """``(name, bytes moved, callable)`` for every fused step of ``ops`` on ``n`` elements of namespace ``xp``, with
    the inputs made once (on the host, then moved)."""
    rng = np.random.default_rng(0)
    rand = lambda: xp.asarray(rng.standard_normal(n).astype(dtype))  # noqa: E731
    x, dy, t = rand(), rand(), xp.asarray(rng.uniform(0, 1, n).astype(dtype))
    p = xp.asarray(rng.uniform(0.01, 0.99, n).astype(dtype))
    P, m, v, buf = rand(), xp.zeros(n, dtype=x.dtype), xp.zeros(n, dtype=x.dtype), rand()
    b = xp.zeros(1, dtype=x.dtype)
    item = np.dtype(dtype).itemsize
    out = []
    for act in (activations.ReLU(), activations.Sigmoid(), activations.GELU(), activations.SiLU()):
        z = rand()
        writes = 2 if act.uses_input else 1  # the pre-activation is kept for backward
        out.append((f"{act.name}_fwd (bias+act)", (1 + writes) * n * item, lambda a=act, z=z: ops.bias_act(z, b, a)))
        out.append((f"{act.name}_bwd", 3 * n * item, lambda a=act: ops.act_grad(a, dy, x, x)))
    # the bias as the layers pass it: one per column of a (rows, 1024) batch, which CuPy indexes in 2-D
    z2, b2 = xp.reshape(rand(), (-1, 1024)), xp.zeros(1024, dtype=x.dtype)
    out.append(("relu_fwd, (rows, 1024) + (1024,)", 2 * n * item, lambda: ops.bias_act(z2, b2, activations.ReLU())))
    # the same in-place forward with float4 loads/stores in a grid-stride loop (kernels/vectorized.cuh, a RawKernel):
    # whether CuPy's one-element-per-thread loop is what holds the in-place kernels at ~56% of the copy
    for act in (activations.ReLU(), activations.Sigmoid()):
        z4 = xp.reshape(rand(), (-1, 1024))
        if hasattr(ops, "bias_act_vec4") and np.dtype(dtype) == np.float32:
            fn = lambda a=act, z=z4: ops.bias_act_vec4(z, b2, a.name, a.kernel_arg())  # noqa: E731
        else:  # (the unfused comparison row)
            fn = lambda a=act, z=z4: ops.bias_act(z, b2, a)  # noqa: E731
        out.append((f"{act.name}_fwd vec4 RawKernel, (rows, 1024)", 2 * n * item, fn))
    out += [
        ("huber (loss+grad)", 4 * n * item, lambda: ops.huber(x, dy, 1.0, 1.0 / n)),
        ("bce_logits (loss+grad)", 4 * n * item, lambda: ops.bce_logits(x, t, 1.0 / n)),
        ("cce_softmax (loss+grad)", 4 * n * item, lambda: ops.xent_combined(p, t, 1.0 / n, binary=False)),
        ("sgd momentum", 5 * n * item, lambda: ops.sgd_update(P, dy, buf, lr=1e-3, momentum=0.9, dampening=0.0,
                                                              nesterov=False, weight_decay=0.0)),
        ("adam", 7 * n * item, lambda: ops.adam_update(P, dy, m, v, None, step=1, lr=1e-3, beta1=0.9, beta2=0.999,
                                                       eps=1e-8, weight_decay=0.0, decoupled=False)),
    ]
    return out


def event_time(fn, repeats: int) -> float:
    """Mean seconds per call of ``fn`` measured with CUDA events, after one warm-up call."""
    import cupy

    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / repeats / 1e3


def measure(log2n: int = 26, dtype: str = "float32", repeats: int = 20) -> dict:
    """Every number of the table (needs CuPy and a GPU): ``{"elements", "dtype", "copy_gb_per_s", "ceiling": [...],
    "kernels": [...]}``; times in ms."""
    import array_api_compat.cupy as cxp
    import cupy

    from gpunet.backend import ops_for

    n = 1 << log2n
    src, dst = cupy.asarray(np.random.default_rng(1).standard_normal(n).astype(dtype)), cupy.empty(n, dtype)
    copy_s = event_time(lambda: cupy.copyto(dst, src), repeats)
    copy_bw = 2 * n * src.itemsize / copy_s
    ceiling = []
    for label, kernel, arrays in [
            ("ElementwiseKernel y = x", cupy.ElementwiseKernel("T x", "T y", "y = x", name="gn_bench_copy"),
             (src, dst)),
            ("ElementwiseKernel in place x = a x", cupy.ElementwiseKernel("T a", "T x", "x = a * x",
                                                                          name="gn_bench_scale"), (1.0, dst))]:
        seconds = event_time(lambda k=kernel, a=arrays: k(*a), repeats)
        ceiling.append({"kernel": label, "ms": seconds * 1e3, "percent_of_copy": 200 * n * src.itemsize / seconds
                        / copy_bw})
    kernels = []
    for name, nbytes, f_fused in cases(ops_for(cxp, fused=True), cxp, n, dtype):
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        f_fused()
        cupy.cuda.Device().synchronize()
        first = time.perf_counter() - start
        t_fused = event_time(f_fused, repeats)
        kernels.append({"kernel": name, "first_call_ms": first * 1e3, "fused_ms": t_fused * 1e3,
                        "fused_gb_per_s": nbytes / t_fused / 1e9, "percent_of_copy": 100 * nbytes / t_fused / copy_bw})
    # the unfused expressions after the fused inputs are freed: one case list at a time on the GPU
    for row, (_, _, f_plain) in zip(kernels, cases(ops_for(cxp, fused=False), cxp, n, dtype)):
        t_plain = event_time(f_plain, repeats)
        row.update(unfused_ms=t_plain * 1e3, speedup=t_plain / (row["fused_ms"] / 1e3))
    return {"elements": n, "dtype": dtype, "copy_gb_per_s": copy_bw / 1e9, "ceiling": ceiling, "kernels": kernels}


def print_table(result: dict) -> None:
    print(f"\nfused kernels: {result['elements']:,} {result['dtype']} elements; copy bandwidth "
          f"{result['copy_gb_per_s']:.0f} GB/s (device-to-device copy, read + write)\n")
    for c in result["ceiling"]:
        print(f"{c['kernel']}: {c['ms']:.3f} ms, {c['percent_of_copy']:.0f}% of the copy")
    print("\n| kernel | first call (ms) | fused (ms) | fused GB/s | % of copy | unfused (ms) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for k in result["kernels"]:
        print(f"| {k['kernel']} | {k['first_call_ms']:.1f} | {k['fused_ms']:.3f} | {k['fused_gb_per_s']:.0f} | "
              f"{k['percent_of_copy']:.0f}% | {k['unfused_ms']:.3f} | {k['speedup']:.1f}x |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log2n", type=int, default=26)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if args.log2n < 10:
        parser.error("--log2n must be at least 10 (one case is a (rows, 1024) batch)")
    ok, why = gn.cuda_available()
    if not ok:
        print(f"no GPU benchmark: {why}")
        return 0
    print(why)
    print_table(measure(args.log2n, args.dtype, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
