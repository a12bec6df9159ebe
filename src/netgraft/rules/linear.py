"""Linear layers: the coupling rule for `F.linear` (`nn.Linear` and any module calling it with its own weight), the
`LinearKind` of ``nn.Linear``, and the kind of Hugging Face's ``Conv1D`` (a Linear storing its weight (in, out))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.graph import OpRecord
from ..core.layers import LayerKind, ShapeOf, TracedLayer, register_kind
from ..core.registry import RuleContext, register_op
from .contract import contract
from .owner import _owner, _produce


@register_op(F.linear, names=["linear"])
def _linear(ctx: RuleContext) -> None:
    # w: (C_out, C_in)  b: (C_out,)  x: (*, C_in) -> y: (*, C_out)
    x, w, b = (ctx.value(ctx.arg(i, n)) for i, n in enumerate(("input", "weight", "bias")))
    out = ctx.outputs[0]
    contract(ctx, x, -1, w, 1)
    if w.param is not None:
        ctx.per_unit(w, 0, out.dim(-1))
        _produce(ctx, out.dim(-1), w)
    else:  # a weight computed in forward (a parametrization such as spectral_norm or weight_norm)
        ctx.same(w.dim(0), out.dim(-1))
        ctx.block(out.dim(-1), "the weight of this linear op is computed in forward (e.g. a parametrization); "
                               "netgraft cannot resize what it is computed from")
        ctx.produces(out.dim(-1))
    ctx.per_unit(b, 0, out.dim(-1))
    for i in range(len(x.shape) - 1):
        ctx.same(x.dims[i], out.dims[i])
    if (owner := _owner(ctx, nn.Linear, w)) is not None:
        ctx.set_attr("in_features", x.dim(-1), module=owner)
        ctx.set_attr("out_features", out.dim(-1), module=owner)


@register_kind(nn.Linear)
class LinearKind(LayerKind):
    """``nn.Linear``: weight (out, in), features last. Its ops: ``F.linear`` and ``addmm`` (bias + x @ w)."""

    ops = ("linear", "addmm")
    features_last = True
    creates_features = True
    fan_in_scaled = True
    zeroing = {"linear": (1, "weight", 2, "bias")}

    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        w = shape_of(module, "weight")
        return [("in_features", module.in_features, w[1]), ("out_features", module.out_features, w[0])] if w else []

    def read_op(self, op: OpRecord) -> TracedLayer:
        return TracedLayer(self, op, 0)

    def identity_problem(self, layer: TracedLayer, shape: tuple[int, ...], where: str) -> str | None:
        return None  # any number of leading axes: the identity matrix acts on the last one

    def identity(self, layer: TracedLayer, channels: int) -> nn.Module:
        new = nn.Linear(channels, channels)
        with torch.no_grad():
            new.weight.copy_(torch.eye(channels))
            new.bias.zero_()
        return new

    def gradmax_problem(self, module: nn.Module, side: str) -> str | None:
        return None  # M = sum over positions of g h^T, position by position

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        return "linear", tuple(module.weight.shape)

    def channel_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (0, 1)


@register_kind(class_names=("Conv1D",))
class HFConv1DKind(LayerKind):
    """GPT-2's ``transformers.pytorch_utils.Conv1D`` (netgraft does not import transformers: known by class name and
    its ``nf`` attribute): a Linear whose weight is stored transposed, (in, out). Its forward is ``addmm``, which the
    Linear rules cover; inject reads and writes its weight in that layout, so it matches ``nn.Linear`` exactly."""

    creates_features = True
    fan_in_scaled = True

    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]] | None:
        if not (hasattr(module, "nf") and hasattr(module, "weight")):
            return None  # another class that happens to be called Conv1D
        return "linear", tuple(module.weight.shape[::-1])

    def canonical(self, module: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
        return t.t() if name == "weight" else t

    def stored(self, module: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
        return t.t() if name == "weight" else t

    def channel_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (0, 1)
