"""gather, scatter_add and index_select against float64 torch, on every test device."""

import warnings

import pytest
import torch

import metalcore
from metalcore import gather, index_select, scatter_add
from conftest import DEVICES, assert_close_to_ref, make, rel_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INDEX_DTYPES = [torch.int64, torch.int32]

# (input shape, dim, index shape): dim first, last and in the middle; odd sizes; index longer than
# the input along dim (duplicates); index narrower than the input in other dimensions (scatter_add
# then adds into a strided view of its output; in the last case that view cannot be seen as
# (outer, n, inner) and scatter_add takes its flat-offset path).
CASES = [
    ((7,), 0, (5,)),
    ((1,), -1, (3,)),
    ((4097,), 0, (4097,)),
    ((3, 4097), -1, (3, 123)),
    ((5, 7, 9), 1, (5, 11, 9)),
    ((64, 33), 0, (1000, 33)),
    ((6, 33, 8), -1, (6, 30, 20)),
    ((8, 6), 0, (12, 3)),
    ((5, 7, 9), 0, (3, 7, 4)),
]
CASE_IDS = [f"{s}-d{d}-{i}" for s, d, i in CASES]


def rand_index(shape, size, device, dtype=torch.int64):
    """Fresh random indices in [0, size)."""
    return torch.randint(0, size, shape, dtype=dtype).to(device)


def floor_of(dtype):
    """Slack of the 2x-torch bar: a few ulps of float32 (float64 results are compared as they are)."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def scatter_grads64(g64, dim, index, src_shape):
    """The exact gradient of scatter_add to src: gather of the output gradient, zero-padded."""
    gs = torch.zeros(src_shape, dtype=torch.float64, device=g64.device)
    gs[tuple(slice(0, s) for s in index.shape)] = torch.gather(g64, dim, index.long())
    return gs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape,dim,ishape", CASES, ids=CASE_IDS)
def test_gather_forward_and_backward(device, dtype, index_dtype, shape, dim, ishape):
    x = make(shape, dtype, device, requires_grad=True)
    index = rand_index(ishape, shape[dim], device, index_dtype)
    y = gather(x, dim, index)
    x64 = x.detach().double().requires_grad_()
    ref = torch.gather(x64, dim, index.long())
    assert y.shape == ref.shape and y.dtype == dtype
    assert torch.equal(y.double(), ref)  # a copy: exact
    g = make(ishape, dtype, device)
    (gx,) = torch.autograd.grad(y, (x,), g)
    (gx64,) = torch.autograd.grad(ref, (x64,), g.double())
    (gx_t,) = torch.autograd.grad(torch.gather(x, dim, index.long()), (x,), g)
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close_to_ref(gx, gx_t, gx64, what="grad input", floor=floor_of(dtype))


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape,dim,ishape", CASES, ids=CASE_IDS)
def test_scatter_add_forward_and_backward(device, dtype, index_dtype, shape, dim, ishape, deterministic):
    src_shape = tuple(s + d % 2 for d, s in enumerate(ishape))  # src may be larger than index
    x = make(shape, dtype, device, requires_grad=True)
    src = make(src_shape, dtype, device, requires_grad=True)
    index = rand_index(ishape, shape[dim], device, index_dtype)
    y = scatter_add(x, dim, index, src, deterministic=deterministic)
    x64, s64 = x.detach().double(), src.detach().double()
    ref = torch.scatter_add(x64, dim, index.long(), s64)
    theirs = torch.scatter_add(x.detach(), dim, index.long(), src.detach())
    assert y.shape == x.shape and y.dtype == dtype
    assert_close_to_ref(y, theirs, ref, what="forward", floor=floor_of(dtype))
    g = make(shape, dtype, device)
    gx, gs = torch.autograd.grad(y, (x, src), g)
    assert torch.equal(gx, g)
    assert gs.shape == src.shape and torch.equal(gs.double(), scatter_grads64(g.double(), dim, index, src_shape))


# (input shape, dim, number of indices)
SELECT_CASES = [((7,), 0, 5), ((1,), 0, 4), ((4097,), -1, 300), ((5, 7, 9), 1, 13), ((9, 4097), 0, 20), ((33, 64), 0, 1000), ((3, 5, 8), -1, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape,dim,n", SELECT_CASES, ids=[f"{s}-d{d}-{n}" for s, d, n in SELECT_CASES])
def test_index_select_forward_and_backward(device, dtype, index_dtype, shape, dim, n):
    x = make(shape, dtype, device, requires_grad=True)
    index = rand_index((n,), shape[dim], device, index_dtype)
    y = index_select(x, dim, index)
    x64 = x.detach().double().requires_grad_()
    ref = torch.index_select(x64, dim, index)
    assert y.shape == ref.shape and y.dtype == dtype
    assert torch.equal(y.double(), ref)
    g = make(ref.shape, dtype, device)
    (gx,) = torch.autograd.grad(y, (x,), g)
    (gx64,) = torch.autograd.grad(ref, (x64,), g.double())
    (gx_t,) = torch.autograd.grad(torch.index_select(x, dim, index), (x,), g)
    assert gx.dtype == dtype
    assert_close_to_ref(gx, gx_t, gx64, what="grad input", floor=floor_of(dtype))


def test_non_contiguous_inputs(device):
    base = make((9, 40, 13), torch.float32, device)
    views = [base.transpose(0, 2), base[:, ::2, 1:], base[1:, 3:], base[..., 1:12], base[:1].expand(6, 40, 13)]
    for v in views:
        dim = 1
        x = v.detach().requires_grad_()
        x64 = x.detach().double().requires_grad_()
        n = v.shape[dim]
        idx = rand_index((v.shape[0], 2 * n, v.shape[2]), n, device).transpose(0, 2).contiguous().transpose(0, 2)  # strided index
        y = gather(x, dim, idx)
        ref = torch.gather(x64, dim, idx)
        assert torch.equal(y.double(), ref.detach())
        g = make(y.shape, torch.float32, device).transpose(0, 1).contiguous().transpose(0, 1)
        (gx,) = torch.autograd.grad(y, (x,), g)
        (gx64,) = torch.autograd.grad(ref, (x64,), g.double())
        assert rel_err(gx, gx64) < 1e-6
        src = make((idx.shape[2], idx.shape[1], idx.shape[0]), torch.float32, device).transpose(0, 2)
        for det in (False, True):
            out = scatter_add(v, dim, idx, src, deterministic=det)
            assert rel_err(out, torch.scatter_add(v.double(), dim, idx, src.double())) < 1e-6
        sel = rand_index((17,), n, device)[::2]
        assert torch.equal(index_select(v, dim, sel), torch.index_select(v, dim, sel))
        (gs,) = torch.autograd.grad(index_select(x, dim, sel).sum(), (x,))  # an expanded output gradient
        assert torch.equal(gs, torch.zeros_like(v).index_add(dim, sel, torch.ones(1, device=device).expand(v.shape[0], 9, v.shape[2])))
    # An expanded (stride 0) index and unaligned starts.
    x = base.reshape(-1)[1:4097].reshape(16, 256)
    idx = rand_index((1, 256), 16, device).expand(40, 256)
    assert torch.equal(gather(x, 0, idx), torch.gather(x, 0, idx))
    assert rel_err(scatter_add(x, 0, idx, torch.ones(40, 256, device=device)), torch.scatter_add(x, 0, idx, torch.ones(40, 256, device=device))) < 1e-6
    # Stride 0 along the gathered (last) dimension itself: an expanded index, an expanded table.
    y = make((40, 16), torch.float32, device)
    idx = rand_index((40, 1), 16, device).expand(40, 300)
    assert torch.equal(gather(y, 1, idx), torch.gather(y, 1, idx))
    wide = y[:, :1].expand(40, 16)
    idx2 = rand_index((40, 300), 16, device)
    assert torch.equal(gather(wide, 1, idx2), torch.gather(wide, 1, idx2))
    src = make((40, 300), torch.float32, device)
    assert rel_err(scatter_add(y, 1, idx, src), torch.scatter_add(y.double(), 1, idx, src.double())) < 1e-6


def test_empty_tensors(device):
    x = make((4, 5), torch.float32, device, requires_grad=True)
    for idx in (torch.zeros(0, 5, dtype=torch.long, device=device), torch.zeros(4, 0, dtype=torch.long, device=device)):
        y = gather(x, 0, idx)
        assert y.shape == idx.shape
        (gx,) = torch.autograd.grad(y.sum(), (x,))
        assert torch.equal(gx, torch.zeros_like(x))
        src = make(idx.shape, torch.float32, device)
        assert torch.equal(scatter_add(x, 0, idx, src), x)
    e = index_select(x, 1, torch.zeros(0, dtype=torch.long, device=device))
    assert e.shape == (4, 0)
    (gx,) = torch.autograd.grad(e.sum() + x.sum(), (x,))
    assert torch.equal(gx, torch.ones_like(x))
    z = make((0, 5), torch.float32, device)
    assert gather(z, 1, torch.zeros(0, 3, dtype=torch.long, device=device)).shape == (0, 3)
    assert index_select(z, 1, torch.tensor([4, 0], device=device)).shape == (0, 2)
    assert torch.equal(scatter_add(z, 0, torch.zeros(0, 5, dtype=torch.long, device=device), z), z)


def test_zero_and_one_dimensional(device):
    s = torch.tensor(2.5, device=device, requires_grad=True)
    y = gather(s, 0, torch.tensor(0, device=device))
    assert y.shape == () and y.item() == 2.5
    (g,) = torch.autograd.grad(y * 3, (s,))
    assert g.item() == 3
    out = scatter_add(s, -1, torch.tensor(0, device=device), torch.tensor(1.5, device=device))
    assert out.shape == () and out.item() == 4.0
    sel = index_select(s, 0, torch.tensor([0], device=device))
    assert sel.shape == () and sel.item() == 2.5
    v = make((7,), torch.float64, device)
    assert gather(v, 0, torch.tensor(3, device=device)).shape == torch.gather(v, 0, torch.tensor(3, device=device)).shape == ()
    assert torch.equal(index_select(v, 0, torch.tensor(6, device=device)), torch.index_select(v, 0, torch.tensor(6, device=device)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_propagates_as_torch(device, dtype):
    x = make((6, 10), dtype, device)
    x[2, 3] = float("nan")
    x[4, 0] = float("inf")
    index = rand_index((6, 30), 10, device)
    index[2, ::3] = 3
    src = make((6, 30), dtype, device)
    src[0, 5] = float("nan")
    src[5, 7] = float("-inf")
    for ours, theirs in (
        (gather(x, 1, index), torch.gather(x, 1, index)),
        (scatter_add(x, 1, index, src), torch.scatter_add(x, 1, index, src)),
        (scatter_add(x, 1, index, src, deterministic=True), torch.scatter_add(x, 1, index, src)),
        (index_select(x, 1, index[2]), torch.index_select(x, 1, index[2])),
    ):
        assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_16bit_sums_accumulate_in_float32(device, dtype, deterministic):
    """4096 terms into three bins: summed in float32 and rounded once, each bin is within half a
    16-bit ulp (plus the float32 rounding, well under 0.1 ulp here) of the exact sum; a 16-bit
    running sum is not."""
    src = (1 + torch.rand(4096, 8)).to(dtype).to(device)
    index = torch.randint(0, 3, (4096, 8)).to(device)
    x = torch.zeros(3, 8, dtype=dtype, device=device)
    y = scatter_add(x, 0, index, src, deterministic=deterministic).double()
    ref = torch.scatter_add(x.double(), 0, index, src.double())
    ulp = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(ref))
    assert ((y - ref).abs() <= 0.6 * ulp).all()
    x2 = make((3, 8), dtype, device, requires_grad=True)
    sel = torch.randint(0, 3, (4096,)).to(device)
    (gx,) = torch.autograd.grad(index_select(x2, 0, sel), (x2,), src)
    ref = torch.zeros(3, 8, dtype=torch.float64, device=device).index_add(0, sel, src.double())
    ulp = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(ref))
    assert ((gx.double() - ref).abs() <= 0.6 * ulp).all()


def test_deterministic_paths_are_bitwise_reproducible(device):
    x = make((50, 33), torch.float32, device, requires_grad=True)
    index = rand_index((20000, 33), 50, device)  # ~400 terms per output element
    src = make((20000, 33), torch.float32, device, scale=1e3)
    outs = [scatter_add(x.detach(), 0, index, src, deterministic=True) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert rel_err(outs[0], torch.scatter_add(x.detach().double(), 0, index, src.double())) < 1e-6
    sel = rand_index((20000,), 50, device)
    g = make((20000, 33), torch.float32, device, scale=1e3)
    grads = [torch.autograd.grad(index_select(x, 0, sel), (x,), g)[0] for _ in range(3)]
    assert all(torch.equal(grads[0], r) for r in grads[1:])
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = [torch.autograd.grad(gather(x, 0, index), (x,), src)[0] for _ in range(3)]
        outs = [scatter_add(x.detach(), 0, index, src) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(grads[0], r) for r in grads[1:]) and all(torch.equal(outs[0], o) for o in outs[1:])
    assert rel_err(grads[0], outs[0] - x.detach()) < 1e-6


def test_gradcheck_float64(device):
    x = make((4, 5, 3), torch.float64, device, requires_grad=True)
    src = make((4, 7, 3), torch.float64, device, requires_grad=True)
    index = rand_index((4, 6, 3), 5, device)
    sel = torch.tensor([4, 0, 4, 2], device=device)
    index0 = rand_index((3, 5, 2), 4, device)
    fns = [
        (lambda a: gather(a, 1, index), (x,)),
        (lambda a, s: scatter_add(a, 1, index, s), (x, src)),
        (lambda a, s: scatter_add(a, -2, index, s, deterministic=True), (x, src)),
        (lambda a: index_select(a, 1, sel), (x,)),
        (lambda a: gather(a, 0, index0), (x,)),
    ]
    for f, args in fns:
        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)


def test_bad_input(device):
    x = make((4, 5), torch.float32, device)
    idx = torch.zeros(4, 5, dtype=torch.long, device=device)
    with pytest.raises(TypeError, match="index: expected an int64 or int32 tensor"):
        gather(x, 0, idx.float())
    with pytest.raises(TypeError, match="index: expected an int64 or int32 tensor"):
        index_select(x, 0, torch.zeros(3, dtype=torch.int16, device=device))
    with pytest.raises(TypeError, match="input: expected a floating dtype"):
        gather(idx, 0, idx)
    with pytest.raises(TypeError, match="index: expected a torch.Tensor"):
        gather(x, 0, [0, 1])
    with pytest.raises(IndexError, match=r"dim: expected a dimension in \[-2, 1\]"):
        gather(x, 2, idx)
    with pytest.raises(IndexError, match="dim: "):
        index_select(x, -3, idx[0])
    with pytest.raises(ValueError, match="index: expected 2 dimensions"):
        gather(x, 0, idx[0])
    with pytest.raises(ValueError, match=r"index: expected a size of at most 5 in dimension 1 \(that of input\)"):
        gather(x, 0, torch.zeros(4, 6, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"\(that of src\)"):
        scatter_add(x, 0, idx, x[:, :3])
    with pytest.raises(TypeError, match="src: expected dtype torch.float32"):
        scatter_add(x, 0, idx, x.double())
    with pytest.raises(ValueError, match="index: expected a 1-D"):
        index_select(x, 0, idx)
    with pytest.raises(IndexError, match="index: 4 is out of range for dimension 0 of input"):
        gather(x, 0, idx + 4)
    with pytest.raises(IndexError, match="index: -1 is out of range for dimension 1 of input"):
        scatter_add(x, 1, idx - 1, x)
    with pytest.raises(IndexError, match="index: 5 is out of range"):
        index_select(x, 1, torch.tensor([0, 5], device=device, dtype=torch.int32))
    with pytest.raises(ValueError, match="index: expected a tensor on"):
        gather(x, 0, idx.to("meta"))
    with pytest.raises(ValueError, match="src: expected a tensor on"):
        scatter_add(x, 0, idx, x.to("meta"))


def test_out_of_range_indices_in_the_custom_ops(device):
    """The custom ops skip the Python range check of CUDA indices (as under torch.compile and graph
    capture): the CUDA kernels write NaN for bad gather indices and skip bad terms of the sums. The
    CPU kernels check every index they read and raise."""
    x = make((4, 6), torch.float32, device)
    idx = torch.tensor([[0, 6, -1, 5], [1 << 40, 2, -(1 << 40), 3]], device=device).repeat(2, 1)
    src = make(idx.shape, torch.float32, device)
    if device == "cpu":
        calls = [lambda: torch.ops.metalcore.gather(x, 1, idx), lambda: torch.ops.metalcore.index_select(x, 1, idx[0]),
                 lambda: torch.ops.metalcore.index_select_backward(src, 1, idx[0], [4, 6])]
        calls += [lambda det=det: torch.ops.metalcore.scatter_add(x, 1, idx, src, det) for det in (False, True)]
        calls += [lambda: torch.ops.metalcore.scatter_add(x, 0, idx[:, :3], src[:, :3], False)]  # the flat-offset path
        for call in calls:
            with pytest.raises(IndexError, match=r"index: -?\d+ is out of range for dimension [01] of input"):
                call()
        return
    y = torch.ops.metalcore.gather(x, 1, idx)
    ok = (idx >= 0) & (idx < 6)
    assert torch.isnan(y[~ok]).all() and torch.equal(y[ok], torch.gather(x, 1, idx.clamp(0, 5))[ok])
    want = torch.scatter_add(x, 1, idx.clamp(0, 5), torch.where(ok, src, 0))
    for det in (False, True):
        assert rel_err(torch.ops.metalcore.scatter_add(x, 1, idx, src, det), want) < 1e-6
    row = idx[0]
    sel = torch.ops.metalcore.index_select(x, 1, row)
    assert torch.isnan(sel[:, ~ok[0]]).all() and torch.equal(sel[:, ok[0]], x[:, row[ok[0]]])
    g = torch.ops.metalcore.index_select_backward(src, 1, row, [4, 6])
    assert torch.equal(g, torch.zeros_like(x).index_add(1, row[ok[0]], src[:, ok[0]]))


def test_custom_ops_and_compile(device):
    x = make((5, 7), torch.float32, device, requires_grad=True)
    src = make((5, 9), torch.float32, device, requires_grad=True)
    index = rand_index((5, 9), 7, device)
    sel = rand_index((11,), 5, device, torch.int32)
    g = make((11, 7), torch.float32, device, requires_grad=True)
    for args in [(x, 1, index), (x, 0, index[:, :7] % 5)]:
        torch.library.opcheck(torch.ops.metalcore.gather, args)
    for det in (False, True):
        torch.library.opcheck(torch.ops.metalcore.scatter_add, (x, 1, index, src, det))
        torch.library.opcheck(torch.ops.metalcore.gather_backward, (src, 1, index, [5, 7], det))
    torch.library.opcheck(torch.ops.metalcore.index_select, (x, 0, sel))
    torch.library.opcheck(torch.ops.metalcore.index_select, (x, -1, sel % 7))
    assert torch.equal(torch.ops.metalcore.gather(x, -1, index), torch.gather(x, -1, index))
    torch.library.opcheck(torch.ops.metalcore.index_select_backward, (g, 0, sel, [5, 7]))

    def block(a, s):
        h = scatter_add(a, 1, index, s, deterministic=True) * 2
        return index_select(h, 0, sel) + gather(h, 1, index[:, :7]).sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    xs = [t.detach().requires_grad_() for t in (x, src)]
    out = compiled(*xs)
    rs = [t.detach().requires_grad_() for t in (x, src)]
    ref = block(*rs)
    assert rel_err(out, ref) < 1e-6
    dy = make(out.shape, torch.float32, device)
    for a, b in zip(torch.autograd.grad(out, xs, dy), torch.autograd.grad(ref, rs, dy)):
        assert rel_err(a, b) < 1e-6


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_graph_capture_and_replay():
    """Forward and backward of the three ops (the sorted paths included) captured in a CUDA graph:
    no host sync on the way (the index range check is skipped under capture), and replays follow
    new input values."""
    x = torch.randn(64, 300, device="cuda", requires_grad=True)
    index = torch.randint(0, 300, (64, 500), device="cuda")
    src = torch.randn(64, 500, device="cuda")
    sel = torch.randint(0, 64, (100,), device="cuda")
    gy = torch.randn(100, 500, device="cuda")

    def run():
        h = index_select(gather(scatter_add(x, 1, index, src, deterministic=True), 1, index), 0, sel)
        return (h.detach(),) + torch.autograd.grad(h, (x,), gy)

    run()  # kernels compiled and loaded outside the capture
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
        with torch.cuda.graph(graph):
            captured = run()
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(2):
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, run()):
            assert rel_err(a, b) < 1e-6


def test_fallback_on_device_without_backend():
    x = torch.randn(4, 8, device="meta")
    idx = torch.zeros(4, 3, dtype=torch.long, device="meta")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert gather(x, 1, idx).shape == (4, 3)
        assert scatter_add(x, 1, idx, torch.randn(4, 3, device="meta")).shape == (4, 8)
        assert index_select(x, 1, idx[0].int()).shape == (4, 3)
    messages = " ".join(str(m.message) for m in w)
    for op in ("gather", "scatter_add", "index_select"):
        assert f"{op} falls back to PyTorch" in messages
