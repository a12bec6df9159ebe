"""widen on the held-out architectures, checked by the test itself on fresh inputs in eval and train mode.

Each operation either returns a model that computes the same function (float32: max|delta| <= 1e-5 (1 + max|y|),
float64: 1e-10) on inputs the trace never saw, leaves the source untouched and trains every grown unit, or is refused
with netgraft's own error naming a module path or op. Anything else (a raw torch error, NotPreservedError, a
different function) fails.
"""

from __future__ import annotations

import pytest
import torch

import netgraft

from .sweep import (
    ARCHS,
    NAMES,
    REFUSALS,
    assert_named_refusal,
    assert_same_function,
    assert_unchanged,
    build,
    dead_new_units,
    dead_parameters,
    grads_after,
    mismatches,
    snapshot,
)

DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def _growable(table, most: int = 6) -> list:
    """The dimensions a user can name, at most `most` of them spread over the model (first and last included)."""
    named = [g for g in table if g.growable and g.name and not g.dependent]
    if len(named) <= most:
        return named
    return [named[round(i * (len(named) - 1) / (most - 1))] for i in range(most)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_widen_by_factor_two(name: str, dtype: torch.dtype) -> None:
    arch = ARCHS[name]
    model = build(arch, dtype)
    before = snapshot(model)
    try:
        wide = netgraft.widen(model, 2.0, example_inputs=arch.example(dtype), seed=0)
    except REFUSALS as err:
        assert_named_refusal(err, model)
        assert_unchanged(model, before)
        return
    assert_unchanged(model, before)
    assert [m.training for m in wide.modules()][:1] == [False]
    assert all(not m.training for m in wide.modules()), "the result is not in the source's (eval) mode"
    assert wide.netgraft_report.changes, "widen(2.0) grew nothing"
    assert_same_function(model, wide, [arch.example(dtype), *arch.fresh(dtype)])
    # README: "one float factor for every dimension that can grow": every dimension `groups` lists as growable by
    # name ("yes" or "linked") has grown
    table = netgraft.groups(model, arch.example(dtype))
    grown = {n for n, _, _ in wide.netgraft_report.changes}
    missed = [g.name for g in table if g.growable and g.name and g.name not in grown]
    assert not missed, f"widen(2.0) left growable dimensions at their size: {missed}"
    if dtype == torch.float32:
        x = arch.fresh(dtype)[0]
        excused = set(dead_parameters(model, x))  # parameters the source itself never trains on this batch
        assert not [k for k in dead_parameters(wide, x) if k not in excused]
        assert not dead_new_units(model, wide, x)


@pytest.mark.parametrize("name", NAMES)
def test_widen_by_factor_one_and_a_half_with_split_noise(name: str) -> None:
    arch = ARCHS[name]
    model = build(arch, torch.float32)
    try:
        wide = netgraft.widen(model, 1.5, example_inputs=arch.example(), seed=1, noise=0.3)
    except REFUSALS as err:
        assert_named_refusal(err, model)
        return
    assert_same_function(model, wide, [arch.example(), *arch.fresh()])


@pytest.mark.parametrize("name", NAMES)
def test_widen_each_growable_group(name: str) -> None:
    """Dimensions `groups` lists as growable (up to six, spread over the model), one at a time, to their smallest
    valid larger size (non-uniform replication where allowed), with split noise, in float64."""
    arch = ARCHS[name]
    dtype = torch.float64
    model = build(arch, dtype)
    before = snapshot(model)
    try:
        table = netgraft.groups(model, arch.example(dtype))
    except REFUSALS as err:
        assert_named_refusal(err, model)
        return
    x = arch.fresh(dtype)[0]
    src_grads = grads_after(model, x)
    src_dead = set(dead_parameters(model, x, grads=src_grads))
    problems, widened = [], 0
    for g in _growable(table):
        size = g.valid_sizes()[0]
        try:
            wide = netgraft.widen(model, {g.name: size}, example_inputs=arch.example(dtype), seed=0, noise=0.5)
        except REFUSALS as err:
            assert_named_refusal(err, model)
            continue
        except Exception as err:  # noqa: BLE001 - collected: every group is tried
            problems.append(f"{g.name} -> {size}: {type(err).__name__}: {str(err)[:300]}")
            continue
        widened += 1
        bad = mismatches(model, wide, [arch.example(dtype), *arch.fresh(dtype)])
        problems += [f"{g.name} -> {size}: {b}" for b in bad]
        grads = grads_after(wide, x)
        dead = [k for k in dead_parameters(wide, x, grads=grads) if k not in src_dead]
        dead += dead_new_units(model, wide, x, src_grads, grads)
        problems += [f"{g.name} -> {size}: no gradient reaches {d}" for d in dead]
    assert_unchanged(model, before)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_widen_a_source_left_in_train_mode(name: str) -> None:
    """A model straight out of a training loop is in train mode: the result must be too, the source must stay so."""
    arch = ARCHS[name]
    dtype = torch.float64
    model = build(arch, dtype).train()
    before = snapshot(model)
    try:
        wide = netgraft.widen(model, 2.0, example_inputs=arch.example(dtype), seed=3)
    except REFUSALS as err:
        assert_named_refusal(err, model)
        assert_unchanged(model, before)
        return
    assert_unchanged(model, before)
    assert all(m.training for m in wide.modules()), "the result is not in the source's (train) mode"
    assert_same_function(model, wide, arch.fresh(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_group_names_are_the_models_own_paths(name: str) -> None:
    """`groups` names each dimension by "the key for widths": the module (or bare parameter) that produces it, as
    `model.named_modules()` / `named_parameters()` name it ('path:heads' for attention heads)."""
    arch = ARCHS[name]
    model = build(arch)
    try:
        table = netgraft.groups(model, arch.example())
    except REFUSALS as err:
        assert_named_refusal(err, model)
        return
    paths = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    unknown = [g.name for g in table if g.name and g.name.split(":")[0] not in paths]
    assert not unknown, f"group names that are not paths of the model: {unknown}"
