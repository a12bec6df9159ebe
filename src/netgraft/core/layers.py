"""One home per layer type: a `LayerKind` holds everything netgraft knows about a layer type beyond its coupling rule,
and the operators ask it instead of testing types or op names themselves.

Kinds are looked up by module type through the class hierarchy (`kind_of`), by the name of a traced op the layer
runs as (`kind_of_op`, for deepen, which reads the trace), or - for classes netgraft cannot import, such as Hugging
Face's ``Conv1D`` - by class name. The built-in kinds live next to their coupling rules in ``netgraft/rules``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .registry import Table

if TYPE_CHECKING:
    from .graph import OpRecord

ShapeOf = Callable[[nn.Module, str], "tuple[int, ...] | None"]


@dataclass
class TracedLayer:
    """A layer op as the trace recorded it, read by its kind: what a layer that `deepen` inserts after it imitates."""

    kind: LayerKind
    op: OpRecord
    ndim: int  # 0: features last (Linear); else the number of spatial axes, channels first (Conv)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1


class LayerKind:
    """Everything netgraft knows about one layer type, beyond the coupling rule that says how its axes couple.

    `widen` needs only the coupling rule (`register_op` / `register_layer`). The other operators need a little more
    about the layer, and ask its kind; every method has a safe default, so a kind overrides what it knows only:

    - every operator, `attribute_checks`: attributes that must agree with the weights after resizing.
    - `deepen`: `ops` and `features_last` (where the feature axis is around the layer's traced op), `read_op` (what
      an inserted layer imitates), `identity_problem` / `identity` (a new instance computing the identity),
      `like` (a fresh norm like a traced one), `zeroing` (parameters whose zeroing zeroes the op's output),
      `deepen_norm`, `statistics_from_data` and `identity_from_statistics_`.
    - `grow_`: `identity_unit` (a new unit's value in a layer it passes through), `gradmax_problem`, `spatial`,
      `gradmax_patches`, `gradmax_adjoint`, `gradmax_passthrough_ops` (GradMax's matrix).
    - `inject`: `inject_leaf` (kind string and canonical shape), `canonical` / `stored` (the (out, in, *kernel)
      layout), `channel_dims`, `out_dim`, `prefix_dims`, `creates_features`, `fan_in_scaled`, `reads_ids`.

    Example: a custom layer ``y = F.linear(x, self.weight) * self.gain`` that `inject` should match with the
    ``nn.Linear``s of another model, and whose ``n_out`` attribute must follow its weight:

        >>> import torch, netgraft
        >>> import torch.nn.functional as F
        >>> class ScaledLinear(torch.nn.Module):
        ...     def __init__(self, n_in, n_out):
        ...         super().__init__()
        ...         self.n_out = n_out
        ...         self.weight = torch.nn.Parameter(torch.randn(n_out, n_in))
        ...         self.gain = torch.nn.Parameter(torch.ones(n_out))
        ...     def forward(self, x):
        ...         return F.linear(x, self.weight) * self.gain
        >>> @netgraft.register_kind(ScaledLinear)
        ... class ScaledLinearKind(netgraft.LayerKind):
        ...     creates_features = fan_in_scaled = True
        ...     def attribute_checks(self, module, shape_of):
        ...         return [("n_out", module.n_out, shape_of(module, "weight")[0])]
        ...     def inject_leaf(self, module):
        ...         return "linear", tuple(module.weight.shape)
        ...     def channel_dims(self, shape):
        ...         return (0, 1)
        >>> src = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> dst = torch.nn.Sequential(ScaledLinear(4, 6), torch.nn.ReLU(), ScaledLinear(6, 2))
        >>> [t.target for t in netgraft.inject_(src, dst).transfers][:2]
        ['0.weight', '2.weight']
        >>> netgraft.unregister_kind(ScaledLinear)
        1

    The coupling rule is separate: here F.linear's built-in rule already covers ScaledLinear (and the generic rules
    its ``* self.gain``), so `widen` and `grow_` need no more; a layer whose forward calls something netgraft cannot
    see through also needs `register_layer`.
    """

    #: Names of the traced ops this layer runs as (``F.conv2d`` is ``"conv2d"``): deepen reads them from the trace.
    ops: tuple[str, ...] = ()
    #: Where the feature axis of the op's input and output is: last (Linear, LayerNorm) or axis 1 (Conv, BatchNorm);
    #: None when the layer does not say.
    features_last: bool | None = None
    #: A layer that computes features from its input (Linear, Conv, Embedding, attention) rather than one that
    #: follows such a layer (a norm): inject groups a feature layer with the norms after it.
    creates_features: bool = False
    #: Its output scale depends on its fan-in (a weighted sum): inject rescales a resized weight.
    fan_in_scaled: bool = False
    #: Its input is token ids (an embedding), not features.
    reads_ids: bool = False
    #: Dimensions of the canonical weight aligned at the start rather than the centre when inject crops or places
    #: them (an embedding's vocabulary: rows are indexed by token id).
    prefix_dims: tuple[int, ...] = ()
    #: Dimension of the canonical weight that is the layer's output width.
    out_dim: int = 0
    #: deepen copies the nearest norm of this kind into the modules it inserts.
    deepen_norm: bool = False
    #: Normalises with running statistics measured on data: a new one is calibrated on deepen's `data`.
    statistics_from_data: bool = False
    #: Does GradMax read this layer through input patches (a convolution) rather than position by position?
    spatial: bool = False
    #: Ops of this layer that can stand between a grown layer and the next one as identity units (depthwise
    #: convolutions), when GradMax measures through them.
    gradmax_passthrough_ops: tuple[str, ...] = ()
    #: op name -> (weight position, keyword, bias position, keyword): with both zero the op outputs exactly zero
    #: ("" for a layer without bias). deepen zeroes these to make a copied block start as an identity.
    zeroing: dict[str, tuple[int, str, int, str]] = {}

    # -- every operator -----------------------------------------------------------------------------------------------
    def attribute_checks(self, module: nn.Module, shape_of: ShapeOf) -> list[tuple[str, int, int]]:
        """(attribute, its value, the value the weights imply) for each attribute that must agree with the weights.
        `shape_of(module, name)` reads a tensor's shape without running a parametrization (None if absent)."""
        return []

    # -- deepen -------------------------------------------------------------------------------------------------------
    def read_op(self, op: OpRecord) -> TracedLayer | None:
        """What a layer inserted after this traced op imitates (kernel, stride, groups...), or None."""
        return None

    def identity_problem(self, layer: TracedLayer, shape: tuple[int, ...], where: str) -> str | None:
        """Why no layer like `layer` can compute the identity on a value of `shape` at `where`, or None."""
        return f"a {type(self).__name__} layer has no identity form"

    def identity(self, layer: TracedLayer, channels: int) -> nn.Module:
        """A new layer like `layer` over `channels` features that computes the identity exactly."""
        raise NotImplementedError

    def like(self, op: OpRecord, channels: int, ndim: int, model: nn.Module) -> nn.Module | None:
        """A fresh norm like the traced `op` over `channels` features (`ndim` spatial axes), or None."""
        return None

    def identity_from_statistics_(self, module: nn.Module) -> None:
        """Set the affine parameters of a norm that has running statistics so that it is an identity in eval mode."""
        raise NotImplementedError

    # -- grow_ --------------------------------------------------------------------------------------------------------
    def identity_unit(self, module: nn.Module, attr: str, old: torch.Tensor, axis: int,
                      bn_weight: float | None) -> torch.Tensor | float | None:
        """The value of parameter `attr` for a new unit the layer passes through unchanged (it stays 0 and gradients
        pass), or None for netgraft's default (a typical existing unit's value)."""
        return None

    def gradmax_problem(self, module: nn.Module, side: str) -> str | None:
        """Why GradMax cannot measure through `module` as the layer that writes the new units (`side` "writer") or
        the next layer that sums over them ("next"); None when it can."""
        return f"{type(module).__name__} is not a layer GradMax can measure"

    def gradmax_patches(self, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """The writer's input `h` as patches, (B, fan-in, positions): one column per position of its output."""
        raise NotImplementedError

    def gradmax_adjoint(self, module: nn.Module, g: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        """For each basis fan-out vector, dL/d(new unit) at each position of the unit's map, from the gradient `g`
        of the next layer's output: (B, fan-out, positions)."""
        raise NotImplementedError

    # -- inject -------------------------------------------------------------------------------------------------------
    def inject_leaf(self, module: nn.Module) -> tuple[str, tuple[int, ...]] | None:
        """How `inject` matches this layer: (kind string, canonical shape of its main weight, (out, in, *kernel)).
        Layers with equal kind strings can seed each other; matches are scored on the shapes. None: inject treats
        the module as a block of its children."""
        return None

    def canonical(self, module: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
        """Tensor `name` of `module` in the canonical (out, in, *kernel) layout (a view, never a copy)."""
        return t

    def stored(self, module: nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
        """A canonical tensor back in the layout `module` stores tensor `name` in."""
        return t

    def channel_dims(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Dimensions of the canonical weight that grow with the model's width (not kernels, not a vocabulary)."""
        return tuple(range(len(shape)))


# -- the registry ----------------------------------------------------------------------------------------------------
_BY_TYPE = Table()  # module type -> kind
_BY_CLASS_NAME = Table()  # class-name pattern (fnmatch) -> kind
_BY_OP = Table()  # traced op name -> kind


def register_kind(*module_types: type, class_names: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator: register an instance of a `LayerKind` subclass for module types (looked up through the class
    hierarchy) and, for classes netgraft does not import, class-name patterns (``"*RMSNorm"``, matched against the
    module's own class name). Its `ops` are registered for deepen's look-up by op name. A kind registered over
    another replaces it until `unregister_kind`. A fuller example: `LayerKind`.

    Example: new units that `grow_` passes through a custom per-feature scale get gain 1, not a typical old gain:

        >>> import torch, netgraft
        >>> class Scale(torch.nn.Module):
        ...     def __init__(self, n):
        ...         super().__init__()
        ...         self.weight = torch.nn.Parameter(torch.full((n,), 2.0))
        ...     def forward(self, x):
        ...         return x * self.weight
        >>> @netgraft.register_kind(Scale)
        ... class ScaleKind(netgraft.LayerKind):
        ...     def identity_unit(self, module, attr, old, axis, bn_weight):
        ...         return 1.0
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), Scale(4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> _ = netgraft.grow_(m, {"0": 6}, init="zeros", example_inputs=(torch.randn(2, 3),))
        >>> m[1].weight.tolist()
        [2.0, 2.0, 2.0, 2.0, 1.0, 1.0]
        >>> netgraft.unregister_kind(Scale)
        1
    """

    def deco(cls: type) -> type:
        kind = cls()
        for t in module_types:
            _BY_TYPE.add(t, kind)
        for pattern in class_names:
            _BY_CLASS_NAME.add(pattern, kind)
        for op in kind.ops:
            _BY_OP.add(op, kind)
        return cls

    return deco


def unregister_kind(*keys: type | str) -> int:
    """Remove the newest kind registered for each module type or class-name pattern (with `register_kind`), and its
    ops; the kind it replaced, if any (a built-in one), is in force again. Returns how many were removed.

    Example:
        >>> import torch, netgraft
        >>> @netgraft.register_kind(torch.nn.Identity)
        ... class PassThrough(netgraft.LayerKind):
        ...     pass
        >>> netgraft.unregister_kind(torch.nn.Identity)
        1
    """
    removed = 0
    for key in keys:
        table = _BY_CLASS_NAME if isinstance(key, str) else _BY_TYPE
        kind = table.get(key)
        if kind is None or not table.remove(key):
            continue
        removed += 1
        still = any(k is kind for table in (_BY_TYPE, _BY_CLASS_NAME) for _, k in table.items())
        for op in () if still else kind.ops:
            if _BY_OP.get(op) is kind:
                _BY_OP.remove(op)
    return removed


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of `module`: registered for its class or a base class (nearest first), else for a pattern that its
    class name matches; None for a module netgraft knows nothing special about (a container, a custom block)."""
    for cls in type(module).__mro__:
        kind = _BY_TYPE.get(cls)
        if kind is not None:
            return kind
    name = type(module).__name__
    for pattern, kind in _BY_CLASS_NAME.items():
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


def kind_of_op(name: str) -> LayerKind | None:
    """The kind of the layer a traced op of this name computes (``"conv2d"`` -> the convolution kind), or None."""
    return _BY_OP.get(name)


def read_layer(op: OpRecord) -> TracedLayer | None:
    """The traced op read as a layer to imitate (Linear, Conv), or None."""
    kind = kind_of_op(op.name)
    return kind.read_op(op) if kind is not None else None
