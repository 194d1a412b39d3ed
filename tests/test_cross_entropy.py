"""Cross-entropy and fused linear cross-entropy against float64 torch, on every test device."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import metalcore
from metalcore import MetalCrossEntropyLoss, cross_entropy, fused_linear_cross_entropy
from conftest import assert_close_to_ref, make, rel_err

LOWP = [torch.float32, torch.float16, torch.bfloat16]


def targets(shape, classes, device, ignore_frac=0.25, ignore_index=-100):
    t = torch.randint(0, classes, shape)
    t[torch.rand(shape) < ignore_frac] = ignore_index
    return t.to(device)


def ref_loss(logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean", z_loss=0.0):
    """torch's cross-entropy plus the z-loss term z·lse² on non-ignored tokens (float64 in, float64 out)."""
    V = logits.shape[-1]
    x = logits.reshape(-1, V)
    t = target.reshape(-1)
    loss = F.cross_entropy(x, t, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    valid = t != ignore_index
    lse = torch.logsumexp(x, -1)
    loss = loss + torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return loss.view(target.shape)
    return loss.sum() / valid.sum() if reduction == "mean" else loss.sum()


@pytest.mark.parametrize("dtype, V", [(torch.bfloat16, 100_000), (torch.float32, 40_000), (torch.float16, 131_072)])
@pytest.mark.parametrize("g_out", [1.0, 0.3])
def test_long_rows(device, dtype, V, g_out):
    # Vocabulary-sized rows: on CUDA the fused pass holds each row on chip (registers, then shared
    # memory past 8 vectors a thread); with g_out = 1 the backward keeps the fused gradient
    # (decided on the device), otherwise it recomputes it with the new scale.
    x = make((5, V), dtype, device, scale=3.0, requires_grad=True)
    t = torch.tensor([0, V - 1, -100, 7, V // 2], device=device)
    x64 = x.detach().double().requires_grad_()
    loss = cross_entropy(x, t, label_smoothing=0.05)
    loss_t = F.cross_entropy(x, t, label_smoothing=0.05)
    loss64 = ref_loss(x64, t, label_smoothing=0.05)
    assert_close_to_ref(loss, loss_t, loss64, what="loss", floor=2e-7)
    g = torch.tensor(g_out, dtype=dtype, device=device)
    (gx,) = torch.autograd.grad(loss, (x,), g)
    (g_t,) = torch.autograd.grad(loss_t, (x,), g)
    (g64,) = torch.autograd.grad(loss64, (x64,), g.double())
    assert_close_to_ref(gx, g_t, g64, what="grad", floor=2e-7)
    assert torch.equal(gx[2], torch.zeros_like(gx[2])), "an ignored row has a zero gradient"


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(64, 13), (4, 8, 4097), (33, 1000), (1, 1)], ids=["64x13", "4x8x4097", "33x1000", "1x1"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_forward_and_backward_match_torch(device, dtype, shape, reduction, label_smoothing):
    V = shape[-1]
    x = make(shape, dtype, device, scale=3.0, requires_grad=True)
    t = targets(shape[:-1], V, device)
    x64 = x.detach().double().requires_grad_()
    kw = dict(reduction=reduction, label_smoothing=label_smoothing)
    loss = cross_entropy(x, t, **kw)
    loss_t = F.cross_entropy(x.reshape(-1, V), t.reshape(-1), **kw)
    loss_t = loss_t.view(t.shape) if reduction == "none" else loss_t
    loss64 = ref_loss(x64, t, **kw)
    assert loss.dtype == dtype and loss.shape == loss64.shape
    if not (reduction == "mean" and bool((t == -100).all())):
        assert_close_to_ref(loss, loss_t, loss64, what="loss", floor=2e-7)
    g_out = make(loss.shape, dtype, device) if reduction == "none" else torch.tensor(1.7, dtype=dtype, device=device)
    (g,) = torch.autograd.grad(loss, (x,), g_out)
    (g_t,) = torch.autograd.grad(loss_t, (x,), g_out)
    (g64,) = torch.autograd.grad(loss64, (x64,), g_out.double())
    assert g.dtype == dtype
    assert_close_to_ref(g, g_t, g64, what="grad", floor=2e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_z_loss_and_unit_output_gradient(device, dtype):
    x = make((16, 257), dtype, device, scale=4.0, requires_grad=True)
    t = targets((16,), 257, device)
    x64 = x.detach().double().requires_grad_()
    loss, zl = cross_entropy(x, t, z_loss=1e-2, return_z_loss=True)
    ref = ref_loss(x64, t, z_loss=1e-2)
    lse = torch.logsumexp(x64.detach(), -1)
    valid = t != -100
    zref = (1e-2 * lse[valid] ** 2).sum() / valid.sum()
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(loss, ref) < tol and rel_err(zl, zref) < tol and not zl.requires_grad
    (g,) = torch.autograd.grad(loss, (x,))  # output gradient 1: the gradient written by the forward
    (g64,) = torch.autograd.grad(ref, (x64,))
    assert rel_err(g, g64) < (1e-6 if dtype == torch.float32 else 8e-3)


def test_ignored_targets_nan_and_inf(device):
    x = make((4, 10), torch.float32, device, requires_grad=True)
    t = torch.full((4,), -100, device=device)
    loss = cross_entropy(x, t)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, t))  # 0/0, as torch
    assert cross_entropy(x, t, reduction="sum").item() == 0.0
    (g,) = torch.autograd.grad(cross_entropy(x, t, reduction="sum"), (x,))
    assert torch.equal(g, torch.zeros_like(g))
    # A custom ignore_index, and a NaN / +inf row: NaN loss for that row only, as torch.
    y = make((3, 10), torch.float32, device)
    y[1, 4] = float("nan")
    y[2, 0] = float("inf")
    tt = torch.tensor([1, 2, 5], device=device)
    ours = cross_entropy(y, tt, reduction="none")
    theirs = F.cross_entropy(y, tt, reduction="none")
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs)) and torch.isfinite(ours[0])
    assert cross_entropy(y[:1], torch.tensor([7], device=device), ignore_index=7, reduction="sum").item() == 0.0


def test_non_contiguous_logits_and_empty(device):
    base = make((6, 2, 40), torch.float32, device, scale=2.0)
    x = base[:, 1, 3:33].detach().requires_grad_()  # rows of 30 with a row stride of 80
    t = targets((6,), 30, device, ignore_frac=0.0)
    x64 = x.detach().double().requires_grad_()
    assert rel_err(cross_entropy(x, t), F.cross_entropy(x64, t)) < 1e-6
    (g,) = torch.autograd.grad(cross_entropy(x, t, reduction="none"), (x,), torch.arange(6.0, device=device))
    (g64,) = torch.autograd.grad(F.cross_entropy(x64, t, reduction="none"), (x64,), torch.arange(6.0, device=device).double())
    assert rel_err(g, g64) < 1e-6
    e = torch.zeros(0, 5, device=device, requires_grad=True)
    et = torch.zeros(0, dtype=torch.long, device=device)
    assert cross_entropy(e, et, reduction="sum").item() == 0.0
    assert cross_entropy(e, et, reduction="none").shape == (0,)


def test_gradcheck_float64(device):
    x = make((5, 7), torch.float64, device, scale=2.0, requires_grad=True)
    t = torch.tensor([0, 6, -100, 3, 3], device=device)
    for kw in (dict(), dict(reduction="sum", label_smoothing=0.2), dict(reduction="none", z_loss=0.1)):
        assert torch.autograd.gradcheck(lambda a: cross_entropy(a, t, **kw), (x,))


def test_module_and_bad_input(device):
    x = make((4, 9), torch.float32, device)
    t = targets((4,), 9, device, ignore_frac=0.0)
    m = MetalCrossEntropyLoss(label_smoothing=0.1)
    assert rel_err(m(x, t), F.cross_entropy(x.double(), t, label_smoothing=0.1)) < 1e-6
    with pytest.raises(IndexError, match="target: class index 9"):
        cross_entropy(x, torch.tensor([0, 9, 1, 2], device=device))
    with pytest.raises(IndexError, match="out of range"):
        cross_entropy(x, torch.tensor([0, -1, 1, 2], device=device))
    with pytest.raises(TypeError, match="target: expected an integer tensor"):
        cross_entropy(x, t.float())
    with pytest.raises(TypeError, match="logits: expected a floating dtype"):
        cross_entropy(t, t)
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="target: expected a tensor on"):
        cross_entropy(x, t.to("meta"))


def test_custom_ops_and_compile(device):
    x = make((6, 11), torch.float32, device, scale=2.0)
    t = targets((6,), 11, device).to(torch.int32)
    torch.library.opcheck(torch.ops.metalcore.cross_entropy_fwd, (x, t, -100, 0.1, 0.01))
    lse = torch.logsumexp(x, -1)
    torch.library.opcheck(torch.ops.metalcore.cross_entropy_bwd, (x, t, lse, torch.rand(6, device=device), -100, 0.1, 0.01))

    def f(a, tt):
        return cross_entropy(a, tt, label_smoothing=0.1, z_loss=0.01)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a = x.detach().requires_grad_()
    tl = t.long()
    out = compiled(a, tl)
    ref = ref_loss(x.double(), tl, label_smoothing=0.1, z_loss=0.01)
    assert rel_err(out, ref) < 1e-6
    (g,) = torch.autograd.grad(out * 2, (a,))
    x64 = x.double().requires_grad_()
    (g64,) = torch.autograd.grad(ref_loss(x64, tl, label_smoothing=0.1, z_loss=0.01) * 2, (x64,))
    assert rel_err(g, g64) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_linear_cross_entropy(device, dtype, with_bias, reduction):
    n, H, V = 50, 24, 300
    x = make((2, n // 2, H), dtype, device, requires_grad=True)
    w = make((V, H), dtype, device, scale=0.3, requires_grad=True)
    b = make((V,), dtype, device, requires_grad=True) if with_bias else None
    t = targets((2, n // 2), V, device)
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    ins = [x, w] + ([b] if with_bias else [])
    loss = fused_linear_cross_entropy(x, w, t, b, chunk_size=7, **kw)  # 8 chunks, the last partial
    ins64 = [v.detach().double().requires_grad_() for v in ins]
    b64 = ins64[2] if with_bias else None
    loss64 = ref_loss(F.linear(ins64[0], ins64[1], b64), t, **kw)
    ins_t = [v.detach().clone().requires_grad_() for v in ins]
    loss_t = ref_loss(F.linear(ins_t[0], ins_t[1], ins_t[2] if with_bias else None), t, **kw)
    assert_close_to_ref(loss, loss_t, loss64, what="loss", floor=2e-7)
    grads = torch.autograd.grad(loss * 0.5, ins)
    grads_t = torch.autograd.grad(loss_t * 0.5, ins_t)
    grads64 = torch.autograd.grad(loss64 * 0.5, ins64)
    for name, g, gt, g64 in zip(("x", "weight", "bias"), grads, grads_t, grads64):
        assert g.dtype == dtype and g.shape == g64.shape
        assert_close_to_ref(g, gt, g64, what=f"grad {name}", floor=2e-7)
    # The default chunking gives the same loss.
    assert rel_err(fused_linear_cross_entropy(x, w, t, b, **kw), loss64) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_fused_linear_bad_input(device):
    x = make((4, 8), torch.float32, device)
    w = make((10, 8), torch.float32, device)
    t = targets((4,), 10, device, ignore_frac=0.0)
    with pytest.raises(ValueError, match="weight: expected shape"):
        fused_linear_cross_entropy(x, w[:, :7], t)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(x, w, t, reduction="none")
    with pytest.raises(TypeError, match="weight/bias"):
        fused_linear_cross_entropy(x, w.double(), t)
    with pytest.raises(IndexError):
        fused_linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 10], device=device))


def test_fallback_on_device_without_backend():
    x = torch.randn(4, 8, device="meta")
    t = torch.zeros(4, dtype=torch.long, device="meta")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = metalcore.cross_entropy(x, t, reduction="none")
    assert y.shape == (4,)
    assert any("falls back to PyTorch" in str(m.message) for m in w)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_custom_op_and_compile(device, with_bias):
    x = make((3, 5, 16), torch.float32, device)
    w = make((40, 16), torch.float32, device, scale=0.3)
    b = make((40,), torch.float32, device) if with_bias else None
    t = targets((3, 5), 40, device)
    torch.library.opcheck(torch.ops.metalcore.fused_linear_cross_entropy, (x, w, b, t, -100, 0.1, "mean", 1e-3, 4, True, True, with_bias))
    torch.library.opcheck(torch.ops.metalcore.fused_linear_cross_entropy, (x, w, b, t, -100, 0.0, "sum", 0.0, 6, False, True, False))

    def f(a, ww, bb):
        return fused_linear_cross_entropy(a, ww, t, bb, chunk_size=4, label_smoothing=0.1, z_loss=1e-3)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ins = [x.clone().requires_grad_(), w.clone().requires_grad_()] + ([b.clone().requires_grad_()] if with_bias else [])
    args = ins + ([] if with_bias else [None])
    out_c = compiled(*args)
    out_e = f(*args)
    assert torch.equal(out_c, out_e)
    gc = torch.autograd.grad(out_c * 3, ins)
    ge = torch.autograd.grad(out_e * 3, ins)
    assert all(torch.equal(p, q) for p, q in zip(gc, ge))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_one_class_gradient_is_exactly_zero(device, dtype, label_smoothing):
    """With one class the softmax is the target's one-hot, so the gradient is exactly 0 whatever
    the smoothing and the upstream gradient (the target's weight ε/V + 1 − ε is taken at once; as
    (g − gε) − g(1 − ε) it left rounding residues that a large g made visible in float16)."""
    x = make((64, 1), dtype, device, scale=3.0, requires_grad=True)
    t = torch.zeros(64, dtype=torch.long, device=device)
    loss = cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing)
    g_out = torch.linspace(-40, 40, 64, device=device).to(dtype)
    (g,) = torch.autograd.grad(loss, (x,), g_out)
    assert torch.equal(g, torch.zeros_like(g))
