"""One forward and one fused forward+gradient launch of the cross-entropy kernel on 8192 x 128256
bf16 logits, for Nsight Compute on the GPU machine:
  ncu --kernel-name xent_kernel --section SpeedOfLight --section Occupancy --section WarpStateStats python3 scripts/profile_xent.py
"""

import sys

import torch

import metalcore.loss  # noqa: F401

C = sys.modules["metalcore.loss"]
rows, V = 8192, 128256
x = (2 * torch.randn(rows, V, device="cuda")).bfloat16()
t = torch.randint(0, V, (rows,), device="cuda").to(torch.int32)
loss, lse = torch.empty(rows, device="cuda"), torch.empty(rows, device="cuda")
g = torch.empty_like(x)
C._launch(x, t, loss, lse, None, None, False, -100, 0.0, 0.0)
C._launch(x, t, loss, lse, g, torch.ones(1, device="cuda"), False, -100, 0.0, 0.0)
torch.cuda.synchronize()
