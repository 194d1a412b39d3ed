"""Large single-matrix factorizations (the blocked, cuBLAS-built paths) against torch.linalg on
the GPU machine: median ms per call between CUDA events (warm-up first), the error of each against
float64, and with --profile the device time per kernel of one metalcore call.
python3 scripts/time_large.py [--profile] [cholesky|solve|qr ...]"""

import sys

import torch

import cuda_timing

import metalcore as mc
import metalcore.linalg as ml

ml.BLOCKED_CHOLESKY = True  # the blocked paths are what is timed here
ml.BLOCKED_LU_MAX_N = {torch.float32: 8192, torch.float64: 8192}
ml.BLOCKED_QR_MAX_M = {torch.float32: 8192, torch.float64: 8192}

args = [a for a in sys.argv[1:] if not a.startswith("--")]
prof = "--profile" in sys.argv


def med(fn, reps=30):
    return cuda_timing.med(fn, reps, warmup=3)


def spd(n, dtype):
    g = torch.randn(n, n, device="cuda", dtype=torch.float64)
    return (g @ g.mT / n + torch.eye(n, device="cuda", dtype=torch.float64)).to(dtype)


def chol_err(a, l):
    a64, l64 = a.double(), l.double()
    return ((l64 @ l64.mT - a64).norm() / a64.norm()).item()


rows = []
for op, n, dtype in [("cholesky", 1024, torch.float32), ("cholesky", 2048, torch.float32),
                     ("cholesky", 4096, torch.float32), ("cholesky", 8192, torch.float32),
                     ("cholesky", 4096, torch.float64),
                     ("solve", 1024, torch.float32), ("solve", 2048, torch.float32), ("solve", 4096, torch.float32),
                     ("solve", 8192, torch.float32), ("solve", 1024, torch.float64), ("solve", 2048, torch.float64),
                     ("solve", 4096, torch.float64),
                     ("qr", 512, torch.float32), ("qr", 1024, torch.float32), ("qr", 2048, torch.float32),
                     ("qr", 4096, torch.float32), ("qr", 8192, torch.float32), ("qr", 1024, torch.float64),
                     ("qr", 2048, torch.float64), ("qr", 4096, torch.float64)]:
    if args and op not in args:
        continue
    if op == "cholesky":
        a = spd(n, dtype)
        ours, theirs = (lambda: mc.cholesky(a)), (lambda: torch.linalg.cholesky(a))
        eo, et = chol_err(a, ours()), chol_err(a, theirs())
    elif op == "qr":  # reduced Q and R; error max(||QR - A|| / ||A||, ||QᵀQ - I||_max)
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        ours, theirs = (lambda: mc.qr(a)), (lambda: torch.linalg.qr(a))

        def qr_err(qr_):
            a64, q64, r64 = a.double(), qr_[0].double(), qr_[1].double()
            eye = torch.eye(n, device="cuda", dtype=torch.float64)
            return max(((q64 @ r64 - a64).norm() / a64.norm()).item(), (q64.mT @ q64 - eye).abs().max().item())

        eo, et = qr_err(ours()), qr_err(theirs())
    else:  # solve: a general matrix, one right-hand side; error ||A x - b|| / (||A|| ||x||)
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, 1, device="cuda", dtype=dtype)
        ours, theirs = (lambda: mc.solve(a, b)), (lambda: torch.linalg.solve(a, b))

        def solve_err(x):
            a64, x64 = a.double(), x.double()
            return ((a64 @ x64 - b.double()).norm() / (a64.norm() * x64.norm())).item()

        eo, et = solve_err(ours()), solve_err(theirs())
    to, tt = med(ours), med(theirs)
    rows.append(f"| {op} {n}² {str(dtype)[6:]} | {to:.3f} | {tt:.3f} | {tt / to:.2f}x | {eo:.1e} | {et:.1e} |")
    if prof and n == 4096:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as p:
            ours()
            torch.cuda.synchronize()
        print(f"--- {op} {n} {dtype}")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=40))
print("| case | metalcore ms | torch ms | speed-up | our error | torch error |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
