"""Device time of the batched linear-algebra kernels vs torch.linalg's (torch.profiler / CUPTI),
the wall time per call, and for svd/eigh the sweeps each case needs (the smallest max_sweeps that
converges), for the issues' small-matrix cases. Run on the GPU machine:
python3 scripts/profile_linalg.py [qr|cholesky|solve|svd|eigh ...]"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import metalcore as mc

CASES = [("qr", 500, 16, 16), ("qr", 1000, 32, 32), ("qr", 100, 64, 64), ("qr", 100, 128, 64),
         ("cholesky", 500, 16, 16), ("cholesky", 100, 64, 64), ("cholesky", 1000, 128, 128),
         ("solve", 1000, 32, 32), ("solve", 10000, 16, 16), ("solve", 100, 128, 128),
         ("svd", 500, 16, 16), ("svd", 100, 64, 64), ("svd", 64, 128, 128), ("eigh", 1000, 32, 32),
         ("eigh", 100, 64, 64), ("eigh", 100, 128, 128), ("eigh", 500, 100, 100)]
only = sys.argv[1:]


def wall(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


for op, b, m, n in CASES:
    if only and op not in only:
        continue
    g = torch.randn(b, m, n, device="cuda")
    sweeps = ""
    if op in ("svd", "eigh"):
        x = g + g.mT if op == "eigh" else g
        f = mc.eigh if op == "eigh" else mc.svd
        for s in range(2, 61):
            try:
                f(x, max_sweeps=s)
                sweeps = f", sweeps {s}"
                break
            except torch.linalg.LinAlgError:
                pass
        ours, theirs = (lambda: f(x)), ((lambda: torch.linalg.eigh(x)) if op == "eigh" else (lambda: torch.linalg.svd(x)))
    elif op == "qr":
        ours, theirs = (lambda: mc.qr(g)), (lambda: torch.linalg.qr(g))
    else:
        a = g @ g.mT + n * torch.eye(n, device="cuda")
        rhs = torch.randn(b, n, 16 if n == 128 else 1, device="cuda")
        if op == "cholesky":
            ours, theirs = (lambda: mc.cholesky(a)), (lambda: torch.linalg.cholesky(a))
        else:
            ours, theirs = (lambda: mc.solve(a, rhs)), (lambda: torch.linalg.solve(a, rhs))
    for name, fn in (("metalcore", ours), ("torch", theirs)):
        w = wall(fn)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
        kern = [(e.key, e.device_time_total / 20 / 1000) for e in prof.key_averages() if e.device_time_total > 0]
        kern.sort(key=lambda x: -x[1])
        dev = sum(t for _, t in kern)
        top = "; ".join(f"{k[:40]} {t:.3f}" for k, t in kern[:3])
        print(f"{op} {b}x{m}x{n} {name}{sweeps}: wall {w:.3f} ms, device {dev:.3f} ms [{top}]", flush=True)
