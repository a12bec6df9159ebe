"""The Hugging Face front end: `widen` / `deepen` in config terms for every family in `netgraft.families`.

Same mechanism as the traced front end, planned from the config instead of a trace: `plan` (sizes checked, one
`IndexMap` per growing space, composed by `SpaceMaps`), `tensors` (every tensor through the shared apply kernel, the
result built as a plain model of the same class, ties kept) and the shared certificate (`netgraft.core.certify`:
probes, eval and train mode, cached decoding where the model has a KV cache).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.certify import Certificate, Reference
from ..core.certify import certify as certify_outputs
from ..core.plan import IndexMap
from ..core.probes import make_probes
from ..core.rng import resolve_seed
from ..errors import NotPreservedError
from ..families import family_for
from ..families.schema import Family
from .depth import deepen_state, depth_config
from .errors import HFError
from .plan import REQUEST_FIELDS, Sizes, config_value, plan_widen
from .tensors import build_like, widen_state


def is_hf_model(model: Any) -> bool:
    return hasattr(model, "config") and hasattr(model, "save_pretrained") and isinstance(model, nn.Module)


def family_of(model_or_config: Any) -> Family:
    config = getattr(model_or_config, "config", model_or_config)
    return family_for(getattr(config, "model_type", None))


def new_config(config: Any, family: Family, sizes: Sizes, pad_from: int | None = None) -> Any:
    """The config with the new sizes; with zero padding from `pad_from` features, the norms' epsilon scaled by
    pad_from / hidden (the stream's mean square over the wider stream is that much smaller, epsilon follows it)."""
    cfg = copy.deepcopy(config)
    keys = family.config
    if pad_from is not None:
        for key in keys.eps:
            if getattr(config, key, None) is not None:
                setattr(cfg, key, getattr(config, key) * pad_from / sizes.hidden)
    for names, value in ((keys.hidden, sizes.hidden), (keys.ffn, sizes.ffn), (keys.heads, sizes.heads),
                         (keys.kv, sizes.kv), (keys.layers, sizes.layers), (keys.expert_ffn, sizes.expert_ffn),
                         (keys.shared_ffn, sizes.shared_ffn)):
        for key in names:
            if value is not None and (getattr(config, key, None) is not None or key == names[0]):
                setattr(cfg, key, value)
    if config_value(config, keys.head_dim) is not None:
        setattr(cfg, keys.head_dim[0], sizes.head_dim)  # never derived again from hidden / heads
    return cfg


# -- certificate -----------------------------------------------------------------------------------------------------

class _Outputs:
    """The outputs a Hugging Face model is certified on (logits, last hidden state, pooled output; the cache and
    attentions count through what they produce), remembering their names so that hidden states can be mapped."""

    NAMES = ("logits", "start_logits", "end_logits", "prediction_logits", "seq_relationship_logits",
             "last_hidden_state", "pooler_output")

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, out: Any) -> list[torch.Tensor]:
        self.names = [n for n in self.NAMES if getattr(out, n, None) is not None]
        return [getattr(out, n) for n in self.names]

    def expander(self, hidden_map: IndexMap | None) -> Any:
        """Map a source output to the grown layout where it is a hidden state: copies by the stream's map, zeros
        for padded features (a padded stream's new features are 0 after the final norm); logits never grow."""
        if hidden_map is None:
            return None

        def expand(index: int, y: torch.Tensor) -> torch.Tensor:
            if not self.names[index].endswith("hidden_state") and self.names[index] != "pooler_output":
                return y
            out = y.index_select(-1, torch.from_numpy(hidden_map.src).to(y.device))
            if hidden_map.fresh is not None:
                out[..., torch.from_numpy(hidden_map.fresh).to(y.device)] = 0
            return out
        return expand


def probe_inputs(model: nn.Module, family: Family, batch: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Token ids (or pixels, for vision families) to certify a model on."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    if family.inputs == "pixels":
        size = config.image_size
        return {"pixel_values": torch.randn(batch, config.num_channels, size, size, generator=g).to(device)}
    positions = config_value(config, ("max_position_embeddings", "n_positions"), length)
    ids = torch.randint(0, config.vocab_size, (batch, min(length, positions)), generator=g)
    return {"input_ids": ids.to(device)}


def certify(old: nn.Module, new: nn.Module, inputs: dict[str, torch.Tensor],
            hidden_map: IndexMap | None) -> Certificate:
    """The shared certificate (`netgraft.core.certify`) on the example inputs, fresh ones and one more sequence, in
    eval and train mode (dropout off) and with cached decoding where the model has a KV cache. Half-precision models
    are run in float32 without a float32 copy; every Hugging Face model is held to the float32 bound, because its
    norms compute their statistics in float32 even in a float64 model (LlamaRMSNorm upcasts to float32 only)."""
    outputs = _Outputs()
    reference = Reference(old, make_probes(inputs), float32=True, select=outputs, bound_dtype=torch.float32)
    return certify_outputs(reference, new, expand=outputs.expander(hidden_map))


# -- the verbs -------------------------------------------------------------------------------------------------------

@dataclass
class HFReport:
    """What a Hugging Face growth did: config changes and the certificate."""

    family: str
    changes: dict[str, tuple[int, int]]
    certificate: Certificate
    not_copied: dict[str, str] = field(default_factory=dict)  # side files of a checkpoint left behind, and why

    def __str__(self) -> str:
        lines = [f"{self.family}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items()),
                 f"certificate: {self.certificate}"]
        return "\n".join(lines + [f"not copied: {name} ({why})" for name, why in self.not_copied.items()])


def _finish(model: nn.Module, new: nn.Module, family: Family, old: Sizes, now: Sizes, probe: Any,
            hidden_map: IndexMap | None, check: bool) -> nn.Module:
    inputs = probe if probe is not None else probe_inputs(model, family)
    cert = certify(model, new, inputs, hidden_map)
    names = {**{k: v for k, v in REQUEST_FIELDS.items()}, "num_hidden_layers": "layers"}
    shown = {k: (getattr(old, f), getattr(now, f)) for k, f in names.items()
             if getattr(old, f) is not None and getattr(old, f) != getattr(now, f)}
    new.netgraft_report = HFReport(family.name, shown, cert)
    if check and not cert.passed:
        raise NotPreservedError(f"growing the {family.name} model did not preserve its outputs: {cert}")
    return new


def widen_hf(model: nn.Module, *, seed: int | None = None, noise: float = 0.0, probe_inputs: Any = None,
             check: bool = True, **sizes: int) -> nn.Module:
    """The `widen` path for Hugging Face models (sizes in config terms); see `netgraft.widen`."""
    family = family_of(model)
    plan = plan_widen(model.config, family, sizes, resolve_seed(seed))
    plan.noise = noise  # read axes only: a tied output's split is plain shares on the final norm, never noise
    config = new_config(model.config, family, plan.new, plan.old.hidden if plan.pad else None)
    new = build_like(model, config, widen_state(model, plan), family)
    stream = plan.index_map("stream", plan.old.hidden)
    return _finish(model, new, family, plan.old, plan.new, probe_inputs, stream, check)


def deepen_hf(model: nn.Module, *, num_hidden_layers: int, probe_inputs: Any = None, check: bool = True) -> nn.Module:
    """The `deepen` path for Hugging Face models; see `netgraft.deepen`."""
    family = family_of(model)
    old = Sizes.of(model.config, family)
    now = copy.copy(old)
    now.layers = int(num_hidden_layers)
    if now.layers <= old.layers:
        raise HFError(f"num_hidden_layers {now.layers} must exceed the current {old.layers}")
    if why := family.check_config(model.config, depth=True):
        raise HFError(why)
    config = new_config(model.config, family, now)
    for key, value in depth_config(model.config, old.layers, now.layers).items():
        setattr(config, key, value)
    new = build_like(model, config, deepen_state(model, family, old.layers, now.layers), family)
    return _finish(model, new, family, old, now, probe_inputs, None, check)


def describe(model_or_config: Any) -> dict[str, Any]:
    """Family, sizes and what netgraft can do exactly for this model (used by ``netgraft inspect``)."""
    config = getattr(model_or_config, "config", model_or_config)
    family = family_of(config)
    s = Sizes.of(config, family)
    pad = family.pad_stream or ("" if family.norm == "rms" or family.pre_norm else "post-norm LayerNorm stream")
    info = {
        "family": family.name, "model_type": config.model_type,
        "architectures": getattr(config, "architectures", None), "hidden_size": s.hidden,
        "intermediate_size": s.ffn, "num_attention_heads": s.heads, "num_key_value_heads": s.kv,
        "head_dim": s.head_dim, "num_hidden_layers": s.layers,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "exact": {
            "hidden_size": (f"any size >= {s.hidden} (multiples by replication, others by zero padding)" if not pad
                            else f"integer multiples of {s.hidden} ({pad})"),
            "intermediate_size": f"any size >= {s.ffn} (Net2Net duplication)",
            "num_attention_heads": ("independent of hidden_size (head_dim fixed)" if s.explicit_head_dim(config, family)
                                    else "follows hidden_size (head_dim fixed)"),
            "num_hidden_layers": (f"any number > {s.layers} (pre-norm blocks with zeroed output projections)"
                                  if family.depth.post_norm is None else f"any number > {s.layers} (post-norm "
                                  "identity layers: LayerNorm affine moved, residual branches zeroed; exact up to "
                                  "O(eps))"),
            "head_dim": "never (the q.k scale and rotary embeddings cannot follow exactly)",
        },
    }
    if s.expert_ffn is not None:
        info["moe_intermediate_size"] = s.expert_ffn
    return info

