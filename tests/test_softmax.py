"""Softmax against float64 torch.softmax, on every test device."""

import warnings

import pytest
import torch

from metalcore import MetalSoftmax, fused_softmax
from conftest import DEVICES, assert_close_to_ref, grads_of, make, rel_err

LOWP = [torch.float32, torch.float16, torch.bfloat16]
# Widths from one element to past the register path (and 256k, the widest rows the issue names).
SHAPES = [(3, 1), (5, 7), (4, 64), (3, 4097), (2, 8192), (2, 3, 96), (2, 65536 + 3)]


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_float64(device, dtype, shape):
    # Four independent draws in one tensor: the error of a rounded backward (dy - sum(dy*y) cancels)
    # fluctuates from draw to draw for torch and for us alike; the norm over several draws
    # compares the typical errors rather than one lucky or unlucky draw.
    shape = (4,) + shape
    x = make(shape, dtype, device, scale=4.0, requires_grad=True)
    y = fused_softmax(x, -1)
    y_t = torch.softmax(x, -1)
    x64 = x.detach().double().requires_grad_()
    y64 = torch.softmax(x64, -1)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close_to_ref(y, y_t, y64, what="forward", floor=1e-7)
    dy = make(shape, dtype, device)
    (g,) = grads_of(lambda a: fused_softmax(a, -1), (x,), dy)
    (g_t,) = grads_of(lambda a: torch.softmax(a, -1), (x,), dy)
    (g64,) = grads_of(lambda a: torch.softmax(a, -1), (x64,), dy.double())
    assert g.dtype == x.dtype
    assert_close_to_ref(g, g_t, g64, what="backward", floor=1e-7)


def test_rows_of_256k(device):
    x = make((2, 262144), torch.float32, device, scale=10.0)
    assert rel_err(fused_softmax(x), torch.softmax(x.double(), -1)) < 1e-6


@pytest.mark.parametrize("dim", [0, 1, -2, 2])
def test_any_dim_and_non_contiguous(device, dim):
    base = make((6, 9, 11), torch.float32, device, scale=3.0)
    for x in (base, base.transpose(0, 2), base[:, ::2, 1:]):
        x = x.detach().requires_grad_()
        y = fused_softmax(x, dim)
        x64 = x.detach().double().requires_grad_()
        y64 = torch.softmax(x64, dim)
        assert y.shape == x.shape and rel_err(y, y64) < 1e-6
        if dim == 0:  # an expanded (stride-0) gradient, varying along dim
            dy = make(x.shape[:-1] + (1,), torch.float32, device).expand(x.shape)
        else:
            dy = make(x.shape, torch.float32, device)
        (g,) = torch.autograd.grad(y, (x,), dy)
        (g64,) = torch.autograd.grad(y64, (x64,), dy.double())
        assert rel_err(g, g64) < 1e-5


def test_float64_and_gradcheck(device):
    x = torch.randn(3, 13, dtype=torch.float64, device=device, requires_grad=True)
    assert rel_err(fused_softmax(x), torch.softmax(x, -1)) < 1e-14
    assert torch.autograd.gradcheck(lambda a: fused_softmax(a, 1), (x,))
    assert torch.autograd.gradcheck(lambda a: fused_softmax(a, 0), (x,))


def test_inf_and_nan_rows(device):
    x = make((5, 300), torch.float32, device)
    x[0] = float("-inf")  # every element masked: NaN, as torch gives
    x[1, :150] = float("-inf")  # half masked: a proper distribution over the rest
    x[2, 7] = float("nan")
    x[3, 9] = float("inf")
    y, t = fused_softmax(x), torch.softmax(x, -1)
    assert torch.isnan(y[0]).all() and torch.isnan(t[0]).all()
    assert torch.equal(y[1, :150], torch.zeros_like(y[1, :150])) and rel_err(y[1], t[1]) < 1e-6
    assert torch.isnan(y[2]).all()
    assert torch.isnan(y[3]).any() == torch.isnan(t[3]).any()
    assert rel_err(y[4], t[4]) < 1e-6


def test_masked_prefix_in_long_rows(device):
    """The streaming path keeps a running max per thread: a thread whose first values are all
    -inf must not turn the row into NaN."""
    x = make((3, 70000), torch.float32, device)
    x[:, :40000] = float("-inf")
    assert rel_err(fused_softmax(x), torch.softmax(x.double(), -1)) < 1e-6


@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (0,)])
def test_empty_and_scalar(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = fused_softmax(x)
    assert y.shape == x.shape
    (g,) = torch.autograd.grad(y, (x,), torch.randn(shape, device=device))
    assert g.shape == x.shape
    s = torch.tensor(3.0, device=device)
    assert torch.equal(fused_softmax(s, 0), torch.softmax(s, 0))


def test_module(device):
    m = MetalSoftmax(dim=1)
    x = make((4, 5), torch.float32, device)
    assert rel_err(m(x), torch.nn.Softmax(dim=1)(x)) < 1e-6 and "dim=1" in repr(m)


def test_bad_input(device):
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        fused_softmax(torch.ones(3, 4, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="dim"):
        fused_softmax(torch.ones(3, 4, device=device), 2)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        fused_softmax([1.0, 2.0])


def test_fallback_warns_once():
    import metalcore._backend as bk

    bk._warned.discard(("fused_softmax", "meta"))
    x = torch.empty(4, 8, device="meta")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fused_softmax(x)
        fused_softmax(x, 0)
    assert len([r for r in rec if issubclass(r.category, RuntimeWarning)]) == 1


def test_opcheck_and_compile(device):
    x = make((5, 40), torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.metalcore.softmax_fwd.default, (x, -1))
    torch.library.opcheck(torch.ops.metalcore.softmax_fwd.default, (x, 0))
    y = torch.softmax(x.detach(), -1)
    torch.library.opcheck(torch.ops.metalcore.softmax_bwd.default, (y, torch.randn_like(y), -1))

    def f(a):
        return (fused_softmax(a, -1) * fused_softmax(a, 0)).sum()

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    (gc,) = torch.autograd.grad(out, (x,))
    ref = f(x)
    (ge,) = torch.autograd.grad(ref, (x,))
    assert rel_err(out, ref) < 1e-6 and rel_err(gc, ge) < 1e-5
