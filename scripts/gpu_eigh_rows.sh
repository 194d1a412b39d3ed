#!/usr/bin/env bash
# GPU machine: the large-matrix eigh's panel grid (METALCORE_EIGH_BLOCK_ROWS rows per block) against
# torch (and the large svd's time, which runs the same reduction in float64), one process per setting (the knob is read once). Usage: bash scripts/gpu_eigh_rows.sh [rows...]
set -u
for r in "${@:-32 48 64}"; do
    METALCORE_EIGH_BLOCK_ROWS=$r python3 - "$r" <<'PY'
import sys
import torch
sys.path.insert(0, "scripts")
import cuda_timing
import metalcore as mc

torch.manual_seed(0)
out = []
for n in [1024, 2048, 4096]:
    g = torch.randn(n, n, device="cuda", dtype=torch.float64)
    a = (g + g.mT).float()
    L, V = mc.eigh(a)
    a64 = a.double()
    rec = ((V.double() * L.double()) @ V.double().mT - a64).norm() / a64.norm()
    t = cuda_timing.med(lambda: mc.eigh(a), 20, warmup=2)
    tt = cuda_timing.med(lambda: torch.linalg.eigh(a), 20, warmup=2)
    out.append(f"{n}: {t:.2f} vs torch {tt:.2f} (rec {rec:.1e})")
for n in [1024, 4096]:
    a = torch.randn(n, n, device="cuda")
    t = cuda_timing.med(lambda: mc.svd(a), 10, warmup=2)
    out.append(f"svd {n}: {t:.2f}")
print(f"rows {sys.argv[1]}: " + "; ".join(out), flush=True)
PY
done
