"""Built-in rules for tensor ops: elementwise, reshapes, permutes, cat/split, indexing, reductions, factories."""

from __future__ import annotations

import torch

from ._space import Space
from ._trace import COPY, Value
from .registry import _IGNORE, RuleContext, register_op

UNARY = """relu relu6 gelu silu elu selu celu leaky_relu hardtanh hardswish hardsigmoid mish softplus softsign
tanhshrink hardshrink softshrink sigmoid tanh logsigmoid exp exp2 expm1 log log1p log2 log10 abs neg negative sqrt
rsqrt square sin cos reciprocal sign sgn floor ceil round trunc frac erf erfc erfinv
nan_to_num dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout contiguous clone detach float
double half bfloat16 to type type_as cpu cuda requires_grad data pos positive logical_not bitwise_not isnan
isinf isfinite threshold rrelu detach_copy conj resolve_conj resolve_neg fill zero""".split()

BINARY = """add sub subtract rsub mul multiply div divide truediv true_divide floordiv floor_divide mod remainder fmod
pow float_power maximum minimum fmax fmin atan2 eq ne lt le gt ge and or xor logical_and logical_or logical_xor
bitwise_and bitwise_or bitwise_xor where masked_fill lerp addcmul addcdiv hypot copysign xlogy clamp clip clamp_min
clamp_max""".split()


def broadcast(ctx: RuleContext, values: list[Value], out: Value) -> None:
    """Right-align each input with the output and couple every axis that is not broadcast (size 1)."""
    nd = len(out.shape)
    for v in values:
        off = nd - len(v.shape)
        if off < 0:
            continue
        for i, n in enumerate(v.shape):
            if n != 1 and n == out.shape[off + i]:
                if v.param is not None:
                    ctx.per_unit(v, i, out.dims[off + i])  # a bare parameter added/multiplied per unit
                else:
                    ctx.same(v.dims[i], out.dims[off + i])


@register_op(names=UNARY)
def _unary(ctx: RuleContext) -> None:
    src = ctx.value(ctx.args[0]) if ctx.args and isinstance(ctx.args[0], torch.Tensor) else ctx.inputs[0]
    for out in ctx.outputs:
        if out.shape == src.shape:
            broadcast(ctx, [src], out)


@register_op(names=BINARY)
def _binary(ctx: RuleContext) -> None:
    broadcast(ctx, ctx.inputs, ctx.outputs[0])  # every tensor argument, clamp's tensor bounds included


@register_op(names=["triu", "tril"])
def _triangle(ctx: RuleContext) -> None:
    """triu/tril keep entries by position on the last two axes: those axes cannot grow."""
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    ctx.same_shape(src, out)
    for d in (-1, -2):
        if len(src.shape) >= 2 and src.shape[d] > 1:
            ctx.fix(src.dims[d], f"'{ctx.record.name}' keeps entries by position on this axis")


@register_op(names=["prelu"])
def _prelu(ctx: RuleContext) -> None:
    x, w = ctx.value(ctx.arg(0, "input")), ctx.value(ctx.arg(1, "weight"))
    ctx.same_shape(x, ctx.outputs[0])
    if w is not None and w.shape[0] > 1:
        ctx.per_unit(w, 0, x.dim(1) if len(x.shape) >= 2 else x.dim(0))
        ctx.set_attr("num_parameters", x.dim(1) if len(x.shape) >= 2 else x.dim(0))


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


# Reductions over an axis: which survive replicating units?
_KEEPS_ANY = {"amax", "amin", "max", "min", "all", "any", "argmax", "argmin", "aminmax"}  # duplicates change nothing
_KEEPS_UNIFORM = {"mean", "nanmean", "var", "std", "var_mean", "std_mean", "median", "nanmedian"}
_BREAKS = {"sum", "nansum", "prod", "norm", "logsumexp", "count_nonzero", "linalg_vector_norm", "vector_norm"}


@register_op(names=sorted(_KEEPS_ANY | _KEEPS_UNIFORM | _BREAKS))
def _reduce(ctx: RuleContext) -> None:
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


_FACTORIES = """zeros ones empty full rand randn randint arange range linspace logspace eye tensor as_tensor
scalar_tensor new_zeros new_ones new_full new_empty new_tensor empty_strided randperm""".split()


@register_op(names=_FACTORIES)
def _factory(ctx: RuleContext) -> None:
    for out in ctx.outputs:
        for s in out.dims:
            if s.size > 1:
                ctx.block(s, f"tensor created by '{ctx.record.name}' with a hard-coded size")


@register_op(names="zeros_like ones_like empty_like full_like rand_like randn_like randint_like".split())
def _like(ctx: RuleContext) -> None:
    ctx.same_shape(ctx.value(ctx.args[0]), ctx.outputs[0])


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


_POOL = """max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d lp_pool3d
max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d_with_indices
adaptive_max_pool2d_with_indices fractional_max_pool2d interpolate upsample
upsample_nearest upsample_bilinear""".split()


@register_op(names=_POOL)
def _pool(ctx: RuleContext) -> None:
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


@register_op(names=["glu"])
def _glu(ctx: RuleContext) -> None:
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    d = ctx.arg(1, "dim", -1) % len(src.shape)
    a, b = ctx.split_sum(src.dims[d], [src.shape[d] // 2] * 2)
    ctx.same(a, b)
    for i in range(len(src.shape)):
        ctx.same(out.dims[i], a if i == d else src.dims[i])


def contract(ctx: RuleContext, a: Value, ax: int, b: Value, bx: int) -> None:
    """`a` and `b` are multiplied and summed over one axis: a parameter side absorbs the fan-in split."""
    ctx.same(a.dim(ax), b.dim(bx))
    a_param = a.param is not None and a.param_axes[ax % len(a.shape)] is not None
    b_param = b.param is not None and b.param_axes[bx % len(b.shape)] is not None
    if a_param:
        ctx.trace.add_role(a, ax, "fanin", ctx.record)
        if b_param:
            ctx.trace.add_role(b, bx, COPY, ctx.record)
    elif b_param:
        ctx.trace.add_role(b, bx, "fanin", ctx.record)
    elif a.shape[ax] > 1:
        ctx.fix(a.dim(ax), "summed over in a product of two activations (e.g. q.k in attention)")


def _free(ctx: RuleContext, v: Value, ax: int, space: Space) -> None:
    if v.param is not None:
        ctx.per_unit(v, ax, space)
    else:
        ctx.same(v.dim(ax), space)


@register_op(names=["matmul", "mm", "bmm"])
def _matmul(ctx: RuleContext) -> None:
    a, b, out = ctx.value(ctx.args[0]), ctx.value(ctx.args[1]), ctx.outputs[0]
    if len(a.shape) == 1 and len(b.shape) == 1:
        contract(ctx, a, 0, b, 0)
        return
    contract(ctx, a, -1, b, -2 if len(b.shape) > 1 else 0)
    if len(a.shape) > 1:
        _free(ctx, a, -2, out.dim(-2 if len(b.shape) > 1 else -1))
    if len(b.shape) > 1:
        _free(ctx, b, -1, out.dim(-1))
        if b.param is not None and a.param is None:  # x @ self.W: name the output axis after the parameter
            ctx.produces(out.dim(-1), key=b.param)
    nb = len(out.shape) - (2 if len(a.shape) > 1 and len(b.shape) > 1 else 1)
    for v in (a, b):
        batch = len(v.shape) - 2
        for i in range(batch):
            o = nb - batch + i
            if v.shape[i] != 1 and 0 <= o < nb and v.shape[i] == out.shape[o]:
                _free(ctx, v, i, out.dims[o])


register_op(names=["size", "dim", "numel", "shape", "dtype", "device", "is_contiguous", "item", "tolist"])(_IGNORE)


@register_op(names=["einsum"])
def _einsum(ctx: RuleContext) -> None:
    """Letters kept in the output are shared axes; letters summed away are contractions (a parameter absorbs the
    fan-in split; two activations summed over an axis fix it); a letter summed within one operand is a sum."""
    eq = ctx.args[0].replace(" ", "")
    operands = ctx.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if "->" not in eq or "." in eq or not all(isinstance(t, torch.Tensor) for t in operands):
        ctx.block_all(f"einsum '{eq}' (implicit output or ellipsis)")
        return
    lhs, rhs = eq.split("->")
    specs = lhs.split(",")
    vals = [ctx.value(t) for t in operands]
    out = ctx.outputs[0]
    where: dict[str, list[tuple[Value, int]]] = {}
    for v, spec in zip(vals, specs, strict=True):
        for axis, letter in enumerate(spec):
            where.setdefault(letter, []).append((v, axis))
    for letter, uses in where.items():
        if letter in rhs:
            o = rhs.index(letter)
            for v, axis in uses:
                if v.shape[axis] > 1:
                    _free(ctx, v, axis, out.dims[o])
            if all(v.param is not None for v, _ in uses):  # a weight's output axis: name it by the parameter
                ctx.produces(out.dims[o], key=uses[0][0].param)
        elif len(uses) == 1:
            v, axis = uses[0]
            if v.shape[axis] > 1:
                ctx.block(v.dims[axis], f"einsum '{eq}' sums over this axis")
        elif len(uses) == 2:
            contract(ctx, uses[0][0], uses[0][1], uses[1][0], uses[1][1])
        else:
            ctx.block_all(f"einsum '{eq}' contracts one letter over three operands")


@register_op(names=["addmm"])
def _addmm(ctx: RuleContext) -> None:
    """addmm(bias, x, w) = bias + x @ w: the weight's first axis is summed over, its second is the output."""
    bias, x, w = (ctx.value(ctx.arg(i, n)) for i, n in enumerate(("input", "mat1", "mat2")))
    out = ctx.outputs[0]
    contract(ctx, x, -1, w, 0)
    _free(ctx, x, 0, out.dim(0))
    _free(ctx, w, 1, out.dim(1))
    if w.param is not None:
        ctx.produces(out.dim(1))
    broadcast(ctx, [bias], out)


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
