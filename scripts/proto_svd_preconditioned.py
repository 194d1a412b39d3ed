"""Prototype, measurement only (run on the GPU machine): SVD of 64 float32 matrices of 128² by
one-sided Jacobi preconditioned with the eigenvectors of the Gram matrix (V0 from eigh(AᵀA), then
Jacobi on W = A V0, whose columns are nearly orthogonal, and V = V0 Vw), composed in Python from
metalcore's own eigh, svd and qr, against the plain Jacobi svd; random and cond-1e6 inputs. Also
the pure float32 Gram path (U from the QR of A V0, S = |diag R|), which is not accurate for
ill-conditioned inputs.
python3 scripts/proto_svd_preconditioned.py"""
import torch, metalcore as mc
from metalcore.bench.cli import time_ms
def med(fn):
    return time_ms(lambda i: fn(), "cuda", warmup=3, reps=20, batch=1)
g=torch.Generator().manual_seed(0)
def cond_mat(b,n,c):
    q1,_=torch.linalg.qr(torch.randn(b,n,n,generator=g,dtype=torch.float64)); q2,_=torch.linalg.qr(torch.randn(b,n,n,generator=g,dtype=torch.float64))
    s=torch.logspace(0,-torch.log10(torch.tensor(c)).item(),n,dtype=torch.float64)
    return (q1*s)@q2.mT
for name, A64 in [("random", torch.randn(64,128,128,generator=g,dtype=torch.float64)), ("cond1e6", cond_mat(64,128,1e6))]:
    A=A64.float().cuda(); A64c=A.double()
    def gram_svd():
        Ad=A.double(); G=Ad.mT@Ad
        L,V=mc.eigh(G)
        L=L.flip(-1); V=V.flip(-1)
        S=L.clamp_min(0).sqrt()
        W=(Ad@V)
        Q,R=mc.qr(W.float())
        return Q, S.float(), V.float(), R
    t_g=med(lambda: (A.double().mT@A.double()))
    G=A.double().mT@A.double()
    t_e=float('nan')
    W=torch.randn(64,128,128,device='cuda')
    t_q=med(lambda: mc.qr(W))
    def gram_svd32():
        G=(A.mT@A)
        L,V=mc.eigh(G)
        V=V.flip(-1)
        Q,R=mc.qr(A@V)
        d=torch.diagonal(R,dim1=-2,dim2=-1)
        return Q*torch.sign(d).unsqueeze(-2), d.abs(), V
    t_32=med(gram_svd32)
    U3,S3,V3=gram_svd32()
    rec3=((U3.double()*S3.double().unsqueeze(-2))@V3.double().mT-A64c).flatten(-2).norm(dim=-1)/A64c.flatten(-2).norm(dim=-1)
    I=torch.eye(128,device='cuda',dtype=torch.float64)
    o3=max((U3.double().mT@U3.double()-I).abs().amax().item(),(V3.double().mT@V3.double()-I).abs().amax().item())
    Sref3=torch.linalg.svdvals(A64c)
    se3=((S3.double().sort(-1,descending=True).values-Sref3).abs().amax(-1)/Sref3[...,0]).max().item()
    unsorted=(S3[...,1:]>S3[...,:-1]).sum().item()
    print(f"  f32 gram path: total {t_32:.3f} ms | rec {rec3.max():.2e} orth {o3:.2e} S err {se3:.2e} order violations {unsorted}", flush=True)
    def precond_svd():
        G=(A.mT@A)
        L,V=mc.eigh(G)
        W=A@V
        Uw,Sw,Vw=mc.svd(W)
        return Uw, Sw, V@Vw
    t_pc=med(precond_svd)
    W=A@mc.eigh(A.mT@A)[1]
    t_w=med(lambda: mc.svd(W))
    Up,Sp,Vp=precond_svd()
    recp=((Up.double()*Sp.double().unsqueeze(-2))@Vp.double().mT-A64c).flatten(-2).norm(dim=-1)/A64c.flatten(-2).norm(dim=-1)
    op=max((Up.double().mT@Up.double()-I).abs().amax().item(),(Vp.double().mT@Vp.double()-I).abs().amax().item())
    sep=((Sp.double()-Sref3).abs().amax(-1)/Sref3[...,0]).max().item()
    print(f"  preconditioned Jacobi: total {t_pc:.3f} ms (its Jacobi alone {t_w:.3f}) | rec {recp.max():.2e} orth {op:.2e} S err {sep:.2e}", flush=True)
    t_j=med(lambda: mc.svd(A))
    print(f"{name}: gram {t_g:.3f} qr {t_q:.3f} | jacobi svd {t_j:.3f}", flush=True)
