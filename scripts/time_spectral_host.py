"""Where the time of a small batched eigh/svd call goes on CUDA (run on the GPU machine): the whole
call, the call without its convergence check (the one host sync: a copy of `info` to the host),
and the device time alone (the unchecked call replayed from a CUDA graph). Median ms per call over
10 back-to-back calls between CUDA events.
python3 scripts/time_spectral_host.py"""
import torch

import metalcore as mc
import metalcore.spectral as sp
from metalcore.bench.cli import graph_ms, time_ms


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
    full = time_ms(lambda i: ours(), "cuda")
    sp._check_info = lambda *args, **kw: False
    try:
        unchecked = time_ms(lambda i: ours(), "cuda")
        dev = graph_ms(lambda i: ours(), 10)
    finally:
        sp._check_info = check
    t = time_ms(lambda i: theirs(), "cuda", warmup=1, reps=3, min_time=0, batch=1)
    print(f"{op} {b}x{n}^2: whole call {full:.4f} | without the check {unchecked:.4f} | device {dev:.4f} | torch {t:.4f}",
          flush=True)
