"""One line of device times (CUDA-graph replay, ms) for the act kernels at the current
METALCORE_ACT_* knobs, run on the GPU machine by scripts/tune_act.sh: silu, gelu-tanh and swiglu
forward, silu and swiglu backward, on rows x cols of one dtype; torch's F.silu / F.gelu beside."""

import os
import sys

import torch
import torch.nn.functional as F

import metalcore
from metalcore import activations as A
from metalcore.bench.cli import graph_ms

rows, cols, dt = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
n = 3
xs = [torch.randn(rows, cols, device="cuda").to(dt) for _ in range(n)]
us = [torch.randn(rows, cols, device="cuda").to(dt) for _ in range(n)]
cases = {
    "silu": lambda i: metalcore.metal_silu(xs[i]),
    "gelu_tanh": lambda i: metalcore.metal_gelu(xs[i], "tanh"),
    "swiglu": lambda i: metalcore.swiglu(xs[i], us[i]),
    "silu_bwd": lambda i: A._act_bwd(xs[i], None, us[i], A.SILU),
    "swiglu_bwd": lambda i: A._glu_bwd(xs[i], us[i], us[(i + 1) % n], A.SILU),
    "torch_silu": lambda i: F.silu(xs[i]),
    "torch_gelu_tanh": lambda i: F.gelu(xs[i], approximate="tanh"),
}
knobs = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("METALCORE_ACT_"))
print(f"[{knobs or 'defaults'}] " + "  ".join(f"{k} {graph_ms(f, n):.4f}" for k, f in cases.items()), flush=True)
