"""Batched QR, Cholesky and LU solve on CUDA past 32 rows (the block-per-matrix kernels): median
ms per call (CUDA events, after warm-up) for each setting of the kernel knobs (read once per
process, so one subprocess each), with torch.linalg in the same process. Run on the GPU machine:
python3 scripts/time_linalg_warps.py "" "METALCORE_LINALG_WARPS=4" "METALCORE_LINALG_WARPS=8" ...
(each argument: space-separated VAR=value settings; "" runs the defaults)."""

import sys

from knob_runs import run_settings

CHILD = r"""
import torch, metalcore as mc
from metalcore.bench.cli import time_ms
g = torch.Generator().manual_seed(0)
def med(f, reps=25):
    return time_ms(lambda i: f(), "cuda", warmup=3, reps=reps, min_time=0.0, batch=1)
for op, b, m, n, k in [("qr", 100, 64, 64, 0), ("qr", 100, 128, 64, 0), ("qr", 100, 128, 128, 0),
                       ("cholesky", 100, 64, 64, 0), ("cholesky", 1000, 128, 128, 0), ("cholesky", 100, 96, 96, 0),
                       ("solve", 100, 64, 64, 1), ("solve", 100, 128, 128, 16), ("solve", 1000, 96, 96, 1),
                       ("qr", 1000, 96, 96, 0), ("qr", 500, 128, 64, 0), ("qr", 300, 128, 128, 0),
                       ("solve", 1000, 128, 128, 1), ("solve", 300, 128, 128, 16), ("solve", 200, 96, 96, 1)]:
    x = torch.randn(b, m, n, generator=g).cuda()
    if op == "qr":
        ours, theirs = (lambda: mc.qr(x)), (lambda: torch.linalg.qr(x))
    else:
        a = x @ x.mT + n * torch.eye(n, device="cuda")
        r = torch.randn(b, n, k, generator=g).cuda()
        if op == "cholesky":
            ours, theirs = (lambda: mc.cholesky(a)), (lambda: torch.linalg.cholesky(a))
        else:
            ours, theirs = (lambda: mc.solve(a, r)), (lambda: torch.linalg.solve(a, r))
    print(f"{op} {b}x{m}x{n}" + (f" k={k}" if k else "") + f": metalcore {med(ours):.3f} ms, torch {med(theirs, 10):.3f} ms", flush=True)
"""

run_settings(CHILD, sys.argv[1:])
