"""The upcycling rules on stacked expert tensors: segments, copies and their shares, routers, the request's checks."""

from __future__ import annotations

import pytest
import torch

from netgraft.core.experts import (
    check_factor,
    copies_down,
    dense_to_stacked,
    grouped_router,
    plan_experts,
    segment_columns,
    segment_rows,
    tile_experts,
)
from netgraft.errors import InvalidRequestError


def swiglu(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One expert: x (n, H), gate|up (2I, H), down (H, I)."""
    gate, up = (x @ gate_up.T).chunk(2, -1)
    return (torch.nn.functional.silu(gate) * up) @ down.T


def test_segments_of_a_dense_ffn_add_up_to_it() -> None:
    g = torch.Generator().manual_seed(0)
    gate, up, down = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g), torch.randn(4, 12, generator=g)
    gate_up, d = dense_to_stacked(gate, up, down)  # (1, 24, 4), (1, 4, 12)
    rows, cols = segment_rows(gate_up, 3), segment_columns(d, 3)
    assert rows.shape == (3, 8, 4) and cols.shape == (3, 4, 4)
    assert torch.equal(rows[1, :4], gate[4:8]) and torch.equal(rows[1, 4:], up[4:8])
    assert torch.equal(cols[2], 3 * down[:, 8:])
    x = torch.randn(5, 4, generator=g)
    dense = swiglu(x, gate_up[0], d[0])
    assert torch.allclose(sum(swiglu(x, rows[s], cols[s]) for s in range(3)) / 3, dense, atol=1e-5)


def test_copies_split_their_down_projection_in_shares_summing_to_m() -> None:
    down = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))  # two experts
    for noise in (0.0, 0.5):
        out = copies_down(down, 4, noise, torch.Generator().manual_seed(1), "down")
        assert out.shape == (8, 4, 6)
        assert torch.allclose(out[:4].sum(0), 4 * down[0], atol=1e-5)
        assert torch.allclose(out[4:].sum(0), 4 * down[1], atol=1e-5)
        assert torch.allclose(out[0], out[1]) == (noise == 0.0)  # the noise splits each element differently
    half = copies_down(down.bfloat16(), 2, 0.0, torch.Generator(), "down")  # power-of-two shares: exact in bf16
    assert torch.equal(half[0], down[0].bfloat16())


def test_routers_repeat_rows_inside_groups_and_experts_tile() -> None:
    rows = torch.arange(6.0).reshape(3, 2)
    assert grouped_router(rows, 2)[:, 0].tolist() == [0, 0, 2, 2, 4, 4]
    assert tile_experts(torch.arange(2.0)[:, None], 3)[:, 0].tolist() == [0, 1, 0, 1, 0, 1]


def test_plans() -> None:
    assert plan_experts(8, 2, 1).split == "copies"
    p = plan_experts(8, 4, 2)
    assert (p.split, p.per, p.groups, p.exact) == ("segments", 2, 4, True)
    p = plan_experts(24, None, 1, old=8, old_top_k=2, split="segments")
    assert (p.per, p.top_k, p.groups) == (3, 6, 8)
    assert not plan_experts(16, 2, 1, old=8, old_top_k=2, exact=False).exact
    with pytest.raises(InvalidRequestError, match="valid values: \\[1, 2, 4, 8"):
        plan_experts(6, 3, 3).check_units(8, "layer 0")
    with pytest.raises(InvalidRequestError, match="exact=False"):
        plan_experts(16, 2, 1, old=8, old_top_k=2)
    with pytest.raises(InvalidRequestError, match="split must be"):
        plan_experts(16, None, 1, old=8, old_top_k=2, split="halves")
    with pytest.raises(InvalidRequestError, match="int >= 1"):
        plan_experts(8, 2, 0)
    check_factor(4, torch.bfloat16, "x")
    check_factor(3, torch.float32, "x")
    with pytest.raises(InvalidRequestError, match="not exact in torch.float16"):
        check_factor(3, torch.float16, "x")
