"""AdamW step device time (CUDA-graph replay) and eager time (5 steps between events) for the
installed metalcore, 100 x 1M parameters. Usage on the GPU machine: python3 scripts/time_adamw.py [DTYPE]"""
import sys

import torch

import metalcore
from metalcore.bench.cli import graph_ms, time_ms

dt = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.float32
ps = [torch.nn.Parameter(torch.randn(1 << 20, device="cuda").to(dt)) for _ in range(100)]
for p in ps:
    p.grad = 1e-3 * torch.randn_like(p)
opt = metalcore.MetalAdamW(ps, lr=1e-4)
opt.step()
print(f"{dt}: graph {graph_ms(lambda i: opt.step(), 1, reps=50):.4f} ms  eager {time_ms(lambda i: opt.step(), 'cuda', reps=50, batch=5, min_time=0.0, warmup=3):.4f} ms")
