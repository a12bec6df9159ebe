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

from ...core.graph import OpRecord, Value
from ...errors import UnsupportedModelError
from .inserts import GatedBlock, ResidualInsert
from .plan import Activation, IdentityForm, Neighbourhood, ZeroPlan

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@dataclass
class Built:
    module: nn.Module
    structural: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (weight set for exactness, fan-in)
    calibrate: list[tuple[nn.Module, bool]] = field(default_factory=list)  # (BatchNorm, must stay an identity)
    gated: bool = False
    note: str = ""


def activation_module(act: Activation | None) -> nn.Module:
    """A fresh module computing `act` (ReLU when the neighbourhood has none)."""
    if act is None or act.name == "relu":
        return nn.ReLU()
    if act.name in ("relu6", "hardtanh"):
        return nn.ReLU6() if act.name == "relu6" else nn.Hardtanh(act.low, act.high)
    if act.name == "gelu":
        return nn.GELU(approximate=act.approximate)
    if act.name == "leaky_relu":
        return nn.LeakyReLU(act.slope)
    simple = {"silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "mish": nn.Mish,
              "hardswish": nn.Hardswish, "softplus": nn.Softplus, "selu": nn.SELU, "celu": nn.CELU}
    return simple[act.name]()


def _bn_from(op: OpRecord | None, channels: int, nd: int, model: nn.Module) -> nn.Module:
    """A BatchNorm like the one `op` ran: eps and momentum from its module (the traced call, made in eval mode,
    shows momentum 0 for `momentum=None`), else from the op's arguments."""
    owner = model.get_submodule(op.module) if op is not None else None
    if isinstance(owner, nn.modules.batchnorm._BatchNorm):
        return _BN[max(nd, 1)](channels, eps=owner.eps, momentum=owner.momentum)
    eps = float(op.arg(7, "eps", 1e-5)) if op is not None else 1e-5
    return _BN[max(nd, 1)](channels, eps=eps)


@torch.no_grad()
def make_identity_bn_(bn: nn.Module) -> None:
    """gamma = sqrt(running_var + eps), beta = running_mean: BatchNorm is then an identity in eval mode. Done in the
    model's final dtype (a float32 sqrt(1 + eps) cast to float64 would be off by 1e-8)."""
    bn.weight.copy_((bn.running_var + bn.eps).sqrt())
    bn.bias.copy_(bn.running_mean)


def identity_layer(form: IdentityForm, value: Value, hood: Neighbourhood, where: str, model: nn.Module) -> Built:
    """The Net2Net identity layer: identity matrix or per-group Dirac kernel, optional BatchNorm, then phi."""
    layer, shape = hood.layer, value.shape
    alternatives = "use kind='residual' (exact after any layer) or kind='auto'"
    if layer is None:
        raise UnsupportedModelError(f"deepen: no Linear or Conv feeds {where}, so there is no layer to make an "
                                    f"identity copy of; {alternatives}")
    use_bn = hood.unit_norm is not None and hood.unit_norm.name == "batch_norm"
    if layer.ndim == 0:
        channels = shape[-1]
        new: nn.Module = nn.Linear(channels, channels)
        with torch.no_grad():
            new.weight.copy_(torch.eye(channels))
            new.bias.zero_()
        use_bn = use_bn and len(shape) == 2
        nd = 1
    else:
        nd = layer.ndim
        if len(shape) != nd + 2:
            raise UnsupportedModelError(f"deepen: {where} has shape {shape}, not the (N, C, ...) of the Conv{nd}d "
                                        f"'{layer.op.module}' that feeds it; {alternatives}")
        if any(k % 2 == 0 for k in layer.kernel):
            raise UnsupportedModelError(f"deepen: the Conv{nd}d '{layer.op.module}' before {where} has kernel "
                                        f"{layer.kernel}; an even kernel has no centre for the Dirac identity; "
                                        f"{alternatives}")
        if any(s != 1 for s in layer.stride):
            raise UnsupportedModelError(f"deepen: the Conv{nd}d '{layer.op.module}' before {where} has stride "
                                        f"{layer.stride}; a layer like it changes the spatial size, so it cannot be "
                                        f"an identity; {alternatives}, or deepen after a stride-1 conv")
        channels = shape[1]
        groups = layer.groups if channels % layer.groups == 0 else 1
        padding = tuple(d * (k - 1) // 2 for d, k in zip(layer.dilation, layer.kernel, strict=True))
        new = _CONV[nd](channels, channels, layer.kernel, padding=padding, dilation=layer.dilation, groups=groups)
        with torch.no_grad():
            new.weight.zero_()
            new.bias.zero_()
            per_group = channels // groups
            centre = tuple(k // 2 for k in layer.kernel)
            for o in range(channels):  # output o reads input o: index o % per_group inside its group
                new.weight[(o, o % per_group, *centre)] = 1.0
    fan_in = new.weight[0].numel()
    parts: list[nn.Module] = [new]
    built = Built(nn.Sequential(), [(new.weight, fan_in)])
    if use_bn:
        bn = _bn_from(hood.unit_norm, channels, nd, model)
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
    act = activation_module(hood.activation)
    if last:
        channels = shape[-1]
        first, zero = nn.Linear(channels, channels), nn.Linear(channels, channels)
        parts: list[nn.Module] = [first, act, zero]
        pre_norm: nn.Module | None = None
        if norm is not None and norm.name == "layer_norm" and tuple(norm.arg(1, "normalized_shape", ())) == (channels,):
            pre_norm = nn.LayerNorm(channels, eps=float(norm.arg(4, "eps", 1e-5)))
        elif norm is not None and norm.name == "rms_norm" and tuple(norm.arg(1, "normalized_shape", ())) == (channels,):
            pre_norm = nn.RMSNorm(channels, eps=norm.arg(3, "eps", None))
        if pre_norm is not None:
            parts.insert(0, pre_norm)
        built = Built(nn.Module())
        if norm is not None and norm.name == "batch_norm" and len(shape) == 2:
            bn = _bn_from(norm, channels, 1, model)
            parts.insert(1, bn)
            built.calibrate.append((bn, False))
    else:
        nd, channels = len(shape) - 2, shape[1]
        if nd not in _CONV:
            raise UnsupportedModelError(f"deepen: {where} has shape {shape}; residual inserts support 1-3 spatial dims")
        first, zero = (_CONV[nd](channels, channels, 3, padding=1) for _ in range(2))
        parts = [first, act, zero]
        built = Built(nn.Module())
        if norm is not None and norm.name == "batch_norm":
            bn = _bn_from(norm, channels, nd, model)
            parts.insert(1, bn)
            built.calibrate.append((bn, False))
        elif norm is not None and norm.name == "group_norm":
            groups = int(norm.arg(1, "num_groups", 1))
            parts.insert(1, nn.GroupNorm(groups if channels % groups == 0 else 1, channels))
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
    calibrate = [(m, False) for m in block.modules() if fresh and isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats]
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
