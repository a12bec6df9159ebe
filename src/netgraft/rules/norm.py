"""Normalisation layers: coupling rules and kinds for BatchNorm/InstanceNorm (per-channel statistics), LayerNorm/
RMSNorm (statistics over the normalised axes: uniform replication, or zero padding where `netgraft.core.padding`
proves it exact) and GroupNorm (grows by whole groups)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.graph import OpRecord, Value
from ..core.layers import LayerKind, ShapeOf, register_kind
from ..core.padding import NORM_REASONS
from ..core.registry import RuleContext, register_op
from ..core.space import Space
from .owner import _owner


@register_op(F.batch_norm, F.instance_norm, names=["batch_norm", "instance_norm"])
def _batch_norm(ctx: RuleContext) -> None:
    # x: (N, C, *S) or (C, *S) -> y: same;  running_mean, running_var, weight, bias: (C,)
    x, out = ctx.value(ctx.arg(0, "input")), ctx.outputs[0]
    ctx.same_shape(x, out)
    c = x.dim(1) if len(x.shape) > 1 else x.dim(0)
    for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        ctx.per_unit(ctx.value(ctx.arg(i, n)), 0, c)
    stats = [ctx.value(ctx.arg(i, n)) for i, n in ((1, "running_mean"), (3, "weight"))]
    if (owner := _owner(ctx, nn.modules.batchnorm._NormBase, *stats)) is not None:
        ctx.set_attr("num_features", c, module=owner)


def _normalized(ctx: RuleContext, x: Value, k: int, what: str) -> list[Space]:
    """The normalised axes: uniform replication keeps their statistics; zero padding can too, where
    `netgraft.core.padding` proves it (it recognises this constraint by its reason, `NORM_REASONS`)."""
    spaces = [x.dims[len(x.shape) - k + i] for i in range(k)]
    for s in spaces:
        if s.size > 1:
            ctx.uniform(s, NORM_REASONS[what])
    return spaces


@register_op(F.layer_norm, F.rms_norm, names=["layer_norm", "rms_norm"])
def _layer_norm(ctx: RuleContext) -> None:
    # x: (*, *D) -> y: same, statistics over the last len(D) axes;  weight, bias: D
    x, out = ctx.value(ctx.arg(0, "input")), ctx.outputs[0]
    ctx.same_shape(x, out)
    shape = ctx.arg(1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    is_ln = ctx.record.name == "layer_norm"
    spaces = _normalized(ctx, x, k, "LayerNorm" if is_ln else "RMSNorm")
    w = ctx.value(ctx.arg(2, "weight"))
    b = ctx.value(ctx.arg(3, "bias")) if is_ln else None
    for i, s in enumerate(spaces):
        ctx.per_unit(w, i, s)
        ctx.per_unit(b, i, s)
    if (owner := _owner(ctx, (nn.LayerNorm, nn.RMSNorm), w)) is not None:
        ctx.set_attr("normalized_shape", tuple(spaces), module=owner)


@register_op(F.group_norm, names=["group_norm"])
def _group_norm(ctx: RuleContext) -> None:
    # x: (N, C, *S) -> y: same, statistics per sample over groups of C/G channels;  weight, bias: (C,)
    x, out = ctx.value(ctx.arg(0, "input")), ctx.outputs[0]
    ctx.same_shape(x, out)
    groups = ctx.arg(1, "num_groups")
    c = x.dim(1)
    if groups == 1:
        ctx.uniform(c, "GroupNorm(1 group) normalises over this axis")
        g = None
    else:
        g, per = ctx.split(c, [groups, c.size // groups], f"GroupNorm({groups} groups)")
        ctx.fix(per, f"GroupNorm normalises groups of {c.size // groups} channels: it grows by whole groups")
    ctx.per_unit(ctx.value(ctx.arg(2, "weight")), 0, c)
    ctx.per_unit(ctx.value(ctx.arg(3, "bias")), 0, c)
    if (owner := _owner(ctx, nn.GroupNorm, ctx.value(ctx.arg(2, "weight")))) is not None:
        ctx.set_attr("num_channels", c, module=owner)
        if g is not None:
            ctx.set_attr("num_groups", g, module=owner)


class _NormKind(LayerKind):
    """A norm: a new unit it passes through keeps gain 1 (its value stays 0 and its gradient passes)."""

    def identity_unit(self, module: nn.Module, attr: str, old: torch.Tensor, axis: int,
                      bn_weight: float | None) -> float | None:
        return 1.0 if attr == "weight" else None


@register_kind(nn.modules.batchnorm._NormBase)
class PerChannelNormKind(_NormKind):
    """Per-channel statistics (``_NormBase``: BatchNorm, InstanceNorm and custom subclasses): channels first."""

    features_last = False

    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        w = shape_of(module, "weight")
        return [("num_features", module.num_features, w[0])] if w else []


@register_kind(nn.modules.instancenorm._InstanceNorm)
class InstanceNormKind(PerChannelNormKind):
    """``nn.InstanceNorm*``: statistics of each sample alone. deepen does not copy one into what it inserts; inject
    leaves it to the generic matching of modules with their own parameters."""

    ops = ("instance_norm",)


@register_kind(nn.modules.batchnorm._BatchNorm)
class BatchNormKind(PerChannelNormKind):
    """``nn.BatchNorm*``: running statistics, measured on data. A new one becomes an identity in eval mode with
    gamma = sqrt(running_var + eps), beta = running_mean (`identity_from_statistics_`)."""

    ops = ("batch_norm",)
    deepen_norm = True
    statistics_from_data = True
    zeroing = {"batch_norm": (3, "weight", 4, "bias")}

    def like(self, op: OpRecord, channels: int, ndim: int, model: nn.Module) -> nn.Module:
        """A BatchNorm like the one `op` ran: eps and momentum from its module (the traced call, made in eval mode,
        shows momentum 0 for `momentum=None`), else eps from the op's arguments."""
        cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[max(ndim, 1) - 1]
        owner = model.get_submodule(op.module)
        if isinstance(owner, nn.modules.batchnorm._BatchNorm):
            return cls(channels, eps=owner.eps, momentum=owner.momentum)
        return cls(channels, eps=float(op.arg(7, "eps", 1e-5)))

    @torch.no_grad()
    def identity_from_statistics_(self, module: nn.Module) -> None:
        """Done in the model's final dtype (a float32 sqrt(1 + eps) cast to float64 would be off by 1e-8)."""
        module.weight.copy_((module.running_var + module.eps).sqrt())
        module.bias.copy_(module.running_mean)

    def identity_unit(self, module: nn.Module, attr: str, old: torch.Tensor, axis: int,
                      bn_weight: float | None) -> float | None:
        if attr == "weight":
            # A channel that is constantly 0 has batch variance 0: train-mode BN scales its gradient by
            # gamma/sqrt(eps) (x316 for eps = 1e-5). gamma = 1 (default: an identity unit in eval mode) lets the unit
            # reach full scale after its first step (measured: much lower loss with Adam, which normalises the step);
            # gamma = sqrt(eps) keeps the first gradient unamplified (safer with plain SGD) but leaves the unit tiny
            # until gamma learns.
            return math.sqrt(module.eps) if bn_weight is None else float(bn_weight)
        return None

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "batchnorm", (module.num_features,)


def _weight_shape_or_one(module: nn.Module) -> tuple[int, ...]:
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else (1,)


@register_kind(nn.LayerNorm, nn.RMSNorm)
class LayerNormKind(_NormKind):
    """``nn.LayerNorm`` and ``nn.RMSNorm``: statistics over the last axes, features last."""

    ops = ("layer_norm", "rms_norm")
    features_last = True
    deepen_norm = True
    zeroing = {"layer_norm": (2, "weight", 3, "bias"), "rms_norm": (2, "weight", 0, "")}

    def like(self, op: OpRecord, channels: int, ndim: int, model: nn.Module) -> nn.Module | None:
        if tuple(op.arg(1, "normalized_shape", ())) != (channels,):
            return None  # it normalises more axes than the features
        if op.name == "rms_norm":
            return nn.RMSNorm(channels, eps=op.arg(3, "eps", None))
        return nn.LayerNorm(channels, eps=float(op.arg(4, "eps", 1e-5)))

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "layernorm", _weight_shape_or_one(module)


@register_kind(class_names=("*LayerNorm", "*RMSNorm"))
class NamedLayerNormKind(LayerKind):
    """A module netgraft knows by its class name only (Hugging Face's ``LlamaRMSNorm``, ``T5LayerNorm``): inject
    matches it with LayerNorms; nothing is assumed about how it computes."""

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "layernorm", _weight_shape_or_one(module)


@register_kind(nn.GroupNorm)
class GroupNormKind(_NormKind):
    """``nn.GroupNorm``: statistics per sample over groups of channels, channels first."""

    ops = ("group_norm",)
    features_last = False
    deepen_norm = True
    zeroing = {"group_norm": (2, "weight", 3, "bias")}

    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        w = shape_of(module, "weight")
        return [("num_channels", module.num_channels, w[0])] if w else []

    def like(self, op: OpRecord, channels: int, ndim: int, model: nn.Module) -> nn.Module:
        groups = int(op.arg(1, "num_groups", 1))
        return nn.GroupNorm(groups if channels % groups == 0 else 1, channels)

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "groupnorm", (module.num_channels,)
