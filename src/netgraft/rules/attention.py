"""Attention: coupling rules for `F.multi_head_attention_forward` (``nn.MultiheadAttention``: heads grow, head_dim is
kept) and `F.scaled_dot_product_attention`, and the kind of ``nn.MultiheadAttention``.

Rules work at the level of `torch.nn.functional` calls, so they cover the nn layer and a custom module calling the
function alike. Module attributes (embed_dim, num_heads...) are set from the same couplings.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..core.graph import COPY, FANIN, Value
from ..core.layers import LayerKind, ShapeOf, register_kind
from ..core.registry import RuleContext, register_op
from ..core.space import Space
from .contract import contract

_MHA_ARGS = ("query key value embed_dim_to_check num_heads in_proj_weight in_proj_bias bias_k bias_v add_zero_attn "
             "dropout_p out_proj_weight out_proj_bias training key_padding_mask need_weights attn_mask "
             "use_separate_proj_weight q_proj_weight k_proj_weight v_proj_weight static_k static_v "
             "average_attn_weights is_causal").split()


@register_op(F.multi_head_attention_forward, names=["multi_head_attention_forward"])
def _mha(ctx: RuleContext) -> None:
    # q: (L, N, E) or (N, L, E), k/v: (S, N, E_k/E_v)  in_proj_weight: (3E, E) = 3 blocks x H heads x head_dim
    # out_proj_weight: (E, H * head_dim) -> y: like q;  attention weights: (N, L, S), or (N, H, L, S) per head
    a = {n: ctx.arg(i, n) for i, n in enumerate(_MHA_ARGS)}
    h = int(a["num_heads"])
    q, k, v = (ctx.value(a[n]) for n in ("query", "key", "value"))
    out = ctx.outputs[0]
    e = out.shape[-1]
    hd = e // h
    for i in range(len(q.shape) - 1):
        ctx.same(q.dims[i], out.dims[i])
        ctx.same(k.dims[i], v.dims[i])
    heads = Space(h, origin=f"heads of {ctx.where()}")

    def head_axis(val: Value | None, axis: int, blocks: int, role: str) -> None:
        if val is None:
            return
        sizes = ([blocks] if blocks > 1 else []) + [h, hd]
        parts = ctx.split(val.dim(axis), sizes, "attention heads")
        if blocks > 1:
            ctx.fix(parts[0], "q/k/v blocks of a fused projection")
        ctx.same(parts[-2], heads)
        ctx.fix(parts[-1], "head_dim of MultiheadAttention (heads are added, head_dim is kept)")
        ctx.trace.add_role(val, axis, role, ctx.record)

    if a["use_separate_proj_weight"]:
        for name, x in (("q_proj_weight", q), ("k_proj_weight", k), ("v_proj_weight", v)):
            w = ctx.value(a[name])
            head_axis(w, 0, 1, COPY)
            ctx.fan_in(w, 1, x.dim(-1))
    else:
        w = ctx.value(a["in_proj_weight"])
        head_axis(w, 0, 3, COPY)
        ctx.fan_in(w, 1, q.dim(-1))
        ctx.same(q.dim(-1), k.dim(-1))
        ctx.same(q.dim(-1), v.dim(-1))
    head_axis(ctx.value(a["in_proj_bias"]), 0, 3, COPY)
    head_axis(ctx.value(a["bias_k"]), -1, 1, COPY)
    head_axis(ctx.value(a["bias_v"]), -1, 1, COPY)
    wo = ctx.value(a["out_proj_weight"])
    ctx.per_unit(wo, 0, out.dim(-1))
    head_axis(wo, 1, 1, FANIN)
    ctx.per_unit(ctx.value(a["out_proj_bias"]), 0, out.dim(-1))
    inner = wo.dim(1)
    ctx.link(q.dim(-1), inner, "MultiheadAttention needs query size == num_heads * head_dim")
    ctx.link(out.dim(-1), inner, "MultiheadAttention's out_proj is embed_dim x embed_dim")
    ctx.produces(out.dim(-1))
    ctx.produces(out.dim(-1), key=f"{ctx.record.module}.out_proj")
    ctx.produces(heads, key=f"{ctx.record.module}:heads")  # heads follow embed_dim; named for groups()
    if a["need_weights"] is not False and len(ctx.outputs) > 1:
        if a["average_attn_weights"] is not False:  # only binding if the averaged weights are used at all
            ctx.trace.uniform_if_used.append((ctx.outputs[1], heads,
                                              f"MultiheadAttention returns attention weights averaged over heads "
                                              f"({ctx.where()})"))
        else:
            ctx.same(ctx.outputs[1].dim(-3), heads)
    if isinstance(ctx.running_module(), nn.MultiheadAttention):
        ctx.set_attr("embed_dim", q.dim(-1))
        ctx.set_attr("kdim", k.dim(-1))
        ctx.set_attr("vdim", v.dim(-1))
        ctx.set_attr("num_heads", heads)
        ctx.set_attr("in_features", inner, module=f"{ctx.record.module}.out_proj")
        ctx.set_attr("out_features", out.dim(-1), module=f"{ctx.record.module}.out_proj")


@register_op(F.scaled_dot_product_attention, names=["scaled_dot_product_attention"])
def _sdpa(ctx: RuleContext) -> None:
    # q: (*B, L, E)  k: (*B, S, E)  v: (*B, S, E_v) -> y: (*B, L, E_v);  *B broadcast (batch, heads)
    q, k, v = (ctx.value(ctx.arg(i, n)) for i, n in enumerate(("query", "key", "value")))
    out = ctx.outputs[0]
    contract(ctx, q, -1, k, -1)
    ctx.same(k.dim(-2), v.dim(-2))
    ctx.same(q.dim(-2), out.dim(-2))
    ctx.same(v.dim(-1), out.dim(-1))
    nb = len(out.shape) - 2
    for t in (q, k, v):
        for i in range(len(t.shape) - 2):
            o = nb - (len(t.shape) - 2) + i
            if t.shape[i] == out.shape[o] and t.shape[i] > 1:
                ctx.same(t.dims[i], out.dims[o])
            elif t.shape[i] > 1:
                ctx.block(t.dims[i], "grouped-query attention heads")


@register_kind(nn.MultiheadAttention)
class MultiheadAttentionKind(LayerKind):
    """``nn.MultiheadAttention``: fused q/k/v projection (3E, E) and out_proj (E, E), features last."""

    ops = ("multi_head_attention_forward",)
    features_last = True
    creates_features = True
    fan_in_scaled = True
    zeroing = {"multi_head_attention_forward": (11, "out_proj_weight", 12, "out_proj_bias")}  # positions in _MHA_ARGS

    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        wo = shape_of(module.out_proj, "weight")
        return [("embed_dim", module.embed_dim, wo[0]),
                ("num_heads*head_dim", module.num_heads * module.head_dim, wo[1])]

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "attention", (module.embed_dim, module.embed_dim)

    def channel_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (0, 1)
