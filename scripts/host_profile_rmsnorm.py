"""Where the host time of one eager RMSNorm forward+backward goes (GPU kept busy, so no call
waits on the device). Usage on the GPU machine: python3 scripts/host_profile_rmsnorm.py"""

import time

import torch

import metalcore
from metalcore import _backend, _native
from metalcore import rmsnorm as R

rows, cols, dt = 8192, 4096, torch.bfloat16
x = torch.randn(rows, cols, device="cuda", dtype=dt, requires_grad=True)
w = torch.randn(cols, device="cuda", dtype=dt, requires_grad=True)
dy = torch.randn(rows, cols, device="cuda", dtype=dt)


class Null(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, g):
        return torch.empty_like(g), None


def us(fn, n=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(3e9))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    d = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return d


y, _, rstd = R._fwd_impl(x.detach(), None, w.detach(), 1e-6, 0.0, True, True)
cases = {
    "torch.empty 8192x4096 bf16": lambda: torch.empty((rows, cols), dtype=dt, device="cuda"),
    "torch.empty_like": lambda: torch.empty_like(x),
    "desc(x)": lambda: _backend.desc(x, "x"),
    "stream_of(x)": lambda: _backend.stream_of(x),
    "Null fwd+grad": lambda: torch.autograd.grad(Null.apply(x, w), (x,), dy),
    "torch F.rms_norm fwd (no_grad)": lambda: torch.nn.functional.rms_norm(x.detach(), (cols,), w.detach()),
    "torch F.rms_norm fwd+grad": lambda: torch.autograd.grad(torch.nn.functional.rms_norm(x, (cols,), w), (x, w), dy),
    "metalcore fwd (no_grad)": lambda: metalcore.rms_norm(x.detach(), w.detach()),
    "metalcore _fwd_impl": lambda: R._fwd_impl(x.detach(), None, w.detach(), 1e-6, 0.0, True, True),
    "metalcore fwd (grad)": lambda: metalcore.rms_norm(x, w),
    "metalcore _bwd_impl": lambda: R._bwd_impl(dy, x.detach(), w.detach(), rstd, None, 0.0, True, True),
    "metalcore fwd+grad": lambda: torch.autograd.grad(metalcore.rms_norm(x, w), (x, w), dy),
}
for k, f in cases.items():
    print(f"{k:40s} {us(f):8.1f} us")

# Instrumented loop: time spent inside our forward / backward Python bodies vs the rest.
acc = {"fwd": 0.0, "bwd": 0.0}
of, ob = R._fwd_impl, R._bwd_impl


def tf(*a):
    t = time.perf_counter()
    r = of(*a)
    acc["fwd"] += time.perf_counter() - t
    return r


def tb(*a):
    t = time.perf_counter()
    r = ob(*a)
    acc["bwd"] += time.perf_counter() - t
    return r


R._fwd_impl, R._bwd_impl = tf, tb
n = 300
tot = us(lambda: torch.autograd.grad(metalcore.rms_norm(x, w), (x, w), dy), n)
k = (n + 20)
print(f"instrumented fwd+grad {tot:.1f} us/step: _fwd_impl {acc['fwd'] / k * 1e6:.1f}, _bwd_impl {acc['bwd'] / k * 1e6:.1f}")
print(f"y.backward(dy)        {us(lambda: metalcore.rms_norm(x, w).backward(dy)):.1f} us")
print(f"grad wrt x only       {us(lambda: torch.autograd.grad(metalcore.rms_norm(x, w), (x,), dy)):.1f} us")
R._fwd_impl, R._bwd_impl = of, ob

import cProfile
import pstats

torch.cuda.synchronize()
torch.cuda._sleep(int(3e9))
pr = cProfile.Profile()
pr.enable()
for i in range(300):
    torch.autograd.grad(metalcore.rms_norm(x, w), (x, w), dy)
pr.disable()
torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(16)
