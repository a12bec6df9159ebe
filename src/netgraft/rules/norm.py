"""Coupling rules for normalisation layers: BatchNorm/InstanceNorm (per-channel statistics), LayerNorm/RMSNorm
(statistics over the normalised axes: uniform replication only) and GroupNorm (grows by whole groups)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.graph import Value
from ..core.registry import RuleContext, register_op
from ..core.space import Space
from .owner import _owner


@register_op(F.batch_norm, F.instance_norm, names=["batch_norm", "instance_norm"])
def _batch_norm(ctx: RuleContext) -> None:
    x, out = ctx.value(ctx.arg(0, "input")), ctx.outputs[0]
    ctx.same_shape(x, out)
    c = x.dim(1) if len(x.shape) > 1 else x.dim(0)
    for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        ctx.per_unit(ctx.value(ctx.arg(i, n)), 0, c)
    stats = [ctx.value(ctx.arg(i, n)) for i, n in ((1, "running_mean"), (3, "weight"))]
    if (owner := _owner(ctx, nn.modules.batchnorm._NormBase, *stats)) is not None:
        ctx.set_attr("num_features", c, module=owner)


def _normalized(ctx: RuleContext, x: Value, k: int, what: str) -> list[Space]:
    spaces = [x.dims[len(x.shape) - k + i] for i in range(k)]
    for s in spaces:
        if s.size > 1:
            ctx.uniform(s, f"{what} normalises over this axis")
    return spaces


@register_op(F.layer_norm, F.rms_norm, names=["layer_norm", "rms_norm"])
def _layer_norm(ctx: RuleContext) -> None:
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
