"""Embeddings: the coupling rule for `F.embedding` (rows are the vocabulary, fixed; columns the produced feature axis)
and the kind of ``nn.Embedding``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.layers import LayerKind, ShapeOf, register_kind
from ..core.registry import RuleContext, register_op
from .owner import _owner, _produce


@register_op(F.embedding, names=["embedding"])
def _embedding(ctx: RuleContext) -> None:
    # w: (V, D)  ids: (*) -> y: (*, D)
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


@register_kind(nn.Embedding)
class EmbeddingKind(LayerKind):
    """``nn.Embedding``: weight (vocabulary, features); reads token ids, writes features last."""

    ops = ("embedding",)
    features_last = True
    creates_features = True
    reads_ids = True
    prefix_dims = (0,)  # rows are indexed by token id: inject aligns vocabularies at the start
    out_dim = 1

    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        w = shape_of(module, "weight")
        return [("embedding_dim", module.embedding_dim, w[1])] if w else []

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "embedding", tuple(module.weight.shape)

    def channel_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1,)  # the vocabulary does not grow with the model's width
