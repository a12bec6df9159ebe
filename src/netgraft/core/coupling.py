"""Couple: turn a trace into coupled dimensions ("groups") with their members and constraints, and the public
`groups()` table of them.

Reshapes that factor an axis (`Factoring`s: ``q.view(B, T, self.n_head, C // self.n_head)``) are decided here, once
the whole trace is known. Where more than one factor could grow, the sizes the code passed settle it:

- a factor whose size is a constant written in the code (a literal, a global) cannot grow: it is fixed;
- when the code took a factor's size from a module attribute (``self.n_head``, ``C // self.n_head``,
  ``self.head_dim``), the innermost factor is head_dim and is kept; the outer one (the head count) grows and the
  attribute that holds it is updated (REFERENCE 4.2: keep head_dim, add heads);
- `heads={module path: attribute}` names the attribute that holds a module's head count: its factor grows, the
  others are kept;
- otherwise (two attributes size two outer factors, or no attribute at all) both factors are refused, and the message
  names the attributes that could hold the count and the `heads=` argument.

Attributes follow an axis when the trace saw the code use them for its size (``self.n_head``, ``split(self.n_embd)``,
or an attribute a factor was computed from). Besides those, a module whose head count was decided may hold
attributes its forward never reads that describe the reshape (BERT's ``all_head_size``, ``num_attention_heads``):
the only one equal to the whole axis, and the only one equal to the head count with "head" in its name, follow too.
An attribute that merely equals a factor (``self.n_layer == self.n_head``), or two candidates for one role, are left
as they are (a refusal lists them as candidates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from ..errors import InvalidRequestError, UnknownNameError
from . import space as sp
from .graph import AttrSetter, Factoring, Link, Producer, Trace, TracedInt
from .guards import check_model
from .padding import PadProof
from .padding import prove as prove_padding
from .space import Space, total_size
from .trace import trace

HEADS_HINT = "heads={'<module path>': '<attribute holding its head count>'}"


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
    # proves zero padding exact (`netgraft.core.padding.prove`), run on first use; set by `Coupling`
    _prove: Callable[[], PadProof | str] | None = field(default=None, repr=False, compare=False)
    _proof: PadProof | str | None = field(default=None, repr=False, compare=False)

    @property
    def growable(self) -> bool:
        return not self.fixed and not self.blocked

    def _padding(self) -> PadProof | str:
        if self._proof is None:
            self._proof = self._prove() if self._prove is not None else "not a LayerNorm/RMSNorm dimension"
        return self._proof

    @property
    def padding(self) -> PadProof | None:
        """Under a LayerNorm/RMSNorm (a `uniform` constraint): the proof that zero padding to any size is exact, or
        None (see `padding_refused`). Integer multiples still grow by uniform replication."""
        if not self.uniform or not self.growable:
            return None
        proof = self._padding()
        return proof if isinstance(proof, PadProof) else None

    @property
    def padding_refused(self) -> str:
        """Why zero padding is not exact for this group ("" when it is, or when the group needs none)."""
        if not self.uniform or not self.growable:
            return ""
        proof = self._padding()
        return "" if isinstance(proof, PadProof) else proof

    @property
    def multiples_only(self) -> bool:
        """True when the group grows by integer multiples only (uniform replication, no provable padding)."""
        return bool(self.uniform) and self.padding is None

    @property
    def display_size(self) -> int:
        return self.size * self.unit

    def constraints(self) -> list[str]:
        out = []
        if self.uniform and self.padding is not None:
            out.append(f"any size (zero padding under {self.padding.norm}; multiples of {self.display_size} "
                       f"replicate)")
        elif self.uniform:
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
        step = self.size if self.multiples_only else 1
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
    """Groups of one traced model, and how each parameter axis and producer maps onto them.

    `heads`: ``{module path: attribute}`` naming the attribute that holds the head count of the attention a module
    runs, for reshapes the trace cannot settle (see the module docstring)."""

    def __init__(self, trace: Trace, heads: dict[str, str] | None = None):
        self.trace = trace
        outputs = {id(v) for v in trace.outputs}
        for value, space, reason in trace.uniform_if_used:
            if value.consumers or id(value) in outputs:
                sp.require_uniform(space, reason)
                trace.constrained.append(space)
        hints = _check_hints(trace.model, heads)
        # members: every parameter axis, attributed to the leaves under it
        members: dict[int, list[Member]] = {}
        for name, dims in trace.param_dims.items():
            for axis, s in enumerate(dims):
                roles = tuple(sorted(trace.roles.get((name, axis), ())))
                for leaf in sp.leaves(s):
                    members.setdefault(leaf.id, []).append(Member(name, axis, roles, _layout(s, leaf)))
        roots = self._roots()
        self.status = _statuses(roots)
        if not trace.factorings_resolved:  # decided once per trace: the decisions are constraints added to it
            trace.factorings_resolved = True
            _Factorings(self, members, hints).resolve()
            _link_attribute_setters(trace)
            roots = self._roots()
            self.status = _statuses(roots)
        elif hints:
            raise InvalidRequestError("heads= must be given when the model is traced (this trace was coupled before)")
        self._block_ambiguous_products(roots, members)

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
            if u:
                g._prove = partial(prove_padding, trace, leaf, u)
            self.groups.append(g)
            self.by_leaf[leaf.id] = g
        self._name_groups()
        for link in trace.links:
            if sp.find(link.primary) is sp.find(link.dependent) or self._factors(link.primary) == self._factors(
                    link.dependent):
                # the pieces of a chunk that meet again (tanh(f) * sigmoid(g)), or an axis and its transpose (a
                # channel shuffle's reshape back to c): a link to itself binds nothing
                continue
            for leaf in self.free_leaves(link.dependent):
                self.by_leaf[leaf.id].dependent = True

    def _roots(self) -> list[Space]:
        trace = self.trace
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
        return list(roots.values())

    def _factors(self, space: Space) -> list[tuple[int, int]]:
        """What a product's size depends on, in any order: its free groups, and the sizes of its fixed factors (two
        axes with the same list always have the same size, e.g. an axis and its transpose)."""
        out = []
        for f in sp.product_factors(space):
            r = sp.find(f)
            if r.size > 1:
                out.append((r.id, 0) if r.kind == "leaf" and self.free(r) else
                           (-1, r.size) if not self.free_leaves(r) else (r.id, 1))
        return sorted(out)

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


def couple(model: nn.Module, example_inputs: Any, heads: dict[str, str] | None = None) -> Coupling:
    """Trace `model` and return its coupled dimensions (the first two steps of every operator). `heads`: see
    `Coupling`."""
    return Coupling(trace(model, example_inputs), heads)


def _statuses(roots: list[Space]) -> dict[int, tuple[list[str], list[str], list[str]]]:
    """(fixed, blocked, uniform) reasons of every leaf under `roots`, inherited from the composites above it."""
    acc: dict[int, tuple] = {}
    seen: set = set()
    for r in roots:
        _walk(r, [], [], [], acc, seen)
    return {i: (f, b, u) for i, (_, f, b, u) in acc.items()}


def _attr_value(model: nn.Module, path: str, attr: str) -> Any:
    try:
        return getattr(model.get_submodule(path) if path else model, attr, None)
    except AttributeError:
        return None


def _check_hints(model: nn.Module, heads: Any) -> dict[str, str]:
    if heads is None:
        return {}
    if not isinstance(heads, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in heads.items()):
        raise InvalidRequestError(f"heads must be a dict {{module path: attribute name}} ({HEADS_HINT}), got "
                                  f"{heads!r}")
    paths = {n for n, _ in model.named_modules()}
    for path, attr in heads.items():
        if path not in paths:
            raise UnknownNameError(f"heads: no module named '{path}' in the model")
        value = _attr_value(model, path, attr)
        if "." in attr:
            raise InvalidRequestError(f"heads: '{attr}' is not an attribute of module '{path}' itself; name the module "
                                      f"that holds the head count (netgraft updates module attributes, not configs)")
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequestError(f"heads: '{path}'.{attr} is {value!r}, not an int attribute holding a head "
                                      f"count")
    return dict(heads)


def _ints(args: Any) -> list[TracedInt]:
    """The traced ints among an op's arguments (sizes in tuples and lists included)."""
    out: list[TracedInt] = []
    for a in args:
        if isinstance(a, TracedInt):
            out.append(a)
        elif isinstance(a, (tuple, list)):
            out += _ints(a)
    return out


def _link_attribute_setters(trace: Trace) -> None:
    """One attribute sizing several axes (n_head for q, k and v) keeps them equally wide: it can hold one value."""
    first: dict[tuple[str, str], Space] = {}
    for setter in trace.attrs:
        if isinstance(setter.spaces, tuple):
            continue
        key = (setter.module, setter.attr)
        if key not in first:
            first[key] = setter.spaces
        elif sp.find(first[key]) is not sp.find(setter.spaces):
            trace.links.append(Link(first[key], setter.spaces, f"attribute '{key[0]}'.{key[1]} sizes both axes"))


class _Factorings:
    """Decide, for each reshape that factors an axis, which factor may grow and which attributes follow (see the
    module docstring). Adds constraints, attribute setters and producer names to the trace."""

    def __init__(self, coupling: Coupling, members: dict, hints: dict[str, str]):
        self.c = coupling
        self.tr = coupling.trace
        self.members = members
        self.hints = hints
        self.hint_used: set[str] = set()
        self.decided: list[tuple[Factoring, int]] = []  # (reshape, index of the factor that holds the head count)
        self.traced_attrs = {(g.direct[1], g.direct[2]) for f in self.tr.factorings for g in f.given
                             if isinstance(g, TracedInt) and g.direct and g.direct[0] == "attr"}

    def state(self, space: Space) -> str:
        """"free" (a unit could grow), "blocked" (could, were an op supported) or "fixed"."""
        out = "fixed"
        for leaf in sp.leaves(space):
            f, b, _ = self.c.status.get(leaf.id, ([], [], []))
            if f or leaf.id not in self.members or leaf.size == 1:
                continue
            if not b:
                return "free"
            out = "blocked"
        return out

    def value(self, key: tuple[str, str]) -> int | None:
        v = _attr_value(self.tr.model, *key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def set_attr(self, key: tuple[str, str], space: Space) -> None:
        if not any((a.module, a.attr) == key and not isinstance(a.spaces, tuple)
                   and sp.find(a.spaces) is sp.find(space) for a in self.tr.attrs):
            self.tr.attrs.append(AttrSetter(key[0], key[1], space))

    def fix(self, space: Space, reason: str) -> None:
        sp.fix(space, reason)
        self.tr.constrained.append(space)

    def resolve(self) -> None:
        for f in self.tr.factorings:
            self.one(f)
        self.describing_attributes()
        for path, attr in self.hints.items():
            if path not in self.hint_used:
                seen = [f"{tuple(f.sizes)} ({f.where})" for f in self.tr.factorings
                        if f.module == path or f.module.startswith(path + ".") or not path]
                raise InvalidRequestError(
                    f"heads: '{path}'.{attr} (= {self.value((path, attr))}) sizes no factor of a reshape traced in "
                    f"module '{path}' (reshapes into factors seen there: {seen or 'none'})")

    def one(self, f: Factoring) -> None:
        n = len(f.factors)
        count = self.follow_computed(f)
        hinted = self.hint(f)
        if hinted is not None:
            i, key = hinted
            for j in range(n):
                if j != i:
                    self.fix(f.factors[j], f"kept: heads= names '{key[0]}'.{key[1]} as the head count ({f.where})")
            self.set_attr(key, f.factors[i])
            self.name_heads(key, f.factors[i])
            self.decided.append((f, i))
            return
        # factors that could grow (blocked ones too: an unsupported op elsewhere does not settle the layout)
        open_ = [i for i in range(n) if self.state(f.factors[i]) != "fixed"]
        if len(open_) >= 2:
            for i in list(open_):
                g = f.given[i]
                if g is not None and g != -1 and not isinstance(g, TracedInt):
                    self.fix(f.factors[i], f"a size written as a constant in the code ({f.where})")
                    open_.remove(i)
        if len(open_) >= 2 and any(g.attrs() for g in f.given if isinstance(g, TracedInt)) and n - 1 in open_:
            self.fix(f.factors[n - 1], f"head_dim of hand-written attention: heads are added, head_dim is kept "
                                       f"({f.where})")
            open_.remove(n - 1)
        free = [i for i in open_ if self.state(f.factors[i]) == "free"]
        if len(free) >= 2:
            self.refuse(f, free)
            return
        if len(free) == 1 and free[0] < n - 1 and (count or any(isinstance(g, TracedInt) or g == -1 for g in f.given)):
            self.decided.append((f, free[0]))  # the outer factor grows: the head count of this reshape
        for i, key in count.items():
            if len(free) == 1 and free[0] == i and i < n - 1:
                self.name_heads(key, f.factors[i])

    def describing_attributes(self) -> None:
        """Int attributes of a module whose head count was decided, that the forward never used as a size but that
        describe the reshape (BERT's ``all_head_size``, ``num_attention_heads``): the only attribute of the module
        equal to the whole axis follows it (a width), and the only one equal to the head count whose name says so
        (``...head...``, not the head_dim) follows the heads. Two candidates for a role: both left as they are; an
        attribute that merely equals a factor (``n_layer == n_head``) is never touched."""
        used = {key for f in self.tr.factorings for g in f.given if isinstance(g, TracedInt) for key in g.attrs()}
        used |= {(a.module, a.attr) for a in self.tr.attrs}
        for op in self.tr.ops:  # read anywhere as a size (expand(..., self.n_rep, ...), repeat_interleave...)
            used |= {key for n in _ints(op.args) + _ints(list(op.kwargs.values())) for key in n.attrs()}
        for path in dict.fromkeys(f.module for f, _ in self.decided):
            try:
                m = self.tr.model.get_submodule(path) if path else self.tr.model
            except AttributeError:
                continue
            mine = [(f, i) for f, i in self.decided if f.module == path]
            heads = {f.sizes[i] for f, i in mine}
            kept = {f.sizes[j] for f, i in mine for j in range(len(f.sizes)) if j != i}
            wholes = {sp.find(f.whole).size for f, _ in mine}
            unread = {(a, v) for a, v in vars(m).items() if type(v) is int and v > 1 and not a.startswith("_")
                      and (path, a) not in used}
            # a role an attribute the forward uses already fills (split(self.n_embd)) needs no other
            filled = {sp.find(a.spaces).size for a in self.tr.attrs if a.module == path
                      and not isinstance(a.spaces, tuple)}
            for f, i in mine:
                width = sp.find(f.whole).size
                for role, value, space, clash in (("width", width, f.whole, heads | kept),
                                                  ("heads", f.sizes[i], f.factors[i], wholes | kept)):
                    if value in filled or value in clash:
                        continue
                    cands = [a for a, v in unread if v == value and (role == "width" or "head" in a.lower())]
                    if len(cands) == 1:
                        self.set_attr((path, cands[0]), space)

    def follow_computed(self, f: Factoring) -> dict[int, tuple[str, str]]:
        """Attributes the code used for a size: one used as a factor follows it; one a factor was computed from
        (``C // self.n_head``) follows the factor whose size it equals (the head count), or the whole axis.
        Returns {factor index: attribute} of the attributes found to count a factor."""
        count: dict[int, tuple[str, str]] = {}
        for i, g in enumerate(f.given):
            if not isinstance(g, TracedInt):
                continue
            if g.direct is not None and g.direct[0] == "attr":
                count.setdefault(i, (g.direct[1], g.direct[2]))
                continue
            for key in g.attrs():
                value = self.value(key)
                match = [j for j in range(len(f.factors)) if j != i and f.sizes[j] == value]
                if len(match) == 1:
                    self.set_attr(key, f.factors[match[0]])
                    count.setdefault(match[0], key)
                elif value == sp.find(f.whole).size:
                    self.set_attr(key, f.whole)
        return count

    def hint(self, f: Factoring) -> tuple[int, tuple[str, str]] | None:
        paths = [p for p in self.hints if f.module == p or f.module.startswith(p + ".") or not p]
        if not paths:
            return None
        key = (max(paths, key=len), self.hints[max(paths, key=len)])
        n = len(f.factors)
        direct = [i for i, g in enumerate(f.given) if isinstance(g, TracedInt) and g.direct == ("attr", *key)]
        if not direct and key in self.traced_attrs:  # the code uses it for other reshapes, not this one
            return None
        by_value = [i for i in range(n) if f.sizes[i] == self.value(key)]  # not seen by the trace: by its value
        pick = direct or [i for i in by_value if i < n - 1] or by_value
        if not pick:
            return None
        self.hint_used.add(key[0])
        return pick[0], key

    def name_heads(self, key: tuple[str, str], space: Space) -> None:
        """`widths` can name the head count by its attribute: ``{"blocks.0.attn:n_head": 8}``."""
        name = f"{key[0]}:{key[1]}"
        if not any(p.key == name and sp.find(p.space) is sp.find(space) for p in self.tr.producers):
            self.tr.producers.append(Producer(name, space, f"attribute '{key[0]}'.{key[1]}"))

    def refuse(self, f: Factoring, free: list[int]) -> None:
        cands = self.candidates(f, free)
        listed = "; ".join(f"'{m}'.{a} = {v}" for m, a, v in cands)
        example = f"heads={{'{cands[0][0]}': '{cands[0][1]}'}}" if cands else HEADS_HINT
        sizes = tuple(f.sizes)
        reason = (f"an axis of size {sp.find(f.whole).size} is viewed as {sizes} ({f.where}) and more than one factor "
                  f"could grow (attention heads x head_dim, or a channel shuffle): netgraft cannot tell which factor "
                  f"is the unit. " + (f"Attributes that could hold the count: {listed}. " if cands else
                                   "No module attribute sizes the factors. ")
                  + f"If one holds the head count, name it: widen(..., {example})")
        for i in free:
            for leaf in sp.leaves(f.factors[i]):
                sp.block(leaf, reason)
            self.tr.constrained.append(f.factors[i])

    def candidates(self, f: Factoring, free: list[int]) -> list[tuple[str, str, int]]:
        """Attributes the code used for the free factors, then int attributes of the module running the reshape and
        its parents whose value equals one (nearest module first)."""
        out: list[tuple[str, str, int]] = []
        for i in free:
            g = f.given[i]
            keys = ([(g.direct[1], g.direct[2])] if g.direct and g.direct[0] == "attr" else g.attrs()) \
                if isinstance(g, TracedInt) else []
            for key in keys:
                if (*key, self.value(key)) not in out:
                    out.append((*key, self.value(key)))
        sizes = {f.sizes[i] for i in free}
        parts = f.module.split(".") if f.module else []
        for k in range(len(parts), -1, -1):
            path = ".".join(parts[:k])
            try:
                m = self.tr.model.get_submodule(path) if path else self.tr.model
            except AttributeError:
                continue
            for a, v in vars(m).items():
                if type(v) is int and v in sizes and not a.startswith("_") and (path, a, v) not in out:
                    out.append((path, a, v))
        return out


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


def groups(model: nn.Module, example_inputs: Any, heads: dict[str, str] | None = None) -> GroupTable:
    """The coupled dimensions of `model`: what can be widened, what must change together, and why not.

    Each `Group` has `name` (the key to use in `widen`'s `widths`), `display_size`, `members` (parameter, axis,
    role), `constraints()`, `valid_sizes()` and `growable`. A dimension under a LayerNorm/RMSNorm grows by integer
    multiples, or to any size where zero padding is proven exact (`padding`; "any size (zero padding ...)" in the
    table; `padding_refused` says why not elsewhere). `heads` as in `widen`.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> table = netgraft.groups(m, (torch.randn(4, 3),))
        >>> [(g.name, g.display_size) for g in table if g.growable and g.name]
        [('0', 8)]
    """
    check_model(model, "groups")
    return GroupTable(couple(model, example_inputs, heads).groups)
