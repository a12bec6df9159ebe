"""The extension points, used only through the public API: a custom layer netgraft cannot see through is refused,
then supported by a short rule; a `LayerKind` teaches the other operators about a layer type; every registration can
be undone, and undoing one that overrode a built-in brings the built-in back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_exact
from torch import nn

import netgraft
from netgraft.core import catalogue
from netgraft.core.layers import kind_of, kind_of_op
from netgraft.core.registry import has_op_rule


class EinsumScale(nn.Module):
    """A learned per-feature gain applied through a kernel netgraft has no rule for (as a custom op would be)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mul.Tensor(x, self.gain)


def model() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), EinsumScale(6), nn.ReLU(), nn.Linear(6, 2))
    return m, (torch.randn(5, 4),)


def test_custom_layer_is_refused_without_a_rule() -> None:
    m, x = model()
    with pytest.raises(netgraft.UnsupportedModelError) as err:
        netgraft.widen(m, {"0": 9}, example_inputs=x)
    assert "mul.Tensor" in str(err.value) and "register_layer" in str(err.value) and "module '1'" in str(err.value)


def test_registered_layer_rule_makes_it_exact() -> None:
    m, x = model()

    @netgraft.register_layer(EinsumScale)
    def _einsum_scale(ctx: netgraft.RuleContext) -> None:
        x_in, y = ctx.inputs[0], ctx.outputs[0]
        ctx.same_shape(x_in, y)
        ctx.per_unit(ctx.param("gain"), 0, x_in.dim(-1))

    try:
        wide = netgraft.widen(m, {"0": 9}, example_inputs=x, seed=0, noise=0.1)
        assert wide[1].gain.shape == (9,)
        assert_exact(m, wide, x)
    finally:
        assert netgraft.unregister_layer(EinsumScale) == 1
    test_custom_layer_is_refused_without_a_rule()  # gone: refused again


def test_registered_op_rule() -> None:
    m, x = model()

    @netgraft.register_op(torch.ops.aten.mul.Tensor)
    def _custom_mul(ctx: netgraft.RuleContext) -> None:
        x_in, gain = ctx.value(ctx.args[0]), ctx.value(ctx.args[1])
        ctx.same_shape(x_in, ctx.outputs[0])
        ctx.per_unit(gain, 0, x_in.dim(-1))

    try:
        wide = netgraft.widen(m, 2.0, example_inputs=x, seed=1)
        assert wide[1].gain.shape == (12,)
        assert_exact(m, wide, x)
    finally:
        assert netgraft.unregister_op(torch.ops.aten.mul.Tensor) == 1
    test_custom_layer_is_refused_without_a_rule()


def test_unregistering_an_override_restores_the_built_in_rule() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = (torch.randn(2, 3),)

    def growable() -> list[str]:
        return [g.name for g in netgraft.groups(m, x) if g.growable and g.name]

    assert growable() == ["0"]
    for key in ({"names": ["tanh"]}, {}):  # by name, then by function object (F.linear's built-in rule is keyed so)
        funcs = () if key else (F.linear,)
        netgraft.register_op(*funcs, **key)(lambda ctx: ctx.block_all("opaque for this test"))
        try:
            assert growable() == []
        finally:
            assert netgraft.unregister_op(*funcs, **key) == 1
        assert growable() == ["0"]
    assert netgraft.unregister_op(names=["no_such_op"]) == 0
    assert netgraft.unregister_layer(nn.Tanh) == 0


# -- layer kinds -----------------------------------------------------------------------------------------------------

BUILT_IN = [  # module, the kind's inject kind string (None: not an inject leaf), the ops it runs as
    (nn.Linear(3, 4), "linear", {"linear", "addmm"}),
    (nn.Conv2d(3, 4, 3), "conv2d", {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                                    "conv_transpose3d"}),
    (nn.ConvTranspose1d(3, 4, 3), "conv_transpose1d", None),
    (nn.BatchNorm2d(4), "batchnorm", {"batch_norm"}),
    (nn.InstanceNorm2d(4, affine=True), None, {"instance_norm"}),
    (nn.LayerNorm(4), "layernorm", {"layer_norm", "rms_norm"}),
    (nn.RMSNorm(4), "layernorm", {"layer_norm", "rms_norm"}),
    (nn.GroupNorm(2, 4), "groupnorm", {"group_norm"}),
    (nn.Embedding(10, 4), "embedding", {"embedding"}),
    (nn.MultiheadAttention(4, 2), "attention", {"multi_head_attention_forward"}),
]


@pytest.mark.parametrize(("module", "inject_kind", "ops"), BUILT_IN, ids=lambda v: type(v).__name__)
def test_every_built_in_layer_has_one_kind_that_its_ops_lead_back_to(module, inject_kind, ops) -> None:
    kind = kind_of(module)
    assert kind is not None
    leaf = kind.inject_leaf(module)
    assert (leaf[0] if leaf else None) == inject_kind
    if ops is not None:
        assert set(kind.ops) == ops
    for op in kind.ops:  # one home: the op leads back to this kind, and a coupling rule exists for it
        assert kind_of_op(op) is kind
        assert has_op_rule(name=op), op


def test_kinds_by_class_name_cover_classes_netgraft_does_not_import() -> None:
    class LlamaRMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(6))

    class Conv1D(nn.Module):  # GPT-2's layout: weight (in, out)
        def __init__(self) -> None:
            super().__init__()
            self.nf, self.weight = 5, nn.Parameter(torch.randn(3, 5))

    assert kind_of(LlamaRMSNorm()).inject_leaf(LlamaRMSNorm()) == ("layernorm", (6,))
    conv = Conv1D()
    assert kind_of(conv).inject_leaf(conv) == ("linear", (5, 3))
    assert kind_of(conv).canonical(conv, "weight", conv.weight).shape == (5, 3)
    assert kind_of(nn.Sequential()) is None


class ScaledLinear(nn.Module):
    """A custom layer: ``F.linear`` (covered by the built-in rule) times a gain, with an attribute of its own."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_out = n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.gain = nn.Parameter(torch.rand(n_out) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * self.gain


def test_a_custom_kind_is_asked_by_widen_inject_and_deepen() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(ScaledLinear(3, 6), nn.ReLU(), ScaledLinear(6, 2))
    x = (torch.randn(4, 3),)
    src = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    stale = netgraft.widen(m, {"0": 9}, example_inputs=x)  # without a kind n_out goes stale, unnoticed
    assert stale[0].weight.shape == (9, 3) and stale[0].n_out == 6
    assert not netgraft.inject_(src, m, strict=False).transfers  # and inject sees no layer in it

    @netgraft.register_kind(ScaledLinear)
    class ScaledLinearKind(netgraft.LayerKind):
        creates_features = fan_in_scaled = True

        def attribute_checks(self, module, shape_of):  # noqa: ANN001, ANN202
            return [("n_out", module.n_out, shape_of(module, "weight")[0])]

        def inject_leaf(self, module):  # noqa: ANN001, ANN202
            return "linear", tuple(module.weight.shape)

        def channel_dims(self, shape):  # noqa: ANN001, ANN202
            return (0, 1)

    try:
        with pytest.raises(netgraft.UnsupportedModelError, match=r"ScaledLinear '0'.n_out would stay 6"):
            netgraft.widen(m, {"0": 9}, example_inputs=x)
        report = netgraft.inject_(src, m)
        assert [t.target for t in report.transfers] == ["0.weight", "2.weight"]
        assert torch.equal(m[0].weight, src[0].weight)
        deep = netgraft.deepen(m, "1", example_inputs=x, seed=0)  # F.linear's op: LinearKind imitates it
        assert "identity Linear" in deep.netgraft_report.insertions[0].note
        assert_exact(m, deep, x)
    finally:
        assert netgraft.unregister_kind(ScaledLinear) == 1
    assert kind_of(m[0]) is None


def test_a_kind_registered_over_a_built_in_one_is_undone() -> None:
    linear_kind = kind_of(nn.Linear(2, 2))

    @netgraft.register_kind(nn.Linear)
    class Dense(netgraft.LayerKind):
        ops = ("linear",)

    try:
        assert isinstance(kind_of(nn.Linear(2, 2)), Dense) and isinstance(kind_of_op("linear"), Dense)
    finally:
        assert netgraft.unregister_kind(nn.Linear) == 1
    assert kind_of(nn.Linear(2, 2)) is linear_kind and kind_of_op("linear") is linear_kind
    assert netgraft.unregister_kind(nn.Identity) == 0


# -- the catalogue of op classes -------------------------------------------------------------------------------------


def test_the_catalogue_agrees_with_the_rules() -> None:
    """Every op the catalogue classes is traced under a rule, and every activation's behaviour at 0 is known."""
    for name in (catalogue.ACTIVATIONS | catalogue.VIEWS | catalogue.SPLITS | catalogue.DROPOUT | catalogue.NORMS
                 | catalogue.POOLS | catalogue.SUMS | catalogue.PRODUCTS | catalogue.CONCATS):
        assert has_op_rule(name=name), name
    for name in catalogue.ACTIVATIONS - {"leaky_relu", "hardtanh"}:
        assert name in catalogue.DEAD_AT_ZERO | catalogue.NONZERO_AT_ZERO | catalogue.LIVE_AT_ZERO, name
    assert catalogue.IDEMPOTENT <= catalogue.ACTIVATIONS and set(catalogue.ACTIVATION_MODULES) <= catalogue.ACTIVATIONS
    assert catalogue.SCALING_DROPOUT <= catalogue.DROPOUT and catalogue.ADAPTIVE_AVG_POOLS <= catalogue.AVG_POOLS
