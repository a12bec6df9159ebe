"""Initial values of the new units for `grow_`: zero fan-in, identity units in between, and a fan-out that is zero,
random or GradMax's (top singular vectors of M = E[dL/dz_{l+1} h_{l-1}^T]).

Roles come from the trace: a parameter axis that holds one value per unit ("copy") belongs either to a *writer* (the
Linear/Conv that creates the unit: its new rows and bias are zero, the zero fan-in) or to a *pass-through* layer that
reads the unit and writes it again (BatchNorm, GroupNorm, a depthwise conv: they become identity units). An axis
that is summed over ("fanin") is the fan-out of the unit in the next layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core import space as sp
from ...core.catalogue import (
    ACTIVATIONS,
    ADAPTIVE_AVG_POOLS,
    CASTS,
    CHANNEL_NORMS,
    CONCATS,
    COPIES,
    DIVISIONS,
    DROPOUT,
    LINEAR_UNARY,
    PRODUCTS,
    SPLITS,
    SUMS,
    VIEWS,
    at_zero,
)
from ...core.coupling import Coupling, Group
from ...core.graph import COPY, FANIN, OpRecord, Value
from ...core.layers import LayerKind, kind_of, kind_of_op
from ...core.state import preserve_state
from ...core.trace import owner_of
from ...errors import InvalidRequestError

# Ops a new unit may cross between its writer and the next layer: with identity units in the per-channel norms
# (`identity_value`) its value stays zero, and GradMax's matrix is measured as if each were the identity.
_IDENTITY_PATH = ACTIVATIONS | DROPOUT | CHANNEL_NORMS | COPIES | CASTS
# A global average pool between a conv writer and a Linear, and the reshapes that drop its 1x1 axes.
_GLOBAL_AVERAGE = ADAPTIVE_AVG_POOLS | {"mean"}
_POOLED_PATH = _GLOBAL_AVERAGE | {"flatten", "view", "reshape", "squeeze"}


@dataclass
class Gating:
    """Products of two values that both carry the new units (a gated FFN: ``act(gate(x)) * up(x)``).

    With every writer at zero fan-in, both factors of such a product are 0 for a new unit, so each factor's gradient
    (the other factor) is 0 and no new weight ever moves. The fix keeps it exact and live: the writers in `random`
    get a random fan-in for their new units, the others stay at zero fan-in. The product stays exactly 0 as long as
    the zero side maps 0 to 0, and the zero side's gradient is ``f'(0) * (random side) * fan-out``, nonzero.
    """

    products: list[str]  # each product, described: "'mul' in module 'mlp': silu(mlp.gate) * mlp.up"
    random: list[tuple[str, int]] = field(default_factory=list)  # writer weights (tensor, axis): random fan-in
    zero: list[tuple[str, int]] = field(default_factory=list)  # writer weights that keep their zero fan-in
    random_plain: bool = False  # the random side reaches the product through shape/identity ops only
    error: str = ""  # why no writer's random fan-in makes every new weight learn (then: refuse)


@dataclass
class GroupPlan:
    """What `grow_` needs to know about one grown group."""

    group: Group
    key: str
    writers: list[tuple[str, int]]  # (tensor, axis) of the layers that create the units
    passthrough: list[tuple[str, int]]  # (tensor, axis) of identity units (norms, depthwise convs)
    consumers: list[tuple[str, int]]  # (tensor, axis) summed over: the fan-out
    path_ops: list[str]  # op names between the writer and the consumers
    dead_ops: list[str] = field(default_factory=list)  # among them, activations with derivative 0 at 0
    gating: Gating | None = None  # products of two values carrying the new units (gated FFNs), if any

    @property
    def random_fanin(self) -> list[tuple[str, int]]:
        return self.gating.random if self.gating is not None and not self.gating.error else []


def _leaf_ids(space: sp.Space) -> set[int]:
    return {x.id for x in sp.leaves(space)}


def plan_group(coupling: Coupling, g: Group) -> GroupPlan:
    tr = coupling.trace
    ids = {g.leaf.id}
    writers, passthrough, consumers = [], [], []
    for m in g.members:
        key = (m.tensor, m.axis)
        if FANIN in m.roles:
            consumers.append(key)
        if COPY not in m.roles:
            continue
        if FANIN in m.roles:  # a tied tensor (embedding reused as output layer): zero new columns are exact
            writers.append(key)
            continue
        ops = tr.role_ops.get(key, [])
        # pass-through: a per-unit op (BatchNorm, depthwise conv) that reads the unit and does not sum over the
        # group; a Linear/Conv that sums over it (a residual stream feeding its own width) writes new units
        sums = any(role == FANIN and ids & _leaf_ids(tr.param_dims[p][a]) for op in ops for p, a, role in op.roles)
        reads = any(v.param is None and any(ids & _leaf_ids(d) for d in v.dims) for op in ops for v in op.inputs)
        (passthrough if reads and not sums else writers).append(key)
    plan = GroupPlan(g, g.name or str(g.members[0]), writers, passthrough, consumers,
                     *_path(coupling, writers, ids))
    plan.gating = _gating(coupling, plan, ids)
    return plan


def _path(coupling: Coupling, writers: list[tuple[str, int]], ids: set[int]) -> tuple[list[str], list[str]]:
    """The ops the new units flow through (every op whose output still carries the grown dimension) from their
    writers up to the layers that sum over them: their names, and those that have derivative 0 at 0."""
    tr = coupling.trace
    names: list[str] = []
    dead: list[str] = []
    todo: list[Value] = [v for key in writers for op in tr.role_ops.get(key, []) for v in op.outputs]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        for op in v.consumers:
            if id(op) in seen:
                continue
            seen.add(id(op))
            carried = [o for o in op.outputs if any(ids & _leaf_ids(d) for d in o.dims)]
            if carried:
                names.append(op.name)
                todo.extend(carried)
                if _dead_at_zero(op):
                    dead.append("relu6" if op.name == "hardtanh" else op.name)  # ReLU6 is traced as hardtanh(0, 6)
    return names, dead


def _dead_at_zero(op: OpRecord) -> bool:
    """An activation with derivative 0 at 0 (ReLU, ReLU6, Hardtanh(0, x)): a zero fan-in unit behind it never moves.
    (Gated products are analysed on their own, with `_at_zero`.)"""
    known = at_zero(op)
    return known is not None and not known[1]


# ------------------------------------------------------------------------------------------ gated products
# The new units' value at growth: what a unary op does to a unit whose value is 0 is (f(0) == 0, f'(0) != 0) as
# PyTorch computes it. Shape ops, dropout, negation and the per-channel norms (identity units there) pass 0 and its
# gradient; activations are in the catalogue (`at_zero`). Ops not known: value not assumed, gradient assumed to pass.
_SHAPE_OPS = VIEWS | SPLITS | DROPOUT | CHANNEL_NORMS | {"neg"}
# Ops whose output is 0 wherever all their inputs that carry the new units are 0 (pad: with its default value 0).
_ZERO_IN_ZERO_OUT = SUMS | CONCATS | PRODUCTS | LINEAR_UNARY | {"pad"}
_Z, _N, _U = "zero", "nonzero", "unknown"  # the value a new unit takes at growth


def _at_zero(op: OpRecord) -> tuple[bool, bool] | None:
    return (True, True) if op.name in _SHAPE_OPS else at_zero(op)


class _Flow:
    """Abstract evaluation of the path from a group's writers to its consumers, for the new units only: whether each
    value is 0 there, and which writers' new fan-in would get a gradient through it (given a nonzero gradient at
    the consumers). `moving`: the writers whose new units are not 0 (a random fan-in, or one that has learnt)."""

    def __init__(self, coupling: Coupling, plan: GroupPlan, ids: set[int]):
        tr = coupling.trace
        self.tr, self.ids = tr, ids
        writers, consumers = set(plan.writers), set(plan.consumers)
        # writer op -> its weight (tensor, axis), or a name of its own when it has none (a layer called twice is
        # two ops of one weight: they move together)
        self.writer_ops: dict[int, tuple[str, int] | str] = {}
        self.consumer_ops: set[int] = set()
        for op in tr.ops:
            copies = [(p, a) for p, a, role in op.roles if role == COPY and (p, a) in writers]
            if copies and any(self.carries(o) for o in op.outputs):
                weights = [k for k in copies if tr.tensors_by_name[k[0]].dim() >= 2]
                self.writer_ops[id(op)] = weights[0] if weights else f"#{id(op)}"
            if any(role == FANIN and (p, a) in consumers for p, a, role in op.roles):
                self.consumer_ops.add(id(op))
        self.ops = {id(op): op for op in tr.ops}

    def carries(self, v: Value) -> bool:
        return v.param is None and any(self.ids & _leaf_ids(d) for d in v.dims)

    def run(self, moving: set[int]) -> tuple[list[tuple[str, frozenset]], dict[int, list]]:
        """(states at the consumers' inputs, {id(product op): its inputs' states})."""
        state: dict[int, tuple[str, frozenset]] = {}
        at_consumers: list[tuple[str, frozenset]] = []
        products: dict[int, list] = {}
        for op in self.tr.ops:
            ins = [state[id(v)] for v in op.inputs if id(v) in state]
            writer = id(op) in self.writer_ops
            if not ins and not writer:
                continue
            if id(op) in self.consumer_ops:
                at_consumers.extend(ins)
            if writer:
                out = (_N if id(op) in moving else _Z, frozenset({id(op)}))
            else:
                out = self._transfer(op, ins, state)
                if op.name == "mul" and len(ins) == 2:
                    products[id(op)] = ins
            for o in op.outputs:
                if self.carries(o):
                    state[id(o)] = out
        return at_consumers, products

    @staticmethod
    def _transfer(op, ins: list, state: dict) -> tuple[str, frozenset]:  # noqa: ANN001
        none: frozenset = frozenset()
        if len(ins) == 1:
            z, live = ins[0]
            if op.name == "mul" or (op.name in DIVISIONS and op.inputs and id(op.inputs[0]) in state):
                return z, live  # scaled by something that does not carry the new units (assumed nonzero)
            known = _at_zero(op)
            if known is None:
                return _U, live
            if z != _Z:
                return z, live
            return (_Z if known[0] else _N), (live if known[1] else none)
        if op.name == "mul" and len(ins) == 2:
            (za, la), (zb, lb) = ins  # d(a*b)/da = b: a's writers learn only where b is not 0
            z = _Z if _Z in (za, zb) else (_N if za == zb == _N else _U)
            return z, (la if zb != _Z else none) | (lb if za != _Z else none)
        live = frozenset().union(*(lv for _, lv in ins))
        if op.name not in _ZERO_IN_ZERO_OUT:
            return _U, live
        rest = [z for z, _ in ins if z != _Z]
        if not rest:
            return _Z, live
        # one nonzero term among zeros stays nonzero (a sum of two nonzero terms may cancel)
        return (_N if rest == [_N] and op.name in SUMS | CONCATS else _U), live

    def outcome(self, random: set) -> tuple[bool, bool, bool]:  # noqa: ANN001
        """With the writer weights in `random` given a random fan-in: (exact, whether every writer's new fan-in gets
        a gradient at some step - a zero writer moves once it got one -, whether every fan-out gets one)."""
        moving, ever = set(random), set()
        exact = None
        while True:
            at_consumers, _ = self.run({w for w, k in self.writer_ops.items() if k in moving})
            if exact is None:
                exact = all(z != _N for z, _ in at_consumers)
            reached = {self.writer_ops[w] for w in frozenset().union(*(lv for _, lv in at_consumers))}
            ever |= reached
            if reached <= moving:
                return (exact, set(self.writer_ops.values()) <= ever,
                        all(z != _Z for z, _ in at_consumers))
            moving |= reached

    def describe(self, v: Value) -> tuple[str, int | None, list[str]]:
        """'silu(mlp.gate)' for a product's factor: the unary ops back to its writer, the writer op and the ops."""
        names: list[str] = []
        op = v.producer
        while op is not None and id(op) not in self.writer_ops:
            ins = [x for x in op.inputs if self.carries(x)]
            if len(ins) != 1:
                break
            names.append(op.name)
            op = ins[0].producer
        if op is None or id(op) not in self.writer_ops:
            return "(" + " -> ".join(reversed(names)) + ")" if names else "?", None, names[::-1]
        text = op.module or str(self.writer_ops[id(op)][0])
        for n in names[::-1]:
            text = f"{n}({text})"
        return text, id(op), names[::-1]


def _gating(coupling: Coupling, plan: GroupPlan, ids: set[int]) -> Gating | None:
    """Find products of two values that carry the new units and choose which writers get a random fan-in."""
    flow = _Flow(coupling, plan, ids)
    _, products = flow.run(set())
    if not products:
        return None
    sides = {}
    for pid in products:
        op = flow.ops[pid]
        sides[pid] = [flow.describe(v) for v in op.inputs if flow.carries(v)][:2]
    gating = Gating([f"{flow.ops[pid].where()}: {a[0]} * {b[0]}" for pid, (a, b) in sides.items()])
    weights = list(dict.fromkeys(k for k in flow.writer_ops.values() if isinstance(k, tuple)))
    # plain side first: a factor that reaches the product through shape/identity ops only (the `up` of SwiGLU), so
    # the zero side is the one behind the activation (f(0) = 0 keeps the product exact, f'(0) != 0 its gradient)
    plain = {flow.writer_ops[side[1]] for pair in sides.values() for side in pair if side[1] is not None
             and all(n in _SHAPE_OPS for n in side[2])}
    order = [set()] + [{k} for k in sorted(weights, key=lambda k: (k not in plain, weights.index(k)))]
    tried = []
    for random in order:
        exact, writers_learn, fan_out_learns = flow.outcome(random)
        if exact and writers_learn and fan_out_learns:
            gating.random = sorted(random)
            gating.zero = [k for k in weights if k not in random]
            gating.random_plain = bool(random) and random <= plain
            return gating
        tried += [k[0] for k in random]
    gating.error = (
        f"the new units of '{plan.key}' meet in a product ({gating.products[0]}). With zero fan-in both factors are "
        f"0 for a new unit, so neither factor's fan-in ever gets a gradient (each one's gradient is the other), and a "
        f"random fan-in for one factor's writer ({', '.join(tried) or 'none available'}) would not keep the function "
        f"exact and every new weight learning: the zero factor must map 0 to 0 with a nonzero derivative there "
        f"(SiLU, GELU, tanh, identity - not ReLU or sigmoid), and the two factors must come from two different "
        f"layers (not one fused projection)")
    return gating


def check_alive(plan: GroupPlan, init: str) -> None:
    gating = plan.gating
    if gating is not None and init in ("gradmax", "random"):
        if not gating.error:
            return  # the product analysis saw every op on the path, dead activations included
        if not plan.dead_ops:
            raise InvalidRequestError(f"grow_(init='{init}'): {gating.error}. Use init='net2net' (duplication, exact "
                                      "and alive) "
                             f"for this dimension")
    dead = sorted(set(plan.dead_ops))
    if dead and init in ("gradmax", "random"):
        raise InvalidRequestError(
            f"grow_(init='{init}'): the new units of '{plan.key}' pass through {dead[0]} before the next layer. A unit "
            f"with zero fan-in has pre-activation 0, where PyTorch's {dead[0]} has derivative 0: its fan-in would get "
            f"no gradient and never move. Use an activation with f'(0) != 0 at growth time (LeakyReLU, GELU, SiLU, "
            f"tanh, ELU), or init='net2net' (duplication, exact and alive).")


def random_fan_in(t: torch.Tensor, axis: int, n_new: int, generator: torch.Generator) -> torch.Tensor:
    """The new units' fan-in in the writer that gets a random one (the other factor of a gated product): random
    directions (seeded CPU draws) with the mean norm of the existing units' fan-in, at the old positions of the
    other axes, in `t`'s dtype and device."""
    rows = t.detach().double().movedim(axis, 0).flatten(1)
    norm = float(rows.norm(dim=1).mean()) if rows.numel() else 0.0
    small = list(t.shape)
    small[axis] = n_new
    v = torch.randn(small, generator=generator, dtype=torch.float64).movedim(axis, 0)
    v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).reshape([n_new] + [1] * (t.dim() - 1))
    return (v * (norm if norm > 0 else 1.0)).movedim(0, axis).to(device=t.device, dtype=t.dtype)


def identity_value(model: nn.Module, name: str, old: torch.Tensor, axis: int,
                   bn_weight: float | None = 1.0) -> torch.Tensor | float:
    """The value of a pass-through layer's parameter for a new unit: the unit stays zero and gradients pass (a bias or
    a mean is 0, a variance 1; a layer's own kind says the rest: a norm's gain, a depthwise conv's Dirac filter).
    `bn_weight`: gamma of a new BatchNorm channel (None: sqrt(eps))."""
    module, attr = owner_of(model, name)
    if attr in ("bias", "running_mean") or attr.endswith("bias"):
        return 0.0
    if attr == "running_var":
        return 1.0
    kind = kind_of(module)
    value = kind.identity_unit(module, attr, old, axis, bn_weight) if kind is not None else None
    if value is not None:
        return value
    return old.mean(dim=axis, keepdim=True)  # a per-unit scale of some custom layer: a typical unit's value


# ------------------------------------------------------------------------------------------------------ GradMax
def _single(items: list[tuple[str, int]], what: str, plan: GroupPlan) -> tuple[str, int]:
    if len(items) != 1:
        raise InvalidRequestError(f"grow_(init='gradmax') needs one {what} layer for '{plan.key}', found {len(items)} "
                         f"({[n for n, _ in items]}); use init='random', 'zeros' or 'net2net' for this dimension")
    return items[0]


def _layer(model: nn.Module, name: str, axis: int, side: str, plan: GroupPlan) -> tuple[nn.Module, LayerKind]:
    """The module holding weight `name`, the writer of the new units (`side` "writer": they are its rows, axis 0) or
    the next layer (their fan-out: axis 1), and its kind, if GradMax can measure through it."""
    module, attr = owner_of(model, name)
    kind = kind_of(module)
    problem = kind.gradmax_problem(module, side) if kind is not None else f"{type(module).__name__} is not a layer"
    if attr != "weight" or axis != (0 if side == "writer" else 1) or problem is not None:
        why = f": {problem}" if attr == "weight" and problem is not None else ""
        raise InvalidRequestError(f"grow_(init='gradmax') supports Linear and Conv1d/Conv2d (groups=1) on both sides "
                                  "of the "
                         f"grown dimension; '{plan.key}' has '{name}' ({type(module).__name__}, axis {axis}){why}. Use "
                         f"init='random', 'zeros' or 'net2net' for this dimension")
    return module, kind


def _inputs_and_grad(model: nn.Module, loss_fn, batch, inputs_of: dict[str, nn.Module],  # noqa: ANN001
                     output_of: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One run of ``loss_fn(model, batch)``: the input of each module in `inputs_of` and dL/d(output of
    `output_of`), without touching .grad, RNG streams, buffers or parameters. Each module must run exactly once."""
    seen: dict[str, list] = {name: [] for name in inputs_of}
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=name: seen[name].append(a[0].detach()))
             for name, m in inputs_of.items()]
    hooks.append(output_of.register_forward_hook(lambda mod, a, out: outputs.append(out)))
    try:
        with preserve_state(model), torch.random.fork_rng(devices=[]), torch.enable_grad():
            loss = loss_fn(model, batch)
            runs = {name: len(v) for name, v in seen.items()} | {"output": len(outputs)}
            if any(n != 1 for n in runs.values()):
                raise InvalidRequestError(f"grow_(init='gradmax'): {sorted(inputs_of)} must each run once in loss_fn "
                                 f"(runs: {runs})")
            (g,) = torch.autograd.grad(loss, [outputs[0]])
    finally:
        for hk in hooks:
            hk.remove()
    return [v[0] for v in seen.values()], g.detach()


def gradmax_matrix(model: nn.Module, plan: GroupPlan, loss_fn, batch) -> torch.Tensor:  # noqa: ANN001
    """M = sum over the batch of dL/dz_{l+1} h_{l-1}^T (fan-out size x fan-in size), measured on `batch` without
    touching .grad, RNG streams or BatchNorm statistics. Layers between are identity units, f'(0) is 1 (see grow_).
    The writer's and the next layer's kinds supply the algebra: position by position for a Linear, input patches and
    the adjoint for a convolution."""
    tensors = dict(model.named_parameters())
    w_name, w_axis = _single([k for k in plan.writers if tensors.get(k[0]) is not None and tensors[k[0]].dim() >= 2],
                             "writer", plan)
    c_name, c_axis = _single(plan.consumers, "next", plan)
    writer, w_kind = _layer(model, w_name, w_axis, "writer", plan)
    consumer, c_kind = _layer(model, c_name, c_axis, "next", plan)
    layouts = {m.layout for m in plan.group.members if (m.tensor, m.axis) in {(w_name, w_axis), (c_name, c_axis)}}
    if plan.group.unit != 1 or layouts - {""}:
        raise InvalidRequestError(f"grow_(init='gradmax'): '{plan.key}' grows in blocks of units (a GroupNorm's "
                                  "groups, "
                         f"heads or a flattened map); use init='random', 'zeros' or 'net2net' for this dimension")
    pooled = not c_kind.spatial and w_kind.spatial
    # a depthwise conv in between is a Dirac identity unit, but only a 1x1 map reaches a pooled Linear unchanged
    passthrough = {n for n in plan.path_ops if (k := kind_of_op(n)) is not None and n in k.gradmax_passthrough_ops}
    allowed = _IDENTITY_PATH | (_POOLED_PATH if pooled else passthrough)
    odd = [n for n in plan.path_ops if n not in allowed]
    if pooled and not _GLOBAL_AVERAGE & set(plan.path_ops):
        odd = odd or ["flatten (no global average pooling)"]
    if odd:
        raise InvalidRequestError(f"grow_(init='gradmax'): between '{w_name}' and '{c_name}' the units pass through "
                         f"'{odd[0]}'; supported: activations, norms, dropout, depthwise convs between convs, and a "
                         f"global average pool before a Linear. Use init='random', 'zeros' or 'net2net' here")
    (h, x), g = _inputs_and_grad(model, loss_fn, batch, {w_name: writer, c_name: consumer}, consumer)
    # g is the gradient of the loss itself (a batch mean already), so M sums: M^T v is exactly the new fan-in's
    # gradient for fan-out v (with f'(0) = 1)
    if not w_kind.spatial:
        if c_kind.spatial or h.shape[:-1] != x.shape[:-1]:
            raise InvalidRequestError(f"grow_(init='gradmax'): '{w_name}' (Linear) must feed '{c_name}' (Linear) "
                                      "directly")
        return g.reshape(-1, g.shape[-1]).T @ h.reshape(-1, h.shape[-1])
    patches = w_kind.gradmax_patches(writer, h)  # (B, D_in, P)
    if pooled:  # global average pooling in between (checked on the path above)
        if x.dim() != 2:
            raise InvalidRequestError(f"grow_(init='gradmax'): '{c_name}' reads the conv map flattened; only global "
                                      "pooling "
                             f"before a Linear is supported")
        return g.T @ patches.mean(2)
    if type(consumer) is not type(writer):
        raise InvalidRequestError(f"grow_(init='gradmax'): '{w_name}' and '{c_name}' must be convolutions of the "
                                  "same rank")
    spatial = x.shape[2:]
    if math.prod(spatial) != patches.shape[2]:
        raise InvalidRequestError(f"grow_(init='gradmax'): '{c_name}' does not read '{w_name}''s map at its own "
                                  "resolution "
                         f"(a pooling or strided op in between)")
    adj = c_kind.gradmax_adjoint(consumer, g, tuple(spatial))  # (B, D_out, P)
    return torch.einsum("bop,bip->oi", adj, patches)


def gated_directions(model: nn.Module, plan: GroupPlan, loss_fn, batch, random_rows: torch.Tensor,  # noqa: ANN001
                     generator: torch.Generator, iterations: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """GradMax for a gated product ``y = W_d (f(W_z x) * (W_r x'))``: the zero writer W_z keeps a zero fan-in, the
    random writer W_r got the rows `random_rows` (R), so new unit k's factors are f(0) = 0 and u_k = R_k x'.

    The zero side's new row k then gets the gradient ``f'(0) * sum_n (v_k . g_n) u_kn x_n^T = f'(0) M_k^T v_k`` with
    ``M_k = sum_n u_kn g_n x_n^T`` (g = dL/dy, v_k = unit k's fan-out in W_d): maximising its norm is GradMax with
    one matrix per unit, because each unit has its own random factor u_k. v_k is the top left singular vector of
    M_k, found matrix-free (M_k is D_out x D_in per unit) by power iteration on ``M_k M_k^T``; f'(0) scales every
    unit alike (1 assumed, as in the paper). The random writer's new rows get no gradient at the first step (their
    factor f(0) is 0) and one from the second step on, once the zero side has moved. Returns (D_out x k unit
    fan-out vectors, float64 on the CPU, and the k singular values ||M_k^T v_k||)."""
    gating = plan.gating
    if gating is None or len(gating.random) != 1 or len(gating.zero) != 1 or not gating.random_plain:
        where = gating.products[0] if gating else ""
        raise InvalidRequestError(f"grow_(init='gradmax'): '{plan.key}' is a gated product ({where}) that gradmax "
                                  "supports only "
                         f"as act(zero_writer(x)) * other_writer(x) -> next layer, all Linear, the other writer behind "
                         f"no activation; use init='random' (a random fan-in for one factor, exact and alive) or "
                         f"'net2net'")
    (z_name, z_axis), (r_name, r_axis) = gating.zero[0], gating.random[0]
    c_name, c_axis = _single(plan.consumers, "next", plan)
    (zero_w, z_kind), (rand_w, r_kind) = _layer(model, z_name, z_axis, "writer", plan), \
        _layer(model, r_name, r_axis, "writer", plan)
    consumer, c_kind = _layer(model, c_name, c_axis, "next", plan)
    if any(k.spatial for k in (z_kind, r_kind, c_kind)):
        raise InvalidRequestError(f"grow_(init='gradmax'): the gated product of '{plan.key}' is supported between "
                                  "Linear "
                         f"layers only; use init='random' or 'net2net' for this dimension")
    if plan.group.unit != 1 or any(m.layout for m in plan.group.members):
        raise InvalidRequestError(f"grow_(init='gradmax'): '{plan.key}' grows in blocks of units; use init='random', "
                                  "'zeros' "
                         f"or 'net2net' for this dimension")
    odd = [n for n in plan.path_ops if n not in _IDENTITY_PATH | _SHAPE_OPS | {"mul"}]
    if odd:
        raise InvalidRequestError(f"grow_(init='gradmax'): between the gated product's writers and '{c_name}' the "
                                  "units pass "
                         f"through '{odd[0]}'; use init='random' or 'net2net' for this dimension")
    (x, xr), g = _inputs_and_grad(model, loss_fn, batch, {z_name: zero_w, r_name: rand_w}, consumer)
    x, xr, g = (t.reshape(-1, t.shape[-1]).double() for t in (x, xr, g))
    if not x.shape[0] == xr.shape[0] == g.shape[0]:
        raise InvalidRequestError(f"grow_(init='gradmax'): '{z_name}', '{r_name}' and '{c_name}' see different "
                                  "numbers of "
                         f"positions; use init='random' or 'net2net' for this dimension")
    u = xr @ random_rows.double().T  # (positions, k): each new unit's random factor
    k, d_out = u.shape[1], g.shape[1]
    v = torch.randn(d_out, k, generator=generator, dtype=torch.float64).to(g.device)
    v = v / v.norm(dim=0, keepdim=True)
    for _ in range(iterations):  # power iteration on M_k M_k^T, all units at once
        w = x.T @ (u * (g @ v))  # (D_in, k): column k is M_k^T v_k
        nxt = g.T @ (u * (x @ w))  # (D_out, k): M_k M_k^T v_k
        norms = nxt.norm(dim=0, keepdim=True)
        nxt = torch.where(norms > 1e-300, nxt / norms.clamp_min(1e-300), v)  # M_k = 0: keep the random start
        done = float((nxt - v).abs().max()) < 1e-13
        v = nxt
        if done:
            break
    values = (x.T @ (u * (g @ v))).norm(dim=0)
    return v.cpu(), values.cpu()


def top_directions(m: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k unit fan-out vectors maximising sum ||M^T v||^2: the top left singular vectors of M; beyond the rank of M
    (or the fan-out size) orthogonal random completions. Returns (D_out x k vectors, the k singular values)."""
    u, s, _ = torch.linalg.svd(m.detach().double().cpu(), full_matrices=True)  # small: on the CPU, with the RNG
    d_out = m.shape[0]
    take = min(k, d_out)
    vecs, vals = [u[:, :take]], [torch.cat([s, s.new_zeros(max(0, d_out - len(s)))])[:take]]
    if k > take:  # more new units than directions: random unit vectors (they cannot all be orthogonal)
        extra = torch.randn(d_out, k - take, generator=generator, dtype=torch.float64)
        vecs.append(extra / extra.norm(dim=0, keepdim=True))
        vals.append(torch.zeros(k - take, dtype=torch.float64))
    return torch.cat(vecs, 1), torch.cat(vals)
