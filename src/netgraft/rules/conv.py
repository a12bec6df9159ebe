"""Convolutions, plain, grouped, depthwise and transposed: the coupling rule for ``F.conv*`` and ``ConvKind``,
everything else netgraft knows about ``nn.Conv*`` (attributes, deepen's Dirac identity, GradMax's patch algebra,
inject's layout)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.graph import OpRecord, Value
from ..core.layers import LayerKind, ShapeOf, TracedLayer, register_kind
from ..core.registry import RuleContext, register_op
from ..errors import InvalidRequestError
from .owner import _owner, _produce


def _conv(ctx: RuleContext, transposed: bool) -> None:
    # conv:            w: (C_out, C_in/g, *k)  x: (N, C_in, *S) -> y: (N, C_out, *S')
    # conv_transpose:  w: (C_in, C_out/g, *k)  x: (N, C_in, *S) -> y: (N, C_out, *S')   (N may be absent)
    x, w = ctx.value(ctx.arg(0, "input")), ctx.value(ctx.arg(1, "weight"))
    b = ctx.value(ctx.arg(2, "bias"))
    groups = ctx.arg(6, "groups", 1)  # 6th in conv(..., dilation, groups) and conv_transpose(..., groups, dilation)
    out = ctx.outputs[0]
    n_spatial = len(w.shape) - 2
    c = len(x.shape) - n_spatial - 1  # channel axis (0 for unbatched input)
    if c == 1:
        ctx.same(x.dims[0], out.dims[0])
    for k in range(n_spatial):
        ctx.fix(w.dims[2 + k], "convolution kernel axis")
        ctx.fix(x.dims[c + 1 + k], "spatial axis of a convolution input")
        ctx.fix(out.dims[c + 1 + k], "spatial axis")
    cin, cout = x.dim(c), out.dim(c)
    in_ax, out_ax = (0, 1) if transposed else (1, 0)
    owner = _owner(ctx, nn.modules.conv._ConvNd, w)
    if groups == 1:
        ctx.fan_in(w, in_ax, cin)
        ctx.per_unit(w, out_ax, cout)
        _produce(ctx, cout, w)
    elif not transposed and w.shape[1] == 1:  # depthwise: each output channel reads one input channel
        mult = out.shape[c] // groups
        if mult == 1:
            ctx.per_unit(w, 0, cin)
            ctx.same(cin, cout)
        else:
            g, m = ctx.split(w.dim(0), [groups, mult], "depthwise channel multiplier")
            ctx.same(g, cin)
            ctx.fix(m, f"channel multiplier {mult} of a depthwise convolution")
            ctx.per_unit(w, 0, cout)
        if owner is not None:
            ctx.set_attr("groups", cin, module=owner)
    elif not transposed:  # grouped: the groups stay, each group's channels grow alike
        gin = ctx.split(cin, [groups, cin.size // groups], f"groups={groups}")
        ctx.fix(gin[0], f"{type(ctx.running_module()).__name__} '{ctx.record.module}' has groups={groups}")
        ctx.fan_in(w, 1, gin[1])
        gout = ctx.split(w.dim(0), [groups, w.shape[0] // groups], f"groups={groups}")
        ctx.same(gout[0], gin[0])
        ctx.per_unit(w, 0, cout)
        _produce(ctx, cout, w)
    elif w.shape[0] == groups and w.shape[1] == 1:  # depthwise transposed convolution
        ctx.per_unit(w, 0, cin)
        ctx.same(cin, cout)
        if owner is not None:
            ctx.set_attr("groups", cin, module=owner)
    else:
        ctx.block_all(f"grouped transposed convolution (groups={groups})")
        return
    ctx.per_unit(b, 0, cout)
    if owner is not None:
        ctx.set_attr("in_channels", cin, module=owner)
        ctx.set_attr("out_channels", cout, module=owner)


@register_op(F.conv1d, F.conv2d, F.conv3d, names=["conv1d", "conv2d", "conv3d"])
def _convnd(ctx: RuleContext) -> None:
    _conv(ctx, transposed=False)


@register_op(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
             names=["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"])
def _conv_transpose(ctx: RuleContext) -> None:
    _conv(ctx, transposed=True)


_OP_NDIM = {"conv1d": 1, "conv2d": 2, "conv3d": 3, "conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}
_CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _tuple(v: object, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n  # type: ignore[arg-type]


@register_kind(nn.modules.conv._ConvNd)
class ConvKind(LayerKind):
    """``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d``: channels first, a kernel over the spatial axes."""

    ops = tuple(_OP_NDIM)
    features_last = False
    creates_features = True
    fan_in_scaled = True
    spatial = True
    gradmax_passthrough_ops = ("conv1d", "conv2d")  # a depthwise conv between two convs: a Dirac identity unit
    zeroing = {name: (1, "weight", 2, "bias") for name in _OP_NDIM}

    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        w = shape_of(module, "weight")
        if not w:
            return []
        cin = w[0] if module.transposed else w[1] * module.groups
        cout = w[1] * module.groups if module.transposed else w[0]
        return [("in_channels", module.in_channels, cin), ("out_channels", module.out_channels, cout)]

    # -- deepen: read the traced op (the argument positions of F.conv*, as in the rule above), build an identity ------
    def read_op(self, op: OpRecord) -> TracedLayer:
        nd = _OP_NDIM[op.name]
        weight = op.arg(1, "weight")
        kernel = tuple(weight.shape[2:]) if isinstance(weight, Value) else (1,) * nd
        transposed = op.name.startswith("conv_transpose")
        stride = _tuple(op.arg(3, "stride", 1), nd)
        dilation = _tuple(op.arg(7 if transposed else 5, "dilation", 1), nd)
        groups = int(op.arg(6, "groups", 1))  # position 6 in both conv and conv_transpose
        return TracedLayer(self, op, nd, kernel, stride, dilation, groups)

    def identity_problem(self, layer: TracedLayer, shape: tuple[int, ...], where: str) -> str | None:
        nd, conv = layer.ndim, f"Conv{layer.ndim}d '{layer.op.module}'"
        if len(shape) != nd + 2:
            return f"{where} has shape {shape}, not the (N, C, ...) of the {conv} that feeds it"
        if any(k % 2 == 0 for k in layer.kernel):
            return f"the {conv} before {where} has kernel {layer.kernel}; an even kernel has no centre for the Dirac " \
                   "identity"
        if any(s != 1 for s in layer.stride):
            return f"the {conv} before {where} has stride {layer.stride}; a layer like it changes the spatial size, " \
                   "so it cannot be an identity (deepen after a stride-1 conv instead)"
        return None

    def identity(self, layer: TracedLayer, channels: int) -> nn.Module:
        """Same kernel, dilation and groups, stride 1, 'same' padding; a Dirac kernel per group: output channel o
        reads input channel o at the kernel's centre."""
        groups = layer.groups if channels % layer.groups == 0 else 1
        padding = tuple(d * (k - 1) // 2 for d, k in zip(layer.dilation, layer.kernel, strict=True))
        new = _CONV_MODULES[layer.ndim](channels, channels, layer.kernel, padding=padding, dilation=layer.dilation,
                                        groups=groups)
        with torch.no_grad():
            new.weight.zero_()
            new.bias.zero_()
            per_group = channels // groups
            centre = tuple(k // 2 for k in layer.kernel)
            for o in range(channels):  # output o reads input o: index o % per_group inside its group
                new.weight[(o, o % per_group, *centre)] = 1.0
        return new

    # -- grow_ --------------------------------------------------------------------------------------------------------
    def identity_unit(self, module: nn.Module, attr: str, old: torch.Tensor, axis: int,
                      bn_weight: float | None) -> torch.Tensor | None:
        if attr == "weight" and module.groups > 1 and axis == 0:
            k = torch.zeros_like(old.narrow(0, 0, 1))  # Dirac kernel: the depthwise filter passes its input through
            k[(0, 0, *[s // 2 for s in old.shape[2:]])] = 1.0
            return k
        return None

    def gradmax_problem(self, module: nn.Module, side: str) -> str | None:
        if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return f"{type(module).__name__} (GradMax reads Conv1d/Conv2d only)"
        if module.groups != 1:
            return f"groups={module.groups}"
        if isinstance(module.padding, str):  # the patches and the adjoint need the padding in numbers
            return f"padding='{module.padding}'; use integer padding"
        if side == "writer" and module.padding_mode != "zeros":  # its patches are read with zero padding
            return f"padding_mode='{module.padding_mode}'"
        return None

    def gradmax_patches(self, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Patches of the conv's input: (B, C_in * prod(kernel), positions)."""
        if isinstance(module, nn.Conv1d):
            h = h.unsqueeze(2)
            k, d, p, s = (1, *module.kernel_size), (1, *module.dilation), (0, *module.padding), (1, *module.stride)
        else:
            k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
        return F.unfold(h, k, dilation=d, padding=p, stride=s)

    def gradmax_adjoint(self, module: nn.Module, g: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        """For every basis fan-out kernel e_j (j = (c_out, tap)), dL/d(new unit) at each position of the unit's map:
        the transposed convolution of the output gradient with e_j. Shape (B, C_out * prod(kernel), positions)."""
        c_out, taps = module.out_channels, math.prod(module.kernel_size)
        eye = torch.eye(c_out * taps, dtype=g.dtype, device=g.device)  # basis[c, j, t] = 1 iff j = c * taps + t
        basis = eye.reshape(c_out, taps, c_out * taps).transpose(1, 2).reshape(c_out, c_out * taps,
                                                                                *module.kernel_size)
        fn = F.conv_transpose1d if isinstance(module, nn.Conv1d) else F.conv_transpose2d
        out = fn(g, basis, stride=module.stride, padding=module.padding, dilation=module.dilation)
        pads = [s - o for s, o in zip(spatial, out.shape[2:], strict=True)]
        if any(p < 0 for p in pads):
            raise InvalidRequestError("grow_(init='gradmax'): the next layer's geometry does not match the grown "
                                      "layer's map")
        pad = [x for p in reversed(pads) for x in (0, p)]  # output_padding: positions no output reads get no gradient
        return F.pad(out, pad).flatten(2)

    # -- inject -------------------------------------------------------------------------------------------------------
    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]]:
        nd = module.weight.dim() - 2
        return (f"conv_transpose{nd}d" if module.transposed else f"conv{nd}d"), tuple(module.weight.shape)

    def channel_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (0, 1)
