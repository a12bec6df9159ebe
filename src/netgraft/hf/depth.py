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


def deepen_state(model: nn.Module, family: Family, old_layers: int, new_layers: int) -> dict[str, torch.Tensor]:
    """The state dict with the inserted layers: copies of the layer before each, made identities by the recipe."""
    after = insertion_points(old_layers, new_layers)
    layer_re = _layer_re(family)
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    prefix, rest = "", {}
    for name, t in model.state_dict().items():
        m = layer_re.fullmatch(name)
        if m:
            prefix = m.group(1)
            per_layer.setdefault(int(m.group(2)), {})[m.group(3)] = t.detach()
        else:
            rest[name] = t.detach()
    if sorted(per_layer) != list(range(old_layers)):
        raise HFError(f"the {family.name} model's layers are {sorted(per_layer)[:8]}, not 0..{old_layers - 1}")
    tail = family.layers.split("{i}")[1]
    out = dict(rest)
    j = 0
    for i in range(old_layers):
        layer = dict(per_layer[i])
        inserts = after.count(i)
        post = family.depth.post_norm
        if post is not None and inserts:  # the previous layer's last norm hands its affine to the last new layer
            carried = (layer[f"{post[1]}.weight"], layer[f"{post[1]}.bias"])
            layer[f"{post[1]}.weight"], layer[f"{post[1]}.bias"] = torch.ones_like(carried[0]), torch.zeros_like(
                carried[1])
        for k, v in layer.items():
            out[f"{prefix}{j}{tail}{k}"] = v.clone()
        j += 1
        for n in range(inserts):
            new = {k: v.clone() for k, v in per_layer[i].items()}
            for k in family.depth.zero:
                if k in new:
                    new[k].zero_()
            if post is not None:
                new[f"{post[0]}.weight"].fill_(1.0)
                new[f"{post[0]}.bias"].zero_()
                last = n == inserts - 1
                new[f"{post[1]}.weight"] = carried[0].clone() if last else torch.ones_like(carried[0])
                new[f"{post[1]}.bias"] = carried[1].clone() if last else torch.zeros_like(carried[1])
            for k, v in new.items():
                out[f"{prefix}{j}{tail}{k}"] = v
            j += 1
    return out
