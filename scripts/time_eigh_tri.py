"""Batched eigh on CUDA: median ms per call (CUDA events, after warm-up) of the issue's cases and
the largest errors against float64, for each setting of the kernel knobs (read once per process,
so one subprocess each), with torch.linalg.eigh in the same process. Run on the GPU machine:
python3 scripts/time_eigh_tri.py "METALCORE_EIGH_TRI=0" "" "METALCORE_TRI_WARPS=4" ...
(each argument: space-separated VAR=value settings; "" runs the defaults)."""

import sys

from knob_runs import run_settings

CHILD = r"""
import os, torch, metalcore as mc
from metalcore.bench.cli import time_ms
cases = [(1000, 32), (100, 64), (100, 128), (500, 100), (100, 96)]
g = torch.Generator().manual_seed(0)
def med(f, reps=25):  # one call between each pair of events
    return time_ms(lambda i: f(), "cuda", warmup=3, reps=reps, min_time=0.0, batch=1)
for b, n in cases:
    x = torch.randn(b, n, n, generator=g)
    x = (x + x.mT).cuda()
    L, V = mc.eigh(x)
    x64, L64, V64 = x.double(), L.double(), V.double()
    rec = ((V64 * L64.unsqueeze(-2)) @ V64.mT - x64).flatten(-2).norm(dim=-1) / x64.flatten(-2).norm(dim=-1)
    orth = (V64.mT @ V64 - torch.eye(n, dtype=torch.float64, device="cuda")).abs().amax()
    if os.environ.get("METALCORE_TRI_PROFILE") == "1":
        ph = V[:, 0, :7].double().mean(0).tolist()
        names = ["load", "reduce", "bisect", "vectors", "mgs", "backtr", "emit"]
        print(f"eigh {b}x{n}^2 cycles per phase: " + ", ".join(f"{k} {v / 1e3:.1f}k" for k, v in zip(names, ph)), flush=True)
        continue
    ours = med(lambda: mc.eigh(x))
    theirs = med(lambda: torch.linalg.eigh(x), reps=5) if n <= 64 or b <= 100 else float("nan")
    print(f"eigh {b}x{n}^2: metalcore {ours:.3f} ms, torch {theirs:.3f} ms; rec {rec.max().item():.1e}, orth {orth.item():.1e}", flush=True)
"""

run_settings(CHILD, sys.argv[1:])
