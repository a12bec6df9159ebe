"""Plan step of `deepen`: read the traced graph around an insertion point and decide which exact form fits.

Three facts decide it, all read from the trace (ops with their argument values, module calls):
- the *neighbourhood*: the layer op that feeds the point (Linear / ConvNd with its kernel, stride and groups), the
  activation and the norm used around it - the inserted layer imitates them;
- whether the value at the point is the output of (or feeds only) an idempotent activation phi(phi(x)) = phi(x):
  then the Net2Net identity layer is exact;
- for a block (a module with a residual add inside): which parameters to zero so that every residual branch adds
  an exact zero, proven by walking the block's ops back from its output. Blocks where no such proof exists
  (post-norm: the add is followed by a LayerNorm) go behind a gate instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...core.catalogue import (
    ACTIVATION_MODULES,
    ACTIVATIONS,
    ARITHMETIC,
    CASTS,
    CONCATS,
    COPIES,
    DIVISIONS,
    IDEMPOTENT,
    LINEAR_UNARY,
    NORMS,
    POOLS,
    PRODUCTS,
    SCALING_DROPOUT,
    SUMS,
    VIEWS,
    at_zero,
)
from ...core.graph import ModuleCall, OpRecord, Trace, Value
from ...core.layers import LayerKind, TracedLayer, kind_of_op, read_layer

# Ops through which a value keeps its layout (which axis holds the features): element-wise ops, norms, pooling.
# Views, transposes and flattens are not among them: a layer beyond one says nothing about this value's axes.
_SAME_LAYOUT = ACTIVATIONS | NORMS | SCALING_DROPOUT | ARITHMETIC | COPIES | CASTS | POOLS
# Ops through which a value stays inside the image of an idempotent activation: they only select, rearrange, cast or
# average its elements (average pooling and dropout under conditions checked in `image_activation`).
_KEEPS_IMAGE = VIEWS | POOLS | SCALING_DROPOUT


@dataclass(frozen=True)
class Activation:
    """An activation as the model applied it: op name and, for idempotent ones, the interval it is identity on."""

    name: str
    low: float = -math.inf
    high: float = math.inf
    slope: float = 0.01  # leaky_relu
    approximate: str = "none"  # gelu

    @property
    def idempotent(self) -> bool:
        return self.name in IDEMPOTENT


def activation_of(op: OpRecord) -> Activation | None:
    if op.name == "relu":
        return Activation("relu", 0.0, math.inf)
    if op.name == "relu6":
        return Activation("relu6", 0.0, 6.0)
    if op.name == "hardtanh":
        low, high = float(op.arg(1, "min_val", -1.0)), float(op.arg(2, "max_val", 1.0))
        return Activation("relu6" if (low, high) == (0.0, 6.0) else "hardtanh", low, high)
    if op.name == "leaky_relu":
        return Activation("leaky_relu", slope=float(op.arg(1, "negative_slope", 0.01)))
    if op.name == "gelu":
        return Activation("gelu", approximate=str(op.arg(1, "approximate", "none")))
    if op.name in ACTIVATION_MODULES:  # those deepen can rebuild, to imitate them in what it inserts
        return Activation(op.name)
    return None


def _around(value: Value, limit: int = 12) -> list[OpRecord]:
    """Ops around `value` that share its layout, nearest first: back through producers, then forward through
    consumers, stopping at layers (Linear, Conv, ...) and at any op that changes the layout."""
    seen: set[int] = set()
    out: list[OpRecord] = []
    for forward in (False, True):
        frontier: list[Value] = [value]
        budget = len(out) + limit
        while frontier and len(out) < budget:
            nxt: list[Value] = []
            for v in frontier:
                for op in (v.consumers if forward else [v.producer] if v.producer is not None else []):
                    if id(op) in seen:
                        continue
                    seen.add(id(op))
                    out.append(op)
                    if op.name in _SAME_LAYOUT:
                        nxt.extend(op.outputs if forward else [x for x in op.inputs if x.param is None])
            frontier = nxt
    return out


@dataclass
class Neighbourhood:
    """What surrounds an insertion point: the layer to imitate, the activation and norm to reuse."""

    layer: TracedLayer | None
    activation: Activation | None
    norm: OpRecord | None
    features_last: bool | None  # None: no layer or norm says where the feature axis is
    unit_norm: OpRecord | None = None  # a norm between the feeding layer and the point (conv -> BN -> ReLU)


def deepen_norm(op: OpRecord) -> LayerKind | None:
    """The kind of `op` if it is a norm deepen copies into what it inserts (BatchNorm, LayerNorm, RMSNorm,
    GroupNorm), else None."""
    kind = kind_of_op(op.name)
    return kind if kind is not None and kind.deepen_norm else None


def neighbourhood(value: Value) -> Neighbourhood:
    ops = _around(value)
    layer = next((lay for op in ops if (lay := read_layer(op)) is not None), None)
    act = next((a for op in ops if (a := activation_of(op)) is not None), None)
    norm = next((op for op in ops if deepen_norm(op) is not None), None)
    # the nearest layer or norm that says where the feature axis is: last (Linear, LayerNorm) or 1 (Conv, BatchNorm)
    sides = (k.features_last for op in ops if (k := kind_of_op(op.name)) is not None)
    layout = next((last for last in sides if last is not None), None)
    if layer is not None and (layer.ndim == 0) != layout:
        layer = None  # the nearest layer's layout disagrees with the value's own: nothing to imitate
    unit_norm, v = None, value
    for _ in range(8):  # back along first inputs until the feeding layer
        op = v.producer
        if op is None or (layer is not None and op is layer.op) or not op.inputs:
            break
        if deepen_norm(op) is not None and unit_norm is None:
            unit_norm = op
        v = op.inputs[0]
    return Neighbourhood(layer, act, norm, layout, unit_norm)


def image_activation(value: Value, depth: int = 8) -> Activation | None:
    """The idempotent activation whose image holds every element of `value` (read back through pooling, dropout and
    views to the op that produced it), or None. Where such a phi exists, phi(value) == value."""
    op = value.producer
    if op is None or depth == 0:
        return None
    produced = activation_of(op)
    if produced is not None:
        return produced if produced.idempotent else None
    inner = image_activation(op.inputs[0], depth - 1) if op.inputs and op.name in _KEEPS_IMAGE else None
    if inner is None:
        return None
    if op.name in SCALING_DROPOUT and not (inner.low in (0.0, -math.inf) and inner.high in (0.0, math.inf)):
        return None  # training-mode dropout scales by 1/(1-p): only a cone like ReLU's image is kept
    if op.name.startswith("avg_pool") and (op.arg(6, "divisor_override") is not None or not
                                           inner.low <= 0.0 <= inner.high):
        return None  # a sum (divisor_override), or zero padding averaged into a range that excludes 0
    return inner


# -- identity forms ----------------------------------------------------------------------------------------------


@dataclass
class IdentityForm:
    """Where a Net2Net identity layer goes, and in which order: [layer, (BN), phi] after a value phi produced, or
    [phi, layer, (BN)] after a value that only phi consumes (the model's own phi then closes the layer)."""

    call: ModuleCall  # insert right after this module call
    activation: Activation
    act_first: bool
    via: str  # how the point was reached from the anchor, for the report


def _sole_consumer(value: Value) -> OpRecord | None:
    return value.consumers[0] if len(value.consumers) == 1 else None


def identity_form(trace: Trace, anchor: ModuleCall) -> IdentityForm | str:
    """Find the insertion point at or after `anchor` where an identity layer is exact, or say why there is none."""
    innermost: dict[int, ModuleCall] = {}  # a Sequential and its last child return the same value: prefer the child
    counts: dict[str, int] = {}
    for c in trace.calls:
        counts[c.path] = counts.get(c.path, 0) + 1
        if len(c.outputs) == 1 and c.outputs[0] is not None:
            # a pass-through call (nn.Identity, an empty Sequential shortcut) returns a value computed elsewhere: it is
            # never an insertion point, or a layer meant for the main path would land on a shortcut
            passes = any(c.outputs[0] is v for v in c.inputs)
            if not passes:
                innermost.setdefault(id(c.outputs[0]), c)

    def call_returning(v: Value) -> ModuleCall | None:
        c = anchor if v is anchor.outputs[0] else innermost.get(id(v))
        return c if c is not None and counts[c.path] == 1 else None

    value, via = anchor.outputs[0], ""
    for _ in range(6):  # walk forward through BatchNorm / dropout to the activation
        act, call = image_activation(value), call_returning(value)
        if act is not None and call is not None:
            return IdentityForm(call, act, False, via)
        returned = any(value is o for o in trace.outputs)  # a model output is a consumer the trace lists apart
        nxt = value.consumers[0] if len(value.consumers) == 1 and not returned else None
        nxt_act = activation_of(nxt) if nxt is not None else None
        if nxt_act is not None and not nxt_act.idempotent:
            return f"it is followed by {nxt_act.name}, which is not idempotent (phi(phi(x)) != phi(x))"
        if nxt_act is not None:
            after = call_returning(nxt.outputs[0])
            if after is not None:
                return IdentityForm(after, nxt_act, False, f" (where the {nxt_act.name} after '{anchor.path}' applies)")
            if call is not None:  # a functional phi: insert [phi, layer, BN] before it; the model's phi closes it
                return IdentityForm(call, nxt_act, True, via)
            break
        bn = nxt is not None and (kind := kind_of_op(nxt.name)) is not None and kind.statistics_from_data
        if nxt is None or not (bn or nxt.name in SCALING_DROPOUT) or not nxt.outputs:
            break
        value, via = nxt.outputs[0], f" (after the {nxt.name} that follows '{anchor.path}')"
    op = anchor.outputs[0].producer
    act = activation_of(op) if op is not None else None
    if act is not None and not act.idempotent:
        return f"its output comes from {act.name}, which is not idempotent (phi(phi(x)) != phi(x))"
    return "no idempotent activation (ReLU, ReLU6, Hardtanh) follows it in a module netgraft can insert after"


# -- block zeroing proof ---------------------------------------------------------------------------------------


@dataclass
class ZeroPlan:
    """Parameters of a block to zero so that it returns its input exactly, or why that cannot be done."""

    params: set[str] = field(default_factory=set)  # qualified names in the traced model
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def _param(v: object, owner: str) -> str | None:
    if isinstance(v, Value) and v.param is not None and v.param.startswith(owner):
        return v.param
    return None


def _keeps_zero_live(op: OpRecord) -> bool:
    """A zero input gives a zero output and the gradient still passes: a branch zeroed before the op trains. (ReLU
    maps 0 to 0 but has derivative 0 there: a branch zeroed before it would never train.)"""
    if op.name in VIEWS or op.name in POOLS or op.name in SCALING_DROPOUT or op.name in LINEAR_UNARY:
        return True
    return at_zero(op) == (True, True)


def _zeroing(v: Value, owner: str, depth: int = 24) -> set[str] | None:
    """Parameters (inside `owner`) whose zeroing makes `v` exactly zero, or None if the trace shows no way."""
    op = v.producer
    if op is None or depth == 0:
        return None
    kind = kind_of_op(op.name)
    if kind is not None and op.name in kind.zeroing:  # a layer whose output is zero when its weight and bias are
        wi, wn, bi, bn = kind.zeroing[op.name]
        weight, bias = op.arg(wi, wn), (op.arg(bi, bn) if bn else None)
        names = {_param(weight, owner), _param(bias, owner)}
        if _param(weight, owner) is None or (bias is not None and _param(bias, owner) is None):
            return None
        return {n for n in names if n is not None}
    tensors = [a for a in op.args if isinstance(a, Value)]
    if _keeps_zero_live(op) and tensors:
        return _zeroing(tensors[0], owner, depth - 1)
    if op.name in PRODUCTS:
        for a in op.inputs:
            if a.param is None and (found := _zeroing(a, owner, depth - 1)) is not None:
                return found
        return None
    if op.name in DIVISIONS and len(op.args) >= 2 and op.args[0] is (tensors[0] if tensors else None) \
            and isinstance(op.args[1], (int, float)) and op.args[1] != 0:
        return _zeroing(tensors[0], owner, depth - 1)  # 0 / c; never 0 / (a tensor that may be 0 too)
    additive = op.name in SUMS and len(op.args) >= 2 and all(isinstance(a, Value) for a in op.args[:2])
    if additive or op.name in CONCATS:
        found: set[str] = set()
        for a in op.inputs:
            part = _zeroing(a, owner, depth - 1)
            if part is None:
                return None
            found |= part
        return found
    return None


def _identity_of(v: Value, x: Value, owner: str, out: set[str], bound: Activation | None, depth: int = 24) -> bool:
    """True if `v` equals the block input `x` once the parameters added to `out` are zeroed."""
    if v is x:
        return True
    op = v.producer
    if op is None or depth == 0:
        return False
    if op.name in COPIES and op.inputs:
        return _identity_of(op.inputs[0], x, owner, out, bound, depth - 1)
    if op.name in SUMS and len(op.args) >= 2 and all(isinstance(a, Value) for a in op.args[:2]):
        first, second = op.args[0], op.args[1]
        alpha = op.arg(2, "alpha", 1)  # torch.add(a, b, alpha=k) is a + k * b: only b may be the zero branch
        orders = [(first, second), (second, first)] if op.name == "add" and alpha == 1 else [(first, second)]
        for skip, branch in orders:
            zeros = _zeroing(branch, owner)
            trial: set[str] = set()
            if zeros is not None and _identity_of(skip, x, owner, trial, bound, depth - 1):
                out |= zeros | trial
                return True
        return False
    act = activation_of(op)
    if act is not None and act.idempotent and bound is not None and op.inputs:
        # phi(x + 0) = x only where x already lies in phi's image: checked on the value the block will receive
        if bound.idempotent and act.low <= bound.low and bound.high <= act.high:
            return _identity_of(op.inputs[0], x, owner, out, bound, depth - 1)
    return False


def has_skip(call: ModuleCall, limit: int = 200) -> bool:
    """True if the block adds its own input to something (a residual block, post-norm or not)."""
    if not call.inputs or call.inputs[0] is None or len(call.outputs) != 1:
        return False
    x, seen, frontier = call.inputs[0], set(), [call.outputs[0]]
    while frontier and len(seen) < limit:
        v = frontier.pop()
        op = v.producer
        if op is None or id(op) in seen:
            continue
        seen.add(id(op))
        if op.name in SUMS and any(a is x for a in op.args[:2]):
            return True
        frontier.extend(a for a in op.inputs if a.param is None)
    return False


def zero_plan(template: ModuleCall, received: Value) -> ZeroPlan:
    """Which parameters of `template` to zero so that a copy of it, fed `received`, returns its input exactly."""
    if len(template.inputs) < 1 or template.inputs[0] is None or len(template.outputs) != 1:
        return ZeroPlan(reason=f"'{template.path}' does not map one traced tensor to one tensor")
    bound = image_activation(received)
    out: set[str] = set()
    owner = f"{template.path}." if template.path else ""
    if _identity_of(template.outputs[0], template.inputs[0], owner, out, bound):
        return ZeroPlan(out)
    last = template.outputs[0].producer
    tail = f"its output comes from '{last.name}'" if last is not None else "its output is not computed by an op"
    post = " (post-norm: it normalises after the residual add)" if last is not None and deepen_norm(last) else ""
    return ZeroPlan(reason=f"its output is not x + branch(x) with a zeroable branch; {tail}{post}")
