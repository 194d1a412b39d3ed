"""Host-bound small batched calls (cholesky, eigh 500x16^2): ours vs torch, median ms per call over
10 back-to-back calls between CUDA events, three alternations. Run on the GPU machine."""
import statistics, torch, metalcore as mc
g = torch.Generator().manual_seed(0)
m = torch.randn(500, 16, 16, generator=g, dtype=torch.float64)
a = (m @ m.mT + 16 * torch.eye(16, dtype=torch.float64)).float().cuda()
def med(fn, reps=200, batch=10):
    for _ in range(20): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(batch): fn()
        e.record(); e.synchronize(); ts.append(s.elapsed_time(e) / batch)
    return statistics.median(ts)
print(torch.cuda.get_device_name())
for r in range(3):
    o, t = med(lambda: mc.cholesky(a)), med(lambda: torch.linalg.cholesky(a))
    e1, e2 = med(lambda: mc.eigh(a)), med(lambda: torch.linalg.eigh(a))
    print(f"cholesky 500x16^2: ours {o:.4f} torch {t:.4f} ({t/o:.2f}x) | eigh 500x16^2: ours {e1:.4f} torch {e2:.4f}")
