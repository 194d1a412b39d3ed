"""CUDA-only behaviour: PyTorch's current stream, non-default streams, CUDA graph capture."""

import pytest
import torch

import metalcore
from conftest import DEVICES, rel_err

pytestmark = pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")


def _ref(x, w, eps=1e-6):
    x64 = x.double()
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def test_runs_on_a_non_default_stream():
    s = torch.cuda.Stream()
    x = torch.randn(512, 1024, device="cuda")
    w = torch.randn(1024, device="cuda")
    with torch.cuda.stream(s):
        # A long kernel first on the side stream: if ours ran on another stream it would read
        # x before the multiply finished.
        x2 = x * 2.0
        y = metalcore.rms_norm(x2, w)
    s.synchronize()
    assert rel_err(y, _ref(x * 2.0, w)) < 1e-6


def test_cuda_graph_capture_and_replay():
    x = torch.randn(256, 2048, device="cuda")
    w = torch.randn(2048, device="cuda")
    r = torch.randn(256, 2048, device="cuda")
    metalcore.rms_norm(x, w)  # compile and load outside capture
    metalcore.fused_add_rmsnorm(x, r, w)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            y = metalcore.rms_norm(x, w)
            y2, s2 = metalcore.fused_add_rmsnorm(x, r, w)
    torch.cuda.current_stream().wait_stream(s)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        assert rel_err(y, _ref(x, w)) < 1e-6
        assert rel_err(s2, x + r) == 0 and rel_err(y2, _ref(x + r, w)) < 1e-6


def test_backward_under_graph_capture():
    x = torch.randn(64, 4096, device="cuda", requires_grad=True)
    w = torch.randn(4096, device="cuda", requires_grad=True)
    dy = torch.randn(64, 4096, device="cuda")
    gx0, gw0 = torch.autograd.grad(metalcore.rms_norm(x, w), (x, w), dy)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            gx, gw = torch.autograd.grad(metalcore.rms_norm(x, w), (x, w), dy)
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    torch.cuda.synchronize()
    assert rel_err(gx, gx0) < 1e-6 and rel_err(gw, gw0) < 1e-6


def test_launch_does_not_synchronize_the_host():
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    metalcore.rms_norm(x, w)
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued ahead of us
    import time

    t0 = time.perf_counter()
    y = metalcore.rms_norm(x, w)
    dt = time.perf_counter() - t0
    ev = torch.cuda.Event()
    ev.record()
    assert not ev.query(), "the sleep kernel should still be running"
    assert dt < 0.02, f"rms_norm took {dt * 1e3:.1f} ms of host time: it waited for the GPU"
    torch.cuda.synchronize()
    assert torch.isfinite(y).all()


def test_inductor_compile_on_cuda():
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), metalcore.MetalRMSNorm(256)).cuda()
    x = torch.randn(32, 256, device="cuda", requires_grad=True)
    eager = model(x)
    torch._dynamo.reset()
    out = torch.compile(model, fullgraph=True)(x)
    assert rel_err(out, eager) < 1e-5
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
