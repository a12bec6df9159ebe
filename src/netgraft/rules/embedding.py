"""Coupling rule for `F.embedding`: rows are the vocabulary (fixed), columns the produced feature axis."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.registry import RuleContext, register_op
from .owner import _owner, _produce


@register_op(F.embedding, names=["embedding"])
def _embedding(ctx: RuleContext) -> None:
    ids, w, out = ctx.value(ctx.arg(0, "input")), ctx.value(ctx.arg(1, "weight")), ctx.outputs[0]
    for i in range(len(ids.shape)):
        ctx.same(ids.dims[i], out.dims[i])
    ctx.per_unit(w, 1, out.dim(-1))
    ctx.fix(w.dim(0), "vocabulary rows of an embedding, indexed by input ids")
    if ctx.arg(3, "max_norm") is not None:
        ctx.block(out.dim(-1), "Embedding max_norm renormalises rows over this axis")
    _produce(ctx, out.dim(-1), w)
    if (owner := _owner(ctx, nn.Embedding, w)) is not None:
        ctx.set_attr("embedding_dim", out.dim(-1), module=owner)
