"""Apply a Hugging Face plan: every tensor of the state dict, matched to its family's table, grown through the shared
apply kernel (`netgraft.core.apply.grow_tensor`), and the grown model built as a plain model of the same class.

Every tensor must be claimed by the table: an unknown one (a head or layer the family does not describe) is refused
by name, never guessed.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.apply import AxisGrowth, grow_tensor
from ..core.trace import owner_of
from ..families.schema import Family
from .errors import HFError
from .plan import WidthPlan


def match(family: Family, name: str) -> tuple[str, tuple[str, ...]]:
    """(the declared name, its axes) for a state-dict tensor, or HFError naming it."""
    for pattern, declared, axes in family.patterns():
        if pattern.fullmatch(name):
            return declared, axes
    raise HFError(f"tensor '{name}' of this {family.name} model has no entry in the family's table (an unknown head "
                  f"or layer type); add it to netgraft/families/{family.name}.py")


def _declared_norm(family: Family, declared: str) -> str | None:
    """"gain" or "bias" when `declared` is a parameter of a norm over a hidden-sized value, else None."""
    module, _, leaf = declared.rpartition(".")
    if module in family.norms or module in family.head_norms:
        return "gain" if leaf == "weight" else "bias"
    return None


def tied(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def output_name(model: nn.Module) -> str | None:
    """The state-dict name of the output layer's weight (lm_head.weight, cls.predictions.decoder.weight...)."""
    out = model.get_output_embeddings()
    path = next((n for n, m in model.named_modules() if m is out), None) if out is not None else None
    return None if path is None else f"{path}.weight"


def tensor_generator(seed: int | None, name: str) -> torch.Generator:
    """The random stream of one tensor (fresh columns, split noise): seeded by the plan's seed and the tensor's name,
    so a tensor is the same whatever order tensors are produced in (in memory, or streamed in a forward's order)."""
    return torch.Generator().manual_seed(((0 if seed is None else seed) * 1_000_003 + zlib.crc32(name.encode()))
                                         % 2**63)


class Widener:
    """Grows one tensor at a time by a `WidthPlan` (the in-memory path maps a whole state dict with it, the streaming
    path the tensors a forward pass asks for)."""

    def __init__(self, plan: WidthPlan, is_tied: bool):
        self.plan, self.is_tied = plan, is_tied

    def __call__(self, name: str, t: torch.Tensor) -> torch.Tensor:
        plan, family = self.plan, self.plan.family
        d, big = plan.old.hidden, plan.new.hidden
        declared, axes = match(family, name)
        if len(axes) != t.dim():
            raise HFError(f"tensor '{name}' has shape {tuple(t.shape)}, but the {family.name} table gives it "
                          f"{len(axes)} axes ({axes})")
        norm = _declared_norm(family, declared)
        one_plus = norm == "gain" and family.norm_gain == "1+w"
        final = norm is not None and declared.rpartition(".")[0] == family.final_norm
        # norm gains: the stream's statistics change by d/D when zero-padded (folded in here), and a tied output
        # layer's split lands on the final norm (it cannot be split in the shared weight)
        gain = np.ones(big)
        if norm == "gain" and plan.pad:
            gain *= math.sqrt(d / big)
        stream = plan.index_map("stream", d)
        if self.is_tied and final and stream is not None:
            gain = gain * stream.frac
        if family.embed_scale and self.is_tied and final and norm == "gain":
            gain = gain * math.sqrt(big / d)  # the tied output reads embeddings scaled by sqrt(d/D) below
        growth: dict[int, AxisGrowth] = {}
        for axis, spec in enumerate(axes):
            m = plan.index_map(spec, t.shape[axis])
            if m is None:
                continue
            summed = spec.startswith("~")
            on_stream = spec.lstrip("~") in ("stream", "pooled")
            fill = "mean" if (spec == "stream" and family.norm == "layer" and norm is None) or norm == "gain" \
                else "zero"
            scale = gain if on_stream and not summed and norm is not None and not np.all(gain == 1) else None
            growth[axis] = AxisGrowth(m, summed=summed, fill=fill, scale=scale)
        if not growth:
            return t.detach().clone()
        source = t.detach() + 1 if one_plus else t.detach()
        new = grow_tensor(source, growth, noise=plan.noise, gen=tensor_generator(plan.seed, name), name=name)
        if one_plus:
            new -= 1
        if family.embed_scale and declared.endswith("embed_tokens.weight") and big != d:
            new.mul_(math.sqrt(d / big))  # the model multiplies embeddings by sqrt(hidden_size): keep the product
        return new


def widen_state(model: nn.Module, plan: WidthPlan) -> dict[str, torch.Tensor]:
    """The grown state dict (without a tied output weight: the tie is restored on the new model)."""
    is_tied = tied(model)
    output = output_name(model) if is_tied else None
    widener = Widener(plan, is_tied)
    return {name: widener(name, t) for name, t in model.state_dict().items() if name != output}


def build_like(model: nn.Module, config: Any, state: dict[str, torch.Tensor], family: Family,
               cls: type | None = None) -> nn.Module:
    """A model of the same class (or `cls`) from `config`, on the meta device (no init), filled with `state`.
    Non-persistent buffers (rotary inv_freq, position ids) are carried over from `model`, except those derived from a
    size that changed (Gemma's embedding scale sqrt(hidden_size)), which are computed again."""
    with torch.device("meta"):
        new = (cls or type(model))(config)
    missing = set(new.state_dict()) - set(state)
    is_tied = tied(new)
    if is_tied:
        missing.discard(output_name(new))
    if missing:
        raise HFError(f"the grown model has tensors netgraft did not fill: {sorted(missing)[:5]}")
    new.load_state_dict(state, strict=False, assign=True)
    if is_tied:
        new.tie_weights()
    persistent = set(new.state_dict())
    old_buffers = dict(model.named_buffers())
    hidden = getattr(config, family.config.hidden[0], None)
    for name, buf in list(new.named_buffers()):
        if name in persistent:
            continue
        src = old_buffers.get(name)
        module, attr = owner_of(new, name)
        if family.embed_scale and attr == "embed_scale" and src is not None:
            module._buffers[attr] = torch.tensor(hidden ** 0.5, dtype=src.dtype, device=src.device)
            continue
        if src is None or src.shape != buf.shape:
            raise HFError(f"non-persistent buffer '{name}' cannot be carried over")
        module._buffers[attr] = src.clone()
    for name, p in new.named_parameters():
        if p.is_meta:
            raise HFError(f"parameter '{name}' was left on the meta device")
    new.train(model.training)
    return new
