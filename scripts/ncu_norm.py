"""One RMSNorm forward each (ours, Liger) at 8192x4096 in bf16 and fp16, for ncu:
ncu --clock-control none -k regex:'norm_fwd|rms_norm_forward' python3 scripts/ncu_norm.py"""
import torch
import metalcore
from liger_kernel.ops.rms_norm import LigerRMSNormFunction

for dt in (torch.bfloat16, torch.float16):
    x = torch.randn(8192, 4096, device="cuda", dtype=dt)
    w = torch.randn(4096, device="cuda", dtype=dt)
    for _ in range(2):
        metalcore.rms_norm(x, w)
        LigerRMSNormFunction.apply(x, w, 1e-6, 0.0, "llama")
torch.cuda.synchronize()
