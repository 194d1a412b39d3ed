"""Host time per call of MetalAdamW.step and embedding_bag on CUDA (wall clock of calls queued on
a busy GPU, so the device never waits for the host and the host never waits for the device), and
their eager time per call between CUDA events for batches of 1, 5 and 20 back-to-back calls
(each batch starting from an idle GPU), beside torch's fused AdamW and F.embedding_bag.

    python scripts/host_time_adamw_embag.py
"""

from __future__ import annotations

import statistics
import time

import torch

import metalcore


def busy(ms: float) -> None:
    """Queues about `ms` of GPU work so that the next calls' launches never wait."""
    torch.cuda._sleep(int(ms * 1e6 * 1.98))  # ~1.98 GHz clock; only an upper bound matters here


def host_us(f, n: int = 50) -> float:
    f()
    torch.cuda.synchronize()
    out = []
    for _ in range(5):
        busy(n * 2.0)
        t = time.perf_counter()
        for _ in range(n):
            f()
        out.append((time.perf_counter() - t) / n * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


def eager_ms(f, batch: int, reps: int = 30) -> float:
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        a.record()
        for _ in range(batch):
            f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / batch)
    return statistics.median(ts)


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name())
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, make in (("metalcore", lambda ps: metalcore.MetalAdamW(ps, lr=1e-4)),
                       ("torch fused", lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True))):
        ps = [torch.nn.Parameter(torch.randn(1 << 20, generator=g).cuda()) for _ in range(100)]
        for p in ps:
            p.grad = 1e-3 * torch.randn(1 << 20, generator=g).cuda()
        opt = make(ps)
        print(f"AdamW 100x1M {name}: host {host_us(opt.step):.0f} us/step; eager ms/step "
              + ", ".join(f"batch {k}: {eager_ms(opt.step, k):.3f}" for k in (1, 5, 20)))
        del opt, ps
    w = torch.randn(131072, 1024, generator=g).cuda()
    idx = torch.randint(0, 131072, (16384 * 32,), generator=g).cuda()
    off = torch.arange(0, 16384 * 32, 32).cuda()
    for name, f in (("metalcore", lambda: metalcore.embedding_bag(w, idx, off, "sum")),
                    ("torch", lambda: torch.nn.functional.embedding_bag(idx, w, off, mode="sum"))):
        print(f"EmbeddingBag fwd {name}: host {host_us(f, 20):.0f} us/call (metalcore: includes its one sync); eager ms "
              + ", ".join(f"batch {k}: {eager_ms(f, k):.3f}" for k in (1, 5, 20)))


if __name__ == "__main__":
    main()
