"""upcycle on any model: named feed-forward modules become netgraft's MoE (copies, granularity, more experts in both
modes), exact on fresh inputs in eval and train mode, every new parameter learning, and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netgraft
from netgraft.errors import InvalidRequestError, UnknownNameError, UnsupportedModelError


class SwiGLU(nn.Module):
    def __init__(self, hidden: int = 8, units: int = 24):
        super().__init__()
        self.gate = nn.Linear(hidden, units, bias=False)
        self.up = nn.Linear(hidden, units, bias=False)
        self.down = nn.Linear(units, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self, mlp=SwiGLU, layers: int = 3):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.layers = nn.ModuleList([Block(mlp()) for _ in range(layers)])
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.layers:
            h = block(h)
        return self.out(h)


def gelu_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 8))


def net(mlp=SwiGLU, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return Net(mlp).to(dtype)


X = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(0))


def assert_same_function(a: nn.Module, b: nn.Module) -> None:
    """Fresh inputs of another batch size; train mode too where no dropout makes the outputs random."""
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(5)).to(next(a.parameters()).dtype)
    random = any(isinstance(m, nn.Dropout) for m in a.modules())
    for train in (False,) if random else (False, True):
        a.train(train)
        b.train(train)
        with torch.no_grad():
            ya, yb = a(x).float(), b(x).float()
        assert (ya - yb).abs().max() <= 1e-5 * (1 + ya.abs().max()), (train, float((ya - yb).abs().max()))


@pytest.mark.parametrize("mlp", [SwiGLU, gelu_mlp])
@pytest.mark.parametrize("granularity", [1, 2, 4])
def test_dense_modules_become_exact_moes(mlp, granularity: int) -> None:
    model = net(mlp)
    moe = netgraft.upcycle(model, num_experts=2 * granularity, top_k=granularity, granularity=granularity,
                           modules="layers.*.mlp", example_inputs=(X,), seed=0)
    for block in moe.layers:
        assert isinstance(block.mlp, netgraft.MoE)
        assert block.mlp.num_experts == 2 * granularity and block.mlp.top_k == granularity
    assert moe.netgraft_report.exact and moe.netgraft_report.certificate.passed
    assert "train" in moe.netgraft_report.certificate.modes
    assert_same_function(model, moe)
    assert not any(isinstance(m, netgraft.MoE) for m in model.modules())  # the source is untouched
    if granularity > 1:
        inner = moe.layers[0].mlp.experts[0]
        first = inner.down if mlp is SwiGLU else inner[3]
        assert first.in_features == (24 if mlp is SwiGLU else 32) // granularity  # attributes follow the slice


@pytest.mark.parametrize("split", ["copies", "segments"])
def test_more_experts_in_a_generic_moe(split: str) -> None:
    model = net()
    moe = netgraft.upcycle(model, num_experts=4, top_k=2, modules="layers.*.mlp", example_inputs=(X,), seed=0)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if ".mlp." in name:
                p.add_(0.05 * torch.randn_like(p))
    more = netgraft.upcycle(moe, num_experts=8, split=split, modules="layers.*.mlp", example_inputs=(X,), seed=0)
    assert more.layers[0].mlp.num_experts == 8 and more.layers[0].mlp.top_k == 4
    assert_same_function(moe, more)


def test_bfloat16_generic_is_exact() -> None:
    model = net(dtype=torch.bfloat16)
    moe = netgraft.upcycle(model, num_experts=4, top_k=2, granularity=2, modules="layers.*.mlp",
                           example_inputs=(X.bfloat16(),), seed=0)
    assert moe.netgraft_report.certificate.passed
    assert {p.dtype for p in moe.parameters()} == {torch.bfloat16}


def test_selected_modules_only() -> None:
    moe = netgraft.upcycle(net(), num_experts=4, top_k=2, modules=["layers.0.mlp", "layers.2.mlp"],
                           example_inputs=(X,), seed=0)
    assert [type(b.mlp).__name__ for b in moe.layers] == ["MoE", "SwiGLU", "MoE"]


def test_every_new_parameter_learns_and_experts_diverge() -> None:
    moe = netgraft.upcycle(net(), num_experts=4, top_k=2, modules="layers.*.mlp", example_inputs=(X,), seed=0)
    start = {n: p.detach().clone() for n, p in moe.named_parameters()}
    opt = torch.optim.Adam(moe.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        x = torch.randn(16, 7, 4, generator=g)
        loss = (moe(x) - x[..., :3].sin()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    still = [n for n, p in moe.named_parameters() if torch.equal(p, start[n])]
    assert not still, still
    experts = moe.layers[0].mlp.experts
    assert (experts[0].up.weight - experts[1].up.weight).abs().max() > 1e-4


def test_labelled_non_exact_variants_report_their_difference() -> None:
    model = net()
    for kwargs in (dict(drop=0.5), dict(expert_noise=0.1)):
        moe = netgraft.upcycle(model, num_experts=4, top_k=2, modules="layers.*.mlp", example_inputs=(X,), seed=0,
                               **kwargs)
        report = moe.netgraft_report
        assert not report.exact and "NOT exact by choice" in str(report)
        assert report.certificate.max_abs > 1e-3


def test_refusals() -> None:
    with pytest.raises(UnknownNameError, match="no module matches"):
        netgraft.upcycle(net(), num_experts=4, top_k=2, modules="blocks.*.ffn", example_inputs=(X,))
    with pytest.raises(InvalidRequestError, match="example_inputs"):
        netgraft.upcycle(net(), num_experts=4, top_k=2, modules="layers.*.mlp")
    with pytest.raises(InvalidRequestError, match="name its feed-forward modules"):
        netgraft.upcycle(net(), num_experts=4, top_k=2, example_inputs=(X,))
    with pytest.raises(InvalidRequestError, match="valid values"):
        netgraft.upcycle(net(), num_experts=5 * 5, top_k=5, granularity=5, modules="layers.*.mlp",
                         example_inputs=(X,))

    class Odd(nn.Module):  # no axis of units summed by a weight: no segments
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * self.scale

    with pytest.raises(UnsupportedModelError, match="granularity=1"):
        netgraft.upcycle(net(Odd), num_experts=4, top_k=2, granularity=2, modules="layers.*.mlp",
                         example_inputs=(X,))


def test_moe_module_routes_top_k_and_renormalises() -> None:
    torch.manual_seed(0)
    experts = [nn.Linear(4, 4) for _ in range(3)]
    moe = netgraft.MoE(nn.Linear(4, 3, bias=False), experts, top_k=2)
    x = torch.randn(5, 4)
    probs = torch.softmax(moe.router(x), -1)
    top, idx = probs.topk(2, -1)
    w = top / top.sum(-1, keepdim=True)
    want = torch.stack([sum(w[t, s] * experts[int(idx[t, s])](x[t]) for s in range(2)) for t in range(5)])
    assert torch.allclose(moe(x), want, atol=1e-6)
    with pytest.raises(InvalidRequestError, match="top_k"):
        netgraft.MoE(nn.Linear(4, 3), experts, top_k=4)
