"""OPT: pre-norm LayerNorm decoder with learned positions (offset by 2), biases everywhere, a tied output embedding.
OPT-350m's post-norm layout (do_layer_norm_before=False) is refused; a word_embed_proj_dim other than the hidden
size brings project_in/out layers the table does not describe (refused by name)."""

from .schema import ConfigKeys, Depth, Family

FAMILY = Family(
    name="opt",
    model_types=("opt",),
    base=("model.decoder.", "decoder."),
    layers="layers.{i}.",
    weights={
        "embed_tokens.weight": ("vocab", "stream"),
        "embed_positions.weight": ("positions", "stream"),
        "layers.{i}.self_attn_layer_norm.weight": ("stream",),
        "layers.{i}.self_attn_layer_norm.bias": ("stream",),
        "layers.{i}.self_attn.q_proj.weight": ("heads", "~stream"),
        "layers.{i}.self_attn.q_proj.bias": ("heads",),
        "layers.{i}.self_attn.k_proj.weight": ("heads", "~stream"),
        "layers.{i}.self_attn.k_proj.bias": ("heads",),
        "layers.{i}.self_attn.v_proj.weight": ("heads", "~stream"),
        "layers.{i}.self_attn.v_proj.bias": ("heads",),
        "layers.{i}.self_attn.out_proj.weight": ("stream", "~heads"),
        "layers.{i}.self_attn.out_proj.bias": ("stream",),
        "layers.{i}.final_layer_norm.weight": ("stream",),
        "layers.{i}.final_layer_norm.bias": ("stream",),
        "layers.{i}.fc1.weight": ("ffn", "~stream"),
        "layers.{i}.fc1.bias": ("ffn",),
        "layers.{i}.fc2.weight": ("stream", "~ffn"),
        "layers.{i}.fc2.bias": ("stream",),
        "final_layer_norm.weight": ("stream",),
        "final_layer_norm.bias": ("stream",),
    },
    heads={"lm_head.weight": ("vocab", "~stream"), "score.weight": ("labels", "~stream"),
           "qa_outputs.weight": ("two", "~stream"), "qa_outputs.bias": ("two",)},
    config=ConfigKeys(hidden=("hidden_size", "word_embed_proj_dim"), ffn=("ffn_dim",)),
    norm="layer",
    norms=("layers.{i}.self_attn_layer_norm", "layers.{i}.final_layer_norm", "final_layer_norm"),
    require={"do_layer_norm_before": (True, "post-norm OPT (350m): the stream carries LayerNorm outputs")},
    depth=Depth(zero=("self_attn.out_proj.weight", "self_attn.out_proj.bias", "fc2.weight", "fc2.bias")),
    tied=("lm_head.weight", "embed_tokens.weight"),
    final_norm="final_layer_norm",
    tiny=dict(hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
              word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=1),
)
