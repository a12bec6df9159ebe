"""deepen: identity layers, residual inserts and blocks are exact, live, placed where expected, and fail closed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_exact, assert_unchanged, n_params, snapshot, to_double
from torch import nn
from zoo import ZOO, GPTBlock, randomize_batchnorm_stats

import netgraft


def _zoo(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    e = ZOO[name]
    m = e.build().to(dtype)
    randomize_batchnorm_stats(m)
    inputs = e.inputs()
    return m, (to_double(inputs) if dtype == torch.float64 else inputs)


def _anchors(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


# -- exactness on the whole zoo -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_anchor_of_every_zoo_model_is_exact_or_refused(name: str) -> None:
    """Each module path is tried: deepen either returns an exact model (float64 bound) or refuses with a named
    reason - never another exception, never a silently different model."""
    model, inputs = _zoo(name)
    before = snapshot(model)
    done = 0
    for path in _anchors(model):
        try:
            deep = netgraft.deepen(model, path, example_inputs=inputs, seed=0)
        except (netgraft.UnsupportedModelError, ValueError) as err:
            assert "deepen" in str(err)
            continue
        done += 1
        assert_exact(model, deep, inputs)
        assert deep.netgraft_report.certificate.max_abs <= 1e-10
        assert n_params(deep) > n_params(model)
    assert_unchanged(model, before)
    assert done >= 2, f"{name}: only {done} anchors could be deepened"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_float32_with_the_library_bound(name: str) -> None:
    model, inputs = _zoo(name, torch.float32)
    paths = _anchors(model)
    deepened = 0
    for path in paths[:: max(1, len(paths) // 4)]:
        try:
            deep = netgraft.deepen(model, path, example_inputs=inputs, seed=1)
        except (netgraft.UnsupportedModelError, ValueError):
            continue
        deepened += 1
        assert deep.netgraft_report.certificate.passed
        assert_exact(model, deep, inputs)
    assert deepened >= 1


# -- the forms -----------------------------------------------------------------------------------------------------


def test_identity_layer_in_a_sequential_is_renumbered_and_exact() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = (torch.randn(5, 3),)
    deep = netgraft.deepen(m, "0", example_inputs=x, seed=0)
    assert [type(c).__name__ for c in deep] == ["Linear", "ReLU", "Sequential", "Linear"]
    assert list(deep._modules) == ["0", "1", "2", "3"]
    assert torch.equal(deep[2][0].weight, torch.eye(8)) and torch.equal(deep[2][0].bias, torch.zeros(8))
    assert isinstance(deep[2][1], nn.ReLU)
    assert deep.netgraft_report.insertions[0].path == "2"
    assert deep.netgraft_report.certificate.max_abs == 0.0


def test_conv_bn_relu_identity_uses_a_centred_dirac_kernel_and_bn() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1)).double()
    randomize_batchnorm_stats(m)
    x = (torch.randn(2, 3, 9, 9, dtype=torch.float64),)
    deep = netgraft.deepen(m, "0", example_inputs=x, kind="identity")
    conv, bn, act = deep[3]
    assert (conv.kernel_size, conv.padding, conv.stride) == ((5, 5), (2, 2), (1, 1))
    assert conv.weight[:, :, 2, 2].equal(torch.eye(6, dtype=torch.float64))  # centre is k // 2, not off by one
    assert conv.weight.abs().sum() == 6
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
    assert_exact(m, deep, x)


@pytest.mark.parametrize("groups,mult", [(4, 1), (8, 1), (8, 2)])
def test_grouped_and_depthwise_identity_is_per_group(groups: int, mult: int) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 8 * mult, 3, padding=1, groups=groups), nn.ReLU(), nn.Conv2d(8 * mult, 3, 1))
    x = (torch.randn(2, 8, 6, 6),)
    deep = netgraft.deepen(m.double(), "0", example_inputs=to_double(x), kind="identity")
    conv = deep[2][0]
    assert conv.groups == groups and conv.in_channels == conv.out_channels == 8 * mult
    assert_exact(m, deep, to_double(x))


def test_functional_activation_puts_phi_first_and_wraps_the_anchor() -> None:
    model, inputs = _zoo("mlp")  # x = F.relu(self.fc1(x)): no ReLU module to insert after
    deep = netgraft.deepen(model, "fc1", example_inputs=inputs, kind="identity")
    assert isinstance(deep.fc1, netgraft.Deepened)
    assert [type(c).__name__ for c in deep.fc1.inserted] == ["ReLU", "Linear"]
    assert deep.fc1.out_features == 32  # the wrapper forwards attribute reads to the original layer
    assert "fc1.original.weight" in deep.state_dict()
    assert_exact(model, deep, inputs)


def test_hardtanh_and_relu6_reuse_the_same_bounds() -> None:
    torch.manual_seed(0)
    for act in (nn.Hardtanh(-2.0, 3.0), nn.ReLU6()):
        m = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2)).double()
        x = (torch.randn(9, 4, dtype=torch.float64) * 4,)
        deep = netgraft.deepen(m, "1", example_inputs=x, kind="identity")
        new_act = deep[2][1]
        assert type(new_act) is type(act) and (new_act.min_val, new_act.max_val) == (act.min_val, act.max_val)
        assert_exact(m, deep, x)


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.Tanh(), nn.Sigmoid(), nn.LeakyReLU(0.1)])
def test_non_idempotent_activation_gets_a_residual_insert(act: nn.Module) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2)).double()
    x = (torch.randn(7, 4, dtype=torch.float64),)
    with pytest.raises(netgraft.UnsupportedModelError, match="not idempotent.*kind='residual'"):
        netgraft.deepen(m, "0", example_inputs=x, kind="identity")
    deep = netgraft.deepen(m, "0", example_inputs=x)
    ins = deep.netgraft_report.insertions[0]
    assert ins.kind == "residual" and isinstance(deep[1], netgraft.ResidualInsert)
    assert type(deep[1].branch[1]) is type(act)  # the branch reuses the neighbourhood's activation
    assert torch.count_nonzero(deep[1].branch[-1].weight) == 0
    assert_exact(m, deep, x)


@pytest.mark.parametrize("conv,reason", [(nn.Conv2d(3, 4, 4), "even kernel"),
                                         (nn.Conv2d(3, 4, 3, stride=2, padding=1), "stride")])
def test_no_identity_form_raises_with_reason_and_auto_falls_back(conv: nn.Conv2d, reason: str) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = (torch.randn(2, 3, 8, 8),)
    m(*x)
    with pytest.raises(netgraft.UnsupportedModelError, match=f"{reason}.*kind='residual'"):
        netgraft.deepen(m, "0", example_inputs=x, kind="identity")
    deep = netgraft.deepen(m, "0", example_inputs=x)
    assert deep.netgraft_report.insertions[0].kind == "residual"
    assert_exact(m, deep, x)


# -- BatchNorm and data ---------------------------------------------------------------------------------------------


def _conv_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def test_bn_calibrated_on_data_is_an_identity_in_train_mode_on_that_batch() -> None:
    m = _conv_bn_net()
    randomize_batchnorm_stats(m)
    x = (torch.randn(16, 3, 8, 8, dtype=torch.float64),)
    plain = netgraft.deepen(m, "0", example_inputs=x, kind="identity")
    calibrated = netgraft.deepen(m, "0", example_inputs=x, data=[x[0]], kind="identity")
    bn = calibrated[3][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert_exact(m, plain, x)
    assert_exact(m, calibrated, x)
    # train mode: the calibrated BN normalises the batch by its own statistics and undoes it exactly
    assert netgraft.check_preserved(m, calibrated, x, train=True).max_abs < 1e-8
    assert netgraft.check_preserved(m, plain, x, train=True).max_abs > 1e-3  # without data: eval-mode identity only


def test_data_may_be_labelled_pairs_and_must_not_be_empty() -> None:
    m = _conv_bn_net()
    x = (torch.randn(4, 3, 8, 8, dtype=torch.float64),)
    loader = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    deep = netgraft.deepen(m, "0", example_inputs=x, data=loader)
    assert_exact(m, deep, x)
    with pytest.raises(ValueError, match="no batches"):
        netgraft.deepen(m, "0", example_inputs=x, data=[])


# -- blocks --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,anchor,zeroed", [("resnet18_style", "layer1.0", {"bn2.weight", "bn2.bias"}),
                                                 ("resnet50_style", "layer1.1", {"bn3.weight", "bn3.bias"})])
def test_resnet_block_insert_zeroes_the_last_bn(name: str, anchor: str, zeroed: set[str]) -> None:
    model, inputs = _zoo(name)
    deep = netgraft.deepen(model, anchor, example_inputs=inputs)
    stage = deep.get_submodule(anchor.rpartition(".")[0])
    assert len(stage) == 3 and list(stage._modules) == ["0", "1", "2"]
    new = stage[int(anchor[-1]) + 1]
    assert type(new) is type(model.get_submodule(anchor))
    for name_, p in new.named_parameters():
        if name_ in zeroed:
            assert torch.count_nonzero(p) == 0, name_
        elif "conv" in name_:
            assert torch.count_nonzero(p) == p.numel(), name_  # freshly initialised, not zero
    assert deep.netgraft_report.insertions[0].kind == "block"
    assert_exact(model, deep, inputs)


def test_block_that_changes_shape_uses_a_sibling_as_template() -> None:
    model, inputs = _zoo("resnet18_style")
    deep = netgraft.deepen(model, "layer2.0", example_inputs=inputs)
    new = deep.layer2[1]
    assert new.downsample is None and new.conv1.in_channels == 16
    assert_exact(model, deep, inputs)


def test_prenorm_transformer_layer_zeroes_output_projections_and_grows_the_list() -> None:
    model, inputs = _zoo("transformer_prenorm")
    deep = netgraft.deepen(model, "encoder.layers.1", example_inputs=inputs, kind="copy")
    layers = deep.encoder.layers
    assert len(layers) == 3 and deep.encoder.num_layers == 3
    new, old = layers[2], model.encoder.layers[1]
    for n in ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear2.weight", "linear2.bias"):
        assert torch.count_nonzero(new.get_parameter(n)) == 0
    assert torch.equal(new.linear1.weight, old.linear1.weight)  # copy keeps the trained weights
    assert_exact(model, deep, inputs)


def test_custom_prenorm_gpt_block() -> None:
    model, inputs = _zoo("custom_attention")
    deep = netgraft.deepen(model, "block", example_inputs=inputs)
    ins = deep.netgraft_report.insertions[0]
    assert not ins.gated and "attn.proj.weight" in ins.note and "fc_out.weight" in ins.note
    assert isinstance(deep.block, netgraft.Deepened) and isinstance(deep.block.inserted, GPTBlock)
    assert_exact(model, deep, inputs)


def test_postnorm_layer_goes_behind_a_gate_that_ramps_and_folds() -> None:
    model, inputs = _zoo("transformer_postnorm")
    before = snapshot(model)
    deep = netgraft.deepen(model, "layers.0", example_inputs=inputs)
    gated = deep.layers[1]
    assert isinstance(gated, netgraft.GatedBlock) and float(gated.gate) == 0.0
    assert deep.netgraft_report.insertions[0].gated
    assert_exact(model, deep, inputs)
    with pytest.raises(ValueError, match="layers.1"):
        netgraft.fold_gates(deep)
    assert netgraft.set_gates_(deep, 0.5) == 1
    half = netgraft.check_preserved(model, deep, inputs).max_abs
    assert half > 1e-3  # the new block now contributes
    netgraft.set_gates_(deep, 1.0)
    folded = netgraft.fold_gates(deep)
    assert type(folded.layers[1]) is nn.TransformerEncoderLayer
    assert not any(isinstance(m, netgraft.GatedBlock) for m in folded.modules())
    assert netgraft.check_preserved(deep, folded, inputs).max_abs == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        netgraft.set_gates_(deep, 1.5)
    assert_unchanged(model, before)


def test_copy_keeps_trained_weights_and_block_reinitialises() -> None:
    model, inputs = _zoo("resnet18_style")
    copied = netgraft.deepen(model, "layer1.1", example_inputs=inputs, kind="copy").layer1[2]
    fresh = netgraft.deepen(model, "layer1.1", example_inputs=inputs, kind="block", seed=0).layer1[2]
    src = model.layer1[1]
    assert torch.equal(copied.conv1.weight, src.conv1.weight)
    assert not torch.equal(fresh.conv1.weight, src.conv1.weight)


# -- liveness and training -----------------------------------------------------------------------------------------


def _new_params(deep: nn.Module) -> dict[str, nn.Parameter]:
    out = {}
    for ins in deep.netgraft_report.insertions:
        module = deep.get_submodule(ins.path)
        out.update({f"{ins.path}.{n}": p for n, p in module.named_parameters()})
    return out


@pytest.mark.parametrize("name,anchor,kind", [
    ("mlp", "fc1", "identity"), ("mlp_gelu_ln", "act", "residual"), ("vgg_bn", "features.0", "identity"),
    ("resnet18_style", "layer1.0", "block"), ("resnet50_style", "layer2.1", "block"),
    ("transformer_prenorm", "encoder.layers.0", "block"), ("custom_attention", "block", "copy"),
    ("rmsnorm_swiglu", "norm", "residual"), ("groupnorm_cnn", "act1", "residual"),
    ("transformer_postnorm", "layers.1", "block"), ("grouped_conv", "depthwise", "identity"),
])
def test_every_new_parameter_gets_gradient_within_two_steps(name: str, anchor: str, kind: str) -> None:
    model, inputs = _zoo(name, torch.float32)
    deep = netgraft.deepen(model, anchor, example_inputs=inputs, kind=kind, seed=0)
    netgraft.set_gates_(deep, 0.1)  # gated blocks learn once their gate opens
    new = _new_params(deep)
    assert new
    deep.train()
    opt = torch.optim.SGD(deep.parameters(), lr=0.05)
    touched = {n: False for n in new}
    for _ in range(2):
        opt.zero_grad()
        out = deep(*inputs)
        loss = (out - torch.randn_like(out)).pow(2).mean()
        loss.backward()
        for n, p in new.items():
            touched[n] |= p.grad is not None and bool(torch.count_nonzero(p.grad) > 0)
        opt.step()
    dead = [n for n, ok in touched.items() if not ok]
    assert not dead, f"no gradient in two steps: {dead}"


def test_a_deepened_model_trains_on_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:512], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:512])
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    deep = netgraft.deepen(m, ["0", "1"], example_inputs=(x[:64],), kind="auto", seed=0)
    assert_exact(m, deep, (x[:64],))
    start = nn.functional.cross_entropy(deep(x), y).item()
    opt = torch.optim.Adam(deep.parameters(), lr=1e-3)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(deep(x), y).backward()
        opt.step()
    end = nn.functional.cross_entropy(deep(x), y).item()
    assert end < 0.8 * start, (start, end)


# -- composition with widen --------------------------------------------------------------------------------------


def test_deepen_then_widen_the_inserted_layer() -> None:
    model, inputs = _zoo("vgg_bn")
    deep = netgraft.deepen(model, "features.1", example_inputs=inputs, kind="identity")
    path = deep.netgraft_report.insertions[0].path
    wide = netgraft.widen(deep, {f"{path}.0": 24}, example_inputs=inputs, seed=0)
    assert wide.get_submodule(f"{path}.0").out_channels == 24
    assert_exact(model, wide, inputs)


def test_widen_then_deepen_and_residual_inserts_widen() -> None:
    model, inputs = _zoo("transformer_prenorm")
    wide = netgraft.widen(model, 1.5, example_inputs=inputs, seed=0)
    deep = netgraft.deepen(wide, ["proj", "encoder.layers.0"], example_inputs=inputs)
    wider = netgraft.widen(deep, 2.0, example_inputs=inputs, seed=1)
    assert n_params(wider) > n_params(deep) > n_params(wide)
    assert_exact(model, wider, inputs)


# -- failing closed and arguments ---------------------------------------------------------------------------------


def test_bad_arguments_are_named() -> None:
    model, inputs = _zoo("mlp")
    with pytest.raises(ValueError, match="no module 'fc9'.*'fc1'"):
        netgraft.deepen(model, "fc9", example_inputs=inputs)
    with pytest.raises(ValueError, match="kind must be one of"):
        netgraft.deepen(model, "fc1", example_inputs=inputs, kind="wide")
    with pytest.raises(TypeError, match="module path"):
        netgraft.deepen(model, [], example_inputs=inputs)
    with pytest.raises(ValueError, match="twice"):
        netgraft.deepen(model, ["fc1", "fc1"], example_inputs=inputs)
    with pytest.raises(ValueError, match="noise"):
        netgraft.deepen(model, "fc1", example_inputs=inputs, noise=-1.0)


def test_shared_modules_tuple_outputs_and_unused_modules_are_refused() -> None:
    model, inputs = _zoo("resnet18_style")
    with pytest.raises(netgraft.UnsupportedModelError, match="'layer1.0.relu'.*called 2 times"):
        netgraft.deepen(model, "layer1.0.relu", example_inputs=inputs)
    model, inputs = _zoo("mha_plain")
    with pytest.raises(netgraft.UnsupportedModelError, match="'attn'.*does not return one tensor"):
        netgraft.deepen(model, "attn", example_inputs=inputs)
    model, inputs = _zoo("densenet")
    with pytest.raises(ValueError, match="'layers' did not run"):
        netgraft.deepen(model, "layers", example_inputs=inputs)


class _IndexedList(nn.Module):
    """Runs its ModuleList by index: inserting into the list would leave the new module unused."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(2):
            x = self.layers[i](x)
        return x


def test_module_list_run_by_index_gets_a_wrapper_not_a_dead_entry() -> None:
    torch.manual_seed(0)
    m = _IndexedList()
    x = (torch.randn(3, 6),)
    deep = netgraft.deepen(m, "layers.0", example_inputs=x, kind="residual")
    assert len(deep.layers) == 2 and isinstance(deep.layers[0], netgraft.Deepened)
    assert_exact(m, deep, x)


def test_noise_is_approximate_by_request_and_seed_is_deterministic() -> None:
    model, inputs = _zoo("mlp")
    a = netgraft.deepen(model, "fc2", example_inputs=inputs, seed=3, kind="residual")
    b = netgraft.deepen(model, "fc2", example_inputs=inputs, seed=3, kind="residual")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    noisy = netgraft.deepen(model, "fc2", example_inputs=inputs, seed=3, kind="residual", noise=0.1)
    assert not noisy.netgraft_report.exact and "approximate" in str(noisy.netgraft_report)
    assert noisy.netgraft_report.certificate.max_abs > 0


def test_inserted_modules_follow_the_model_mode_dtype_and_device() -> None:
    model, inputs = _zoo("vgg_bn")
    model.eval()
    deep = netgraft.deepen(model, ["features.0", "classifier.3"], example_inputs=inputs)
    for ins in deep.netgraft_report.insertions:
        new = deep.get_submodule(ins.path)
        assert not any(m.training for m in new.modules())
        assert all(p.dtype == torch.float64 for p in new.parameters())
    model.train()
    deep = netgraft.deepen(model, "features.0", example_inputs=inputs)
    assert all(m.training for m in deep.modules())


def test_report_text_names_the_insertions() -> None:
    model, inputs = _zoo("resnet18_style")
    deep = netgraft.deepen(model, ["conv1", "layer1.1"], example_inputs=inputs)
    text = str(deep.netgraft_report)
    assert "inserted 2 module(s)" in text and "after 'conv1'" in text and "after 'layer1.1'" in text
    assert "preserved" in text


# -- regressions from review: layouts, proofs, fast paths ----------------------------------------------------------


class _PatchEmbedViT(nn.Module):
    """Conv patch embedding -> (N, L, C) tokens -> pre-norm encoder layer -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.layer(tokens).mean(1))


class _Tokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


def test_inserts_use_the_values_own_feature_axis_not_the_nearest_layers() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 4, 4), _Tokens(), nn.LayerNorm(16), nn.Linear(16, 3)).eval()
    x = (torch.randn(2, 3, 16, 16),)
    deep = netgraft.deepen(m, "1", example_inputs=x)
    branch = deep[2].branch
    assert isinstance(branch[1], nn.Linear) and branch[1].in_features == 16  # features, not the 16 tokens
    assert_exact(m, deep, (torch.randn(3, 3, 24, 24),))  # other token counts still run, still exact
    vit = _PatchEmbedViT().eval()
    with pytest.raises(netgraft.UnsupportedModelError, match="fast path.*'layer'"):
        netgraft.deepen(vit, "layer.linear1", example_inputs=x)


@pytest.mark.parametrize("tail", [nn.AvgPool2d(2, divisor_override=1), nn.Dropout(0.5)])
def test_identity_needs_values_that_stay_in_the_activations_image(tail: nn.Module) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), tail, nn.Conv2d(4, 2, 3, padding=1))
    x = (torch.randn(2, 3, 8, 8),)
    with pytest.raises(netgraft.UnsupportedModelError, match="no exact identity"):
        netgraft.deepen(m, "2", example_inputs=x, kind="identity")
    assert netgraft.deepen(m, "2", example_inputs=x).netgraft_report.insertions[0].kind == "residual"


class _Odd(nn.Module):
    """Residual-looking forms the zeroing proof must refuse."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.form == "alpha":
            return torch.add(h, x, alpha=2.0)
        if self.form == "scalar":
            return x + (h + 1.0)
        if self.form == "divide":
            return x + h / h.norm(dim=-1, keepdim=True)
        return x + F.relu(h)  # relu(0) = 0, but no gradient would ever reach fc


@pytest.mark.parametrize("form", ["alpha", "scalar", "divide", "relu"])
def test_zeroing_proof_refuses_unsound_or_dead_forms(form: str) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 6), _Odd(form), nn.Linear(6, 2)).double()
    x = (torch.randn(4, 6, dtype=torch.float64),)
    deep = netgraft.deepen(m, "1", example_inputs=x, kind="copy")
    assert deep.netgraft_report.insertions[0].gated  # no zeroing proof: exact only behind the gate
    assert_exact(m, deep, x)


def test_anchor_output_that_is_also_a_model_output() -> None:
    class TwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.fc1(x)
            return self.fc2(F.relu(h)), h

    torch.manual_seed(0)
    m, x = TwoOut().double(), (torch.randn(3, 4, dtype=torch.float64),)
    deep = netgraft.deepen(m, "fc1", example_inputs=x)
    assert deep.netgraft_report.insertions[0].kind == "residual"  # [ReLU, Linear] would change the returned h
    assert_exact(m, deep, x)


class _ByPosition(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(5, 5) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs[1] + outs[-1]


def test_containers_read_by_position_get_a_wrapper() -> None:
    torch.manual_seed(0)
    m, x = _ByPosition().double(), (torch.randn(3, 5, dtype=torch.float64),)
    deep = netgraft.deepen(m, "layers.0", example_inputs=x, kind="residual")
    assert len(deep.layers) == 3 and isinstance(deep.layers[0], netgraft.Deepened)
    assert_exact(m, deep, x)


def test_gated_block_whose_first_op_is_inplace() -> None:
    class Post(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act, self.fc, self.ln = nn.ReLU(inplace=True), nn.Linear(6, 6), nn.LayerNorm(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln(x + self.fc(self.act(x)))

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), Post(), nn.Linear(6, 2)).double()
    x = (torch.randn(3, 4, dtype=torch.float64),)
    deep = netgraft.deepen(m, "1", example_inputs=x, kind="copy")
    assert deep.netgraft_report.insertions[0].gated
    assert_exact(m, deep, x)


def test_padding_masks_and_fast_paths_certify_against_a_plain_run() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2).eval()
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 5:] = True
    ex = {"src": torch.randn(3, 7, 16), "src_key_padding_mask": mask}
    assert netgraft.deepen(enc, "layers.0", example_inputs=ex).netgraft_report.certificate.passed
    assert netgraft.widen(enc, 2.0, example_inputs=ex).netgraft_report.certificate.passed
    deep = netgraft.deepen(enc, "layers.0", example_inputs=ex, kind="residual")  # kwargs: wrapped, not listed
    assert isinstance(deep.layers[0], netgraft.Deepened)


def test_auto_prefers_a_live_identity_for_non_residual_blocks() -> None:
    class ConvNormAct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=None), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ConvNormAct(), nn.Conv2d(4, 2, 1))
    x = (torch.randn(2, 3, 6, 6),)
    deep = netgraft.deepen(m, "1", example_inputs=x)
    ins = deep.netgraft_report.insertions[0]
    # an identity layer here would need a BatchNorm (exact in eval mode only): auto takes the residual insert,
    # exact in both modes, never a closed gate
    assert ins.kind == "residual" and not ins.gated and deep.netgraft_report.modes == ("eval", "train")
    identity = netgraft.deepen(m, "1", example_inputs=x, kind="identity")
    assert identity.netgraft_report.modes == ("eval",) and "eval mode only" in str(identity.netgraft_report)
    assert identity[2][1].momentum is None  # the inserted BN keeps the neighbour's cumulative-average setting


def test_data_and_noise_arguments_are_checked() -> None:
    m = _conv_bn_net()
    x = (torch.randn(4, 3, 8, 8, dtype=torch.float64),)
    with pytest.raises(TypeError, match="iterable of input batches"):
        netgraft.deepen(m, "0", example_inputs=x, data=x[0])
    with pytest.raises(ValueError, match="failed on `data` batch 0"):
        netgraft.deepen(m, "0", example_inputs=x, data=[torch.randn(4, 5, 8, 8, dtype=torch.float64)])
    with pytest.raises(ValueError, match="noise"):
        netgraft.deepen(m, "0", example_inputs=x, noise=True)
