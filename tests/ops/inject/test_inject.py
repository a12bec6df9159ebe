"""inject / similarity: matching, injection of every layer type, determinism, round trips and error paths."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import snapshot
from torch import nn
from zoo import ZOO, randomize_batchnorm_stats

import netgraft


def _pair(name: str) -> tuple[nn.Module, nn.Module, tuple]:
    e = ZOO[name]
    torch.manual_seed(0)
    src = e.build()
    randomize_batchnorm_stats(src)
    torch.manual_seed(1)
    return src, e.build(), e.inputs()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_round_trip_into_an_identical_architecture_reproduces_the_model(name: str) -> None:
    src, dst, x = _pair(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical architectures must not warn
        report = netgraft.inject_(src, dst, example_inputs=x)
    assert report.similarity == 1.0 and not report.left_at_init
    assert all(t.method == "copied" for t in report.transfers)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # BatchNorm running statistics included
    cert = netgraft.check_preserved(src, dst, x)
    assert cert.max_abs == 0.0


@pytest.mark.parametrize("name", sorted(ZOO))
def test_similarity_is_one_for_identical_architectures(name: str) -> None:
    src, dst, _ = _pair(name)
    assert netgraft.similarity(src, dst) == 1.0


def _cnn(c1: int, c2: int, k: int = 3, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, c1, k, padding=k // 2), nn.BatchNorm2d(c1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(c1, c1, k, padding=k // 2), nn.BatchNorm2d(c1), nn.ReLU()]
    layers += [nn.Conv2d(c1, c2, k, padding=k // 2), nn.BatchNorm2d(c2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(c2, 10)]
    return nn.Sequential(*layers)


def test_deterministic_bit_identical() -> None:
    torch.manual_seed(0)
    src = _cnn(8, 16)
    randomize_batchnorm_stats(src)
    torch.manual_seed(5)
    a = _cnn(12, 24, k=5, depth=4)
    b = _cnn(12, 24, k=5, depth=4)
    b.load_state_dict(a.state_dict())
    ra, rb = netgraft.inject_(src, a), netgraft.inject_(src, b)
    assert str(ra) == str(rb)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_similarity_is_directed_bounded_and_ranks_closer_architectures_higher() -> None:
    small, wide, deep = _cnn(8, 16), _cnn(16, 32), _cnn(8, 16, depth=4)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sims = {n: netgraft.similarity(small, m) for n, m in (("wide", wide), ("deep", deep), ("mlp", mlp))}
    assert all(0.0 <= s <= 1.0 for s in sims.values())
    assert sims["deep"] > sims["wide"] > sims["mlp"]
    assert netgraft.similarity(wide, small) == pytest.approx(sims["wide"], abs=0.05)  # nearly symmetric in width
    assert netgraft.similarity(deep, small) == 1.0 != sims["deep"]  # a deeper source covers all of a shallow target


def test_deeper_target_reuses_source_layers_and_bn_statistics_move() -> None:
    torch.manual_seed(0)
    src = _cnn(8, 16)
    randomize_batchnorm_stats(src)
    dst = _cnn(8, 16, depth=4)
    report = netgraft.inject_(src, dst)
    assert not report.left_at_init
    seeded_by = {t.target: t.source for t in report.transfers}
    assert seeded_by["3.weight"] == seeded_by["6.weight"] == "3.weight"  # one source conv seeds a run
    assert torch.equal(dst[4].running_var, src[4].running_var)
    assert torch.equal(dst[4].running_mean, src[4].running_mean)


def test_kernel_size_change_and_fan_in_scale() -> None:
    torch.manual_seed(0)
    src, dst = nn.Sequential(nn.Conv2d(4, 8, 3)), nn.Sequential(nn.Conv2d(4, 8, 5))
    report = netgraft.inject_(src, dst)
    w = dst[0].weight
    t = report.transfers[0]
    assert "place" in t.method and "fan-in" in t.method
    factor = (36 / 100) ** 0.5
    centre = w[:, :, 1:4, 1:4] / factor  # 0.75 * source + 0.25 * its resize, in the centre
    assert torch.corrcoef(torch.stack([centre.flatten(), src[0].weight.flatten()]))[0, 1] > 0.9
    shrink = nn.Sequential(nn.Conv2d(4, 8, 1))
    netgraft.inject_(src, shrink)
    assert shrink[0].weight.shape == (8, 4, 1, 1)


def test_linear_widening_keeps_the_output_scale() -> None:
    torch.manual_seed(0)
    src = nn.Linear(64, 64)
    dst = nn.Linear(256, 64)
    netgraft.inject_(src, dst)
    x_src, x_dst = torch.randn(4096, 64), torch.randn(4096, 256)
    ratio = (dst(x_dst) - dst.bias).std() / (src(x_src) - src.bias).std()
    assert 0.7 < ratio < 1.3, ratio


def test_embedding_vocabulary_is_aligned_at_the_start() -> None:
    torch.manual_seed(0)
    src, dst = nn.Embedding(100, 16), nn.Embedding(120, 16)
    before = dst.weight.detach().clone()
    netgraft.inject_(src, dst)
    assert torch.equal(dst.weight[:100], src.weight)
    assert torch.equal(dst.weight[100:], before[100:])  # new tokens keep their own init


def test_norms_and_attention() -> None:
    torch.manual_seed(0)

    class Enc(nn.Module):
        def __init__(self, d: int, groups: int) -> None:
            super().__init__()
            self.inp = nn.Linear(6, d)
            self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
            self.ln = nn.LayerNorm(d)
            self.gn = nn.GroupNorm(groups, d)
            self.out = nn.Linear(d, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            h = self.ln(h + self.attn(h, h, h, need_weights=False)[0])
            return self.out(self.gn(h.transpose(1, 2)).transpose(1, 2))

    src, dst = Enc(32, 4), Enc(48, 4)
    for p in src.parameters():
        nn.init.normal_(p)
    report = netgraft.inject_(src, dst, example_inputs=(torch.randn(2, 5, 6),))
    by_target = {t.target: t for t in report.transfers}
    assert "per q/k/v part" in by_target["attn.in_proj_weight"].method
    assert {"ln.weight", "ln.bias", "gn.weight", "gn.bias", "attn.out_proj.weight"} <= by_target.keys()
    assert not report.left_at_init
    assert torch.isfinite(dst(torch.randn(2, 5, 6))).all()


def test_shrinking_then_injecting_back_recovers_the_weights() -> None:
    torch.manual_seed(0)
    big = _cnn(16, 32)
    small = _cnn(8, 16)
    netgraft.inject_(big, small)  # weight selection: large -> small is the same call
    torch.manual_seed(3)
    back = _cnn(16, 32)
    fresh = _cnn(16, 32)
    back.load_state_dict(fresh.state_dict())
    netgraft.inject_(small, back)

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    for i, centre in ((0, (slice(4, 12),)), (3, (slice(4, 12), slice(4, 12))), (6, (slice(8, 24), slice(4, 12)))):
        # channels are cropped, then placed back at the centre, never interpolated: the surviving centre channels are
        # the original weights up to the fan-in scale; a fresh init does not track them
        assert corr(back[i].weight[centre], big[i].weight[centre]) > 0.9999
        assert abs(corr(fresh[i].weight[centre], big[i].weight[centre])) < 0.3


def test_channels_are_cropped_not_interpolated_unless_asked() -> None:
    torch.manual_seed(0)
    src, crop, paper = nn.Linear(8, 16), nn.Linear(8, 8), nn.Linear(8, 8)
    report = netgraft.inject_(src, crop)
    assert report.transfers[0].method.startswith("crop,")  # no "& resize"
    ratio = crop.weight / src.weight[4:12]
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio))  # the centre rows, one scale factor
    report = netgraft.inject_(src, paper, channel_resize=True)  # the TLI paper: every dimension resized too
    assert "resize" in report.transfers[0].method
    assert not torch.allclose(paper.weight / src.weight[4:12], (paper.weight / src.weight[4:12])[0, 0])


def test_a_conv_bn_unit_stays_together_inside_residual_blocks() -> None:
    from zoo import ResNet18Style

    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    dst = ResNet18Style()
    report = netgraft.inject_(src, dst, example_inputs=(torch.randn(2, 3, 8, 8),))
    seeded = {t.target.rsplit(".", 1)[0]: t.source.rsplit(".", 1)[0] for t in report.transfers}
    # every BatchNorm is seeded by the BN that follows the conv seeding its own conv
    for conv, bn in [("conv1", "bn1"), *[(f"layer{s}.{b}.conv{c}", f"layer{s}.{b}.bn{c}")
                                          for s in (1, 2) for b in (0, 1) for c in (1, 2)],
                     ("layer2.0.downsample.0", "layer2.0.downsample.1")]:
        assert seeded[bn] == str(int(seeded[conv]) + 1), (conv, bn, seeded[conv], seeded[bn])
    assert not report.left_at_init


def test_hugging_face_models_of_different_sizes() -> None:
    transformers = pytest.importorskip("transformers")
    ids = torch.randint(0, 100, (2, 7))
    cases = [
        (transformers.BertModel, transformers.BertConfig, dict(hidden_size=64, num_hidden_layers=2,
                                                               num_attention_heads=4, intermediate_size=128,
                                                               vocab_size=100),
         dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, intermediate_size=192, vocab_size=120)),
        (transformers.GPT2LMHeadModel, transformers.GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                                                     n_positions=32, bos_token_id=0, eos_token_id=0),
         dict(n_embd=48, n_layer=3, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)),
        (transformers.LlamaForCausalLM, transformers.LlamaConfig, dict(hidden_size=64, num_hidden_layers=2,
                                                                       num_attention_heads=4, num_key_value_heads=2,
                                                                       intermediate_size=128, vocab_size=100),
         dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
              intermediate_size=160, vocab_size=100)),
    ]
    for cls, cfg, small, large in cases:
        torch.manual_seed(0)
        src, dst = cls(cfg(**small)).eval(), cls(cfg(**large)).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = netgraft.inject_(src, dst, example_inputs={"input_ids": ids})
        assert len(report.transfers) > 20 and not report.left_at_init, cls.__name__
        out = dst(ids)
        tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
        assert torch.isfinite(tensor).all()
        if cls is transformers.GPT2LMHeadModel:
            assert dst.lm_head.weight is dst.transformer.wte.weight  # the tie survives, written once


def test_errors_leave_the_target_untouched() -> None:
    torch.manual_seed(0)
    conv_only, linear_only = nn.Sequential(nn.Conv2d(1, 4, 3)), nn.Sequential(nn.Linear(4, 2))
    before = snapshot(linear_only)
    with pytest.raises(ValueError, match="no compatible layers"):
        netgraft.inject_(conv_only, linear_only)
    empty = netgraft.inject_(conv_only, linear_only, strict=False)
    assert not empty.transfers and empty.left_at_init == ["0.weight", "0.bias"]
    text = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="mismatched modalities"):
        netgraft.inject_(text, nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="float64.*float32|float32.*float64"):
        netgraft.inject_(nn.Sequential(nn.Linear(4, 2)).double(), linear_only)
    with pytest.raises(TypeError):
        netgraft.inject_(conv_only, "model")  # type: ignore[arg-type]
    state, _ = before
    assert all(torch.equal(state[k], v) for k, v in linear_only.state_dict().items())


def test_low_similarity_warns() -> None:
    src = _cnn(8, 16)
    dst = nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(),
                        nn.Linear(300, 10))
    with pytest.warns(UserWarning, match="below 0.45"):
        report = netgraft.inject_(src, dst)
    assert report.similarity < netgraft.SIMILARITY_THRESHOLD
