"""What a Hugging Face family is, as data: each tensor's axes named by the space they lie in, the config keys that size
those spaces, the norms over the stream, the depth recipe, ties and a tiny config for the tests.

A weight is written as its tensor name (``{i}`` for the layer index) and one space name per axis, in the order the
tensor stores them; ``~`` marks an axis the layer sums over (an input axis: columns are split between copies, new
columns read zeros). A reader needs no legend:

    "model.layers.{i}.self_attn.q_proj.weight": ("heads", "~stream"),   # nn.Linear (out, in)
    "transformer.h.{i}.attn.c_attn.weight": ("~stream", "qkv"),         # GPT-2 Conv1D (in, out)

Spaces that grow: ``stream`` (hidden size), ``heads`` / ``kv`` (query / key-value heads x head_dim), ``ffn``
(intermediate size), ``expert_ffn`` / ``shared_ffn`` (an MoE's expert and shared-expert sizes) and ``pooled`` (a
hidden-sized value that is not the residual stream, e.g. a pooler's output: it follows the stream's map, and new
units start at zero even where the stream's start at its mean). Composites are declared per family (`spaces`):
``("cat", "heads", "kv", "kv")`` for a fused q|k|v, ``("per_head", "heads", 3)`` for NeoX's q,k,v interleaved
per head. Every other name (``vocab``, ``positions``, ``experts``, ``labels``, ``one``...) is an axis that keeps its
size.

Names are those of the model in memory. Where the hub stores a tensor otherwise (transformers 5 fuses a mixture of
experts on load and splits it again on save), `Stored` says how, per family, and `netgraft.hf.stored` applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

GROWING = ("stream", "heads", "kv", "ffn", "expert_ffn", "shared_ffn", "pooled")


@dataclass(frozen=True)
class ConfigKeys:
    """Config attribute names (the first that is set wins) for each size a family has."""

    hidden: tuple[str, ...] = ("hidden_size",)
    ffn: tuple[str, ...] = ("intermediate_size",)
    heads: tuple[str, ...] = ("num_attention_heads",)
    kv: tuple[str, ...] = ()  # grouped-query attention; none: kv heads are the query heads
    layers: tuple[str, ...] = ("num_hidden_layers",)
    head_dim: tuple[str, ...] = ()  # an explicit head_dim; none: hidden / heads (heads then follow the stream)
    eps: tuple[str, ...] = ()  # the norms' epsilon (scaled when the stream is zero-padded)
    expert_ffn: tuple[str, ...] = ()
    shared_ffn: tuple[str, ...] = ()


@dataclass(frozen=True)
class Depth:
    """How an inserted layer starts as an identity.

    Pre-norm (`zero`): a copy of the layer before it whose residual branches end in these tensors (relative to the
    layer), zeroed: ``x + 0``, and every other new weight gets gradient once they move. Post-norm (`post_norm`):
    the layer cannot be an identity by zeroing (its LayerNorm follows the add), so the branches' outputs are zeroed,
    the first norm is made a unit affine, and the previous layer's last norm's affine moves into the new layer's last
    norm (the previous one becomes a unit affine): x -> LN(x) -> LN(LN(x)) with unit affines is x up to O(eps)."""

    zero: tuple[str, ...] = ()
    post_norm: tuple[str, str] | None = None  # (first norm, last norm) of a post-norm layer, relative to the layer


@dataclass(frozen=True)
class Stored:
    """How a family's checkpoints store tensors that its transformers 5 model holds under other names or fused.

    Names are inside the base model, ``{i}`` a layer's index, ``{e}`` an expert's (as in `Family.weights`).
    `experts`: a fused model tensor -> the stored tensors of one expert whose concatenation along their first axis is
    that expert's slice (the model tensor's first axis is the expert). Mixtral's gate|up, for instance:

        "layers.{i}.mlp.experts.gate_up_proj": ("layers.{i}.block_sparse_moe.experts.{e}.w1.weight",    # gate
                                                "layers.{i}.block_sparse_moe.experts.{e}.w3.weight"),   # up

    (experts, 2 x ffn, stream) in memory, 2 x experts tensors of (ffn, stream) on disk. `renamed`: model prefix ->
    stored prefix for the other tensors under it (Mixtral's router, ``mlp.gate.weight`` on disk as
    ``block_sparse_moe.gate.weight``). What transformers' `conversion_mapping.py` does on load, as data."""

    experts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture family, declaratively (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    base: tuple[str, ...]  # prefixes of the base model inside task models ("model.", "transformer.", "bert.")
    layers: str  # one layer's prefix inside the base model, "{i}" for its index ("layers.{i}.")
    weights: dict[str, tuple[str, ...]]  # inside the base model
    heads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # task heads, full names
    spaces: dict[str, tuple] = field(default_factory=dict)  # composite spaces
    config: ConfigKeys = ConfigKeys()
    norm: str = "rms"  # "rms" or "layer": the norms over the stream
    norm_gain: str = "w"  # "w", or "1+w" (Gemma stores gain - 1)
    norms: tuple[str, ...] = ()  # module paths (inside the base) of the norms over the stream
    head_norms: tuple[str, ...] = ()  # task heads' norms over a hidden-sized value, full names
    pre_norm: bool = True
    depth: Depth = Depth()
    stored: Stored = Stored()  # how checkpoints store what the model holds otherwise (none: as in memory)
    tied: tuple[str, str] | None = None  # (output weight, input embedding weight) when the config ties them
    final_norm: str = ""  # the norm (inside the base) whose output the tied output layer reads
    embed_scale: bool = False  # embeddings are multiplied by sqrt(hidden_size) (Gemma)
    pad_stream: str = ""  # why the stream cannot be zero-padded to any size ("" = it can, when the norm allows)
    uniform_heads: str = ""  # why heads must grow by whole multiples (a norm over all heads), "" = any number
    refuse: dict[str, str] = field(default_factory=dict)  # config key -> why a truthy value is refused
    require: dict[str, tuple[Any, str]] = field(default_factory=dict)  # config key -> (the value it needs, why)
    depth_require: dict[str, tuple[Any, str]] = field(default_factory=dict)  # the same, for deepening only
    inputs: str = "tokens"  # "tokens" or "pixels"
    tiny: dict[str, Any] = field(default_factory=dict)  # a tiny config for the tests

    def check_config(self, config: Any, depth: bool = False) -> str:
        """Why this config cannot grow exactly ("" when it can)."""
        for key, why in self.refuse.items():
            if getattr(config, key, None):
                return f"config.{key}={getattr(config, key)!r}: {why}"
        for key, (value, why) in (self.require | (self.depth_require if depth else {})).items():
            if getattr(config, key, value) != value:
                return f"config.{key}={getattr(config, key)!r} (needs {value!r}): {why}"
        return ""

    def variant(self, **changes: Any) -> Family:
        """This family with some fields changed (a family that differs in a few weights or keys)."""
        return replace(self, **changes)

    def with_weights(self, add: dict[str, tuple[str, ...]] | None = None, drop: tuple[str, ...] = ()) -> dict:
        return {k: v for k, v in self.weights.items() if k not in drop} | (add or {})

    def patterns(self) -> list[tuple[re.Pattern, str, tuple[str, ...]]]:
        """(compiled full-name pattern, declared name, axes), base weights first, then task heads."""
        out = []
        prefixes = "|".join(re.escape(b) for b in self.base)
        for name, axes in self.weights.items():
            regex = re.escape(name).replace(r"\{i\}", r"(\d+)")
            out.append((re.compile(rf"(?:{prefixes})?{regex}"), name, axes))
        for name, axes in self.heads.items():
            out.append((re.compile(re.escape(name)), name, axes))
        return out


# Task heads most decoder families share: they read the stream (the final norm's output).
CAUSAL_LM_HEAD = {"lm_head.weight": ("vocab", "~stream")}
CLASSIFICATION_HEADS = {
    "score.weight": ("labels", "~stream"),  # *ForSequenceClassification (decoders)
    "score.bias": ("labels",),
    "classifier.weight": ("labels", "~stream"),  # *ForTokenClassification
    "classifier.bias": ("labels",),
    "qa_outputs.weight": ("two", "~stream"),  # *ForQuestionAnswering
    "qa_outputs.bias": ("two",),
}
