"""Tuning sweep for the RMSNorm CUDA kernels: device time (CUDA-graph replay) of forward and
forward+backward at one shape, for the current METALCORE_NORM_* environment.
Usage on the GPU machine: python3 scripts/sweep_rmsnorm.py [ROWS COLS DTYPE]"""

import os
import sys

import torch

import metalcore
from metalcore.bench.cli import graph_ms

rows, cols, dt = (int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])) if len(sys.argv) > 3 else (8192, 4096, torch.bfloat16)
n = 4
xs = [torch.randn(rows, cols, device="cuda", dtype=dt, requires_grad=True) for _ in range(n)]
dys = [torch.randn(rows, cols, device="cuda", dtype=dt) for _ in range(n)]
w = torch.randn(cols, device="cuda", dtype=dt, requires_grad=True)


def fwd(i):
    with torch.no_grad():
        metalcore.rms_norm(xs[i % n], w)


def fb(i):
    x = xs[i % n]
    torch.autograd.grad(metalcore.rms_norm(x, w), (x, w), dys[i % n])


tf, tfb = graph_ms(fwd, n, reps=100), graph_ms(fb, n, reps=100)
gb = 2 * rows * cols * xs[0].element_size() / (tf * 1e-3) / 1e9
env = " ".join(f"{k[len('METALCORE_NORM_'):]}={v}" for k, v in sorted(os.environ.items()) if k.startswith('METALCORE_NORM_'))
print(f"{env or 'default':30s} fwd {tf * 1e3:6.1f} us ({gb:5.0f} GB/s)  fwd+bwd {tfb * 1e3:6.1f} us  bwd~{(tfb - tf) * 1e3:6.1f} us")
