"""The large-matrix CUDA SVD (float32, Gram path) against torch.linalg.svd on the GPU machine:
errors against float64 (reconstruction, orthogonality, singular values, relative to ‖A‖_F), then
median ms per call between CUDA events; with --profile the device time per kernel of one call.
python3 scripts/time_svd_large.py [--profile]"""

import sys

import torch

import cuda_timing

import metalcore as mc

dev = "cuda"


def med(fn, reps=10):
    return cuda_timing.med(fn, reps, warmup=2)


def errs(A, U, S, V):
    A64, U64, S64, V64 = (t.double() for t in (A, U, S, V))
    nrm = A64.norm()
    rec = (((U64 * S64) @ V64.mT - A64).norm() / nrm).item()
    orth = max((U64.mT @ U64 - torch.eye(U64.shape[-1], device=dev, dtype=torch.float64)).abs().max().item(),
               (V64.mT @ V64 - torch.eye(V64.shape[-1], device=dev, dtype=torch.float64)).abs().max().item())
    sv = ((S64 - torch.linalg.svdvals(A64)).abs().max() / nrm).item()
    return rec, orth, sv


torch.manual_seed(0)
for shape in [(300, 300), (1024, 1024), (2048, 1000), (1000, 3000), (4096, 4096)]:
    A = torch.randn(shape, device=dev)
    U, S, V = mc.svd(A)
    e = errs(A, U, S, V)
    Ut, St, Vht = torch.linalg.svd(A, full_matrices=False)
    et = errs(A, Ut, St, Vht.mT)
    print(f"svd {shape}: ours rec {e[0]:.1e} orth {e[1]:.1e} sv {e[2]:.1e} | torch {et[0]:.1e} {et[1]:.1e} {et[2]:.1e}", flush=True)
print("\ntimings (ms, median of 10), float32:")
for shape in [(512, 512), (1024, 1024), (2048, 2048), (4096, 4096), (4096, 11008)]:
    A = torch.randn(shape, device=dev)
    t_ours = med(lambda: mc.svd(A))
    t_vals = med(lambda: mc.svdvals(A))
    t_torch = med(lambda: torch.linalg.svd(A, full_matrices=False), reps=3)
    print(f"svd {shape}: ours {t_ours:.1f} (values only {t_vals:.1f})  torch {t_torch:.1f}  ({t_torch / t_ours:.2f}x)", flush=True)
if "--profile" in sys.argv:
    from torch.profiler import ProfilerActivity, profile
    A = torch.randn(4096, 4096, device=dev)
    mc.svd(A)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        mc.svd(A)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14))
