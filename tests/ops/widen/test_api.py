"""The contract of `widen`, `groups` and `check_preserved`: sizes, errors, preserved properties, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_exact, assert_unchanged, snapshot
from torch import nn
from zoo import ZOO, randomize_batchnorm_stats

import netgraft


def zoo(name: str):
    torch.manual_seed(0)
    m = ZOO[name].build()
    randomize_batchnorm_stats(m, seed=1)
    torch.manual_seed(1)
    return m.eval(), ZOO[name].inputs()


def mlp() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    return m, (torch.randn(16, 6),)


def test_dict_widths_set_exact_sizes_and_attributes() -> None:
    m, x = mlp()
    wide = netgraft.widen(m, {"0": 13, "2": 7}, example_inputs=x, seed=0)
    assert (wide[0].out_features, wide[2].in_features, wide[2].out_features, wide[4].in_features) == (13, 13, 7, 7)
    assert wide[0].weight.shape == (13, 6) and wide[4].weight.shape == (3, 7)
    assert_exact(m, wide, x)
    # Net2Net: originals keep their place, new units are copies of old ones
    assert torch.equal(wide[0].weight[:8], m[0].weight)
    assert all(any(torch.equal(r, o) for o in m[0].weight) for r in wide[0].weight[8:])


def test_report_and_certificate_are_attached() -> None:
    m, x = mlp()
    wide = netgraft.widen(m, 2.0, example_inputs=x)
    cert = wide.netgraft_report.certificate
    assert cert is wide.netgraft_report.certificate and cert.passed
    assert cert.max_abs <= cert.bound and cert.dtype == "float32" and cert.mode == "eval"
    assert sorted(wide.netgraft_report.changes) == [("0", 8, 16), ("2", 5, 10)]
    assert "preserved" in str(cert) and "0: 8 -> 16" in str(wide.netgraft_report)


def test_check_preserved_measures_a_real_difference() -> None:
    m, x = mlp()
    other = netgraft.widen(m, 1.0, example_inputs=x)
    with torch.no_grad():
        other[4].bias += 0.5
    cert = netgraft.check_preserved(m, other, x)
    assert cert.max_abs == pytest.approx(0.5, abs=1e-6)
    assert not cert.passed


def test_same_seed_is_deterministic_and_seeds_differ() -> None:
    m, x = mlp()
    a = netgraft.widen(m, 1.7, example_inputs=x, seed=4, noise=0.3)
    b = netgraft.widen(m, 1.7, example_inputs=x, seed=4, noise=0.3)
    c = netgraft.widen(m, 1.7, example_inputs=x, seed=5, noise=0.3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_preserves_dtype_mode_and_requires_grad() -> None:
    m, x = mlp()
    m = m.double().train()
    m[0].weight.requires_grad_(False)
    x = (x[0].double(),)
    wide = netgraft.widen(m, 1.5, example_inputs=x)
    assert wide.training and all(mod.training for mod in wide.modules())
    assert all(p.dtype == torch.float64 for p in wide.parameters())
    assert not wide[0].weight.requires_grad and wide[0].bias.requires_grad and wide[2].weight.requires_grad
    assert all(p.device == torch.device("cpu") for p in wide.parameters())
    assert m.training  # source mode untouched


def test_tied_embeddings_stay_tied() -> None:
    m, x = zoo("tied_lm")
    assert m.head.weight is m.emb.weight
    wide = netgraft.widen(m, 2.0, example_inputs=x, noise=0.1, seed=0)
    assert wide.head.weight is wide.emb.weight
    assert wide.emb.weight.shape == (60, 48)
    assert_exact(m, wide, x)
    assert len({id(p) for p in wide.parameters()}) == len(list(wide.parameters()))


def test_layernorm_dimension_pads_to_any_size_where_provable() -> None:
    m, x = zoo("mlp_gelu_ln")
    group = netgraft.groups(m, x)[0]
    assert "zero padding under LayerNorm" in "; ".join(group.constraints())
    wide = netgraft.widen(m, {group.name: group.display_size + 1}, example_inputs=x)  # zero padding, eps rescaled
    assert_exact(m, wide, x)
    wide = netgraft.widen(m, {group.name: 3 * group.display_size}, example_inputs=x)  # integer factors replicate
    assert_exact(m, wide, x)


def test_smaller_size_raises_value_error_with_valid_sizes() -> None:
    m, x = mlp()
    with pytest.raises(ValueError, match=r"'0'.*size 8.*requested 4.*Valid sizes: \[9, 10"):
        netgraft.widen(m, {"0": 4}, example_inputs=x)


def test_unknown_module_raises_key_error_with_close_matches() -> None:
    m, x = zoo("resnet18_style")
    with pytest.raises(KeyError) as err:
        netgraft.widen(m, {"layer1.0.conv": 32}, example_inputs=x)
    assert "close matches" in str(err.value) and "layer1.0.conv1" in str(err.value)


def test_norm_layer_name_is_explained() -> None:
    m, x = zoo("vgg_bn")
    bn = next(n for n, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d))
    with pytest.raises(KeyError, match="produces no dimension"):
        netgraft.widen(m, {bn: 64}, example_inputs=x)


def test_fixed_dimension_raises_value_error() -> None:
    m, x = mlp()
    with pytest.raises(ValueError, match="model output"):
        netgraft.widen(m, {"4": 6}, example_inputs=x)


def test_bad_arguments() -> None:
    m, x = mlp()
    with pytest.raises(TypeError):
        netgraft.widen(m, "wide", example_inputs=x)
    with pytest.raises(TypeError):
        netgraft.widen(m, {"0": 9.5}, example_inputs=x)
    with pytest.raises(ValueError, match=">= 1"):
        netgraft.widen(m, 0.5, example_inputs=x)
    with pytest.raises(TypeError):
        netgraft.widen("model", 2.0, example_inputs=x)
    with pytest.raises(ValueError, match="finite"):
        netgraft.widen(m, float("inf"), example_inputs=x)
    with pytest.raises(ValueError, match="failed on example_inputs"):
        netgraft.widen(m, 2.0, example_inputs=(torch.randn(2, 99),))


def test_groups_table_shows_constraints() -> None:
    m, x = zoo("grouped_conv")
    table = netgraft.groups(m, x)
    text = str(table)
    assert "name (key for widths)" in text and "groups=4" in text
    grow = [g for g in table if g.growable and g.name]
    assert grow and all(g.members for g in grow)
    g = grow[0]
    assert table[g.name] is g
    assert all(s % g.unit == 0 for s in g.valid_sizes())


def test_groupnorm_grows_by_whole_groups() -> None:
    m, x = zoo("groupnorm_cnn")
    wide = netgraft.widen(m, 1.5, example_inputs=x, seed=0)
    for old, new in zip(m.modules(), wide.modules(), strict=True):
        if isinstance(old, nn.GroupNorm):
            assert new.num_channels // new.num_groups == old.num_channels // old.num_groups
            assert new.num_channels > old.num_channels
    assert_exact(m, wide, x, train=True)


def test_multihead_attention_adds_heads_and_keeps_head_dim() -> None:
    m, x = zoo("transformer_postnorm")
    wide = netgraft.widen(m, 2.0, example_inputs=x, seed=0, noise=0.1)
    pairs = [(a, b) for a, b in zip(m.modules(), wide.modules(), strict=True) if isinstance(a, nn.MultiheadAttention)]
    assert pairs
    for a, b in pairs:
        assert b.head_dim == a.head_dim and b.num_heads == 2 * a.num_heads and b.embed_dim == 2 * a.embed_dim
    assert_exact(m, wide, x)


def test_residual_stream_shares_one_mapping() -> None:
    m, x = zoo("resnet18_style")
    table = netgraft.groups(m, x)
    stream = table["conv1"]
    assert set(stream.aliases) == {"layer1.0.conv2", "layer1.1.conv2"}  # every writer of the residual stream
    assert set(table["layer2.0.conv2"].aliases) == {"layer2.0.downsample.0", "layer2.1.conv2"}


def test_noise_gives_every_new_parameter_a_gradient_and_wide_model_trains() -> None:
    m, x = zoo("resnet18_style")
    wide = netgraft.widen(m, 2.0, example_inputs=x, seed=0, noise=0.2).train()
    target = torch.randint(0, wide(x[0]).shape[-1], (x[0].shape[0],))
    old = dict(m.named_parameters())
    loss = F.cross_entropy(wide(*x), target)
    loss.backward()
    checked = 0
    for name, p in wide.named_parameters():
        if p.shape == old[name].shape:
            continue
        new_part = p.grad
        for axis, (n_new, n_old) in enumerate(zip(p.shape, old[name].shape, strict=True)):
            if n_new != n_old:
                new_part = new_part.narrow(axis, n_old, n_new - n_old)
        assert new_part.abs().sum() > 0, f"new part of {name} got no gradient"
        checked += 1
    assert checked >= 10
    opt = torch.optim.SGD(wide.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(wide(*x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_source_untouched_even_in_train_mode_with_batchnorm() -> None:
    m, x = zoo("vgg_bn")
    m.train()
    before = snapshot(m)
    netgraft.widen(m, 1.5, example_inputs=x)
    netgraft.check_preserved(m, m, x, train=True)
    assert_unchanged(m, before)


def test_hand_written_head_count_follows_the_heads() -> None:
    """`view(B, T, self.n_head, C // self.n_head)`: the trace sees the attribute used as a size, so heads are added
    (head_dim kept) and `n_head` is updated (tests/test_handwritten_attention.py has the GPT-style models)."""
    m, x = zoo("custom_attention")
    wide = netgraft.widen(m, 2.0, example_inputs=x, seed=0)
    assert (m.block.attn.n_head, wide.block.attn.n_head) == (4, 8)
    assert_exact(m, wide, x)


def test_heads_can_be_named_and_the_stream_follows() -> None:
    m, x = zoo("mha_plain")
    table = netgraft.groups(m, x)
    heads = [g for g in table if g.name.endswith(":heads")]
    assert heads and heads[0].dependent and heads[0].display_size == 3
    name = heads[0].name
    mha = name.split(":")[0]
    wide = netgraft.widen(m, {name: 6}, example_inputs=x, seed=0)
    assert wide.get_submodule(mha).num_heads == 6 and wide.get_submodule(mha).embed_dim == 48
    assert_exact(m, wide, x)


class _TiedDirect(nn.Module):
    """Embedding fed straight into its tied output layer: no per-unit layer in between to absorb the split."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


class _TiedBatchNorm(nn.Module):
    """Tied embedding with a BatchNorm1d feeding the output layer (its running stats must not be scaled)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.emb(ids).mean(1)))


def test_tied_weights_without_an_absorbing_layer_are_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(netgraft.UnsupportedModelError, match="tied"):
        netgraft.widen(_TiedDirect(), 2.0, example_inputs=(torch.randint(0, 20, (3, 4)),))


def test_tied_weights_through_batchnorm_keep_statistics_exact() -> None:
    torch.manual_seed(0)
    m = _TiedBatchNorm()
    randomize_batchnorm_stats(m, seed=2)
    x = (torch.randint(0, 20, (5, 4)),)
    wide = netgraft.widen(m.eval(), 2.0, example_inputs=x, seed=0, noise=0.1)
    assert wide.head.weight is wide.emb.weight
    assert_exact(m, wide, x)
    assert_exact(m, wide, x, train=True)


def _min_row_distance(w: torch.Tensor) -> float:
    d = torch.cdist(w, w) + torch.eye(w.shape[0], dtype=w.dtype) * 1e9
    return float(d.min())


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_split_noise_breaks_the_symmetry_of_copies_under_adam(opt_cls) -> None:
    """Copies whose shares differ by one factor per unit move together under Adam (it normalises the factor away):
    without noise they stay identical; element-wise unequal shares (exact) make them diverge."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x, y = torch.randn(64, 4, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    distances = {}
    for noise in (0.0, 0.5):
        wide = netgraft.widen(m, {"0": 12, "2": 12}, example_inputs=(x,), seed=0, noise=noise)
        assert wide.netgraft_report.certificate.max_abs < 1e-12  # still exact (float64)
        opt = opt_cls(wide.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            F.mse_loss(wide(x), y).backward()
            opt.step()
        distances[noise] = _min_row_distance(wide[0].weight.detach())
    assert distances[0.0] < 1e-12  # some rows are still exact copies of each other
    assert distances[0.5] > 1e-3


def test_split_noise_is_element_wise_and_sums_to_the_original() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5)).double()
    x = (torch.randn(8, 3, dtype=torch.float64),)
    wide = netgraft.widen(m, {"0": 8}, example_inputs=x, seed=1, noise=0.7)
    w, w_old = wide[2].weight.detach(), m[2].weight.detach()
    src = [int(torch.argmin((wide[0].weight[j] - m[0].weight).abs().sum(1))) for j in range(8)]  # copy -> original
    sums = torch.zeros_like(w_old).index_add_(1, torch.tensor(src), w)
    assert torch.allclose(sums, w_old, atol=1e-14)  # the copies' shares add up to each original weight
    ratios = w[:, 4:] / w_old[:, src[4:]]
    assert float(ratios.std(0).min()) > 1e-3  # not one fraction per copy: each element its own share


def test_split_noise_needs_full_precision_and_says_so() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5)).to(torch.bfloat16)
    x = (torch.randn(8, 3, dtype=torch.bfloat16),)
    with pytest.raises(ValueError, match="float32 or float64"):
        netgraft.widen(m, {"0": 8}, example_inputs=x, seed=1, noise=0.5)
    assert netgraft.widen(m, {"0": 8}, example_inputs=x, seed=1).netgraft_report.certificate.passed
