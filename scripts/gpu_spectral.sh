#!/usr/bin/env bash
# One GPU call for the batched SVD/eigh kernels: their CUDA tests, memcheck of the register
# (lane-per-column) kernel, device times and sweeps against torch (with COMPARE=1 also without
# it: METALCORE_JACOBI_LANE_MAX=1 keeps only n = 1 on it), and the spectral benchmark table. Run from
# the repository root on the GPU machine after ./dev.sh wheel here; output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 260 python3 -m pytest -q -x -p no:cacheprovider tests/test_spectral.py tests/test_linalg.py -k "cuda" > "$OUT/pytest-spectral.log" 2>&1; tail -15 "$OUT/pytest-spectral.log"
timeout 100 compute-sanitizer --tool memcheck python3 -c "
import torch, metalcore as mc
for m, n in ((16, 16), (32, 32), (20, 7), (5, 5), (64, 64), (50, 40)):
    for dt in (torch.float32, torch.float64):
        a = torch.randn(37, m, n, device='cuda', dtype=dt); mc.svd(a); mc.svdvals(a)
        if m == n and n <= 32: mc.eigh(a + a.mT); mc.eigvalsh(a + a.mT)
torch.cuda.synchronize(); print('memcheck run done')
" 2>&1 | tail -2
timeout 120 python3 scripts/profile_linalg.py svd eigh 2>&1 | tee "$OUT/profile-spectral.txt"
if [ "${COMPARE:-0}" = 1 ]; then
  echo "--- METALCORE_JACOBI_LANE_MAX=1 (the shared-memory kernels only)"
  METALCORE_JACOBI_LANE_MAX=${LANE_MAX:-1} timeout 150 python3 scripts/profile_linalg.py svd eigh 2>&1 | grep -E "^(svd|eigh)" | head -8
fi
timeout 150 python3 -m metalcore.bench --device cuda --op spectral --out "$OUT" > "$OUT/bench-spectral.log" 2>&1
grep "^| " "$OUT"/spectral-cuda-*.md | cut -c1-120
