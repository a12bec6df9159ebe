"""The extension point: a custom layer netgraft cannot see through is refused, then supported by a short rule."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_exact
from torch import nn

import netgraft


class EinsumScale(nn.Module):
    """A learned per-feature gain applied through a kernel netgraft has no rule for (as a custom op would be)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mul.Tensor(x, self.gain)


def model() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), EinsumScale(6), nn.ReLU(), nn.Linear(6, 2))
    return m, (torch.randn(5, 4),)


def test_custom_layer_is_refused_without_a_rule() -> None:
    m, x = model()
    with pytest.raises(netgraft.UnsupportedModelError) as err:
        netgraft.widen(m, {"0": 9}, example_inputs=x)
    assert "mul.Tensor" in str(err.value) and "register_layer" in str(err.value) and "module '1'" in str(err.value)


def test_registered_layer_rule_makes_it_exact() -> None:
    m, x = model()

    @netgraft.register_layer(EinsumScale)
    def _einsum_scale(ctx: netgraft.RuleContext) -> None:
        x_in, y = ctx.inputs[0], ctx.outputs[0]
        ctx.same_shape(x_in, y)
        ctx.per_unit(ctx.param("gain"), 0, x_in.dim(-1))

    try:
        wide = netgraft.widen(m, {"0": 9}, example_inputs=x, seed=0, noise=0.1)
        assert wide[1].gain.shape == (9,)
        assert_exact(m, wide, x)
    finally:
        netgraft.unregister_layer(EinsumScale)


def test_registered_op_rule() -> None:
    m, x = model()

    @netgraft.register_op(torch.ops.aten.mul.Tensor)
    def _custom_mul(ctx: netgraft.RuleContext) -> None:
        x_in, gain = ctx.value(ctx.args[0]), ctx.value(ctx.args[1])
        ctx.same_shape(x_in, ctx.outputs[0])
        ctx.per_unit(gain, 0, x_in.dim(-1))

    try:
        wide = netgraft.widen(m, 2.0, example_inputs=x, seed=1)
        assert wide[1].gain.shape == (12,)
        assert_exact(m, wide, x)
    finally:
        from netgraft.core.registry import _OP_RULES

        _OP_RULES.pop(torch.ops.aten.mul.Tensor, None)
