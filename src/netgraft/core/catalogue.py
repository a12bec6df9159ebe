"""The shared catalogue of op classes: which traced ops are activations, views, norms, pools, dropout...

Ops are named as the trace names them (`registry.op_name`: ``F.relu``, ``torch.relu`` and ``Tensor.relu_`` are all
``"relu"``). Every file that needs to know what kind of op it looks at asks here, so the classes cannot drift apart
from one file to the next. Each set is a fact about the ops; an operator that wants only part of one (deepen copies
only some activations into what it inserts) says so where it composes them.

Layer types (Linear, Conv, norms...) are not op classes: what netgraft knows about each lives in its `LayerKind`
(`core.layers`), next to its coupling rule in `rules/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # core.state imports this catalogue, and core.graph imports core.state
    from .graph import OpRecord

# -- values kept as they are -------------------------------------------------------------------------------------------
#: The input's values, same shape and dtype.
COPIES = frozenset({"contiguous", "clone", "detach", "data"})
#: The input's values in another dtype or on another device.
CASTS = frozenset({"to", "float", "double", "half", "bfloat16", "type", "type_as"})
#: The input's elements rearranged or selected (one output that is a view or a copy of part of the input).
RESHAPES = frozenset({"getitem", "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute",
                      "transpose", "t", "T", "mT", "swapaxes", "swapdims", "movedim", "expand", "expand_as",
                      "broadcast_to", "narrow", "select"})
#: Ops whose single output holds only elements of the input: a parameter stays a parameter through them, zeros stay
#: zeros, and values stay inside any interval the input lies in.
VIEWS = COPIES | CASTS | RESHAPES
#: The input cut into several outputs, each a piece of it.
SPLITS = frozenset({"split", "chunk", "unbind"})

# -- dropout -----------------------------------------------------------------------------------------------------------
#: Every dropout op: train-mode certificates switch their randomness off.
DROPOUT = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"})
#: Dropout that zeroes an element or scales it by 1/(1-p): a zero stays zero, a cone such as ReLU's image stays one.
#: (Alpha dropout moves dropped elements to a negative value and shifts the rest: neither holds.)
SCALING_DROPOUT = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d"})

# -- activations -------------------------------------------------------------------------------------------------------
#: Activations netgraft can rebuild as a module (deepen imitates the model's own activation in what it inserts); the
#: ones with arguments (hardtanh's bounds, gelu's approximation, leaky_relu's slope) are built from the traced op.
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardtanh": nn.Hardtanh, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "mish": nn.Mish, "hardswish": nn.Hardswish,
    "softplus": nn.Softplus, "selu": nn.SELU, "celu": nn.CELU,
}
#: Element-wise activations whose value and derivative at 0 are known (`at_zero`).
ACTIVATIONS = frozenset(ACTIVATION_MODULES) | {"hardsigmoid", "prelu"}
#: phi(phi(x)) = phi(x): a layer computing the identity on phi's image, followed by phi, is an exact identity.
#: (``nn.ReLU6`` is traced as ``hardtanh(x, 0, 6)``; any hardtanh is idempotent, whatever its bounds.)
IDEMPOTENT = frozenset({"relu", "relu6", "hardtanh"})

# What an element-wise op does at 0, as PyTorch computes it: (f(0) == 0, f'(0) != 0). leaky_relu and hardtanh depend
# on their arguments (`at_zero`).
#: f(0) = 0 and f'(0) != 0: a unit that is 0 behind one stays 0 and still receives a gradient.
LIVE_AT_ZERO = frozenset({"gelu", "silu", "tanh", "elu", "selu", "celu", "mish", "hardswish", "prelu", "sin", "atan",
                          "asinh", "softsign"})
#: f(0) = 0 but f'(0) = 0 in PyTorch: a unit that is 0 behind one never receives a gradient.
DEAD_AT_ZERO = frozenset({"relu", "relu6"})
#: f(0) != 0: a zero input does not give a zero output.
NONZERO_AT_ZERO = frozenset({"sigmoid", "hardsigmoid", "softplus", "exp", "logsigmoid"})
_AT_ZERO: dict[str, tuple[bool, bool]] = {
    **{n: (True, True) for n in LIVE_AT_ZERO},
    **{n: (True, False) for n in DEAD_AT_ZERO},
    **{n: (False, True) for n in NONZERO_AT_ZERO},
}


def at_zero(op: OpRecord) -> tuple[bool, bool] | None:
    """(f(0) == 0, f'(0) != 0) for an element-wise op as PyTorch computes it, read from the traced op's arguments
    where they matter; None for an op this catalogue does not know."""
    if op.name == "leaky_relu":
        return True, _number(op.arg(1, "negative_slope", 0.01)) != 0
    if op.name == "hardtanh":  # clamp(x, lo, hi): 0 if the interval holds it, derivative 1 strictly inside
        lo, hi = _number(op.arg(1, "min_val", -1.0)), _number(op.arg(2, "max_val", 1.0))
        return min(max(0.0, lo), hi) == 0, lo < 0 < hi
    return _AT_ZERO.get(op.name)


def _number(x: object) -> float:
    return float(x) if isinstance(x, (int, float)) else -1.0


# -- arithmetic --------------------------------------------------------------------------------------------------------
#: a + b, a - b: zero when every term is zero.
SUMS = frozenset({"add", "sub"})
#: Tensors joined along an axis: zero when every piece is zero.
CONCATS = frozenset({"cat", "concat", "stack"})
#: Products: zero when any factor is zero.
PRODUCTS = frozenset({"mul", "matmul", "bmm", "einsum"})
#: a / b.
DIVISIONS = frozenset({"div", "truediv"})
#: Linear in their one tensor input (besides views and average pools): zero in, zero out, and the gradient passes.
LINEAR_UNARY = frozenset({"neg", "sum", "mean"})
#: Element-wise arithmetic: keeps the layout of its operands.
ARITHMETIC = SUMS | DIVISIONS | {"mul", "neg"}

# -- normalisation -----------------------------------------------------------------------------------------------------
#: Statistics per channel (axis 1): BatchNorm, InstanceNorm, GroupNorm.
CHANNEL_NORMS = frozenset({"batch_norm", "instance_norm", "group_norm"})
#: Statistics over the last axes: LayerNorm, RMSNorm.
FEATURE_NORMS = frozenset({"layer_norm", "rms_norm"})
NORMS = CHANNEL_NORMS | FEATURE_NORMS

# -- pooling -----------------------------------------------------------------------------------------------------------
#: The maximum of each window: values stay inside any interval the input lies in.
MAX_POOLS = frozenset({f"{kind}_pool{d}d" for kind in ("max", "adaptive_max") for d in (1, 2, 3)})
#: The mean of each window (over the window's valid positions unless padding is counted in: `avg_pool`'s options).
AVG_POOLS = frozenset({f"{kind}_pool{d}d" for kind in ("avg", "adaptive_avg") for d in (1, 2, 3)})
#: Averages over a whole map when the output size is 1 (a global average pool).
ADAPTIVE_AVG_POOLS = frozenset({f"adaptive_avg_pool{d}d" for d in (1, 2, 3)})
POOLS = MAX_POOLS | AVG_POOLS

# -- modules with fused fast paths -------------------------------------------------------------------------------------
#: Layers whose fused inference fast path (torch's native transformer kernels, eval mode under no_grad) reads their
#: submodules' weights directly: a module inserted inside one would be skipped.
FUSED_FAST_PATH_LAYERS: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                                                       nn.MultiheadAttention)
#: Every module that may take a fused fast path, the encoder stack included (it runs its layers as nested tensors).
#: Any TorchFunctionMode (the trace, the path check) switches the fast path off.
FAST_PATH_MODULES: tuple[type[nn.Module], ...] = (nn.TransformerEncoder, *FUSED_FAST_PATH_LAYERS)
