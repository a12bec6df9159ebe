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
from .catalogue import VIEWS
from .graph import COPY, FANIN, AttrSetter, Link, OpRecord, Producer, Trace, Value, _flat_tensors
from .space import Space

Rule = Callable[["RuleContext"], None]


class Table:
    """A registry table in which a registration can be undone: registering over an entry keeps the one it replaces,
    and removing the newer entry puts the older one back (a rule overridden for a while, by a user or a test, leaves
    the built-in rule as it was)."""

    def __init__(self) -> None:
        self._stacks: dict[Any, list[Any]] = {}

    def add(self, key: Any, value: Any) -> None:
        self._stacks.setdefault(key, []).append(value)

    def remove(self, key: Any) -> bool:
        """Drop the newest entry for `key` (the one before it, if any, is in force again); False if there is none."""
        stack = self._stacks.get(key)
        if not stack:
            return False
        stack.pop()
        if not stack:
            del self._stacks[key]
        return True

    def get(self, key: Any, default: Any = None) -> Any:
        stack = self._stacks.get(key)
        return stack[-1] if stack else default

    def __contains__(self, key: Any) -> bool:
        return key in self._stacks

    def __bool__(self) -> bool:
        return bool(self._stacks)

    def items(self) -> list[tuple[Any, Any]]:
        return [(k, v[-1]) for k, v in self._stacks.items()]


_OP_RULES = Table()  # torch function object -> rule
_OP_RULES_BY_NAME = Table()  # op name (`op_name`) -> rule
_LAYER_RULES = Table()  # module type -> rule


def register_op(*funcs: Any, names: Sequence[str] = ()) -> Callable[[Rule], Rule]:
    """Register a rule for torch functions (objects such as ``torch.nn.functional.linear``) or op names.

    Names match ``func.__name__`` with dunders and a trailing ``_`` stripped, so ``"add"`` covers ``torch.add``,
    ``Tensor.add``, ``Tensor.add_``, ``Tensor.__add__``, ``__radd__`` and ``__iadd__``. A rule for a function object
    wins over a rule for its name; a rule registered over another replaces it until `unregister_op` removes it.

    Example: ``torch.special.expit`` has no built-in rule, so the features it touches cannot grow; a rule saying
    that it is element-wise lets them:

        >>> import torch, netgraft
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.b(torch.special.expit(self.a(x)))
        >>> x = (torch.randn(2, 3),)
        >>> [g.name for g in netgraft.groups(Net(), x) if g.growable and g.name]
        []
        >>> @netgraft.register_op(torch.special.expit)
        ... def _expit(ctx):  # x: S -> y: S, element-wise: each axis of y is the same axis of x
        ...     ctx.same_shape(ctx.inputs[0], ctx.outputs[0])
        >>> [g.name for g in netgraft.groups(Net(), x) if g.growable and g.name]
        ['a']
        >>> netgraft.unregister_op(torch.special.expit)
        1
    """

    def deco(rule: Rule) -> Rule:
        for f in funcs:
            _OP_RULES.add(f, rule)
        for n in names:
            _OP_RULES_BY_NAME.add(n, rule)
        return rule

    return deco


def unregister_op(*funcs: Any, names: Sequence[str] = ()) -> int:
    """Remove the newest rule registered for each function object and op name (with `register_op`): the rule it
    replaced, if any (a built-in one), is in force again. Returns how many rules were removed.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> x = (torch.randn(2, 3),)
        >>> @netgraft.register_op(torch.tanh)
        ... def _opaque(ctx):  # as if netgraft could not see what tanh does
        ...     ctx.block_all("tanh is opaque in this example")
        >>> [g.name for g in netgraft.groups(m, x) if g.growable and g.name]
        []
        >>> netgraft.unregister_op(torch.tanh)  # the built-in rule for 'tanh' applies again
        1
        >>> [g.name for g in netgraft.groups(m, x) if g.growable and g.name]
        ['0']
    """
    return sum(_OP_RULES.remove(f) for f in funcs) + sum(_OP_RULES_BY_NAME.remove(n) for n in names)


def register_layer(*module_types: type) -> Callable[[Rule], Rule]:
    """Register a rule for module types: such modules are traced as one op (their forward is not looked into).

    Example: a layer whose forward calls an op netgraft has no rule for:

        >>> import torch, netgraft
        >>> class Gain(torch.nn.Module):
        ...     def __init__(self, n):
        ...         super().__init__()
        ...         self.gain = torch.nn.Parameter(torch.ones(n))
        ...     def forward(self, x):
        ...         return torch.ops.aten.mul.Tensor(x, self.gain)
        >>> @netgraft.register_layer(Gain)
        ... def _gain(ctx):  # x: (*, D)  gain: (D,) -> y: (*, D)
        ...     ctx.same_shape(ctx.inputs[0], ctx.outputs[0])
        ...     ctx.per_unit(ctx.param("gain"), 0, ctx.inputs[0].dim(-1))  # gain[i] belongs to feature i
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), Gain(4), torch.nn.Linear(4, 2))
        >>> netgraft.widen(m, {"0": 6}, example_inputs=(torch.randn(2, 3),))[1].gain.shape
        torch.Size([6])
        >>> netgraft.unregister_layer(Gain)
        1
    """

    def deco(rule: Rule) -> Rule:
        for t in module_types:
            _LAYER_RULES.add(t, rule)
        return rule

    return deco


def unregister_layer(*module_types: type) -> int:
    """Remove the newest layer rule registered for each module type (with `register_layer`); such modules are then
    traced through their forward again. Returns how many rules were removed.

    Example:
        >>> import torch, netgraft
        >>> @netgraft.register_layer(torch.nn.Identity)
        ... def _identity(ctx):  # x: S -> y: S
        ...     ctx.same_shape(ctx.inputs[0], ctx.outputs[0])
        >>> netgraft.unregister_layer(torch.nn.Identity)
        1
        >>> netgraft.unregister_layer(torch.nn.Identity)  # nothing left to remove
        0
    """
    return sum(_LAYER_RULES.remove(t) for t in module_types)


def has_op_rule(func: Any = None, name: str | None = None) -> bool:
    """True if a rule is registered for the function object `func` or the op name `name`."""
    return (func is not None and func in _OP_RULES) or (name is not None and name in _OP_RULES_BY_NAME)


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
_ALIAS_OPS = VIEWS


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
