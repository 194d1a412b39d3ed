"""Error breakdown of softmax on CUDA vs torch (float64 truth), for the cases the tests found
tight. Usage on the GPU machine: python3 scripts/diag_softmax.py"""

import torch

import metalcore
from metalcore.softmax import _bwd


def rel(a, r):
    a, r = a.double(), r.double()
    return ((a - r).norm() / r.norm()).item()


for shape, dt in [((2, 3, 96), torch.float32), ((8, 8192), torch.float32), ((2, 65539), torch.bfloat16), ((8, 4096), torch.bfloat16)]:
    for seed in range(3):
        torch.manual_seed(seed)
        x = (torch.randn(shape) * 4).to(dt).cuda()
        dy = torch.randn(shape).to(dt).cuda()
        x64 = x.double().requires_grad_()
        y64 = torch.softmax(x64, -1)
        (g64,) = torch.autograd.grad(y64, (x64,), dy.double())
        y, yt = metalcore.fused_softmax(x), torch.softmax(x, -1)
        gt = torch._softmax_backward_data(dy, yt, -1, dt)
        g = _bwd(y, dy, x.dim() - 1)
        g_on_torch_y = _bwd(yt, dy, x.dim() - 1)
        print(f"{shape} {dt} seed {seed}: fwd ours {rel(y, y64):.2e} torch {rel(yt, y64):.2e} | "
              f"bwd ours {rel(g, g64):.2e} torch {rel(gt, g64):.2e} ours-on-torch-y {rel(g_on_torch_y, g64):.2e}")
