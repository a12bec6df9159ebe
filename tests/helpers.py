"""Assertions shared by the tests: exactness bound, source untouched, what grew."""

from __future__ import annotations

import torch
from torch import nn

import netgraft


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def assert_unchanged(model: nn.Module, snap: tuple[dict[str, torch.Tensor], list[bool]]) -> None:
    state, modes = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].shape == v.shape, k
        assert torch.equal(now[k], v), f"source tensor '{k}' was modified"
    assert [m.training for m in model.modules()] == modes


def assert_exact(a: nn.Module, b: nn.Module, inputs, *, train: bool = False) -> netgraft.Certificate:
    cert = netgraft.check_preserved(a, b, inputs, train=train)
    dtype = next(a.parameters()).dtype
    bound = 1e-10 if dtype == torch.float64 else 1e-5 * (1 + cert.max_ref)
    assert cert.max_abs <= bound, f"{cert} (test bound {bound:.3g})"
    assert cert.passed
    return cert


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_double(inputs: tuple) -> tuple:
    return tuple(t.double() if t.is_floating_point() else t for t in inputs)
