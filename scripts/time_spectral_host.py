"""Where the time of a small batched eigh/svd call goes on CUDA (run on the GPU machine): the whole
call, the call without its convergence check (the one host sync: a copy of `info` to the host),
and the device time alone (the unchecked call replayed from a CUDA graph). Median ms per call over
10 back-to-back calls between CUDA events.
python3 scripts/time_spectral_host.py"""
import statistics

import torch

import metalcore as mc
import metalcore.spectral as sp


def med(fn, reps=100, batch=10):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(batch):
            fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / batch)
    return statistics.median(ts)


def graph_ms(fn, batch=10):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(batch):
            fn()
    return med(g.replay, reps=50, batch=1) / batch


gen = torch.Generator().manual_seed(0)
print(torch.cuda.get_device_name(), torch.__version__)
cases = [("eigh", 1000, 32), ("eigh", 100, 64), ("eigh", 100, 128), ("eigh", 500, 100), ("svd", 500, 16), ("svd", 100, 64),
         ("svd", 64, 128)]
check = sp._check_info
for op, b, n in cases:
    a = torch.randn(b, n, n, generator=gen)
    if op == "eigh":
        a = a + a.mT
    a = a.cuda()
    ours = (lambda: mc.eigh(a)) if op == "eigh" else (lambda: mc.svd(a))
    theirs = (lambda: torch.linalg.eigh(a)) if op == "eigh" else (lambda: torch.linalg.svd(a, full_matrices=False))
    full = med(ours)
    sp._check_info = lambda *args, **kw: False
    try:
        unchecked = med(ours)
        dev = graph_ms(ours)
    finally:
        sp._check_info = check
    t = med(theirs, reps=3, batch=1)
    print(f"{op} {b}x{n}^2: whole call {full:.4f} | without the check {unchecked:.4f} | device {dev:.4f} | torch {t:.4f}",
          flush=True)
