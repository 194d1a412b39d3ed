#!/usr/bin/env bash
# One GPU call of checks for the batched factorizations (run from the repository root on the GPU
# machine after ./dev.sh wheel here): the CUDA linalg tests, memcheck and racecheck of every
# kernel path, device times against torch, and the benchmark table. Output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_linalg.py tests/test_spectral.py -k "cuda" 2>&1 | tail -4 | tee "$OUT/pytest-linalg.log"
timeout 150 compute-sanitizer --tool memcheck python3 scripts/linalg_sanitize.py 2>&1 | tail -2
timeout 200 compute-sanitizer --tool racecheck --racecheck-report hazard python3 scripts/linalg_sanitize.py > "$OUT/racecheck.txt" 2>&1; tail -1 "$OUT/racecheck.txt"
python3 scripts/profile_linalg.py cholesky solve 2>&1 | tee "$OUT/profile.txt"
python3 -m metalcore.bench --device cuda --op linalg --out "$OUT" > "$OUT/bench-linalg.log" 2>&1
grep "^| " "$OUT"/linalg-cuda-*.md | cut -c1-120
