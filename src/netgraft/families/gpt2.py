"""GPT-2: pre-norm LayerNorm, learned positions, Conv1D layers (weights stored (in, out)), a fused q|k|v projection,
head_dim = n_embd / n_head (heads follow the stream), tied output embedding."""

from .schema import CLASSIFICATION_HEADS, ConfigKeys, Depth, Family

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    base=("transformer.",),
    layers="h.{i}.",
    weights={
        "wte.weight": ("vocab", "stream"),
        "wpe.weight": ("positions", "stream"),
        "h.{i}.ln_1.weight": ("stream",),
        "h.{i}.ln_1.bias": ("stream",),
        "h.{i}.attn.c_attn.weight": ("~stream", "qkv"),
        "h.{i}.attn.c_attn.bias": ("qkv",),
        "h.{i}.attn.c_proj.weight": ("~heads", "stream"),
        "h.{i}.attn.c_proj.bias": ("stream",),
        "h.{i}.ln_2.weight": ("stream",),
        "h.{i}.ln_2.bias": ("stream",),
        "h.{i}.mlp.c_fc.weight": ("~stream", "ffn"),
        "h.{i}.mlp.c_fc.bias": ("ffn",),
        "h.{i}.mlp.c_proj.weight": ("~ffn", "stream"),
        "h.{i}.mlp.c_proj.bias": ("stream",),
        "ln_f.weight": ("stream",),
        "ln_f.bias": ("stream",),
    },
    heads={"lm_head.weight": ("vocab", "~stream")} | CLASSIFICATION_HEADS,
    spaces={"qkv": ("cat", "heads", "heads", "heads")},
    config=ConfigKeys(hidden=("n_embd",), ffn=("n_inner",), heads=("n_head",), layers=("n_layer",),
                      eps=("layer_norm_epsilon",)),
    norm="layer",
    norms=("h.{i}.ln_1", "h.{i}.ln_2", "ln_f"),
    depth=Depth(zero=("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")),
    tied=("lm_head.weight", "wte.weight"),
    final_norm="ln_f",
    tiny=dict(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32, pad_token_id=0),
)
