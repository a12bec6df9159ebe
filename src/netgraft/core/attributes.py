"""Attributes that must agree with the weights they describe (`in_features`, `out_channels`, `num_heads`...): a stale
one would be a silent bug, so a grown model whose attributes disagree is refused."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EXTENSION_HINT, UnsupportedModelError
from .layers import kind_of


def _weight_shape(m: nn.Module, name: str = "weight") -> tuple[int, ...] | None:
    """Shape of a module's weight without running a parametrization (spectral norm would take a power step)."""
    if nn.utils.parametrize.is_parametrized(m, name):
        return tuple(getattr(m.parametrizations, name).original.shape)
    w = getattr(m, name, None)
    return tuple(w.shape) if isinstance(w, torch.Tensor) else None


def check_attributes(model: nn.Module) -> None:
    """A stale attribute (in_features that no longer matches the weight) would be a silent bug: refuse instead. Each
    layer's kind says which attributes must agree with its weights (`LayerKind.attribute_checks`)."""
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is None:
            continue
        for attr, have, want in kind.attribute_checks(m, _weight_shape):
            if have != want:
                raise UnsupportedModelError(
                    f"{type(m).__name__} '{name}'.{attr} would stay {have} while its weight becomes {want}: the module "
                    f"is used in a way the trace does not attribute to it (called through .forward, or its weight "
                    f"used by another module). Widen other dimensions, or register a rule. {EXTENSION_HINT}"
                )
