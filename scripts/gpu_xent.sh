#!/usr/bin/env bash
# One GPU call for the cross-entropy ops (run from the repository root on the GPU machine after
# ./dev.sh wheel here): their CUDA tests, the fused kernel's device time, and the benchmark table
# (with Liger when carried in .whl/).
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_cross_entropy.py -k cuda 2>&1 | tail -2 | tee "$OUT/pytest-xent.log"
python3 scripts/time_xent.py 2>&1 | tee "$OUT/time-xent.txt"
python3 -m metalcore.bench --device cuda --op xent --out "$OUT" > "$OUT/bench-xent.log" 2>&1
grep "^| " "$OUT"/xent-cuda-*.md | cut -d'|' -f2-7,10-14
