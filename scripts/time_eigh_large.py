"""The large-matrix CUDA eigh (float32) against torch.linalg.eigh on the GPU machine: errors
against float64 (reconstruction, orthogonality, eigenvalues, all relative to ‖A‖_F) on random and
structured matrices, then median ms per call between CUDA events; with --profile the device time
per kernel of one call; with --phases the reduction's time per phase of a column (EB_PROFILE in
kernels/linalg.cu), summed over its columns.
python3 scripts/time_eigh_large.py [--profile] [--phases] [--quick] [sizes...]"""

import os
import sys

if "--phases" in sys.argv:
    os.environ["METALCORE_EIGH_PROFILE"] = "1"  # read at the first call

import torch

import cuda_timing

import metalcore as mc

args = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
prof = "--profile" in sys.argv
quick = "--quick" in sys.argv
dev = "cuda"


def med(fn, reps=20):
    return cuda_timing.med(fn, reps, warmup=2)


def sym(n, spectrum=None, dtype=torch.float32):
    g = torch.randn(n, n, device=dev, dtype=torch.float64)
    if spectrum is None:
        a = g + g.mT
    else:
        q, _ = torch.linalg.qr(g)
        a = (q * spectrum.to(dev)) @ q.mT
        a = 0.5 * (a + a.mT)
    return a.to(dtype)


def errs(A, L, V):
    A64, L64, V64 = A.double(), L.double(), V.double()
    A64 = A64.tril() + A64.tril(-1).mT
    nrm = A64.norm().clamp_min(1e-300)
    rec = (((V64 * L64) @ V64.mT - A64).norm() / nrm).item()
    orth = (V64.mT @ V64 - torch.eye(V64.shape[-1], device=dev, dtype=torch.float64)).abs().max().item()
    ev = ((L64 - torch.linalg.eigvalsh(A64)).abs().max() / nrm).item()
    return rec, orth, ev


def check(name, A):
    try:
        L, V = mc.eigh(A)
        torch.cuda.synchronize()
        e = errs(A, L, V)
        tl, tv = torch.linalg.eigh(A)
        et = errs(A, tl, tv)
        asc = bool((L[:-1] <= L[1:]).all())
        print(f"{name:34s} ours rec {e[0]:.1e} orth {e[1]:.1e} ev {e[2]:.1e} | torch {et[0]:.1e} {et[1]:.1e} {et[2]:.1e} asc {asc}", flush=True)
    except Exception as ex:  # keep going: one report per case
        print(f"{name:34s} FAILED {type(ex).__name__}: {ex}", flush=True)


torch.manual_seed(0)
if "--ctol" in sys.argv:
    # Orthogonality against the cluster tolerance (METALCORE_EIGH_CTOL_EXP=k: 1e-k·‖T‖), one
    # process per k (the knob is read once): repeated eigenvalues, cond 1e6, random.
    import warnings

    import metalcore._backend as mb

    for n in args or [300, 2048]:
        rep = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).repeat(n)[:n]
        for name, A in [("repeated", sym(n, rep)), ("cond 1e6", sym(n, torch.logspace(0, -6, n, dtype=torch.float64))),
                        ("random", sym(n))]:
            mb._warned.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                L, V = mc.eigh(A)
            torch.cuda.synchronize()
            redone = any("precision" in str(w.message) for w in caught)
            e = errs(A, L, V)
            print(f"tol {mc._native.eigh_cluster_tol():.0e} n {n} {name:9s} rec {e[0]:.1e} orth {e[1]:.1e} "
                  f"ev {e[2]:.1e} redone by torch: {redone}", flush=True)
    sys.exit(0)
if "--phases" in sys.argv:
    from metalcore import _native
    from metalcore._backend import batch_desc, desc, stream_of

    names = ["", "loads+kk", "column update", "partial sums", "barrier 1", "loads+symv", "larfg+w+v", "barrier 2"]
    for n in args or [1024, 4096]:
        x = sym(n)
        s, v, info = torch.empty(n, device=dev), torch.empty(n, n, device=dev), torch.empty((), dtype=torch.int32, device=dev)
        work = torch.zeros(_native.eigh_work_len(n, False), device=dev)
        # The partial sums' region (the fourth) of the scratch, in float32 elements.
        part = _native.eigh_work_layout(n, False)[3] // 4
        _native.jacobi_into(batch_desc(x, "A", n, n), batch_desc(s, "S", 1, n), None, batch_desc(v, "V", n, n), desc(info, "info"),
                            True, 60, stream_of(x), torch.cuda.current_blas_handle(), desc(work, "work"))
        torch.cuda.synchronize()
        # EB_PROFILE's sums: the partial sums' row 248 (past any grid's rows), EB_PS = 1 + 2·32
        # entries a row (kernels/linalg.cu).
        ph = work[part + 248 * 65: part + 248 * 65 + 8].tolist()
        print(f"n {n}: per column (us): " + ", ".join(f"{names[i]} {ph[i] / n / 1e3:.2f}" for i in range(1, 8)), flush=True)
    sys.exit(0)
sizes = args or ([150, 300, 1000] if quick else [129, 150, 200, 257, 500, 1000, 1025, 2048])
for n in sizes:
    check(f"random {n}", sym(n))
if not args:
    n = 300 if quick else 700
    check(f"identity {n}", torch.eye(n, device=dev))
    check(f"zero {n}", torch.zeros(n, n, device=dev))
    rep = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).repeat(n)[:n]
    check(f"repeated (3 values) {n}", sym(n, rep))
    check(f"diag repeated {n}", torch.diag(rep).float().to(dev))
    check(f"cond 1e6 {n}", sym(n, torch.logspace(0, -6, n, dtype=torch.float64)))
    check(f"rank 5 {n}", sym(n, torch.cat([torch.randn(5, dtype=torch.float64), torch.zeros(n - 5, dtype=torch.float64)])))
    check(f"odd n 333", sym(333))
    check(f"scale 1e30 {n}", sym(n) * 1e30)
    check(f"scale 1e-30 {n}", sym(n) * 1e-30)
    h = n // 2
    S = sym(h)
    B = torch.zeros(n, n, device=dev)
    B[:h, :h] = S
    B[h:2 * h, h:2 * h] = S
    check(f"two equal blocks {n}", B)
    W = torch.diag(torch.arange(n, dtype=torch.float32, device=dev).sub(n // 2).abs()) + torch.diag(torch.ones(n - 1, device=dev), 1) + torch.diag(torch.ones(n - 1, device=dev), -1)
    check(f"wilkinson {n}", W)
    A = sym(n)
    A[5, 3] = float("nan")
    L, V = mc.eigh(A)
    print("nan input -> all NaN:", bool(torch.isnan(L).all() and torch.isnan(V).all()), flush=True)
    A = sym(400)
    L1, V1 = mc.eigh(A)
    L2, V2 = mc.eigh(A.mT.contiguous(), UPLO="U")
    print("UPLO=U bit-equal:", torch.equal(L1, L2) and torch.equal(V1, V2), flush=True)
    Ab = torch.stack([sym(200), sym(200), sym(200)])
    Lb, Vb = mc.eigh(Ab)
    print("batch 3 of 200 max errs:", max(max(errs(Ab[i], Lb[i], Vb[i])) for i in range(3)), flush=True)

if quick:
    sys.exit(0)
print("\ntimings (ms, median of 20), float32:")
for n in [256, 512, 1024, 2048, 4096]:
    A = sym(n)
    t_ours = med(lambda: mc.eigh(A))
    t_vals = med(lambda: mc.eigvalsh(A))
    t_torch = med(lambda: torch.linalg.eigh(A))
    t_tvals = med(lambda: torch.linalg.eigvalsh(A))
    print(f"eigh {n}: ours {t_ours:.2f}  torch {t_torch:.2f}  ({t_torch / t_ours:.2f}x); "
          f"eigvalsh ours {t_vals:.2f}  torch {t_tvals:.2f}  ({t_tvals / t_vals:.2f}x)", flush=True)
if prof:
    from torch.profiler import ProfilerActivity, profile
    for n in [1024, 4096]:
        A = sym(n)
        mc.eigh(A)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            mc.eigh(A)
            torch.cuda.synchronize()
        print(f"--- profile {n}")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=15))
