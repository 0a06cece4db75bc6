#!/usr/bin/env bash
# The whole GPU session in one command, for a lent GPU machine (see /work/.library/device/README.md):
#   run(command="bash scripts/gpu_run.sh", carry=[".whl"])
# Installs the carried pure-Python wheels (array-api-compat, array-api-strict; the machine has NumPy, CuPy, torch,
# pytest), runs the whole test suite (CuPy parameters included), then the device comparisons. Logs go to $OUT.
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

python3 -m pytest -q -p no:cacheprovider -n 8 2>&1 | tee "$OUT/tests.log" | tail -6
python3 scripts/bench_kernels.py 2>&1 | tee "$OUT/kernels.log" | tail -26
python3 scripts/train_digits.py --device cuda --repeats 3 2>&1 | tee "$OUT/digits.log" | tail -6
python3 scripts/bench_step.py --shapes "${BENCH_SHAPES:-2-3-2,64-128-10,784-512-256-10,784-1024-1024-10,4096-4096-4096-10}" \
  --batch "${BENCH_BATCH:-1,32,256,1024}" --no-kernels --json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | tee "$OUT/bench.log" | tail -45
