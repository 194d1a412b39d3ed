"""RoPE against HF's formula in float64, on every test device."""

import warnings

import pytest
import torch

import metalcore
from metalcore import RotaryEmbedding, apply_rotary_pos_emb, apply_rotary_pos_emb_single
from conftest import assert_close_to_ref, make, rel_err

LOWP = [torch.float32, torch.float16, torch.bfloat16]


# HF transformers, models/llama/modeling_llama.py (rotate_half, apply_rotary_pos_emb), copied:
# https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py
def rotate_half(x):
    """Rotates half the hidden dims of the input."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def rotate_every_two(x):
    """GPT-J's rotation of pairs (models/gptj/modeling_gptj.py)."""
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


def reference(x, cos, sin, unsqueeze_dim, interleaved):
    """HF's formula on the first rot dims (partial rotary passes the rest through)."""
    c, s = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    rot = c.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    r = rotate_every_two(xr) if interleaved else rotate_half(xr)
    return torch.cat((xr * c + r * s, xp), dim=-1)


def tables(batch, seq, rot, dtype, device, interleaved=False, offset=0):
    """cos/sin of HF's Llama rotary embedding at positions offset + 0..seq-1 (float32 -> dtype)."""
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    pos = torch.arange(seq).float()[None].expand(batch, seq) + offset + torch.arange(batch)[:, None] * 3
    f = pos[..., None] * inv
    emb = f.repeat_interleave(2, -1) if interleaved else torch.cat((f, f), -1)
    return emb.cos().to(dtype).to(device), emb.sin().to(dtype).to(device)


def shaped(batch, heads, seq, dim, unsqueeze_dim):
    return (batch, heads, seq, dim) if unsqueeze_dim == 1 else (batch, seq, heads, dim)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dims", [(64, 64), (128, 128), (80, 32), (6, 2)], ids=["d64", "d128", "partial80-32", "d6-2"])
def test_matches_hf_forward_and_backward(device, dtype, unsqueeze_dim, interleaved, dims):
    dim, rot = dims
    batch, hq, hk, seq = 2, 4, 2, 37
    q = make(shaped(batch, hq, seq, dim, unsqueeze_dim), dtype, device, requires_grad=True)
    k = make(shaped(batch, hk, seq, dim, unsqueeze_dim), dtype, device, requires_grad=True)
    cos, sin = tables(batch, seq, rot, dtype, device, interleaved)
    qe, ke = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim, interleaved=interleaved)
    assert qe.shape == q.shape and ke.shape == k.shape and qe.dtype == dtype
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    c64, s64 = cos.double(), sin.double()
    for ours, x, x64, what in ((qe, q, q64, "q"), (ke, k, k64, "k")):
        ref = reference(x64, c64, s64, unsqueeze_dim, interleaved)
        theirs = reference(x, cos, sin, unsqueeze_dim, interleaved)
        assert_close_to_ref(ours, theirs, ref, what=f"{what} forward", floor=1e-7)
    dq, dk = make(q.shape, dtype, device), make(k.shape, dtype, device)
    gq, gk = torch.autograd.grad((qe, ke), (q, k), (dq, dk))
    tq, tk = torch.autograd.grad(
        (reference(q, cos, sin, unsqueeze_dim, interleaved), reference(k, cos, sin, unsqueeze_dim, interleaved)), (q, k), (dq, dk)
    )
    rq, rk = torch.autograd.grad(
        (reference(q64, c64, s64, unsqueeze_dim, interleaved), reference(k64, c64, s64, unsqueeze_dim, interleaved)),
        (q64, k64),
        (dq.double(), dk.double()),
    )
    assert_close_to_ref(gq, tq, rq, what="grad q", floor=1e-7)
    assert_close_to_ref(gk, tk, rk, what="grad k", floor=1e-7)


def test_hf_function_and_rotary_embedding(device):
    """Our RotaryEmbedding tables and rotation equal HF's Llama code in float32."""
    batch, heads, seq, dim = 2, 3, 9, 32
    q = make((batch, heads, seq, dim), torch.float32, device)
    k = make((batch, heads, seq, dim), torch.float32, device)
    pos = torch.arange(seq, device=device)[None].expand(batch, seq) + 5
    rope = RotaryEmbedding(dim, device=device)
    cos, sin = rope(q, pos)
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    f = (inv[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((f, f), dim=-1)
    assert torch.allclose(cos, emb.cos(), atol=1e-6) and torch.allclose(sin, emb.sin(), atol=1e-6)
    qe, ke = apply_rotary_pos_emb(q, k, cos, sin)
    hq, hk = hf_apply_rotary_pos_emb(q, k, cos, sin)
    assert rel_err(qe, hq) < 1e-6 and rel_err(ke, hk) < 1e-6
    qr, kr = rope.rotate(q, k, pos)
    assert torch.equal(qr, qe) and torch.equal(kr, ke)


def test_cos_shapes_and_position_ids(device):
    batch, heads, seq, dim = 3, 2, 8, 16
    q = make((batch, heads, seq, dim), torch.float32, device)
    table_c, table_s = tables(1, 40, dim, torch.float32, device)
    table_c, table_s = table_c[0], table_s[0]  # (40, dim)
    pos = torch.randint(0, 40, (batch, seq), device=device)
    ours = apply_rotary_pos_emb_single(q, table_c, table_s, pos)
    ref = reference(q.double(), table_c[pos].double(), table_s[pos].double(), 1, False)
    assert rel_err(ours, ref) < 1e-6
    # A 1-D position_ids broadcasts over the batch; int32 ids are accepted.
    p1 = torch.randint(0, 40, (seq,), device=device, dtype=torch.int32)
    ref1 = reference(q.double(), table_c[p1.long()].double().expand(batch, seq, dim), table_s[p1.long()].double().expand(batch, seq, dim), 1, False)
    assert rel_err(apply_rotary_pos_emb_single(q, table_c, table_s, p1), ref1) < 1e-6
    # (seq, rot) and (1, seq, rot) cos broadcast over the batch; with 3-D cos, position_ids is ignored (as HF).
    c2, s2 = table_c[:seq], table_s[:seq]
    ref2 = reference(q.double(), c2.double().expand(batch, seq, dim), s2.double().expand(batch, seq, dim), 1, False)
    assert rel_err(apply_rotary_pos_emb_single(q, c2, s2), ref2) < 1e-6
    assert rel_err(apply_rotary_pos_emb_single(q, c2[None], s2[None], pos), ref2) < 1e-6
    # A 4-D cos already unsqueezed at unsqueeze_dim.
    assert rel_err(apply_rotary_pos_emb_single(q, c2[None, None], s2[None, None]), ref2) < 1e-6
    # cos in float32 with bfloat16 q.
    qb = q.bfloat16()
    refb = reference(qb.double(), c2.double().expand(batch, seq, dim), s2.double().expand(batch, seq, dim), 1, False)
    assert rel_err(apply_rotary_pos_emb_single(qb, c2, s2), refb) < 4e-3


def test_non_contiguous_and_inplace(device):
    batch, seq, heads, dim = 2, 11, 3, 32
    qkv = make((batch, seq, 3 * heads * dim + 2), torch.float32, device)
    q = qkv[..., : heads * dim].view(batch, seq, heads, dim)  # (B, S, H, D) strided view
    k = qkv[..., heads * dim : 2 * heads * dim].view(batch, seq, heads, dim)
    cos, sin = tables(batch, seq, dim, torch.float32, device)
    qe, ke = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    assert rel_err(qe, reference(q.double(), cos.double(), sin.double(), 2, False)) < 1e-6
    assert rel_err(ke, reference(k.double(), cos.double(), sin.double(), 2, False)) < 1e-6
    # In place into the strided views: same values, other columns of qkv untouched.
    before = qkv.clone()
    q2, k2 = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2, inplace=True)
    assert q2.data_ptr() == q.data_ptr() and torch.equal(q, qe) and torch.equal(k, ke)
    assert torch.equal(qkv[..., 2 * heads * dim :], before[..., 2 * heads * dim :])
    # In place with autograd on a non-leaf: the gradient is the inverse rotation.
    x = make((batch, heads, seq, dim), torch.float32, device, requires_grad=True)
    y = apply_rotary_pos_emb_single(x * 1.0, cos, sin, inplace=True)
    dy = make(y.shape, torch.float32, device)
    (g,) = torch.autograd.grad(y, (x,), dy)
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(reference(x64, cos.double(), sin.double(), 1, False), (x64,), dy.double())
    assert rel_err(g, g64) < 1e-6


def test_partial_rotary_copies_the_rest_and_unaligned(device):
    batch, heads, seq, dim, rot = 1, 2, 5, 70, 20
    base = make((batch * heads * seq * dim + 1,), torch.bfloat16, device)
    x = base[1:].view(batch, heads, seq, dim)  # odd offset: scalar loads
    cos, sin = tables(batch, seq, rot, torch.float32, device, interleaved=True)
    y = apply_rotary_pos_emb_single(x, cos, sin, interleaved=True)
    assert torch.equal(y[..., rot:], x[..., rot:])
    ref = reference(x.double(), cos.double(), sin.double(), 1, True)
    assert rel_err(y, ref) < 4e-3


def test_empty_and_nan(device):
    cos, sin = tables(2, 4, 8, torch.float32, device)
    for shape in [(2, 0, 4, 8), (2, 3, 4, 8)[:0] + (0, 3, 4, 8)]:
        q = torch.zeros(shape, device=device)
        c, s = (cos[:0], sin[:0]) if shape[0] == 0 else (cos, sin)
        assert apply_rotary_pos_emb_single(q, c, s).shape == shape
    q = make((2, 3, 4, 8), torch.float32, device)
    q[1, 2, 3, 0] = float("nan")
    y = apply_rotary_pos_emb_single(q, cos, sin)
    assert torch.isnan(y[1, 2, 3, 0]) and torch.isnan(y[1, 2, 3, 4]) and torch.isfinite(y[0]).all()


def test_gradcheck_float64(device):
    q = make((1, 2, 3, 8), torch.float64, device, requires_grad=True)
    k = make((1, 1, 3, 8), torch.float64, device, requires_grad=True)
    cos, sin = tables(1, 3, 6, torch.float64, device)
    assert torch.autograd.gradcheck(lambda a, b: apply_rotary_pos_emb(a, b, cos, sin), (q, k))
    assert torch.autograd.gradcheck(lambda a: apply_rotary_pos_emb_single(a, cos, sin, interleaved=True), (q,))


def test_bad_input(device):
    q = make((1, 2, 3, 8), torch.float32, device)
    cos, sin = tables(1, 3, 8, torch.float32, device)
    with pytest.raises(ValueError, match="q: expected a 4-D tensor"):
        apply_rotary_pos_emb_single(q[0], cos, sin)
    with pytest.raises(ValueError, match="unsqueeze_dim"):
        apply_rotary_pos_emb_single(q, cos, sin, unsqueeze_dim=3)
    with pytest.raises(ValueError, match="cos: expected shape"):
        apply_rotary_pos_emb_single(q, cos[:, :2], sin[:, :2])
    with pytest.raises(ValueError, match="cos: expected a last dimension"):
        apply_rotary_pos_emb_single(q, cos[..., :3], sin[..., :3])
    with pytest.raises(TypeError, match="sin: expected the dtype of cos"):
        apply_rotary_pos_emb_single(q, cos, sin.double())
    with pytest.raises(TypeError, match="k: expected dtype"):
        apply_rotary_pos_emb(q, q.double(), cos, sin)
    with pytest.raises(ValueError, match="k: expected the batch, seq and head_dim"):
        apply_rotary_pos_emb(q, q[..., :2, :], cos, sin)
    with pytest.raises(IndexError, match="position_ids: values must be in"):
        apply_rotary_pos_emb_single(q, cos[0], sin[0], torch.tensor([[0, 1, 3]], device=device))
    with pytest.raises(NotImplementedError, match="cos/sin"):
        apply_rotary_pos_emb_single(q, cos.requires_grad_(), sin)


def test_custom_op_and_compile(device):
    q = make((2, 3, 5, 16), torch.float32, device)
    cos, sin = tables(2, 5, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.metalcore.rope, (q, cos, sin, None, False, False, False))
    table_c, table_s = cos[0], sin[0]
    pos = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]], device=device, dtype=torch.int32)
    torch.library.opcheck(torch.ops.metalcore.rope, (q, table_c, table_s, pos, False, True, True))

    def f(a, b):
        return apply_rotary_pos_emb(a, b, cos, sin)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a, b = (make((2, 3, 5, 16), torch.float32, device, requires_grad=True) for _ in range(2))
    qa, ka = compiled(a, b)
    qr, kr = f(a, b)
    assert torch.equal(qa, qr) and torch.equal(ka, kr)
    ga = torch.autograd.grad(qa.sum() + ka.sum(), (a, b))
    gr = torch.autograd.grad(qr.sum() + kr.sum(), (a, b))
    assert all(rel_err(x, y) < 1e-6 for x, y in zip(ga, gr))


def test_fallback_on_device_without_backend():
    q = torch.randn(1, 2, 3, 8, device="meta")
    cos, sin = torch.randn(1, 3, 8, device="meta"), torch.randn(1, 3, 8, device="meta")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = metalcore.apply_rotary_pos_emb_single(q, cos, sin)
    assert y.shape == q.shape
    assert any("falls back to PyTorch" in str(m.message) for m in w)
