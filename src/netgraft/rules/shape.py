"""Coupling rules for ops that move units around without computing: reshapes, permutes, expand/repeat,
cat/stack/split/unbind, indexing, narrow/select, padding and pixel shuffle.

Sizes a forward passes to a reshape or split are `TracedInt`s while tracing (see `core.trace`): a size that *is* a
module attribute (``self.n_head``, ``self.n_embd``) makes the attribute follow the axis it sizes, and a size that *is*
another axis' size (``view(B, T, C)`` with ``C = x.size(-1)``) keeps the two axes equally wide. A reshape that views
one axis as a product (heads x head_dim) is recorded as a `Factoring`; which factor may grow is decided once the whole
trace is known (`core.coupling`).
"""

from __future__ import annotations

import torch

from ..core import space as sp
from ..core.graph import Factoring, TracedInt, Value
from ..core.registry import RuleContext, register_op
from ..core.space import Space
from .pointwise import broadcast


def couple_reshape(ctx: RuleContext, src: Value, dst: Value) -> list[tuple[list[Space], list[int]]]:
    """Couple a row-major reshape: merged axes become products, split axes are refined into factors. Returns the
    (input axes, output axis indices) groups it matched, size-1 axes left out."""
    ins = [(n, s) for n, s in zip(src.shape, src.dims, strict=True) if n != 1]
    outs = [i for i, n in enumerate(dst.shape) if n != 1]
    matched: list[tuple[list[Space], list[int]]] = []
    if not ins or not outs or 0 in src.shape:
        return matched
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
                return matched
        matched.append((gi, gj))
        if len(gi) == 1 and len(gj) == 1:
            ctx.same(gi[0], dst.dims[gj[0]])
            continue
        whole = ctx.product(gi)
        parts = ctx.split(whole, [dst.shape[k] for k in gj])
        for k, p in zip(gj, parts, strict=True):
            ctx.same(dst.dims[k], p)
    return matched


def follow_sizes(ctx: RuleContext, given: list, spaces: list[Space]) -> None:
    """Sizes the code passed for `spaces`: an attribute used as a size follows that axis after growth; another axis'
    size used as a size keeps the two axes equally wide (`view(B, T, C)` after merging heads back)."""
    for n, space in zip(given, spaces, strict=True):
        if not isinstance(n, TracedInt) or n.direct is None or n < 2:
            continue
        if n.direct[0] == "attr":
            ctx.set_attr(n.direct[2], space, module=n.direct[1])
        elif sp.find(n.direct[1]) is not sp.find(space) and n.direct[1].size == space.size:
            ctx.link(n.direct[1], space, f"the code sizes an axis with the size of another (x.size() -> {int(n)})")


def _size_args(ctx: RuleContext, out: Value) -> list | None:
    """The size the code gave for each output axis of a view/reshape/unflatten (-1: inferred), or None."""
    name = ctx.record.name
    if name in ("view", "reshape"):
        rest = list(ctx.args[1:])
        shape = ctx.kwargs.get("shape", ctx.kwargs.get("size"))
        if shape is None:
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        shape = list(shape)
    elif name == "unflatten":
        src = ctx.value(ctx.args[0])
        d = ctx.arg(1, "dim") % len(src.shape)
        sizes = list(ctx.arg(2, "sizes"))
        shape = [None] * d + sizes + [None] * (len(src.shape) - d - 1)
    else:
        return None
    if len(shape) != len(out.shape) or not all(x is None or (isinstance(x, int) and not isinstance(x, bool))
                                               for x in shape):
        return None
    return shape


@register_op(names="view reshape flatten unflatten view_as reshape_as squeeze unsqueeze ravel".split())
def _reshape(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    matched = couple_reshape(ctx, src, out)
    given = _size_args(ctx, out)
    if given is not None:
        follow_sizes(ctx, given, out.dims)
        for gi, gj in matched:
            if len(gj) >= 2:  # one axis viewed as a product (heads x head_dim): which factor grows is decided later
                whole = gi[0] if len(gi) == 1 else ctx.product(gi)
                ctx.trace.factorings.append(Factoring(ctx.record.module, ctx.where(), whole,
                                                      [out.dims[k] for k in gj], [out.shape[k] for k in gj],
                                                      [given[k] for k in gj]))
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
    """Tiling lays an axis out as (copies, units) row-major: a product whose copy count is fixed (`k.repeat(1, r, 1,
    1)`), so the units can still grow."""
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    off = len(out.shape) - len(src.shape)
    for i in range(off):
        if out.shape[i] > 1:
            ctx.fix(out.dims[i], f"axis created by '{ctx.record.name}'")
    for i, n in enumerate(src.shape):
        m = out.shape[off + i]
        if n == m:
            ctx.same(src.dims[i], out.dims[off + i])
        elif n > 1:
            copies = Space(m // n, origin=ctx.where())
            ctx.fix(copies, f"copy count of '{ctx.record.name}'")
            ctx.same(out.dims[off + i], ctx.product([copies, src.dims[i]]))
        elif m > 1:
            ctx.fix(out.dims[off + i], f"axis created by '{ctx.record.name}'")


@register_op(names=["repeat_interleave"])
def _repeat_interleave(ctx: RuleContext) -> None:
    """`x.repeat_interleave(r, dim)` lays the axis out as (units, r) row-major: each unit's r copies stay together,
    the repeat count is fixed (grouped-query attention: key/value heads grow, the group size does not)."""
    src = ctx.value(ctx.args[0]) if ctx.args and isinstance(ctx.args[0], torch.Tensor) else None
    reps, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if src is None or dim is None or not isinstance(reps, int) or isinstance(reps, bool) or reps < 1:
        ctx.block_all("'repeat_interleave' with tensor repeats or without dim")
        return
    out = ctx.outputs[0]
    d = dim % len(src.shape)
    for i in range(len(src.shape)):
        if i != d:
            ctx.same(src.dims[i], out.dims[i])
    if reps == 1:
        ctx.same(src.dims[d], out.dims[d])
        return
    if src.shape[d] == 1:
        ctx.fix(out.dims[d], "axis created by 'repeat_interleave'")
        return
    group = Space(int(reps), origin=ctx.where())
    ctx.fix(group, "repeat count of 'repeat_interleave' (the group size of grouped-query attention is kept)")
    ctx.same(out.dims[d], ctx.product([src.dims[d], group]))


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
            if ctx.record.name not in ("chunk", "unsafe_chunk"):  # split(self.n_embd): the attribute follows
                follow_sizes(ctx, [how], parts[:1])
        else:
            for p in parts:
                ctx.fix(p, f"'{ctx.record.name}' into unequal pieces")
    elif (ctx.record.name in ("split", "split_with_sizes", "unsafe_split") and isinstance(how, (list, tuple))
          and len(how) == len(parts) and all(isinstance(n, TracedInt) and n.direct for n in how)):
        follow_sizes(ctx, list(how), parts)  # sizes that are attributes or other axes' sizes: they follow
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


def _own_size(x: object, axis: Space) -> bool:
    """Whether an index (an int, a slice's bounds, a list's entries) was computed from the size of `axis` itself."""
    if isinstance(x, slice):
        return any(_own_size(b, axis) for b in (x.start, x.stop, x.step))
    if isinstance(x, (list, tuple)):
        return any(_own_size(b, axis) for b in x)
    return isinstance(x, TracedInt) and any(kind == "size" and sp.find(rest[0]) is sp.find(axis)
                                            for kind, *rest in x.sources)


def _list_shape(x: object) -> tuple[list[int], list] | None:
    """Shape and flat values of a (nested) list of ints used as an index; None for anything else (bools...)."""
    if isinstance(x, int) and not isinstance(x, bool):
        return [], [x]
    if not isinstance(x, (list, tuple)) or not x:
        return None
    inner = [_list_shape(e) for e in x]
    if any(e is None for e in inner) or len({tuple(e[0]) for e in inner}) != 1:
        return None
    return [len(x), *inner[0][0]], [v for e in inner for v in e[1]]


def _getitem_axes(ctx: RuleContext, src: Value, out: Value, index: object) -> None:
    idx = index if isinstance(index, tuple) else (index,)
    advanced = [x for x in idx if isinstance(x, (list, tuple, torch.Tensor))]
    if len(advanced) > 1:  # several index arrays broadcast together and may move to the front
        ctx.block_all("advanced (tensor/list) indexing with several index arrays")
        return
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
        if x is not None and i < len(src.shape) and src.shape[i] > 1 and _own_size(x, src.dims[i]):
            ctx.block(src.dims[i], f"index {x} is computed from the axis' own size (x.size(d) - 1, x.shape[-1] // 2): "
                                   "it moves when the axis grows")
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
        else:  # one index array (x[:, [-1], :], x[:, idx]): only the indexed axis is affected, the others pass through
            made = _index_array(ctx, src, i, x)
            if made is None or o + len(made) > len(out.shape):
                ctx.block_all("advanced (tensor/list) indexing")
                return
            for k, dim in enumerate(made):
                if dim is None:
                    if out.shape[o + k] > 1:
                        ctx.fix(out.dims[o + k], "axis made by indexing with a list")
                else:
                    ctx.same(dim, out.dims[o + k])
            i += 1
            o += len(made)
    if o != len(out.shape):  # the result is laid out differently than understood: fail closed
        ctx.block_all("advanced (tensor/list) indexing")


def _index_array(ctx: RuleContext, src: Value, i: int, x: object) -> list[Space | None] | None:
    """Index axis `i` of `src` with a list or an integer tensor: which units are read, and the output axes it makes
    (an index tensor's own axes, or new fixed axes for a list). None: not understood (bool masks...)."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            return None
        if src.shape[i] > 1:
            ctx.block(src.dims[i], "indexed by a tensor of positions (values unknown to the trace)")
        return list(ctx.value(x).dims)
    shape = _list_shape(x)
    if shape is None:
        return None
    dims, values = shape
    if src.shape[i] > 1:
        if min(values) < 0:  # x[:, [-1], :]: the last unit moves when the axis grows
            ctx.block(src.dims[i], f"index list {x} counts from the end of an axis")
        else:  # the units read stay in place when the axis grows (its originals stay first)
            ctx.trace.prefix_uses.append((src.dims[i], max(values) + 1, ctx.where()))
    return [None] * len(dims)


@register_op(names=["getitem"])
def _getitem(ctx: RuleContext) -> None:
    _getitem_axes(ctx, ctx.value(ctx.args[0]), ctx.outputs[0], ctx.args[1])


@register_op(names=["narrow"])
def _narrow(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0])
    d, start, length = ctx.arg(1, "dim") % len(src.shape), ctx.arg(2, "start"), ctx.arg(3, "length")
    index = [slice(None)] * len(src.shape)
    start, length = (n if isinstance(n, int) else int(n) for n in (start, length))  # traced ints keep their origin
    index[d] = slice(start, start + length)
    _getitem_axes(ctx, src, ctx.outputs[0], tuple(index))


@register_op(names=["select"])
def _select(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0])
    d = ctx.arg(1, "dim") % len(src.shape)
    index: list[object] = [slice(None)] * len(src.shape)
    i = ctx.arg(2, "index")
    index[d] = i if isinstance(i, int) else int(i)
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
