"""Coupling rules for reductions and ops along an axis: mean/var keep uniform replication, sum/norm break it,
softmax/sort/cumsum fix or block the axis they work along, pooling fixes spatial axes."""

from __future__ import annotations

import torch

from ..core.catalogue import POOLS
from ..core.registry import RuleContext, register_op
from .pointwise import broadcast

# Reductions over an axis: which survive replicating units?
_KEEPS_ANY = {"amax", "amin", "max", "min", "all", "any", "argmax", "argmin", "aminmax"}  # duplicates change nothing
_KEEPS_UNIFORM = {"mean", "nanmean", "var", "std", "var_mean", "std_mean", "median", "nanmedian"}
_BREAKS = {"sum", "nansum", "prod", "norm", "logsumexp", "count_nonzero", "linalg_vector_norm", "vector_norm"}


@register_op(names=sorted(_KEEPS_ANY | _KEEPS_UNIFORM | _BREAKS))
def _reduce(ctx: RuleContext) -> None:
    # x: (d_0, ..., d_n) -> y: x's shape without the reduced axes (kept as size 1 with keepdim=True)
    src = ctx.value(ctx.args[0])
    nd = len(src.shape)
    name = ctx.record.name
    dim = ctx.kwargs.get("dim", ctx.kwargs.get("axis"))
    if dim is None and len(ctx.args) > 1 and not isinstance(ctx.args[1], torch.Tensor):
        dim = ctx.args[1] if name not in ("norm", "linalg_vector_norm", "vector_norm") else ctx.arg(2, "dim")
    if name in ("norm", "linalg_vector_norm", "vector_norm"):
        dim = ctx.kwargs.get("dim", ctx.args[2] if len(ctx.args) > 2 else None)
    if isinstance(dim, str) or (name in ("max", "min") and isinstance(dim, torch.Tensor)):
        broadcast(ctx, ctx.inputs, ctx.outputs[0])  # torch.max(a, b) is elementwise
        return
    dims = set(range(nd)) if dim is None or dim == () else {d % nd for d in ([dim] if isinstance(dim, int) else dim)}
    biased = _is_biased(ctx) if name in ("var", "std", "var_mean", "std_mean") else True
    for d in sorted(dims):
        s = src.dims[d]
        if src.shape[d] <= 1:
            continue
        if not biased:  # Bessel's correction: k*S/(k*N - 1) != S/(N - 1), even under uniform replication
            ctx.block(s, f"unbiased '{name}' over this axis changes when units are replicated (correction=0 would not)")
        elif name in _KEEPS_UNIFORM:
            ctx.uniform(s, f"'{name}' over this axis")
        elif name in _BREAKS:
            ctx.block(s, f"'{name}' over this axis changes when units are replicated (a mean would not)")
    keep = [i for i in range(nd) if i not in dims]
    for out in ctx.outputs:
        if len(out.shape) == nd:  # keepdim=True
            for i in keep:
                ctx.same(src.dims[i], out.dims[i])
        elif len(out.shape) == len(keep):
            for o, i in enumerate(keep):
                ctx.same(src.dims[i], out.dims[o])


def _is_biased(ctx: RuleContext) -> bool:
    """True when var/std use correction=0 (unbiased=False); torch's default is the unbiased estimate."""
    if "correction" in ctx.kwargs:
        return ctx.kwargs["correction"] in (0, 0.0)
    if "unbiased" in ctx.kwargs:
        return ctx.kwargs["unbiased"] is False
    flags = [a for a in ctx.args[1:] if isinstance(a, bool)]
    return bool(flags) and flags[0] is False


@register_op(names=["softmax", "log_softmax", "softmin", "normalize", "gumbel_softmax"])
def _softmax(ctx: RuleContext) -> None:
    # x: S -> y: S, normalised along `dim`
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    ctx.same_shape(src, out)
    d = ctx.arg(1, "dim")
    if ctx.record.name == "normalize":
        d = ctx.kwargs.get("dim", ctx.args[2] if len(ctx.args) > 2 else 1)
    if d is None:  # torch's legacy implicit softmax dim
        d = 0 if len(src.shape) in (0, 1, 3) else 1
    if src.shape[d] > 1:
        ctx.fix(src.dims[d], f"'{ctx.record.name}' over this axis")


# Ops that mix or reorder units along an axis; where the axis argument sits, and its default.
_ALONG_AXIS = {"cumsum": (1, None), "cumprod": (1, None), "cummax": (1, None), "cummin": (1, None),
               "logcumsumexp": (1, None), "sort": (1, -1), "argsort": (1, -1), "topk": (2, -1),
               "kthvalue": (2, -1), "flip": (1, None), "roll": (2, None)}


@register_op(names=sorted(_ALONG_AXIS))
def _along_axis(ctx: RuleContext) -> None:
    # x: S -> y: S (topk, kthvalue: `dim` shortened), mixed or reordered along `dim`
    src = ctx.value(ctx.args[0])
    name = ctx.record.name
    pos, default = _ALONG_AXIS[name]
    dims = ctx.kwargs.get("dims", ctx.kwargs.get("dim", ctx.args[pos] if len(ctx.args) > pos else default))
    nd = len(src.shape)
    dims = list(range(nd)) if dims is None else [dims] if isinstance(dims, int) else list(dims)
    dims = [d % nd for d in dims] if nd else []
    for out in ctx.outputs:
        for i in range(min(nd, len(out.shape))):
            if i not in dims and out.shape[i] == src.shape[i]:
                ctx.same(src.dims[i], out.dims[i])
    for d in dims:
        if src.shape[d] > 1:
            ctx.block(src.dims[d], f"'{name}' along this axis depends on which units exist")


_POOL = sorted(POOLS | set("""lp_pool1d lp_pool2d lp_pool3d max_pool1d_with_indices max_pool2d_with_indices
max_pool3d_with_indices adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices fractional_max_pool2d
interpolate upsample upsample_nearest upsample_bilinear""".split()))


@register_op(names=_POOL)
def _pool(ctx: RuleContext) -> None:
    # x: (N, C, *S) -> y: (N, C, *S'), S' from the window (k spatial axes from the op's name)
    src = ctx.value(ctx.args[0])
    name = ctx.record.name
    k = 3 if "3d" in name else 2 if "2d" in name else 1 if "1d" in name else len(src.shape) - 2
    for out in ctx.outputs:
        for i in range(len(src.shape) - k):
            ctx.same(src.dims[i], out.dims[i])
        for i in range(len(out.shape) - k, len(out.shape)):
            if out.shape[i] > 1:
                ctx.fix(out.dims[i], "spatial axis")
    for i in range(len(src.shape) - k, len(src.shape)):
        if src.shape[i] > 1:
            ctx.fix(src.dims[i], f"axis pooled by '{name}'")
