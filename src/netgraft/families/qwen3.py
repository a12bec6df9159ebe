"""Qwen3: LLaMA's layout plus an RMSNorm over each head's head_dim on queries and keys (q_norm, k_norm).

Those norms share the config's epsilon with the stream's norms, so the stream cannot be zero-padded (its norms'
epsilon would be rescaled and theirs with it); it grows by whole multiples."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(
    name="qwen3",
    model_types=("qwen3",),
    weights=LLAMA.with_weights({"layers.{i}.self_attn.q_norm.weight": ("head_dim",),
                                "layers.{i}.self_attn.k_norm.weight": ("head_dim",)}),
    pad_stream="q_norm and k_norm (over head_dim) share rms_norm_eps with the stream's norms, which zero padding "
               "would rescale",
    tiny=LLAMA.tiny | dict(head_dim=8),
)
