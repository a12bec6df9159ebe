"""Attributes that must agree with the weights they describe (`in_features`, `out_channels`, `num_heads`...): a stale
one would be a silent bug, so a grown model whose attributes disagree is refused."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EXTENSION_HINT, UnsupportedModelError


def _weight_shape(m: nn.Module, name: str = "weight") -> tuple[int, ...] | None:
    """Shape of a module's weight without running a parametrization (spectral norm would take a power step)."""
    if nn.utils.parametrize.is_parametrized(m, name):
        return tuple(getattr(m.parametrizations, name).original.shape)
    w = getattr(m, name, None)
    return tuple(w.shape) if isinstance(w, torch.Tensor) else None


def check_attributes(model: nn.Module) -> None:
    """A stale attribute (in_features that no longer matches the weight) would be a silent bug: refuse instead."""
    for name, m in model.named_modules():
        w = _weight_shape(m)
        checks: list[tuple[str, int, int]] = []
        if isinstance(m, nn.Linear) and w:
            checks = [("in_features", m.in_features, w[1]), ("out_features", m.out_features, w[0])]
        elif isinstance(m, nn.modules.conv._ConvNd) and w:
            cin = w[0] if m.transposed else w[1] * m.groups
            cout = w[1] * m.groups if m.transposed else w[0]
            checks = [("in_channels", m.in_channels, cin), ("out_channels", m.out_channels, cout)]
        elif isinstance(m, nn.modules.batchnorm._NormBase) and w:
            checks = [("num_features", m.num_features, w[0])]
        elif isinstance(m, nn.Embedding) and w:
            checks = [("embedding_dim", m.embedding_dim, w[1])]
        elif isinstance(m, nn.GroupNorm) and w:
            checks = [("num_channels", m.num_channels, w[0])]
        elif isinstance(m, nn.MultiheadAttention):
            wo = _weight_shape(m.out_proj)
            checks = [("embed_dim", m.embed_dim, wo[0]), ("num_heads*head_dim", m.num_heads * m.head_dim, wo[1])]
        for attr, have, want in checks:
            if have != want:
                raise UnsupportedModelError(
                    f"{type(m).__name__} '{name}'.{attr} would stay {have} while its weight becomes {want}: the module "
                    f"is used in a way the trace does not attribute to it (called through .forward, or its weight "
                    f"used by another module). Widen other dimensions, or register a rule. {EXTENSION_HINT}"
                )
