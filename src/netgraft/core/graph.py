"""The traced graph: values (one unit space per axis), the ops that produced and consumed them, module calls, and
what the rules recorded (roles of parameter axes, producers, links, attributes to update)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from . import space as sp
from .probes import Probe
from .space import Space
from .state import module_paths

COPY = "copy"  # axis holds one value per unit: gathered when units are replicated (weight rows, biases, BN stats)
FANIN = "fanin"  # axis is summed over: gathered and split between the copies of a unit (next layer's columns)


@dataclass(eq=False)
class Value:
    """A traced tensor: one `Space` per axis, and (for parameters and views of them) the tensor it aliases."""

    shape: tuple[int, ...]
    dims: list[Space]
    param: str | None = None  # qualified name of the parameter/buffer this value is (a view of)
    param_axes: tuple[int | None, ...] = ()  # for each axis of this value, the parameter axis it is
    producer: OpRecord | None = None
    consumers: list[OpRecord] = field(default_factory=list)
    dtype: torch.dtype | None = None

    def dim(self, axis: int) -> Space:
        return self.dims[axis % len(self.dims)] if self.dims else Space(1)


@dataclass(eq=False)
class OpRecord:
    name: str
    module: str
    inputs: list[Value]
    outputs: list[Value]
    roles: list[tuple[str, int, str]] = field(default_factory=list)  # (param, axis, role) set by this op
    # Top-level arguments as the op received them, tensors replaced by their `Value`s (deepen reads an activation's
    # bounds, a linear's weight and bias through these; nested tensors - torch.cat's list - are left out).
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def where(self) -> str:
        return f"op '{self.name}' in module '{self.module or '<root>'}'"

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Argument `index` (positional) or `name` (keyword), else `default`."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)


@dataclass(eq=False)
class ModuleCall:
    """One call of a module during the trace: the values it received and returned (None: not a traced tensor)."""

    path: str
    module: nn.Module
    inputs: list[Value | None]
    outputs: list[Value | None]
    output_is_tensor: bool


@dataclass
class Producer:
    key: str  # module path (or parameter name) a user passes in `widths`
    space: Space
    where: str


@dataclass
class Link:
    """Two axes whose total sizes must stay equal (e.g. MultiheadAttention: embed_dim == num_heads*head_dim)."""

    primary: Space
    dependent: Space
    reason: str


@dataclass
class AttrSetter:
    module: str
    attr: str
    spaces: tuple[Space, ...] | Space  # attribute becomes the new size (or tuple of sizes)


class TracedInt(int):
    """An int whose origin the trace follows: a module attribute (``self.n_head``), a tensor size (``x.size(-1)``) or
    arithmetic on them (``C // self.n_head``). While a model is traced its int attributes and the sizes it reads are
    these; an op rule then sees where a shape argument came from (`sources`: ``("attr", module path, name)`` or
    ``("size", Space)``; `direct`: the one source the int *is*, None when computed). Behaves as the int it equals;
    copies and pickles as a plain int."""

    sources: frozenset
    direct: tuple | None

    def __new__(cls, value: int = 0, sources: frozenset | set = frozenset(), direct: tuple | None = None):
        self = super().__new__(cls, value)
        self.sources = frozenset(sources)
        self.direct = direct
        return self

    def __reduce__(self):  # noqa: ANN204 - deepcopy/pickle: a plain int, never a netgraft type in a checkpoint
        return (int, (int(self),))

    def attrs(self) -> list[tuple[str, str]]:
        """(module path, attribute name) of every attribute this int was computed from."""
        return sorted((m, a) for kind, *rest in self.sources if kind == "attr" for m, a in [rest])


def _traced_arith(name: str):  # noqa: ANN202
    base = getattr(int, name)

    def op(self, *other):  # noqa: ANN001, ANN202
        out = base(self, *other)
        if type(out) is not int:  # NotImplemented, a float (true division), a bool (comparisons are not wrapped)
            return out
        return TracedInt(out, self.sources.union(*(o.sources for o in other if isinstance(o, TracedInt))))

    op.__name__ = name
    return op


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__rfloordiv__",
              "__mod__", "__rmod__", "__neg__", "__pos__", "__abs__"):
    setattr(TracedInt, _name, _traced_arith(_name))


@dataclass(eq=False)
class Factoring:
    """A reshape that views one axis as a product of factors (heads x head_dim, groups x channels per group), with
    where the code took each factor's size from; which factor may grow is decided in `Coupling`."""

    module: str  # path of the module whose forward ran the reshape
    where: str
    whole: Space  # the axis being factored (a product when several input axes merge first)
    factors: list[Space]  # the output axes, outermost first (size-1 axes left out)
    sizes: list[int]
    given: list[int | None]  # the size argument of each factor as the code passed it (-1: inferred; None: unknown)


class Trace:
    """Everything `couple` learned from one run: parameter axes, roles, producers, links and attributes."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.module_names: dict[int, str] = module_paths(model)
        self.tensors: dict[int, tuple[str, torch.Tensor]] = {}
        for n, p in model.named_parameters(remove_duplicate=True):
            self.tensors.setdefault(id(p), (n, p))
        for n, b in model.named_buffers(remove_duplicate=True):
            self.tensors.setdefault(id(b), (n, b))
        self.tensors_by_name: dict[str, torch.Tensor] = {n: t for n, t in self.tensors.values()}
        self.param_dims: dict[str, list[Space]] = {}
        self.roles: dict[tuple[str, int], set[str]] = {}
        self.role_ops: dict[tuple[str, int], list[OpRecord]] = {}
        self.producers: list[Producer] = []
        self.links: list[Link] = []
        self.constrained: list[Space] = []  # spaces given constraints (composites may be referenced nowhere else)
        self.attrs: list[AttrSetter] = []
        self.factorings: list[Factoring] = []  # reshapes that factor an axis (attention heads): see `Coupling`
        self.factorings_resolved = False  # `Coupling` decides them once (it adds constraints to this trace)
        self.ops: list[OpRecord] = []
        self.calls: list[ModuleCall] = []  # in the order the calls returned
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.values: dict[int, tuple[torch.Tensor, Value]] = {}
        self.module_stack: list[str] = []
        self.output_tensors: list[torch.Tensor] = []
        self.prefix_uses: list[tuple[Space, int, str]] = []  # (axis, n, where): code reads the first n units
        self.uniform_if_used: list[tuple[Value, Space, str]] = []  # constraints that bind only if a value is used
        self.probes: list[Probe] = []  # inputs the model accepted and took the traced path on (example_inputs first)
        self.probe_outputs: list[list[torch.Tensor]] = []  # the source's eval-mode outputs on each probe

    # -- values ---------------------------------------------------------------------------------------------
    def param_value(self, name: str, t: torch.Tensor) -> Value:
        dims = self.param_dims.get(name)
        if dims is None:
            dims = [Space(n, origin=f"axis {i} of '{name}'") for i, n in enumerate(t.shape)]
            self.param_dims[name] = dims
        return Value(tuple(t.shape), list(dims), param=name, param_axes=tuple(range(t.dim())), dtype=t.dtype)

    def value_of(self, t: torch.Tensor, where: str) -> Value:
        hit = self.values.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        known = self.tensors.get(id(t))
        if known is not None:
            return self.param_value(*known)
        # A tensor that is neither traced, nor a parameter/buffer, nor an input: a constant stored on the model
        # or created outside torch functions. Its sizes are frozen, so whatever it couples to cannot grow.
        v = self.new_value(t)
        for s in v.dims:
            if s.size > 1:
                sp.block(s, f"constant tensor of shape {tuple(t.shape)} used by {where} (not a parameter/buffer)")
        return v

    def peek(self, t: torch.Tensor) -> Value | None:
        """The value of a tensor already seen (traced, parameter or buffer), without registering a new one."""
        hit = self.values.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        known = self.tensors.get(id(t))
        return self.param_value(*known) if known is not None else None

    def new_value(self, t: torch.Tensor, origin: str = "") -> Value:
        v = Value(tuple(t.shape), [Space(n, origin=origin) for n in t.shape], dtype=t.dtype)
        self.values[id(t)] = (t, v)
        return v

    def bind(self, t: torch.Tensor, v: Value) -> None:
        self.values[id(t)] = (t, v)

    # -- roles and producers ------------------------------------------------------------------------------------
    def add_role(self, v: Value, axis: int, role: str, op: OpRecord) -> None:
        axis %= len(v.shape)
        if v.param is None or v.param_axes[axis] is None:
            if role == FANIN:
                sp.block(
                    v.dims[axis],
                    f"{op.where()} sums over axis {axis} of a tensor computed in forward (not a parameter); "
                    "netgraft cannot split it between copies",
                )
            return
        key = (v.param, v.param_axes[axis])
        self.roles.setdefault(key, set()).add(role)
        self.role_ops.setdefault(key, []).append(op)
        op.roles.append((v.param, v.param_axes[axis], role))

    def current_module(self) -> str:
        return self.module_stack[-1] if self.module_stack else ""


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(obj)
    return [x for x in leaves if isinstance(x, torch.Tensor)]
