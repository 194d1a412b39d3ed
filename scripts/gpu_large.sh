#!/usr/bin/env bash
# One GPU call for the large-matrix paths (blocked Cholesky, cuBLAS triangular solves): their CUDA
# tests, memcheck of a blocked Cholesky, timings against torch.linalg (with each trailing update,
# METALCORE_CHOL_UPDATE=0/1/2, and METALCORE_CHOL_NB=64 too), and the linalg benchmark table. Run from the repository root on
# the GPU machine after ./dev.sh wheel here; output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/test_linalg.py -k "cuda" -x 2>&1 | tail -3 | tee "$OUT/pytest-linalg.log"
timeout 120 compute-sanitizer --tool memcheck python3 -c "
import torch, metalcore as mc, metalcore.linalg as ml
ml.BLOCKED_CHOLESKY = True
for n, dt in ((300, torch.float32), (300, torch.float64)):
    g = torch.randn(2, n, n, device='cuda', dtype=dt); a = g @ g.mT + n * torch.eye(n, device='cuda', dtype=dt)
    for up in (False, True): L = mc.cholesky(a, upper=up); mc.cholesky_solve(torch.ones(2, n, 3, device='cuda', dtype=dt), L, upper=up)
torch.cuda.synchronize(); print('memcheck run done')
" 2>&1 | tail -2
python3 scripts/time_large.py --profile "$@" 2>&1 | tee "$OUT/time_large.txt" | grep -v "^-\{20\}" | cut -c1-60,100-175
for u in 0 1 2; do
    echo "--- METALCORE_CHOL_UPDATE=$u"
    METALCORE_CHOL_UPDATE=$u python3 scripts/time_large.py "$@" 2>&1 | tee "$OUT/time_large_u$u.txt" | tail -5
done
echo "--- METALCORE_CHOL_NB=64"; METALCORE_CHOL_NB=64 python3 scripts/time_large.py "$@" 2>&1 | tee "$OUT/time_large_nb64.txt" | tail -5
python3 -m metalcore.bench --device cuda --op linalg --out "$OUT" > "$OUT/bench-linalg.log" 2>&1
grep "^| " "$OUT"/linalg-cuda-*.md | cut -c1-120
