#!/usr/bin/env bash
# The whole GPU session in one command, for a lent GPU machine (see /work/.library/device/README.md), ~8 minutes:
#   run(command="bash scripts/gpu_run.sh", carry=[".whl"], timeout_s=600)      (typically ~5 minutes)
# Installs the carried pure-Python wheels (array-api-compat, array-api-strict, ml_dtypes if the machine lacks it;
# the machine has NumPy, CuPy, torch, pytest), then, each step bounded by `timeout` and logged under $OUT:
#   1. the whole suite (CuPy parameters, tests marked gpu: tests/test_cuda_graphs.py among them)   tests.log
#   2. eager vs captured steps, the products' floor, torch eager; fp32/tf32/bf16/fp16 at 4096-wide   graphs.json/.log
#   3. digits per precision on the GPU, and on the CPU with 2 threads (the comparison)    digits-*.log
#   4. the fused-kernel bandwidth table with the vectorised RawKernel rows                       kernels.log
#   5. one eager step with GPUNET_VECTORIZED=1 against the default, to decide that item           vectorized.log
# FULL=1 adds the old device comparison (bench_step.py, several minutes).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import gpunet, cupy, numpy; print('cuda:', gpunet.cuda_available(), 'cupy', cupy.__version__, 'numpy', numpy.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
python3 -c "import ml_dtypes; print('ml_dtypes', ml_dtypes.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"

# 1. tests (whole suite, ~1 min with 8 workers; tests/test_cuda_graphs.py's results listed apart)
timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 -rfEs 2>&1 | tee "$OUT/tests.log" | tail -8
grep -E "test_cuda_graphs|FAILED|ERROR" "$OUT/tests.log" | head -40 > "$OUT/tests-gpu.log"

# 2. the issue-12 table (each row: eager, graph, floor, torch)
timeout 150 python3 -m gpunet.bench_graphs --json "$OUT/graphs.json" 2>&1 | tee "$OUT/graphs.log"

# 3. digits: GPU per precision (graph="auto"), then the CPU with 2 threads
timeout 60 python3 scripts/train_digits.py --device cuda --repeats 3 2>&1 | tail -5 | tee "$OUT/digits-cuda-float32.log"
for p in bf16 fp16; do
  timeout 45 python3 scripts/train_digits.py --device cuda --repeats 3 --precision "$p" --no-torch 2>&1 | tail -4 | tee "$OUT/digits-cuda-$p.log"
done
timeout 45 python3 scripts/train_digits.py --device cuda --repeats 3 --graph off --no-torch 2>&1 | tail -4 | tee "$OUT/digits-cuda-eager.log"
timeout 45 python3 scripts/train_digits.py --device cpu --threads 2 --repeats 3 --no-torch 2>&1 | tail -4 | tee "$OUT/digits-cpu.log"

# 4. kernels
timeout 75 python3 scripts/bench_kernels.py 2>&1 | tee "$OUT/kernels.log" | tail -32

# 5. the vectorised forward inside a step (eager steps, where the kernel is one of ~20 launches; graphs: same)
for v in 0 1; do
  GPUNET_VECTORIZED=$v timeout 45 python3 -m gpunet.bench_graphs --shapes 784-1024-1024-10:1024,4096-4096-4096-10:1024 \
    --precisions float32 --no-torch 2>&1 | tail -3 | sed "s/^/vectorized=$v /" | tee -a "$OUT/vectorized.log"
done

if [ "${FULL:-0}" = 1 ]; then
  python3 scripts/bench_step.py --shapes "${BENCH_SHAPES:-64-128-10,784-512-256-10,784-1024-1024-10,4096-4096-4096-10}" \
    --batch "${BENCH_BATCH:-32,256,1024}" --no-kernels --json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | tee "$OUT/bench.log" | tail -45
fi
