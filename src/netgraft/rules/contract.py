"""Coupling rules for contractions: matmul/mm/bmm, einsum, addmm, and `contract` (a product summed over one axis),
which the linear and attention rules share."""

from __future__ import annotations

import torch

from ..core.graph import COPY, Value
from ..core.registry import _IGNORE, RuleContext, register_op
from ..core.space import Space
from .pointwise import broadcast


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
    # a: (*B, M, K)  b: (*B, K, N) -> y: (*B, M, N);  1-D a or b: that axis is dropped
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
    # "ij,jk->ik": each letter is one axis; letters missing from the output are summed over
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
    # bias: (N,) or (M, N)  x: (M, K)  w: (K, N) -> y: (M, N)
    bias, x, w = (ctx.value(ctx.arg(i, n)) for i, n in enumerate(("input", "mat1", "mat2")))
    out = ctx.outputs[0]
    contract(ctx, x, -1, w, 0)
    _free(ctx, x, 0, out.dim(0))
    _free(ctx, w, 1, out.dim(1))
    if w.param is not None:
        ctx.produces(out.dim(1))
    broadcast(ctx, [bias], out)
