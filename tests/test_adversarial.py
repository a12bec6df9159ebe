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
    assert wide.netgraft_certificate.passed
    assert_unchanged(m, before)
