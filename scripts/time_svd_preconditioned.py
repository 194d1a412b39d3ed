"""CUDA svd with and without the Gram preconditioning (`metalcore.spectral.PRECONDITION_MIN_N`),
alternating, median ms per call over 5 back-to-back calls between CUDA events. Run on the GPU
machine: python3 scripts/time_svd_preconditioned.py"""
import statistics, torch, metalcore as mc, metalcore.spectral as sp
def med(fn, reps=15, batch=5):
    for _ in range(3): fn()
    torch.cuda.synchronize(); ts=[]
    for _ in range(reps):
        s,e=torch.cuda.Event(enable_timing=True),torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(batch): fn()
        e.record(); e.synchronize(); ts.append(s.elapsed_time(e)/batch)
    return statistics.median(ts)
g=torch.Generator().manual_seed(0)
for b,m,n in [(64,128,128),(100,100,100),(100,96,96),(100,128,96),(100,80,80),(100,64,64)]:
    A=torch.randn(b,m,n,generator=g).cuda()
    out=[]
    for r in range(2):
        for v in (64, None):
            sp.PRECONDITION_MIN_N=v
            out.append(f"{'pre' if v else 'plain'} {med(lambda: mc.svd(A)):.3f}")
    sp.PRECONDITION_MIN_N=64
    print(f"svd {b}x{m}x{n}: " + " | ".join(out), flush=True)
