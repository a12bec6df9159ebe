"""The contract: a result is exact and certified, or refused with netgraft's error; the user's model never changes.

One regression test per class of failure that held-out probes found (issue 13), each checked by the test itself on
fresh inputs, never by trusting netgraft's certificate.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, snapshot
from torch import nn

import netgraft
from netgraft.core.certify import Certificate, Measurement

transformers = pytest.importorskip("transformers")


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the issue's float32 bound 1e-5 x (1 + max|a|): <= 1 means exact."""
    return float((a - b).abs().max()) / (1e-5 * (1 + float(a.abs().max())))


def _both_modes(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    for train in (False, True):
        a.train(train)
        b.train(train)
        with torch.no_grad():
            assert _close(a(x), b(x)) <= 1.0, f"train={train}"
    a.eval()
    b.eval()


# -- 1. aliasing after copy --------------------------------------------------------------------------------------------

class MinGPTBlock(nn.Module):
    """minGPT's MLP: a lambda stored on the block calls the block's ModuleDict (copy.deepcopy keeps the closure)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(d, 4 * d), c_proj=nn.Linear(4 * d, d), act=nn.GELU()))
        m = self.mlp
        self.mlpf = lambda x: m.c_proj(m.act(m.c_fc(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlpf(self.ln(x))


class MinGPTLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.h, self.out = nn.Linear(5, 16), nn.ModuleList([MinGPTBlock(16)]), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.h:
            x = block(x)
        return self.out(x)


def test_a_copied_closure_calls_the_copy_and_the_grown_layers_learn() -> None:
    torch.manual_seed(0)
    m = MinGPTLike()
    wide = netgraft.widen(m, {"h.0.mlp.c_fc": 96}, example_inputs=(torch.randn(4, 5),), seed=0)
    assert wide.h[0].mlpf.__closure__[0].cell_contents is wide.h[0].mlp  # the copy's modules, not the source's
    _both_modes(m, wide, torch.randn(7, 5))
    wide(torch.randn(3, 5)).sum().backward()
    assert float(wide.h[0].mlp.c_fc.weight.grad[64:].abs().sum()) > 0  # the new units are alive
    assert all(p.grad is None for p in m.parameters())  # training the copy never reaches the source
    deep = netgraft.deepen(m, "h.0.mlp.c_fc", example_inputs=(torch.randn(4, 5),))
    _both_modes(m, deep, torch.randn(6, 5))


SHARED = nn.Linear(8, 8)


class GlobalCall(nn.Module):
    """A forward that reaches a module through a global: no copy can rebind it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.shared, self.b = nn.Linear(4, 8), SHARED, nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(SHARED(self.a(x))))


def test_a_result_that_still_reaches_the_source_is_refused() -> None:
    m = GlobalCall()
    with pytest.raises(netgraft.UnsupportedModelError, match="reaches the source model's module 'shared'"):
        netgraft.widen(m, {"a": 12}, example_inputs=(torch.randn(3, 4),))
    with pytest.raises(netgraft.UnsupportedModelError, match="reaches the source model's module 'shared'"):
        netgraft.deepen(m, "b", example_inputs=(torch.randn(3, 4),), kind="residual")


# -- 3. Hugging Face decoder layers and the KV cache -------------------------------------------------------------------

def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_copying_a_cache_indexed_decoder_layer_is_refused_with_the_way_out() -> None:
    m = _llama()
    ids = {"input_ids": torch.randint(0, 64, (2, 8))}
    before = snapshot(m)
    for kind in ("copy", "block"):
        with pytest.raises(netgraft.UnsupportedModelError, match=r"layer_idx = 0.*num_hidden_layers"):
            netgraft.deepen(m, "model.layers.0", example_inputs=ids, kind=kind)
    assert_unchanged(m, before)


def test_a_result_that_writes_another_layers_cache_slot_fails_the_certificate() -> None:
    """What the refusal above guards against: a copy of layer 0 inserted by hand decodes wrongly with a cache, and
    the certificate's cached-decoding check sees it although a forward without a cache is exact."""
    import copy

    m = _llama()
    bad = copy.deepcopy(m)
    extra = copy.deepcopy(bad.model.layers[0])
    with torch.no_grad():
        extra.self_attn.o_proj.weight.zero_()
        extra.mlp.down_proj.weight.zero_()
    bad.model.layers.insert(1, extra)  # keeps layer_idx 0
    bad.config.num_hidden_layers = 3  # LlamaModel runs layers[:num_hidden_layers]
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():  # one forward without a cache: exact
        assert _close(m(input_ids=ids, use_cache=False).logits, bad(input_ids=ids, use_cache=False).logits) <= 1.0
    from netgraft.core.certify import Reference, certify
    from netgraft.core.probes import make_probes

    cert = certify(Reference(m, make_probes({"input_ids": ids})), bad)
    assert not cert.passed
    assert "cached decoding" in {mm.mode for mm in cert.measurements if not mm.ok}


def test_config_deepening_is_exact_under_cached_generation() -> None:
    m = _llama()
    deep = netgraft.deepen(m, num_hidden_layers=4)
    assert "cached decoding" in {mm.mode for mm in deep.netgraft_report.certificate.measurements}
    ids = torch.randint(0, 64, (3, 5))
    a = m.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    b = deep.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(a, b)


# -- 5. insertion point: never a pass-through call ---------------------------------------------------------------------

class BasicBlock(nn.Module):
    """kuangliu/pytorch-cifar's block: the shortcut is an empty nn.Sequential() when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.linear = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@pytest.mark.parametrize("kind", ["identity", "auto"])
def test_an_insert_after_the_stem_never_lands_on_an_empty_shortcut(kind: str) -> None:
    torch.manual_seed(0)
    m = CifarResNet()
    x = torch.randn(4, 3, 8, 8)
    deep = netgraft.deepen(m, "conv1", example_inputs=(x,), data=[torch.randn(8, 3, 8, 8)], kind=kind)
    ins = deep.netgraft_report.insertions[0]
    assert "shortcut" not in ins.path and "shortcut" not in ins.runs_after
    assert isinstance(deep.layer1[0].shortcut, nn.Sequential) and len(deep.layer1[0].shortcut) == 0
    assert ins.runs_after in ("conv1", "bn1") and ins.runs_after in str(deep.netgraft_report)
    # the inserted layer runs on the main path: it changes the stem's output once its weights change
    with torch.no_grad():
        for p in deep.get_submodule(ins.path).parameters():
            p.add_(0.5)
    assert not torch.allclose(m.eval()(x), deep.eval()(x))


# -- 6. which modes are exact ------------------------------------------------------------------------------------------

def test_auto_is_exact_in_both_modes_and_identity_batchnorm_says_eval_only() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    x, data = torch.randn(4, 3, 6, 6), [torch.randn(16, 3, 6, 6)]
    auto = netgraft.deepen(m, "0", example_inputs=(x,), data=data)
    assert auto.netgraft_report.modes == ("eval", "train")
    for _ in range(3):  # fresh train-mode batches, not the calibration one
        _both_modes(m, auto, torch.randn(5, 3, 6, 6))
    ident = netgraft.deepen(m, "0", example_inputs=(x,), data=data, kind="identity")
    assert ident.netgraft_report.modes == ("eval",)
    assert "train mode not claimed exact" in str(ident.netgraft_report.certificate)
    m.train()
    ident.train()
    with torch.no_grad():  # what the report says: not exact on a fresh train-mode batch
        y = torch.randn(5, 3, 6, 6)
        assert _close(m(y), ident(y)) > 1.0


# -- 7. config fields that follow depth --------------------------------------------------------------------------------

def test_per_layer_config_fields_grow_with_the_layers() -> None:
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, layer_types=["full_attention"] * 2)
    m = transformers.Qwen2ForCausalLM(cfg).eval()
    deep = netgraft.deepen(m, num_hidden_layers=4)
    assert deep.config.layer_types == ["full_attention"] * 4 and deep.config.num_hidden_layers == 4
    ids = torch.randint(0, 64, (3, 9))
    with torch.no_grad():
        assert _close(m(input_ids=ids).logits, deep(input_ids=ids).logits) <= 1.0


def test_unknown_per_layer_fields_and_layer_index_scaling_are_refused() -> None:
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64,
                                                                 n_positions=32, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        netgraft.deepen(gpt2, num_hidden_layers=3)
    m = _llama()
    m.config.per_layer_rope = [1.0, 2.0]
    with pytest.raises(ValueError, match="config.per_layer_rope holds 2 entries"):
        netgraft.deepen(m, num_hidden_layers=3)


# -- 8. data-dependent control flow ------------------------------------------------------------------------------------

class SignBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if x.mean() > 0:
            h = torch.relu(self.b(h))
        return self.c(h)


class BatchBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h * 2 if x.shape[0] > 4 else h)


class PerSample(nn.Module):
    """A loop over the batch repeats the same ops: not a different path."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.b(torch.tanh(self.a(r))) for r in x])


@pytest.mark.parametrize("cls,first", [(SignBranch, "'linear' in module 'b' runs on example_inputs but not on "
                                                    "negated values"),
                                       (BatchBranch, "'mul' in module '<root>' runs on one more sample only")])
def test_a_forward_that_branches_on_inputs_is_refused(cls: type, first: str) -> None:
    torch.manual_seed(0)
    m = cls()
    x = (torch.randn(4, 4) + 0.5,)
    for call in (lambda: netgraft.widen(m, {"a": 16}, example_inputs=x), lambda: netgraft.groups(m, x),
                 lambda: netgraft.deepen(m, "a", example_inputs=x, kind="residual")):
        with pytest.raises(netgraft.UnsupportedModelError, match="different path on other inputs") as err:
            call()
        assert first in str(err.value)


def test_the_certificate_lists_the_inputs_it_was_measured_on() -> None:
    torch.manual_seed(0)
    m = PerSample()
    wide = netgraft.widen(m, {"a": 16}, example_inputs=(torch.randn(4, 4),))
    cert = wide.netgraft_report.certificate
    assert [i.split(" (")[0] for i in cert.inputs] == ["example_inputs", "fresh values", "negated values",
                                                        "one more sample"]
    assert {mm.mode for mm in cert.measurements} == {"eval", "train"} and cert.passed
    assert "one more sample (5, 4)" in str(cert)
    _both_modes(m, wide, torch.randn(9, 4))


# -- 9. the source is restored even when a forward writes its parameters -----------------------------------------------

class Renorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e, self.fc = nn.Embedding(10, 8, max_norm=1.0), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.e(ids))


class WritesWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.b.weight.mul_(1.5)
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("build,x", [(Renorm, torch.randint(0, 10, (3, 5))), (WritesWeight, torch.randn(3, 4))])
def test_parameters_written_by_the_forward_are_restored_even_when_refused(build, x) -> None:
    torch.manual_seed(0)
    m = build()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)  # rows above max_norm: the embedding renormalises them in place when looked up
    before = snapshot(m)
    key = "e" if build is Renorm else "a"
    for call in (lambda: netgraft.widen(m, {key: 16}, example_inputs=(x,)), lambda: netgraft.groups(m, (x,)),
                 lambda: netgraft.deepen(m, key, example_inputs=(x,), kind="residual")):
        try:
            call()
        except (netgraft.UnsupportedModelError, ValueError):
            pass
        assert_unchanged(m, before)


# -- 10. non-finite outputs never pass ---------------------------------------------------------------------------------

def test_nan_and_inf_never_pass_in_any_path() -> None:
    nan = Measurement("x", "eval", math.nan, 1.0, 1e-5, "float32", 1, False)
    assert not Certificate((nan,)).passed
    m = _llama()
    import copy

    broken = copy.deepcopy(m)
    with torch.no_grad():
        broken.lm_head.weight[3, 0] = float("nan")
    from netgraft import hf

    cert = hf.certify(m, broken, {"input_ids": torch.randint(0, 64, (2, 6))}, None)
    assert not cert.passed and "non-finite" in str(cert)
    both = copy.deepcopy(m)  # NaN in the source and the result at the same place: still not certified
    with torch.no_grad():
        m2 = copy.deepcopy(m)
        m2.lm_head.weight[3, 0] = float("inf")
        both.lm_head.weight[3, 0] = float("inf")
    assert not hf.certify(m2, both, {"input_ids": torch.randint(0, 64, (2, 6))}, None).passed


# -- 11. unsupported inputs get netgraft's error -----------------------------------------------------------------------

def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("make,match", [
    (lambda: torch.jit.script(_mlp()), "TorchScript"),
    (lambda: torch.jit.trace(_mlp(), torch.randn(2, 4)), "TorchScript"),
    (lambda: torch.ao.quantization.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.qint8), "quantized module"),
    (lambda: _mlp().to("meta"), "meta device"),
])
def test_unsupported_models_are_refused_by_every_verb(make, match: str) -> None:
    m = make()
    x = (torch.randn(3, 4),)
    calls = [lambda: netgraft.widen(m, 2.0, example_inputs=x), lambda: netgraft.deepen(m, "0", example_inputs=x),
             lambda: netgraft.groups(m, x), lambda: netgraft.inject_(m, _mlp()), lambda: netgraft.inject_(_mlp(), m),
             lambda: netgraft.grow_(m, {"0": 12}, init="zeros", example_inputs=x)]
    for call in calls:
        with pytest.raises(netgraft.UnsupportedModelError, match=match):
            call()


def test_grow_with_another_models_optimizer_is_refused_before_any_change() -> None:
    m = _mlp()
    before = snapshot(m)
    opt = torch.optim.Adam(_mlp().parameters())
    with pytest.raises(ValueError, match="holds none of the model's parameters"):
        netgraft.grow_(m, {"0": 12}, init="zeros", example_inputs=(torch.randn(3, 4),), optimizer=opt)
    assert_unchanged(m, before)
