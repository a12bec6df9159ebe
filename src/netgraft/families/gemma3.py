"""Gemma 3 (text): Gemma 2's layout plus an RMSNorm over each head's head_dim on queries and keys; those share the
config's epsilon with the stream's norms, so the stream grows by whole multiples (see qwen3)."""

from .gemma2 import FAMILY as GEMMA2

FAMILY = GEMMA2.variant(
    name="gemma3",
    model_types=("gemma3_text",),
    weights=GEMMA2.with_weights({"layers.{i}.self_attn.q_norm.weight": ("head_dim",),
                                 "layers.{i}.self_attn.k_norm.weight": ("head_dim",)}),
    pad_stream="q_norm and k_norm (over head_dim) share rms_norm_eps with the stream's norms, which zero padding "
               "would rescale",
)
