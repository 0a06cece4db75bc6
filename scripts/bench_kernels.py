"""Bandwidth of every fused CuPy kernel against the device's copy bandwidth and the unfused CuPy expression.

    python scripts/bench_kernels.py                  # needs CuPy and a GPU; says why not otherwise
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

import gpunet as gn
from gpunet import activations


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


def cases(ops, xp, cupy, n, dtype):
    """(name, bytes moved, callable) for every fused step, with the inputs made once."""
    rand = lambda: cupy.random.standard_normal(n, dtype=dtype)  # noqa: E731
    x, dy, t = rand(), rand(), cupy.random.uniform(0, 1, n).astype(dtype)
    p = cupy.random.uniform(0.01, 0.99, n).astype(dtype)
    P, m, v, buf = rand(), cupy.zeros(n, dtype), cupy.zeros(n, dtype), rand()
    b = cupy.zeros(1, dtype)
    item = cupy.dtype(dtype).itemsize
    out = []
    for act in (activations.ReLU(), activations.Sigmoid(), activations.GELU(), activations.SiLU()):
        z = rand()
        writes = 2 if act.uses_input else 1  # the pre-activation is kept for backward
        out.append((f"{act.name}_fwd (bias+act)", (1 + writes) * n * item, lambda a=act, z=z: ops.bias_act(z, b, a)))
        out.append((f"{act.name}_bwd", 3 * n * item, lambda a=act: ops.act_grad(a, dy, x, x)))
    # the bias as the layers pass it: one per column of a (rows, 1024) batch, which CuPy indexes in 2-D
    z2, b2 = rand().reshape(-1, 1024), cupy.zeros(1024, dtype)
    out.append(("relu_fwd, (rows, 1024) + (1024,)", 2 * n * item, lambda: ops.bias_act(z2, b2, activations.ReLU())))
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log2n", type=int, default=26)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    ok, why = gn.cuda_available()
    if not ok:
        print(f"no GPU benchmark: {why}")
        return 0
    import array_api_compat.cupy as cxp
    import cupy

    from gpunet.ops import ops_for

    n = 1 << args.log2n
    src, dst = cupy.random.standard_normal(n, dtype=args.dtype), cupy.empty(n, args.dtype)
    copy_s = event_time(lambda: cupy.copyto(dst, src), args.repeats)
    copy_bw = 2 * n * src.itemsize / copy_s
    print(f"{why}; {n:,} {args.dtype} elements; copy bandwidth {copy_bw / 1e9:.0f} GB/s\n")
    # what a minimal ElementwiseKernel reaches: the ceiling for gpunet's kernels (CuPy's indexing, one element a thread)
    for label, kernel, arrays in [
            ("ElementwiseKernel y = x",
             cupy.ElementwiseKernel("T x", "T y", "y = x", name="gn_bench_copy"), (src, dst)),
            ("ElementwiseKernel in place x = a x",
             cupy.ElementwiseKernel("T a", "T x", "x = a * x", name="gn_bench_scale"), (1.0, dst))]:
        seconds = event_time(lambda: kernel(*arrays), args.repeats)
        print(f"{label}: {seconds * 1e3:.3f} ms, {2 * n * src.itemsize / seconds / copy_bw * 100:.0f}% of the copy")
    print()
    fused, plain = ops_for(cxp, fused=True), ops_for(cxp, fused=False)
    print("| kernel | first call (ms) | fused (ms) | fused GB/s | % of copy | unfused (ms) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for (name, nbytes, f_fused), (_, _, f_plain) in zip(cases(fused, cxp, cupy, n, args.dtype),
                                                        cases(plain, cxp, cupy, n, args.dtype)):
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        f_fused()
        cupy.cuda.Device().synchronize()
        first = time.perf_counter() - start
        t_fused, t_plain = event_time(f_fused, args.repeats), event_time(f_plain, args.repeats)
        print(f"| {name} | {first * 1e3:.1f} | {t_fused * 1e3:.3f} | {nbytes / t_fused / 1e9:.0f} | "
              f"{nbytes / t_fused / copy_bw * 100:.0f}% | {t_plain * 1e3:.3f} | {t_plain / t_fused:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
