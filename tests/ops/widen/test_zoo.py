"""Every zoo model: widened exactly (float32 and float64, eval and train), source untouched, parameters grown."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_exact, assert_unchanged, n_params, snapshot, to_double
from zoo import UNSUPPORTED, ZOO, randomize_batchnorm_stats

import netgraft

# Models whose growth is named explicitly instead of by a factor (none today: hand-written attention's
# `view(B, T, self.n_head, C // self.n_head)` grows by adding heads and updating `n_head`).
WIDTHS: dict[str, dict[str, int] | float] = {}


def build(name: str, dtype=torch.float32):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build()
    randomize_batchnorm_stats(model, seed=1)
    torch.manual_seed(1)
    inputs = entry.inputs()
    if dtype == torch.float64:
        model, inputs = model.double(), to_double(inputs)
    return entry, model.eval(), inputs


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_widen_is_exact_float32(name: str, factor: float) -> None:
    entry, model, inputs = build(name)
    before = snapshot(model)
    wide = netgraft.widen(model, WIDTHS.get(name, factor), example_inputs=inputs, seed=0, noise=0.1)
    assert_unchanged(model, before)
    assert_exact(model, wide, inputs)
    if not entry.has_dropout:
        assert_exact(model, wide, inputs, train=True)
    assert_unchanged(model, before)
    assert n_params(wide) > n_params(model)
    assert wide.netgraft_report.changes, "nothing grew"
    if not isinstance(WIDTHS.get(name, factor), dict):
        for group, old, new in wide.netgraft_report.changes:
            assert new >= old * factor - 1e-9, (group, old, new)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_widen_is_exact_float64(name: str) -> None:
    entry, model, inputs = build(name, torch.float64)
    wide = netgraft.widen(model, WIDTHS.get(name, 1.5), example_inputs=inputs, seed=3, noise=0.2)
    assert next(wide.parameters()).dtype == torch.float64
    cert = assert_exact(model, wide, inputs)
    assert cert.max_abs <= 1e-10
    if not entry.has_dropout:
        assert_exact(model, wide, inputs, train=True)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_models_are_refused(name: str) -> None:
    entry = UNSUPPORTED[name]
    torch.manual_seed(0)
    model = entry.build()
    inputs = entry.inputs()
    before = snapshot(model)
    with pytest.raises(netgraft.UnsupportedModelError) as err:
        netgraft.widen(model, 1.5, example_inputs=inputs)
    msg = str(err.value)
    assert "register" in msg  # points at the extension point
    assert "op '" in msg or "module '" in msg  # names where it happened
    assert_unchanged(model, before)
