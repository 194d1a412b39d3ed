"""MetalAdamW against torch.optim.AdamW, on every test device."""

import copy
import warnings

import pytest
import torch

from metalcore import MetalAdamW
from conftest import rel_err


def make_params(device, dtype, shapes=((7,), (33, 5), (4097,), (1,), (2, 3, 4))):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype).to(device)) for s in shapes]


def set_grads(params, step, skip=None):
    g = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        if skip is not None and i == skip:
            p.grad = None
            continue
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype).to(p.device)


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(amsgrad=True), dict(maximize=True), dict(weight_decay=0.0, lr=3e-2, betas=(0.8, 0.95), eps=1e-6),
     dict(amsgrad=True, maximize=True, weight_decay=0.1)],
    ids=["default", "amsgrad", "maximize", "hyper", "all"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trajectory_matches_torch(device, kw, dtype):
    ours = make_params(device, dtype)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    o = MetalAdamW(ours, **kw)
    t = torch.optim.AdamW(theirs, foreach=False, **kw)
    for step in range(100):
        skip = 2 if step % 10 == 3 else None  # a None gradient: that parameter does not step
        set_grads(ours, step, skip)
        set_grads(theirs, step, skip)
        o.step()
        t.step()
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < tol
        sa, sb = o.state[a], t.state[b]
        assert float(sa["step"]) == float(sb["step"])
        for k in sb:
            if k != "step":
                assert rel_err(sa[k], sb[k]) < 10 * tol, k


def test_state_dict_round_trips(device):
    ours = make_params(device, torch.float32)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    o = MetalAdamW(ours, lr=1e-2, amsgrad=True)
    t = torch.optim.AdamW(theirs, lr=1e-2, amsgrad=True)
    for step in range(3):
        set_grads(ours, step)
        set_grads(theirs, step)
        o.step()
        t.step()
    # Ours into torch and torch's into ours; both continue identically.
    t2_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    t2 = torch.optim.AdamW(t2_params, lr=1e-2, amsgrad=True)
    t2.load_state_dict(copy.deepcopy(o.state_dict()))
    o2_params = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    o2 = MetalAdamW(o2_params, lr=1e-2, amsgrad=True)
    o2.load_state_dict(copy.deepcopy(t.state_dict()))
    assert set(o.state_dict()["param_groups"][0]) >= set(t.state_dict()["param_groups"][0])
    for step in range(3, 6):
        for ps in (ours, theirs, t2_params, o2_params):
            set_grads(ps, step)
        for opt in (o, t, t2, o2):
            opt.step()
    for a, b, c, d in zip(ours, theirs, t2_params, o2_params):
        assert rel_err(c, a) < 2e-6 and rel_err(d, b) < 2e-6


def test_bfloat16_params_fp32_states_master_and_stochastic_rounding(device):
    start = make_params(device, torch.bfloat16, shapes=((3000,),))[0].detach()
    ref = [torch.nn.Parameter(start.double())]  # the exact trajectory from the same (bf16) start
    plain, master, sr, tb = ([torch.nn.Parameter(start.clone())] for _ in range(4))
    kw = dict(lr=1e-3, weight_decay=0.0)
    opts = [torch.optim.AdamW(ref, **kw), MetalAdamW(plain, **kw), MetalAdamW(master, master_weights=True, **kw),
            MetalAdamW(sr, stochastic_rounding=True, **kw), torch.optim.AdamW(tb, **kw)]
    torch.manual_seed(0)
    for step in range(60):
        # One gradient direction throughout: Adam then moves each weight by about lr per step,
        # below half a bfloat16 ulp for |w| > 1/4.
        g = torch.randn(3000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).to(device)
        for ps in (ref, plain, master, sr, tb):
            ps[0].grad = g.to(ps[0].dtype)  # the same (bfloat16) gradients for every run
        for opt in opts:
            opt.step()
    s = opts[1].state[plain[0]]
    assert s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32
    exact = ref[0].detach()
    moved = (exact - start.double()).norm()
    # The master copy follows the exact trajectory to float32 accuracy; the parameter is its rounding.
    mp = opts[2].state[master[0]]["master_param"]
    assert mp.dtype == torch.float32 and (mp.double() - exact).norm() / moved < 1e-4
    assert torch.equal(master[0].detach(), mp.to(torch.bfloat16))
    err = {name: ((ps[0].double() - exact).norm() / moved).item() for name, ps in (("plain", plain), ("sr", sr), ("torch", tb))}
    # Updates below half a bfloat16 ulp stall under round-to-nearest (ours and torch's alike);
    # stochastic rounding keeps them on average.
    assert err["plain"] <= 1.05 * err["torch"], err
    assert err["sr"] < 0.7 * err["plain"], err
    with pytest.raises(ValueError, match="stochastic_rounding"):
        MetalAdamW(sr, master_weights=True, stochastic_rounding=True)


def test_many_tensors_one_dtype_group_and_mixed_dtypes(device):
    ps = [torch.nn.Parameter(torch.randn(n + 1, device=device)) for n in range(120)]  # > 48 per launch
    ps += [torch.nn.Parameter(torch.randn(5, device=device, dtype=torch.float64))]
    nc = torch.nn.Parameter(torch.randn(6, 4, device=device).t())  # non-contiguous: the torch path
    ps.append(nc)
    ts = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    o, t = MetalAdamW(ps, lr=1e-2), torch.optim.AdamW(ts, lr=1e-2, foreach=False)
    for step in range(5):
        set_grads(ps, step)
        set_grads(ts, step)
        o.step()
        t.step()
    for a, b in zip(ps, ts):
        assert rel_err(a, b) < 2e-6


def test_reused_plan_with_new_gradient_layouts_and_a_learning_rate_schedule(device):
    # One parameter list keeps its validated native plan across steps: each step brings new
    # gradient tensors (contiguous, transposed, expanded) and the group's current hyperparameters.
    ps = [torch.nn.Parameter(torch.randn(6, 4, device=device)) for _ in range(3)]
    ts = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    o, t = MetalAdamW(ps, lr=1e-2, weight_decay=0.05), torch.optim.AdamW(ts, lr=1e-2, weight_decay=0.05, foreach=False)
    g = torch.Generator().manual_seed(7)
    for step in range(6):
        for i, (p, q) in enumerate(zip(ps, ts)):
            base = torch.randn(4, 6, generator=g).to(device)
            kind = (step + i) % 3
            grad = base.t() if kind == 0 else (base.t().contiguous() if kind == 1 else base[:1, :1].expand(6, 4))
            assert grad.shape == p.shape and (kind == 1) == grad.is_contiguous()
            p.grad, q.grad = grad, grad.clone()
        for group in (o.param_groups[0], t.param_groups[0]):
            group["lr"] = 1e-2 * (0.5 ** step)
            group["betas"] = (0.9, 0.99 if step % 2 else 0.999)
        o.step()
        t.step()
        for a, b in zip(ps, ts):
            assert rel_err(a, b) < 2e-6, step
    plans = o.__dict__.get("_plans", {})
    assert len(plans) == 1, "one parameter list, one plan, reused"


def test_bad_input_and_closure(device):
    p = torch.nn.Parameter(torch.randn(4, device=device))
    with pytest.raises(ValueError, match="lr"):
        MetalAdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        MetalAdamW([p], betas=(1.0, 0.9))
    with pytest.raises(NotImplementedError, match="capturable"):
        MetalAdamW([p], capturable=True)
    o = MetalAdamW([p])
    p.grad = torch.randn(4, device=device).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        o.step()
    p.grad = None
    calls = []

    def closure():
        calls.append(1)
        return torch.tensor(3.0)

    assert o.step(closure).item() == 3.0 and calls == [1]


def test_fallback_on_device_without_backend():
    p = torch.nn.Parameter(torch.randn(4, device="meta"))
    p.grad = torch.randn(4, device="meta")
    o = MetalAdamW([p])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        o.step()
    assert any("falls back to PyTorch" in str(m.message) for m in w)
