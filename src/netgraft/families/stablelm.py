"""StableLM: LLaMA-like attention and SwiGLU with pre-norm LayerNorm (with biases), partial rotary embeddings,
optional q/k/v biases and parallel residual. Per-head q/k LayerNorms (qk_layernorm) are separate modules per head:
refused."""

from .llama import FAMILY as LLAMA
from .schema import ConfigKeys

FAMILY = LLAMA.variant(
    name="stablelm",
    model_types=("stablelm",),
    weights=LLAMA.with_weights({"layers.{i}.input_layernorm.bias": ("stream",),
                                "layers.{i}.post_attention_layernorm.bias": ("stream",),
                                "norm.bias": ("stream",)}),
    config=ConfigKeys(kv=("num_key_value_heads",), eps=("layer_norm_eps",)),
    norm="layer",
    refuse={"qk_layernorm": "per-head LayerNorm modules (one per head) are not in netgraft's table"},
    tiny=LLAMA.tiny | dict(num_key_value_heads=4),
)
