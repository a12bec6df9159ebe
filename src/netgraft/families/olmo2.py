"""OLMo 2: RMSNorm after each sub-layer's output (before the residual add) instead of before its input, and an
RMSNorm over all query heads and over all key heads. A norm over all heads keeps its statistics only under uniform
replication: heads grow by whole multiples; it shares rms_norm_eps with the stream's norms, so the stream grows by
whole multiples too."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(
    name="olmo2",
    model_types=("olmo2",),
    weights=LLAMA.with_weights(
        {"layers.{i}.self_attn.q_norm.weight": ("heads",), "layers.{i}.self_attn.k_norm.weight": ("kv",),
         "layers.{i}.post_feedforward_layernorm.weight": ("stream",)},
        drop=("layers.{i}.input_layernorm.weight",)),
    norms=("layers.{i}.post_attention_layernorm", "layers.{i}.post_feedforward_layernorm", "norm"),
    pad_stream="q_norm and k_norm (over all heads) share rms_norm_eps with the stream's norms",
    uniform_heads="q_norm and k_norm normalise over all heads together",
)
