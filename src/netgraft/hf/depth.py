"""Deepen a Hugging Face model in config terms: new layers spread evenly, each starting as an identity by the family's
recipe (`Depth`), per-layer config fields extended, refused where depth changes what existing layers compute."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..families.schema import Family
from .errors import HFError

# Config fields holding one value per layer: an inserted layer is a copy of the layer before it, so it takes that
# layer's value. Any other list as long as the layer count is refused (its meaning for new layers is unknown).
PER_LAYER_FIELDS = ("layer_types",)
# Config switches under which a layer's computation depends on its position: inserting layers would change what
# the existing layers compute.
DEPTH_DEPENDENT = {"scale_attn_by_inverse_layer_idx": "GPT-2 scales each layer's attention by 1 / (layer index + 1)"}


def insertion_points(old_layers: int, new_layers: int) -> list[int]:
    """After which old layer each new layer goes, spread evenly: 6 -> 12 one after every layer, 4 -> 6 after layers 1
    and 3, 6 -> 18 two after every layer."""
    extra = new_layers - old_layers
    return [-(-(i + 1) * old_layers // extra) - 1 for i in range(extra)]


def depth_config(config: Any, old_layers: int, new_layers: int) -> dict[str, list]:
    """The per-layer config fields extended for the inserted layers, or HFError naming a field that follows depth in
    a way netgraft cannot extend."""
    for key, why in DEPTH_DEPENDENT.items():
        if getattr(config, key, False):
            raise HFError(f"config.{key}=True: {why}, so inserted layers would change the existing layers' outputs; "
                          f"netgraft cannot deepen this model exactly")
    after = insertion_points(old_layers, new_layers)
    extended = {}
    for key, value in vars(config).items():
        if not isinstance(value, (list, tuple)) or len(value) != old_layers or key.startswith("_"):
            continue
        if key not in PER_LAYER_FIELDS:
            raise HFError(f"config.{key} holds {old_layers} entries, one per layer, and netgraft does not know what a "
                          f"new layer's entry should be; deepening is refused rather than guessed (known per-layer "
                          f"fields: {', '.join(PER_LAYER_FIELDS)})")
        extended[key] = [v for i, v in enumerate(value) for _ in range(1 + after.count(i))]
    return extended


def _layer_re(family: Family) -> re.Pattern:
    prefixes = "|".join(re.escape(b) for b in family.base)
    before, after = family.layers.split("{i}")
    return re.compile(rf"((?:{prefixes})?{re.escape(before)})(\d+){re.escape(after)}(.*)")


def depth_sources(names: list[str], family: Family, old_layers: int, new_layers: int) -> dict[str, tuple[str, str]]:
    """For every tensor of the deeper model: (the source tensor it comes from, how) with how "copy", "zero" (a
    zeroed branch output) or "one" (a unit norm gain). Inserted layers copy the layer before them and are made
    identities by the family's recipe (see `Depth`). A mapping, not tensors: the streaming path produces each tensor
    when it is needed."""
    after = insertion_points(old_layers, new_layers)
    layer_re = _layer_re(family)
    per_layer: dict[int, list[str]] = {}
    prefix, out = "", {}
    for name in names:
        m = layer_re.fullmatch(name)
        if m:
            prefix = m.group(1)
            per_layer.setdefault(int(m.group(2)), []).append(m.group(3))
        else:
            out[name] = (name, "copy")
    if sorted(per_layer) != list(range(old_layers)):
        raise HFError(f"the {family.name} model's layers are {sorted(per_layer)[:8]}, not 0..{old_layers - 1}")
    tail = family.layers.split("{i}")[1]
    post = family.depth.post_norm

    def how(rel: str, inserted: bool, last: bool, has_inserts: bool) -> str:
        if post is not None and rel.startswith(f"{post[1]}.") and has_inserts and not (inserted and last):
            return "one" if rel.endswith("weight") else "zero"  # the last norm's affine moves to the last insert
        if inserted and post is not None and rel.startswith(f"{post[0]}."):
            return "one" if rel.endswith("weight") else "zero"
        if inserted and rel in family.depth.zero:
            return "zero"
        return "copy"

    j = 0
    for i in range(old_layers):
        inserts = after.count(i)
        for rel in per_layer[i]:
            out[f"{prefix}{j}{tail}{rel}"] = (f"{prefix}{i}{tail}{rel}", how(rel, False, False, inserts > 0))
        j += 1
        for n in range(inserts):
            for rel in per_layer[i]:
                out[f"{prefix}{j}{tail}{rel}"] = (f"{prefix}{i}{tail}{rel}", how(rel, True, n == inserts - 1, True))
            j += 1
    return out


def depth_tensor(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "zero":
        return torch.zeros_like(t)
    if how == "one":
        return torch.ones_like(t)
    return t.detach().clone()


def deepen_state(model: nn.Module, family: Family, old_layers: int, new_layers: int) -> dict[str, torch.Tensor]:
    """The state dict with the inserted layers (see `depth_sources`)."""
    state = model.state_dict()
    sources = depth_sources(list(state), family, old_layers, new_layers)
    return {out: depth_tensor(state[src], how) for out, (src, how) in sources.items()}
