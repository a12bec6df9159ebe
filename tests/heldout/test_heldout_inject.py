"""inject on the held-out architectures.

Into a freshly initialised model of the same architecture, injection must reproduce the source exactly (every
state_dict entry, identical outputs on fresh inputs in eval and train mode, similarity 1.0). Into a wider and deeper
model of the same family, or into a netgraft-grown copy, it must run, leave the source untouched, report a positive
similarity and give a target that computes finite outputs; a second injection into an identical target gives the
same bits (README: deterministic).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import netgraft

from .sweep import ARCHS, NAMES, REFUSALS, assert_named_refusal, assert_unchanged, build, run, snapshot


def _inject(source: nn.Module, target: nn.Module, example: tuple):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low similarity warns by design
        return netgraft.inject_(source, target, example_inputs=example)


def _finite_everywhere(model: nn.Module, arch) -> list[str]:
    bad = []
    for x in [arch.example(), *arch.fresh()]:
        for train in (False, True):
            y = run(model, x, train)
            if not bool(torch.isfinite(y).all()):
                bad.append(f"input {tuple(x[0].shape)}, {'train' if train else 'eval'} mode")
    for name, m in model.named_modules():
        var = getattr(m, "running_var", None)
        if isinstance(var, torch.Tensor) and not bool((var >= 0).all()):
            bad.append(f"'{name}'.running_var has negative entries")
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_inject_into_the_same_architecture_is_exact(name: str) -> None:
    arch = ARCHS[name]
    source, target = build(arch), build(arch, seed=1)
    before = snapshot(source)
    try:
        report = _inject(source, target, arch.example())
    except REFUSALS as err:
        assert_named_refusal(err, source)
        return
    assert_unchanged(source, before)
    assert report.similarity == 1.0
    ours, theirs = source.state_dict(), target.state_dict()
    assert list(ours) == list(theirs)
    differ = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not differ, f"tensors not reproduced: {differ}"
    for x in arch.fresh():
        for train in (False, True):
            assert torch.equal(run(source, x, train), run(target, x, train)), (tuple(x[0].shape), train)


@pytest.mark.parametrize("name", NAMES)
def test_inject_into_a_wider_deeper_variant(name: str) -> None:
    arch = ARCHS[name]
    source = build(arch)
    before = snapshot(source)
    target, twin = build(arch, seed=2, variant=True), build(arch, seed=2, variant=True)
    ties = [(a, b) for a, b in [("transformer.wte.weight", "lm_head.weight")]
            if a in dict(target.named_parameters(remove_duplicate=False))]
    try:
        report = _inject(source, target, arch.example())
    except REFUSALS as err:
        assert_named_refusal(err, source)
        return
    assert_unchanged(source, before)
    assert report.similarity > 0
    assert report.transfers
    assert not _finite_everywhere(target, arch)
    params = dict(target.named_parameters(remove_duplicate=False))
    assert all(params[a] is params[b] for a, b in ties), "a tied weight was untied"
    _inject(source, twin, arch.example())
    assert all(torch.equal(x, y) for x, y in zip(target.state_dict().values(), twin.state_dict().values(),
                                                 strict=True)), "a second injection gave other values"


@pytest.mark.parametrize("grown_by", ["widen", "deepen"])
@pytest.mark.parametrize("name", NAMES)
def test_inject_into_a_grown_copy(name: str, grown_by: str) -> None:
    """A netgraft-grown model (wider, or deeper with inserted modules/wrappers), re-initialised, as the target."""
    arch = ARCHS[name]
    source = build(arch)
    try:
        if grown_by == "widen":
            grown = netgraft.widen(source, 1.5, example_inputs=arch.example(), seed=0)
        else:
            grown = netgraft.deepen(source, list(arch.anchors), example_inputs=arch.example(), data=[arch.data()],
                                    kind="residual", seed=0)
    except REFUSALS as err:
        assert_named_refusal(err, source)
        return
    target = copy.deepcopy(grown)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in target.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    before = snapshot(source)
    try:
        report = _inject(source, target, arch.example())
    except REFUSALS as err:
        assert_named_refusal(err, source)
        return
    assert_unchanged(source, before)
    assert report.similarity > 0 and report.transfers
    assert not _finite_everywhere(target, arch)
