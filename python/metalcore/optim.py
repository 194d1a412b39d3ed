"""``MetalAdamW``: a drop-in for ``torch.optim.AdamW`` whose step updates every parameter of a
(device, dtype) group with one multi-tensor kernel launch per 48 tensors (CUDA) or one parallel
pass (CPU).

Same hyperparameters, decoupled weight decay, ``amsgrad`` and ``maximize``, and the same update
in the same order as torch's AdamW, so fp32 trajectories agree to rounding. The state
(``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) and param-group keys are torch's, so a
state dict saved by one loads in the other. Differences, all opt-in or for 16-bit parameters:

- bfloat16/float16 parameters keep their moments in float32 (torch keeps them in the parameter's
  dtype); a torch AdamW loading such a state dict casts them down, as it does for any state.
- ``master_weights=True`` keeps a float32 copy of each 16-bit parameter (state key
  ``master_param``): the update is applied to it and the parameter is its rounding.
- ``stochastic_rounding=True`` rounds bfloat16 parameters (without a master copy) stochastically,
  so small updates are not lost on average.

Gradients that are ``None`` are skipped (their parameter's step does not advance, as in torch);
sparse gradients raise ``RuntimeError``. Parameters that are not contiguous, or on a device with
no metalcore backend, are updated with the same formula in PyTorch ops (explicit fallback, with a
one-time warning for the device case). ``capturable`` and ``differentiable`` are not supported.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _native
from ._backend import desc, has_backend, stream_of, warn_fallback

__all__ = ["MetalAdamW"]

_HALF = (torch.float16, torch.bfloat16)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


_F32 = torch.float32


def _plain_counters(steps: List[Tensor]) -> bool:
    """True when every step counter is as this optimizer makes them (0-d float32 CPU tensors, not
    requiring grad), so that one native call may bump them all."""
    return all(st.dtype is _F32 and st.device.type == "cpu" and st.dim() == 0 and not st.requires_grad for st in steps)


def _bump_steps(steps: List[Tensor]) -> List[float]:
    """Adds 1 to every step counter and returns the new values: plain counters
    (:func:`_plain_counters`) in one native call, any other (e.g. loaded from a state dict saved
    elsewhere) through torch, as torch's AdamW does."""
    if _plain_counters(steps):
        return _native.add_to_f32_scalars([st.data_ptr() for st in steps], 1.0)
    torch._foreach_add_(steps, 1.0)
    return [st.item() for st in steps]


_Bucket = Tuple[List[Tensor], List[Dict[str, Any]], torch.device]


def _buckets(ps: List[Tensor], sts: List[Dict[str, Any]], keys) -> List[Tuple[_Bucket, Any]]:
    """The parameters with their states grouped by `keys` (one hashable per parameter, holding
    its device), in first-seen order: ((parameters, states, device), key) per group."""
    by: Dict[Any, _Bucket] = {}
    for p, st, k in zip(ps, sts, keys):
        e = by.setdefault(k, ([], [], p.device))
        e[0].append(p)
        e[1].append(st)
    return [(b, k) for k, b in by.items()]


class _Layout(NamedTuple):
    """A parameter group's step layout (see ``MetalAdamW._layout``)."""

    ids: List[int]
    states: List[Dict[str, Any]]
    steps: List[Tensor]
    step_ptrs: Optional[List[int]]
    buckets: List[_Bucket]


class MetalAdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter) with torch's semantics; see the module docstring."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        if isinstance(lr, Tensor):
            lr = float(lr)
        if not 0.0 <= lr:
            raise ValueError(f"lr: expected a non-negative learning rate, got {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"eps: expected a non-negative value, got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected two values in [0, 1), got {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay: expected a non-negative value, got {weight_decay}")
        if capturable or differentiable:
            raise NotImplementedError("MetalAdamW: capturable and differentiable are not supported")
        if master_weights and stochastic_rounding:
            raise ValueError("stochastic_rounding: not used with master_weights (the master copy keeps the low bits)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=foreach, capturable=False, differentiable=False, fused=fused, decoupled_weight_decay=True,
                        master_weights=master_weights, stochastic_rounding=stochastic_rounding)
        super().__init__(params, defaults)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in (("amsgrad", False), ("maximize", False), ("master_weights", False), ("stochastic_rounding", False)):
                group.setdefault(k, v)

    @staticmethod
    def _process_value_according_to_param_policy(param, value, param_id, param_groups, key=None):  # type: ignore[override]
        """Loading a state dict: moments of 16-bit parameters stay (or become) float32, the master
        copy float32; everything else as torch does."""
        if key == "step":
            return value
        if param.is_floating_point() and isinstance(value, Tensor) and value.is_floating_point():
            want = torch.float32 if key == "master_param" else _state_dtype(param.dtype)
            return value.to(dtype=want, device=param.device)
        return value.to(device=param.device) if isinstance(value, Tensor) else value

    def _init_state(self, p: Tensor, group: Dict[str, Any]) -> Dict[str, Any]:
        state = self.state[p]
        sd = _state_dtype(p.dtype)
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=sd, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=sd, memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=sd, memory_format=torch.preserve_format)
        if group["master_weights"] and p.dtype in _HALF and "master_param" not in state:
            state["master_param"] = p.detach().float().clone()
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):  # e.g. bfloat16 moments from torch's AdamW
            if k in state and state[k].dtype != sd:
                state[k] = state[k].to(sd)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step (``closure`` re-evaluates the loss, as in torch)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        layouts = self.__dict__.setdefault("_layouts", {})
        for group in self.param_groups:
            flags = (group["amsgrad"], group["master_weights"])
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            for p in live:
                if p.grad.is_sparse:
                    raise RuntimeError("MetalAdamW does not support sparse gradients")
            ids = list(map(id, live))
            lay = layouts.get((id(group), flags))
            if lay is None or lay.ids != ids:
                lay = self._layout(live, ids, group)
                if len(layouts) > 64:
                    layouts.clear()
                layouts[(id(group), flags)] = lay
            steps = [st["step"] for st in lay.states]
            if all(map(operator.is_, steps, lay.steps)):
                values = _native.add_to_f32_scalars(lay.step_ptrs, 1.0) if lay.step_ptrs is not None else _bump_steps(steps)
            else:
                values = _bump_steps(steps)
            if values.count(values[0]) == len(values):
                parts = [(ps, sts, dev, values[0]) for ps, sts, dev in lay.buckets]
            else:  # parameters at different step counts (added to the group at different times)
                keys = [(p.device, p.dtype, v) for p, v in zip(live, values)]
                parts = [(ps, sts, dev, k[2]) for (ps, sts, dev), k in _buckets(live, lay.states, keys)]
            for ps, sts, device, step in parts:
                backend = has_backend(device)
                native = [(p, st) for p, st in zip(ps, sts) if backend and p.is_contiguous()]
                other = [p for p in ps if not (backend and p.is_contiguous())]
                if native:
                    self._native_step([p for p, _ in native], [st for _, st in native], group, step)
                if other:
                    if not backend:
                        warn_fallback("MetalAdamW.step", device)
                    for p in other:
                        self._torch_step(p, group, step)
        return loss

    def load_state_dict(self, state_dict) -> None:
        self.__dict__.pop("_plans", None)  # cached plans of the replaced states
        self.__dict__.pop("_layouts", None)  # state dicts and step counters of the replaced states
        super().load_state_dict(state_dict)

    def _layout(self, live: List[Tensor], ids: List[int], group: Dict[str, Any]) -> "_Layout":
        """What a group's step needs that stays the same while the same parameters have gradients:
        their state dicts (set up here, and checked: dtypes, missing keys), their step counters
        (and whether one native call may bump them all), and the parameters by device and dtype."""
        states = []
        for p in live:
            if torch.is_complex(p):
                raise NotImplementedError("MetalAdamW: complex parameters are not supported")
            states.append(self._init_state(p, group))
        steps = [st["step"] for st in states]
        ptrs = [t.data_ptr() for t in steps] if _plain_counters(steps) else None
        buckets = [b for b, _ in _buckets(live, states, [(p.device, p.dtype) for p in live])]
        return _Layout(ids, states, steps, ptrs, buckets)

    def _fixed_plan(self, ps: List[Tensor], sts: List[Dict[str, Any]], group: Dict[str, Any], master: bool, grads: List[Tensor]):
        """The native plan of this list of parameters with their states, cached per list; valid
        while every tensor is the same object at the same address (state tensors are replaced only
        by load_state_dict, which drops the cache). Made (and validated) with the current
        gradients; later steps pass only the gradients' addresses."""
        plans = self.__dict__.setdefault("_plans", {})
        key = (tuple(map(id, ps)), bool(group["amsgrad"]), master)
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else []) + (["master_param"] if master else [])
        tensors = [[st[k] for st in sts] for k in names]
        ptrs = [p.data_ptr() for p in ps]
        hit = plans.get(key)
        if hit is not None and hit[0] == ptrs and all(all(map(operator.is_, new, old)) for new, old in zip(tensors, hit[1])):
            return hit[2]
        descs = [[desc(t, k) for t in ts] for k, ts in zip(names, tensors)]
        it = iter(descs[2:])
        vmax = next(it) if group["amsgrad"] else None
        masters = next(it) if master else None
        plan = _native.adamw_plan([desc(p, "param") for p in ps], [desc(g, "grad") for g in grads], descs[0], descs[1],
                                  vmax, masters)
        if len(plans) > 64:
            plans.clear()
        plans[key] = (ptrs, tensors, plan)
        return plan

    def _native_step(self, ps: List[Tensor], sts: List[Dict[str, Any]], group: Dict[str, Any], step: float) -> None:
        beta1, beta2 = group["betas"]
        master = group["master_weights"] and ps[0].dtype in _HALF
        sr = group["stochastic_rounding"] and ps[0].dtype == torch.bfloat16 and not master
        seed = int(torch.randint(0, 2**62, (1,))) if sr else None
        grads = []
        for p in ps:
            g = p.grad
            # torch keeps .grad at its parameter's shape, dtype and device; checked anyway, since
            # the plan trusts the addresses it is given.
            if g.dtype != p.dtype or g.shape != p.shape or g.get_device() != p.get_device():
                raise ValueError(f"grad: expected the shape, dtype and device of its parameter {tuple(p.shape)}, "
                                 f"{p.dtype}, {p.device}; got {tuple(g.shape)}, {g.dtype}, {g.device}")
            grads.append(g if g.is_contiguous() else g.contiguous())
        plan = self._fixed_plan(ps, sts, group, master, grads)
        plan.step([g.data_ptr() for g in grads], float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                  float(group["weight_decay"]), step, bool(group["maximize"]), seed, stream_of(ps[0]))

    def _torch_step(self, p: Tensor, group: Dict[str, Any], step: float) -> None:
        """The same update in PyTorch ops (non-contiguous parameters, devices without a backend)."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        sd = _state_dtype(p.dtype)
        g = p.grad.to(sd)
        if group["maximize"]:
            g = -g
        master = state.get("master_param") if group["master_weights"] else None
        x = master if master is not None else p.detach().to(sd)
        x.mul_(1 - group["lr"] * group["weight_decay"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        vhat = v
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            vhat = state["max_exp_avg_sq"]
        denom = (vhat.sqrt() / ((1 - beta2**step) ** 0.5)).add_(group["eps"])
        x.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**step))
        if x is not p:
            p.copy_(x)
