"""`gpunet bench --quick` end to end: the report's structure, never its speed (timings are noisy)."""

import json

import pytest

from gpunet import bench

pytest.importorskip("matplotlib")


def test_quick_bench_writes_table_json_and_plot(tmp_path, capsys):
    assert bench.main(["--quick", "--repeats", "2", "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png"]) == 0
    out = capsys.readouterr().out
    assert "| shape | batch | device | forward (ms) | backward (ms) | step (ms) |" in out
    assert "GPU part skipped:" in out or "GPU:" in out

    report = json.loads((tmp_path / "b.json").read_text())
    assert {"machine", "settings", "rows", "skipped", "gpu_vs_cpu", "crossover", "kernels"} <= report.keys()
    if "GPU part skipped:" in out:
        assert "fused-kernel bandwidth skipped:" in out and report["kernels"] is None
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["numpy"]
    rows = report["rows"]
    assert {(r["shape"], r["batch"]) for r in rows} == {(s, b) for s in ("2-3-2", "64-128-10") for b in (1, 32)}
    for row in rows:
        assert row["device"] in ("cpu", "cuda") and row["impl"] in ("gpunet", "gpunet-unfused", "torch", "floor")
        assert all(row[phase] > 0 for phase in bench.PHASES), row
        assert row["step_gflops"] > 0 and row["step_over_floor"] > 0
        if row["impl"] != "floor" and row["epoch_samples_per_s"] is not None:
            assert row["epoch_samples_per_s"] > 0 and row["epoch_rows"] > 0
    impls = {(r["impl"], r["device"]) for r in rows}
    assert {("gpunet", "cpu"), ("floor", "cpu")} <= impls
    if report["machine"]["torch"]:
        assert ("torch", "cpu") in impls
    assert (tmp_path / "b.png").stat().st_size > 0


def test_step_flops_counts_the_matrix_products():
    # forward 2*n*in*out per layer; backward dW for every layer, dx for all but the first
    assert bench.step_flops([4, 3, 2], 5) == 2 * 5 * (4 * 3 * 2 + 3 * 2 * 3)


def test_bad_shape_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--shapes", "784-x-10"])
    assert exc.value.code == 2 and "positive integers" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["host_fused_kernels", "reference"])
def test_kernel_cases_run_and_count_bytes(which):
    """The kernel table's cases on the host: CupyOps over the host stand-in of ElementwiseKernel, and the reference
    ops (the unfused column); every case runs and counts at least a read and a write of each element."""
    import sys
    from pathlib import Path

    import array_api_compat.numpy as anp

    from gpunet.bench_kernels import cases
    from gpunet.backend.cuda_ops import CupyOps
    from gpunet.backend import Ops

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from host_kernel import HostElementwiseKernel, HostRawKernel

    ops = CupyOps(anp, elementwise_kernel=HostElementwiseKernel, raw_kernel=HostRawKernel) \
        if which == "host_fused_kernels" else Ops(anp)
    n = 1 << 12
    table = cases(ops, anp, n, "float32")
    # arrays each case must move at least: read z + write it (+ write y when z is kept); dy, y in, dz out;
    # prediction, target in, loss, grad out; p, g, buf in, p, buf out; p, g, m, v in, p, m, v out
    arrays = {"relu_fwd (bias+act)": 2, "sigmoid_fwd (bias+act)": 2, "gelu_fwd (bias+act)": 3,
              "silu_fwd (bias+act)": 3, "relu_bwd": 3, "sigmoid_bwd": 3, "gelu_bwd": 3, "silu_bwd": 3,
              "relu_fwd, (rows, 1024) + (1024,)": 2, "huber (loss+grad)": 4, "bce_logits (loss+grad)": 4,
              "cce_softmax (loss+grad)": 4, "sgd momentum": 5, "adam": 7,
              "relu_fwd vec4 RawKernel, (rows, 1024)": 2, "sigmoid_fwd vec4 RawKernel, (rows, 1024)": 2}
    assert {name: nbytes / (n * 4) for name, nbytes, _ in table} == arrays
    for _, _, call in table:
        call()


def test_graph_benchmark_runs_on_the_fake_cuda():
    """gpunet/bench_graphs.py's measurements, on the host: the CuPy ops over the kernel stand-in and the fake
    capture (tests/fake_cuda.py), timed by perf_counter. Checks the code paths (the timings mean nothing here)."""
    import sys
    import time
    from pathlib import Path

    import array_api_compat.numpy as anp

    from gpunet import bench_graphs
    from gpunet.backend.cuda_ops import CupyOps

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_cuda import FakeCuda

    fake = FakeCuda()
    ops = CupyOps(anp, elementwise_kernel=fake.kernel, gemm=fake.gemm())

    def clock(fn, stream=None):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def prepare(model):
        for layer in model.layers:
            layer.ops = ops

    for precision in ("float32", "bf16", "fp16", "tf32"):
        times = bench_graphs.graph_and_eager([8, 16, 4], 8, 5, precision, device="cpu", runtime=fake, clock=clock,
                                             prepare=prepare)
        assert times["captures"] == 1 and times["launches"] == 2 * 5 - 1 and times["graph"] > 0 < times["eager"]
        assert bench_graphs.floor([8, 16, 4], 8, precision, reps=3, runtime=fake, clock=clock, ops=ops, xp=anp) > 0
    assert "no GPU benchmark" in _run_main(bench_graphs.main)


def _run_main(main):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([]) == 0
    return out.getvalue()
