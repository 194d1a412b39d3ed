"""Warps per matrix of the shared-memory Jacobi kernels (METALCORE_JACOBI_WARPS, read once per
process): median ms per call of the issue's svd/eigh cases for each setting, one subprocess each.
Run on the GPU machine: python3 scripts/sweep_jacobi.py [default 4 8 16 32] ("default": unset).
CASES="eigh:100:72 eigh:100:120" (op:batch:n, space-separated) replaces the issue's cases."""

import os
import subprocess
import sys

CHILD = r"""
import statistics, torch, metalcore as mc
import os
cases = [("svd", 100, 64), ("svd", 64, 128), ("eigh", 100, 64), ("eigh", 100, 128), ("eigh", 500, 100)]
if os.environ.get("CASES"):
    cases = [(op, int(b), int(n)) for op, b, n in (c.split(":") for c in os.environ["CASES"].split())]
g = torch.Generator().manual_seed(0)
out = []
for op, b, n in cases:
    x = torch.randn(b, n, n, generator=g).cuda()
    if op == "eigh":
        x = x + x.mT
    f = (lambda: mc.eigh(x)) if op == "eigh" else (lambda: mc.svd(x))
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(15):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); f(); e.record(); e.synchronize()
        ts.append(s.elapsed_time(e))
    out.append(f"{op} {b}x{n}^2 {statistics.median(ts):.3f}")
print(" | ".join(out))
"""

for w in sys.argv[1:] or ["default", "4", "8", "16", "32"]:
    env = {k: v for k, v in os.environ.items() if k != "METALCORE_JACOBI_WARPS"}
    if w != "default":
        env["METALCORE_JACOBI_WARPS"] = w
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    print(f"warps {w:>7}: {r.stdout.strip() or r.stderr.strip()[-300:]}", flush=True)
