"""Coupling rule for convolutions and transposed convolutions, plain, grouped and depthwise."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.registry import RuleContext, register_op
from .owner import _owner, _produce


def _conv(ctx: RuleContext, transposed: bool) -> None:
    x, w = ctx.value(ctx.arg(0, "input")), ctx.value(ctx.arg(1, "weight"))
    b = ctx.value(ctx.arg(2, "bias"))
    groups = ctx.arg(6, "groups", 1)  # 6th in conv(..., dilation, groups) and conv_transpose(..., groups, dilation)
    out = ctx.outputs[0]
    n_spatial = len(w.shape) - 2
    c = len(x.shape) - n_spatial - 1  # channel axis (0 for unbatched input)
    if c == 1:
        ctx.same(x.dims[0], out.dims[0])
    for k in range(n_spatial):
        ctx.fix(w.dims[2 + k], "convolution kernel axis")
        ctx.fix(x.dims[c + 1 + k], "spatial axis of a convolution input")
        ctx.fix(out.dims[c + 1 + k], "spatial axis")
    cin, cout = x.dim(c), out.dim(c)
    in_ax, out_ax = (0, 1) if transposed else (1, 0)
    owner = _owner(ctx, nn.modules.conv._ConvNd, w)
    if groups == 1:
        ctx.fan_in(w, in_ax, cin)
        ctx.per_unit(w, out_ax, cout)
        _produce(ctx, cout, w)
    elif not transposed and w.shape[1] == 1:  # depthwise: each output channel reads one input channel
        mult = out.shape[c] // groups
        if mult == 1:
            ctx.per_unit(w, 0, cin)
            ctx.same(cin, cout)
        else:
            g, m = ctx.split(w.dim(0), [groups, mult], "depthwise channel multiplier")
            ctx.same(g, cin)
            ctx.fix(m, f"channel multiplier {mult} of a depthwise convolution")
            ctx.per_unit(w, 0, cout)
        if owner is not None:
            ctx.set_attr("groups", cin, module=owner)
    elif not transposed:  # grouped: the groups stay, each group's channels grow alike
        gin = ctx.split(cin, [groups, cin.size // groups], f"groups={groups}")
        ctx.fix(gin[0], f"{type(ctx.running_module()).__name__} '{ctx.record.module}' has groups={groups}")
        ctx.fan_in(w, 1, gin[1])
        gout = ctx.split(w.dim(0), [groups, w.shape[0] // groups], f"groups={groups}")
        ctx.same(gout[0], gin[0])
        ctx.per_unit(w, 0, cout)
        _produce(ctx, cout, w)
    elif w.shape[0] == groups and w.shape[1] == 1:  # depthwise transposed convolution
        ctx.per_unit(w, 0, cin)
        ctx.same(cin, cout)
        if owner is not None:
            ctx.set_attr("groups", cin, module=owner)
    else:
        ctx.block_all(f"grouped transposed convolution (groups={groups})")
        return
    ctx.per_unit(b, 0, cout)
    if owner is not None:
        ctx.set_attr("in_channels", cin, module=owner)
        ctx.set_attr("out_channels", cout, module=owner)


@register_op(F.conv1d, F.conv2d, F.conv3d, names=["conv1d", "conv2d", "conv3d"])
def _convnd(ctx: RuleContext) -> None:
    _conv(ctx, transposed=False)


@register_op(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
             names=["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"])
def _conv_transpose(ctx: RuleContext) -> None:
    _conv(ctx, transposed=True)
