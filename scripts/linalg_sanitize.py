"""Small CUDA calls of every batched-factorization kernel path (warp teams and block teams), for
`compute-sanitizer --tool racecheck|memcheck python scripts/linalg_sanitize.py` on the GPU machine."""

import torch

import metalcore as mc

torch.manual_seed(0)
for m, n in [(16, 16), (7, 3), (3, 7), (40, 20), (64, 64), (20, 40)]:
    A = torch.randn(5, m, n, device="cuda")
    q, r = mc.qr(A, mode="complete")
    assert ((q @ r - A).norm() / A.norm()) < 1e-5
for n in (5, 16, 30, 48, 100):
    g = torch.randn(3, n, n, device="cuda", dtype=torch.float64)
    a = g @ g.mT + n * torch.eye(n, device="cuda", dtype=torch.float64)
    L = mc.cholesky(a)
    b = torch.randn(3, n, 2, device="cuda", dtype=torch.float64)
    x = mc.cholesky_solve(b, L)
    assert torch.allclose(a @ x, b, atol=1e-8)
    x = mc.solve(a, b)
    assert torch.allclose(a @ x, b, atol=1e-8)
    x = mc.trsm(L, b, lower=True, transpose=True)
    assert torch.allclose(L.mT @ x, b, atol=1e-8)
    lu = mc.lu_batched(a)
    assert int(lu.info.abs().sum()) == 0
for m, n in [(16, 16), (9, 5), (33, 33), (70, 40)]:
    A = torch.randn(3, m, n, device="cuda")
    U, S, V = mc.svd(A)
    assert ((U * S.unsqueeze(-2)) @ V.mT - A).norm() / A.norm() < 1e-5
for n, batch in ((5, 3), (16, 3), (33, 3), (64, 3), (7, 300), (32, 300)):
    B = torch.randn(batch, n, n, device="cuda")
    L, V = mc.eigh(B + B.mT)
    assert torch.isfinite(L).all()
torch.cuda.synchronize()
print("linalg sanitize script: ok")
