#!/usr/bin/env bash
# The GPU check in one command: on a machine with a CUDA GPU, put scalenmf and what it
# needs on the path, run the torch-backend tests (GPU ones included) and the GPU benchmark,
# and write the table. Bounded to about 8 minutes.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]            (default OUTDIR: ./gpu-check)
#
# A machine without a package index needs the wheels of scalenmf's dependencies that its
# Python lacks (dask, distributed, zarr, ...) in ./.whl: `bash benchmarks/gpu_wheels.sh`
# downloads them on a machine with one.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
py=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$py - <<'PY' | tee "$out/device.txt"
import torch, scalenmf
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
echo "== tests"
timeout 240 $py -m pytest -q -p no:cacheprovider tests/kernels/test_backend_torch.py 2>&1 | tee "$out/tests.txt"
echo "== benchmark"
timeout 300 $py benchmarks/bench_gpu.py --iters "${ITERS:-100}" --out "$out/gpu_table.md" \
    2>&1 | tee "$out/bench.txt"
