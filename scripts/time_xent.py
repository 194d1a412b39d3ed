"""Device time of one fused forward+gradient cross-entropy launch on 8192 x 128256 bf16 logits
(CUDA events, median of 20 after warm-up), for comparing kernel variants (METALCORE_XENT_*
knobs) on the GPU machine: python3 scripts/time_xent.py [rows V]"""

import statistics
import sys

import torch

import metalcore.loss  # noqa: F401

C = sys.modules["metalcore.loss"]
rows, V = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (8192, 128256)))
x = (2 * torch.randn(rows, V, device="cuda")).bfloat16()
t = torch.randint(0, V, (rows,), device="cuda").to(torch.int32)
loss, lse = torch.empty(rows, device="cuda"), torch.empty(rows, device="cuda")
g = torch.empty_like(x)
one = torch.ones(1, device="cuda")
ts = []
for i in range(25):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    C._launch(x, t, loss, lse, g, one, False, -100, 0.0, 0.0)
    b.record()
    b.synchronize()
    if i >= 5:
        ts.append(a.elapsed_time(b))
gb = 2 * x.numel() * x.element_size() / 1e9
med = statistics.median(ts)
print(f"{rows}x{V} bf16 fused: {med:.4f} ms, {gb / med * 1e3:.0f} GB/s (counting one read and one write)")
