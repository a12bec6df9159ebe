"""deepen on the held-out architectures, checked by the test itself on fresh inputs.

Eval mode is always checked. Train mode is checked on fresh inputs when the report claims it (`report.modes`) or when
the inserted modules hold no BatchNorm that normalises the live path (a Net2Net identity BatchNorm); such an identity
BatchNorm is checked in train mode on the calibration batch it was given (README: "an identity in train mode on
batches like the data"). Every parameter of the result must receive gradient within two SGD steps (gated blocks:
once their gate is opened).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import netgraft

from .sweep import (
    ARCHS,
    NAMES,
    REFUSALS,
    assert_deepen_refusal,
    assert_named_refusal,
    assert_same_function,
    assert_unchanged,
    build,
    grads_after,
    mismatches,
    snapshot,
)

DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
CASES = [pytest.param(name, anchor, id=f"{name}-{anchor}") for name in NAMES for anchor in ARCHS[name].anchors]


def _claims_train(deep: nn.Module) -> bool:
    report = deep.netgraft_report
    modes = getattr(report, "modes", None)
    if modes is None:
        modes = getattr(deep.netgraft_report.certificate, "claimed", ())
    return "train" in tuple(modes)


def _identity_bn(deep: nn.Module) -> bool:
    """Does an inserted module normalise the live path with a BatchNorm (a Net2Net identity Conv + BN)?"""
    for ins in deep.netgraft_report.insertions:
        if ins.kind != "identity":
            continue
        inserted = deep.get_submodule(ins.path)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in inserted.modules()):
            return True
    return False


def _check(model: nn.Module, deep: nn.Module, arch, dtype: torch.dtype) -> None:
    fresh = [arch.example(dtype), *arch.fresh(dtype)]
    assert_same_function(model, deep, fresh, modes=(False,))
    if _claims_train(deep) or not _identity_bn(deep):
        assert_same_function(model, deep, fresh, modes=(True,))
    else:
        assert_same_function(model, deep, [arch.data(dtype)], modes=(True,))


def _live_within_two_steps(model: nn.Module, deep: nn.Module, x: tuple) -> list[str]:
    """Parameters of `deep` without gradient in two SGD steps, except copies of source parameters that get none in
    the source either (e.g. a last layer whose output the model discards)."""
    net = copy.deepcopy(deep)
    if any(i.gated for i in deep.netgraft_report.insertions):
        netgraft.set_gates_(net, 0.5)
    src = grads_after(model, x, steps=2)
    silent = [dict(model.named_parameters())[k] for k, g in src.items() if not bool((g != 0).any())]
    dead = []
    for k, g in grads_after(net, x, steps=2).items():
        if bool((g != 0).any()):
            continue
        p = dict(net.named_parameters())[k]
        if any(s.shape == p.shape and torch.equal(s.detach(), p.detach()) for s in silent):
            continue
        dead.append(k)
    return dead


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,anchor", CASES)
def test_deepen_after_anchor(name: str, anchor: str, dtype: torch.dtype) -> None:
    arch = ARCHS[name]
    model = build(arch, dtype)
    before = snapshot(model)
    try:
        deep = netgraft.deepen(model, anchor, example_inputs=arch.example(dtype), data=[arch.data(dtype)], seed=0)
    except REFUSALS as err:
        assert_unchanged(model, before)
        assert_deepen_refusal(err, model, anchor, arch.example(dtype))
        return
    assert_unchanged(model, before)
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in model.parameters())
    _check(model, deep, arch, dtype)
    if dtype == torch.float32:
        dead = _live_within_two_steps(model, deep, arch.fresh(dtype)[0])
        assert not dead, f"no gradient within two steps: {dead}"


@pytest.mark.parametrize("name", NAMES)
def test_deepen_both_anchors_at_once_then_widen(name: str) -> None:
    """Two inserts in one call, then the deeper model widened (README: widen and deepen compose)."""
    arch = ARCHS[name]
    dtype = torch.float64
    model = build(arch, dtype)
    before = snapshot(model)
    try:
        deep = netgraft.deepen(model, list(arch.anchors), example_inputs=arch.example(dtype),
                               data=[arch.data(dtype)], seed=0)
    except REFUSALS as err:
        assert_deepen_refusal(err, model, list(arch.anchors), arch.example(dtype))
        return
    assert_unchanged(model, before)
    assert len(deep.netgraft_report.insertions) == len(arch.anchors)
    _check(model, deep, arch, dtype)
    try:
        wide = netgraft.widen(deep, 2.0, example_inputs=arch.example(dtype), seed=0)
    except REFUSALS as err:
        assert_named_refusal(err, deep)
        return
    bad = mismatches(model, wide, [arch.example(dtype), *arch.fresh(dtype)], modes=(False,))
    assert not bad, "deepen then widen computes a different function:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("train", [pytest.param(False, id="eval"), pytest.param(True, id="train")])
@pytest.mark.parametrize("name,anchor", CASES)
def test_deepen_keeps_the_source_mode(name: str, anchor: str, train: bool) -> None:
    """Every module of the result is in the source's mode (a model in eval mode for serving, or still in train mode
    as a training loop leaves it), and the source keeps its own."""
    arch = ARCHS[name]
    dtype = torch.float64
    model = build(arch, dtype).train(train)
    before = snapshot(model)
    try:
        deep = netgraft.deepen(model, anchor, example_inputs=arch.example(dtype), data=[arch.data(dtype)], seed=0)
    except REFUSALS as err:
        assert_unchanged(model, before)
        assert_deepen_refusal(err, model, anchor, arch.example(dtype))
        return
    assert_unchanged(model, before)
    wrong = [f"'{n}' ({type(m).__name__})" for n, m in deep.named_modules() if m.training != train]
    assert not wrong, f"modules of the result not in the source's {'train' if train else 'eval'} mode: {wrong}"
