#!/usr/bin/env bash
# Cross-entropy geometry sweep (block, unroll; fused block x blocks per SM), run on the GPU machine after `./dev.sh wheel` here (carry dist/).
set -u
python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site dist/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name --format=csv,noheader
for c in "256 4 1024 1" "256 4 1024 2" "256 4 512 1" "256 4 512 2" "256 4 256 2" "256 4 256 8" "256 8 1024 1" "256 2 1024 1"; do set -- $c
  METALCORE_XENT_BLOCK=$1 METALCORE_XENT_UNROLL=$2 METALCORE_XENT_FUSED_BLOCK=$3 METALCORE_XENT_FUSED_BPS=$4 python3 - <<'PY'
import os, sys, torch, metalcore
import metalcore.loss
C = sys.modules["metalcore.loss"]

def graph_ms(fn, n, reps=20):
    """Milliseconds per call, back-to-back launches between two events (no host sync inside)."""
    for i in range(3):
        fn(i % n)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for i in range(reps):
        fn(i % n)
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps
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
print(f"BLOCK={os.environ['METALCORE_XENT_BLOCK']} UNROLL={os.environ['METALCORE_XENT_UNROLL']} FUSED {os.environ['METALCORE_XENT_FUSED_BLOCK']}x{os.environ['METALCORE_XENT_FUSED_BPS']}/SM: fwd {graph_ms(fwd, 2):.4f} ms  fwd+grad {graph_ms(fused, 2):.4f} ms  grad only {graph_ms(bwd, 2):.4f} ms", flush=True)
PY
done
