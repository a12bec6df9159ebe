"""Probe inputs: the example inputs plus fresh ones, and the check that the model takes the same path on all of them.

netgraft traces one forward pass. A forward that branches in Python on values (``if x.mean() > 0``) or on the batch
size runs other ops on other inputs, and a model grown along the traced path could be wrong or crash on the other
branch. Python branching is invisible to a trace, but its effect is not: on fresh inputs (new values; one more
sample) the set of (module, op) pairs that run changes. Every operator therefore runs the model on each probe, refuses
a model whose path differs, and certifies its result on every probe the model accepted (the certificate lists them).
Per-sample loops repeat the same ops and are not refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import UnsupportedModelError
from .state import call_model, flat_outputs, module_paths, run_mode


@dataclass
class Probe:
    """Inputs a model is run on, with a short description for reports."""

    name: str
    inputs: Any

    def describe(self) -> str:
        leaves = [t for t in tree_flatten(self.inputs)[0] if isinstance(t, torch.Tensor)]
        shapes = ", ".join(str(tuple(t.shape)) for t in leaves[:3]) + (", ..." if len(leaves) > 3 else "")
        return f"{self.name} {shapes}"


def _fresh(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """New values like `t`: floats with its mean and spread, integers (token ids, labels) within its range; masks
    (values in {0, 1}) and booleans are kept, since fresh masks could mask out whole rows."""
    if t.is_floating_point():
        x = torch.randn(t.shape, generator=g, dtype=torch.float64)
        std = float(t.double().std()) if t.numel() > 1 else 1.0
        scale = std if std > 0 and std == std else 1.0
        mean = float(t.double().mean()) if t.numel() else 0.0
        return (x * scale + mean).to(dtype=t.dtype, device=t.device)
    if t.dtype == torch.bool or t.is_complex() or t.numel() == 0:
        return t
    low, high = int(t.min()), int(t.max())
    if low >= 0 and high <= 1:
        return t
    return torch.randint(low, high + 1, t.shape, generator=g, dtype=torch.int64).to(dtype=t.dtype, device=t.device)


def _map_leaves(inputs: Any, fn) -> Any:  # noqa: ANN001
    leaves, spec = tree_flatten(inputs)
    return tree_unflatten([fn(x) if isinstance(x, torch.Tensor) else x for x in leaves], spec)


def _one_more_sample(inputs: Any, fresh: Any) -> Any | None:
    """`fresh` with one more sample on the leading axis, when every input tensor has the same leading size (the batch);
    None when the inputs have no common batch axis."""
    tensors = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
    sizes = {t.shape[0] for t in tensors if t.dim() >= 1}
    if not tensors or len(sizes) != 1 or any(t.dim() == 0 for t in tensors):
        return None
    return _map_leaves(fresh, lambda t: torch.cat([t, t[:1]], 0))


def make_probes(example_inputs: Any, seed: int = 0) -> list[Probe]:
    """The example inputs, fresh values of the same shapes, the fresh values negated (where there are float inputs:
    a branch on a sign or a mean flips), and fresh values with one more sample."""
    g = torch.Generator().manual_seed(seed)
    fresh = _map_leaves(example_inputs, lambda t: _fresh(t, g))
    probes = [Probe("example_inputs", example_inputs), Probe("fresh values", fresh)]
    if any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_flatten(example_inputs)[0]):
        probes.append(Probe("negated values", _map_leaves(fresh, lambda t: -t if t.is_floating_point() else t)))
    bigger = _one_more_sample(example_inputs, _map_leaves(example_inputs, lambda t: _fresh(t, g)))
    if bigger is not None:
        probes.append(Probe("one more sample", bigger))
    return probes


class _PathRecorder(TorchFunctionMode):
    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack, self.seen = stack, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        key = (self.stack[-1] if self.stack else "", getattr(func, "__name__", repr(func)))
        self.seen.setdefault(key, len(self.seen))
        return func(*args, **(kwargs or {}))


def path_of(model: nn.Module, inputs: Any) -> tuple[dict[tuple[str, str], int], Any]:
    """The (module path, op) pairs that run on `inputs` (with their first position), and the outputs. Eval mode,
    no gradients, state preserved."""
    names = module_paths(model)
    stack: list[str] = []

    def pre(module: nn.Module, args: tuple) -> None:
        if id(module) in names:
            stack.append(names[id(module)])

    def post(module: nn.Module, args: tuple, out: Any) -> None:
        if id(module) in names and stack:
            stack.pop()

    rec = _PathRecorder(stack)
    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post)
    try:
        with run_mode(model, train=False), torch.no_grad(), rec:
            out = call_model(model, inputs)
    finally:
        h1.remove()
        h2.remove()
    return rec.seen, out


def same_path_probes(model: nn.Module, probes: list[Probe]) -> tuple[list[Probe], list[Any]]:
    """Run `model` on every probe; refuse if it takes another path than on the first. Returns the probes the model
    accepted and its eval-mode outputs on them (probes it cannot run, e.g. a fixed batch size, are dropped)."""
    reference, out = path_of(model, probes[0].inputs)
    kept, outputs = [probes[0]], [out]
    for probe in probes[1:]:
        try:
            seen, out = path_of(model, probe.inputs)
        except UnsupportedModelError:
            raise
        except Exception:  # noqa: BLE001 - the model does not accept this probe: it is simply not certified on it
            continue
        if not all(bool(torch.isfinite(t).all()) for t in flat_outputs(out) if t.is_floating_point()):
            continue  # outside the model's domain (a log or sqrt of negated inputs): not a probe for it
        if seen.keys() != reference.keys():
            only_ref = sorted(reference.keys() - seen.keys(), key=reference.get)
            only_new = sorted(seen.keys() - reference.keys(), key=seen.get)
            first = (f"op '{only_ref[0][1]}' in module '{only_ref[0][0] or '<root>'}' runs on example_inputs but not "
                     f"on {probe.name}" if only_ref else
                     f"op '{only_new[0][1]}' in module '{only_new[0][0] or '<root>'}' runs on {probe.name} only")
            raise UnsupportedModelError(
                f"the model's forward takes a different path on other inputs ({first}): it branches in Python on "
                f"input values or the batch size, and netgraft can only map the path it traces. Make the branch "
                f"independent of the inputs, or grow the model in the configuration where the branch is fixed")
        kept.append(probe)
        outputs.append(out)
    return kept, outputs
