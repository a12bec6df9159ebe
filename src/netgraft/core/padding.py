"""Zero padding of a dimension that a LayerNorm or RMSNorm normalises, proven exact from the trace (REFERENCE 4.1).

Such a dimension keeps its norms' statistics under uniform replication only (integer multiples). To grow it from d to
any D, its new features are written so that each norm sees its old statistics up to a constant factor:

- every value a LayerNorm normalises holds, in its new features, each token's mean of its old features ("mean"); every
  value an RMSNorm normalises holds 0 ("zero"). The norm's mean is then unchanged and its variance (mean square) is
  (d/D) x the old one: its gain absorbs sqrt(d/D), its epsilon is scaled by d/D, and its old outputs are unchanged;
- a norm's output holds its bias (set to 0) in the new features: "zero";
- a layer that sums over the dimension gets new input columns: random where it reads "zero" (exact, and they learn
  once the features they read move), zero where it reads "mean".

`prove` follows the traced ops forward and gives every value along the dimension one of these two contents, from rules
that hold for any input (so the proof holds beyond the traced inputs):

- writers set what their new units hold: the rows and bias of a Linear, Conv or addmm/matmul weight, an Embedding's
  columns, a parameter added or concatenated (positions, a class token) - the apply kernel fills them with the mean of
  the old units (a mean of linear maps is the linear map of the mean) or with 0;
- sums keep "mean" + "mean" = "mean" and "zero" + "zero" = "zero"; a "zero" norm output added to a "mean" stream (a
  post-norm LayerNorm block) is neither: refused. Under RMSNorm everything is "zero", post-norm blocks included;
- linear ops that act on each feature alike keep either content (views, permutes, dropout - switched off by the
  contract -, sums/means and average pools over other axes, scaling by numbers or by tensors constant along the
  dimension, attention weights times values); ops with f(0) = 0 (GELU, ReLU, SiLU, max pools...) keep "zero" only;
- a product with a per-unit parameter (layer scale ``x * gamma``) keeps "zero" (gamma's new units: its mean, so the
  writer's zero rows still get a gradient); on a "mean" value it is exact only when the value is a writer's output
  used by that product alone: the writer's new rows then hold the gamma-weighted mean of its rows, divided by gamma's
  new unit (the mean of gamma), so gamma' x writer' is the mean of gamma x writer;
- a depthwise convolution is not linear across channels: it keeps "zero" (new filters: the mean, bias 0) and refuses
  "mean".

Anything else touching the dimension refuses padding, named. Each norm's epsilon must be rescalable: an
``nn.LayerNorm`` / ``nn.RMSNorm`` module (its own forward, its own weight) whose ``eps`` attribute is updated in the
result; a functional call passing a literal epsilon cannot be rescaled (refused, unless it is 0). An ``nn.RMSNorm``
with ``eps=None`` uses ``torch.finfo(dtype).eps`` of its input: the result gets that value (of the traced dtype) x d/D
as an explicit ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import space as sp
from .catalogue import AVG_POOLS, DROPOUT, MAX_POOLS, SPLITS, VIEWS, at_zero
from .graph import OpRecord, Trace, Value
from .space import Space

MEAN, ZERO = "mean", "zero"

#: The uniform constraint a LayerNorm / RMSNorm puts on the axes it normalises (`rules.norm`): the only one that
#: padding can replace.
NORM_REASONS = {"LayerNorm": "LayerNorm normalises over this axis", "RMSNorm": "RMSNorm normalises over this axis"}

_NORM_OPS = {"layer_norm": "LayerNorm", "rms_norm": "RMSNorm"}
_NORM_MODULES = {"layer_norm": nn.LayerNorm, "rms_norm": nn.RMSNorm}
_SHAPES = VIEWS | {"view_as", "reshape_as", "ravel", "unflatten", "swapaxes", "swapdims", "movedim", "moveaxis", "mH",
                   "adjoint", "expand", "expand_as", "broadcast_to", "repeat", "tile", "repeat_interleave"}
_LINEAR_UNARY = DROPOUT | {"neg", "negative", "pos", "positive"}
_ZERO_AT_ZERO = {"abs", "square", "sign", "sgn", "sqrt", "erf", "sin", "tanhshrink", "softshrink", "hardshrink",
                 "trunc", "round", "floor", "ceil"}
_SUMS = {"add", "sub", "subtract", "rsub"}
_PRODUCTS = {"mul", "multiply"}
_DIVISIONS = {"div", "divide", "truediv", "true_divide"}
_LINEAR_REDUCE = {"sum", "mean", "nansum", "nanmean"}
_MAX_REDUCE = {"amax", "amin"}
_CATS = {"cat", "concat", "concatenate", "stack"}
_RESAMPLE = {"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}
_CONVS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


@dataclass(frozen=True)
class Fill:
    """How the new units of one parameter axis along a padded dimension are written (`apply.AxisGrowth`).

    Per-unit axes (`summed` False): `value` "mean" (of the old units, along the axis) or "zero"; `weights`: the
    parameter whose values weight that mean (a layer scale folded into its writer); `gain`: a norm gain, scaled by
    sqrt(d/D). Summed-over axes: `value` "random" (they read 0) or "zero" (they read the mean)."""

    summed: bool
    value: str
    weights: str | None = None
    gain: bool = False


@dataclass
class EpsSite:
    """A norm module whose `eps` is scaled by d/D (`eps` None: RMSNorm's default, finfo(dtype).eps)."""

    module: str
    eps: float | None
    dtype: torch.dtype | None


@dataclass
class PadProof:
    """Why zero padding of one group is exact, and what apply must write: a `Fill` per parameter axis and the norms
    whose epsilon follows."""

    norm: str  # "LayerNorm" or "RMSNorm"
    fills: dict[tuple[str, int], Fill] = field(default_factory=dict)
    eps: list[EpsSite] = field(default_factory=list)

    def eps_value(self, site: EpsSite, old: int, new: int) -> float:
        base = site.eps if site.eps is not None else torch.finfo(site.dtype or torch.float32).eps
        return float(base) * old / new


class Refused(Exception):
    """Padding is not provably exact; the message says where and why."""


@dataclass
class _Demand:
    op: OpRecord
    kind: str  # "unit" (per-unit axis) or "read" (summed over)
    value: str  # unit: "mean"/"zero"; read: the content read (MEAN/ZERO)
    weights: str | None = None
    gain: bool = False


def prove(trace: Trace, leaf: Space, uniform: list[str]) -> PadProof | str:
    """A `PadProof` when zero padding of the group `leaf` is exact, else the reason why not (see the module
    docstring)."""
    other = [r for r in uniform if not any(r.startswith(p) for p in NORM_REASONS.values())]
    if other:
        return (f"{other[0]}: only a LayerNorm's or RMSNorm's statistics can be kept by zero padding (their change "
                f"is folded into the gain and epsilon)")
    try:
        return _Prover(trace, sp.find(leaf)).run()
    except Refused as err:
        return str(err)


class _Prover:
    def __init__(self, trace: Trace, leaf: Space):
        self.tr, self.leaf = trace, leaf
        self.state: dict[int, str] = {}  # id(Value) -> MEAN / ZERO
        self.demands: dict[tuple[str, int], list[_Demand]] = {}
        self.eps: dict[str, EpsSite] = {}
        self.target = ""  # what writers put in: MEAN (LayerNorm) or ZERO (RMSNorm)
        self.norm = ""
        self._where: dict[int, dict[int, bool]] = {}

    # -- where the dimension lies in a value ----------------------------------------------------------------------
    def axes(self, v: Value | None) -> dict[int, bool]:
        """{axis: True when the axis is the group itself, False when the group is part of it (a product/concat)}."""
        if v is None:
            return {}
        hit = self._where.get(id(v))
        if hit is None:
            hit = {}
            for i, d in enumerate(v.dims):
                r = sp.find(d)
                if r is self.leaf:
                    hit[i] = True
                elif r.kind != "leaf" and self.leaf in sp.leaves(r):
                    hit[i] = False
            self._where[id(v)] = hit
        return hit

    def direct(self, v: Value, op: OpRecord) -> int:
        """The one axis of `v` that is the group (refuses a value holding it twice or inside a merged axis)."""
        a = self.axes(v)
        if len(a) > 1:
            raise Refused(f"{op.where()} has the dimension on {len(a)} axes of one tensor")
        if not a or not next(iter(a.values())):
            raise Refused(f"{op.where()} holds the dimension merged with another axis")
        return next(iter(a))

    def content(self, v: Value, op: OpRecord) -> str:
        s = self.state.get(id(v))
        if s is None:
            raise Refused(f"{op.where()} reads a tensor along the dimension whose new features netgraft cannot tell "
                          f"(not made by a layer, norm or op the padding proof knows)")
        return s

    def param_axis(self, v: Value, axis: int, op: OpRecord) -> tuple[str, int]:
        if v.param is None or v.param_axes[axis] is None:
            raise Refused(f"{op.where()} uses a weight computed in forward along the dimension")
        return v.param, v.param_axes[axis]

    def demand(self, v: Value | None, axis: int, op: OpRecord, kind: str, value: str, weights: str | None = None,
               gain: bool = False) -> None:
        if v is None:
            return
        key = self.param_axis(v, axis, op)
        self.demands.setdefault(key, []).append(_Demand(op, kind, value, weights, gain))

    def unit(self, v: Value | None, op: OpRecord, value: str, **kw) -> None:  # noqa: ANN003
        """`v`'s axis along the group holds one entry per unit (rows, bias, gain): its new units get `value`."""
        if v is not None and self.axes(v):
            self.demand(v, self.direct(v, op), op, "unit", value, **kw)

    # -- the proof ----------------------------------------------------------------------------------------------------
    def run(self) -> PadProof:
        self._norm_kind()
        for op in self.tr.ops:
            ins = [v for v in op.inputs if self.axes(v)]
            outs = [v for v in op.outputs if self.axes(v)]
            if not ins and not outs:
                continue
            before = {k: len(d) for k, d in self.demands.items()}
            self.visit(op, ins, outs)
            self._all_params_accounted(op, ins, before)
        return PadProof(self.norm, self._fills(), list(self.eps.values()))

    def _norm_kind(self) -> None:
        kinds = set()
        for op in self.tr.ops:
            if op.name in _NORM_OPS and op.inputs and self.axes(op.inputs[0]):
                kinds.add(_NORM_OPS[op.name])
        if len(kinds) != 1:
            raise Refused("both LayerNorm and RMSNorm normalise the dimension: their new features would need both "
                          "the mean and zero" if kinds else "no LayerNorm/RMSNorm op normalises the dimension itself")
        self.norm = kinds.pop()
        self.target = MEAN if self.norm == "LayerNorm" else ZERO

    def _all_params_accounted(self, op: OpRecord, ins: list[Value], before: dict) -> None:
        """Every parameter along the group that `op` uses must have been given a fill by it (or, for a view of a
        parameter, be passed on as one)."""
        for v in ins:
            if v.param is None:
                continue
            if op.name in _SHAPES and op.outputs and op.outputs[0].param == v.param:
                continue  # a view of the parameter: its user decides
            for i in self.axes(v):
                key = (v.param, v.param_axes[i])
                if v.param_axes[i] is None or len(self.demands.get(key, ())) <= before.get(key, 0):
                    raise Refused(f"{op.where()} uses parameter '{v.param}' along the dimension in a way the padding "
                                  f"proof does not know")

    def _fills(self) -> dict[tuple[str, int], Fill]:
        fills: dict[tuple[str, int], Fill] = {}
        for key, ds in self.demands.items():
            units = {(d.value, d.weights, d.gain) for d in ds if d.kind == "unit"}
            reads = {d.value for d in ds if d.kind == "read"}
            if len(units) > 1 or (units and MEAN in reads and next(iter(units))[0] != ZERO):
                ops = ", ".join(dict.fromkeys(d.op.where() for d in ds))
                raise Refused(f"parameter '{key[0]}' (axis {key[1]}) would need two different new units for its uses "
                              f"({ops})")
            if units:
                value, weights, gain = units.pop()
                fills[key] = Fill(False, value, weights, gain)
            else:
                fills[key] = Fill(True, "zero" if MEAN in reads else "random")
        for name, dims in self.tr.param_dims.items():
            for axis, d in enumerate(dims):
                r = sp.find(d)
                if (r is self.leaf or self.leaf in sp.leaves(r)) and (name, axis) not in fills:
                    raise Refused(f"parameter '{name}' lies along the dimension (axis {axis}) but no op the padding "
                                  f"proof knows uses it")
                if r is not self.leaf and (name, axis) in fills and not fills[(name, axis)].summed:
                    raise Refused(f"parameter '{name}' holds the dimension merged with another axis (axis {axis})")
        return fills

    # -- ops ----------------------------------------------------------------------------------------------------------
    def visit(self, op: OpRecord, ins: list[Value], outs: list[Value]) -> None:
        name = op.name
        handler: Callable[[OpRecord], None] | None = None
        if name == "linear":
            handler = self.linear
        elif name in _CONVS:
            handler = self.conv
        elif name == "embedding":
            handler = self.embedding
        elif name in _NORM_OPS:
            handler = self.norm_op
        elif name == "addmm":
            handler = self.addmm
        elif name in ("matmul", "mm", "bmm"):
            handler = self.matmul
        elif name in _SUMS:
            handler = self.sum_op
        elif name in _PRODUCTS:
            handler = self.product
        elif name in _DIVISIONS:
            handler = self.division
        elif name == "masked_fill":
            handler = self.masked_fill
        elif name in _CATS:
            handler = self.cat
        elif name in _SHAPES or name in SPLITS:
            handler = self.shape
        elif name in _LINEAR_UNARY or name in _ZERO_AT_ZERO or at_zero(op) is not None:
            handler = self.unary
        elif name in _LINEAR_REDUCE | _MAX_REDUCE or name in AVG_POOLS | MAX_POOLS | _RESAMPLE:
            handler = self.keeps_axis
        if name == "multi_head_attention_forward":
            raise Refused(f"{op.where()} (nn.MultiheadAttention) uses the dimension as its embed_dim = num_heads x "
                          f"head_dim: it grows by whole heads, not by padding")
        if handler is None:
            raise Refused(f"{op.where()} touches the dimension, and the padding proof has no rule for it (zero "
                          f"padding must be proven exact op by op)")
        handler(op)

    def _set(self, op: OpRecord, v: Value, content: str) -> None:
        a = self.axes(v)
        if any(not d for d in a.values()) and content != ZERO:
            raise Refused(f"{op.where()} merges the dimension with another axis while its new features hold the mean "
                          "(only zeros can be followed into a merged axis)")
        self.state[id(v)] = content

    def _writer_rows(self, op: OpRecord, w: Value, axis: int, bias: Value | None, out: Value, out_axis: int) -> None:
        """A layer whose weight rows (and bias) make the units of the group: they get the writers' content."""
        if list(self.axes(out).items()) != [(out_axis % len(out.shape), True)]:
            raise Refused(f"{op.where()} writes the dimension on an unexpected axis")
        self.demand(w, axis, op, "unit", self.target)
        self.unit(bias, op, self.target)
        self._set(op, out, self.target)

    def _read(self, op: OpRecord, x: Value, w: Value, axis: int) -> None:
        """A layer that sums over the group: its new columns read what `x` holds."""
        s = self.content(x, op)
        self.demand(w, axis, op, "read", s)

    def linear(self, op: OpRecord) -> None:
        # x: (*, C_in)  w: (C_out, C_in)  b: (C_out,) -> (*, C_out)
        x, w, b = op.arg(0, "input"), op.arg(1, "weight"), op.arg(2, "bias")
        out = op.outputs[0]
        xa, last = self.axes(x), len(x.shape) - 1
        batch = [a for a in xa if a != last]
        if batch:  # the group is a batch axis of the input (a token-mixing Linear): linear per unit, bias added
            if len(xa) > 1 or not xa[batch[0]] or self.axes(w) or self.axes(b):
                raise Refused(f"{op.where()} applies a Linear along another axis of a tensor holding the dimension "
                              "in an unsupported layout")
            s = self.content(x, op)
            if s == ZERO and b is not None:
                raise Refused(f"{op.where()} adds its bias to every feature of a tensor whose new features are 0 "
                              "(a Linear over another axis): they would not stay 0")
            self._set(op, out, s)
            return
        if last in xa:
            self._read(op, x, w, 1)
        if self.axes(out):
            self._writer_rows(op, w, 0, b, out, -1)

    def conv(self, op: OpRecord) -> None:
        # conv: w (C_out, C_in/g, *k); transposed: w (C_in, C_out/g, *k); x (N, C_in, *S) -> (N, C_out, *S')
        x, w, b = op.arg(0, "input"), op.arg(1, "weight"), op.arg(2, "bias")
        groups = op.arg(6, "groups", 1)
        transposed = op.name.startswith("conv_transpose")
        out = op.outputs[0]
        c = len(x.shape) - (len(w.shape) - 2) - 1
        if any(a != c for a in self.axes(x)) or any(a != c for a in self.axes(out)):
            raise Refused(f"{op.where()} holds the dimension on a spatial axis")
        in_ax, out_ax = (0, 1) if transposed else (1, 0)
        if groups == 1:
            if self.axes(x):
                self._read(op, x, w, in_ax)
            if self.axes(out):
                self._writer_rows(op, w, out_ax, b, out, c)
            return
        depthwise = w.shape[1] == 1 and x.shape[c] == groups and out.shape[c] == groups
        if not depthwise or not self.axes(x).get(c) or not self.axes(out).get(c):
            raise Refused(f"{op.where()} is a grouped convolution over the dimension")
        if self.content(x, op) != ZERO:
            raise Refused(f"{op.where()} is a depthwise convolution over the dimension, which is not linear across "
                          "channels: its new channels cannot hold each position's mean of its outputs (a LayerNorm "
                          "after it would see new statistics)")
        self.demand(w, 0, op, "unit", MEAN)  # filters of the new channels: live, they multiply zeros
        self.unit(b, op, ZERO)
        self._set(op, out, ZERO)

    def embedding(self, op: OpRecord) -> None:
        # ids: (*)  w: (V, D) -> (*, D)
        w, out = op.arg(1, "weight"), op.outputs[0]
        if 1 not in self.axes(w) or self.axes(op.arg(0, "input")):
            raise Refused(f"{op.where()} holds the dimension on the vocabulary axis")
        self._writer_rows(op, w, 1, None, out, -1)

    def addmm(self, op: OpRecord) -> None:
        # bias: (N,)  x: (M, K)  w: (K, N) -> (M, N)   (Hugging Face's Conv1D)
        bias, x, w = op.arg(0, "input"), op.arg(1, "mat1"), op.arg(2, "mat2")
        out = op.outputs[0]
        if 0 in self.axes(x) or any(a != 1 for a in self.axes(out)):
            raise Refused(f"{op.where()} holds the dimension on its row axis")
        if 1 in self.axes(x):
            self._read(op, x, w, 0)
        if self.axes(out):
            self._writer_rows(op, w, 1, bias, out, -1)

    def matmul(self, op: OpRecord) -> None:
        # a: (*B, M, K)  b: (*B, K, N) -> (*B, M, N)
        a, b = op.args[0], op.args[1]
        out = op.outputs[0]
        if not (isinstance(a, Value) and isinstance(b, Value)) or len(a.shape) < 2 or len(b.shape) < 2:
            raise Refused(f"{op.where()}: a product of vectors along the dimension")
        if b.param is not None and a.param is None:  # x @ W: W's rows read x, its columns write
            if any(i != len(a.shape) - 1 for i in self.axes(a)):
                raise Refused(f"{op.where()} holds the dimension on a batch axis of x in x @ W")
            if self.axes(a):
                self._read(op, a, b, len(b.shape) - 2)
            if self.axes(out):
                self._writer_rows(op, b, len(b.shape) - 1, None, out, -1)
            return
        if a.param is None and b.param is None and bool(self.axes(a)) != bool(self.axes(b)):
            v, contracted = (a, len(a.shape) - 1) if self.axes(a) else (b, len(b.shape) - 2)
            if contracted in self.axes(v):
                raise Refused(f"{op.where()} sums over the dimension in a product of two activations")
            self._set(op, out, self.content(v, op))  # e.g. attention weights x values: linear in the values
            return
        raise Refused(f"{op.where()} multiplies matrices holding the dimension in a way the padding proof does not "
                      "know")

    def norm_op(self, op: OpRecord) -> None:
        # x: (*, *D) -> y: same; statistics over the last len(D) axes; weight, bias: D
        x, out = op.arg(0, "input"), op.outputs[0]
        kind = _NORM_OPS[op.name]
        shape = op.arg(1, "normalized_shape")
        k = 1 if isinstance(shape, int) else len(shape)
        axis = self.direct(x, op)
        normalised = [i for i in range(len(x.shape) - k, len(x.shape)) if x.shape[i] > 1]
        if normalised != [axis]:
            raise Refused(f"{op.where()} normalises the dimension together with other axes: zero padding keeps "
                          "the statistics of one normalised axis only")
        want = MEAN if kind == "LayerNorm" else ZERO
        s = self.content(x, op)
        if s != want:
            raise Refused(
                f"{op.where()} normalises a tensor whose new features hold 0, not each token's mean (a norm's output "
                f"reaching a LayerNorm without a residual stream in between)" if want == MEAN else
                f"{op.where()} normalises a tensor whose new features hold the mean, not 0")
        w = op.arg(2, "weight")
        bias = op.arg(3, "bias") if kind == "LayerNorm" else None
        if not isinstance(w, Value):
            raise Refused(f"{op.where()} has no gain (elementwise_affine=False) to absorb the statistics' factor "
                          f"sqrt(d/D)")
        self.unit(w, op, MEAN, gain=True)
        if isinstance(bias, Value):
            self.unit(bias, op, ZERO)
        elif bias is not None:
            raise Refused(f"{op.where()} has a bias that is not a tensor")
        self._epsilon(op, kind, x, w)
        self._set(op, out, ZERO)

    def _epsilon(self, op: OpRecord, kind: str, x: Value, w: Value) -> None:
        eps = op.arg(4, "eps", 1e-5) if kind == "LayerNorm" else op.arg(3, "eps", None)
        try:
            m = self.tr.model.get_submodule(op.module) if op.module else self.tr.model
        except AttributeError:
            m = None
        cls = _NORM_MODULES[op.name]
        own_weight = w.param == (f"{op.module}.weight" if op.module else "weight")
        if isinstance(m, cls) and type(m).forward is cls.forward and own_weight and m.eps == eps:
            self.eps.setdefault(op.module, EpsSite(op.module, eps, x.dtype))
            return
        if eps is not None and float(eps) == 0.0:
            return  # nothing to rescale
        shown = "None (finfo(dtype).eps)" if eps is None else f"{eps}"
        raise Refused(f"{op.where()} passes eps={shown} itself, not as the `eps` of an nn.{kind} module: padding "
                      f"scales the statistics by d/D and this epsilon cannot be rescaled with them (use nn.{kind}, or "
                      "eps=0)")

    def sum_op(self, op: OpRecord) -> None:
        # a + b, a - b (broadcast): the mean of sums is the sum of means; 0 + 0 = 0
        out = op.outputs[0]
        acts, params, consts = self._operands(op)
        contents = {self.content(v, op) for v in acts}
        if len(contents) > 1:
            raise Refused(f"{op.where()} adds a tensor whose new features hold 0 (a norm's output) to one whose new "
                          f"features hold the per-token mean (a LayerNorm stream): post-norm, the sum's new features "
                          f"would be neither")
        s = contents.pop() if contents else self.target
        if s == ZERO and any(not (isinstance(c, (int, float)) and c == 0) for c in consts):
            raise Refused(f"{op.where()} adds something constant along the dimension to a tensor whose new features "
                          f"are 0: they would not stay 0")
        for p in params:  # a bias or position embedding added per unit: new units hold what the sum needs
            self.unit(p, op, s)
        self._set(op, out, s)

    def product(self, op: OpRecord) -> None:
        out = op.outputs[0]
        acts, params, _ = self._operands(op)
        contents = [self.content(v, op) for v in acts]
        if ZERO in contents:  # 0 x anything = 0; a per-unit gain's new units: its mean (keeps the gradient alive)
            for p in params:
                self.unit(p, op, MEAN)
            self._set(op, out, ZERO)
            return
        if len(acts) == 1 and not params:  # the mean scaled by a number or by a tensor constant along the dimension
            self._set(op, out, MEAN)
            return
        if len(acts) == 1 and len(params) == 1:
            self._layer_scale(op, acts[0], params[0])
            self._set(op, out, MEAN)
            return
        raise Refused(f"{op.where()} multiplies tensors along the dimension whose new features hold the per-token "
                      f"mean: the product's new features would not be the mean of its old ones")

    def _layer_scale(self, op: OpRecord, x: Value, gamma: Value) -> None:
        """``writer(h) * gamma`` on a "mean" stream: the writer's new rows hold the gamma-weighted mean of its rows
        over gamma's new unit (gamma's mean), so that gamma' x writer' = mean(gamma x writer)."""
        writer, v, user = x.producer, x, op
        while writer is not None and v.consumers == [user] and writer.name in _LINEAR_UNARY | VIEWS \
                and writer.inputs and writer.outputs == [v]:  # back through dropout, permutes, views
            v, user = writer.inputs[0], writer
            writer = v.producer
        if writer is None or writer.name not in ("linear", "conv1d", "conv2d", "conv3d") or v.consumers != [user]:
            raise Refused(f"{op.where()} scales a tensor whose new features hold the per-token mean by a per-unit "
                          f"parameter ('{gamma.param}'), and that tensor is not a Linear/Conv output used by this "
                          f"product alone (which could absorb the scale)")
        name, axis = self.param_axis(gamma, self.direct(gamma, op), op)
        g = self.tr.tensors_by_name[name].detach().double()
        g = g.movedim(axis, 0).reshape(g.shape[axis], -1)
        if g.shape[1] != 1:
            raise Refused(f"{op.where()} scales by '{name}', which is not one value per unit")
        mean = float(g.mean())
        if mean == 0.0 and bool((g != 0).any()):
            raise Refused(f"{op.where()} scales by '{name}', whose mean is 0: its new unit cannot carry the "
                          f"weighted mean of the writer's rows")
        weights = name if mean != 0.0 else None  # all zero: the product is 0 = the mean, whatever the writer holds
        for d in [d for ds in self.demands.values() for d in ds if d.op is writer and d.kind == "unit"]:
            d.weights = weights
        self.unit(gamma, op, MEAN)

    def division(self, op: OpRecord) -> None:
        acts, params, _ = self._operands(op)
        first = op.args[0]
        if params or len(acts) != 1 or acts[0] is not first:
            raise Refused(f"{op.where()} divides by a tensor along the dimension")
        self._set(op, op.outputs[0], self.content(first, op))

    def masked_fill(self, op: OpRecord) -> None:
        x, mask, value = op.args[0], op.arg(1, "mask"), op.arg(2, "value")
        s = self.content(x, op)
        if self.axes(mask) or not isinstance(value, (int, float)) or (s == ZERO and value != 0):
            raise Refused(f"{op.where()} fills positions along the dimension with values that break its new features")
        self._set(op, op.outputs[0], s)

    def cat(self, op: OpRecord) -> None:
        out = op.outputs[0]
        self.direct(out, op)
        contents = {self.content(v, op) for v in op.inputs if v.param is None}
        if len(contents) > 1:
            raise Refused(f"{op.where()} joins tensors whose new features hold different things (0 and the mean)")
        s = contents.pop() if contents else self.target
        for v in op.inputs:
            if v.param is not None:
                self.unit(v, op, s)  # a class token or register parameter: its new units hold the same
        self._set(op, out, s)

    def shape(self, op: OpRecord) -> None:
        src = op.inputs[0] if op.inputs else None
        if src is None or not self.axes(src) or any(self.axes(v) for v in op.inputs[1:]):
            raise Refused(f"{op.where()} makes the dimension from several tensors")
        if src.param is not None:
            if all(v.param == src.param for v in op.outputs):
                return  # a view of a parameter: the op that uses it decides its new units
            raise Refused(f"{op.where()} computes from parameter '{src.param}' along the dimension")
        s = self.content(src, op)
        for v in op.outputs:
            if not self.axes(v):
                if op.name not in SPLITS:  # a split's other pieces may lie elsewhere; a view must keep the axis
                    raise Refused(f"{op.where()} selects part of the dimension")
                continue
            self._set(op, v, s)

    def unary(self, op: OpRecord) -> None:
        src = op.args[0] if op.args and isinstance(op.args[0], Value) else op.inputs[0]
        s = self.content(src, op)
        linear = op.name in _LINEAR_UNARY
        keeps_zero = linear or op.name in _ZERO_AT_ZERO or (at_zero(op) or (False, False))[0]
        if s == MEAN and not linear:
            raise Refused(f"{op.where()} applies a nonlinear function to a tensor whose new features hold the "
                          f"per-token mean: the result's new features would not be the mean of its old ones")
        if s == ZERO and not keeps_zero:
            raise Refused(f"{op.where()} is not 0 at 0: the new features would not stay 0")
        for v in op.outputs:
            if self.axes(v):
                self._set(op, v, s)

    def keeps_axis(self, op: OpRecord) -> None:
        """Reductions and pools over other axes: sums, means and average pools are linear (either content);
        maxima keep 0 only."""
        src = op.inputs[0]
        s = self.content(src, op)
        linear = op.name in _LINEAR_REDUCE or op.name in AVG_POOLS or op.name in _RESAMPLE
        if s == MEAN and not linear:
            raise Refused(f"{op.where()} takes maxima of a tensor whose new features hold the per-token mean")
        outs = [v for v in op.outputs if self.axes(v)]
        if len(op.inputs) > 1 or not outs or len(outs) != 1:
            raise Refused(f"{op.where()} reduces over the dimension")
        self._set(op, outs[0], s)

    def _operands(self, op: OpRecord) -> tuple[list[Value], list[Value], list]:
        """(activations along the group, parameters along the group, everything constant along it: numbers and
        tensors broadcast over it)."""
        acts, params, consts = [], [], []
        items = list(op.args) + [op.kwargs[k] for k in ("other",) if k in op.kwargs]
        for a in items:
            if isinstance(a, Value):
                if not self.axes(a):
                    consts.append(a)
                elif a.param is not None:
                    params.append(a)
                else:
                    acts.append(a)
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                consts.append(a)
        if op.inputs and sum(1 for v in op.inputs if self.axes(v)) != len(acts) + len(params):
            raise Refused(f"{op.where()} takes tensors along the dimension in an unexpected form")
        for v in acts + params:
            a = self.axes(v)
            if len(a) != 1 or not next(iter(a.values())):
                raise Refused(f"{op.where()} combines tensors holding the dimension merged with another axis")
        return acts, params, consts

