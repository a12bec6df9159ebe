"""GPT-NeoX (Pythia): pre-norm LayerNorm with a parallel residual (x + attn(ln1 x) + mlp(ln2 x)), a fused
query_key_value projection laid out per head as [q | k | v] (head_dim each), partial rotary embeddings, untied
output embedding."""

from .schema import CLASSIFICATION_HEADS, ConfigKeys, Depth, Family

FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    base=("gpt_neox.",),
    layers="layers.{i}.",
    weights={
        "embed_in.weight": ("vocab", "stream"),
        "layers.{i}.input_layernorm.weight": ("stream",),
        "layers.{i}.input_layernorm.bias": ("stream",),
        "layers.{i}.post_attention_layernorm.weight": ("stream",),
        "layers.{i}.post_attention_layernorm.bias": ("stream",),
        "layers.{i}.attention.query_key_value.weight": ("qkv", "~stream"),
        "layers.{i}.attention.query_key_value.bias": ("qkv",),
        "layers.{i}.attention.dense.weight": ("stream", "~heads"),
        "layers.{i}.attention.dense.bias": ("stream",),
        "layers.{i}.mlp.dense_h_to_4h.weight": ("ffn", "~stream"),
        "layers.{i}.mlp.dense_h_to_4h.bias": ("ffn",),
        "layers.{i}.mlp.dense_4h_to_h.weight": ("stream", "~ffn"),
        "layers.{i}.mlp.dense_4h_to_h.bias": ("stream",),
        "final_layer_norm.weight": ("stream",),
        "final_layer_norm.bias": ("stream",),
    },
    heads={"embed_out.weight": ("vocab", "~stream"), "lm_head.weight": ("vocab", "~stream")} | CLASSIFICATION_HEADS,
    spaces={"qkv": ("per_head", "heads", 3)},
    config=ConfigKeys(eps=("layer_norm_eps",)),
    norm="layer",
    norms=("layers.{i}.input_layernorm", "layers.{i}.post_attention_layernorm", "final_layer_norm"),
    depth=Depth(zero=("attention.dense.weight", "attention.dense.bias", "mlp.dense_4h_to_h.weight",
                      "mlp.dense_4h_to_h.bias")),
    tied=("embed_out.weight", "embed_in.weight"),
    final_norm="final_layer_norm",
    tiny=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
              max_position_embeddings=64, pad_token_id=0, eos_token_id=0, bos_token_id=0),
)
