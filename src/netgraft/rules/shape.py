"""Coupling rules for ops that move units around without computing: reshapes, permutes, expand/repeat,
cat/stack/split/unbind, indexing, narrow/select, padding and pixel shuffle."""

from __future__ import annotations

import torch

from ..core.graph import Value
from ..core.registry import RuleContext, register_op
from ..core.space import Space
from .pointwise import broadcast


def couple_reshape(ctx: RuleContext, src: Value, dst: Value) -> None:
    """Couple a row-major reshape: merged axes become products, split axes are refined into factors."""
    ins = [(n, s) for n, s in zip(src.shape, src.dims, strict=True) if n != 1]
    outs = [i for i, n in enumerate(dst.shape) if n != 1]
    if not ins or not outs or 0 in src.shape:
        return
    i = j = 0
    while i < len(ins) and j < len(outs):
        gi, pi = [ins[i][1]], ins[i][0]
        gj, pj = [outs[j]], dst.shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(ins):
                gi.append(ins[i][1])
                pi *= ins[i][0]
                i += 1
            elif pj < pi and j < len(outs):
                gj.append(outs[j])
                pj *= dst.shape[outs[j]]
                j += 1
            else:
                return
        if len(gi) == 1 and len(gj) == 1:
            ctx.same(gi[0], dst.dims[gj[0]])
            continue
        whole = ctx.product(gi)
        parts = ctx.split(whole, [dst.shape[k] for k in gj])
        for k, p in zip(gj, parts, strict=True):
            ctx.same(dst.dims[k], p)


@register_op(names="view reshape flatten unflatten view_as reshape_as squeeze unsqueeze ravel".split())
def _reshape(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    couple_reshape(ctx, src, out)
    if ctx.record.name == "unflatten":  # nn.Unflatten stores the sizes it splits into: they follow the axes
        if isinstance(ctx.running_module(), torch.nn.Unflatten):
            d = ctx.arg(1, "dim") % len(src.shape)
            k = len(out.shape) - len(src.shape) + 1
            ctx.set_attr("unflattened_size", tuple(out.dims[d:d + k]))


def _permutation(ctx: RuleContext, nd: int) -> list[int] | None:
    name = ctx.record.name
    a = [x for x in ctx.args[1:] if not isinstance(x, torch.Tensor)]
    if name == "permute":
        dims = ctx.kwargs.get("dims", a[0] if len(a) == 1 and isinstance(a[0], (tuple, list)) else a)
        return [d % nd for d in dims]
    perm = list(range(nd))
    if name in ("transpose", "swapaxes", "swapdims"):
        d0 = ctx.arg(1, "dim0", ctx.kwargs.get("axis0"))
        d1 = ctx.arg(2, "dim1", ctx.kwargs.get("axis1"))
        d0, d1 = d0 % nd, d1 % nd
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name in ("t", "T", "numpy_T"):
        return perm[::-1]
    if name in ("mT", "mH", "adjoint"):
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return perm
    if name in ("movedim", "moveaxis"):
        s, d = ctx.arg(1, "source"), ctx.arg(2, "destination")
        s = [s] if isinstance(s, int) else list(s)
        d = [d] if isinstance(d, int) else list(d)
        s, d = [x % nd for x in s], [x % nd for x in d]
        rest = [x for x in range(nd) if x not in s]
        out: list[int | None] = [None] * nd
        for si, di in zip(s, d, strict=True):
            out[di] = si
        it = iter(rest)
        return [x if x is not None else next(it) for x in out]
    return None


@register_op(names="permute transpose swapaxes swapdims t T mT mH adjoint movedim moveaxis".split())
def _permute(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    perm = _permutation(ctx, len(src.shape))
    if perm is None:
        ctx.block_all("permutation not understood")
        return
    for o, i in enumerate(perm):
        ctx.same(out.dims[o], src.dims[i])


@register_op(names="expand expand_as broadcast_to".split())
def _expand(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    broadcast(ctx, [src], out)
    off = len(out.shape) - len(src.shape)
    for i, n in enumerate(out.shape):  # axes made by broadcasting (e.g. repeat_kv's n_rep) have a set size
        if n > 1 and (i < off or src.shape[i - off] == 1):
            ctx.fix(out.dims[i], "axis created by broadcasting")


@register_op(names=["repeat", "tile"])
def _repeat(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    off = len(out.shape) - len(src.shape)
    for i, n in enumerate(src.shape):
        if n == out.shape[off + i]:
            ctx.same(src.dims[i], out.dims[off + i])
        elif n > 1:
            ctx.block(src.dims[i], f"'{ctx.record.name}' tiles an axis of size {n}")


@register_op(names=["cat", "concat", "concatenate"])
def _cat(ctx: RuleContext) -> None:
    tensors = [t for t in ctx.arg(0, "tensors") if t.dim() > 1 or t.numel() > 0]
    out = ctx.outputs[0]
    d = ctx.arg(1, "dim", 0) % len(out.shape)
    vals = [ctx.value(t) for t in tensors]
    ctx.same(out.dims[d], ctx.concat([v.dims[d] for v in vals]))
    for v in vals:
        for i in range(len(out.shape)):
            if i != d:
                ctx.same(v.dims[i], out.dims[i])


@register_op(names=["stack"])
def _stack(ctx: RuleContext) -> None:
    out = ctx.outputs[0]
    d = ctx.arg(1, "dim", 0) % len(out.shape)
    for t in ctx.arg(0, "tensors"):
        v = ctx.value(t)
        for i in range(len(v.shape)):
            ctx.same(v.dims[i], out.dims[i if i < d else i + 1])
    if out.shape[d] > 1:
        ctx.fix(out.dims[d], "axis created by stack")


@register_op(names="split chunk tensor_split split_with_sizes unsafe_split unsafe_chunk".split())
def _split(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0])
    nd = len(src.shape)
    d = ctx.kwargs.get("dim", ctx.args[2] if len(ctx.args) > 2 else 0) % nd
    outs = ctx.outputs
    sizes = [o.shape[d] for o in outs]
    parts = ctx.split_sum(src.dims[d], sizes)
    for o, p in zip(outs, parts, strict=True):
        for i in range(nd):
            ctx.same(o.dims[i], p if i == d else src.dims[i])
    how = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("split_size_or_sections", ctx.kwargs.get("chunks"))
    if ctx.record.name in ("chunk", "unsafe_chunk") or (isinstance(how, int) and ctx.record.name != "tensor_split"):
        if len(set(sizes)) == 1:  # re-split evenly at run time: the pieces must keep equal sizes
            for p in parts[1:]:
                ctx.link(parts[0], p, f"'{ctx.record.name}' splits into equal pieces")
        else:
            for p in parts:
                ctx.fix(p, f"'{ctx.record.name}' into unequal pieces")
    else:  # sizes or indices written in the code
        for p in parts:
            ctx.fix(p, f"'{ctx.record.name}' into sizes given in the code")


@register_op(names=["unbind"])
def _unbind(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0])
    d = ctx.arg(1, "dim", 0) % len(src.shape)
    if src.shape[d] > 1:
        ctx.fix(src.dims[d], "unbind over this axis")
    for o in ctx.outputs:
        for i, s in enumerate(o.dims):
            ctx.same(s, src.dims[i if i < d else i + 1])


def _getitem_axes(ctx: RuleContext, src: Value, out: Value, index: object) -> None:
    idx = index if isinstance(index, tuple) else (index,)
    n_real = sum(1 for x in idx if x is not None and x is not Ellipsis and not isinstance(x, bool))
    expanded: list[object] = []
    for x in idx:
        if x is Ellipsis:
            expanded += [slice(None)] * (len(src.shape) - n_real)
        else:
            expanded.append(x)
    expanded += [slice(None)] * (len(src.shape) - sum(1 for x in expanded if x is not None))
    i = o = 0
    for x in expanded:
        if x is None:
            o += 1
        elif isinstance(x, int) and not isinstance(x, bool):
            if x < 0 and src.shape[i] > 1:  # counted from the end: moves when the axis grows
                ctx.block(src.dims[i], f"index {x} counts from the end of an axis")
            elif src.shape[i] > 1:
                ctx.trace.prefix_uses.append((src.dims[i], x + 1, ctx.where()))
            i += 1
        elif isinstance(x, slice):
            if x == slice(None) or (x.start in (None, 0) and x.stop is None and x.step in (None, 1)):
                ctx.same(src.dims[i], out.dims[o])
            else:
                ok = (x.start or 0) >= 0 and x.stop is not None and 0 <= x.stop < src.shape[i] and x.step in (None, 1)
                if ok:  # a prefix-stable slice keeps the original units (they stay first after growth)
                    if out.shape[o] > 1:
                        ctx.fix(out.dims[o], "slice of an axis")
                    ctx.trace.prefix_uses.append((src.dims[i], x.stop, ctx.where()))
                elif src.shape[i] > 1:
                    ctx.block(src.dims[i], f"slice {x} of an axis of size {src.shape[i]}")
            i += 1
            o += 1
        else:
            ctx.block_all("advanced (tensor/list) indexing")
            return


@register_op(names=["getitem"])
def _getitem(ctx: RuleContext) -> None:
    _getitem_axes(ctx, ctx.value(ctx.args[0]), ctx.outputs[0], ctx.args[1])


@register_op(names=["narrow"])
def _narrow(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0])
    d, start, length = ctx.arg(1, "dim") % len(src.shape), ctx.arg(2, "start"), ctx.arg(3, "length")
    index = [slice(None)] * len(src.shape)
    index[d] = slice(int(start), int(start) + int(length))
    _getitem_axes(ctx, src, ctx.outputs[0], tuple(index))


@register_op(names=["select"])
def _select(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0])
    d = ctx.arg(1, "dim") % len(src.shape)
    index: list[object] = [slice(None)] * len(src.shape)
    index[d] = int(ctx.arg(2, "index"))
    _getitem_axes(ctx, src, ctx.outputs[0], tuple(index))


@register_op(names=["pad"])
def _pad(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    pad = list(ctx.arg(1, "pad"))
    nd = len(src.shape)
    padded = {nd - 1 - k: (pad[2 * k], pad[2 * k + 1]) for k in range(len(pad) // 2)}
    for i in range(nd):
        before, after = padded.get(i, (0, 0))
        if before == after == 0:
            ctx.same(src.dims[i], out.dims[i])
        elif before >= 0 and after >= 0 and src.shape[i] > 1:
            pieces = [Space(n) for n in (before,) if n] + [src.dims[i]] + [Space(n) for n in (after,) if n]
            for p in pieces:
                if p is not src.dims[i]:
                    ctx.fix(p, "padding")
            ctx.same(out.dims[i], ctx.concat(pieces))
        elif src.shape[i] > 1:
            ctx.block(src.dims[i], "negative padding (cropping)")


@register_op(names=["pixel_shuffle", "pixel_unshuffle"])
def _pixel_shuffle(ctx: RuleContext) -> None:
    """pixel_shuffle moves an r x r block of each channel group into space: channels are (C, r, r) row-major."""
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    r = int(ctx.arg(1, "upscale_factor" if ctx.record.name == "pixel_shuffle" else "downscale_factor"))
    c = len(src.shape) - 3
    for i in range(c):
        ctx.same(src.dims[i], out.dims[i])
    wide, narrow = (src, out) if ctx.record.name == "pixel_shuffle" else (out, src)
    parts = ctx.split(wide.dims[c], [narrow.shape[c], r, r], ctx.record.name)
    ctx.same(parts[0], narrow.dims[c])
    for p in parts[1:]:
        ctx.fix(p, f"{ctx.record.name} block of {r}x{r}")
    for v in (src, out):
        for i in (c + 1, c + 2):
            ctx.fix(v.dims[i], "spatial axis")
