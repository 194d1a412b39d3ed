#!/usr/bin/env bash
# One GPU call for the blocked Cholesky with its look-ahead: its CUDA tests, memcheck, timings
# with and without the look-ahead (METALCORE_CHOL_LOOKAHEAD=0) and with the other trailing-update
# tile (METALCORE_CHOL_REST_TILE=128), with a profile of the 4096² call, then the linalg benchmark
# table. Run from the repository root on the GPU machine after ./dev.sh wheel here; output under
# $OUT. (METALCORE_CHOL_TRACE=1 python3 scripts/chol_one.py prints the kernels' phase clocks.)
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 METALCORE_CACHE_DIR=/tmp/mcache
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/test_linalg.py -k "cuda and cholesky" -x 2>&1 | tail -3 | tee "$OUT/pytest-chol.log"
timeout 120 compute-sanitizer --tool memcheck python3 -c "
import torch, metalcore as mc, metalcore.linalg as ml
ml.BLOCKED_CHOLESKY = True
for n in (300, 700):
    g = torch.randn(2, n, n, device='cuda'); a = g @ g.mT + n * torch.eye(n, device='cuda')
    for up in (False, True): mc.cholesky(a, upper=up)
torch.cuda.synchronize(); print('memcheck run done')
" 2>&1 | tail -2
python3 scripts/time_large.py --profile cholesky 2>&1 | tee "$OUT/time_ahead.txt" | grep -v "^-\{20\}" | cut -c1-60,100-175
echo "--- METALCORE_CHOL_LOOKAHEAD=0"
METALCORE_CHOL_LOOKAHEAD=0 python3 scripts/time_large.py cholesky 2>&1 | tee "$OUT/time_plain.txt" | tail -6
echo "--- METALCORE_CHOL_REST_TILE=128"
METALCORE_CHOL_REST_TILE=128 python3 scripts/time_large.py cholesky 2>&1 | tail -5
timeout 240 python3 -m metalcore.bench --device cuda --op linalg --out "$OUT" > "$OUT/bench-linalg.log" 2>&1
grep "cholesky" "$OUT"/linalg-cuda-*.md | cut -c1-120
