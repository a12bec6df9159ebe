"""Upcycling any model: the feed-forward modules named by a pattern (``"layers.*.mlp"``) become netgraft's `MoE`.

A dense module becomes experts built from copies of it; an `MoE` already there gets more experts. Segments
(granularity, split="segments") and the copies' split down-projections need to know which axis holds the module's
intermediate units and which weights sum over it: the house's coupling analysis answers that on the module alone
(`netgraft.core.coupling.couple`, traced on the inputs the module saw), and a segment is built by the shared apply
kernel (`build_model`) with an index map that keeps one slice of those units, its fan-in x per - so attributes
(``out_features``...) follow as in `widen`.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.apply import build_model
from ...core.clone import clone_module
from ...core.coupling import Group, couple
from ...core.experts import ExpertPlan, copies_down, grouped_router, perturb_, plan_experts
from ...core.plan import IndexMap, SpaceMaps
from ...core.space import total_size
from ...core.state import call_model, run_mode
from ...errors import InvalidRequestError, UnknownNameError, UnsupportedModelError
from ...hf.tensors import tensor_generator
from .moe import MoE


def match_modules(model: nn.Module, patterns: str | list[str]) -> list[str]:
    """Paths of the modules matching any pattern (fnmatch: ``layers.*.mlp``, ``blocks.[02].ffn``), outermost only."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    names = [n for n, _ in model.named_modules() if n]
    found = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    found = [n for n in found if not any(n.startswith(f"{o}.") for o in found if o != n)]
    if not found:
        close = difflib.get_close_matches(patterns[0], names, n=5, cutoff=0.4)
        raise UnknownNameError(f"upcycle: no module matches {patterns}; modules such as {close or names[:5]}")
    return found


def record_inputs(model: nn.Module, paths: list[str], example_inputs: Any, tokens: int = 64) -> dict[str, torch.Tensor]:
    """The first positional input each module receives on `example_inputs`, flattened to (tokens, hidden)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        def hook(module: nn.Module, args: tuple, path: str = path) -> None:
            if path not in seen and args and isinstance(args[0], torch.Tensor):
                seen[path] = args[0].detach().reshape(-1, args[0].shape[-1])[:tokens].clone()
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        with run_mode(model, False), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [p for p in paths if p not in seen]
    if missing:
        raise UnsupportedModelError(f"upcycle: module(s) {missing[:4]} did not run on example_inputs with a tensor "
                                    f"input; name modules the forward calls with the hidden states")
    return seen


@dataclass
class _Units:
    """A module's intermediate units: its coupling, the group, and the tensors summing over it (fan-in)."""

    coupling: Any
    group: Group

    @property
    def fan_in(self) -> list[tuple[str, int]]:
        return [(m.tensor, m.axis) for m in self.group.members if "fanin" in m.roles]


def _units(module: nn.Module, x: torch.Tensor, where: str) -> _Units:
    c = couple(module, (x,))
    inner = [g for g in c.groups if g.growable and not g.uniform]
    plain = [g for g in inner if all(not m.layout for m in g.members) and any("fanin" in m.roles for m in g.members)]
    if len(plain) != 1:
        found = ", ".join(f"'{g.name or g.members[0].tensor}' ({g.size})" for g in inner) or "none"
        raise UnsupportedModelError(
            f"upcycle: '{where}' ({type(module).__name__}) needs exactly one axis of intermediate units read by a "
            f"weight that sums over it (a Linear -> activation -> Linear MLP); found {found}. Use granularity=1 "
            f"(dense -> copies), or wrap the feed-forward in a module of that form")
    return _Units(c, plain[0])


def _segment(units: _Units, index: int, count: int) -> nn.Module:
    """Slice `index` of `count` of the module's units, the fan-in x count (exact: see experts.py)."""
    g = units.group
    n = g.size // count
    keep = IndexMap(np.arange(index * n, (index + 1) * n, dtype=np.int64), np.full(n, float(count)))
    return build_model(units.coupling, SpaceMaps({g.leaf.id: keep}), lambda s: total_size(s, {g.leaf.id: n}))


def _router(hidden: int, groups: int, per: int, like: torch.Tensor, std: float, gen: torch.Generator,
            old: nn.Linear | None = None) -> nn.Linear:
    """A bias-free router with equal rows inside each group of `per` (new random rows, or the old router's)."""
    rows = (old.weight.detach() if old is not None else
            torch.randn(groups, hidden, generator=gen, dtype=torch.float64) * std)  # (groups, hidden)
    router = nn.Linear(hidden, groups * per, bias=old is not None and old.bias is not None)
    with torch.no_grad():
        router.weight = nn.Parameter(grouped_router(rows, per).to(like))
        if router.bias is not None:
            router.bias = nn.Parameter(grouped_router(old.bias.detach(), per).to(like))
    return router.to(device=like.device, dtype=like.dtype)


def _first_param(module: nn.Module, where: str) -> torch.Tensor:
    p = next(iter(module.parameters()), None)
    if p is None:
        raise UnsupportedModelError(f"upcycle: '{where}' ({type(module).__name__}) has no parameters to copy")
    return p


def dense_to_moe(ffn: nn.Module, plan: ExpertPlan, x: torch.Tensor, where: str, *, std: float, seed: int,
                 drop: float = 0.0, expert_noise: float = 0.0) -> MoE:
    """A dense module -> MoE: copies (granularity 1) or groups of segments, a fresh router."""
    like = _first_param(ffn, where)
    plan.check_dtype(like.dtype, where)
    if plan.per > 1:
        units = _units(ffn, x, where)
        plan.check_units(units.group.size, where)
        segments = [_segment(units, s, plan.per) for s in range(plan.per)]
    else:
        segments = [ffn]
    experts = [clone_module(segments[e % plan.per]) for e in range(plan.new)]
    gen = tensor_generator(seed, f"{where}.router")
    moe = MoE(_router(x.shape[-1], plan.groups, plan.per, like, std, gen), experts, plan.top_k)
    _perturb(moe, x, where, seed, drop, expert_noise)
    return moe


def grow_moe(moe: MoE, plan: ExpertPlan, x: torch.Tensor, where: str, *, seed: int, noise: float) -> MoE:
    """An MoE -> m times the experts (each a group of m copies or segments), the router's rows repeated."""
    like = _first_param(moe.router, where)
    plan.check_dtype(_first_param(moe.experts[0], where).dtype, where)
    m = plan.per
    experts: list[nn.Module] = []
    for j, expert in enumerate(moe.experts):
        units = _units(expert, x, f"{where}.experts.{j}")
        plan.check_units(units.group.size, f"{where}.experts.{j}")
        if plan.split == "segments":
            experts += [_segment(units, s, m) for s in range(m)]
            continue
        copies = [clone_module(expert) for _ in range(m)]
        params = dict(expert.named_parameters())
        for name, _axis in units.fan_in:  # copy c: m * share_c of the weight, shares summing to one per element
            gen = tensor_generator(seed, f"{where}.experts.{j}.{name}")
            shared = copies_down(params[name].detach()[None], m, noise, gen, name)  # (m, *shape)
            for c, copy in enumerate(copies):
                owner, _, leaf = name.rpartition(".")
                module = copy.get_submodule(owner) if owner else copy
                setattr(module, leaf, nn.Parameter(shared[c].clone(), requires_grad=params[name].requires_grad))
        experts += copies
    router = _router(x.shape[-1], plan.groups, m, like, 0.0, torch.Generator(), old=moe.router)
    return MoE(router, experts, plan.top_k)


def _perturb(moe: MoE, x: torch.Tensor, where: str, seed: int, drop: float, expert_noise: float) -> None:
    """The labelled non-exact variants on a generic MoE: Drop-Upcycling and expert noise (see experts.py)."""
    if not drop and not expert_noise:
        return
    for j, expert in enumerate(moe.experts):
        gen = tensor_generator(seed, f"{where}.experts.{j}.perturb")
        if expert_noise:
            for p in expert.parameters():
                perturb_(p.data[None], expert_noise, gen)
        if drop:
            units = _units(expert, x, f"{where}.experts.{j}")
            producers = [(m.tensor, m.axis) for m in units.group.members if "fanin" not in m.roles]
            n = units.group.size
            chosen = torch.randperm(n, generator=gen)[: int(round(drop * n))]
            params = dict(expert.named_parameters())
            with torch.no_grad():
                for name, axis in [*producers, *units.fan_in]:
                    t = params[name].data
                    std, mean = float(t.double().std()) if t.numel() > 1 else 0.02, float(t.double().mean())
                    shape = list(t.shape)
                    shape[axis] = len(chosen)
                    fresh = torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean
                    t.index_copy_(axis, chosen.to(t.device), fresh.to(t))


def upcycle_modules(model: nn.Module, modules: str | list[str], *, num_experts: int, top_k: int | None,
                    granularity: int, split: str | None, exact: bool, example_inputs: Any, seed: int,
                    noise: float | None, router_std: float, drop: float,
                    expert_noise: float) -> tuple[nn.Module, list[tuple[str, str]]]:
    """The generic front end: (the upcycled copy, [(module path, what it became)])."""
    if example_inputs is None:
        raise InvalidRequestError("upcycle: a model that is not a Hugging Face family needs example_inputs (to find "
                                  "the modules' hidden size and to certify the result)")
    paths = match_modules(model, modules)
    seen = record_inputs(model, paths, example_inputs)
    result = clone_module(model)
    changes = []
    for path in paths:
        source = model.get_submodule(path)
        if isinstance(source, MoE):
            plan = plan_experts(num_experts, top_k, granularity, old=source.num_experts, old_top_k=source.top_k,
                                split=split, exact=exact)
            dtype = _first_param(source.experts[0], path).dtype
            share_noise = (0.5 if dtype in (torch.float32, torch.float64) else 0.0) if noise is None else noise
            new = grow_moe(source, plan, seen[path], path, seed=seed, noise=share_noise)
            _perturb(new, seen[path], path, seed, drop, expert_noise)
        else:
            plan = plan_experts(num_experts, top_k, granularity, split=split, exact=exact)
            new = dense_to_moe(source, plan, seen[path], path, std=router_std, seed=seed, drop=drop,
                               expert_noise=expert_noise)
        owner, _, leaf = path.rpartition(".")
        setattr(result.get_submodule(owner) if owner else result, leaf, new)
        changes.append((path, plan.describe()))
    return result, changes
