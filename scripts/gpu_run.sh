#!/usr/bin/env bash
# Runs on the GPU machine (no Rust, no network), from the repository root, after `./dev.sh wheel`
# built dist/*.whl here. Installs the wheel (and any wheels carried in .whl/, e.g. liger-kernel),
# runs the whole pytest suite on CUDA and CPU tensors, then the GPU benchmark.
# Results go to $OUT (or bench/results when OUT is unset).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl ${EXTRA_WHEELS:-} || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
export PYTHONUNBUFFERED=1
python3 -m pytest tests -q -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest-gpu.log" | tail -25
python3 -m metalcore.bench --device cuda --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-gpu.log"
