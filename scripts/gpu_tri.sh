#!/usr/bin/env bash
# One GPU call for the tridiagonal eigh kernel: the spectral CUDA tests, compute-sanitizer
# (memcheck, racecheck, synccheck) on small batches, then times against Jacobi and torch for a
# few knob settings (scripts/time_eigh_tri.py). Run from the repository root on the GPU machine
# after ./dev.sh wheel here; output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --target /tmp/site dist/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${PYTEST_S:-200} python3 -m pytest -q -x -p no:cacheprovider tests/test_spectral.py -k "cuda" > "$OUT/pytest-spectral.log" 2>&1; tail -25 "$OUT/pytest-spectral.log"
PROG="
import torch, metalcore as mc
for n in (33, 48, 64, 100):
    for dt in (torch.float32, torch.float64):
        a = torch.randn(3, n, n, device='cuda', dtype=dt); a = a + a.mT
        a[1] = torch.eye(n, device='cuda', dtype=dt)
        mc.eigh(a)
torch.cuda.synchronize(); print('sanitized run done')
"
for tool in memcheck racecheck synccheck; do
  echo "--- $tool"
  timeout ${SAN_S:-120} compute-sanitizer --tool $tool python3 -c "$PROG" 2>&1 | tail -4
done
timeout ${TIME_S:-240} python3 scripts/time_eigh_tri.py "${@:-}"
