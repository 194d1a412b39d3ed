"""Device time of the Jacobi kernels (torch.profiler / CUPTI), wall time per call, and the number of
sweeps each case needs (the smallest max_sweeps that converges), for the issue's batched cases.
Run on the GPU machine: python3 scripts/profile_spectral.py [svd|eigh ...]"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import metalcore as mc

CASES = [("svd", 500, 16, 16), ("svd", 100, 64, 64), ("svd", 64, 128, 128), ("eigh", 1000, 32, 32),
         ("eigh", 100, 64, 64), ("eigh", 100, 128, 128), ("eigh", 500, 100, 100)]
only = sys.argv[1:]


def wall(fn, reps=10):
    for _ in range(2):
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
    g = torch.randn(b, m, n, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    x = g + g.mT if op == "eigh" else g
    f = mc.eigh if op == "eigh" else mc.svd
    sweeps = None
    for s in range(2, 61):
        try:
            f(x, max_sweeps=s)
            sweeps = s
            break
        except torch.linalg.LinAlgError:
            pass
    w = wall(lambda: f(x))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            f(x)
        torch.cuda.synchronize()
    kern = sorted(((e.key, e.device_time_total / 5 / 1000) for e in prof.key_averages() if e.device_time_total > 0), key=lambda t: -t[1])
    top = "; ".join(f"{k[:28]} {t:.3f}" for k, t in kern[:4])
    print(f"{op} {b}x{m}x{n}: sweeps {sweeps}, wall {w:.3f} ms, device {sum(t for _, t in kern):.3f} ms [{top}]", flush=True)
