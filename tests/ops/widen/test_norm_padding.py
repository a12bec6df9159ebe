"""Zero padding under LayerNorm / RMSNorm (REFERENCE 4.1): a normalised dimension grows to any size, not only to
multiples, where the trace proves it exact (`netgraft.core.padding`), and is refused with the reason elsewhere.

Every padded model is checked here, by the test, on inputs the trace never saw (other batch sizes and lengths, other
values), in eval and train mode (dropout off), in float32 (max |delta| <= 1e-5 x (1 + max|y|)) and float64 (<= 1e-10);
the source stays untouched; and the new features learn (fresh reader columns, writers' new rows and the norms' new
gain units move within two plain SGD steps).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, snapshot
from torch import nn

import netgraft

# -- models ------------------------------------------------------------------------------------------------------------


def _norm(kind: str, d: int, bias: bool = True, eps: float | None = 1e-5) -> nn.Module:
    return nn.LayerNorm(d, eps=eps, bias=bias) if kind == "layer" else nn.RMSNorm(d, eps=eps)


class Attention(nn.Module):
    """Causal self-attention with its own head count and head size: the stream grows alone."""

    def __init__(self, d: int, n_head: int = 2, head_dim: int = 8, bias: bool = True) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.q = nn.Linear(d, n_head * head_dim, bias=bias)
        self.k = nn.Linear(d, n_head * head_dim, bias=bias)
        self.v = nn.Linear(d, n_head * head_dim, bias=bias)
        self.proj = nn.Linear(n_head * head_dim, d, bias=bias)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (f(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)))


class MLP(nn.Module):
    """GELU MLP (LayerNorm blocks) or SwiGLU without biases (RMSNorm blocks)."""

    def __init__(self, d: int, hidden: int, swiglu: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(d, hidden, bias=bias)
        self.gate = nn.Linear(d, hidden, bias=False) if swiglu else None
        self.fc2 = nn.Linear(hidden, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.fc1(x) if self.swiglu else F.gelu(self.fc1(x))
        return self.fc2(h)


class Block(nn.Module):
    """Pre-norm (x + f(norm(x))) or post-norm (norm(x + f(x))), optionally with a layer scale on each branch."""

    def __init__(self, d: int, kind: str, bias: bool = True, post: bool = False, layer_scale: bool = False,
                 eps: float | None = 1e-5) -> None:
        super().__init__()
        self.post = post
        self.norm1, self.norm2 = _norm(kind, d, bias, eps), _norm(kind, d, bias, eps)
        self.attn = Attention(d, bias=bias)
        self.mlp = MLP(d, 3 * d, swiglu=kind == "rms", bias=bias)
        self.g1 = nn.Parameter(0.5 + torch.rand(d)) if layer_scale else None
        self.g2 = nn.Parameter(0.5 + torch.rand(d)) if layer_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post:
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        a = self.attn(self.norm1(x))
        x = x + (a * self.g1 if self.g1 is not None else a)
        m = self.mlp(self.norm2(x))
        return x + (self.g2 * m if self.g2 is not None else m)


class LM(nn.Module):
    """Token + learned position embeddings, blocks, final norm, head (optionally tied to the embedding)."""

    def __init__(self, kind: str = "layer", d: int = 32, vocab: int = 40, n_layer: int = 2, bias: bool = True,
                 post: bool = False, layer_scale: bool = False, eps: float | None = 1e-5, tied: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(1, 16, d))
        self.blocks = nn.ModuleList([Block(d, kind, bias, post, layer_scale, eps) for _ in range(n_layer)])
        self.norm = _norm(kind, d, bias, eps)
        self.head = nn.Linear(d, vocab, bias=False)
        if tied:  # the head reads the final norm's output, whose new features are 0: any shared column is exact
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.pos[:, : ids.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


class ConvNeXtStyle(nn.Module):
    """Channels-last LayerNorm CNN in ConvNeXt's shape: patchify stem, blocks x + gamma * pw2(gelu(pw1(dw(ln(x)))))
    (`dw_first`: ConvNeXt's own order, x + gamma * pw2(gelu(pw1(ln(dw(x)))))), a LayerNorm + stride-2 conv downsample,
    global average pool, LayerNorm, head. The stem has no norm: a stream that starts as a LayerNorm's output holds
    its bias, not each pixel's mean, in new channels."""

    def __init__(self, dims: tuple[int, int] = (32, 24), classes: int = 5, dw_first: bool = False) -> None:
        super().__init__()
        self.dw_first = dw_first
        self.stem = nn.Conv2d(3, dims[0], 2, stride=2)
        self.stages = nn.ModuleList()
        for d in dims:
            self.stages.append(nn.ModuleDict(dict(
                norm=nn.LayerNorm(d, eps=1e-6), dw=nn.Conv2d(d, d, 3, padding=1, groups=d), pw1=nn.Linear(d, 4 * d),
                pw2=nn.Linear(4 * d, d))))
            self.stages[-1].gamma = nn.Parameter(0.1 + torch.rand(d))
        self.down_norm = nn.LayerNorm(dims[0], eps=1e-6)
        self.down = nn.Conv2d(dims[0], dims[1], 2, stride=2)
        self.norm = nn.LayerNorm(dims[1], eps=1e-6)
        self.head = nn.Linear(dims[1], classes)

    def _dw(self, s: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        return s.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (N, H, W, C) -> (N, C, H, W) -> back

    def block(self, s: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        h = s.norm(self._dw(s, x)) if self.dw_first else self._dw(s, s.norm(x))
        return x + s.gamma * s.pw2(F.gelu(s.pw1(h)))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.stem(img).permute(0, 2, 3, 1)  # (N, H, W, C): channels last
        x = self.block(self.stages[0], x)
        x = self.down(self.down_norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.block(self.stages[1], x)
        return self.head(self.norm(x.mean((1, 2))))


class FunctionalLN(nn.Module):
    """A LayerNorm written with F.layer_norm and a literal epsilon."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps_literal = eps
        self.weight, self.bias = nn.Parameter(1 + 0.1 * torch.randn(d)), nn.Parameter(0.1 * torch.randn(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eps_literal == 0.0:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 0.0)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 1e-5)


class FunctionalNet(nn.Module):
    def __init__(self, eps: float, d: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.ln = FunctionalLN(d, eps)
        self.fc = nn.Linear(d, 16)
        self.out = nn.Linear(16, d)
        self.ln_f = FunctionalLN(d, eps)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.out(F.relu(self.fc(self.ln(h))))
        return self.head(self.ln_f(h))


def _ids(b: int, t: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 40, (b, t)),)


def _imgs(b: int, s: int) -> tuple[torch.Tensor]:
    return (torch.randn(b, 3, s, s),)


def _vec(b: int) -> tuple[torch.Tensor]:
    return (torch.randn(b, 6),)


# name: (builder, key of the padded dimension, example inputs, fresh inputs)
CASES = {
    "prenorm_layernorm": (lambda: LM("layer"), "emb", lambda: _ids(2, 7), lambda: [_ids(3, 5), _ids(1, 11)]),
    "prenorm_layernorm_no_bias": (lambda: LM("layer", bias=False), "emb", lambda: _ids(2, 7),
                                  lambda: [_ids(3, 5), _ids(1, 11)]),
    "prenorm_layernorm_tied": (lambda: LM("layer", tied=True), "emb", lambda: _ids(2, 7), lambda: [_ids(3, 5)]),
    "prenorm_rmsnorm": (lambda: LM("rms", bias=False), "emb", lambda: _ids(2, 7), lambda: [_ids(3, 5), _ids(1, 11)]),
    "prenorm_rmsnorm_eps_none": (lambda: LM("rms", bias=False, eps=None), "emb", lambda: _ids(2, 7),
                                 lambda: [_ids(3, 5)]),
    "layer_scale_layernorm": (lambda: LM("layer", layer_scale=True), "emb", lambda: _ids(2, 7),
                              lambda: [_ids(3, 5), _ids(1, 11)]),
    "layer_scale_rmsnorm": (lambda: LM("rms", bias=False, layer_scale=True), "emb", lambda: _ids(2, 7),
                            lambda: [_ids(3, 5)]),
    "postnorm_rmsnorm": (lambda: LM("rms", bias=False, post=True), "emb", lambda: _ids(2, 7), lambda: [_ids(3, 5)]),
    "convnext_style": (ConvNeXtStyle, "stem", lambda: _imgs(2, 8), lambda: [_imgs(3, 8), _imgs(1, 12)]),
    "convnext_style_stage2": (ConvNeXtStyle, "down", lambda: _imgs(2, 8), lambda: [_imgs(1, 12)]),
    "functional_eps_zero": (lambda: FunctionalNet(0.0), "inp", lambda: _vec(5), lambda: [_vec(3), _vec(9)]),
}


def _build(name: str, dtype: torch.dtype) -> tuple[nn.Module, str, tuple, list[tuple]]:
    build, key, example, fresh = CASES[name]
    torch.manual_seed(0)
    model = build().to(dtype).eval()
    with torch.no_grad():  # trained-looking norms: gains and biases away from 1 and 0
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                m.weight.mul_(1 + 0.3 * torch.randn_like(m.weight))
                if getattr(m, "bias", None) is not None:
                    m.bias.add_(0.2 * torch.randn_like(m.bias))
    torch.manual_seed(1)
    cast = lambda xs: tuple(x.to(dtype) if x.is_floating_point() else x for x in xs)  # noqa: E731
    return model, key, cast(example()), [cast(x) for x in fresh()]


def _outputs(model: nn.Module, inputs: tuple, train: bool) -> torch.Tensor:
    model.train(train)
    for m in model.modules():  # the contract: dropout off in train mode too
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        return model(*inputs)


def measure(model: nn.Module, wide: nn.Module, inputs: list[tuple]) -> float:
    """The largest max |delta| / bound over `inputs` in eval and train mode (the bound of the exactness contract)."""
    worst = 0.0
    for x in inputs:
        for train in (False, True):
            y, z = _outputs(model, x, train), _outputs(wide, x, train)
            assert y.shape == z.shape and bool(torch.isfinite(z).all())
            delta = float((y - z).abs().max())
            bound = 1e-10 if y.dtype == torch.float64 else 1e-5 * (1 + float(y.abs().max()))
            worst = max(worst, delta / bound)
    model.eval()
    return worst


def _grown(model: nn.Module, wide: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    old = dict(model.named_parameters())
    return {n: (old[n], p) for n, p in wide.named_parameters() if p.shape != old[n].shape}


# -- exact at any size -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("extra", [1, 8])
@pytest.mark.parametrize("name", sorted(CASES))
def test_padding_is_exact_on_fresh_inputs(name: str, extra: int, dtype: torch.dtype) -> None:
    model, key, example, fresh = _build(name, dtype)
    before = snapshot(model)
    group = netgraft.groups(model, example)[key]
    d = group.display_size
    assert group.padding is not None, group.padding_refused
    assert group.valid_sizes()[:2] == [d + 1, d + 2]
    assert "any size (zero padding" in group.constraints()[0]
    wide = netgraft.widen(model, {key: d + extra}, example_inputs=example, seed=0)
    assert_unchanged(model, before)
    assert (key, d, d + extra) in wide.netgraft_report.changes
    assert wide.netgraft_report.certificate.passed
    assert measure(model, wide, [example, *fresh]) <= 1.0
    if name.endswith("_tied"):
        assert wide.head.weight is wide.emb.weight
    for n, (old, new) in _grown(model, wide).items():  # zero padding: the old units are kept as they were
        if n.endswith("norm1.weight") or n.endswith("norm.weight"):
            assert torch.allclose(new[:d], old * math.sqrt(d / (d + extra)), rtol=1e-6), n


def test_norms_absorb_the_statistics_and_epsilon() -> None:
    model, key, example, _ = _build("prenorm_layernorm", torch.float64)
    wide = netgraft.widen(model, {key: 40}, example_inputs=example, seed=0)
    for name in ("blocks.0.norm1", "blocks.1.norm2", "norm"):
        old, new = model.get_submodule(name), wide.get_submodule(name)
        assert new.normalized_shape == (40,)
        assert new.eps == pytest.approx(old.eps * 32 / 40, rel=1e-12)
        assert torch.allclose(new.weight[:32], old.weight * math.sqrt(32 / 40))
        assert torch.allclose(new.weight[32:], (old.weight * math.sqrt(32 / 40)).mean().expand(8))
        assert bool((new.bias[32:] == 0).all()) and torch.equal(new.bias[:32], old.bias)
    # writers put each token's mean in the new features: rows and biases are the mean of the old ones
    fc2_old, fc2_new = model.blocks[0].mlp.fc2, wide.blocks[0].mlp.fc2
    assert torch.allclose(fc2_new.weight[32:], fc2_old.weight.mean(0, keepdim=True).expand(8, -1))
    assert torch.allclose(wide.emb.weight[:, 32:], model.emb.weight.mean(1, keepdim=True).expand(-1, 8))
    # readers: fresh random columns (they read exactly the norms' zero bias)
    assert float(wide.blocks[0].mlp.fc1.weight[:, 32:].abs().min()) > 0
    rms, _, ex, _ = _build("prenorm_rmsnorm_eps_none", torch.float32)
    wide = netgraft.widen(rms, {"emb": 40}, example_inputs=ex, seed=0)
    assert rms.norm.eps is None and wide.norm.eps == pytest.approx(torch.finfo(torch.float32).eps * 32 / 40)
    assert bool((wide.emb.weight[:, 32:] == 0).all())  # RMSNorm stream: new features are 0


def test_multiples_still_replicate_and_factors_pad() -> None:
    model, key, example, fresh = _build("prenorm_layernorm", torch.float32)
    wide = netgraft.widen(model, {key: 64}, example_inputs=example, seed=0)
    assert torch.equal(wide.emb.weight, model.emb.weight.repeat(1, 2))  # uniform replication, as before
    assert wide.blocks[0].norm1.eps == model.blocks[0].norm1.eps
    wide = netgraft.widen(model, 1.5, example_inputs=example, seed=0)  # a factor pads where padding is exact
    assert (key, 32, 48) in wide.netgraft_report.changes
    assert measure(model, wide, [example, *fresh]) <= 1.0


def test_new_features_learn() -> None:
    """Two plain SGD steps in train mode: the writers' new rows, the norms' new bias and gain units and the readers'
    new columns all move (the readers' columns read 0 at growth, so under RMSNorm they move from the second step)."""
    for name, key, parts in (
        ("prenorm_layernorm", "emb", [("blocks.0.mlp.fc2.weight", 0), ("blocks.0.norm2.weight", 0),
                                      ("blocks.0.norm2.bias", 0), ("blocks.0.mlp.fc1.weight", 1),
                                      ("head.weight", 1), ("emb.weight", 1)]),
        ("prenorm_rmsnorm", "emb", [("blocks.0.mlp.fc2.weight", 0), ("blocks.1.norm1.weight", 0),
                                    ("blocks.0.attn.q.weight", 1), ("head.weight", 1), ("emb.weight", 1)]),
        ("convnext_style", "stem", [("stem.weight", 0), ("stages.0.pw2.weight", 0), ("stages.0.gamma", 0),
                                    ("stages.0.dw.weight", 0), ("stages.0.pw1.weight", 1), ("down.weight", 1)]),
    ):
        model, _, example, _ = _build(name, torch.float32)
        d = netgraft.groups(model, example)[key].display_size
        wide = netgraft.widen(model, {key: d + 5}, example_inputs=example, seed=0).train()
        start = copy.deepcopy(wide)
        opt = torch.optim.SGD(wide.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            wide(*example).square().mean().backward()
            opt.step()
        params, moved = dict(wide.named_parameters()), dict(start.named_parameters())
        for pname, axis in parts:
            change = (params[pname] - moved[pname]).detach().abs()
            new = change.narrow(axis, d, 5).amax()
            old = change.narrow(axis, 0, d).amax()
            # round-off moves a unit by ~1e-8 of the old ones' change; a unit that learns, by >= 1e-4 of it
            assert float(new) > 1e-6 * float(old) > 0, (name, pname, float(new), float(old))


# -- refused, with the reason ------------------------------------------------------------------------------------------


def test_post_norm_layernorm_is_refused_with_the_reason() -> None:
    torch.manual_seed(0)
    model, x = LM("layer", post=True).eval(), _ids(2, 7)
    group = netgraft.groups(model, x)["emb"]
    assert group.padding is None and "post-norm" in group.padding_refused
    assert group.valid_sizes()[:2] == [64, 96] and group.constraints()[0].startswith("multiple of 32")
    with pytest.raises(ValueError, match=r"(?s)multiple of 32.*zero padding.*not exact.*add.*post-norm.*64"):
        netgraft.widen(model, {"emb": 40}, example_inputs=x)
    wide = netgraft.widen(model, {"emb": 64}, example_inputs=x, seed=0)  # multiples still replicate
    assert measure(model, wide, [x, _ids(3, 5)]) <= 1.0


def test_literal_epsilon_is_refused_and_named() -> None:
    torch.manual_seed(0)
    model, x = FunctionalNet(1e-5).eval(), _vec(5)
    with pytest.raises(ValueError, match=r"layer_norm' in module 'ln'.*eps=1e-05.*cannot be rescaled"):
        netgraft.widen(model, {"inp": 40}, example_inputs=x)
    assert netgraft.widen(model, {"inp": 64}, example_inputs=x).netgraft_report.certificate.passed


def test_depthwise_conv_before_the_norm_is_refused() -> None:
    """ConvNeXt's own order (dw -> LayerNorm): a depthwise filter is not linear across channels, so its new channels
    cannot hold each pixel's mean of its outputs."""
    torch.manual_seed(0)
    model, x = ConvNeXtStyle(dw_first=True).eval(), _imgs(2, 8)
    with pytest.raises(ValueError, match=r"conv2d' in module 'stages.0.dw'.*depthwise.*not linear across channels"):
        netgraft.widen(model, {"stem": 40}, example_inputs=x)
    wide = netgraft.widen(model, {"stem": 64, "down": 48}, example_inputs=x, seed=0)  # multiples replicate
    assert measure(model, wide, [x, _imgs(1, 12)]) <= 1.0


class TwoNorms(nn.Module):
    """One stream under a LayerNorm and an RMSNorm: their new features would need the mean and zero at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.ln, self.rms, self.fc = nn.Linear(6, 16), nn.LayerNorm(16), nn.RMSNorm(16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.fc(self.ln(h) + self.rms(h))


class HandLN(nn.Module):
    """A LayerNorm computed with mean and var: the statistics are reductions padding cannot see through."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) * self.w


@pytest.mark.parametrize("case", ["hand_ln", "ln_of_ln", "gelu_before_norm", "mixed_norms"])
def test_unprovable_padding_is_refused_by_name(case: str) -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 6),)
    inp, ln, ln2, fc = nn.Linear(6, 16), nn.LayerNorm(16), nn.LayerNorm(16), nn.Linear(16, 3)
    if case == "hand_ln":
        model, why = nn.Sequential(inp, HandLN(16), fc), "'mean' over this axis"
    elif case == "ln_of_ln":
        model, why = nn.Sequential(inp, ln, ln2, fc), "op 'layer_norm' in module '2'.*new features hold 0"
    elif case == "gelu_before_norm":
        model, why = nn.Sequential(inp, nn.GELU(), ln, fc), "op 'gelu' in module '1'.*nonlinear"
    else:
        model, why = TwoNorms(), "both LayerNorm and RMSNorm"
    model.eval()
    key = "inp" if case == "mixed_norms" else "0"
    group = netgraft.groups(model, x)[key]
    assert group.padding is None and group.valid_sizes()[0] == 32
    with pytest.raises(ValueError, match=f"(?s)multiple of 16.*zero padding.*{why}"):
        netgraft.widen(model, {key: 20}, example_inputs=x)


def test_grow_refuses_padding_by_name() -> None:
    """grow_ works in place and carries optimizer state; zero padding is widen's: grow_ asks for a multiple."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    x = torch.randn(8, 6)
    with pytest.raises(ValueError, match="zero padding.*only widen"):
        netgraft.grow_(model, {"0": 20}, init="net2net", example_inputs=(x,))
    assert model[0].out_features == 16


def test_split_noise_leaves_fresh_units_out() -> None:
    """The kernel's split noise shares an old unit's column among its copies; fresh units (zero padding) are no
    copies: old columns stay exact (the Hugging Face path pads and noises through the same kernel)."""
    from netgraft.core.apply import AxisGrowth, grow_tensor
    from netgraft.core.plan import IndexMap

    w = torch.randn(5, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    out = grow_tensor(w, {1: AxisGrowth(IndexMap.padded(6, 9), summed=True)}, noise=1.0, gen=gen)
    assert torch.equal(out[:, :6], w) and float(out[:, 6:].abs().min()) > 0
    mixed = IndexMap(np.array([0, 1, 2, 0, 0]), np.array([0.5, 1, 1, 0.5, 1]), np.array([0, 0, 0, 0, 1], bool))
    out = grow_tensor(w[:, :3], {1: AxisGrowth(mixed, summed=True)}, noise=1.0, gen=gen)
    assert torch.allclose(out[:, 0] + out[:, 3], w[:, 0], rtol=0, atol=1e-15) and not torch.equal(out[:, 0], w[:, 0])
    assert torch.equal(out[:, 1:3], w[:, 1:3]) and float(out[:, 4].abs().min()) > 0
