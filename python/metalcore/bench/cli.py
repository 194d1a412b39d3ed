"""``python -m metalcore.bench``: a table of ours vs peers, written to bench/results/."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

import metalcore
from metalcore import reference


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def steady_cpu_allocator() -> bool:
    """Keeps freed CPU memory in the process (glibc: no mmap for large blocks, no trimming).

    By default glibc hands blocks of 32 MiB and more back to the OS on free, so the next
    allocation page-faults all of it again (~20 ms per 32 MiB on the 2-core reference machine,
    more than the op itself), and its threshold moves with the allocation history, so whichever
    implementation runs first pays faults the others do not. Every peer runs under the same
    setting, which is what a steady training loop with a caching allocator sees."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def time_ms(fn: Callable[[int], object], device: str, *, warmup: int = 10, reps: int = 100, min_time: float = 0.3, batch: int = 10) -> float:
    """Median milliseconds per call of `fn(i)` (i rotates through the input sets).

    On CUDA each sample is `batch` back-to-back calls between two events, divided by `batch`: the
    device time of a steady stream of calls, which is what a training loop sees when the host runs
    ahead of the GPU. Host overhead shows only where it exceeds the device time (then it is the
    bottleneck and is measured as such)."""
    for i in range(warmup):
        fn(i)
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        t_end = time.perf_counter() + min_time
        i = 0
        while len(times) < max(5, reps // batch) or (time.perf_counter() < t_end and len(times) < 2 * reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(batch):
                fn(i)
                i += 1
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / batch)
        return statistics.median(times)
    times = []
    t_end = time.perf_counter() + min_time
    i = 0
    while i < max(5, reps // 10) or (time.perf_counter() < t_end and i < reps):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return statistics.median(times)


def graph_ms(fn: Callable[[int], object], nsets: int, *, reps: int = 50) -> float:
    """Device milliseconds per call with host overhead removed: `nsets` calls (one per input set)
    captured in a CUDA graph, replayed `reps` times between two events. NaN if capture fails."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(nsets):
                fn(i)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(nsets):
                fn(i)
    except Exception:  # noqa: BLE001 - a peer that cannot be captured gets no graph number
        return float("nan")
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / nsets)
    del g
    return statistics.median(times)


def host_us(fn: Callable[[int], object], n: int = 200) -> float:
    """Host microseconds per call while the GPU is kept busy (so no call waits on the device)."""
    for i in range(10):
        fn(i)
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9))  # ~1 s of queued GPU time: the calls below only enqueue
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    dt = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return dt


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    d = ref.norm().item()
    return float("inf") if not torch.isfinite(a).all() else (a - ref).norm().item() / (d or 1.0)


def _liger(op: str):
    """Liger-Kernel's function for `op` as f(x, w, b, eps), or None when Liger is not installed."""
    try:
        if op == "rmsnorm":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction  # type: ignore

            return lambda x, w, b, eps: LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama")
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction  # type: ignore

        return lambda x, w, b, eps: LigerLayerNormFunction.apply(x, w, b, eps)
    except Exception:  # noqa: BLE001 - Liger is optional
        return None


def _peers(op: str, device: str, cols: int, eps: float) -> Dict[str, Callable]:
    """Implementations to compare, each as f(x, w, b); the first is ours, the second the baseline."""
    if op == "rmsnorm":
        peers: Dict[str, Callable] = {
            "metalcore": lambda x, w, b: metalcore.rms_norm(x, w, eps),
            "torch": lambda x, w, b: torch.nn.functional.rms_norm(x, (cols,), w, eps),
            "HF eager": lambda x, w, b: reference.rms_norm(x, w, eps),
        }
    else:
        peers = {
            "metalcore": lambda x, w, b: metalcore.layer_norm(x, (cols,), w, b, eps),
            "torch": lambda x, w, b: torch.nn.functional.layer_norm(x, (cols,), w, b, eps),
        }
    liger = _liger(op) if device == "cuda" else None
    if liger is not None:
        peers["Liger"] = lambda x, w, b: liger(x, w, b, eps)
    return peers


def _truth(op: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, eps: float):
    """float64 output and gradients (x, w[, b])."""
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    if op == "rmsnorm":
        y64 = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w64
        return y64.detach(), torch.autograd.grad(y64, (x64, w64), dy.double())
    y64 = torch.nn.functional.layer_norm(x64, (x.shape[-1],), w64, b64, eps)
    return y64.detach(), torch.autograd.grad(y64, (x64, w64, b64), dy.double())


def bench_norm(op: str, device: str, rows: int, cols: int, dtype: torch.dtype, quick: bool) -> List[Dict]:
    """`op` ("rmsnorm" or "layernorm") forward, and forward+backward, for ours and each peer."""
    elem = torch.tensor([], dtype=dtype).element_size()
    set_bytes = rows * cols * elem
    l2 = 60 << 20 if device == "cuda" else 32 << 20
    nsets = max(2, min(8, (3 * l2) // max(set_bytes, 1) + 1))
    g = torch.Generator(device="cpu").manual_seed(0)
    xs = [(torch.randn(rows, cols, generator=g) + 0.5).to(dtype).to(device) for _ in range(nsets)]
    dys = [torch.randn(rows, cols, generator=g).to(dtype).to(device) for _ in range(nsets)]
    w = (1 + 0.1 * torch.randn(cols, generator=g)).to(dtype).to(device)
    b = (0.1 * torch.randn(cols, generator=g)).to(dtype).to(device)
    eps = 1e-6 if op == "rmsnorm" else 1e-5
    y64, grads64 = _truth(op, xs[0], w, b, dys[0], eps)
    reps = 20 if quick else 200
    out = []
    for name, f in _peers(op, device, cols, eps).items():
        wr, br = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        params = (wr, br) if op == "layernorm" else (wr,)
        xr = [x.detach().clone().requires_grad_() for x in xs]
        with torch.no_grad():
            y = f(xs[0], w, b)
        err_f = _rel(y, y64)
        grads = torch.autograd.grad(f(xr[0], wr, br), (xr[0],) + params, dys[0])
        err_b = max(_rel(a, t) for a, t in zip(grads, grads64))

        def fwd(i, f=f):
            with torch.no_grad():
                f(xs[i % nsets], w, b)

        def fwdbwd(i, f=f, xr=xr, wr=wr, br=br, params=params):
            x = xr[i % nsets]
            torch.autograd.grad(f(x, wr, br), (x,) + params, dys[i % nsets])

        t_f = time_ms(fwd, device, reps=reps)
        t_fb = time_ms(fwdbwd, device, reps=reps)
        cuda = device == "cuda"
        h_f = host_us(fwd) if cuda else float("nan")
        h_fb = host_us(fwdbwd) if cuda else float("nan")
        g_f = graph_ms(fwd, nsets) if cuda else float("nan")
        g_fb = graph_ms(fwdbwd, nsets) if cuda else float("nan")
        out.append(dict(op=op, case=f"{rows}x{cols} {str(dtype).replace('torch.', '')}", impl=name,
                        fwd_ms=t_f, fwdbwd_ms=t_fb, fwd_err=err_f, bwd_err=err_b, host_f=h_f, host_fb=h_fb, graph_f=g_f, graph_fb=g_fb,
                        fwd_gbs=2 * set_bytes / (t_f * 1e-3) / 1e9, bytes=2 * set_bytes))
    return out


def _liger_softmax():
    try:
        from liger_kernel.ops.softmax import LigerSoftmaxFunction  # type: ignore

        return lambda x: LigerSoftmaxFunction.apply(x)
    except Exception:  # noqa: BLE001 - Liger is optional (and older versions lack softmax)
        return None


def bench_softmax(device: str, rows: int, cols: int, dtype: torch.dtype, quick: bool) -> List[Dict]:
    """Softmax over the last dim, forward and forward+backward, ours vs torch (and Liger)."""
    elem = torch.tensor([], dtype=dtype).element_size()
    set_bytes = rows * cols * elem
    l2 = 60 << 20 if device == "cuda" else 32 << 20
    nsets = max(2, min(8, (3 * l2) // max(set_bytes, 1) + 1))
    g = torch.Generator(device="cpu").manual_seed(0)
    xs = [(3 * torch.randn(rows, cols, generator=g)).to(dtype).to(device) for _ in range(nsets)]
    dys = [torch.randn(rows, cols, generator=g).to(dtype).to(device) for _ in range(nsets)]
    peers: Dict[str, Callable] = {"metalcore": lambda x: metalcore.fused_softmax(x, -1), "torch": lambda x: torch.softmax(x, -1)}
    liger = _liger_softmax() if device == "cuda" else None
    if liger is not None:
        peers["Liger"] = liger
    x64 = xs[0].double().requires_grad_()
    y64 = torch.softmax(x64, -1)
    (g64,) = torch.autograd.grad(y64, (x64,), dys[0].double())
    reps = 20 if quick else 200
    out = []
    for name, f in peers.items():
        xr = [x.detach().clone().requires_grad_() for x in xs]
        with torch.no_grad():
            err_f = _rel(f(xs[0]), y64.detach())
        (gx,) = torch.autograd.grad(f(xr[0]), (xr[0],), dys[0])
        err_b = _rel(gx, g64)

        def fwd(i, f=f):
            with torch.no_grad():
                f(xs[i % nsets])

        def fwdbwd(i, f=f, xr=xr):
            x = xr[i % nsets]
            torch.autograd.grad(f(x), (x,), dys[i % nsets])

        cuda = device == "cuda"
        t_f, t_fb = time_ms(fwd, device, reps=reps), time_ms(fwdbwd, device, reps=reps)
        out.append(dict(op="softmax", case=f"{rows}x{cols} {str(dtype).replace('torch.', '')}", impl=name,
                        fwd_ms=t_f, fwdbwd_ms=t_fb, fwd_err=err_f, bwd_err=err_b,
                        host_f=host_us(fwd) if cuda else float("nan"), host_fb=host_us(fwdbwd) if cuda else float("nan"),
                        graph_f=graph_ms(fwd, nsets) if cuda else float("nan"),
                        graph_fb=graph_ms(fwdbwd, nsets) if cuda else float("nan"),
                        fwd_gbs=2 * set_bytes / (t_f * 1e-3) / 1e9, bytes=2 * set_bytes))
    return out


def _liger_glu(kind: str):
    try:
        if kind == "swiglu":
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction  # type: ignore

            return lambda g, u, b: LigerSiLUMulFunction.apply(g, u)
        from liger_kernel.ops.geglu import LigerGELUMulFunction  # type: ignore

        return lambda g, u, b: LigerGELUMulFunction.apply(g, u)
    except Exception:  # noqa: BLE001 - Liger is optional
        return None


F_ = torch.nn.functional
# kind -> (inputs: 1 = x, 2 = gate and up; bias?; ours; torch's unfused formula), each f(a, u, b).
ACT_KINDS = {
    "silu": (1, False, lambda a, u, b: metalcore.metal_silu(a), lambda a, u, b: F_.silu(a)),
    "gelu_tanh": (1, False, lambda a, u, b: metalcore.metal_gelu(a, "tanh"), lambda a, u, b: F_.gelu(a, approximate="tanh")),
    "gelu": (1, False, lambda a, u, b: metalcore.metal_gelu(a), lambda a, u, b: F_.gelu(a)),
    "bias_gelu_tanh": (1, True, lambda a, u, b: metalcore.bias_gelu(a, b, "tanh"),
                       lambda a, u, b: F_.gelu(a + b, approximate="tanh")),
    "swiglu": (2, False, lambda a, u, b: metalcore.swiglu(a, u), lambda a, u, b: F_.silu(a) * u),
}


def bench_peers(op: str, case: str, device: str, peers: Dict[str, Callable], sets: List[Tuple[list, list]],
                const: list, set_bytes: int, quick: bool) -> List[Dict]:
    """Forward and forward+backward of each peer, one row each. ``sets`` holds input sets
    ``(inputs, output grads)``; each peer is ``f(*inputs, *const) -> output or tuple``, with
    gradients taken for every input; the first peer named ``torch`` gives the float64 truth."""
    nsets = len(sets)
    ins0, dys0 = sets[0]
    leaves64 = [t.double().requires_grad_() for t in ins0]
    const64 = [c.double() if isinstance(c, torch.Tensor) and c.is_floating_point() else c for c in const]

    def tup(y):
        return y if isinstance(y, tuple) else (y,)

    y64 = tup(peers["torch"](*leaves64, *const64))
    g64 = torch.autograd.grad(y64, leaves64, [d.double() for d in dys0])
    reps = 20 if quick else 200
    out = []
    for name, f in peers.items():
        # Errors on fresh copies (a peer may overwrite its input, as Liger's cross-entropy does).
        fresh = [t.detach().clone().requires_grad_() for t in ins0]
        with torch.no_grad():
            err_f = max(_rel(a, b) for a, b in zip(tup(f(*fresh, *const)), y64))
        fresh = [t.detach().clone().requires_grad_() for t in ins0]
        gs = torch.autograd.grad(tup(f(*fresh, *const)), fresh, dys0)
        err_b = max(_rel(a, b) for a, b in zip(gs, g64))
        del fresh, gs
        leaves = [[t.detach().clone().requires_grad_() for t in ins] for ins, _ in sets]

        def fwd(i, f=f, leaves=leaves):
            with torch.no_grad():
                f(*leaves[i % nsets], *const)

        def fwdbwd(i, f=f, leaves=leaves):
            ls = leaves[i % nsets]
            torch.autograd.grad(tup(f(*ls, *const)), ls, sets[i % nsets][1])

        cuda = device == "cuda"
        t_f, t_fb = time_ms(fwd, device, reps=reps), time_ms(fwdbwd, device, reps=reps)
        out.append(dict(op=op, case=case, impl=name, fwd_ms=t_f, fwdbwd_ms=t_fb, fwd_err=err_f, bwd_err=err_b,
                        host_f=host_us(fwd) if cuda else float("nan"), host_fb=host_us(fwdbwd) if cuda else float("nan"),
                        graph_f=graph_ms(fwd, nsets) if cuda else float("nan"),
                        graph_fb=graph_ms(fwdbwd, nsets) if cuda else float("nan"),
                        fwd_gbs=set_bytes / (t_f * 1e-3) / 1e9, bytes=set_bytes))
    return out


def _nsets(device: str, set_bytes: int) -> int:
    """Input sets to rotate through so that the working set exceeds the last-level cache."""
    l2 = 60 << 20 if device == "cuda" else 32 << 20
    return max(2, min(6, (3 * l2) // max(set_bytes, 1) + 1))


def bench_act(kind: str, device: str, rows: int, cols: int, dtype: torch.dtype, quick: bool) -> List[Dict]:
    """One activation (or SwiGLU) forward and forward+backward, ours vs torch's (unfused) ops and Liger."""
    n_in, has_bias, ours, theirs = ACT_KINDS[kind]
    elem = torch.tensor([], dtype=dtype).element_size()
    set_bytes = rows * cols * elem * (n_in + 1)
    g = torch.Generator(device="cpu").manual_seed(0)

    def draw(shape, scale=1.0):
        return (scale * torch.randn(shape, generator=g)).to(dtype).to(device)

    def inputs():
        x = [draw((rows, cols), 3.0)] + ([draw((rows, cols))] if n_in == 2 else [])
        return x + ([draw((cols,))] if has_bias else [])

    sets = [(inputs(), [draw((rows, cols))]) for _ in range(_nsets(device, set_bytes))]

    def adapt(f):  # f(a, u, b) over the inputs present
        if n_in == 2:
            return lambda a, u: f(a, u, None)
        return (lambda a, b: f(a, None, b)) if has_bias else (lambda a: f(a, None, None))

    peers: Dict[str, Callable] = {"metalcore": adapt(ours), "torch": adapt(theirs)}
    liger = _liger_glu(kind) if device == "cuda" and kind == "swiglu" else None
    if liger is not None:
        peers["Liger"] = adapt(liger)
    case = f"{kind} {rows}x{cols} {str(dtype).replace('torch.', '')}"
    return bench_peers(kind, case, device, peers, sets, [], set_bytes, quick)


def _liger_rope():
    try:
        from liger_kernel.ops.rope import LigerRopeFunction  # type: ignore

        return lambda q, k, cos, sin: LigerRopeFunction.apply(q, k, cos, sin)
    except Exception:  # noqa: BLE001 - Liger is optional
        return None


def _hf_rope(q, k, cos, sin):
    """HF Llama's apply_rotary_pos_emb (q * cos + rotate_half(q) * sin), in torch ops."""
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)

    def rot(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    return q * c + rot(q) * s, k * c + rot(k) * s


def bench_rope(device: str, batch: int, heads: int, seq: int, dim: int, dtype: torch.dtype, quick: bool) -> List[Dict]:
    """RoPE on q and k (batch, heads, seq, dim) with HF's (1, seq, dim) cos/sin: ours vs HF's formula and Liger."""
    elem = torch.tensor([], dtype=dtype).element_size()
    numel = batch * heads * seq * dim
    set_bytes = 4 * numel * elem
    g = torch.Generator(device="cpu").manual_seed(0)

    def draw():
        return torch.randn(batch, heads, seq, dim, generator=g).to(dtype).to(device)

    sets = [([draw(), draw()], [draw(), draw()]) for _ in range(_nsets(device, set_bytes))]
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    f = torch.arange(seq).float()[:, None] * inv
    emb = torch.cat((f, f), -1)[None]
    cos, sin = emb.cos().to(dtype).to(device), emb.sin().to(dtype).to(device)
    peers: Dict[str, Callable] = {"metalcore": lambda q, k, c, s: metalcore.apply_rotary_pos_emb(q, k, c, s), "torch": _hf_rope}
    liger = _liger_rope() if device == "cuda" else None
    if liger is not None:
        peers["Liger"] = liger
    case = f"q+k {batch}x{heads}x{seq}x{dim} {str(dtype).replace('torch.', '')}"
    return bench_peers("rope", case, device, peers, sets, [cos, sin], set_bytes, quick)


def _liger_ce():
    try:
        from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction  # type: ignore

        return lambda x, t: LigerCrossEntropyFunction.apply(x, t, None)[0]
    except Exception:  # noqa: BLE001 - Liger is optional
        return None


def bench_xent(device: str, rows: int, vocab: int, dtype: torch.dtype, quick: bool) -> List[Dict]:
    """Cross-entropy (mean) over (rows, vocab) logits: ours vs F.cross_entropy and Liger."""
    elem = torch.tensor([], dtype=dtype).element_size()
    set_bytes = rows * vocab * elem
    g = torch.Generator(device="cpu").manual_seed(0)

    def draw():
        return (2 * torch.randn(rows, vocab, generator=g)).to(dtype).to(device)

    sets = [([draw()], [torch.ones((), dtype=dtype, device=device)]) for _ in range(_nsets(device, set_bytes))]
    t = torch.randint(0, vocab, (rows,), generator=g)
    t[::7] = -100
    t = t.to(device)
    peers: Dict[str, Callable] = {"metalcore": lambda x, tt: metalcore.cross_entropy(x, tt),
                                  "torch": lambda x, tt: torch.nn.functional.cross_entropy(x, tt)}
    liger = _liger_ce() if device == "cuda" else None
    if liger is not None:
        peers["Liger"] = liger
    case = f"{rows}x{vocab} {str(dtype).replace('torch.', '')}"
    return bench_peers("cross_entropy", case, device, peers, sets, [t], set_bytes, quick)


def bench_adamw(device: str, n_params: int, numel: int, dtype: torch.dtype, quick: bool) -> str:
    """One optimizer step over n_params tensors of numel elements: ours vs torch's AdamW variants."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def params():
        ps = [torch.nn.Parameter(torch.randn(numel, generator=g).to(dtype).to(device)) for _ in range(n_params)]
        for p in ps:
            p.grad = (1e-3 * torch.randn(numel, generator=g)).to(dtype).to(device)
        return ps

    peers = {"metalcore": lambda ps: metalcore.MetalAdamW(ps, lr=1e-4),
             "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True),
             "torch foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True)}
    reps = 5 if quick else 100  # CUDA: 20 samples of 5 steps
    lines = []
    times = {}
    for name, make in peers.items():
        ps = params()
        opt = make(ps)
        opt.step()
        t = time_ms(lambda i: opt.step(), device, reps=reps, batch=5 if device == "cuda" else 1, min_time=0.0, warmup=3)
        gt = graph_ms(lambda i: opt.step(), 1) if device == "cuda" and name == "metalcore" else float("nan")
        times[name] = t
        del opt, ps
        if device == "cuda":
            torch.cuda.empty_cache()
        lines.append((name, t, gt))
    base = times["torch fused"]
    out = ["| case | impl | step ms | vs torch fused | graph step ms |", "|---|---|---|---|---|"]
    for name, t, gt in lines:
        out.append(f"| {n_params} x {numel} {str(dtype).replace('torch.', '')} | {name} | {t:.3f} | {base / t:.2f}x | {gt:.3f} |")
    return "\n".join(out)


def bench_embag(device: str, num: int, dim: int, n_bags: int, bag: int, quick: bool) -> List[Dict]:
    """EmbeddingBag (sum) forward and forward+backward to the weight: ours vs F.embedding_bag."""
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(num, dim, generator=g).to(device)
    idx = torch.randint(0, num, (n_bags * bag,), generator=g).to(device)
    off = torch.arange(0, n_bags * bag, bag).to(device)
    set_bytes = (n_bags * bag + n_bags) * dim * 4
    sets = [([w], [torch.randn(n_bags, dim, generator=g).to(device)]) for _ in range(2)]
    peers: Dict[str, Callable] = {"metalcore": lambda w_, i, o: metalcore.embedding_bag(w_, i, o, "sum"),
                                  "torch": lambda w_, i, o: torch.nn.functional.embedding_bag(i, w_, o, mode="sum")}
    case = f"sum {num}x{dim}, {n_bags} bags of {bag} float32"
    return bench_peers("embedding_bag", case, device, peers, sets, [idx, off], set_bytes, quick)


def _torch_deterministic(f: Callable) -> Callable:
    """`f` called under ``torch.use_deterministic_algorithms(True)`` (its forward; the backward of
    scatter_add is a gather, deterministic anyway)."""

    def run(*args):
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return f(*args)
        finally:
            torch.use_deterministic_algorithms(prev)

    return run


def _torch_scatter_add(x, s, i):
    return torch.scatter_add(x, 1, i, s)


def bench_index(device: str, rows: int, cols: int, num: int, dim: int, n_sel: int, quick: bool) -> List[Dict]:
    """gather and scatter_add (atomic and deterministic) along dim 1 of (rows, cols) with a full
    (rows, cols) index, float32 and bfloat16; index_select of n_sel rows of a (num, dim) float32
    table: forward and forward+backward, ours vs torch."""
    g = torch.Generator(device="cpu").manual_seed(0)
    idx = torch.randint(0, cols, (rows, cols), generator=g).to(device)
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        elem, dt = torch.tensor([], dtype=dtype).element_size(), str(dtype).replace("torch.", "")

        def draw():
            return torch.randn(rows, cols, generator=g).to(dtype).to(device)

        set_bytes = rows * cols * (8 + 2 * elem)  # the index, one read of the input, one write
        sets = [([draw()], [draw()]) for _ in range(_nsets(device, set_bytes))]
        peers: Dict[str, Callable] = {"metalcore": lambda x, i: metalcore.gather(x, 1, i), "torch": lambda x, i: torch.gather(x, 1, i)}
        out += bench_peers("gather", f"gather {rows}x{cols} {dt}, dim 1", device, peers, sets, [idx], set_bytes, quick)
        set_bytes = rows * cols * (8 + 3 * elem)  # the index, src and input read, the output written
        sets = [([draw(), draw()], [draw()]) for _ in range(_nsets(device, set_bytes))]
        for det in (False, True):
            theirs = _torch_scatter_add if not det else _torch_deterministic(_torch_scatter_add)
            peers = {"metalcore": lambda x, s, i, det=det: metalcore.scatter_add(x, 1, i, s, deterministic=det), "torch": theirs}
            case = f"scatter_add{' det' if det else ''} {rows}x{cols} {dt}, dim 1"
            out += bench_peers("scatter_add", case, device, peers, sets, [idx], set_bytes, quick)
    sel = torch.randint(0, num, (n_sel,), generator=g).to(device)
    set_bytes = 2 * n_sel * dim * 4 + n_sel * 8
    sets = [([torch.randn(num, dim, generator=g).to(device)], [torch.randn(n_sel, dim, generator=g).to(device)])
            for _ in range(_nsets(device, num * dim * 4))]
    peers = {"metalcore": lambda t, i: metalcore.index_select(t, 0, i), "torch": lambda t, i: torch.index_select(t, 0, i)}
    out += bench_peers("index_select", f"index_select {n_sel} of {num}x{dim} float32", device, peers, sets, [sel], set_bytes, quick)
    return out



# (op, batch, m, n, k): k right-hand sides for the solves. The CUDA cases are the issue's table.
LINALG_CASES = {
    "cpu": [(op, b, n, n, 1) for b, n in [(1000, 16), (1000, 32), (10000, 16), (100, 64), (100, 128), (2, 512)]
            for op in ("cholesky", "cholesky_solve", "solve (LU)", "qr")],
    "cuda": [("qr", 500, 16, 16, 0), ("qr", 1000, 32, 32, 0), ("qr", 100, 64, 64, 0), ("qr", 100, 128, 64, 0),
             ("qr", 1, 4096, 4096, 0), ("cholesky", 500, 16, 16, 0), ("cholesky", 100, 64, 64, 0),
             ("cholesky", 1000, 128, 128, 0), ("cholesky", 1, 4096, 4096, 0), ("cholesky (blocked)", 1, 4096, 4096, 0),
             ("cholesky_solve", 1000, 32, 32, 1), ("cholesky_solve", 1, 4096, 4096, 1),
             ("solve (LU)", 1000, 32, 32, 1), ("solve (LU)", 10000, 16, 16, 1), ("solve (LU)", 100, 128, 128, 16),
             ("solve (LU)", 1, 2048, 2048, 1), ("solve (LU)", 1, 4096, 4096, 1)],
}


def _blocked_cholesky(a: torch.Tensor) -> torch.Tensor:
    """metalcore.cholesky with the blocked large-matrix path switched on (it is off by default)."""
    import metalcore.linalg as ml

    old, ml.BLOCKED_CHOLESKY = ml.BLOCKED_CHOLESKY, True
    try:
        return metalcore.cholesky(a)
    finally:
        ml.BLOCKED_CHOLESKY = old


def bench_linalg(device: str, quick: bool) -> str:
    """Batched factorizations and solves, float32, ours vs torch.linalg: a markdown table."""
    lines = ["| case | op | metalcore ms | torch ms | speed-up | our error | torch error |", "|---|---|---|---|---|---|---|"]
    reps = 10 if quick else 50
    g = torch.Generator(device="cpu").manual_seed(0)
    for op, b, m_, n, k in LINALG_CASES[device]:
        big = m_ * n * b > (1 << 24)
        if op == "qr":
            a64 = torch.randn(b, m_, n, generator=g, dtype=torch.float64)
            a = a64.float().to(device)

            def err(qr_):
                q, r = (t.double().cpu() for t in qr_)
                rec = ((q @ r - a64).flatten(-2).norm(dim=-1) / a64.flatten(-2).norm(dim=-1)).max().item()
                orth = (q.mT @ q - torch.eye(q.shape[-1], dtype=torch.float64)).abs().max().item()
                return max(rec, orth)

            ours, theirs = (lambda: metalcore.qr(a)), (lambda: torch.linalg.qr(a))
        else:
            m = torch.randn(b, n, n, generator=g, dtype=torch.float64)
            a64 = m @ m.mT + n * torch.eye(n, dtype=torch.float64)
            a = a64.float().to(device)
            rhs = torch.randn(b, n, max(k, 1), generator=g).to(device)
            l_t = torch.linalg.cholesky(a)

            def recon(l):
                l = l.double().cpu()
                return ((l @ l.mT - a64).flatten(-2).norm(dim=-1) / a64.flatten(-2).norm(dim=-1)).max().item()

            def resid(x):
                x = x.double().cpu()
                r = (a64 @ x - rhs.double().cpu()).flatten(-2).norm(dim=-1)
                return (r / (a64.flatten(-2).norm(dim=-1) * x.flatten(-2).norm(dim=-1))).max().item()

            ours, theirs, err = {
                "cholesky": (lambda: metalcore.cholesky(a), lambda: torch.linalg.cholesky(a), recon),
                "cholesky (blocked)": (lambda: _blocked_cholesky(a), lambda: torch.linalg.cholesky(a), recon),
                "cholesky_solve": (lambda: metalcore.cholesky_solve(rhs, l_t), lambda: torch.cholesky_solve(rhs, l_t), resid),
                "solve (LU)": (lambda: metalcore.solve(a, rhs), lambda: torch.linalg.solve(a, rhs), resid),
            }[op]
        r_ = 5 if big or (device == "cpu" and op == "qr" and n >= 64) else reps
        t_o = time_ms(lambda i: ours(), device, reps=r_, batch=1 if big or device == "cpu" else 10)
        t_t = time_ms(lambda i: theirs(), device, reps=r_, batch=1 if big or device == "cpu" else 10)
        shape = f"{b}x{m_}x{n}" + (f" k={k}" if k > 1 else "")
        lines.append(f"| {shape} float32 | {op} | {t_o:.3f} | {t_t:.3f} | {t_t / t_o:.2f}x | "
                     f"{err(ours()):.1e} | {err(theirs()):.1e} |")
    return "\n".join(lines)


SPECTRAL_CASES = {
    "cpu": [("svd", 100, 64, 64), ("eigh", 100, 64, 64), ("svd", 1000, 16, 16), ("eigh", 1000, 32, 32)],
    "cuda": [("svd", 500, 16, 16), ("svd", 100, 64, 64), ("svd", 64, 128, 128), ("svd", 1, 1024, 1024),
             ("svd", 1, 4096, 4096), ("svd", 1, 4096, 11008),
             ("eigh", 1000, 32, 32), ("eigh", 100, 64, 64), ("eigh", 100, 128, 128), ("eigh", 500, 100, 100),
             ("eigh", 1, 1024, 1024), ("eigh", 1, 4096, 4096)],
}


def bench_spectral(device: str, quick: bool) -> str:
    """Batched SVD and symmetric eigendecomposition, float32, ours vs torch.linalg."""
    lines = ["| case | op | metalcore ms | torch ms | speed-up | our error | torch error |", "|---|---|---|---|---|---|---|"]
    g = torch.Generator(device="cpu").manual_seed(0)
    for op, b, m_, n in SPECTRAL_CASES[device]:
        a64 = torch.randn(b, m_, n, generator=g, dtype=torch.float64)
        if op == "eigh":
            a64 = a64 + a64.mT
        a = a64.float().to(device)
        eye = torch.eye(min(m_, n), dtype=torch.float64)

        def err(res, op=op, a64=a64, eye=eye):
            if op == "svd":
                u, s_, v = (t.double().cpu() for t in res)
                rec = (u * s_.unsqueeze(-2)) @ v.mT
                orth = max((u.mT @ u - eye).abs().max().item(), (v.mT @ v - eye).abs().max().item())
            else:
                l_, v = (t.double().cpu() for t in res)
                rec = (v * l_.unsqueeze(-2)) @ v.mT
                orth = (v.mT @ v - eye).abs().max().item()
            r = ((rec - a64).flatten(-2).norm(dim=-1) / a64.flatten(-2).norm(dim=-1)).max().item()
            return max(r, orth)

        if op == "svd":
            ours = lambda a=a: metalcore.svd(a)  # noqa: E731
            theirs = lambda a=a: (lambda r: (r[0], r[1], r[2].mT))(torch.linalg.svd(a, full_matrices=False))  # noqa: E731
        else:
            ours = lambda a=a: metalcore.eigh(a)  # noqa: E731
            theirs = lambda a=a: torch.linalg.eigh(a)  # noqa: E731
        heavy = device == "cpu" or n >= 512 or (device == "cuda" and n >= 64)
        reps = 5 if heavy or quick else 30
        t_o = time_ms(lambda i: ours(), device, reps=reps, batch=1, warmup=2, min_time=0.0)
        t_t = time_ms(lambda i: theirs(), device, reps=reps, batch=1, warmup=2, min_time=0.0)
        lines.append(f"| {b}x{m_}x{n} float32 | {op} | {t_o:.3f} | {t_t:.3f} | {t_t / t_o:.2f}x | "
                     f"{err(ours()):.1e} | {err(theirs()):.1e} |")
    return "\n".join(lines)


SPECTRAL_LEGEND = """Milliseconds per call (median; CUDA events around each call, which includes its host work),
float32. `error`: max over the batch of ||U diag(S) Vᵀ − A|| / ||A|| (eigh: ||V diag(L) Vᵀ − A|| / ||A||) and
of max|UᵀU − I|, |VᵀV − I|, against the float64 matrices. Inputs are Gaussian (eigh: A + Aᵀ).
metalcore on CUDA: batched Jacobi — up to 32×32 (float64 16×16) one-sided in registers, 8–32
lanes per matrix, eigh on the shifted A + ‖A‖_F I; larger, one CUDA block per matrix (one-sided
Jacobi for svd; eigh up to 128 by Householder tridiagonalization, bisection and twisted
factorizations, `eigh_tri_kernel`, past that two-sided Jacobi). Single matrices past one block (the
1024² and 4096² rows): eigh by the large-matrix path (blocked tridiagonal reduction on
cooperative launches, float64 bisection and twisted factorizations, cuBLAS back-transformation);
svd through the Gram matrix in float64 and that eigensolver (README, "Large matrices"). On the CPU: eigh by
Householder tridiagonalization and the implicit QL iteration (past 32 rows, eight matrices at a
time, the eigenvectors from float64 twisted vectors of the tridiagonal matrix and the reflectors,
README "CPU eigh"); float32 svd through that solver on
AᵀA in float64, then A V normalized, Gram–Schmidt only on its columns with σ < 1e-3 σ₁
(README, "CPU eigh")."""


def _table(rows: List[Dict], device: str) -> str:
    cuda = device == "cuda"
    head = "| case | impl | fwd ms | fwd GB/s | fwd+bwd ms | vs torch | fwd err | bwd err |"
    sep = "|---|---|---|---|---|---|---|---|"
    if cuda:
        head += " graph fwd ms | graph fwd GB/s | graph fwd+bwd ms | graph vs torch | host us fwd / fwd+bwd |"
        sep += "---|---|---|---|---|"
    lines = [head, sep]
    base = {r["case"]: r for r in rows if r["impl"] == "torch"}

    def ratio(b, v):
        return f"{b / v:.2f}x" if b and v == v and b == b else "-"

    for r in rows:
        b = base.get(r["case"], {})
        line = (f"| {r['case']} | {r['impl']} | {r['fwd_ms']:.4f} | {r['fwd_gbs']:.0f} | {r['fwdbwd_ms']:.4f} | "
                f"{ratio(b.get('fwdbwd_ms'), r['fwdbwd_ms'])} | {r['fwd_err']:.1e} | {r['bwd_err']:.1e} |")
        if cuda:
            gbs = r["bytes"] / (r["graph_f"] * 1e-3) / 1e9
            line += (f" {r['graph_f']:.4f} | {gbs:.0f} | {r['graph_fb']:.4f} | {ratio(b.get('graph_fb'), r['graph_fb'])} | "
                     f"{r['host_f']:.0f} / {r['host_fb']:.0f} |")
        lines.append(line)
    return "\n".join(lines)


LEGEND = """Columns: `fwd ms` / `fwd+bwd ms` are eager calls, the median per call of batches of 10
back-to-back calls between CUDA events (wall clock on CPU); `graph ...` are the same calls
replayed from a CUDA graph (device time alone, host overhead removed); `host us` is the Python+launch
time per call while the GPU is kept busy. GB/s counts one read of x and one write of y. `err` is
||out - ref|| / ||ref|| against float64 (bwd: the worst of dx, dw and, for LayerNorm, db). `vs torch`
is torch's time over ours (above 1 means we are faster), for fwd+bwd. torch = `F.rms_norm` /
`F.layer_norm`; HF eager = the LlamaRMSNorm formula in plain torch ops."""

LINALG_LEGEND = """Median milliseconds per call, float32 (on CUDA: between CUDA events, 10 back-to-back calls
per sample for the batched cases; each call includes its host work: copies, allocation, and for
`cholesky`/`solve` the error check that reads `info` back, as torch's own functions do).
`error`: the largest per-matrix ||L Lᵀ − A|| / ||A|| (cholesky), ||A x − b|| / (||A|| ||x||) (the
solves) or max(||QR − A|| / ||A||, max|QᵀQ − I|) (qr) against the float64 matrices. Cholesky and
solve inputs are symmetric positive definite; QR inputs are Gaussian. Matrices too large for one
CUDA block's shared memory (the 2048² and 4096² cases) go to torch.linalg's own kernel, with a
warning: those rows show the fallback's cost, not a metalcore kernel — except `cholesky (blocked)`
(metalcore's blocked path, off by default: `metalcore.linalg.BLOCKED_CHOLESKY`), `cholesky_solve`,
whose large triangular solves run on cuBLAS TRSM through torch's handle, and `solve (LU)`,
metalcore's blocked LU (its kernels for the panels, cuBLAS TRSM and GEMM for the trailing matrix;
float32 up to n = 4096: `metalcore.linalg.BLOCKED_LU_MAX_N`), and `qr` 4096², metalcore's blocked
Householder QR (its kernels for the panels, cuBLAS GEMM and TRSM to apply them; float32 up to
4096 rows: `metalcore.linalg.BLOCKED_QR_MAX_M`)."""

ACT_LEGEND = LEGEND.split(" GB/s counts")[0] + """ GB/s counts one read of each input (x, or gate and up) and one
write of the output. `err` is ||out - ref|| / ||ref|| against float64 (bwd: the worst gradient).
`vs torch` is torch's time over ours for fwd+bwd. torch = `F.silu` / `F.gelu`, and for the fused
ops the unfused formula in torch ops (`F.gelu(x + b)`, `F.silu(gate) * up`); Liger =
`LigerSiLUMulFunction` (SwiGLU only: Liger has no plain activation kernels)."""

ROPE_LEGEND = LEGEND.split(" GB/s counts")[0] + """ GB/s counts one read and one write of q and k.
`err` is ||out - ref|| / ||ref|| against float64 (the worse of q and k; bwd: of dq and dk).
`vs torch` is torch's time over ours for fwd+bwd. torch = HF Llama's `apply_rotary_pos_emb`
(`q * cos + rotate_half(q) * sin`) in eager torch ops; Liger = `LigerRopeFunction`. cos/sin are
HF's (1, seq, dim) tables in the data's dtype."""

XENT_LEGEND = LEGEND.split(" GB/s counts")[0] + """ GB/s counts one read of the logits. `err` is the
relative error of the loss (fwd) and of the logits' gradient (bwd) against float64.
Reduction `mean`, every 7th target ignored. torch = `F.cross_entropy`; Liger =
`LigerCrossEntropyFunction` (which overwrites the logits with their gradient). Our eager fwd+bwd
writes the gradient during the forward and checks the output gradient is 1 in the backward (one
host sync); under CUDA-graph capture that check is impossible, so the graph fwd+bwd column
recomputes the gradient in the backward (one more pass over the logits)."""

ADAMW_LEGEND = """Milliseconds per `optimizer.step()` (median, wall clock between CUDA events on GPU, including the
Python work of each optimizer), fp32 parameters with fp32 gradients already in place. `graph step ms`:
our step replayed from a CUDA graph (device time alone; our step has no host sync)."""

EMBAG_LEGEND = LEGEND.split(" GB/s counts")[0] + """ GB/s counts the rows read (one per index) and the
bags written. `err` is the relative error of the output (fwd) and of the weight's gradient (bwd)
against float64. torch = `F.embedding_bag`. Our eager forward checks the indices and offsets (one
host sync); the graph columns skip that check (it is impossible under capture)."""

INDEX_LEGEND = LEGEND.split(" GB/s counts")[0] + """ GB/s counts the index (8 bytes an element) and one
read and one write of each element moved (gather: input and output; scatter_add: input, src and
output; index_select: the selected rows and the output). `err` is ||out - ref|| / ||ref|| against
float64 (bwd: the worst gradient). torch = `torch.gather` / `torch.scatter_add` /
`torch.index_select`; for `scatter_add det` torch runs under `torch.use_deterministic_algorithms(True)`
and we with `deterministic=True` (sorted runs, no float atomics; on the CPU both settings run the
same deterministic code). On CUDA our eager forward checks the index range first (one host sync;
the CPU kernels check every index as they read it); the graph columns skip that check. Backward: gather → scatter-add into zeros (ours: atomics into float32 on
CUDA), scatter_add → gather, index_select → index_add into zeros (ours deterministic, sorted)."""

OPS = ("rmsnorm", "layernorm", "softmax", "act", "rope", "xent", "embag", "index", "adamw", "linalg", "spectral")
TITLES = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm", "softmax": "Softmax (last dim)",
          "act": "Activations and SwiGLU", "rope": "RoPE (q and k)", "xent": "Cross-entropy", "embag": "EmbeddingBag",
          "index": "gather, scatter_add, index_select", "adamw": "AdamW step",
          "linalg": "Batched factorizations and solves", "spectral": "Batched SVD and eigh"}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m metalcore.bench", description=__doc__)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cpu, or cuda with --gpu when present")
    ap.add_argument("--gpu", action="store_true", help="use CUDA when present (the default device is the CPU)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--out", default=None, help="folder for the results markdown (default: none written)")
    ap.add_argument("--op", choices=OPS + ("all",), default="all", help="which op family to benchmark")
    ap.add_argument("--case", action="append", default=None, metavar="ROWSxCOLS:DTYPE",
                    help="benchmark only these cases, e.g. 8192x4096:bfloat16 (repeatable)")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    steady = steady_cpu_allocator()
    if device == "cuda":
        cases = [(8192, 4096, torch.bfloat16), (8192, 4096, torch.float16), (8192, 4096, torch.float32),
                 (16384, 8192, torch.bfloat16), (65536, 1024, torch.bfloat16), (4096, 4097, torch.bfloat16)]
    else:
        cases = [(2048, 4096, torch.float32), (2048, 4096, torch.bfloat16), (2048, 4096, torch.float16)]
    if args.case:
        cases = []
        for spec in args.case:
            shape, dt = spec.split(":")
            r, c = (int(v) for v in shape.lower().split("x"))
            cases.append((r, c, getattr(torch, dt)))
    header = (f"device: {_device_name(device)}; torch {torch.__version__}; metalcore {metalcore.__version__}; "
              f"date {datetime.date.today().isoformat()}"
              + (f"; CPU kernels: {metalcore._native.cpu_isa()}" if device == "cpu" else "")
              + ("; CPU allocator: glibc with mmap and trimming off (see `steady_cpu_allocator`)" if steady else ""))
    print(header)
    for op in OPS if args.op == "all" else (args.op,):
        if op == "adamw":
            shapes = [(100, 1 << 20, torch.float32)] if device == "cuda" else [(20, 1 << 20, torch.float32), (100, 10000, torch.float32)]
            table = "\n\n".join(bench_adamw(device, n, m, dt, args.quick) for n, m, dt in shapes)
        elif op == "linalg":
            table = bench_linalg(device, args.quick)
        elif op == "spectral":
            table = bench_spectral(device, args.quick)
        else:
            rows: List[Dict] = []
            op_cases = cases
            if op == "softmax" and not args.case:
                op_cases = ([(4096, 32768, torch.float32), (8192, 4096, torch.bfloat16), (4096, 4097, torch.bfloat16)]
                            if device == "cuda" else cases)
            if op == "rope":
                shapes = ([(4, 32, 4096, 128, torch.bfloat16), (4, 32, 4096, 128, torch.float32)] if device == "cuda"
                          else [(1, 32, 512, 128, torch.float32), (1, 32, 512, 128, torch.bfloat16),
                                (1, 32, 512, 128, torch.float16)])
                for b_, h_, s_, d_, dt in shapes:
                    rows += bench_rope(device, b_, h_, s_, d_, dt, args.quick)
                op_cases = []
            if op == "xent":
                shapes = ([(8192, 128256, torch.bfloat16), (4096, 32000, torch.float32)] if device == "cuda"
                          else [(512, 32000, torch.float32), (512, 32000, torch.bfloat16)])
                for r_, v_, dt in shapes:
                    rows += bench_xent(device, r_, v_, dt, args.quick)
                op_cases = []
            if op == "embag":
                shapes = [(131072, 1024, 16384, 32)] if device == "cuda" else [(32768, 256, 4096, 32)]
                for num_, dim_, nb_, bl_ in shapes:
                    rows += bench_embag(device, num_, dim_, nb_, bl_, args.quick)
                op_cases = []
            if op == "index":
                sizes = (8192, 4096, 131072, 1024, 16384) if device == "cuda" else (2048, 4096, 32768, 1024, 16384)
                rows += bench_index(device, *sizes, args.quick)
                op_cases = []
            if op == "act":
                if not args.case:
                    op_cases = [(8192, 14336, torch.bfloat16)] if device == "cuda" else cases
                for r, c, dt in op_cases:
                    for kind in ACT_KINDS:
                        rows += bench_act(kind, device, r, c, dt, args.quick)
            for r, c, dt in op_cases if op not in ("act", "rope", "xent", "embag", "index") else ():
                rows += bench_softmax(device, r, c, dt, args.quick) if op == "softmax" else bench_norm(op, device, r, c, dt, args.quick)
            table = _table(rows, device)
        print(f"\n## {TITLES[op]}\n{table}")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            slug = re.sub(r"[^A-Za-z0-9]+", "-", _device_name(device)).strip("-").lower()
            path = os.path.join(args.out, f"{op}-{device}-{slug}.md")
            with open(path, "w") as f:
                f.write(f"# {TITLES[op]} benchmark\n\n{header}\n\nCommand: `python -m metalcore.bench --device {device} --op {op}`\n\n"
                        f"{ {'linalg': LINALG_LEGEND, 'spectral': SPECTRAL_LEGEND, 'act': ACT_LEGEND, 'rope': ROPE_LEGEND, 'xent': XENT_LEGEND, 'embag': EMBAG_LEGEND, 'index': INDEX_LEGEND, 'adamw': ADAMW_LEGEND}.get(op, LEGEND)}\n\n{table}\n")
            print(f"written: {path}")


if __name__ == "__main__":
    main()
