"""Upcycling Hugging Face models: a dense family into its mixture-of-experts sibling, or an MoE into more experts.

The targets are data (`TARGETS`: the config keys each MoE family reads) and so is the pairing (`UPCYCLE_TO`). The
plan (`UpcyclePlan`) produces every tensor of the target model by name from the source's tensors, one at a time, so
the in-memory path (`upcycle_hf`) and the streaming path (`netgraft.hf.stream`) run the same code:

- attention, norms, embeddings, heads, and the FFNs of layers that stay dense: copied under the same name;
- the MoE layers (model names, transformers 5's fused layout): ``mlp.gate.weight`` (E, H),
  ``mlp.experts.gate_up_proj`` (E, 2I, H), ``mlp.experts.down_proj`` (E, H, I), and Qwen2-MoE's shared expert -
  through the rules of `netgraft.core.experts`.

Qwen2-MoE's shared expert (sigmoid-gated) starts as a copy of the dense FFN whose down-projection is 0 (default,
``shared_expert="zero"``: the routed experts carry the function, the shared one starts silent and learns), or carries
the dense FFN (``"dense"``: down-projection x2 against sigmoid(0) = 1/2 from a zero gate row, routed experts' down-
projections 0). Both are exact.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.experts import (
    ExpertPlan,
    copies_down,
    dense_to_stacked,
    drop_units_,
    grouped_router,
    perturb_,
    plan_experts,
    repeat_experts,
    segment_columns,
    segment_rows,
    tile_experts,
)
from ..errors import InvalidRequestError
from .errors import HFError
from .front import certify, family_of
from .front import probe_inputs as default_probe_inputs
from .tensors import build_like, output_name, tensor_generator, tied


@dataclass(frozen=True)
class MoETarget:
    """What netgraft needs to know about one transformers MoE family: its config keys and class prefix."""

    model_type: str
    prefix: str  # class name prefix: MixtralForCausalLM
    experts: str  # config key: routed experts
    expert_ffn: str  # config key: one routed expert's intermediate size
    renormalise: str | None = None  # config key that must be True for exact top-k weights (None: always renormalised)
    shared_ffn: str | None = None  # config key: the shared expert's intermediate size
    dense_layers: str | None = None  # config key listing layers whose FFN stays dense
    off: dict[str, Any] = field(default_factory=dict)  # settings that would break exactness, forced off


TARGETS = {
    "mixtral": MoETarget("mixtral", "Mixtral", "num_local_experts", "intermediate_size",
                         off={"router_jitter_noise": 0.0}),
    "qwen2_moe": MoETarget("qwen2_moe", "Qwen2Moe", "num_experts", "moe_intermediate_size", "norm_topk_prob",
                           "shared_expert_intermediate_size", "mlp_only_layers", off={"decoder_sparse_step": 1}),
    "qwen3_moe": MoETarget("qwen3_moe", "Qwen3Moe", "num_experts", "moe_intermediate_size", "norm_topk_prob",
                           dense_layers="mlp_only_layers", off={"decoder_sparse_step": 1}),
}
UPCYCLE_TO = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe",
              "mixtral": "mixtral", "qwen2_moe": "qwen2_moe", "qwen3_moe": "qwen3_moe"}
SHARED_EXPERT = ("zero", "dense")
_MLP = "mlp."  # transformers 5 names the FFN of every layer of these families `mlp`
_LAYER_FFN = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(.+)$")


def target_for(config: Any) -> MoETarget:
    model_type = getattr(config, "model_type", None)
    if model_type not in UPCYCLE_TO:
        raise HFError(f"upcycle: no mixture-of-experts target for model_type '{model_type}'; supported: "
                      f"{', '.join(f'{a} -> {b}' for a, b in UPCYCLE_TO.items())} (or give the FFN modules' paths, "
                      f"e.g. modules='model.layers.*.mlp', for netgraft's own MoE module)")
    return TARGETS[UPCYCLE_TO[model_type]]


def target_class(source_cls: type, target: MoETarget) -> type:
    import transformers

    name = source_cls.__name__
    cut = min(i for i in (name.find("For"), name.find("Model"), len(name)) if i >= 0)
    wanted = target.prefix + name[cut:]
    cls = getattr(transformers, wanted, None)
    if cls is None:
        raise HFError(f"upcycle: {name} has no {target.model_type} counterpart ({wanted} is not in transformers)")
    return cls


@dataclass
class UpcyclePlan:
    """Everything to produce the target's tensors by name (see the module docstring)."""

    config: Any  # the source's
    target: MoETarget
    experts: ExpertPlan
    layers: list[int]  # the layers that are (or become) MoE layers
    new_config: Any
    shared_expert: str
    seed: int
    noise: float  # split noise of E -> mE copies (exact)
    router_std: float
    drop: float = 0.0  # labelled non-exact: Drop-Upcycling fraction
    expert_noise: float = 0.0  # labelled non-exact: relative noise on the experts
    units: int = 0  # intermediate size of one source expert (or the dense FFN)

    @property
    def exact(self) -> bool:
        return self.experts.exact and not self.drop and not self.expert_noise

    def layer_of(self, name: str) -> tuple[int, str] | None:
        """(layer, the name after ``mlp.``) for a tensor of an MoE layer's FFN, else None."""
        found = _LAYER_FFN.search(name)
        if found is None or int(found.group(1)) not in self.layers:
            return None
        return int(found.group(1)), found.group(2)

    def dtype_source(self, name: str) -> str:
        """The source tensor whose dtype the target's tensor `name` keeps (a new expert tensor: its dense FFN's)."""
        where = self.layer_of(name)
        if where is None or not self.experts.dense:
            return name  # copied, or an MoE tensor of the same name
        return name[: len(name) - len(where[1])] + "down_proj.weight"

    def produce(self, name: str, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """The target's tensor `name`, from the source's tensors `get(source name)`."""
        where = self.layer_of(name)
        if where is None:
            return get(name).detach().clone()
        layer, leaf = where
        prefix = name[: len(name) - len(leaf)]  # "...layers.{i}.mlp."
        with torch.no_grad():
            if self.experts.dense:
                return self._from_dense(prefix, leaf, get)
            return self._from_experts(prefix, leaf, get)

    def _dense_stack(self, prefix: str, get: Callable[[str], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        gate_up, down = dense_to_stacked(get(prefix + "gate_proj.weight"), get(prefix + "up_proj.weight"),
                                         get(prefix + "down_proj.weight"))  # (1, 2I, H), (1, H, I)
        if self.experts.per > 1:
            gate_up, down = segment_rows(gate_up, self.experts.per), segment_columns(down, self.experts.per)
        return gate_up, down

    def _from_dense(self, prefix: str, leaf: str, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
        plan, groups = self.experts, self.experts.groups
        if leaf == "gate.weight":
            ref = get(prefix + "gate_proj.weight")  # (I, H)
            gen = tensor_generator(self.seed, prefix + leaf)
            rows = torch.randn(groups, ref.shape[1], generator=gen, dtype=torch.float64) * self.router_std
            return grouped_router(rows, plan.per).to(ref)  # (E, H), the source's dtype and device
        if leaf.startswith("experts."):
            gate_up, down = self._dense_stack(prefix, get)
            both = [tile_experts(gate_up, groups), tile_experts(down, groups)]  # (E, 2I/G, H), (E, H, I/G)
            self._perturb(prefix, both)
            if self.shared_expert == "dense" and self.target.shared_ffn:
                both[1].zero_()  # the shared expert carries the function
            return both[0] if leaf == "experts.gate_up_proj" else both[1]
        if leaf.startswith("shared_expert.") and leaf.endswith("_proj.weight"):
            proj = leaf[len("shared_expert."):]
            t = get(prefix + proj).detach().clone()
            if proj == "down_proj.weight":
                t = t * 2 if self.shared_expert == "dense" else torch.zeros_like(t)
            return t
        if leaf == "shared_expert_gate.weight":
            ref = get(prefix + "gate_proj.weight")  # (I, H)
            return ref.new_zeros(1, ref.shape[1])  # sigmoid(0) = 1/2
        raise HFError(f"upcycle: the {self.target.model_type} tensor '{prefix}{leaf}' has no rule (netgraft knows "
                      f"gate.weight, experts.gate_up_proj, experts.down_proj and the shared expert)")

    def _from_experts(self, prefix: str, leaf: str, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
        plan = self.experts
        if leaf == "gate.weight":
            return repeat_experts(get(prefix + leaf), plan.per)  # (mE, H): equal rows inside each group
        if leaf in ("experts.gate_up_proj", "experts.down_proj"):
            gate_up, down = get(prefix + "experts.gate_up_proj"), get(prefix + "experts.down_proj")
            if plan.split == "segments":
                both = [segment_rows(gate_up, plan.per), segment_columns(down, plan.per)]
            else:
                gen = tensor_generator(self.seed, prefix + "experts.down_proj")
                both = [repeat_experts(gate_up, plan.per), copies_down(down, plan.per, self.noise, gen, prefix)]
            self._perturb(prefix, both)
            return both[0] if leaf == "experts.gate_up_proj" else both[1]
        return get(prefix + leaf).detach().clone()  # the shared expert and its gate: unchanged

    def _perturb(self, prefix: str, both: list[torch.Tensor]) -> None:
        """The labelled non-exact variants, seeded per layer (the same for gate|up and down, whichever comes first)."""
        if self.drop:
            drop_units_(both[0], both[1], self.drop, tensor_generator(self.seed, prefix + "drop"))
        if self.expert_noise:
            gen = tensor_generator(self.seed, prefix + "expert_noise")
            perturb_(both[0], self.expert_noise, gen)
            perturb_(both[1], self.expert_noise, gen)


def _layers(config: Any, target: MoETarget, layers: Any) -> tuple[list[int], list[int]]:
    """(MoE layers after upcycling, layers that stay dense)."""
    n = config.num_hidden_layers
    already = [i for i in range(n) if i not in (getattr(config, target.dense_layers, None) or [])] \
        if target.dense_layers else list(range(n))
    if layers is None:
        chosen = already if config.model_type in TARGETS else list(range(n))
    else:
        chosen = sorted({int(i) for i in layers})
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise InvalidRequestError(f"upcycle: layers {bad} out of range (the model has {n} layers: 0..{n - 1})")
    if not chosen:
        raise InvalidRequestError("upcycle: no layer selected")
    if config.model_type in TARGETS and set(chosen) - set(already):
        raise InvalidRequestError(f"upcycle: layers {sorted(set(chosen) - set(already))} of this "
                                  f"{config.model_type} model are dense (mlp_only_layers); an MoE model grows the "
                                  f"experts of its MoE layers {already}")
    dense = [i for i in range(n) if i not in chosen]
    if dense and not target.dense_layers:
        raise InvalidRequestError(f"upcycle: {target.model_type} has no dense layers (every layer is an MoE layer), "
                                  f"so layers={chosen} cannot leave {dense} dense; upcycle every layer, or use the "
                                  f"generic path (modules='model.layers.N.mlp', netgraft's own MoE module)")
    return chosen, dense


def plan_upcycle(config: Any, state: Callable[[str], tuple[tuple[int, ...], torch.dtype]], *, num_experts: Any,
                 top_k: Any, granularity: Any, layers: Any = None, split: str | None = None, exact: bool = True,
                 shared_expert: str = "zero", seed: int, noise: float | None = None, drop: float = 0.0,
                 expert_noise: float = 0.0, overrides: dict[str, Any] | None = None) -> UpcyclePlan:
    """Check the request against the config (and the tensors' shapes and dtypes, `state(name)`) and plan it."""
    import transformers

    target = target_for(config)
    moe_source = config.model_type in TARGETS
    chosen, dense = _layers(config, target, layers)
    if shared_expert not in SHARED_EXPERT:
        raise InvalidRequestError(f"upcycle: shared_expert must be one of {SHARED_EXPERT}, got {shared_expert!r}")
    if shared_expert != "zero" and not (target.shared_ffn and config.model_type not in TARGETS):
        raise InvalidRequestError(f"upcycle: shared_expert='{shared_expert}' applies to a dense model upcycled into "
                                  f"a family with a shared expert (qwen2 -> qwen2_moe), not {config.model_type} -> "
                                  f"{target.model_type}")
    if moe_source:
        old = getattr(config, target.experts)
        plan = plan_experts(num_experts, top_k, granularity, old=old, old_top_k=config.num_experts_per_tok,
                            split=split, exact=exact)
        units = getattr(config, target.expert_ffn)
    else:
        plan = plan_experts(num_experts, top_k, granularity, split=split, exact=exact)
        units = config.intermediate_size
    where = f"layer {chosen[0]}'s FFN ({units} units)"
    plan.check_units(units, where)
    base = _base_prefix(config, state, chosen[0])
    probe = base + ("experts.down_proj" if moe_source else "down_proj.weight")
    dtype = state(probe)[1]
    plan.check_dtype(dtype, where)
    for key, value in target.off.items():
        if moe_source and getattr(config, key, value) != value:
            raise InvalidRequestError(f"upcycle: {key}={getattr(config, key)} on the source makes it "
                                      f"{'random in training' if 'jitter' in key else 'layer-dependent'}; set "
                                      f"{key}={value} on its config first")
    overrides = dict(overrides or {})
    if target.renormalise and overrides.get(target.renormalise, True) is not True and plan.dense:
        raise InvalidRequestError(f"upcycle: {target.renormalise}=False would not renormalise the selected experts' "
                                  f"weights, and identical experts then do not add up to the dense FFN; "
                                  f"{target.model_type} upcycles exactly with {target.renormalise}=True only")
    reserved = {target.experts, "num_experts_per_tok", target.expert_ffn, target.shared_ffn, target.dense_layers}
    if clash := sorted(set(overrides) & reserved):
        raise InvalidRequestError(f"upcycle: {clash} are set by the request (num_experts, top_k, granularity, "
                                  f"layers), not by overrides")
    if moe_source:
        new = copy.deepcopy(config)
    else:
        keep = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures",
                                                                      "transformers_version")}
        new = transformers.AutoConfig.for_model(target.model_type, **keep)
        new.architectures = None
        new.intermediate_size = config.intermediate_size  # the dense layers' size (Mixtral: overwritten below)
        for key, value in target.off.items():
            setattr(new, key, value)
        if target.renormalise:
            setattr(new, target.renormalise, True)
        if target.shared_ffn:
            setattr(new, target.shared_ffn, config.intermediate_size)
    setattr(new, target.experts, plan.new)
    new.num_experts_per_tok = plan.top_k
    setattr(new, target.expert_ffn, units // plan.per if plan.split == "segments" else units)
    if target.dense_layers:
        setattr(new, target.dense_layers, dense)
    for key, value in overrides.items():
        setattr(new, key, value)
    share_noise = (0.5 if dtype in (torch.float32, torch.float64) else 0.0) if noise is None else float(noise)
    return UpcyclePlan(config, target, plan, chosen, new, shared_expert, seed, share_noise,
                       float(getattr(config, "initializer_range", 0.02)), float(drop), float(expert_noise), units)


def _base_prefix(config: Any, state: Callable[[str], Any], layer: int) -> str:
    for base in ("model.", "", "transformer."):
        name = f"{base}layers.{layer}.{_MLP}"
        try:
            state(name + ("experts.down_proj" if config.model_type in TARGETS else "down_proj.weight"))
            return name
        except KeyError:
            continue
    raise HFError(f"upcycle: no FFN tensors found for layer {layer} (expected "
                  f"'model.layers.{layer}.mlp.down_proj.weight' or the fused experts)")


def check_names(plan: UpcyclePlan, source_names: dict[str, tuple[int, ...]],
                target_names: dict[str, tuple[int, ...]]) -> None:
    """Every source tensor outside the upcycled FFNs lands on a target tensor of the same shape (so nothing the
    source computes with - an attention bias the target class lacks - is silently dropped), and every target
    tensor outside them comes from one."""
    plain_src = {n: s for n, s in source_names.items() if plan.layer_of(n) is None}
    plain_dst = {n: s for n, s in target_names.items() if plan.layer_of(n) is None}
    lost = sorted(set(plain_src) - set(plain_dst))
    missing = sorted(set(plain_dst) - set(plain_src))
    wrong = sorted(n for n in set(plain_src) & set(plain_dst) if tuple(plain_src[n]) != tuple(plain_dst[n]))
    if lost or missing or wrong:
        parts = [f"the target has no {lost[:3]}" * bool(lost), f"the source has no {missing[:3]}" * bool(missing),
                 f"shapes differ for {wrong[:3]}" * bool(wrong)]
        raise HFError(f"upcycle: {plan.target.model_type} cannot hold this {plan.config.model_type} model exactly: "
                      f"{'; '.join(p for p in parts if p)} (e.g. attention_bias or mlp_bias set on the source)")
    for name in source_names:
        where = plan.layer_of(name)
        if where is not None and plan.experts.dense and not name.endswith(("gate_proj.weight", "up_proj.weight",
                                                                           "down_proj.weight")):
            raise HFError(f"upcycle: '{name}' (an FFN bias, mlp_bias=True) has no place in {plan.target.model_type}'s "
                          f"experts; upcycle a model without FFN biases, or use the generic path")


def upcycle_state(model: nn.Module, plan: UpcyclePlan, target: nn.Module) -> dict[str, torch.Tensor]:
    """The target's state dict (without a tied output weight), produced from `model`'s tensors by the plan."""
    source = model.state_dict()
    names = {n: tuple(t.shape) for n, t in target.state_dict().items()}
    check_names(plan, {n: tuple(t.shape) for n, t in source.items()}, names)
    skip = output_name(target) if tied(target) else None

    def get(name: str) -> torch.Tensor:
        if name not in source:
            raise HFError(f"upcycle: the source has no tensor '{name}'")
        return source[name]
    return {n: plan.produce(n, get) for n in names if n != skip}


def upcycle_changes(plan: UpcyclePlan) -> dict[str, tuple[Any, Any]]:
    """The config keys the upcycling changed: key -> (source's value, result's)."""
    keys = [plan.target.experts, "num_experts_per_tok", plan.target.expert_ffn, plan.target.dense_layers,
            plan.target.renormalise, "model_type"]
    return {k: (getattr(plan.config, k, None), getattr(plan.new_config, k, None)) for k in keys
            if k and getattr(plan.config, k, None) != getattr(plan.new_config, k, None)}


def upcycle_hf(model: nn.Module, *, probe_inputs: Any = None, **request: Any) -> tuple[nn.Module, UpcyclePlan, Any]:
    """The in-memory path for Hugging Face models: (the upcycled model of the target class, the plan, its
    certificate); see `netgraft.upcycle`."""
    state = model.state_dict()
    plan = plan_upcycle(model.config, lambda n: (tuple(state[n].shape), state[n].dtype), **request)
    cls = target_class(type(model), plan.target)
    with torch.device("meta"):
        skeleton = cls(plan.new_config)
    new = build_like(model, plan.new_config, upcycle_state(model, plan, skeleton), family_of(model), cls=cls)
    inputs = probe_inputs if probe_inputs is not None else default_probe_inputs(model, family_of(model))
    return new, plan, certify(model, new, inputs, None)
