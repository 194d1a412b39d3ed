"""CUDA svd with and without the Gram preconditioning (`metalcore.spectral.PRECONDITION_MIN_N`),
alternating, median ms per call over 5 back-to-back calls between CUDA events. Run on the GPU
machine: python3 scripts/time_svd_preconditioned.py"""
import torch, metalcore as mc, metalcore.spectral as sp
from metalcore.bench.cli import time_ms
g=torch.Generator().manual_seed(0)
for b,m,n in [(64,128,128),(100,100,100),(100,96,96),(100,128,96),(100,80,80),(100,64,64)]:
    A=torch.randn(b,m,n,generator=g).cuda()
    out=[]
    for r in range(2):
        for v in (64, None):
            sp.PRECONDITION_MIN_N=v
            out.append(f"{'pre' if v else 'plain'} {time_ms(lambda i: mc.svd(A), 'cuda', reps=75, batch=5):.3f}")
    sp.PRECONDITION_MIN_N=64
    print(f"svd {b}x{m}x{n}: " + " | ".join(out), flush=True)
