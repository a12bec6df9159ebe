"""`widen` and `groups`: the Net2WiderNet operator and the view of a model's coupled dimensions."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from . import _ops_layers, _ops_tensor  # noqa: F401 - register the built-in rules
from ._apply import build_model
from ._groups import Coupling, Group
from ._guards import check_model
from ._plan import Planner, SpaceMaps, _total
from ._trace import trace
from .certify import Certificate, Reference, audit, certify
from .errors import EXTENSION_HINT, NotPreservedError, UnsupportedModelError


def couple(model: nn.Module, example_inputs: Any) -> Coupling:
    """Trace `model` and return its coupled dimensions (the first two steps of every operator)."""
    return Coupling(trace(model, example_inputs))


class GroupTable(list):
    """The coupled dimensions of a model. `print()` shows a table; items are `Group`s."""

    def __str__(self) -> str:
        rows = [("#", "name (key for widths)", "size", "grow", "members", "constraints")]
        hidden = [g for g in self if not (g.name or g.growable or g.blocked)]
        for g in self:
            if g in hidden:
                continue
            status = "yes" if g.growable and g.name and not g.dependent else (
                "linked" if g.growable and g.dependent else "no")
            name = g.name or f"({g.members[0].tensor})"
            cons = "; ".join(g.constraints()) or "-"
            rows.append((str(g.index), name, str(g.display_size), status, str(len(g.members)), cons))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r[:5], widths, strict=True)] + [r[5][:140]]
            lines.append("  ".join(cells).rstrip())
            if r is rows[0]:
                lines.append("-" * min(sum(widths) + 30, 160))
        if hidden:
            lines.append(f"({len(hidden)} fixed axes not shown: kernel, input/output and head_dim axes; see .hidden())")
        return "\n".join(lines)

    def hidden(self) -> list[Group]:
        """Groups not shown by print(): fixed axes nobody can name (kernel axes, model input/output...)."""
        return [g for g in self if not (g.name or g.growable or g.blocked)]

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            for g in self:
                if g.name == key or key in g.aliases:
                    return g
            raise KeyError(f"no group named '{key}'")
        return super().__getitem__(key)


def groups(model: nn.Module, example_inputs: Any) -> GroupTable:
    """The coupled dimensions of `model`: what can be widened, what must change together, and why not.

    Each `Group` has `name` (the key to use in `widen`'s `widths`), `display_size`, `members` (parameter, axis,
    role), `constraints()` and `growable`.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> table = netgraft.groups(m, (torch.randn(4, 3),))
        >>> [(g.name, g.display_size) for g in table if g.growable and g.name]
        [('0', 8)]
    """
    check_model(model, "groups")
    return GroupTable(couple(model, example_inputs).groups)


@dataclass
class WidenReport:
    """What `widen` did: the new size of each grown group and the measured certificate."""

    certificate: Certificate
    changes: list[tuple[str, int, int]] = field(default_factory=list)  # (group, old size, new size)

    def __str__(self) -> str:
        lines = [f"  {name}: {old} -> {new}" for name, old, new in self.changes]
        return "\n".join([f"widened {len(self.changes)} dimension(s):", *lines, f"certificate: {self.certificate}"])


def _tensors(model: nn.Module) -> dict:
    return dict([*model.named_parameters(), *model.named_buffers()])


def changes_of(coupling: Coupling, planner: Planner) -> list[tuple[str, int, int]]:
    return [(g.name or str(g.members[0]), g.display_size, planner.sizes[g.leaf.id] * g.unit)
            for g in coupling.groups if planner.sizes.get(g.leaf.id, g.size) != g.size]


def plan_widths(coupling: Coupling, widths: dict[str, int] | float) -> Planner:
    """A planner holding the requested sizes: ``{module path: size}`` or one float factor (checked here)."""
    planner = Planner(coupling)
    if isinstance(widths, dict):
        for key, size in widths.items():
            if not isinstance(size, numbers.Integral) or isinstance(size, bool):
                raise TypeError(f"widths['{key}'] must be an int, got {size!r}")
            planner.request_total(key, int(size))
    elif isinstance(widths, numbers.Real) and not isinstance(widths, bool):
        planner.request_factor(float(widths))
    else:
        raise TypeError(f"widths must be a dict {{module path: size}} or a float factor, got {type(widths).__name__}")
    return planner


def widen(
    model: nn.Module,
    widths: dict[str, int] | float | None = None,
    *,
    example_inputs: Any = None,
    noise: float = 0.0,
    seed: int | None = None,
    check: bool = True,
    **config_sizes: int,
) -> nn.Module:
    """Return a wider copy of `model` that computes the same function (Net2WiderNet). `model` is not modified.

    Args:
        model: any `nn.Module`.
        widths: ``{module path: new size}`` of the dimension that module produces (a Linear's out_features, a
            Conv's out_channels, an Embedding's embedding_dim...), or one float factor for every dimension that can
            grow (rounded up to the nearest valid size; the model's input and output sizes never change).
        example_inputs: tuple of tensors (or a dict of keyword inputs) to trace the model and certify the result.
        noise: symmetry breaking that keeps the function exact. The copies of a unit split each of its outgoing
            weights in shares ``(1 + noise * (z - mean z)) / count`` drawn element by element (z standard normal),
            which still sum to one. Without it the copies of a unit receive gradients that differ only by a
            constant factor, which Adam-type optimisers normalise away: the copies then stay identical and the
            wider model keeps the small one's capacity. 0.5 is a good start; float32/float64 parameters only.
        seed: seed for the random replication map and the noise.
        check: raise `NotPreservedError` if the certificate exceeds the bound (default).
        **config_sizes: for a Hugging Face GPT-2 / BERT / LLaMA-family model, sizes in config terms instead of
            `widths`: ``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``.
            The result is a plain model of the same class with its config updated (see the README's Hugging Face
            section); `example_inputs` (a dict of model inputs) is optional there.

    The result carries ``result.netgraft_report`` (sizes changed and certificate) and
    ``result.netgraft_certificate``.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> wide = netgraft.widen(m, {"0": 12}, example_inputs=(torch.randn(4, 3),), seed=0)
        >>> wide[0].out_features, wide[2].in_features, wide.netgraft_certificate.passed
        (12, 12, True)
    """
    check_model(model, "widen")
    if config_sizes:
        from . import hf

        allowed = {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"}
        unknown = set(config_sizes) - allowed
        if unknown or widths is not None or not hf.is_hf_model(model):
            raise TypeError(f"widen: config sizes ({', '.join(sorted(config_sizes))}) apply to Hugging Face models "
                            f"only, instead of `widths`; known: {sorted(allowed)}")
    if isinstance(noise, bool) or not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if config_sizes:
        return hf.widen_hf(model, seed=seed, noise=float(noise), probe_inputs=example_inputs, check=check,
                           **config_sizes)
    if widths is None or example_inputs is None:
        raise TypeError("widen needs `widths` and `example_inputs` (or, for a Hugging Face model, config sizes)")
    coupling = couple(model, example_inputs)
    planner = plan_widths(coupling, widths)
    maps = SpaceMaps(planner.build_maps(seed), noise, seed)
    result = build_model(coupling, maps, lambda s: _total(s, planner.sizes))
    grown = {n: t for n, t in _tensors(result).items() if n in coupling.trace.tensors_by_name
             and t.shape != coupling.trace.tensors_by_name[n].shape}
    try:
        audit(model, result, example_inputs, grown, "widen")
    except UnsupportedModelError:
        raise
    except (RuntimeError, ValueError, AssertionError) as err:
        # The traced ops were all mapped, yet the grown model does not run: its forward computes a shape from a
        # constant (e.g. `x.view(B, T, self.n_head, C // self.n_head)`), which no trace can see.
        grown_dims = ", ".join(f"'{n}' {o}->{w}" for n, o, w in changes_of(coupling, planner)) or "none"
        raise UnsupportedModelError(
            f"the widened model fails to run ({type(err).__name__}: {str(err)[:300]}). Its forward probably builds a "
            f"shape from a constant or attribute (e.g. a head count) that netgraft cannot update. Grown: "
            f"{grown_dims}. Widen only dimensions that avoid that code (pass a dict), or register a layer rule for "
            f"the module. {EXTENSION_HINT}"
        ) from err
    cert = certify(Reference(model, coupling.trace.probes, coupling.trace.probe_outputs), result)
    report = WidenReport(cert, changes_of(coupling, planner))
    if not isinstance(widths, dict) and widths > 1 and not report.changes:
        fixed = [f"'{g.name}': {(g.fixed + g.uniform)[0]}" for g in coupling.groups if g.name and g.fixed][:3]
        warnings.warn(f"widen({widths}) grew nothing: no hidden dimension of this model can grow ({'; '.join(fixed)})",
                      stacklevel=2)
    result.netgraft_report = report
    result.netgraft_certificate = cert
    if check and not cert.passed:
        raise NotPreservedError(f"widen did not preserve the function: {cert}")
    return result


__all__ = ["widen", "groups", "couple", "Group", "GroupTable", "WidenReport"]
