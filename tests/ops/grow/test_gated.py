"""grow_ on gated FFNs (SwiGLU / GeGLU / GLU: ``act(gate(x)) * up(x)``): the new units are exact *and* learn.

With a zero fan-in on both writers, both factors of the product are 0 for a new unit and each factor's gradient is
the other one: nothing ever moves. grow_ keeps one side (the one behind an activation with f(0) = 0, f'(0) != 0) at
zero fan-in and gives the other writer's new rows a random fan-in: the product stays exactly 0, and the zero side's
gradient is f'(0) * up(x) * fan-out. The up rows and the down columns get theirs from the second step on.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgraft

OLD, NEW = 12, 17


class GatedMLP(nn.Module):
    """A residual block around a gated FFN, with input and output layers (so the FFN's width is free to grow)."""

    def __init__(self, gate_act=F.silu, d: int = 8, hidden: int = OLD) -> None:  # noqa: ANN001
        super().__init__()
        self.act = gate_act
        self.inp = nn.Linear(6, d)
        self.gate = nn.Linear(d, hidden)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.out = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.down(self.act(self.gate(h)) * self.up(h)))


def _mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def _batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)


def _assert_same_function(before: nn.Module, after: nn.Module, inputs: tuple, out=lambda y: y) -> float:  # noqa: ANN001
    worst = 0.0
    for train in (False, True):
        before.train(train)
        after.train(train)
        with torch.no_grad():
            y, z = out(before(*inputs)), out(after(*inputs))
        delta = float((y - z).abs().max())
        assert delta <= 1e-5 * (1 + float(y.abs().max())), (train, delta)
        worst = max(worst, delta)
    return worst


def _new_slices(layers: tuple[nn.Linear, nn.Linear, nn.Linear], old: int) -> dict[str, torch.Tensor]:
    gate, up, down = layers
    return {"gate rows": gate.weight[old:], "up rows": up.weight[old:], "down columns": down.weight[:, old:].T}


def _grads(model: nn.Module, loss_fn, batch, layers, old: int = OLD) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Per new unit: the gradient norm of its gate row, its up row and its down column."""
    model.zero_grad()
    loss_fn(model, batch).backward()
    gate, up, down = layers(model)
    return {"gate rows": gate.weight.grad[old:].norm(dim=1), "up rows": up.weight.grad[old:].norm(dim=1),
            "down columns": down.weight.grad[:, old:].norm(dim=0)}


def _check_every_new_weight_learns(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, batch,  # noqa: ANN001
                                   layers, old: int = OLD) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Step 1: every new gate row has a gradient; the up rows and down columns are zero by design (their factor is
    act(0) = 0). Step 2 (after one Adam step): every one of them has a gradient. A few steps move them all."""
    gate, up, down = layers(model)
    for p, new in ((gate.weight, (slice(old, None),)), (up.weight, (slice(old, None),)),
                   (down.weight, (slice(None), slice(old, None)))):
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert float(v[new].abs().max()) == 0.0  # the new units' optimizer state starts at zero
    start = {k: v.detach().clone() for k, v in _new_slices(layers(model), old).items()}
    first = _grads(model, loss_fn, batch, layers, old)
    assert bool((first["gate rows"] > 0).all()), first
    assert float(first["up rows"].max()) == 0.0 and float(first["down columns"].max()) == 0.0
    opt.step()
    second = _grads(model, loss_fn, batch, layers, old)
    for k, v in second.items():
        assert bool((v > 0).all()), (k, v)
    for _ in range(3):
        opt.step()
        _grads(model, loss_fn, batch, layers, old)
    moved = _new_slices(layers(model), old)
    for k, v in moved.items():
        assert bool(((v.detach() - start[k]).abs().amax(dim=1) > 0).all()), k
    return {"step 1 " + k: v for k, v in first.items()} | {"step 2 " + k: v for k, v in second.items()}


def _mlp_layers(m: GatedMLP) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    return m.gate, m.up, m.down


@pytest.mark.parametrize("init", ["random", "gradmax"])
def test_swiglu_new_units_are_exact_and_every_new_weight_learns(init: str) -> None:
    torch.manual_seed(0)
    model = GatedMLP()
    batch = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _mse(model, batch).backward()
    opt.step()  # a model in training: Adam state exists
    before = copy.deepcopy(model)
    netgraft.grow_(model, {"gate": NEW}, optimizer=opt, init=init, loss_fn=_mse, batch=batch, seed=0)
    assert model.gate.weight.shape == (NEW, 8) and model.up.weight.shape == (NEW, 8)
    assert model.down.weight.shape == (8, NEW)
    assert float(model.gate.weight[OLD:].abs().max()) == 0.0  # the zero side: behind SiLU
    assert float(model.up.weight[OLD:].norm(dim=1).min()) > 0  # the random side: a random fan-in...
    norms = model.up.weight[:OLD].detach().norm(dim=1)
    assert model.up.weight[OLD:].detach().norm(dim=1) == pytest.approx(
        [float(norms.mean())] * (NEW - OLD), rel=1e-5)  # ...scaled like the existing rows
    _assert_same_function(before, model, (_batch(7, seed=5)[0],))
    _check_every_new_weight_learns(model, opt, _mse, batch, _mlp_layers)


def test_swiglu_gradmax_maximises_each_units_gradient() -> None:
    """GradMax through the product: unit k's gate row gets silu'(0) * M_k^T v_k with M_k = sum_n u_kn g_n x_n^T; its
    fan-out v_k is M_k's top left singular vector (checked against an explicit SVD), beating random fan-outs."""
    torch.manual_seed(0)
    base = GatedMLP().double()
    batch = tuple(t.double() for t in _batch())
    grads = {}
    for init in ("random", "gradmax"):
        model = copy.deepcopy(base)
        netgraft.grow_(model, {"gate": NEW}, init=init, loss_fn=_mse, batch=batch, seed=0)
        grads[init] = _grads(model, _mse, batch, _mlp_layers)["gate rows"]
        if init == "gradmax":
            report = model.netgraft_report
            sigma = torch.tensor(report.singular_values["gate"], dtype=torch.float64)
            norm = report.fan_out_norm["gate"]
            assert grads[init] == pytest.approx((0.5 * norm * sigma).tolist(), rel=1e-8)  # silu'(0) = 1/2
            # brute force: explicit M_k from the same random up rows
            h = base.inp(batch[0]).detach()
            y_ref = base.down(F.silu(base.gate(h)) * base.up(h))
            out = base.out(h + y_ref)
            (g,) = torch.autograd.grad(F.mse_loss(out, batch[1]), [y_ref])
            u = h @ model.up.weight[OLD:].detach().T
            for k in range(NEW - OLD):
                m_k = g.T @ (u[:, k:k + 1] * h)
                top = torch.linalg.svdvals(m_k)[0]
                assert float(sigma[k]) == pytest.approx(float(top), rel=1e-8)
                v = model.down.weight[:, OLD + k].detach() / norm
                assert float((m_k.T @ v).norm()) == pytest.approx(float(top), rel=1e-8)
    assert bool((grads["gradmax"] >= grads["random"]).all())  # the same random up rows: per unit


def _tiny_llama():  # noqa: ANN202
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def _lm_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    logits = model(batch[0]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[0][:, 1:].flatten())


@pytest.mark.parametrize("init", ["random", "gradmax"])
def test_llama_mlp_grows_exactly_and_every_new_weight_learns(init: str) -> None:
    model = _tiny_llama()
    key = "model.layers.0.mlp.gate_proj"
    assert key in str(netgraft.groups(model, (torch.randint(0, 64, (2, 7)),)))
    ids = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))
    batch = (ids,)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _lm_loss(model, batch).backward()
    opt.step()
    before = copy.deepcopy(model)
    netgraft.grow_(model, {key: 56}, optimizer=opt, init=init, loss_fn=_lm_loss, batch=batch, seed=0)
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.weight.shape == (56, 32) and mlp.up_proj.weight.shape == (56, 32)
    assert mlp.down_proj.weight.shape == (32, 56)
    fresh = torch.randint(0, 64, (3, 13), generator=torch.Generator().manual_seed(7))
    _assert_same_function(before, model, (fresh,), out=lambda o: o.logits)

    def layers(m: nn.Module) -> tuple:
        ffn = m.model.layers[0].mlp
        return ffn.gate_proj, ffn.up_proj, ffn.down_proj

    model.train()
    _check_every_new_weight_learns(model, opt, _lm_loss, batch, layers, old=48)


@pytest.mark.parametrize("name", ["geglu", "reglu", "glu", "bilinear"])
def test_other_gates_are_exact_and_learn(name: str) -> None:
    """GeGLU: zero gate (GELU), random up. ReGLU: ReLU is dead at 0, so the gate gets the random fan-in and up stays
    zero (its gradient is relu(gate(x)) * fan-out). GLU (sigmoid): sigmoid(0) != 0 already keeps the up rows learning;
    nothing random is needed. A plain product: either side."""
    acts = {"geglu": F.gelu, "reglu": F.relu, "glu": torch.sigmoid, "bilinear": lambda t: t}
    torch.manual_seed(0)
    model = GatedMLP(acts[name])
    batch = _batch()
    before = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    netgraft.grow_(model, {"gate": NEW}, optimizer=opt, init="random", batch=batch, seed=0)
    _assert_same_function(before, model, (_batch(5, seed=3)[0],))
    first = _grads(model, _mse, batch, _mlp_layers)
    live_first = {k for k, v in first.items() if bool((v > 0).all())}
    # the zero side learns from the first step: the gate behind GELU; up where the gate is ReLU/sigmoid; for a plain
    # product the first writer got the random fan-in
    assert live_first == {"geglu": {"gate rows"}}.get(name, {"up rows"}), live_first
    for _ in range(2):
        opt.step()
        second = _grads(model, _mse, batch, _mlp_layers)
    for k, v in second.items():
        assert bool((v > 0).all()), (name, k, v)


class _Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up = nn.Linear(8, 2 * OLD)
        self.down = nn.Linear(OLD, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class _SelfProduct(nn.Module):
    def __init__(self, inner) -> None:  # noqa: ANN001
        super().__init__()
        self.inner, self.a, self.b = inner, nn.Linear(8, OLD), nn.Linear(OLD, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return x + self.b(h * self.inner(h))


def test_dead_products_are_refused_with_the_way_out() -> None:
    """A fused gate/up projection (both factors from one layer) and x * tanh(x) (derivative 0 at 0) cannot be made
    live by a random fan-in: refused, model untouched, net2net works."""
    x = torch.randn(8, 8)
    cases = [
        (_Fused(), {"gate_up": 2 * NEW}, "product.*silu.*chunk.*net2net"),
        (_SelfProduct(torch.tanh), {"a": NEW}, "product.*tanh.*net2net"),
    ]
    for model, widths, match in cases:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for init in ("random", "gradmax"):
            with pytest.raises(ValueError, match=match):
                netgraft.grow_(model, widths, init=init, loss_fn=lambda m, b: m(b).sum(), batch=x)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        netgraft.grow_(model, widths, init="net2net", batch=x)  # the way out works
    # x * sigmoid(x) (SiLU by hand) is alive: d/dx at 0 is sigmoid(0) = 1/2
    netgraft.grow_(_SelfProduct(torch.sigmoid), {"a": NEW}, init="random", example_inputs=(x,))


def test_relu_after_the_product_keeps_the_relu_message() -> None:
    class ReluAfter(GatedMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(h + self.down(F.relu(F.silu(self.gate(h)) * self.up(h))))

    with pytest.raises(ValueError, match="relu"):
        netgraft.grow_(ReluAfter(), {"gate": NEW}, init="random", batch=_batch())


def test_gradmax_on_a_gate_it_cannot_measure_points_to_random() -> None:
    model = GatedMLP(F.relu)  # ReGLU: the random side is behind the ReLU
    with pytest.raises(ValueError, match="init='random'"):
        netgraft.grow_(model, {"gate": NEW}, init="gradmax", loss_fn=_mse, batch=_batch())
    assert model.gate.out_features == OLD
