"""Cases from an adversarial review: each was once a silently wrong model, a modified source or a passing
certificate that should not have passed."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_exact, assert_unchanged, snapshot
from torch import nn

import netgraft


class TopKChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.o = nn.Conv1d(2, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(x).topk(2, 1).values  # top-2 over channels, dim given by position


def test_topk_over_a_grown_axis_is_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(netgraft.UnsupportedModelError, match="topk"):
        netgraft.widen(TopKChannels(), {"o": 9}, example_inputs=(torch.randn(4, 2, 5),))


class PartialInplace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h[:, :2].mul_(0.0)  # zeroes units 0 and 1 of h, behind the back of any per-op trace
        return self.b(h)


def test_inplace_write_through_a_partial_view_is_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(netgraft.UnsupportedModelError, match="in-place 'mul_' on part of a tensor"):
        netgraft.widen(PartialInplace(), {"a": 16}, example_inputs=(torch.randn(6, 4),))


class StdScale(nn.Module):
    def __init__(self, unbiased: bool) -> None:
        super().__init__()
        self.unbiased = unbiased
        self.a = nn.Linear(4, 64)
        self.b = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor):
        h = self.a(x)
        logits = self.b(h) * h.std(1, keepdim=True, unbiased=self.unbiased)
        return logits.argmax(-1), logits


def test_unbiased_std_is_refused_and_biased_std_is_exact() -> None:
    torch.manual_seed(0)
    x = (torch.randn(8, 4, dtype=torch.float64),)
    with pytest.raises(netgraft.UnsupportedModelError, match="unbiased"):
        netgraft.widen(StdScale(True).double(), {"a": 128}, example_inputs=x)
    m = StdScale(False).double()
    wide = netgraft.widen(m, {"a": 128}, example_inputs=x)
    assert assert_exact(m, wide, x).max_abs <= 1e-10


def test_certificate_holds_each_output_to_its_own_dtype() -> None:
    torch.manual_seed(0)
    m = StdScale(False).double()
    other = copy.deepcopy(m)
    with torch.no_grad():
        other.b.bias += 1e-6  # far above float64's 1e-10, far below a half-precision bound
    cert = netgraft.check_preserved(m, other, (torch.randn(8, 4, dtype=torch.float64),))
    assert not cert.passed and cert.dtype == "float64"


def test_nan_is_never_preserved() -> None:
    a = nn.Linear(3, 2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight[0, 0] = float("nan")
    assert not netgraft.check_preserved(a, b, (torch.randn(4, 3),)).passed
    with pytest.raises(ValueError, match="noise"):
        netgraft.widen(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), 2.0,
                       example_inputs=(torch.randn(5, 4),), noise=float("nan"))


class Stateful(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        self.calls += 1
        self.ema.mul_(0.9).add_(0.1 * h.detach().mean(0))
        return self.b(h)


def test_stateful_source_and_result_are_left_as_they_were() -> None:
    torch.manual_seed(0)
    m = Stateful()
    before = snapshot(m)
    wide = netgraft.widen(m, {"a": 16}, example_inputs=(torch.randn(5, 4),))
    assert_unchanged(m, before)
    assert float(wide.calls) == 0.0 and float(wide.ema.abs().sum()) == 0.0


class DirectForward(nn.Module):
    """Children called through .forward (no hooks) and a child's weight used functionally by the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 6)
        self.c = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a.forward(x))
        h = torch.tanh(torch.nn.functional.linear(h, self.b.weight, self.b.bias))
        return self.c(h)


def test_attributes_follow_the_module_that_owns_the_weight() -> None:
    torch.manual_seed(0)
    m = DirectForward()
    x = (torch.randn(5, 4),)
    wide = netgraft.widen(m, {"a": 12, "b": 9}, example_inputs=x, seed=0)
    assert (wide.a.out_features, wide.b.in_features, wide.b.out_features, wide.c.in_features) == (12, 12, 9, 9)
    assert_exact(m, wide, x)


def test_spectral_norm_in_train_mode_is_not_disturbed() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 2))
    before = snapshot(m)
    with pytest.raises(netgraft.UnsupportedModelError, match="cannot widen '0'"):
        netgraft.widen(m, {"0": 12}, example_inputs=(torch.randn(5, 4),))
    wide = netgraft.widen(m, 1.0, example_inputs=(torch.randn(5, 4),))
    assert wide.netgraft_report.certificate.passed
    assert_unchanged(m, before)


def _lin(din: int, dout: int) -> nn.Linear:
    return nn.Linear(din, dout)


class SliceConcat(nn.Module):
    """Reads the first 5 units of a concatenation of 4 + 4: growing the first part moves the fifth."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _lin(3, 4), _lin(3, 4), _lin(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1)[:, :5])


class SlicePastEnd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = _lin(3, 8), _lin(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(x)[:, :100])  # means "all" today, would cut the axis after growth


class ChunkOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = _lin(3, 8), _lin(4, 2)

    def forward(self, x: torch.Tensor):
        p, q = self.a(x).chunk(2, 1)  # re-split evenly at run time
        return p, self.c(torch.clamp(q, min=self.a.bias[:4]))


class StackFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _lin(3, 5), _lin(3, 5), _lin(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.stack([self.a(x), self.b(x)], 1).flatten(1))


class BareMatmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(3, 6))
        self.V = nn.Parameter(torch.randn(6, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W) @ self.V


def test_prefix_of_a_growing_concatenation_is_refused() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 3),)
    with pytest.raises(netgraft.UnsupportedModelError, match="first 5 units"):
        netgraft.widen(SliceConcat(), {"a": 6}, example_inputs=x)
    m = SliceConcat()
    assert_exact(m, netgraft.widen(m, {"b": 6}, example_inputs=x), x)  # the second part may grow


def test_slice_past_the_end_is_refused() -> None:
    with pytest.raises(netgraft.UnsupportedModelError, match="slice"):
        netgraft.widen(SlicePastEnd(), {"a": 12}, example_inputs=(torch.randn(4, 3),))


def test_chunk_pieces_stay_equal_and_clamp_bounds_follow() -> None:
    torch.manual_seed(0)
    m = ChunkOut()
    with pytest.raises((ValueError, netgraft.UnsupportedModelError)):
        netgraft.widen(m, {"a": 12}, example_inputs=(torch.randn(4, 3),))  # p is a model output: it cannot grow


def test_stack_axis_and_bare_matmul_are_widened() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 3),)
    m = StackFlatten()
    wide = netgraft.widen(m, 2.0, example_inputs=x)
    assert wide.a.out_features == 10 and wide.c.in_features == 20
    assert_exact(m, wide, x)
    m2 = BareMatmul()
    wide2 = netgraft.widen(m2, {"W": 9}, example_inputs=x, noise=0.1, seed=0)
    assert wide2.W.shape == (3, 9) and wide2.V.shape == (9, 2)
    assert_exact(m2, wide2, x)


def test_a_failing_rule_is_reported_as_the_rule_failing() -> None:
    @netgraft.register_op(torch.nn.functional.softmax)
    def _broken(ctx: netgraft.RuleContext) -> None:
        raise IndexError("boom")

    try:
        m = nn.Sequential(nn.Linear(3, 4), nn.Softmax(-1))
        with pytest.raises(netgraft.UnsupportedModelError, match="rule for op 'softmax'.*boom"):
            netgraft.groups(m, (torch.randn(2, 3),))
    finally:
        assert netgraft.unregister_op(torch.nn.functional.softmax) == 1
    netgraft.groups(m, (torch.randn(2, 3),))  # the built-in rule for 'softmax' applies again


def test_numpy_sizes_and_parameter_tags() -> None:
    import numpy as np

    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    m[0].weight._no_weight_decay = True
    wide = netgraft.widen(m, {"0": np.int64(7)}, example_inputs=(torch.randn(2, 3),))
    assert wide[0].out_features == 7 and getattr(wide[0].weight, "_no_weight_decay", False)


class MHADiscardedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = _lin(5, 12)
        self.m = nn.MultiheadAttention(12, 3, batch_first=True)
        self.out = _lin(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.m(h, h, h)  # need_weights=True by default; the averaged weights are thrown away
        return self.out(a + h)


def test_discarded_attention_weights_do_not_force_uniform_heads() -> None:
    torch.manual_seed(0)
    m = MHADiscardedWeights()
    x = (torch.randn(2, 4, 5),)
    wide = netgraft.widen(m, {"inp": 16}, example_inputs=x, seed=0, noise=0.1)  # 3 -> 4 heads: not uniform
    assert wide.m.num_heads == 4 and wide.m.head_dim == 4
    assert_exact(m, wide, x)
    with pytest.raises(ValueError, match="Valid sizes"):
        netgraft.widen(m, {"inp": 14}, example_inputs=x)  # not a whole number of heads
