"""Per-kernel device times of metalcore RMSNorm vs torch (torch.profiler), for tuning on the GPU.

Usage: python3 scripts/profile_rmsnorm.py [ROWS COLS DTYPE]"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import metalcore

rows, cols, dt = (int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])) if len(sys.argv) > 3 else (8192, 4096, torch.bfloat16)
xs = [torch.randn(rows, cols, device="cuda", dtype=dt, requires_grad=True) for _ in range(4)]
w = torch.randn(cols, device="cuda", dtype=dt, requires_grad=True)
dy = torch.randn(rows, cols, device="cuda", dtype=dt)


def step(f, i):
    x = xs[i % 4]
    torch.autograd.grad(f(x, w), (x, w), dy)


for name, f in [("metalcore", lambda x, w: metalcore.rms_norm(x, w)),
                ("torch", lambda x, w: torch.nn.functional.rms_norm(x, (cols,), w))]:
    for i in range(5):
        step(f, i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(20):
            step(f, i)
        torch.cuda.synchronize()
    print(f"== {name} {rows}x{cols} {dt}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))

# Host side: where the Python/Rust time of one forward+backward goes (GPU kept busy meanwhile).
import cProfile
import pstats

torch.cuda.synchronize()
torch.cuda._sleep(int(4e9))
f = lambda x, w: metalcore.rms_norm(x, w)  # noqa: E731
pr = cProfile.Profile()
pr.enable()
for i in range(300):
    step(f, i)
pr.disable()
torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
