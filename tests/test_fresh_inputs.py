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
    def __init__(s):
        super().__init__()
        s.stem = nn.Conv2d(3, 8, 3, padding=1)
        s.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        s.ln = nn.LayerNorm(8)
        s.pw1 = nn.Linear(8, 32)
        s.pw2 = nn.Linear(32, 8)
        s.gamma = nn.Parameter(torch.rand(8))
        s.head = nn.Linear(8, 3)

    def forward(s, x):
        x = s.stem(x)
        r = x
        h = s.dw(x).permute(0, 2, 3, 1)
        h = s.pw2(F.gelu(s.pw1(s.ln(h)))) * s.gamma
        x = r + h.permute(0, 3, 1, 2)
        return s.head(x.mean((2, 3)))


class Inplace(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 8)
        s.b = nn.Linear(8, 8)
        s.c = nn.Linear(8, 2)

    def forward(s, x):
        h = s.a(x)
        h.relu_()
        g = s.b(h)
        g.mul_(0.5)
        g.add_(h)
        return s.c(g * g)


class DupCat(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 4, 1)
        s.b = nn.Conv2d(8, 5, 1)
        s.fc = nn.Linear(5, 2)

    def forward(s, x):
        h = F.relu(s.a(x))
        h = torch.cat([h, h], 1)
        return s.fc(s.b(h).amax((2, 3)))


class SoftCh(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 6)
        s.b = nn.Linear(6, 3)

    def forward(s, x):
        return s.b(F.softmax(s.a(x), -1))


class PixSh(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Conv2d(3, 8, 1)
        s.ps = nn.PixelShuffle(2)
        s.b = nn.Conv2d(2, 3, 1)

    def forward(s, x):
        return s.b(s.ps(s.a(x)))


class Shared(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 8)
        s.mid = nn.Linear(8, 8)
        s.c = nn.Linear(8, 2)

    def forward(s, x):
        return s.c(s.mid(torch.tanh(s.mid(s.a(x)))))


class WhereMask(nn.Module):
    def __init__(s):
        super().__init__()
        s.a = nn.Linear(4, 8)
        s.c = nn.Linear(8, 2)

    def forward(s, x):
        h = s.a(x)
        return s.c(torch.where(h > 0, h, 0.1 * h) + 0.5 * h)


class ChanLast(nn.Module):
    def __init__(s):
        super().__init__()
        s.c = nn.Conv2d(3, 6, 3, padding=1)
        s.l = nn.Linear(6, 6)
        s.c2 = nn.Conv2d(6, 2, 1)

    def forward(s, x):
        h = s.c(x).permute(0, 2, 3, 1)
        h = F.relu(s.l(h)).permute(0, 3, 1, 2)
        return s.c2(h)


class Unflat(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(5, 8 * 3 * 3)
        s.un = nn.Unflatten(1, (8, 3, 3))
        s.c = nn.Conv2d(8, 2, 3)

    def forward(s, x):
        return s.c(F.relu(s.un(s.fc(x)))).flatten(1)


class GateMean(nn.Module):
    def __init__(s):
        super().__init__()
        s.c = nn.Conv2d(3, 6, 3, padding=1)
        s.c2 = nn.Conv2d(6, 2, 1)

    def forward(s, x):
        h = F.relu(s.c(x))
        return s.c2(h * torch.sigmoid(h.mean(1, keepdim=True)))


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
