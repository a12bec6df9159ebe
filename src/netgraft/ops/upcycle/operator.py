"""`upcycle`: a dense model into a mixture of experts, or an MoE into more experts, computing the same function."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ... import hf
from ...core.certify import Certificate, Reference, certify
from ...core.guards import check_model
from ...core.probes import make_probes
from ...core.rng import resolve_seed
from ...errors import InvalidRequestError, NotPreservedError
from ...hf.upcycle import upcycle_changes, upcycle_hf
from .generic import upcycle_modules


@dataclass
class UpcycleReport:
    """What `upcycle` did: each MoE layer's change, whether the chosen options are exact, and the certificate (for a
    labelled non-exact option, the measured difference: `certificate.max_abs`, never enforced)."""

    certificate: Certificate
    exact: bool
    changes: list[tuple[str, str]] = field(default_factory=list)  # (module or layers, what it became)
    config: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # Hugging Face: config key -> (old, new)
    inexact: list[str] = field(default_factory=list)  # the non-exact options chosen

    def __str__(self) -> str:
        lines = [f"  {where}: {what}" for where, what in self.changes]
        lines += [f"  {k}: {a} -> {b}" for k, (a, b) in self.config.items()]
        label = "exact" if self.exact else f"NOT exact by choice ({', '.join(self.inexact)})"
        head = f"upcycled ({label}):"
        return "\n".join([head, *lines, f"certificate: {self.certificate}"])


def _fraction(value: Any, name: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or \
            not 0 <= value <= high:
        raise InvalidRequestError(f"upcycle: {name} must be a number in [0, {high}], got {value!r}")
    return float(value)


def upcycle(model: nn.Module, num_experts: int, top_k: int | None = None, granularity: int = 1, *,
            layers: list[int] | None = None, modules: str | list[str] | None = None, split: str | None = None,
            shared_expert: str = "zero", exact: bool = True, noise: float | None = None, drop: float = 0.0,
            expert_noise: float = 0.0, router_std: float = 0.02, config: dict[str, Any] | None = None,
            example_inputs: Any = None, seed: int | None = None, check: bool = True) -> nn.Module:
    """Return a mixture-of-experts copy of `model` that computes the same function ("sparse upcycling"). `model` is
    not modified.

    Args:
        model: a Hugging Face model of a dense family with an MoE sibling (Llama/Mistral -> Mixtral, Qwen2 ->
            Qwen2-MoE, Qwen3 -> Qwen3-MoE: the result is a plain model of the target class, e.g.
            MixtralForCausalLM), an MoE model of those families (-> more experts), or any `nn.Module` with
            `modules` naming its feed-forward modules (each becomes netgraft's `MoE` module).
        num_experts: routed experts per MoE layer in the result.
        top_k: experts each token uses. Dense -> E: any multiple of `granularity` up to `num_experts` is exact
            (the selected weights are renormalised to sum to one and every expert computes the dense FFN). E -> mE:
            default and only exact value m x the old top-k (whole groups are selected).
        granularity: dense -> E only: each expert is 1/G of the dense FFN (its down-projection x G) and the router
            selects groups of G segments (top_k a multiple of G): fine-grained experts, the same active compute as
            top_k / G copies.
        layers: Hugging Face: the layer indices to upcycle (default all; the others keep their dense FFN, which
            Qwen2-MoE and Qwen3-MoE record in `mlp_only_layers`; Mixtral has no dense layers).
        modules: fnmatch pattern(s) of the FFN modules of a model that is not a Hugging Face family
            (``"layers.*.mlp"``); needs `example_inputs`.
        split: E -> mE: ``"copies"`` (default: each expert m times, the copies' down-projections split in shares
            summing to m, exact) or ``"segments"`` (each expert cut into m slices of its units, down-projection x m:
            exact with the same active compute).
        shared_expert: Qwen2-MoE from dense: ``"zero"`` (default: a copy of the dense FFN with a zero
            down-projection; the routed experts carry the function) or ``"dense"`` (the shared expert carries it:
            down-projection x2 against sigmoid(0) = 1/2, routed experts' down-projections 0).
        exact: False allows a top_k that does not keep the function (Expert Upcycling's fixed top-k); the report
            then carries the measured difference instead of enforcing the bound.
        noise: E -> mE copies: the element-wise split of their down-projections (exact, as in `widen`; it lets the
            copies drift apart). Default 0.5 for float32/float64 experts, 0 (power-of-two per-copy shares) for half
            precision.
        drop: labelled non-exact: Drop-Upcycling - re-initialise this fraction of every expert's intermediate units.
        expert_noise: labelled non-exact: add ``expert_noise x std`` Gaussian noise to every expert's weights.
        router_std: generic path: the new router's init std (Hugging Face: the config's initializer_range).
        config: Hugging Face: further settings of the target config (e.g. ``{"router_aux_loss_coef": 0.01}``);
            the expert counts, sizes and ``norm_topk_prob`` are the request's.
        example_inputs: inputs to certify on (required for the generic path; Hugging Face: token ids drawn if None).
        seed: seeds the routers, the copies' split and the non-exact variants (None: one draw from torch's global
            generator).
        check: raise `NotPreservedError` if an exact upcycling's certificate fails (default).

    The result carries ``result.netgraft_report`` (`UpcycleReport`: the layers changed, exactness, certificate).

    Example:
        >>> import torch, transformers, netgraft
        >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
        >>> moe = netgraft.upcycle(transformers.LlamaForCausalLM(cfg), num_experts=8, top_k=2, seed=0)
        >>> type(moe).__name__, moe.config.num_local_experts, moe.netgraft_report.certificate.passed
        ('MixtralForCausalLM', 8, True)

        Any model: name its feed-forward modules.

        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sequential(
        ...     torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)), torch.nn.Linear(8, 2))
        >>> moe = netgraft.upcycle(net, num_experts=4, top_k=2, granularity=2, modules="1",
        ...                        example_inputs=(torch.randn(16, 4),), seed=0)
        >>> moe[1].num_experts, moe[1].top_k, moe[1].experts[0][2].in_features, moe.netgraft_report.exact
        (4, 2, 16, True)
    """
    check_model(model, "upcycle")
    seed = resolve_seed(seed)
    drop = _fraction(drop, "drop", 1.0)
    expert_noise = _fraction(expert_noise, "expert_noise", math.inf)
    if noise is not None:
        noise = _fraction(noise, "noise", math.inf)
    inexact = [f"drop={drop} (Drop-Upcycling)"] * bool(drop) + [f"expert_noise={expert_noise}"] * bool(expert_noise)
    if modules is not None or not hf.is_hf_model(model):
        if modules is None:
            raise InvalidRequestError(f"upcycle: {type(model).__name__} is not a Hugging Face model of a known "
                                      f"family; name its feed-forward modules, e.g. modules='layers.*.mlp'")
        if layers is not None or config is not None or shared_expert != "zero":
            raise InvalidRequestError("upcycle: layers=, config= and shared_expert= apply to Hugging Face models; "
                                      "select modules with the `modules` pattern")
        result, changes = upcycle_modules(model, modules, num_experts=num_experts, top_k=top_k,
                                          granularity=granularity, split=split, exact=exact,
                                          example_inputs=example_inputs, seed=seed, noise=noise,
                                          router_std=router_std, drop=drop, expert_noise=expert_noise)
        inexact += [f"top_k={top_k} (fixed top-k)"] * any("top-" in c and not exact for _, c in changes)
        cert = certify(Reference(model, make_probes(example_inputs)), result)
        report = UpcycleReport(cert, not inexact, changes, inexact=inexact)
    else:
        result, plan, cert = upcycle_hf(model, probe_inputs=example_inputs, num_experts=num_experts, top_k=top_k,
                                        granularity=granularity, layers=layers, split=split, exact=exact,
                                        shared_expert=shared_expert, seed=seed, noise=noise, drop=drop,
                                        expert_noise=expert_noise, overrides=config)
        inexact += [f"top_k={plan.experts.top_k} (fixed top-k)"] * (not plan.experts.exact)
        changed = upcycle_changes(plan)
        where = f"layers {plan.layers}" if len(plan.layers) < model.config.num_hidden_layers else "every layer"
        report = UpcycleReport(cert, not inexact, [(where, plan.experts.describe())], changed, inexact)
    result.netgraft_report = report
    if check and report.exact and not cert.passed:
        raise NotPreservedError(f"upcycle did not preserve the function: {cert}")
    return result
