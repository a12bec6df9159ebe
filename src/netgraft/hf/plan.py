"""Plan a Hugging Face growth from the config alone: new sizes (checked against what is exact), an `IndexMap` for
every growing space and a `Space` for every named axis, so that the shared `SpaceMaps` composes fused layouts (q|k|v,
gate|up, per-head interleaving) exactly as it does for traced models.

Exact rules (REFERENCE section 4): the stream grows by integer uniform replication (its norms' statistics are
kept), or, to any size, by zero padding: under RMSNorm the writers put 0 in the new features, under a pre-norm
LayerNorm each token's mean; the norms' gains absorb the statistics' factor sqrt(d/D) and their epsilon is scaled by
d/D. Heads keep head_dim (rotary embeddings and the q.k scale stay as they are); with grouped-query attention the
kv heads grow with the query heads, group size fixed. Feed-forward units are duplicated (Net2Net).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import space as sp
from ..core.plan import IndexMap, SpaceMaps
from ..core.space import Space
from ..families.schema import Family
from .errors import HFError


def config_value(config: Any, keys: tuple[str, ...], default: Any = None) -> Any:
    for k in keys:
        v = getattr(config, k, None)
        if v is not None:
            return v
    return default


@dataclass
class Sizes:
    """A family's sizes, read from a config."""

    hidden: int
    ffn: int
    heads: int
    kv: int
    head_dim: int
    layers: int
    expert_ffn: int | None = None
    shared_ffn: int | None = None

    @classmethod
    def of(cls, config: Any, family: Family) -> Sizes:
        keys = family.config
        hidden = config_value(config, keys.hidden)
        heads = config_value(config, keys.heads)
        head_dim = config_value(config, keys.head_dim) or hidden // heads
        ffn = config_value(config, keys.ffn) or 4 * hidden  # GPT-2: n_inner None means 4 x n_embd
        return cls(hidden, ffn, heads, config_value(config, keys.kv, heads), head_dim,
                   config_value(config, keys.layers), config_value(config, keys.expert_ffn),
                   config_value(config, keys.shared_ffn))

    def explicit_head_dim(self, config: Any, family: Family) -> bool:
        """True when head_dim is a config field of its own (else it is hidden / heads and heads follow the stream)."""
        return config_value(config, family.config.head_dim) is not None


# ConfigSizes field -> the Sizes field it sets
REQUEST_FIELDS = {"hidden_size": "hidden", "intermediate_size": "ffn", "num_attention_heads": "heads",
                  "num_key_value_heads": "kv", "moe_intermediate_size": "expert_ffn",
                  "shared_expert_intermediate_size": "shared_ffn"}


@dataclass
class WidthPlan:
    family: Family
    old: Sizes
    new: Sizes
    maps: SpaceMaps
    leaves: dict[str, Space]  # growing base spaces by name
    pad: bool  # the stream is zero-padded (fresh features) rather than replicated
    seed: int | None = None
    noise: float = 0.0
    _fixed: dict[tuple[str, int], Space] = field(default_factory=dict)

    def space(self, name: str, size: int) -> Space:
        """The Space of an axis declared as `name` whose current size is `size` (composites built once)."""
        name = name.lstrip("~")
        if name in self.leaves:
            return self.leaves[name]
        if name == "pooled":
            return self.leaves["stream"]
        spec = self.family.spaces.get(name)
        if spec is not None:
            if name not in self.leaves:
                if spec[0] == "cat":
                    self.leaves[name] = sp.make_composite("sum", [self.space(p, 0) for p in spec[1:]], name)
                elif spec[0] == "per_head":  # (heads, k x head_dim): NeoX's q,k,v interleaved per head
                    count, dim = self.leaves["heads"].parts
                    self.leaves[name] = sp.make_composite("prod", [count, Space(spec[2]), dim], name)
                else:
                    raise HFError(f"family {self.family.name}: unknown composite space {spec}")
            return self.leaves[name]
        return self._fixed.setdefault((name, size), Space(size, origin=name))

    def index_map(self, name: str, size: int) -> IndexMap | None:
        return self.maps.get(self.space(name, size))


def _tile(n: int, new: int) -> IndexMap:
    return IndexMap.copies(np.arange(new) % n, n)


def _net2net(n: int, new: int, rng: np.random.Generator) -> IndexMap:
    return IndexMap.copies(np.concatenate([np.arange(n), rng.integers(0, n, new - n)]), n)


def plan_sizes(config: Any, family: Family, request: dict[str, int]) -> tuple[Sizes, Sizes, bool]:
    """(old sizes, new sizes, whether the stream is zero-padded), the request checked against what is exact for this
    family; nothing is allocated (the CLI checks a result's size with it before loading anything)."""
    old = Sizes.of(config, family)
    if why := family.check_config(config):
        raise HFError(why)
    unknown = [k for k in request if REQUEST_FIELDS[k] in ("expert_ffn", "shared_ffn")
               and getattr(old, REQUEST_FIELDS[k]) is None]
    if unknown:
        raise HFError(f"{family.name} models have no {unknown[0]}")
    for key, value in request.items():
        current = getattr(old, REQUEST_FIELDS[key])
        if value < current:
            raise HFError(f"{key} {value} is below the current {current}")
    hidden = request.get("hidden_size", old.hidden)
    pad = hidden % old.hidden != 0
    if pad:
        why = family.pad_stream or ("" if family.norm == "rms" or family.pre_norm else
                                    "a post-norm LayerNorm stream carries LayerNorm outputs, whose per-token mean a "
                                    "new feature cannot reproduce")
        if not why and config_value(config, family.config.eps) is None:
            why = ("its norms' epsilon is not a config field, so it cannot be rescaled with the padded stream's "
                   "statistics")
        if why:
            raise HFError(f"hidden_size {hidden}: the {family.name} stream grows exactly by integer replication only "
                          f"({why}); valid sizes: {[old.hidden * k for k in range(2, 5)]}")
    k = 1 if pad else hidden // old.hidden
    explicit = old.explicit_head_dim(config, family)
    tiles_stream = old.heads * old.head_dim == old.hidden
    if explicit:  # heads independent of the stream: they follow it only when they tile it
        heads = request.get("num_attention_heads", old.heads * k if tiles_stream and not pad else old.heads)
    else:  # head_dim = hidden / heads: the heads follow the stream
        if hidden % old.head_dim:
            raise HFError(f"hidden_size {hidden} is not a multiple of head_dim {old.head_dim} (head_dim = hidden_size "
                          f"/ heads in {family.name}, and it must stay fixed: the q.k scale and rotary embeddings "
                          f"depend on it)")
        heads = hidden // old.head_dim
        if request.get("num_attention_heads", heads) != heads:
            raise HFError(f"num_attention_heads {request['num_attention_heads']} with hidden_size {hidden} would "
                          f"change head_dim from {old.head_dim} to {hidden / request['num_attention_heads']:g} (the "
                          f"q.k scale cannot follow exactly); use num_attention_heads={heads}")
    if heads < old.heads:
        raise HFError(f"num_attention_heads {heads} is below the current {old.heads}")
    if family.uniform_heads and heads % old.heads:
        raise HFError(f"num_attention_heads {heads}: {family.uniform_heads}; use a multiple of {old.heads}")
    group = old.heads // old.kv
    kv = request.get("num_key_value_heads", heads // group if heads % group == 0 else None)
    if kv is None or kv * group != heads:
        raise HFError(f"grouped-query attention: {old.heads} query heads share {old.kv} key/value heads (groups of "
                      f"{group}); growing exactly keeps the group size, so num_key_value_heads must be "
                      f"num_attention_heads / {group} (got heads {heads}, kv heads "
                      f"{request.get('num_key_value_heads')})")
    new = Sizes(hidden, request.get("intermediate_size", old.ffn), heads, kv, old.head_dim, old.layers,
                request.get("moe_intermediate_size", old.expert_ffn),
                request.get("shared_expert_intermediate_size", old.shared_ffn))
    return old, new, pad


def plan_widen(config: Any, family: Family, request: dict[str, int], seed: int | None) -> WidthPlan:
    """Check the requested sizes (`plan_sizes`) and build an index map for every growing space."""
    old, new, pad = plan_sizes(config, family, request)
    hidden, heads, kv = new.hidden, new.heads, new.kv
    rng = np.random.default_rng(seed)
    leaves: dict[str, Space] = {"stream": Space(old.hidden, origin="stream")}
    maps: dict[int, IndexMap] = {}
    if hidden != old.hidden:
        maps[leaves["stream"].id] = IndexMap.padded(old.hidden, hidden) if pad else _tile(old.hidden, hidden)
    for name, count, new_count in (("heads", old.heads, heads), ("kv", old.kv, kv)):
        count_space, dim_space = Space(count, origin=f"{name} count"), Space(old.head_dim, origin="head_dim")
        leaves[name] = sp.make_composite("prod", [count_space, dim_space], name)
        if new_count != count:
            maps[count_space.id] = _tile(count, new_count)
    for name in ("ffn", "expert_ffn", "shared_ffn"):
        size, new_size = getattr(old, name), getattr(new, name)
        if size is None:
            continue
        leaves[name] = Space(size, origin=name)
        if new_size != size:
            maps[leaves[name].id] = _net2net(size, new_size, rng)
    return WidthPlan(family, old, new, SpaceMaps(maps), leaves, pad, seed)
