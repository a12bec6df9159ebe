"""Apply: build the grown model. Parameters are gathered along their grown axes; summing axes are split between
copies; attributes follow. The source model is never touched: the result is a deep copy whose changed tensors are
created directly (no extra copy of the old ones)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import _space as sp
from ._groups import Coupling
from ._plan import SpaceMaps
from ._trace import COPY, FANIN, _flat_tensors
from .errors import EXTENSION_HINT, UnsupportedModelError


def _scale_along(t: torch.Tensor, axis: int, frac: torch.Tensor) -> torch.Tensor:
    """Scale `t` along `axis` in place: `t` is always a fresh tensor from index_select (never the source's)."""
    shape = [1] * t.dim()
    shape[axis] = -1
    return t.mul_(frac.to(device=t.device, dtype=t.dtype).reshape(shape))


def _tied_compensation(coupling: Coupling, maps: SpaceMaps) -> dict[tuple[str, int], object]:
    """A parameter axis used both per-unit (an embedding) and summed over (a tied output layer) cannot be split.
    Instead, scale the per-unit parameters of the layer that feeds the summing use (e.g. the final LayerNorm's gain
    and bias) by the split fractions: same function, and the weights stay tied."""
    tr = coupling.trace
    extra: dict[tuple[str, int], object] = {}
    for (name, axis), roles in tr.roles.items():
        if not (COPY in roles and FANIN in roles):
            continue
        space = tr.param_dims[name][axis]
        if not maps.changes(space):
            continue
        for op in tr.role_ops[(name, axis)]:
            if (name, axis, FANIN) not in op.roles:
                continue
            act = next((v for v in op.inputs if v.param is None
                        and any(sp.find(d) is sp.find(space) for d in v.dims)), None)
            feeder = act.producer if act is not None else None
            copies = [(p, a) for p, a, r in (feeder.roles if feeder else []) if r == COPY
                      and sp.find(tr.param_dims[p][a]) is sp.find(space)]
            fanin_in_feeder = feeder is not None and any(
                r == FANIN and sp.find(tr.param_dims[p][a]) is sp.find(space) for p, a, r in feeder.roles)
            if feeder is None or len(act.consumers) != 1 or not copies or fanin_in_feeder:
                raise UnsupportedModelError(
                    f"parameter '{name}' is tied: used per unit and summed over along axis {axis} "
                    f"({op.where()}), and no per-unit layer (LayerNorm, Linear) directly feeds the summing use to "
                    f"absorb the split. {EXTENSION_HINT}"
                )
            for key in copies:
                extra[key] = space
    return extra


def grow_tensors(coupling: Coupling, maps: SpaceMaps) -> dict[str, torch.Tensor]:
    tr = coupling.trace
    extra = _tied_compensation(coupling, maps)
    new: dict[str, torch.Tensor] = {}
    for name, dims in tr.param_dims.items():
        t = tr.tensors_by_name[name]
        if not any(maps.changes(s) for s in dims):
            continue
        out = t.detach()
        for axis, space in enumerate(dims):
            m = maps.torch_map(space, t.device)
            if m is None:
                continue
            src, frac = m
            roles = tr.roles.get((name, axis), set())
            if not roles:
                raise UnsupportedModelError(
                    f"'{name}' axis {axis} lies along a dimension that grows, but no traced op says how it is used "
                    f"(per unit, or summed over). {EXTENSION_HINT}"
                )
            out = out.index_select(axis, src)
            if roles == {FANIN}:
                out = _scale_along(out, axis, frac)
            if (name, axis) in extra:
                out = _scale_along(out, axis, maps.torch_map(extra[(name, axis)], t.device)[1])
        new[name] = out.contiguous()
    return new


def build_model(coupling: Coupling, maps: SpaceMaps, sizes_of) -> nn.Module:
    tr = coupling.trace
    model = tr.model
    new = grow_tensors(coupling, maps)
    memo: dict[int, object] = {}
    for name, t in new.items():
        old = tr.tensors_by_name[name]
        if isinstance(old, nn.Parameter):
            memo[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad)
        else:
            memo[id(old)] = t
    result = copy.deepcopy(model, memo)
    for setter in tr.attrs:
        module = result.get_submodule(setter.module) if setter.module else result
        value = tuple(sizes_of(s) for s in setter.spaces) if isinstance(setter.spaces, tuple) else sizes_of(
            setter.spaces)
        setattr(module, setter.attr, value)
    _check_attributes(result)
    return result


def _check_attributes(model: nn.Module) -> None:
    """A stale attribute (in_features that no longer matches the weight) is a silent bug: catch it here."""
    for name, m in model.named_modules():
        checks: list[tuple[str, int, int]] = []
        if isinstance(m, nn.Linear):
            checks = [("in_features", m.in_features, m.weight.shape[1]), ("out_features", m.out_features,
                                                                           m.weight.shape[0])]
        elif isinstance(m, nn.modules.conv._ConvNd):
            tr = m.transposed
            cin = m.weight.shape[0] if tr else m.weight.shape[1] * m.groups
            cout = m.weight.shape[1] * m.groups if tr else m.weight.shape[0]
            checks = [("in_channels", m.in_channels, cin), ("out_channels", m.out_channels, cout)]
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None:
            checks = [("num_features", m.num_features, m.weight.shape[0])]
        elif isinstance(m, nn.Embedding):
            checks = [("embedding_dim", m.embedding_dim, m.weight.shape[1])]
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            checks = [("num_channels", m.num_channels, m.weight.shape[0])]
        elif isinstance(m, nn.MultiheadAttention):
            checks = [("embed_dim", m.embed_dim, m.out_proj.weight.shape[0]),
                      ("num_heads*head_dim", m.num_heads * m.head_dim, m.out_proj.weight.shape[1])]
        for attr, have, want in checks:
            if have != want:
                raise AssertionError(f"internal: {type(m).__name__} '{name}'.{attr} = {have}, tensors say {want}")


__all__ = ["build_model", "_flat_tensors"]
