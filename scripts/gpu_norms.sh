#!/usr/bin/env bash
# One GPU call for the row normalizations (run from the repository root on the GPU machine after
# ./dev.sh wheel here): their CUDA tests, the host-time profile, and the RMSNorm/LayerNorm tables.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl ${EXTRA_WHEELS:-} || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_rmsnorm.py tests/test_layernorm.py -k cuda 2>&1 | tail -2 | tee "$OUT/pytest-norms.log"
python3 scripts/host_profile_rmsnorm.py 2>&1 | head -16 | tee "$OUT/host_profile.txt"
for op in rmsnorm layernorm; do
    python3 -m metalcore.bench --device cuda --op $op --out "$OUT" > "$OUT/bench-$op.log" 2>&1
done
grep "^| " "$OUT"/rmsnorm-cuda-*.md | head -6 | cut -c1-250
grep "^| " "$OUT"/layernorm-cuda-*.md | head -6 | cut -c1-250
