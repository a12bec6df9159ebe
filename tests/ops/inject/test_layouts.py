"""inject across weight layouts: an nn.Linear (out, in) and GPT-2's Conv1D (in, out) computing the same function.

A nanoGPT-style model (Karpathy's layout, hand-written causal attention) of exactly the sizes of a tiny Hugging Face
GPT-2 computes the same function once the weights are moved across, each tensor read in its own module's layout and
written in the target's. Both directions are checked on fresh token ids of another batch size and length.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgraft

transformers = pytest.importorskip("transformers")

N_EMBD, N_LAYER, N_HEAD, VOCAB, N_POS = 32, 2, 4, 64, 32


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.n_embd = d
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (z.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // N_HEAD)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = CausalSelfAttention(d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.mlp = MLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, d: int = N_EMBD) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, d),
            wpe=nn.Embedding(N_POS, d),
            h=nn.ModuleList([Block(d) for _ in range(N_LAYER)]),
            ln_f=nn.LayerNorm(d, eps=1e-5),
        ))
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # nanoGPT's weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def _hf_gpt2(d: int = N_EMBD) -> nn.Module:
    cfg = transformers.GPT2Config(n_embd=d, n_layer=N_LAYER, n_head=N_HEAD, vocab_size=VOCAB, n_positions=N_POS,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(cfg).eval()


def _randomise(model: nn.Module) -> None:
    """Every parameter distinct and O(1) (norms and biases included), so a transposed or swapped tensor shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.5) + (1.0 if p.dim() == 1 else 0.0))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def _check_same_function(src: nn.Module, dst: nn.Module) -> float:
    torch.manual_seed(123)
    fresh = torch.randint(0, VOCAB, (3, 11))  # another batch size and length than the example inputs
    y, z = _logits(src, fresh), _logits(dst, fresh)
    delta = float((y - z).abs().max())
    assert delta <= 1e-5 * (1 + float(y.abs().max())), delta
    return delta


@pytest.mark.parametrize("direction", ["hf_to_nano", "nano_to_hf"])
def test_identical_function_across_linear_and_conv1d_layouts(direction: str) -> None:
    torch.manual_seed(0)
    hf, nano = _hf_gpt2(), NanoGPT().eval()
    src, dst = (hf, nano) if direction == "hf_to_nano" else (nano, hf)
    _randomise(src)
    example = torch.randint(0, VOCAB, (2, 7))
    report = netgraft.inject_(src, dst, example_inputs=(example,))
    assert report.similarity == 1.0
    assert not report.left_at_init
    assert all(t.method == "copied" for t in report.transfers), [t for t in report.transfers if t.method != "copied"]
    _check_same_function(src, dst)
    assert dst.lm_head.weight is dst.transformer.wte.weight  # the tie survives


def test_nano_and_hf_round_trip_is_exact() -> None:
    torch.manual_seed(0)
    hf, nano, back = _hf_gpt2(), NanoGPT().eval(), _hf_gpt2()
    _randomise(hf)
    example = torch.randint(0, VOCAB, (2, 7))
    netgraft.inject_(hf, nano, example_inputs=(example,))
    netgraft.inject_(nano, back, example_inputs=(example,))
    for (k, a), b in zip(hf.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_similarity_is_one_both_ways() -> None:
    hf, nano = _hf_gpt2(), NanoGPT()
    ids = torch.randint(0, VOCAB, (2, 7))
    assert netgraft.similarity(hf, nano, example_inputs=(ids,)) == 1.0
    assert netgraft.similarity(nano, hf, example_inputs=(ids,)) == 1.0


@pytest.mark.parametrize("direction", ["hf_to_nano", "nano_to_hf"])
def test_different_widths_across_layouts_place_each_qkv_part_and_scale_by_fan_in(direction: str) -> None:
    """A 32-wide source into a 48-wide target of the other layout: each of q, k, v (read in its own layout) lands
    at the centre of its own part of the target's fused projection, times the single fan-in factor."""
    torch.manual_seed(0)
    hf, nano = (_hf_gpt2(32), NanoGPT(48)) if direction == "hf_to_nano" else (_hf_gpt2(48), NanoGPT(32))
    src, dst = (hf, nano) if direction == "hf_to_nano" else (nano, hf)
    _randomise(src)
    report = netgraft.inject_(src, dst, example_inputs=(torch.randint(0, VOCAB, (2, 7)),))
    assert not report.left_at_init

    def canonical(model: nn.Module, name: str) -> torch.Tensor:
        w = model.get_submodule(name).weight.detach()
        return w.t() if model is hf else w

    by_target = {t.target: t for t in report.transfers}
    for layer in range(N_LAYER):
        name = f"transformer.h.{layer}.attn.c_attn"
        assert "per q/k/v part" in by_target[f"{name}.weight"].method
        s, t = canonical(src, name), canonical(dst, name)
        assert s.shape == (96, 32) and t.shape == (144, 48)
        ratios = torch.stack([t_part[8:40, 8:40] / s_part for s_part, t_part in zip(s.chunk(3), t.chunk(3),
                                                                                   strict=True)])
        assert torch.allclose(ratios, ratios[0, 0, 0].expand_as(ratios), rtol=1e-5), name  # one factor, all parts
        rms = float(t.pow(2).mean().sqrt() / s.pow(2).mean().sqrt())
        assert rms == pytest.approx((32 / 48) ** 0.5, rel=1e-4), name
        for mlp_name in (f"transformer.h.{layer}.mlp.c_fc", f"transformer.h.{layer}.mlp.c_proj"):
            s, t = canonical(src, mlp_name), canonical(dst, mlp_name)
            r0, c0 = (t.shape[0] - s.shape[0]) // 2, (t.shape[1] - s.shape[1]) // 2
            ratio = t[r0:r0 + s.shape[0], c0:c0 + s.shape[1]] / s
            assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), rtol=1e-5), mlp_name
            fan_in_factor = (s.shape[1] / t.shape[1]) ** 0.5  # rms kept x sqrt(fan-in ratio), read per own layout
            rms = float(t.pow(2).mean().sqrt() / s.pow(2).mean().sqrt())
            assert rms == pytest.approx(fan_in_factor, rel=1e-4), mlp_name
    assert torch.isfinite(_logits(dst, torch.randint(0, VOCAB, (3, 11)))).all()
