"""`widen` and `groups`: the Net2WiderNet operator and the view of a model's coupled dimensions."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .. import hf
from ..core.apply import build_model
from ..core.certify import Certificate, Reference, audit, certify
from ..core.coupling import couple
from ..core.guards import check_model
from ..core.plan import SpaceMaps, changes_of, plan_widths
from ..core.rng import resolve_seed
from ..core.space import total_size
from ..errors import EXTENSION_HINT, InvalidRequestError, NotPreservedError, UnsupportedModelError
from ..hf.request import WIDTH_FIELDS, ConfigSizes


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


def widen(
    model: nn.Module,
    widths: dict[str, int] | float | ConfigSizes | None = None,
    *,
    example_inputs: Any = None,
    noise: float = 0.0,
    seed: int | None = None,
    check: bool = True,
    heads: dict[str, str] | None = None,
    **config_sizes: int,
) -> nn.Module:
    """Return a wider copy of `model` that computes the same function (Net2WiderNet). `model` is not modified.

    Args:
        model: any `nn.Module`.
        widths: what to grow, which also selects the front end:
            ``{module path: new size}`` of the dimension that module produces (a Linear's out_features, a Conv's
            out_channels, an Embedding's embedding_dim...), or one float factor for every dimension that can grow
            (rounded up to the nearest valid size; the model's input and output sizes never change): the model is
            traced on `example_inputs`;
            a `netgraft.ConfigSizes` (``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
            ``num_key_value_heads``) for a Hugging Face model of a known family: planned from its config, the
            result a plain model of the same class (see the README's Hugging Face section).
        example_inputs: tuple of tensors (or a dict of keyword inputs) to trace the model and certify the result.
        noise: symmetry breaking that keeps the function exact. The copies of a unit split each of its outgoing
            weights in shares ``(1 + noise * (z - mean z)) / count`` drawn element by element (z standard normal),
            which still sum to one. Without it the copies of a unit receive gradients that differ only by a
            constant factor, which Adam-type optimisers normalise away: the copies then stay identical and the
            wider model keeps the small one's capacity. 0.5 is a good start; float32/float64 parameters only.
        seed: seeds the random replication map and the noise; None draws the seed from torch's global generator
            (`torch.manual_seed` before the call makes it reproducible), as in every verb.
        check: raise `NotPreservedError` if the certificate exceeds the bound (default).
        heads: ``{module path: attribute name}`` for hand-written attention the trace cannot settle: the module's
            int attribute that holds its head count. Usually not needed: when a forward reshapes into heads with
            sizes taken from attributes (``q.view(B, T, self.n_head, C // self.n_head)``,
            ``view(B, T, -1, self.head_dim)``) heads are added, head_dim is kept and the attributes used
            (``n_head``, ``n_embd`` in ``split(self.n_embd)``...) are updated. Where two attributes could be the
            count, `widen` refuses and names them; then e.g. ``heads={"layers.0.attn": "n_kv_heads"}``. The head
            count can also be named in `widths` as ``"<module path>:<attribute>"`` (e.g. ``{"h.0.attn:n_head": 8}``).
        **config_sizes: shorthand for ``widths=ConfigSizes(**config_sizes)``.

    The result carries ``result.netgraft_report`` (sizes changed and ``.certificate``).

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> wide = netgraft.widen(m, {"0": 12}, example_inputs=(torch.randn(4, 3),), seed=0)
        >>> wide[0].out_features, wide[2].in_features, wide.netgraft_report.certificate.passed
        (12, 12, True)

    Hand-written attention (nanoGPT style): heads are added, ``n_head`` follows.

        >>> class Attn(torch.nn.Module):
        ...     def __init__(self, d=8, n_head=2):
        ...         super().__init__()
        ...         self.n_head, self.qkv, self.proj = n_head, torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        ...     def forward(self, x):
        ...         B, T, C = x.size()
        ...         q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        ...                    for t in self.qkv(x).split(C, dim=2))
        ...         y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        ...         return self.proj(y.transpose(1, 2).reshape(B, T, C))
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), Attn(), torch.nn.Linear(8, 3))
        >>> wide = netgraft.widen(m, {"0": 16}, example_inputs=(torch.randn(2, 5, 4),), seed=0)
        >>> wide[1].n_head, wide[1].qkv.out_features
        (4, 48)
        >>> wide = netgraft.widen(m, {"1:n_head": 3}, example_inputs=(torch.randn(2, 5, 4),), heads={"1": "n_head"})
        >>> wide[1].n_head, wide[0].out_features
        (3, 12)
    """
    check_model(model, "widen")
    seed = resolve_seed(seed)
    if isinstance(noise, bool) or not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise InvalidRequestError(f"noise must be a finite number >= 0, got {noise!r}")
    if config_sizes:  # shorthand for a ConfigSizes request
        if widths is not None:
            raise InvalidRequestError("widen: give `widths` or config sizes, not both")
        unknown = set(config_sizes) - set(WIDTH_FIELDS)
        if unknown:
            raise InvalidRequestError(f"widen: unknown config sizes {sorted(unknown)}; known: {list(WIDTH_FIELDS)}")
        widths = ConfigSizes(**config_sizes)
    if isinstance(widths, ConfigSizes):  # the family front end: planned from the config, no trace
        if not hf.is_hf_model(model):
            raise InvalidRequestError(f"widen: ConfigSizes (config sizes) apply to Hugging Face models only; got "
                                      f"{type(model).__name__}: name the modules to grow instead")
        if heads is not None:
            raise InvalidRequestError("widen: heads= applies to traced widening (widths as a dict or a factor); a "
                                      "ConfigSizes request takes num_attention_heads / num_key_value_heads")
        if set(widths.given()) - set(WIDTH_FIELDS):
            raise InvalidRequestError(f"widen: {widths} changes depth; use deepen for num_hidden_layers")
        return hf.widen_hf(model, seed=seed, noise=float(noise), probe_inputs=example_inputs, check=check,
                           **widths.given())
    if widths is None or example_inputs is None:
        raise InvalidRequestError("widen needs `widths` and `example_inputs` (or, for a Hugging Face model, a "
                                  "ConfigSizes)")
    return _widen_traced(model, widths, example_inputs, float(noise), seed, check, heads)


def _widen_traced(model: nn.Module, widths: dict[str, int] | float, example_inputs: Any, noise: float,
                  seed: int | None, check: bool, heads: dict[str, str] | None = None) -> nn.Module:
    """The traced front end: trace -> couple -> plan -> apply -> certify."""
    coupling = couple(model, example_inputs, heads)
    planner = plan_widths(coupling, widths)
    maps = SpaceMaps(planner.build_maps(seed), noise, seed)
    result = build_model(coupling, maps, lambda s: total_size(s, planner.sizes))
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
    if check and not cert.passed:
        raise NotPreservedError(f"widen did not preserve the function: {cert}")
    return result
