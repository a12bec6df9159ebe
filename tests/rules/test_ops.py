"""Ops beyond the zoo: chunk/split, GLU, keyword inputs, cross-attention with kdim/vdim, padding, slicing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_exact
from torch import nn

import netgraft


class FusedSwiGLU(nn.Module):
    """LLaMA-style MLP with a fused gate/up projection split by chunk()."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 10)
        self.gate_up = nn.Linear(10, 2 * 12)
        self.down = nn.Linear(12, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        h = h + self.down(F.silu(gate) * up)
        return self.head(h)


class GLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 16)
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.glu(self.a(x), dim=-1))


class KwargsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.x_proj = nn.Linear(4, 8)
        self.y_proj = nn.Linear(3, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.x_proj(x) + self.y_proj(y))
        return {"logits": self.out(h), "pooled": self.out(h).mean(0)}


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_in = nn.Linear(5, 12)
        self.kv_in = nn.Linear(7, 9)
        self.attn = nn.MultiheadAttention(12, 3, kdim=9, vdim=9, batch_first=True)
        self.head = nn.Linear(12, 2)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        mem = torch.tanh(self.kv_in(kv))
        out, weights = self.attn(self.q_in(q), mem, mem)  # need_weights=True: averaged over heads
        return self.head(out) + weights.sum()


class PadSliceNet(nn.Module):
    """Channel padding (F.pad) and a prefix slice of channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(torch.relu(self.c1(x)), (0, 0, 0, 0, 1, 1))  # one zero channel before and after
        h = self.c2(h)
        return self.fc(h[:, :3].mean((2, 3)))


def _check(model: nn.Module, inputs, widths=2.0, **kw) -> nn.Module:
    torch.manual_seed(0)
    wide = netgraft.widen(model, widths, example_inputs=inputs, seed=0, noise=0.1, **kw)
    assert_exact(model, wide, inputs)
    assert_exact(model, wide, inputs, train=True)
    return wide


def test_chunk_of_a_fused_projection() -> None:
    torch.manual_seed(0)
    m = FusedSwiGLU()
    wide = _check(m, (torch.randn(3, 6),), {"gate_up": 36, "inp": 15})
    assert wide.gate_up.out_features == 36 and wide.down.in_features == 18 and wide.inp.out_features == 15


def test_glu() -> None:
    torch.manual_seed(0)
    wide = _check(GLUNet(), (torch.randn(4, 5),), 1.5)
    assert wide.a.out_features == 24 and wide.b.in_features == 12


def test_keyword_inputs_and_dict_outputs() -> None:
    torch.manual_seed(0)
    inputs = {"x": torch.randn(5, 4), "y": torch.randn(5, 3)}
    wide = _check(KwargsNet(), inputs, 1.5)
    assert wide.x_proj.out_features == 12 and wide.y_proj.out_features == 12


def test_cross_attention_with_kdim_vdim_and_averaged_weights() -> None:
    torch.manual_seed(0)
    m = CrossAttention()
    wide = _check(m, (torch.randn(2, 4, 5), torch.randn(2, 6, 7)), 2.0)
    assert (wide.attn.num_heads, wide.attn.head_dim, wide.attn.kdim) == (6, 4, 18)


def test_channel_padding_and_prefix_slice() -> None:
    torch.manual_seed(0)
    wide = _check(PadSliceNet(), (torch.randn(2, 2, 5, 5),), 2.0)
    assert wide.c1.out_channels == 12 and wide.c2.in_channels == 14


def test_negative_index_is_refused() -> None:
    class LastChannel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 6)
            self.b = nn.Linear(1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)[:, -1:])

    with pytest.raises(netgraft.UnsupportedModelError, match="slice"):
        netgraft.widen(LastChannel(), {"a": 8}, example_inputs=(torch.randn(2, 3),))


class EinsumNet(nn.Module):
    """A bilinear-free einsum MLP: weights applied with einsum, a per-feature gain, and an activation product."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(5, 9))
        self.gain = nn.Parameter(torch.randn(9))
        self.w2 = nn.Parameter(torch.randn(9, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.einsum("bi,ih->bh", x, self.w1))
        h = torch.einsum("bh,h->bh", h, self.gain)
        return torch.einsum("bh,ho->bo", h, self.w2)


def test_einsum_with_bare_parameters() -> None:
    torch.manual_seed(0)
    m = EinsumNet()
    groups = netgraft.groups(m, (torch.randn(4, 5),))
    assert [g for g in groups if g.growable and g.size == 9]
    x = (torch.randn(4, 5),)
    wide = netgraft.widen(m, {"w1": 14}, example_inputs=x, noise=0.1, seed=0)  # named by the parameter
    assert (wide.w1.shape, wide.gain.shape, wide.w2.shape) == ((5, 14), (14,), (14, 3))
    assert_exact(m, wide, x)
    assert_exact(m, netgraft.widen(m, 2.0, example_inputs=x), x)
