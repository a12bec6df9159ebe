"""Coupling rule for `F.linear` (`nn.Linear` and any module calling it with its own weight)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.registry import RuleContext, register_op
from .contract import contract
from .owner import _owner, _produce


@register_op(F.linear, names=["linear"])
def _linear(ctx: RuleContext) -> None:
    x, w, b = (ctx.value(ctx.arg(i, n)) for i, n in enumerate(("input", "weight", "bias")))
    out = ctx.outputs[0]
    contract(ctx, x, -1, w, 1)
    if w.param is not None:
        ctx.per_unit(w, 0, out.dim(-1))
        _produce(ctx, out.dim(-1), w)
    else:  # a weight computed in forward (a parametrization such as spectral_norm or weight_norm)
        ctx.same(w.dim(0), out.dim(-1))
        ctx.block(out.dim(-1), "the weight of this linear op is computed in forward (e.g. a parametrization); "
                               "netgraft cannot resize what it is computed from")
        ctx.produces(out.dim(-1))
    ctx.per_unit(b, 0, out.dim(-1))
    for i in range(len(x.shape) - 1):
        ctx.same(x.dims[i], out.dims[i])
    if (owner := _owner(ctx, nn.Linear, w)) is not None:
        ctx.set_attr("in_features", x.dim(-1), module=owner)
        ctx.set_attr("out_features", out.dim(-1), module=owner)
