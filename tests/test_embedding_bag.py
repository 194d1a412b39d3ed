"""EmbeddingBag against float64 torch.nn.functional.embedding_bag, on every test device."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import metalcore
from metalcore import MetalEmbeddingBag, embedding_bag
from conftest import assert_close_to_ref, make, rel_err


def bags(num, n_bags, device, max_len=6, empty_every=4):
    """Random bags (some empty) as (indices, offsets) in torch's layout (offsets of bag starts)."""
    g = torch.Generator().manual_seed(n_bags)
    lens = torch.randint(0, max_len + 1, (n_bags,), generator=g)
    lens[::empty_every] = 0
    idx = torch.randint(0, num, (int(lens.sum()),), generator=g)
    off = torch.cat((torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]))
    return idx.to(device), off.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dim", [1, 7, 64, 300])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_forward_and_weight_gradient(device, dtype, mode, dim, padding_idx):
    num = 50
    w = make((num, dim), dtype, device, requires_grad=True)
    idx, off = bags(num, 40, device)
    idx[::5] = 3  # repeated rows (and padding when padding_idx=3)
    w64 = w.detach().double().requires_grad_()
    out = embedding_bag(w, idx, off, mode, padding_idx=padding_idx)
    ref = F.embedding_bag(idx, w64, off, mode=mode, padding_idx=padding_idx)
    theirs = F.embedding_bag(idx, w, off, mode=mode, padding_idx=padding_idx)
    assert out.shape == ref.shape and out.dtype == dtype
    assert_close_to_ref(out, theirs, ref, what="forward", floor=2e-7)
    g = make(out.shape, dtype, device)
    (gw,) = torch.autograd.grad(out, (w,), g)
    (gw64,) = torch.autograd.grad(ref, (w64,), g.double())
    try:
        (gw_t,) = torch.autograd.grad(theirs, (w,), g)
    except NotImplementedError:  # torch has no bfloat16 max backward on CUDA: bar = the rounding of the exact result
        gw_t = gw64.to(dtype)
    assert_close_to_ref(gw, gw_t, gw64, what="grad weight", floor=2e-7)


def test_per_sample_weights_2d_input_and_include_last_offset(device):
    num, dim = 30, 16
    w = make((num, dim), torch.float32, device, requires_grad=True)
    idx, off = bags(num, 25, device)
    s = make(idx.shape, torch.float32, device, requires_grad=True)
    w64, s64 = (t.detach().double().requires_grad_() for t in (w, s))
    out = embedding_bag(w, idx, off, "sum", per_sample_weights=s)
    ref = F.embedding_bag(idx, w64, off, mode="sum", per_sample_weights=s64)
    assert rel_err(out, ref) < 1e-6
    g = make(out.shape, torch.float32, device)
    gw, gs = torch.autograd.grad(out, (w, s), g)
    rw, rs = torch.autograd.grad(ref, (w64, s64), g.double())
    assert rel_err(gw, rw) < 1e-6 and rel_err(gs, rs) < 1e-6
    # include_last_offset: offsets end with the number of indices.
    off2 = torch.cat((off, off.new_tensor([idx.numel()])))
    assert rel_err(embedding_bag(w, idx, off2, "mean", include_last_offset=True), F.embedding_bag(idx, w64, off, mode="mean")) < 1e-6
    # 2-D indices: one bag per row.
    idx2 = torch.randint(0, num, (7, 5), device=device)
    for mode in ("sum", "mean", "max"):
        assert rel_err(embedding_bag(w, idx2, mode=mode), F.embedding_bag(idx2, w64, mode=mode)) < 1e-6


def test_gradient_is_deterministic(device):
    num, dim = 8, 33
    w = make((num, dim), torch.float32, device, requires_grad=True)
    idx = torch.randint(0, num, (5000,), device=device)  # many repeats of every row
    off = torch.arange(0, 5000, 10, device=device)
    g = make((500, dim), torch.float32, device)
    grads = [torch.autograd.grad(embedding_bag(w, idx, off, "sum"), (w,), g)[0] for _ in range(3)]
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[1], grads[2])


def test_module_and_bad_input(device):
    m = MetalEmbeddingBag(20, 8, mode="sum", padding_idx=0, device=device)
    assert torch.equal(m.weight[0], torch.zeros(8, device=device))
    ref = torch.nn.EmbeddingBag(20, 8, mode="sum", padding_idx=0, device=device)
    ref.weight.data.copy_(m.weight.data)
    idx = torch.tensor([0, 2, 4, 5, 4, 3, 2, 9], device=device)
    off = torch.tensor([0, 4], device=device)
    assert rel_err(m(idx, off), ref(idx, off)) < 1e-6
    m2 = MetalEmbeddingBag.from_pretrained(m.weight.detach().clone(), mode="max")
    assert not m2.weight.requires_grad
    w = m.weight.detach()
    with pytest.raises(IndexError, match="indices: index 20 is out of range"):
        embedding_bag(w, torch.tensor([1, 20], device=device), torch.tensor([0], device=device))
    with pytest.raises(ValueError, match="offsets: expected non-decreasing"):
        embedding_bag(w, idx, torch.tensor([0, 5, 2], device=device))
    # Offsets far outside the indices and negative indices are reported (one check of all the
    # statistics, read back at once).
    for bad_off in ([0, 1 << 30], [-(1 << 30), 3], [0, 7, -5]):
        for mode in ("sum", "mean", "max"):
            with pytest.raises(ValueError, match="offsets: expected non-decreasing"):
                embedding_bag(w, idx, torch.tensor(bad_off, device=device), mode=mode, include_last_offset=True)
    with pytest.raises(IndexError, match="indices: index -7 is out of range"):
        embedding_bag(w, torch.tensor([1, -7, 3], device=device), torch.tensor([0], device=device), mode="max")
    # Unchecked by Python (as under graph capture or torch.compile): the CUDA kernels clamp bad
    # offsets and indices into their tensors (no out-of-bounds access, the device stays usable);
    # the CPU kernel checks them itself on every call, and the call raises.
    from metalcore.embedding import _apply

    i32 = torch.tensor([1, 25, -3, 4], device=device, dtype=torch.int32)
    for bad_off in ([0, 1 << 30, 2], [-(1 << 30), 3, 9], [0, 7, -5]):
        for code in (0, 1, 2):
            off32 = torch.tensor(bad_off, device=device, dtype=torch.int32)
            if device == "cpu":
                with pytest.raises(IndexError, match="index -3 is out of range"):
                    _apply(w, i32, off32, None, code, -1)
                with pytest.raises(ValueError, match="offsets: expected non-decreasing"):
                    _apply(w, i32.clamp(0, 19), off32, None, code, -1)
            else:
                out = _apply(w, i32, off32, None, code, -1)
                assert out.shape == (2, 8)
    if device == "cuda":
        torch.cuda.synchronize()
    # The device is still usable (no out-of-bounds access happened).
    assert rel_err(m(idx, off), ref(idx, off)) < 1e-6
    with pytest.raises(ValueError, match="per_sample_weights: only supported with mode='sum'"):
        embedding_bag(w, idx, off, "mean", per_sample_weights=torch.ones(8, device=device))
    with pytest.raises(TypeError, match="indices: expected an integer tensor"):
        embedding_bag(w, idx.float(), off)
    with pytest.raises(ValueError, match="offsets: required"):
        embedding_bag(w, idx)
    with pytest.raises(ValueError, match="mode"):
        embedding_bag(w, idx, off, "median")


def test_fallback_on_device_without_backend():
    w = torch.randn(10, 4, device="meta")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = metalcore.embedding_bag(w, torch.zeros(6, dtype=torch.long, device="meta").reshape(2, 3), mode="sum")
    assert y.shape == (2, 4)
    assert any("falls back to PyTorch" in str(m.message) for m in rec)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_custom_op_and_compile(device, mode):
    num, dim = 40, 24
    w = make((num, dim), torch.float32, device)
    idx, off = bags(num, 12, device)
    idx32 = idx.to(torch.int32)
    off32 = torch.cat((off, torch.tensor([idx.numel()], device=device))).to(torch.int32)
    code = {"sum": 0, "mean": 1, "max": 2}[mode]
    psw = make(idx.shape, torch.float32, device) if mode == "sum" else None
    torch.library.opcheck(torch.ops.metalcore.embedding_bag, (w, idx32, off32, psw, code, -1))
    torch.library.opcheck(torch.ops.metalcore.embedding_bag, (w, idx32, off32, None, code, 3))

    def f(weight, p):
        return embedding_bag(weight, idx, off, mode, per_sample_weights=p, padding_idx=3)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a = w.clone().requires_grad_()
    p = None if psw is None else psw.clone().requires_grad_()
    out_c = compiled(a, p)
    out_e = f(a, p)
    assert torch.equal(out_c, out_e)
    g = make(out_e.shape, torch.float32, device)
    inputs = (a,) if p is None else (a, p)
    gc = torch.autograd.grad(out_c, inputs, g)
    ge = torch.autograd.grad(out_e, inputs, g)
    assert all(torch.equal(x, y) for x, y in zip(gc, ge)), "the same deterministic kernels, bit for bit"
