#!/usr/bin/env bash
# Cross-entropy block-size sweep, run on the GPU machine after `./dev.sh wheel` here (carry dist/).
set -u
python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site dist/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
for b in 256 512 1024; do
  METALCORE_XENT_BLOCK=$b python3 - <<'PY'
import os, torch, metalcore
from metalcore import cross_entropy as C
from metalcore.bench.cli import graph_ms
rows, V = 8192, 128256
xs = [(2 * torch.randn(rows, V, device="cuda")).bfloat16() for _ in range(2)]
t = torch.randint(0, V, (rows,), device="cuda").to(torch.int32)
acc = torch.float32
loss, lse = torch.empty(rows, device="cuda"), torch.empty(rows, device="cuda")
grads = [torch.empty_like(x) for x in xs]
scale = torch.ones(1, device="cuda")
fwd = lambda i: C._launch(xs[i], t, loss, lse, None, None, False, -100, 0.0, 0.0)
fused = lambda i: C._launch(xs[i], t, loss, lse, grads[i], scale, False, -100, 0.0, 0.0)
bwd = lambda i: C._launch(xs[i], t, loss, lse, grads[i], scale, True, -100, 0.0, 0.0)
print(f"BLOCK={os.environ['METALCORE_XENT_BLOCK']}: fwd {graph_ms(fwd, 2):.4f} ms  fwd+grad {graph_ms(fused, 2):.4f} ms  grad only {graph_ms(bwd, 2):.4f} ms", flush=True)
PY
done
