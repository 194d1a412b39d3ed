"""LayerNorm / fused add + LayerNorm against float64 references, on every test device.

torch.nn.functional.layer_norm defines the semantics; "torch's own" error is F.layer_norm run in
the same low-precision dtype."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from metalcore import FusedAddLayerNorm, MetalLayerNorm, fused_add_layernorm, layer_norm
from conftest import DEVICES, assert_close_to_ref, grads_of, make, rel_err

LOWP = [torch.float32, torch.float16, torch.bfloat16]



def torch_layer_norm(x, shape, w, b, eps=1e-5):
    """PyTorch's own LayerNorm in x's dtype: parameters of another dtype are cast to x's first
    (torch's CUDA kernel rejects mixed dtypes; the cast keeps gradients flowing to them)."""
    w = None if w is None else w.to(x.dtype)
    b = None if b is None else b.to(x.dtype)
    return F.layer_norm(x, shape, w, b, eps)


def ref64(x, shape, w, b, eps, residual=None):
    s = x.double() if residual is None else x.double() + residual.double()
    return F.layer_norm(s, shape, None if w is None else w.double(), None if b is None else b.double(), eps)


def params(mode, shape, dtype, device, requires_grad=False):
    """(weight, bias) for a parameter mode."""
    pdt = torch.float32 if mode == "fp32" else dtype
    w = None if mode in ("none", "bias") else make(shape, pdt, device, requires_grad=requires_grad)
    b = None if mode in ("none", "weight") else make(shape, pdt, device, requires_grad=requires_grad)
    return w, b


SHAPES = [(3, 1), (5, 7), (4, 64), (3, 4097), (2, 8192), (2, 3, 96)]


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["none", "same", "fp32", "weight", "bias"])
def test_forward_matches_float64(device, dtype, shape, mode):
    x = make(shape, dtype, device, scale=3.0, shift=0.5)
    ns = shape[-1:]
    w, b = params(mode, ns, dtype, device)
    y = layer_norm(x, ns, w, b, 1e-5)
    torch_own = torch_layer_norm(x, ns, w, b, 1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close_to_ref(y, torch_own, ref64(x, ns, w, b, 1e-5), what="forward")



@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4097), (2, 8192), (33, 512), (2, 3, 96)])
@pytest.mark.parametrize("mode", ["same", "fp32", "weight", "bias"])
def test_backward_matches_float64(device, dtype, shape, mode):
    ns = shape[-1:]
    x = make(shape, dtype, device, scale=2.0, shift=-1.0, requires_grad=True)
    w, b = params(mode, ns, dtype, device, requires_grad=True)
    dy = make(shape, dtype, device)
    args = tuple(t for t in (x, w, b) if t is not None)

    def call(f):
        def g(*ts):
            it = iter(ts)
            xx = next(it)
            ww = next(it) if w is not None else None
            bb = next(it) if b is not None else None
            return f(xx, ns, ww, bb, 1e-5)

        return g

    ours = grads_of(call(layer_norm), args, dy)
    torch_own = grads_of(call(torch_layer_norm), args, dy)
    args64 = tuple(t.detach().double().requires_grad_() for t in args)
    truth = grads_of(call(F.layer_norm), args64, dy.double())
    for i, (o, t, r) in enumerate(zip(ours, torch_own, truth)):
        assert o.dtype == t.dtype and o.shape == t.shape
        assert_close_to_ref(o, t, r, what=f"grad {i}", floor=2e-6)


def test_multi_dim_normalized_shape(device):
    x = make((3, 4, 5, 6), torch.float32, device, requires_grad=True)
    w = make((5, 6), torch.float32, device, requires_grad=True)
    b = make((5, 6), torch.float32, device, requires_grad=True)
    y = layer_norm(x, (5, 6), w, b)
    assert rel_err(y, ref64(x, (5, 6), w, b, 1e-5)) < 1e-6
    dy = make(y.shape, torch.float32, device)
    gs = torch.autograd.grad(y, (x, w, b), dy)
    xs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ts = torch.autograd.grad(F.layer_norm(xs[0], (5, 6), xs[1], xs[2]), xs, dy.double())
    for g, t in zip(gs, ts):
        assert g.shape == t.shape and rel_err(g, t) < 1e-5


@pytest.mark.parametrize("fused", [False, True])
def test_repeated_signatures_with_every_gradient_layout(device, fused):
    # An eager call signature seen before skips the argument checks and reuses its plans (the
    # 2-D parameters are flattened by a view then): plain and expanded output gradients, with and
    # without a residual-output gradient, stay right; a new bad shape is still refused.
    from metalcore import _norm

    w0, b0 = make((5, 6), torch.float32, device), make((5, 6), torch.float32, device)
    for dy_kind in ("plain", "expanded", "plain", "expanded"):
        for res_grad in ((False, True) if fused else (False,)):
            x, r = (make((3, 4, 5, 6), torch.float32, device, requires_grad=True) for _ in range(2))
            w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
            y, s = fused_add_layernorm(x, r, [5, 6], w, b) if fused else (layer_norm(x, [5, 6], w, b), None)
            dy = torch.ones((), device=device).expand(y.shape) if dy_kind == "expanded" else make(y.shape, torch.float32, device)
            grads = (dy, make(y.shape, torch.float32, device)) if res_grad else (dy,)
            outs = (y, s) if res_grad else (y,)
            leaves = (x, r, w, b) if fused else (x, w, b)
            got = torch.autograd.grad(outs, leaves, grads)
            l64 = [t.detach().double().requires_grad_() for t in leaves]
            s64 = l64[0] + l64[1] if fused else l64[0]
            y64 = F.layer_norm(s64, (5, 6), l64[-2], l64[-1], 1e-5)
            want = torch.autograd.grad((y64, s64) if res_grad else (y64,), l64, tuple(g.double() for g in grads))
            for a, t in zip(got, want):
                assert a.shape == t.shape and rel_err(a, t) < 1e-5
    cached = [e for k, e in _norm.EAGER.items() if k[0] == "layer" and k[1] == (3, 4, 5, 6) and (k[4] is not None) == fused]
    assert cached and cached[0].fplan is not None and cached[0].bplans[int(fused)] is not None, "the cached path was taken"
    with pytest.raises(ValueError, match="weight"):
        layer_norm(make((3, 4, 5, 6), torch.float32, device), [5, 6], make((6, 5), torch.float32, device), b0)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4097), (4, 2048)])
def test_fused_add_forward_and_backward(device, dtype, shape):
    ns = shape[-1:]
    x = make(shape, dtype, device, requires_grad=True)
    r = make(shape, dtype, device, requires_grad=True)
    w, b = params("same", ns, dtype, device, requires_grad=True)
    y, s = fused_add_layernorm(x, r, ns, w, b)
    assert torch.equal(s, x + r), "the residual sum is rounded exactly as torch's x + residual"
    assert_close_to_ref(y, F.layer_norm(x + r, ns, w, b), ref64(x, ns, w, b, 1e-5, residual=r), what="fused forward")
    dy, ds = make(shape, dtype, device), make(shape, dtype, device)

    def torch_fused(a, c, ww, bb):
        t = a + c
        return F.layer_norm(t, ns, ww, bb), t

    ours = grads_of(lambda a, c, ww, bb: fused_add_layernorm(a, c, ns, ww, bb), (x, r, w, b), (dy, ds))
    torch_own = grads_of(torch_fused, (x, r, w, b), (dy, ds))
    xs = [t.detach().double().requires_grad_() for t in (x, r, w, b)]
    truth = grads_of(torch_fused, xs, (dy.double(), ds.double()))
    for name, o, t, tr in zip(("dx", "dresidual", "dw", "db"), ours, torch_own, truth):
        assert_close_to_ref(o, t, tr, what=name, floor=2e-6)


@pytest.mark.parametrize("mode", ["same", "weight", "bias", "none"])
@pytest.mark.parametrize("fused", [False, True])
def test_gradcheck_float64(device, mode, fused):
    x = torch.randn(3, 11, dtype=torch.float64, device=device, requires_grad=True)
    w, b = params(mode, (11,), torch.float64, device, requires_grad=True)
    if fused:
        r = torch.randn(3, 11, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, c, ww, bb: fused_add_layernorm(a, c, 11, ww, bb), (x, r, w, b))
    else:
        assert torch.autograd.gradcheck(lambda a, ww, bb: layer_norm(a, 11, ww, bb), (x, w, b))


def test_float64_forward_is_exact_to_rounding(device):
    x = torch.randn(7, 300, dtype=torch.float64, device=device)
    w, b = torch.randn(300, dtype=torch.float64, device=device), torch.randn(300, dtype=torch.float64, device=device)
    assert rel_err(layer_norm(x, 300, w, b), ref64(x, (300,), w, b, 1e-5)) < 1e-14


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_mean_small_spread_is_stable(device, dtype):
    """Rows with mean 1e3 and spread 1: a one-pass E[x²]−E[x]² formula loses every digit in fp32."""
    x = make((16, 1024), dtype, device, scale=1.0, shift=1000.0)
    y = layer_norm(x, 1024)
    assert_close_to_ref(y, F.layer_norm(x, (1024,)), ref64(x, (1024,), None, None, 1e-5), what="shifted rows")


def test_constant_rows_give_the_bias(device):
    x = torch.full((3, 40), 7.5, device=device)
    b = make((40,), torch.float32, device)
    w = make((40,), torch.float32, device)
    y = layer_norm(x, 40, w, b)
    assert torch.equal(y, b.expand(3, 40)), "zero variance: x - mean is exactly 0, y is the bias"


@pytest.mark.parametrize("kind", ["transposed", "strided", "expanded_dy", "sliced_rows"])
def test_non_contiguous_inputs(device, kind):
    base = make((16, 70), torch.float32, device)
    if kind == "transposed":
        x = make((70, 16), torch.float32, device).t()
    elif kind == "strided":
        x = base[:, ::2]
    elif kind == "sliced_rows":
        x = base[::3, 5:40]
    else:
        x = base
    x = x.detach().requires_grad_()
    n = x.shape[-1]
    w = make((2 * n,), torch.float32, device)[::2].detach().requires_grad_()
    b = make((3 * n,), torch.float32, device)[1::3].detach().requires_grad_()
    y = layer_norm(x, n, w, b)
    assert rel_err(y, ref64(x, (n,), w, b, 1e-5)) < 1e-6
    dy = torch.ones((), device=device).expand(x.shape) if kind == "expanded_dy" else make(x.shape, torch.float32, device)
    gs = torch.autograd.grad(y, (x, w, b), dy)
    xs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ts = torch.autograd.grad(ref64(xs[0], (n,), xs[1], xs[2], 1e-5), xs, dy.double())
    for g, t in zip(gs, ts):
        assert rel_err(g, t) < 1e-5


@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (4, 0), (0,)])
def test_empty_tensors(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    n = shape[-1]
    w = torch.randn(n, device=device, requires_grad=True)
    b = torch.randn(n, device=device, requires_grad=True)
    y = layer_norm(x, n, w, b)
    assert y.shape == x.shape
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.randn(shape, device=device))
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    assert torch.equal(gw, torch.zeros_like(gw)) and torch.equal(gb, torch.zeros_like(gb))
    r = torch.randn(shape, device=device)
    y2, s2 = fused_add_layernorm(x.detach(), r, n, w.detach(), b.detach())
    assert y2.shape == x.shape and torch.equal(s2, x.detach() + r)


def test_nan_and_inf_propagate_per_row(device):
    x = make((4, 257), torch.float32, device)
    x[1, 3] = float("nan")
    x[2, 100] = float("inf")
    w, b = make((257,), torch.float32, device), make((257,), torch.float32, device)
    y = layer_norm(x, 257, w, b)
    assert torch.isnan(y[1]).all(), "a NaN poisons its whole row"
    assert torch.isnan(y[2]).any(), "an Inf makes the row's statistics non-finite"
    assert rel_err(y[[0, 3]], ref64(x[[0, 3]], (257,), w, b, 1e-5)) < 1e-6, "other rows are untouched"
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(layer_norm(xg, 257, w, b).sum(), (xg,))
    assert torch.isnan(gx[1]).all() and torch.isfinite(gx[[0, 3]]).all()


def test_module_is_a_drop_in_for_torch_layernorm(device):
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm((96,), eps=1e-6).to(device)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    m = MetalLayerNorm(96, eps=1e-6).to(device)
    m.load_state_dict(ref.state_dict())
    assert set(m.state_dict()) == set(ref.state_dict())
    x = make((4, 96), torch.float32, device, requires_grad=True)
    assert rel_err(m(x), ref(x)) < 1e-6
    m(x).pow(2).sum().backward()
    ref(x).pow(2).sum().backward()
    assert rel_err(m.weight.grad, ref.weight.grad) < 1e-5 and rel_err(m.bias.grad, ref.bias.grad) < 1e-5
    assert MetalLayerNorm(8, bias=False).bias is None
    nw = MetalLayerNorm((4, 8), elementwise_affine=False)
    assert nw.weight is None and nw.bias is None and "(4, 8)" in repr(nw)
    f = FusedAddLayerNorm(96).to(device)
    y, s = f(x, x)
    assert rel_err(s, 2 * x) == 0 and y.shape == x.shape


def test_bad_input_gets_clear_exceptions(device):
    x = make((4, 8), torch.float32, device)
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        layer_norm(torch.ones(4, 8, dtype=torch.int32, device=device), 8)
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(x, 7)
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(x, (2, 4, 8))
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        layer_norm(x, 8, torch.ones(7, device=device))
    with pytest.raises(ValueError, match="bias"):
        layer_norm(x, 8, None, torch.ones(2, 4, device=device))
    with pytest.raises(TypeError, match="bias: expected dtype"):
        layer_norm(x, 8, torch.ones(8, device=device), torch.ones(8, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="weight"):
        layer_norm(x, 8, torch.ones(8, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="residual: expected dtype"):
        fused_add_layernorm(x, x.half(), 8)
    with pytest.raises(ValueError, match="residual: expected shape"):
        fused_add_layernorm(x, x[:, :4], 8)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        layer_norm([[1.0, 2.0]], 2)
    with pytest.raises(ValueError, match="eps"):
        layer_norm(x, 8, None, None, -1.0)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_device_mismatch_names_the_argument():
    x = make((4, 8), torch.float32, "cuda")
    with pytest.raises(ValueError, match="weight: expected a tensor on cuda:0"):
        layer_norm(x, 8, torch.ones(8))
    with pytest.raises(ValueError, match="bias: expected a tensor on cuda:0"):
        layer_norm(x, 8, None, torch.ones(8))


def test_device_without_backend_falls_back_with_one_warning():
    import metalcore._backend as bk

    bk._warned.discard(("layer_norm", "meta"))
    x = torch.empty(4, 8, device="meta")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = layer_norm(x, 8, torch.empty(8, device="meta"), torch.empty(8, device="meta"))
        layer_norm(x, 8)
    assert y.device.type == "meta" and y.shape == x.shape
    msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
    assert len(msgs) == 1 and "falls back to PyTorch" in msgs[0]


def test_custom_ops_pass_opcheck(device):
    x = make((5, 40), torch.float32, device, requires_grad=True)
    w = make((40,), torch.float32, device, requires_grad=True)
    b = make((40,), torch.float32, device, requires_grad=True)
    r = make((5, 40), torch.float32, device, requires_grad=True)
    op = torch.ops.metalcore.layer_norm_fwd.default
    torch.library.opcheck(op, (x, None, 40, w, b, 1e-5))
    torch.library.opcheck(op, (x, r, 40, None, b, 1e-5))
    _, _, mean, rstd = torch.ops.metalcore.layer_norm_fwd(x, None, 40, w, b, 1e-5)
    dy = make((5, 40), torch.float32, device)
    bwd = torch.ops.metalcore.layer_norm_bwd.default
    torch.library.opcheck(bwd, (dy, x.detach(), 40, w.detach(), mean, rstd, None, True, True, None))


class _Block(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)
        self.norm1 = MetalLayerNorm(n)
        self.norm2 = FusedAddLayerNorm(n)

    def forward(self, x):
        h = self.norm1(x)
        y, res = self.norm2(self.lin(h), x)
        return y.sum() + res.mean() + h.pow(2).mean()


def test_torch_compile_fullgraph_traces_without_breaks(device):
    torch.manual_seed(1)
    model = _Block(48).to(device)
    with torch.no_grad():
        for m in (model.norm1, model.norm2):
            m.weight.normal_()
            m.bias.normal_()
    x = torch.randn(6, 48, device=device, requires_grad=True)
    eager = model(x)
    ge = torch.autograd.grad(eager, (x, model.norm1.weight, model.norm2.bias))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    gc = torch.autograd.grad(out, (x, model.norm1.weight, model.norm2.bias))
    assert rel_err(out, eager) < 1e-6
    for a, c in zip(gc, ge):
        assert rel_err(a, c) < 1e-5
