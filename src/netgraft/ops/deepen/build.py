"""Apply step of `deepen`: build the module to insert for each planned form (identity layer, residual insert, block).

Every builder returns the new module and the tensors it set for exactness (identity weights, zeroed layers), so the
optional symmetry-breaking noise knows where to go, plus the BatchNorms to calibrate on data.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.catalogue import ACTIVATION_MODULES
from ...core.graph import Value
from ...core.layers import kind_of
from ...errors import UnsupportedModelError
from .inserts import GatedBlock, ResidualInsert
from .plan import Activation, IdentityForm, Neighbourhood, ZeroPlan, deepen_norm

# The layers of a residual insert's branch, by the number of spatial axes (0: features last)
_BRANCH_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@dataclass
class Built:
    module: nn.Module
    structural: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (weight set for exactness, fan-in)
    calibrate: list[tuple[nn.Module, bool]] = field(default_factory=list)  # (BatchNorm, must stay an identity)
    gated: bool = False
    note: str = ""


def activation_module(act: Activation | None) -> nn.Module:
    """A fresh module computing `act` (ReLU when the neighbourhood has none)."""
    if act is None:
        return nn.ReLU()
    if act.name == "hardtanh":
        return nn.Hardtanh(act.low, act.high)
    if act.name == "gelu":
        return nn.GELU(approximate=act.approximate)
    if act.name == "leaky_relu":
        return nn.LeakyReLU(act.slope)
    return ACTIVATION_MODULES[act.name]()


def make_identity_(norm: nn.Module) -> None:
    """Make an inserted norm with running statistics (a BatchNorm) an identity in eval mode (its kind knows how)."""
    kind_of(norm).identity_from_statistics_(norm)


def identity_layer(form: IdentityForm, value: Value, hood: Neighbourhood, where: str, model: nn.Module) -> Built:
    """The Net2Net identity layer: a layer like the one that feeds the point, computing the identity (its kind builds
    it: identity matrix, or Dirac kernel per group), optional BatchNorm, then phi."""
    layer, shape = hood.layer, value.shape
    alternatives = "use kind='residual' (exact after any layer) or kind='auto'"
    if layer is None:
        raise UnsupportedModelError(f"deepen: no Linear or Conv feeds {where}, so there is no layer to make an "
                                    f"identity copy of; {alternatives}")
    problem = layer.kind.identity_problem(layer, shape, where)
    if problem is not None:
        raise UnsupportedModelError(f"deepen: {problem}; {alternatives}")
    norm_kind = deepen_norm(hood.unit_norm) if hood.unit_norm is not None else None
    use_bn = norm_kind is not None and norm_kind.statistics_from_data
    if layer.ndim == 0:  # features last
        channels, nd = shape[-1], 1
        use_bn = use_bn and len(shape) == 2  # a BatchNorm1d over (N, C) only
    else:
        channels, nd = shape[1], layer.ndim
    new = layer.kind.identity(layer, channels)
    fan_in = new.weight[0].numel()
    parts: list[nn.Module] = [new]
    built = Built(nn.Sequential(), [(new.weight, fan_in)])
    if use_bn:
        bn = norm_kind.like(hood.unit_norm, channels, nd, model)
        parts.append(bn)
        built.calibrate.append((bn, True))
    act = activation_module(form.activation)
    parts = [act, *parts] if form.act_first else [*parts, act]
    built.module = nn.Sequential(*parts)
    built.note = f"identity {type(new).__name__}{' + BatchNorm' if use_bn else ''} + {type(act).__name__}"
    return built


def residual_insert(value: Value, hood: Neighbourhood, where: str, model: nn.Module) -> Built:
    """x + branch(x) with the branch's last layer zeroed: exact after any layer and activation."""

    shape = value.shape
    last = True if len(shape) == 2 else hood.features_last  # (N, C) holds features last whatever came before
    if last is None or len(shape) < 2:
        raise UnsupportedModelError(f"deepen: cannot tell which axis of {where} (shape {shape}) holds the features: "
                                    "no Linear, Conv or norm is near it")
    norm = hood.norm
    norm_kind = deepen_norm(norm) if norm is not None else None
    act = activation_module(hood.activation)
    if last:
        channels = shape[-1]
        first, zero = nn.Linear(channels, channels), nn.Linear(channels, channels)
        parts: list[nn.Module] = [first, act, zero]
        built = Built(nn.Module())
        if norm_kind is not None and norm_kind.features_last:  # LayerNorm / RMSNorm over the features: pre-norm
            pre_norm = norm_kind.like(norm, channels, 1, model)
            if pre_norm is not None:
                parts.insert(0, pre_norm)
        elif norm_kind is not None and norm_kind.statistics_from_data and len(shape) == 2:  # BatchNorm1d over (N, C)
            bn = norm_kind.like(norm, channels, 1, model)
            parts.insert(1, bn)
            built.calibrate.append((bn, False))
    else:
        nd, channels = len(shape) - 2, shape[1]
        if nd not in _BRANCH_CONV:
            raise UnsupportedModelError(f"deepen: {where} has shape {shape}; residual inserts support 1-3 spatial dims")
        first, zero = (_BRANCH_CONV[nd](channels, channels, 3, padding=1) for _ in range(2))
        parts = [first, act, zero]
        built = Built(nn.Module())
        if norm_kind is not None and norm_kind.features_last is False:  # BatchNorm / GroupNorm over the channels
            channel_norm = norm_kind.like(norm, channels, nd, model)
            parts.insert(1, channel_norm)
            if norm_kind.statistics_from_data:
                built.calibrate.append((channel_norm, False))
    with torch.no_grad():
        zero.weight.zero_()
        zero.bias.zero_()
    built.module = ResidualInsert(nn.Sequential(*parts))
    built.structural.append((zero.weight, zero.weight[0].numel()))
    built.note = f"x + branch(x), branch {' -> '.join(type(p).__name__ for p in parts)} (last layer zero)"
    return built


def fresh_(block: nn.Module) -> None:
    """Re-initialise a copied block as a new one: each submodule's own reset_parameters(), and Kaiming-uniform for
    matrices of modules that have none (1-D gains and biases keep their values)."""
    reset: set[int] = set()
    for m in block.modules():
        fn = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
        if callable(fn):
            fn()
            reset.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for m in block.modules():
            for p in m.parameters(recurse=False):
                if id(p) not in reset and p.dim() >= 2:
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))


def block_insert(template: nn.Module, template_path: str, plan: ZeroPlan, fresh: bool) -> Built:
    """A copy of `template` (re-initialised if `fresh`) whose residual branches end in zeros, or gated if none."""

    block = copy.deepcopy(template)
    if fresh:
        fresh_(block)
    # a fresh block's BatchNorms were reset: they take statistics from data when it is given
    calibrate = [(m, False) for m in block.modules() if fresh and (kind := kind_of(m)) is not None
                 and kind.statistics_from_data and m.track_running_stats]
    if not plan.ok:
        return Built(GatedBlock(block), calibrate=calibrate, gated=True, note=f"gated at 0 ({plan.reason})")
    built = Built(block, calibrate=calibrate)
    named = dict(block.named_parameters(remove_duplicate=False)) | dict(block.named_buffers())
    zeroed = []
    with torch.no_grad():
        for full in sorted(plan.params):
            rel = full[len(template_path) + 1:] if template_path else full
            t = named[rel]
            t.zero_()
            zeroed.append(rel)
            if t.dim() >= 2:
                built.structural.append((t, t[0].numel()))
    built.note = f"{'new' if fresh else 'copied'} {type(block).__name__}, zeroed {', '.join(zeroed)}"
    return built
