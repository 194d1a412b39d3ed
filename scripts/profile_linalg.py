"""Device time of the batched-factorization kernels vs torch.linalg's (torch.profiler / CUPTI),
and the wall time per call, for the issue's small-matrix cases. Run on the GPU machine."""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import metalcore as mc

CASES = [("qr", 500, 16, 16), ("qr", 1000, 32, 32), ("qr", 100, 64, 64), ("qr", 100, 128, 64),
         ("cholesky", 500, 16, 16), ("cholesky", 100, 64, 64), ("cholesky", 1000, 128, 128),
         ("solve", 1000, 32, 32), ("solve", 10000, 16, 16), ("solve", 100, 128, 128)]
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
    if op == "qr":
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
        print(f"{op} {b}x{m}x{n} {name}: wall {w:.3f} ms, device {dev:.3f} ms [{top}]", flush=True)
