"""RMSNorm / fused add + RMSNorm against float64 references, on every test device.

The HF formulas below are copied from transformers (LlamaRMSNorm and GemmaRMSNorm,
https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py
and .../models/gemma/modeling_gemma.py) and define the expected semantics.
"""

import math
import warnings

import pytest
import torch

import metalcore
from metalcore import MetalRMSNorm, FusedAddRMSNorm, fused_add_rmsnorm, rms_norm
from conftest import DEVICES, assert_close_to_ref, grads_of, make, rel_err

LOWP = [torch.float32, torch.float16, torch.bfloat16]


def hf_llama_rmsnorm(hidden_states, weight, eps):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def hf_gemma_rmsnorm(x, weight, eps):
    def _norm(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    output = _norm(x.float())
    output = output * (1.0 + weight.float())
    return output.type_as(x)


def ref64(x, weight, eps, offset, casting, residual=None):
    """The float64 truth: same formula, no intermediate rounding."""
    s = x.double() if residual is None else (x.double() + residual.double())
    h = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    return h if weight is None else h * (weight.double() + offset)


def llama_dw_floor(s, dy, eps, truth_dw):
    """Error floor for a low-precision Llama dw: the error, against the unrounded `truth_dw`, of
    the correctly rounded exact gradient of the function HF specifies (``dw = Σ dy · x̂`` with x̂
    computed in float32 and cast to the input dtype before the weight multiply). Our dw is that
    value rounded once; torch's differs by its own rounding of each product, which on a tiny
    reduction (5 rows) sometimes cancels the cast's error by luck (about 1 draw in 100)."""
    s32 = s.detach().float()
    xh = (s32 * torch.rsqrt(s32.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype).double()
    exact = (dy.double() * xh).reshape(-1, s.shape[-1]).sum(0)
    return 2 * rel_err(exact.to(s.dtype), truth_dw)


SHAPES = [(3, 1), (5, 7), (4, 64), (3, 4097), (2, 8192), (2, 3, 96)]


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wmode", ["none", "same", "fp32"])
@pytest.mark.parametrize("casting", ["llama", "gemma"])
def test_forward_matches_float64(device, dtype, shape, wmode, casting):
    x = make(shape, dtype, device, scale=3.0)
    n = shape[-1]
    w = None if wmode == "none" else make((n,), dtype if wmode == "same" else torch.float32, device)
    offset = 1.0 if casting == "gemma" else 0.0
    y = rms_norm(x, w, 1e-6, offset=offset, casting=casting)
    torch_own = metalcore.reference.rms_norm(x, w, 1e-6, offset, casting)
    assert y.shape == x.shape and y.dtype == torch_own.dtype
    assert_close_to_ref(y, torch_own, ref64(x, w, 1e-6, offset, casting), what="forward")


@pytest.mark.parametrize("dtype", LOWP)
def test_matches_hf_modules_exactly_in_float32_and_closely_in_low_precision(device, dtype):
    x = make((6, 256), dtype, device, scale=2.0)
    w = make((256,), dtype, device)
    y = rms_norm(x, w, 1e-5)
    hf = hf_llama_rmsnorm(x, w, 1e-5)
    assert y.dtype == hf.dtype
    assert_close_to_ref(y, hf, ref64(x, w, 1e-5, 0.0, "llama"), what="llama")
    g = rms_norm(x, w, 1e-5, offset=1.0, casting="gemma")
    hfg = hf_gemma_rmsnorm(x, w, 1e-5)
    assert g.dtype == hfg.dtype
    assert_close_to_ref(g, hfg, ref64(x, w, 1e-5, 1.0, "gemma"), what="gemma")



@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4097), (2, 8192), (33, 512), (2, 3, 96)])
@pytest.mark.parametrize("casting", ["llama", "gemma"])
def test_backward_matches_float64(device, dtype, shape, casting):
    n = shape[-1]
    offset = 1.0 if casting == "gemma" else 0.0
    x = make(shape, dtype, device, scale=2.0, requires_grad=True)
    w = make((n,), dtype, device, requires_grad=True)
    dy = make(shape, dtype, device)
    ours = grads_of(lambda a, b: rms_norm(a, b, 1e-6, offset=offset, casting=casting), (x, w), dy)
    torch_own = grads_of(lambda a, b: metalcore.reference.rms_norm(a, b, 1e-6, offset, casting), (x, w), dy)
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    truth = grads_of(lambda a, b: ref64(a, b, 1e-6, offset, casting), (x64, w64), dy.double())
    for name, o, t, r in zip(("dx", "dw"), ours, torch_own, truth):
        assert o.dtype == t.dtype and o.shape == t.shape
        floor = 2e-6 + (llama_dw_floor(x, dy, 1e-6, r) if name == "dw" and casting == "llama" else 0.0)
        assert_close_to_ref(o, t, r, what=name, floor=floor)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4097), (4, 2048)])
def test_fused_add_forward_and_backward(device, dtype, shape):
    n = shape[-1]
    x = make(shape, dtype, device, requires_grad=True)
    r = make(shape, dtype, device, requires_grad=True)
    w = make((n,), dtype, device, requires_grad=True)
    y, s = fused_add_rmsnorm(x, r, w, 1e-6)
    y_t, s_t = metalcore.reference.fused_add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(s, s_t), "the residual sum is rounded exactly as torch's x + residual"
    assert_close_to_ref(y, y_t, ref64(x, w, 1e-6, 0.0, "llama", residual=r), what="fused forward")
    dy, ds = make(shape, dtype, device), make(shape, dtype, device)
    ours = grads_of(lambda a, b, c: fused_add_rmsnorm(a, b, c, 1e-6), (x, r, w), (dy, ds))
    torch_own = grads_of(lambda a, b, c: metalcore.reference.fused_add_rms_norm(a, b, c, 1e-6), (x, r, w), (dy, ds))
    xs = [t.detach().double().requires_grad_() for t in (x, r, w)]
    truth = grads_of(lambda a, b, c: (ref64(a, c, 1e-6, 0.0, "llama", residual=b), a + b), xs, (dy.double(), ds.double()))
    for name, o, t, tr in zip(("dx", "dresidual", "dw"), ours, torch_own, truth):
        floor = 2e-6 + (llama_dw_floor(s, dy, 1e-6, tr) if name == "dw" else 0.0)
        assert_close_to_ref(o, t, tr, what=name, floor=floor)


def test_fused_add_with_only_one_output_used(device):
    x = make((4, 33), torch.float32, device, requires_grad=True)
    r = make((4, 33), torch.float32, device, requires_grad=True)
    w = make((33,), torch.float32, device, requires_grad=True)
    y, _ = fused_add_rmsnorm(x, r, w)
    gx, gr, gw = torch.autograd.grad(y.square().sum(), (x, r, w))
    x64, r64, w64 = (t.detach().double().requires_grad_() for t in (x, r, w))
    tx, tr, tw = torch.autograd.grad(ref64(x64, w64, 1e-6, 0.0, "llama", residual=r64).square().sum(), (x64, r64, w64))
    assert rel_err(gx, tx) < 1e-5 and rel_err(gr, tr) < 1e-5 and rel_err(gw, tw) < 1e-5


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("casting", ["llama", "gemma"])
def test_gradcheck_float64(device, fused, casting):
    offset = 0.5 if casting == "gemma" else 0.0
    x = torch.randn(3, 11, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(11, dtype=torch.float64, device=device, requires_grad=True)
    if fused:
        r = torch.randn(3, 11, dtype=torch.float64, device=device, requires_grad=True)
        f = lambda a, b, c: fused_add_rmsnorm(a, b, c, 1e-6, offset=offset, casting=casting)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, r, w))
    else:
        f = lambda a, b: rms_norm(a, b, 1e-6, offset=offset, casting=casting)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w))
        assert torch.autograd.gradcheck(lambda a: rms_norm(a, None), (x,))


def test_float64_forward_is_exact_to_rounding(device):
    x = torch.randn(7, 300, dtype=torch.float64, device=device)
    w = torch.randn(300, dtype=torch.float64, device=device)
    assert rel_err(rms_norm(x, w), ref64(x, w, 1e-6, 0.0, "llama")) < 1e-14


@pytest.mark.parametrize("kind", ["transposed", "strided", "expanded_dy", "sliced_rows"])
def test_non_contiguous_inputs(device, kind):
    base = make((16, 70), torch.float32, device)
    if kind == "transposed":
        x = make((70, 16), torch.float32, device).t()  # last-dim stride 16
    elif kind == "strided":
        x = base[:, ::2]
    elif kind == "sliced_rows":
        x = base[::3, 5:40]
    else:
        x = base
    x = x.detach().requires_grad_()
    n = x.shape[-1]
    w = make((2 * n,), torch.float32, device)[::2].detach().requires_grad_()  # non-contiguous weight
    y = rms_norm(x, w)
    assert rel_err(y, ref64(x, w, 1e-6, 0.0, "llama")) < 1e-6
    dy = torch.ones((), device=device).expand(x.shape) if kind == "expanded_dy" else make(x.shape, torch.float32, device)
    gx, gw = torch.autograd.grad(y, (x, w), dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    tx, tw = torch.autograd.grad(ref64(x64, w64, 1e-6, 0.0, "llama"), (x64, w64), dy.double())
    assert rel_err(gx, tx) < 1e-5 and rel_err(gw, tw) < 1e-5


def test_non_contiguous_3d_inputs_mixed_with_contiguous(device):
    base = make((4, 6, 40), torch.float32, device)
    x = base.transpose(0, 1)[:, :, :33].detach().requires_grad_()  # (6, 4, 33), rows do not collapse
    r = make((6, 4, 33), torch.float32, device, requires_grad=True)  # contiguous
    w = make((33,), torch.float32, device, requires_grad=True)
    y, s = fused_add_rmsnorm(x, r, w)
    assert y.shape == x.shape and torch.equal(s, x + r)
    assert rel_err(y, ref64(x, w, 1e-6, 0.0, "llama", residual=r)) < 1e-6
    y2, s2 = fused_add_rmsnorm(r, x, w)  # the other way round
    assert rel_err(y2, y) < 1e-6
    dy = make(x.shape, torch.float32, device)
    gx, gr, gw = torch.autograd.grad(y, (x, r, w), dy)
    xs = [t.detach().double().requires_grad_() for t in (x, r, w)]
    tx, tr, tw = torch.autograd.grad(ref64(xs[0], xs[2], 1e-6, 0.0, "llama", residual=xs[1]), xs, dy.double())
    assert rel_err(gx, tx) < 1e-5 and rel_err(gr, tr) < 1e-5 and rel_err(gw, tw) < 1e-5
    y3 = rms_norm(x, w)
    assert rel_err(y3, ref64(x, w, 1e-6, 0.0, "llama")) < 1e-6


def test_repeated_signatures_reuse_plans_safely(device):
    # Calls of one signature are launched from a cached plan by data pointers: fresh tensors,
    # a misaligned view (vector loads must not be assumed) and gradients stay right, and a
    # different weight shape is still refused.
    w = torch.randn(40, device=device)
    for _ in range(3):
        base = torch.randn(6 * 40 + 1, device=device, requires_grad=True)
        for x in (base[:-1].view(6, 40), base[1:].view(6, 40)):  # aligned, then off by one element
            wr = w.clone().requires_grad_()
            y = rms_norm(x, wr)
            dy = torch.randn_like(y)
            gx, gw = torch.autograd.grad(y, (x, wr), dy)
            x64, w64 = x.detach().double().requires_grad_(), w.double().requires_grad_()
            y64 = ref64(x64, w64, 1e-6, 0.0, "llama")
            g64 = torch.autograd.grad(y64, (x64, w64), dy.double())
            assert rel_err(y, y64) < 1e-6 and rel_err(gx, g64[0]) < 1e-5 and rel_err(gw, g64[1]) < 1e-5
    with pytest.raises(ValueError, match="weight"):
        rms_norm(torch.randn(6, 40, device=device), torch.randn(39, device=device))
    with pytest.raises(ValueError, match="eps"):  # same tensors, a bad eps: refused every time
        for _ in range(2):
            rms_norm(torch.randn(6, 40, device=device), w, -1.0)


@pytest.mark.parametrize("fused", [False, True])
def test_repeated_signatures_with_every_gradient_layout(device, fused):
    # An eager call signature seen before skips the argument checks and reuses its forward and
    # backward plans: the backward must still take a non-contiguous (expanded) gradient, a missing
    # gradient of the residual output and a present one, in any order, on one cached signature.
    w = make((40,), torch.float32, device)
    for dy_kind in ("plain", "expanded", "plain", "expanded"):
        for res_grad in ((False, True) if fused else (False,)):
            x, r = (make((6, 40), torch.float32, device, requires_grad=True) for _ in range(2))
            wr = w.clone().requires_grad_()
            if fused:
                y, s = fused_add_rmsnorm(x, r, wr)
            else:
                y, s = rms_norm(x, wr), None
            dy = torch.ones((), device=device).expand(y.shape) if dy_kind == "expanded" else make(y.shape, torch.float32, device)
            ds = make(y.shape, torch.float32, device) if res_grad else None
            outs, grads = ((y, s), (dy, ds)) if res_grad else ((y,), (dy,))
            leaves = (x, r, wr) if fused else (x, wr)
            got = torch.autograd.grad(outs, leaves, grads)
            l64 = [t.detach().double().requires_grad_() for t in leaves]
            y64 = ref64(l64[0], l64[-1], 1e-6, 0.0, "llama", residual=l64[1] if fused else None)
            outs64 = (y64, l64[0] + l64[1]) if res_grad else (y64,)
            want = torch.autograd.grad(outs64, l64, tuple(g.double() for g in grads if g is not None))
            for a, b in zip(got, want):
                assert rel_err(a, b) < 1e-5
    from metalcore import _norm

    cached = [e for k, e in _norm.EAGER.items() if k[0] == "rms" and k[1] == (6, 40) and (k[4] is not None) == fused]
    # (autograd hands the fused backward a zero gradient for an unused residual output)
    assert cached and cached[0].fplan is not None and cached[0].bplans[int(fused)] is not None, "the cached path was taken"


@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (4, 0), (0,)])
def test_empty_tensors(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    n = shape[-1]
    w = torch.randn(n, device=device, requires_grad=True)
    y = rms_norm(x, w)
    assert y.shape == x.shape
    gx, gw = torch.autograd.grad(y, (x, w), torch.randn(shape, device=device))
    assert gx.shape == x.shape and gw.shape == w.shape
    assert torch.equal(gw, torch.zeros_like(gw)), "no rows: the weight gradient is exactly zero"
    r = torch.randn(shape, device=device)
    y2, s2 = fused_add_rmsnorm(x.detach(), r, w.detach())
    assert y2.shape == x.shape and torch.equal(s2, x.detach() + r)


def test_nan_and_inf_propagate_per_row(device):
    x = make((4, 257), torch.float32, device)
    x[1, 3] = float("nan")
    x[2, 100] = float("inf")
    w = make((257,), torch.float32, device)
    y = rms_norm(x, w)
    assert torch.isnan(y[1]).all(), "a NaN poisons its whole row"
    assert torch.isnan(y[2]).any(), "an Inf makes the row's norm infinite"
    ref = ref64(x[[0, 3]], w, 1e-6, 0.0, "llama")
    assert rel_err(y[[0, 3]], ref) < 1e-6, "other rows are untouched"
    xg = x.clone().requires_grad_()
    gx, = torch.autograd.grad(rms_norm(xg, w).sum(), (xg,))
    assert torch.isnan(gx[1]).all() and torch.isfinite(gx[[0, 3]]).all()


def test_modules_match_functional_and_train(device):
    torch.manual_seed(0)
    m = MetalRMSNorm(96, eps=1e-5).to(device)
    assert torch.equal(m.weight.detach().cpu(), torch.ones(96))
    with torch.no_grad():
        m.weight.mul_(torch.randn(96, device=device))
    x = make((4, 96), torch.float32, device, requires_grad=True)
    assert torch.equal(m(x), rms_norm(x, m.weight, 1e-5))
    m(x).pow(2).sum().backward()
    assert m.weight.grad is not None and x.grad is not None and torch.isfinite(m.weight.grad).all()
    g = MetalRMSNorm(96, offset=1.0, casting="gemma").to(device)
    assert torch.equal(g.weight.detach().cpu(), torch.zeros(96))
    assert rel_err(g(x), hf_gemma_rmsnorm(x, g.weight, 1e-6)) < 1e-6
    f = FusedAddRMSNorm(96).to(device)
    y, s = f(x, x)
    assert rel_err(s, 2 * x) == 0 and y.shape == x.shape
    nw = MetalRMSNorm(96, elementwise_affine=False)
    assert nw.weight is None and "casting='llama'" in repr(nw)


def test_bad_input_gets_clear_exceptions(device):
    x = make((4, 8), torch.float32, device)
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        rms_norm(torch.ones(4, 8, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        rms_norm(x, torch.ones(7, device=device))
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(2, 4, device=device))
    with pytest.raises(TypeError, match="weight"):
        rms_norm(x, torch.ones(8, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="at least one dimension"):
        rms_norm(torch.tensor(1.0, device=device))
    with pytest.raises(ValueError, match="casting"):
        rms_norm(x, None, casting="mistral")
    with pytest.raises(TypeError, match="residual: expected dtype"):
        fused_add_rmsnorm(x, x.half())
    with pytest.raises(ValueError, match="residual: expected shape"):
        fused_add_rmsnorm(x, x[:, :4])
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        rms_norm([[1.0, 2.0]])
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, None, -1.0)
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, None, float("nan"))


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_device_mismatch_names_the_argument():
    x = make((4, 8), torch.float32, "cuda")
    with pytest.raises(ValueError, match="weight: expected a tensor on cuda:0"):
        rms_norm(x, torch.ones(8))
    with pytest.raises(ValueError, match="residual: expected a tensor on cuda:0"):
        fused_add_rmsnorm(x, x.cpu())


def test_device_without_backend_falls_back_with_one_warning():
    import metalcore._backend as b

    b._warned.discard(("rms_norm", "meta"))
    x = torch.empty(4, 8, device="meta")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = rms_norm(x, torch.empty(8, device="meta"))
        rms_norm(x)
    assert y.device.type == "meta" and y.shape == x.shape
    msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
    assert len(msgs) == 1 and "falls back to PyTorch" in msgs[0]


def test_custom_ops_pass_opcheck(device):
    x = make((5, 40), torch.float32, device, requires_grad=True)
    w = make((40,), torch.float32, device, requires_grad=True)
    r = make((5, 40), torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.metalcore.rms_norm_fwd.default, (x, None, w, 1e-6, 0.0, True))
    torch.library.opcheck(torch.ops.metalcore.rms_norm_fwd.default, (x, r, w, 1e-6, 1.0, False))
    rstd = torch.ops.metalcore.rms_norm_fwd(x, None, w, 1e-6, 0.0, True)[2]
    dy = make((5, 40), torch.float32, device)
    torch.library.opcheck(torch.ops.metalcore.rms_norm_bwd.default, (dy, x.detach(), w.detach(), rstd, None, 0.0, True, True))


class _Block(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)
        self.norm1 = MetalRMSNorm(n)
        self.norm2 = FusedAddRMSNorm(n)

    def forward(self, x):
        h = self.norm1(x)
        y, res = self.norm2(self.lin(h), x)
        return y.sum() + res.mean()


def test_torch_compile_fullgraph_traces_without_breaks(device):
    torch.manual_seed(1)
    model = _Block(48).to(device)
    x = torch.randn(6, 48, device=device, requires_grad=True)
    eager = model(x)
    (gx_e,) = torch.autograd.grad(eager, (x,))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (gx_c,) = torch.autograd.grad(out, (x,))
    assert rel_err(out, eager) < 1e-6 and rel_err(gx_c, gx_e) < 1e-5


def test_kernels_compile_with_nvrtc():
    """Every CUDA kernel variant compiles for Hopper (sm_90a) with the NVRTC that torch ships."""
    import os

    from metalcore import _native

    if not _native.nvrtc_present():
        assert os.environ.get("METALCORE_REQUIRE_NVRTC") != "1", "NVRTC required but not loadable"
        pytest.skip("NVRTC not installed")
    lines = _native.compile_all_kernels("sm_90a")
    assert len(lines) >= 12 and all("bytes of cubin for sm_90a" in l for l in lines)
