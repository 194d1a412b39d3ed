#!/usr/bin/env bash
# The session's closing GPU call (run from the repository root on the GPU machine after
# ./dev.sh wheel here): the whole pytest suite on CUDA and CPU tensors, then the benchmark
# tables of the ops given as arguments (default: linalg spectral). Output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/gpu.txt"
timeout 420 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest-cuda.log" | tail -4
for op in "${@:-linalg spectral}"; do
  for o in $op; do
    timeout 150 python3 -m metalcore.bench --device cuda --op "$o" --out "$OUT" > "$OUT/bench-$o.log" 2>&1
    grep "^| " "$OUT"/"$o"-cuda-*.md | cut -c1-130
  done
done
