"""Couple: turn a trace into coupled dimensions ("groups") with their members and constraints, and the public
`groups()` table of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UnknownNameError
from . import space as sp
from .graph import Trace
from .guards import check_model
from .space import Space, total_size
from .trace import trace


@dataclass
class Member:
    """One axis of one parameter or buffer that lies along a group."""

    tensor: str  # qualified name of the parameter/buffer
    axis: int
    roles: tuple[str, ...]  # "copy" (one entry per unit) and/or "fanin" (summed over)
    layout: str = ""  # "" when the axis is exactly the group; else how the group sits inside the axis

    def __str__(self) -> str:
        lay = f" {self.layout}" if self.layout else ""
        return f"{self.tensor}[axis {self.axis}] ({'+'.join(self.roles) or 'no role'}){lay}"


@dataclass
class Group:
    """A coupled dimension: every member must change size together."""

    index: int
    leaf: Space
    size: int  # units of this group (e.g. channels; heads for attention heads)
    name: str = ""  # key to use in `widths` (module path that produces it), "" if none
    aliases: list[str] = field(default_factory=list)
    unit: int = 1  # entries of the named producer's dimension per unit (head_dim for heads, 1 for channels)
    unit_reason: str = ""  # why the producer's dimension grows in units (e.g. "Conv2d 'g' has groups=4")
    members: list[Member] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    uniform: list[str] = field(default_factory=list)
    dependent: bool = False  # size follows another group through a link (e.g. attention heads)
    producers: list[str] = field(default_factory=list)  # every key whose dimension contains this group

    @property
    def growable(self) -> bool:
        return not self.fixed and not self.blocked

    @property
    def display_size(self) -> int:
        return self.size * self.unit

    def constraints(self) -> list[str]:
        out = []
        if self.uniform:
            out.append(f"multiple of {self.display_size} (uniform replication: {self.uniform[0]})")
        if self.unit > 1:
            out.append(f"multiple of {self.unit}: {self.unit_reason or f'grows in units of {self.unit}'}")
        out += [f"fixed: {r}" for r in self.fixed[:2]]
        out += [f"unsupported: {r}" for r in self.blocked[:2]]
        return out

    def valid_sizes(self, count: int = 5) -> list[int]:
        """The next valid sizes of the named dimension, ignoring links to other groups."""
        if not self.growable:
            return []
        step = self.size if self.uniform else 1
        return [(self.size + step * k) * self.unit for k in range(1, count + 1)]


def _walk(space: Space, fixed: list[str], blocked: list[str], uniform: list[str], acc: dict, seen: set) -> None:
    r = sp.find(space)
    fixed, blocked = fixed + r.fixed, blocked + r.blocked
    uniform = uniform + r.uniform
    key = (r.id, len(fixed), len(blocked), len(uniform))
    if key in seen:
        return
    seen.add(key)
    if r.kind == "leaf":
        f, b, u = acc.setdefault(r.id, (r, [], [], []))[1:]
        for src, dst in ((fixed, f), (blocked, b), (uniform, u)):
            for reason in src:
                if reason not in dst:
                    dst.append(reason)
        return
    if uniform and r.kind == "sum":
        blocked = blocked + [f"uniform replication over a concatenation ({uniform[0]})"]
        uniform = []
    for p in r.parts:
        _walk(p, fixed, blocked, uniform, acc, seen)


def _slope(space: Space, leaf: Space) -> int:
    """How many entries of `space` one unit of `leaf` adds (head_dim for heads, 2 for a fused gate/up)."""

    return total_size(space, {leaf.id: leaf.size + 1}) - total_size(space, {leaf.id: leaf.size})


def _layout(space: Space, leaf: Space) -> str:
    r = sp.find(space)
    if r is leaf:
        return ""
    return f"in a {r.size}-wide {'product' if r.kind == 'prod' else 'concatenation'} layout"


class Coupling:
    """Groups of one traced model, and how each parameter axis and producer maps onto them."""

    def __init__(self, trace: Trace):
        self.trace = trace
        outputs = {id(v) for v in trace.outputs}
        for value, space, reason in trace.uniform_if_used:
            if value.consumers or id(value) in outputs:
                sp.require_uniform(space, reason)
                trace.constrained.append(space)
        roots: dict[int, Space] = {}
        for dims in trace.param_dims.values():
            for s in dims:
                roots.setdefault(sp.find(s).id, sp.find(s))
        for s in trace.constrained:
            roots.setdefault(sp.find(s).id, sp.find(s))
        for op in trace.ops:
            for v in [*op.inputs, *op.outputs]:
                for s in v.dims:
                    roots.setdefault(sp.find(s).id, sp.find(s))
        acc: dict[int, tuple] = {}
        seen: set = set()
        for r in roots.values():
            _walk(r, [], [], [], acc, seen)
        self.status = {i: (f, b, u) for i, (_, f, b, u) in acc.items()}

        # members: every parameter axis, attributed to the leaves under it
        members: dict[int, list[Member]] = {}
        for name, dims in trace.param_dims.items():
            for axis, s in enumerate(dims):
                roles = tuple(sorted(trace.roles.get((name, axis), ())))
                for leaf in sp.leaves(s):
                    members.setdefault(leaf.id, []).append(Member(name, axis, roles, _layout(s, leaf)))
        self._block_ambiguous_products(roots.values(), members)

        leaves_in_order: list[Space] = []
        for dims in trace.param_dims.values():
            for s in dims:
                for leaf in sp.leaves(s):
                    if leaf.id in members and leaf not in leaves_in_order:
                        leaves_in_order.append(leaf)
        self.groups: list[Group] = []
        self.by_leaf: dict[int, Group] = {}
        for leaf in leaves_in_order:
            if leaf.size == 1:  # broadcast axes of parameters (a [1, T, D] positional embedding's first axis)
                continue
            f, b, u = self.status.get(leaf.id, ([], [], []))
            g = Group(len(self.groups), leaf, leaf.size, members=members[leaf.id], fixed=f, blocked=b, uniform=u)
            self.groups.append(g)
            self.by_leaf[leaf.id] = g
        self._name_groups()
        for link in trace.links:
            if sp.find(link.primary) is sp.find(link.dependent):
                continue  # the pieces of a chunk that meet again (tanh(f) * sigmoid(g)): a link to itself binds nothing
            for leaf in self.free_leaves(link.dependent):
                self.by_leaf[leaf.id].dependent = True

    def free(self, leaf: Space) -> bool:
        f, b, _ = self.status.get(leaf.id, ([], [], []))
        return not f and not b and leaf.id in self.by_leaf

    def free_leaves(self, space: Space) -> list[Space]:
        return [x for x in sp.leaves(space) if self.free(x)]

    def _block_ambiguous_products(self, roots, members: dict[int, list[Member]]) -> None:
        """A reshape that splits a growable axis into two growable factors (a channel shuffle): which factor is
        the unit cannot be known, so both are blocked."""
        def free(leaf: Space) -> bool:
            f, b, _ = self.status.get(leaf.id, ([], [], []))
            return not f and not b and leaf.id in members

        todo = list(roots)
        seen: set[int] = set()
        while todo:
            r = sp.find(todo.pop())
            if r.id in seen or r.kind == "leaf":
                continue
            seen.add(r.id)
            todo += r.parts
            if r.kind != "prod":
                continue
            factor_free = [[x for x in sp.leaves(p) if free(x)] for p in r.parts]
            if sum(1 for fl in factor_free if fl) >= 2:
                sizes = tuple(sp.find(p).size for p in r.parts)
                reason = (f"an axis of size {r.size} is viewed as {sizes} ({r.origin}) and more than one factor "
                          "could grow (e.g. a channel shuffle): netgraft cannot tell which factor is the unit")
                for fl in factor_free:
                    for leaf in fl:
                        self.status[leaf.id][1].append(reason)

    def _name_groups(self) -> None:
        self.producer_keys: dict[str, list[Space]] = {}
        for p in self.trace.producers:
            spaces = self.producer_keys.setdefault(p.key, [])
            if all(sp.find(s) is not sp.find(p.space) for s in spaces):
                spaces.append(p.space)
        for key, spaces in self.producer_keys.items():
            for s in spaces:
                leaves = [x for x in sp.leaves(s) if x.id in self.by_leaf]
                for x in leaves:
                    if key not in self.by_leaf[x.id].producers:
                        self.by_leaf[x.id].producers.append(key)
                free = [x for x in leaves if self.free(x)] or leaves
                if len(free) != 1:
                    continue
                g = self.by_leaf[free[0].id]
                if not g.name:
                    g.name = key
                    g.unit = _slope(s, free[0])
                    others = [self.status.get(x.id, ([], [], []))[0] for x in sp.leaves(s) if x is not free[0]]
                    g.unit_reason = next((f[0] for f in others if f), "")
                elif key not in g.aliases and key != g.name:
                    g.aliases.append(key)


def couple(model: nn.Module, example_inputs: Any) -> Coupling:
    """Trace `model` and return its coupled dimensions (the first two steps of every operator)."""
    return Coupling(trace(model, example_inputs))


class GroupTable(list):
    """The coupled dimensions of a model. `print()` shows a table; items are `Group`s."""

    def __str__(self) -> str:
        rows = [("#", "name (key for widths)", "size", "grow", "members", "constraints")]
        hidden = [g for g in self if not (g.name or g.growable or g.blocked)]
        for g in self:
            if g in hidden:
                continue
            status = "yes" if g.growable and g.name and not g.dependent else (
                "linked" if g.growable and g.dependent else "no")
            name = g.name or f"({g.members[0].tensor})"
            cons = "; ".join(g.constraints()) or "-"
            rows.append((str(g.index), name, str(g.display_size), status, str(len(g.members)), cons))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r[:5], widths, strict=True)] + [r[5][:140]]
            lines.append("  ".join(cells).rstrip())
            if r is rows[0]:
                lines.append("-" * min(sum(widths) + 30, 160))
        if hidden:
            lines.append(f"({len(hidden)} fixed axes not shown: kernel, input/output and head_dim axes; see .hidden())")
        return "\n".join(lines)

    def hidden(self) -> list[Group]:
        """Groups not shown by print(): fixed axes nobody can name (kernel axes, model input/output...)."""
        return [g for g in self if not (g.name or g.growable or g.blocked)]

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for g in self:
                if g.name == key or key in g.aliases:
                    return g
            raise UnknownNameError(f"no group named '{key}'")
        return super().__getitem__(key)


def groups(model: nn.Module, example_inputs: Any) -> GroupTable:
    """The coupled dimensions of `model`: what can be widened, what must change together, and why not.

    Each `Group` has `name` (the key to use in `widen`'s `widths`), `display_size`, `members` (parameter, axis,
    role), `constraints()` and `growable`.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> table = netgraft.groups(m, (torch.randn(4, 3),))
        >>> [(g.name, g.display_size) for g in table if g.growable and g.name]
        [('0', 8)]
    """
    check_model(model, "groups")
    return GroupTable(couple(model, example_inputs).groups)
