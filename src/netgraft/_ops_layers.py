"""Built-in rules for the functional forms of nn layers: linear, conv, norms, embedding, attention.

Rules work at the level of `torch.nn.functional` calls, so they cover `nn.Linear` and a custom module calling
`F.linear(x, self.w)` alike. Module attributes (in_features, groups, num_heads...) are set from the same couplings.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._ops_tensor import contract
from ._space import Space
from ._trace import COPY, FANIN, Value
from .registry import RuleContext, register_op


def _holds(module: nn.Module | None, tensor: object) -> bool:
    """True when `module` itself (not a child) registers `tensor` as a parameter or buffer."""
    return module is not None and any(t is tensor for t in (*module._parameters.values(), *module._buffers.values()))


def _owner(ctx: RuleContext, cls: type | tuple[type, ...], *values: Value | None) -> str | None:
    """Path of the `cls` module whose attributes must follow this op: the module that owns its parameters (found
    from their names, so calling `.forward` directly or reusing `other.weight` still updates `other`), else the
    module whose forward runs the op."""
    params = [ctx.trace.tensors_by_name[v.param] for v in values if v is not None and v.param is not None]
    current = ctx.running_module()
    if isinstance(current, cls) and (not params or any(_holds(current, p) for p in params)):
        return ctx.record.module  # the module running the op holds the parameter (also when it is tied)
    for v in values:
        if v is not None and v.param is not None:
            path = v.param.rsplit(".", 1)[0] if "." in v.param else ""
            try:
                m = ctx.trace.model.get_submodule(path) if path else ctx.trace.model
            except AttributeError:
                continue
            return path if isinstance(m, cls) else None
    return None


def _produce(ctx: RuleContext, space: Space, weight: Value | None) -> None:
    """Name `space` after the module that owns the weight (the module a user thinks of as producing it), and after
    the parameter itself when it is a bare one (`self.w`)."""
    if weight is None or weight.param is None:
        ctx.produces(space)
        return
    holds = _holds(ctx.running_module(), ctx.trace.tensors_by_name[weight.param])
    owner, _, leaf = weight.param.rpartition(".")
    ctx.produces(space, key=ctx.record.module if holds else (owner or ctx.record.module))
    if leaf != "weight":
        ctx.produces(space, key=weight.param)


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


_MHA_ARGS = ("query key value embed_dim_to_check num_heads in_proj_weight in_proj_bias bias_k bias_v add_zero_attn "
             "dropout_p out_proj_weight out_proj_bias training key_padding_mask need_weights attn_mask "
             "use_separate_proj_weight q_proj_weight k_proj_weight v_proj_weight static_k static_v "
             "average_attn_weights is_causal").split()


@register_op(F.multi_head_attention_forward, names=["multi_head_attention_forward"])
def _mha(ctx: RuleContext) -> None:
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
