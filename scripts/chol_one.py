"""One blocked Cholesky of a 4096² float32 SPD matrix (for ncu, or with METALCORE_CHOL_TRACE=1)."""
import torch

import metalcore as mc
import metalcore.linalg as ml

ml.BLOCKED_CHOLESKY = True
n = 4096
g = torch.randn(n, n, device="cuda")
a = g @ g.mT / n + torch.eye(n, device="cuda")
mc.cholesky(a)
torch.cuda.synchronize()
