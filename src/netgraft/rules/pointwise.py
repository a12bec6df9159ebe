"""Coupling rules for element-wise ops (activations, arithmetic with broadcasting, clamp, where, PReLU, GLU) and
for tensors created in forward (factories keep hard-coded sizes: blocked; `*_like` follow their input)."""

from __future__ import annotations

import torch

from ..core.catalogue import ACTIVATIONS, CASTS, COPIES, DROPOUT
from ..core.graph import Value
from ..core.registry import RuleContext, register_op

# Element-wise ops of one tensor: every axis of the output is the same axis of the input.
UNARY = sorted((ACTIVATIONS - {"prelu"}) | DROPOUT | COPIES | CASTS | set("""softsign tanhshrink hardshrink softshrink
logsigmoid threshold rrelu exp exp2 expm1 log log1p log2 log10 abs neg negative sqrt rsqrt square sin cos reciprocal
sign sgn floor ceil round trunc frac erf erfc erfinv nan_to_num cpu cuda requires_grad pos positive logical_not
bitwise_not isnan isinf isfinite detach_copy conj resolve_conj resolve_neg fill zero""".split()))

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
    # x: S -> y: S (each output of x's shape; other outputs, such as nan_to_num's, are left alone)
    src = ctx.value(ctx.args[0]) if ctx.args and isinstance(ctx.args[0], torch.Tensor) else ctx.inputs[0]
    for out in ctx.outputs:
        if out.shape == src.shape:
            broadcast(ctx, [src], out)


@register_op(names=BINARY)
def _binary(ctx: RuleContext) -> None:
    # a: A, b: B (broadcastable) -> y: broadcast(A, B)
    broadcast(ctx, ctx.inputs, ctx.outputs[0])  # every tensor argument, clamp's tensor bounds included


@register_op(names=["triu", "tril"])
def _triangle(ctx: RuleContext) -> None:
    """triu/tril keep entries by position on the last two axes: those axes cannot grow."""
    # x: (*, M, N) -> y: (*, M, N)
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    ctx.same_shape(src, out)
    for d in (-1, -2):
        if len(src.shape) >= 2 and src.shape[d] > 1:
            ctx.fix(src.dims[d], f"'{ctx.record.name}' keeps entries by position on this axis")


@register_op(names=["prelu"])
def _prelu(ctx: RuleContext) -> None:
    # x: (N, C, *S) or (C,)  weight: (C,) or (1,) -> y: like x
    x, w = ctx.value(ctx.arg(0, "input")), ctx.value(ctx.arg(1, "weight"))
    ctx.same_shape(x, ctx.outputs[0])
    if w is not None and w.shape[0] > 1:
        ctx.per_unit(w, 0, x.dim(1) if len(x.shape) >= 2 else x.dim(0))
        ctx.set_attr("num_parameters", x.dim(1) if len(x.shape) >= 2 else x.dim(0))


_FACTORIES = """zeros ones empty full rand randn randint arange range linspace logspace eye tensor as_tensor
scalar_tensor new_zeros new_ones new_full new_empty new_tensor empty_strided randperm""".split()


@register_op(names=_FACTORIES)
def _factory(ctx: RuleContext) -> None:
    # (sizes given as numbers) -> y: sizes
    for out in ctx.outputs:
        for s in out.dims:
            if s.size > 1:
                ctx.block(s, f"tensor created by '{ctx.record.name}' with a hard-coded size")


@register_op(names="zeros_like ones_like empty_like full_like rand_like randn_like randint_like".split())
def _like(ctx: RuleContext) -> None:
    # x: S -> y: S
    ctx.same_shape(ctx.value(ctx.args[0]), ctx.outputs[0])


@register_op(names=["glu"])
def _glu(ctx: RuleContext) -> None:
    # x: (*, 2D, *) -> y: (*, D, *): the two halves of axis `dim` are one axis
    src, out = ctx.value(ctx.args[0]), ctx.outputs[0]
    d = ctx.arg(1, "dim", -1) % len(src.shape)
    a, b = ctx.split_sum(src.dims[d], [src.shape[d] // 2] * 2)
    ctx.same(a, b)
    for i in range(len(src.shape)):
        ctx.same(out.dims[i], a if i == d else src.dims[i])
