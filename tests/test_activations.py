"""Activations, bias + activation and gated linear units against float64 torch, on every test device."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import metalcore
from metalcore import (
    MetalGELU,
    MetalSiLU,
    MetalSwiGLU,
    bias_gelu,
    bias_silu,
    geglu,
    metal_gelu,
    metal_silu,
    swiglu,
    swiglu_bwd,
)
from conftest import assert_close_to_ref, grads_of, make, rel_err

LOWP = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(), (1,), (7,), (3, 4097), (2, 3, 7), (5, 3000), (0, 5)]


def hf_gelu_new(x):
    """HF transformers NewGELUActivation (activations.py), copied verbatim:
    https://github.com/huggingface/transformers/blob/main/src/transformers/activations.py"""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def hf_llama_mlp_act(gate, up):
    """The gated part of HF's LlamaMLP.forward, ``self.act_fn(self.gate_proj(x)) * self.up_proj(x)``
    with ``act_fn = silu``: https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py"""
    return F.silu(gate) * up


def drawn(shape):
    """`shape` with a leading dimension of 32 independent draws when it holds few elements: the
    2x-torch bar compares typical errors, and on a handful of elements one value near a zero of
    the function (gelu' vanishes at x = -0.75) decides the ratio by luck."""
    n = math.prod(shape)
    return (32,) + tuple(shape) if 0 < n < 1000 else tuple(shape)


def floor_for(t):
    """The absolute slack of the 2x-torch bar: a few float32 ulps (1 ulp ~ 1.2e-7 relative)."""
    return 2e-7


# (name, ours, torch's) for the plain activations.
ACTS = [
    ("silu", metal_silu, F.silu),
    ("gelu", metal_gelu, F.gelu),
    ("gelu_tanh", lambda x: metal_gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
]
BIASED = [
    ("silu", bias_silu, F.silu),
    ("gelu", bias_gelu, F.gelu),
    ("gelu_tanh", lambda x, b: bias_gelu(x, b, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
]
GLUS = [
    ("swiglu", swiglu, F.silu),
    ("geglu", geglu, F.gelu),
    ("geglu_tanh", lambda g, u: geglu(g, u, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
]


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,ours,theirs", ACTS, ids=[a[0] for a in ACTS])
def test_activation_forward_and_backward(device, dtype, shape, name, ours, theirs):
    shape = drawn(shape)
    x = make(shape, dtype, device, scale=3.0, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    y = ours(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close_to_ref(y, theirs(x), theirs(x64), what=f"{name} forward", floor=floor_for(x))
    dy = make(shape, dtype, device)
    (g,) = grads_of(ours, (x,), dy)
    (g_t,) = grads_of(theirs, (x,), dy)
    (g64,) = grads_of(theirs, (x64,), dy.double())
    assert g.dtype == dtype
    assert_close_to_ref(g, g_t, g64, what=f"{name} backward", floor=floor_for(x))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 4097), (4, 2, 96), (0, 5)])
@pytest.mark.parametrize("name,ours,theirs", BIASED, ids=[a[0] for a in BIASED])
def test_bias_activation_forward_and_backward(device, dtype, shape, name, ours, theirs):
    shape = drawn(shape)
    x = make(shape, dtype, device, scale=3.0, requires_grad=True)
    b = make(shape[-1:], dtype, device, requires_grad=True)
    x64, b64 = (t.detach().double().requires_grad_() for t in (x, b))
    y = ours(x, b)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close_to_ref(y, theirs(x + b), theirs(x64 + b64), what=f"bias {name} forward", floor=floor_for(x))
    dy = make(shape, dtype, device)
    gx, gb = grads_of(ours, (x, b), dy)
    gx_t, gb_t = grads_of(lambda a, c: theirs(a + c), (x, b), dy)
    gx64, gb64 = grads_of(lambda a, c: theirs(a + c), (x64, b64), dy.double())
    assert gb.dtype == dtype and gb.shape == b.shape
    assert_close_to_ref(gx, gx_t, gx64, what=f"bias {name} grad x", floor=floor_for(x))
    # The bias gradient is a sum over rows that may cancel: its error is measured against the sum
    # of the terms' magnitudes (the scale its rounding error lives on), for us and torch alike.
    scale = gx64.abs().reshape(-1, b.shape[0]).sum(0).norm().item() or 1.0
    e_ours = (gb.double() - gb64).norm().item() / scale
    e_torch = (gb_t.double() - gb64).norm().item() / scale
    few = 4 * torch.finfo(dtype).eps if b.numel() < 100 else floor_for(x)
    assert e_ours <= 2 * e_torch + few, f"bias {name} grad bias: our error {e_ours:.3e} vs torch's {e_torch:.3e}"


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 4097), (2, 5, 11), (5, 3000), (0, 3)])
@pytest.mark.parametrize("name,ours,act", GLUS, ids=[a[0] for a in GLUS])
def test_glu_forward_and_backward(device, dtype, shape, name, ours, act):
    shape = drawn(shape)
    gate = make(shape, dtype, device, scale=3.0, requires_grad=True)
    up = make(shape, dtype, device, requires_grad=True)
    g64, u64 = (t.detach().double().requires_grad_() for t in (gate, up))
    h = ours(gate, up)
    assert h.shape == gate.shape and h.dtype == dtype
    assert_close_to_ref(h, act(gate) * up, act(g64) * u64, what=f"{name} forward", floor=floor_for(gate))
    dh = make(shape, dtype, device)
    dg, du = grads_of(ours, (gate, up), dh)
    dg_t, du_t = grads_of(lambda a, b: act(a) * b, (gate, up), dh)
    dg64, du64 = grads_of(lambda a, b: act(a) * b, (g64, u64), dh.double())
    assert_close_to_ref(dg, dg_t, dg64, what=f"{name} grad gate", floor=floor_for(gate))
    assert_close_to_ref(du, du_t, du64, what=f"{name} grad up", floor=floor_for(gate))


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_scalar_and_single_element(device, shape):
    x = make(shape, torch.float32, device, scale=3.0, requires_grad=True)
    b = make(shape[-1:] or (1,), torch.float32, device)
    for _, ours, theirs in ACTS:
        y = ours(x)
        assert y.shape == x.shape
        assert (y.double() - theirs(x.double())).abs().max() < 1e-6
        (g,) = torch.autograd.grad(y, (x,), torch.ones_like(y))
        x64 = x.detach().double().requires_grad_()
        (g64,) = torch.autograd.grad(theirs(x64), (x64,), torch.ones_like(x64))
        assert (g.double() - g64).abs().max() < 1e-6
    if shape:
        assert (bias_silu(x, b).double() - F.silu(x.double() + b.double())).abs().max() < 1e-6
    assert (swiglu(x, x).double() - F.silu(x.double()) * x.double()).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", LOWP)
def test_hf_formulas(device, dtype):
    x = make((6, 4097), dtype, device, scale=3.0)
    up = make((6, 4097), dtype, device)
    ref = hf_gelu_new(x.double())
    assert_close_to_ref(metal_gelu(x, "tanh"), hf_gelu_new(x), ref, what="gelu_new", floor=floor_for(x))
    assert_close_to_ref(swiglu(x, up), hf_llama_mlp_act(x, up), hf_llama_mlp_act(x.double(), up.double()), what="llama mlp", floor=floor_for(x))


@pytest.mark.parametrize("dtype", LOWP)
def test_swiglu_bwd_returns_both_gradients(device, dtype):
    gate = make((4, 333), dtype, device, scale=3.0)
    up = make((4, 333), dtype, device)
    dh = make((4, 333), dtype, device)
    dg, du = swiglu_bwd(dh, gate, up)
    dg_t, du_t = grads_of(lambda a, b: F.silu(a) * b, (gate.requires_grad_(), up.requires_grad_()), dh)
    g64, u64 = (t.detach().double().requires_grad_() for t in (gate, up))
    dg64, du64 = grads_of(lambda a, b: F.silu(a) * b, (g64, u64), dh.double())
    assert dg.dtype == du.dtype == dtype
    assert_close_to_ref(dg, dg_t, dg64, what="d_gate", floor=floor_for(gate))
    assert_close_to_ref(du, du_t, du64, what="d_up", floor=floor_for(gate))


def test_non_contiguous_inputs(device):
    base = make((9, 40, 13), torch.float32, device, scale=3.0)
    bias = make((13,), torch.float32, device)
    views = [base.transpose(0, 2), base[:, ::2, 1:], base[1:, 3:], base[..., 1:12]]
    for v in views:
        x = v.detach().requires_grad_()
        x64 = x.detach().double().requires_grad_()
        for _, ours, theirs in ACTS:
            y = ours(x)
            assert y.shape == x.shape and rel_err(y, theirs(x64)) < 1e-6
            dy = make(x.shape, torch.float32, device).transpose(0, -1).contiguous().transpose(0, -1)
            (g,) = torch.autograd.grad(y, (x,), dy)
            (g64,) = torch.autograd.grad(theirs(x64), (x64,), dy.double())
            assert rel_err(g, g64) < 1e-6
        if v.shape[-1] == 13:
            assert rel_err(bias_gelu(x, bias), F.gelu(x64 + bias.double())) < 1e-6
        up = make(v.shape, torch.float32, device).transpose(0, -1).contiguous().transpose(0, -1)
        assert rel_err(swiglu(x, up), F.silu(x64) * up.double()) < 1e-6
    # Unaligned starts (one element in) force the scalar path on CUDA.
    x = base.reshape(-1)[1:4097]
    assert rel_err(metal_silu(x), F.silu(x.double())) < 1e-6
    assert rel_err(swiglu(x, base.reshape(-1)[3:4099]), F.silu(x.double()) * base.reshape(-1)[3:4099].double()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_as_torch(device, dtype):
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30, 88.0, -88.0, -100.0])
    x = torch.cat([special, torch.randn(23)]).to(dtype).to(device)
    for name, ours, theirs in ACTS:
        # The pattern of non-finite values is that of the float64 formula (torch's own float32 CPU
        # gelu gives NaN at +inf on some CPUs and +inf on others).
        y, y64 = ours(x), theirs(x.double())
        assert torch.equal(torch.isnan(y), torch.isnan(y64)), name
        assert torch.equal(torch.isinf(y), torch.isinf(y64)), name
        fin = torch.isfinite(y64)
        assert rel_err(y[fin], y64[fin]) < 1e-2, name
        # The backward too (GELU-tanh's derivative was NaN at ±1e30, where x² overflows float32).
        (d,) = grads_of(ours, (x.clone().requires_grad_(),), torch.ones_like(x))
        (d64,) = grads_of(theirs, (x.double().requires_grad_(),), torch.ones_like(x, dtype=torch.float64))
        assert torch.equal(torch.isnan(d), torch.isnan(d64)), name
        assert torch.equal(torch.isinf(d), torch.isinf(d64)), name
        fin = torch.isfinite(d64)
        assert rel_err(d[fin], d64[fin]) < 1e-2, name
    h = swiglu(x, torch.ones_like(x))
    assert torch.equal(torch.isnan(h), torch.isnan(F.silu(x))) and torch.isnan(h[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_input_on_the_cpu(dtype):
    # All 65536 bit patterns, forward and backward (dy = 1): within half an ulp of the float64
    # value, plus the float32 evaluation's own error (2e-7·(1 + |x|) absolute, which matters only
    # near zeros, e.g. of GELU's derivative at x = -0.75); non-finite exactly where float64's are
    # (this found GELU-tanh's derivative NaN for |x| > 1.8e19, where x² overflowed float32).
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)
    x64 = x.double()
    finfo = torch.finfo(dtype)
    for name, ours, theirs in ACTS:
        x64g = x64.clone().requires_grad_()
        y64 = theirs(x64g)
        (d64,) = torch.autograd.grad(y64, (x64g,), torch.ones_like(y64))
        xg = x.clone().requires_grad_()
        y = ours(xg)
        (d,) = torch.autograd.grad(y, (xg,), torch.ones_like(y))
        for got, want, what in ((y, y64.detach(), "forward"), (d, d64, "backward")):
            want_r = want.to(dtype).double()
            assert torch.equal(torch.isnan(got), torch.isnan(want_r)), (name, what)
            fin = torch.isfinite(want_r) & torch.isfinite(want)
            assert torch.equal(torch.isinf(got[fin]), torch.isinf(want_r[fin])), (name, what)
            # One ulp of the rounded value (its spacing at that magnitude; the subnormal step below).
            mag = want_r[fin].abs().clamp_min(finfo.smallest_normal)
            ulp = torch.exp2(torch.floor(torch.log2(mag))) * finfo.eps
            err = ((got[fin].double() - want[fin]).abs() - 2e-7 * (1 + x64[fin].abs())).clamp_min(0)
            worst = (err / ulp).max().item()
            assert worst <= 0.51, (name, what, worst)


def test_gradcheck_float64(device):
    x = make((3, 17), torch.float64, device, scale=2.0, requires_grad=True)
    b = make((17,), torch.float64, device, requires_grad=True)
    up = make((3, 17), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(metal_silu, (x,))
    assert torch.autograd.gradcheck(lambda a: metal_gelu(a, "tanh"), (x,))
    assert torch.autograd.gradcheck(bias_gelu, (x, b))
    assert torch.autograd.gradcheck(bias_silu, (x, b))
    assert torch.autograd.gradcheck(swiglu, (x, up))
    assert torch.autograd.gradcheck(geglu, (x, up))


def test_modules(device):
    x = make((4, 10), torch.float32, device, scale=2.0)
    assert torch.equal(MetalSiLU()(x), metal_silu(x))
    m = MetalGELU("tanh")
    assert "tanh" in repr(m) and torch.equal(m(x), metal_gelu(x, "tanh"))
    assert torch.equal(MetalSwiGLU()(x, x), swiglu(x, x))
    with pytest.raises(ValueError, match="approximate"):
        MetalGELU("fast")


def test_bad_input(device):
    x = make((4, 8), torch.float32, device)
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        metal_silu(torch.ones(3, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        metal_gelu([1.0, 2.0])
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        bias_gelu(x, make((7,), torch.float32, device))
    with pytest.raises(TypeError, match="bias: expected dtype torch.float32"):
        bias_silu(x, make((8,), torch.float64, device))
    with pytest.raises(ValueError, match="bias: expected a tensor on"):
        bias_silu(x, torch.zeros(8, device="meta"))
    with pytest.raises(ValueError, match="up: expected shape"):
        swiglu(x, make((4, 9), torch.float32, device))
    with pytest.raises(TypeError, match="up: expected dtype"):
        swiglu(x, make((4, 8), torch.bfloat16, device))
    with pytest.raises(ValueError, match="d_h: expected shape"):
        swiglu_bwd(make((4, 7), torch.float32, device), x, x)
    with pytest.raises(ValueError, match="approximate"):
        metal_gelu(x, "sigmoid")


def test_custom_ops_and_compile(device):
    x = make((5, 33), torch.float32, device, scale=2.0)
    b = make((33,), torch.float32, device)
    up = make((5, 33), torch.float32, device)
    for args in [(x, None, 0), (x, b, 1), (x, b, 2)]:
        torch.library.opcheck(torch.ops.metalcore.act_fwd, args)
    torch.library.opcheck(torch.ops.metalcore.act_bwd, (x, b, up, 1))
    torch.library.opcheck(torch.ops.metalcore.glu_fwd, (x, up, 0))
    torch.library.opcheck(torch.ops.metalcore.glu_bwd, (x, up, up, 0))

    def block(a, bias, u):
        return swiglu(bias_gelu(a, bias, "tanh"), u) + metal_silu(u)

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    xs = [t.detach().requires_grad_() for t in (x, b, up)]
    out = compiled(*xs)
    ref = block(*[t.detach().requires_grad_() for t in (x, b, up)])
    assert rel_err(out, ref) < 1e-6
    grads = torch.autograd.grad(out.sum(), xs)
    ref_grads = grads_of(block, [t.detach().requires_grad_() for t in (x, b, up)], torch.ones_like(out))
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 1e-6


def test_fallback_on_device_without_backend():
    x = torch.randn(4, 8, device="meta")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = metalcore.activations._activation(x, None, 0, "metal_silu_meta_test")
    assert y.shape == x.shape and y.device.type == "meta"
    assert any("falls back to PyTorch" in str(m.message) for m in w)


def test_cpu_kernel_copies_follow_the_cpu_and_the_knobs():
    """The CPU kernels run their widest copy the CPU has (the AVX-512 copy where torch also
    dispatches to AVX-512); METALCORE_CPU_ISA=avx2 and METALCORE_CPU_BASELINE=1 lower it (the test
    command runs the CPU tests under both, so every copy is checked against the references)."""
    import os
    import subprocess
    import sys

    def isa(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k not in ("METALCORE_CPU_ISA", "METALCORE_CPU_BASELINE")}
        code = "from metalcore import _native; print(_native.cpu_isa())"
        return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                              check=True).stdout.strip()

    default = isa()
    torch_isa = torch.backends.cpu.get_cpu_capability()
    if torch_isa.startswith("AVX512"):
        assert default == "avx512"
    elif torch_isa == "AVX2":
        assert default == "avx2"
    assert isa(METALCORE_CPU_BASELINE="1") == "baseline"
    assert isa(METALCORE_CPU_ISA="avx2") == ("avx2" if default in ("avx512", "avx2") else default)
