"""Exactness beyond the example inputs: other batch sizes, other values, other spatial sizes, train and eval.

The certificate inside `widen` only sees `example_inputs`; these models (ConvNeXt-style channels-last LayerNorm,
in-place ops, duplicated concat, weight sharing, masks, unflatten, pixel shuffle, mean gating) check that what was
certified holds for inputs the trace never saw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgraft


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.ln = nn.LayerNorm(8)
        self.pw1 = nn.Linear(8, 32)
        self.pw2 = nn.Linear(32, 8)
        self.gamma = nn.Parameter(torch.rand(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        r = x
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.ln(h)))) * self.gamma
        x = r + h.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class Inplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        h.relu_()
        g = self.b(h)
        g.mul_(0.5)
        g.add_(h)
        return self.c(g * g)


class DupCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = torch.cat([h, h], 1)
        return self.fc(self.b(h).amax((2, 3)))


class SoftCh(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(F.softmax(self.a(x), -1))


class PixSh(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.ps = nn.PixelShuffle(2)
        self.b = nn.Conv2d(2, 3, 1)

    def forward(self, x):
        return self.b(self.ps(self.a(x)))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.mid = nn.Linear(8, 8)
        self.c = nn.Linear(8, 2)

    def forward(self, x):
        return self.c(self.mid(torch.tanh(self.mid(self.a(x)))))


class WhereMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.c = nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.c(torch.where(h > 0, h, 0.1 * h) + 0.5 * h)


class ChanLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.l = nn.Linear(6, 6)
        self.c2 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = self.c(x).permute(0, 2, 3, 1)
        h = F.relu(self.l(h)).permute(0, 3, 1, 2)
        return self.c2(h)


class Unflat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 8 * 3 * 3)
        self.un = nn.Unflatten(1, (8, 3, 3))
        self.c = nn.Conv2d(8, 2, 3)

    def forward(self, x):
        return self.c(F.relu(self.un(self.fc(x)))).flatten(1)


class GateMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = F.relu(self.c(x))
        return self.c2(h * torch.sigmoid(h.mean(1, keepdim=True)))


def _cases():
    torch.manual_seed(0)
    cases = [
        (
            "convnext",
            ConvNeXt(),
            (torch.randn(2, 3, 8, 8),),
            [(torch.randn(3, 3, 8, 8),), (torch.randn(1, 3, 12, 12),)],
        ),
        ("inplace", Inplace(), (torch.randn(5, 4),), [(torch.randn(9, 4),)]),
        ("dupcat", DupCat(), (torch.randn(2, 3, 5, 5),), [(torch.randn(4, 3, 6, 6),)]),
        ("pixelshuffle", PixSh(), (torch.randn(2, 3, 4, 4),), [(torch.randn(1, 3, 4, 4),)]),
        ("shared", Shared(), (torch.randn(5, 4),), [(torch.randn(3, 4),)]),
        ("where", WhereMask(), (torch.randn(5, 4),), [(torch.randn(7, 4),)]),
        ("chanlast", ChanLast(), (torch.randn(2, 3, 5, 5),), [(torch.randn(1, 3, 7, 7),)]),
        ("unflatten", Unflat(), (torch.randn(4, 5),), [(torch.randn(2, 5),)]),
        ("gatemean", GateMean(), (torch.randn(2, 3, 5, 5),), [(torch.randn(1, 3, 6, 6),)]),
    ]
    return cases


CASES = {c[0]: c for c in _cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_on_fresh_inputs(name: str) -> None:
    _, model, example, fresh = CASES[name]
    model.eval()
    wide = netgraft.widen(model, 2.0, example_inputs=example, seed=0, noise=0.1)
    assert wide.netgraft_report.changes
    for inputs in fresh:
        for train in (False, True):
            cert = netgraft.check_preserved(model, wide, inputs, train=train)
            assert cert.passed, (name, train, str(cert))


def test_growing_nothing_warns() -> None:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="grew nothing"):
        netgraft.widen(SoftCh(), 2.0, example_inputs=(torch.randn(3, 4),))
