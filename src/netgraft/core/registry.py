"""The extension point: rules that say how an op or a layer couples the axes of its tensors.

Two kinds of rule share one vocabulary (`RuleContext`):

- **op rules**, keyed by torch function (``F.linear``, ``torch.cat``, ``Tensor.view``...). netgraft ships rules for
  the ops that ordinary models use; an op with no rule blocks every axis it touches.
- **layer rules**, keyed by module type (looked up through the class hierarchy). A module with a layer rule is traced
  as a single op: use this for custom layers whose forward calls something netgraft cannot see through (a custom
  CUDA kernel, an op with no rule).

Example: a custom layer ``y = my_kernel(x, self.gain)`` that scales each feature of ``x`` by ``gain``::

    @netgraft.register_layer(ScaledKernel)
    def _scaled_kernel(ctx: netgraft.RuleContext) -> None:
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.same_shape(x, y)                           # y has x's axes
        ctx.per_unit(ctx.param("gain"), 0, x.dim(-1))  # gain[i] belongs to feature i: copied with it

A rule describes *couplings* only; netgraft derives every resize (index maps, fan-in splits, attributes) from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidRequestError
from . import space as sp
from .graph import COPY, FANIN, AttrSetter, Link, OpRecord, Producer, Trace, Value, _flat_tensors
from .space import Space

Rule = Callable[["RuleContext"], None]

_OP_RULES: dict[Any, Rule] = {}
_OP_RULES_BY_NAME: dict[str, Rule] = {}
_LAYER_RULES: dict[type, Rule] = {}


def register_op(*funcs: Any, names: Sequence[str] = ()) -> Callable[[Rule], Rule]:
    """Register a rule for torch functions (objects such as ``torch.nn.functional.linear``) or op names.

    Names match ``func.__name__`` with dunders and a trailing ``_`` stripped, so ``"add"`` covers ``torch.add``,
    ``Tensor.add``, ``Tensor.add_``, ``Tensor.__add__``, ``__radd__`` and ``__iadd__``.

    Example::

        @netgraft.register_op(my_lib.fused_bias_gelu)
        def _fused(ctx):
            ctx.same_shape(ctx.inputs[0], ctx.outputs[0])
            ctx.per_unit(ctx.inputs[1], 0, ctx.outputs[0].dim(-1))
    """

    def deco(rule: Rule) -> Rule:
        for f in funcs:
            _OP_RULES[f] = rule
        for n in names:
            _OP_RULES_BY_NAME[n] = rule
        return rule

    return deco


def register_layer(*module_types: type) -> Callable[[Rule], Rule]:
    """Register a rule for module types: such modules are traced as one op (their forward is not looked into).

    Example::

        @netgraft.register_layer(MyScale)
        def _my_scale(ctx):
            ctx.same_shape(ctx.inputs[0], ctx.outputs[0])
            ctx.per_unit(ctx.param("scale"), 0, ctx.inputs[0].dim(1))
    """

    def deco(rule: Rule) -> Rule:
        for t in module_types:
            _LAYER_RULES[t] = rule
        return rule

    return deco


def unregister_layer(module_type: type) -> None:
    """Remove a layer rule (mainly for tests)."""
    _LAYER_RULES.pop(module_type, None)


def layer_rule_for(module: nn.Module) -> Rule | None:
    if not _LAYER_RULES:
        return None
    for cls in type(module).__mro__:
        rule = _LAYER_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def op_name(func: Any) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":  # tensor properties (x.T, x.data) arrive as descriptor getters
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in _BINARY_DUNDER:
            name = name[1:]
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


_BINARY_DUNDER = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"}


class RuleContext:
    """What a rule sees: the op's tensors as `Value`s (one `Space` per axis) and the coupling vocabulary."""

    def __init__(self, trace: Trace, record: OpRecord, args: tuple, kwargs: dict, module: nn.Module | None):
        self.trace = trace
        self.record = record
        self.args = args
        self.kwargs = kwargs
        self.module = module
        self._by_id: dict[int, Value] = {}

    # -- looking at the op -------------------------------------------------------------------------------------
    @property
    def inputs(self) -> list[Value]:
        return self.record.inputs

    @property
    def outputs(self) -> list[Value]:
        return self.record.outputs

    def running_module(self) -> nn.Module | None:
        """The module whose forward runs this op (None if it is not part of the model)."""
        try:
            return self.trace.model.get_submodule(self.record.module) if self.record.module else self.trace.model
        except AttributeError:
            return None

    def where(self) -> str:
        return self.record.where()

    def arg(self, pos: int, name: str, default: Any = None) -> Any:
        """An argument of the op, given positionally or by keyword."""
        if name in self.kwargs:
            return self.kwargs[name]
        if pos is not None and len(self.args) > pos:
            return self.args[pos]
        return default

    def value(self, t: torch.Tensor | None) -> Value | None:
        """The traced value of a tensor argument of this op (None for None)."""
        if t is None:
            return None
        return self._by_id.get(id(t)) or self.trace.value_of(t, self.where())

    def param(self, name: str) -> Value | None:
        """A parameter or buffer of the module this layer rule is for, by attribute name (None if absent)."""
        if self.module is None:
            raise InvalidRequestError("param() is for layer rules")
        t = getattr(self.module, name, None)
        return None if t is None else self.value(t)

    # -- coupling vocabulary -------------------------------------------------------------------------------------
    def same(self, a: Space, b: Space) -> Space:
        """`a` and `b` are one axis: their units correspond one to one."""
        return sp.union(a, b, self.where())

    def same_shape(self, a: Value, b: Value) -> None:
        """Every axis of `a` is the same axis of `b` (elementwise ops)."""
        for x, y in zip(a.dims, b.dims, strict=True):
            self.same(x, y)

    def per_unit(self, v: Value | None, axis: int, space: Space) -> None:
        """Axis `axis` of tensor `v` holds one entry per unit of `space` (bias, weight row, BN statistic)."""
        if v is None:
            return
        self.same(v.dim(axis), space)
        self.trace.add_role(v, axis, COPY, self.record)

    def fan_in(self, v: Value | None, axis: int, space: Space) -> None:
        """Axis `axis` of parameter `v` is summed against the units of `space` (a weight's input columns)."""
        if v is None:
            return
        self.same(v.dim(axis), space)
        self.trace.add_role(v, axis, FANIN, self.record)

    def produces(self, space: Space, key: str | None = None) -> None:
        """This module creates the units of `space`: users name it in `widths` by the module path (or `key`)."""
        key = self.record.module if key is None else key
        if key:
            self.trace.producers.append(Producer(key, space, self.where()))

    def fix(self, space: Space, reason: str) -> None:
        """`space` cannot change size for a natural reason (kernel axis, vocabulary...)."""
        sp.fix(space, f"{reason} ({self.where()})")
        self.trace.constrained.append(space)

    def block(self, space: Space, reason: str) -> None:
        """`space` touches something netgraft cannot map: widening it must be refused."""
        sp.block(space, f"{reason} ({self.where()})")
        self.trace.constrained.append(space)

    def uniform(self, space: Space, reason: str) -> None:
        """Units of `space` must all be replicated equally often (statistics over the axis are then kept)."""
        sp.require_uniform(space, f"{reason} ({self.where()})")
        self.trace.constrained.append(space)

    def split(self, space: Space, sizes: list[int], what: str = "reshape") -> list[Space]:
        """View `space` as a row-major product of axes of `sizes`; blocks it if its layout cannot follow."""
        parts = sp.split_product(space, sizes, self.where())
        if parts is None:
            self.block(space, f"{what} of an axis of size {space.size} into {tuple(sizes)} cannot be followed")
            return [Space(n) for n in sizes]
        return parts

    def split_sum(self, space: Space, sizes: list[int]) -> list[Space]:
        """View `space` as the concatenation of pieces of `sizes` (chunk/split)."""
        parts = sp.split_sum(space, sizes, self.where())
        if parts is None:
            self.block(space, f"split of an axis of size {space.size} into pieces {tuple(sizes)}")
            return [Space(n) for n in sizes]
        return parts

    def product(self, parts: list[Space]) -> Space:
        return sp.make_composite("prod", parts, self.where())

    def concat(self, parts: list[Space]) -> Space:
        return sp.make_composite("sum", parts, self.where())

    def link(self, primary: Space, dependent: Space, reason: str) -> None:
        """The total sizes of two axes must stay equal; `dependent` follows `primary`."""
        self.trace.links.append(Link(primary, dependent, f"{reason} ({self.where()})"))

    def set_attr(self, attr: str, spaces: Space | tuple[Space, ...], module: str | None = None) -> None:
        """After resizing, set `module.attr` (default: the current module) to the new size of `spaces`."""
        self.trace.attrs.append(AttrSetter(self.record.module if module is None else module, attr, spaces))

    def block_all(self, reason: str) -> None:
        for v in [*self.inputs, *self.outputs]:
            for s in v.dims:
                if s.size > 1:
                    self.block(s, reason)


def _unsupported(ctx: RuleContext) -> None:
    ctx.block_all(f"no rule for op '{ctx.record.name}'")


def dispatch_op(trace: Trace, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Called by the recorder for every torch function call during tracing."""
    outs = _flat_tensors(out)
    ins = _flat_tensors((args, kwargs))
    name = op_name(func)
    if not outs:
        if ins and name in _MUTATING_NO_RESULT:
            module = trace.current_module()
            for t in ins:
                for s in trace.value_of(t, name).dims:
                    if s.size > 1:
                        sp.block(s, f"in-place write '{name}' in module '{module}'")
        return
    rule = _OP_RULES.get(func) or _OP_RULES_BY_NAME.get(name)
    if rule is _IGNORE:
        return
    module = trace.current_module()
    _block_partial_inplace(trace, func, args, name, module)
    record = OpRecord(name, module, [], [])
    by_id: dict[int, Value] = {}
    for t in ins:
        if id(t) not in by_id:
            by_id[id(t)] = trace.value_of(t, record.where())
    record.inputs = [by_id[id(t)] for t in ins]
    record.args = tuple(by_id[id(a)] if isinstance(a, torch.Tensor) else a for a in args)
    record.kwargs = {k: by_id[id(a)] if isinstance(a, torch.Tensor) else a for k, a in kwargs.items()}
    for v in record.inputs:
        v.consumers.append(record)
    record.outputs = [trace.new_value(t, origin=record.where()) for t in outs]
    for v in record.outputs:
        v.producer = record
    trace.ops.append(record)
    ctx = RuleContext(trace, record, args, kwargs, None)
    ctx._by_id = by_id
    try:
        (rule or _unsupported)(ctx)
    except Exception as err:  # a rule's own failure must not read as the user's model failing
        raise RuleFailure(f"the rule for {record.where()} failed ({type(err).__name__}: {err})") from err
    if name in _ALIAS_OPS and record.inputs and record.inputs[0].param is not None:
        _alias(record.inputs[0], record.outputs[0])


# Ops whose output is a view or copy of their input: a parameter stays a parameter through them, so a rule further
# on (F.linear(x, self.w.t()), x + self.pos[:, :T]) can still say how each of its axes is used.
_ALIAS_OPS = set("""getitem view reshape flatten unflatten squeeze unsqueeze permute transpose t T mT swapaxes swapdims
movedim expand expand_as broadcast_to contiguous clone detach to float double half bfloat16 type type_as narrow select
data""".split())


def _alias(src: Value, out: Value) -> None:
    axes_of = {}
    for v_axis, p_axis in enumerate(src.param_axes):
        if p_axis is not None:
            axes_of.setdefault(sp.find(src.dims[v_axis]).id, p_axis)
    mapped = tuple(axes_of.get(sp.find(d).id) if d.size > 1 else None for d in out.dims)
    if any(a is not None for a in mapped):
        out.param, out.param_axes = src.param, mapped


def _block_partial_inplace(trace: Trace, func: Any, args: tuple, name: str, module: str) -> None:
    """An in-place op on part of a tensor (`h[:, :2].mul_(0)`) changes the whole tensor behind the trace's back:
    the base's axes cannot be mapped."""
    raw = getattr(func, "__name__", "")
    inplace = (raw.endswith("_") and not raw.startswith("_")) or raw.startswith("__i")
    t = args[0] if args and isinstance(args[0], torch.Tensor) else None
    base = getattr(t, "_base", None) if inplace else None
    if base is None or base.numel() == t.numel():
        return
    for s in trace.value_of(base, name).dims:
        if s.size > 1:
            sp.block(s, f"in-place '{raw}' on part of a tensor in module '{module}'")


def run_layer_rule(trace: Trace, rule: Rule, module: nn.Module, name: str, args: list, output: Any) -> None:
    """Called by the tracer when a module with a layer rule returns."""
    ins = _flat_tensors(args)
    outs = _flat_tensors(output)
    record = OpRecord(type(module).__name__, name, [], [])
    by_id = {id(t): trace.value_of(t, record.where()) for t in ins}
    for t in [*module.parameters(recurse=True), *module.buffers(recurse=True)]:
        by_id.setdefault(id(t), trace.value_of(t, record.where()))
    record.inputs = [by_id[id(t)] for t in ins]
    record.args = tuple(by_id[id(a)] if isinstance(a, torch.Tensor) else a for a in args)
    for v in record.inputs:
        v.consumers.append(record)
    record.outputs = [trace.new_value(t, origin=record.where()) for t in outs]
    for v in record.outputs:
        v.producer = record
    trace.ops.append(record)
    ctx = RuleContext(trace, record, tuple(args), {}, module)
    ctx._by_id = by_id
    rule(ctx)


class RuleFailure(Exception):
    """Raised when a rule itself breaks while tracing; turned into UnsupportedModelError by the tracer."""


def _IGNORE(ctx: RuleContext) -> None:  # noqa: N802 - sentinel rule
    """Ops with no effect on axes worth recording."""


_MUTATING_NO_RESULT = {"setitem", "set_", "index_put", "copy", "masked_scatter"}
