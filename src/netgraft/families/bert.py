"""BERT: post-norm LayerNorm encoder (each sub-layer's LayerNorm follows its residual add), learned positions and
token types, a pooler; heads for masked LM, pre-training (MLM + next sentence), sequence / token classification,
question answering.

Post-norm: the stream carries LayerNorm outputs, so it grows by whole multiples only (a new feature cannot hold each
token's mean of them), and an inserted layer is made an identity by moving the previous layer's output LayerNorm
affine into it (exact up to O(eps))."""

from .schema import ConfigKeys, Depth, Family

LAYER = {
    "layer.{i}.attention.self.query.weight": ("heads", "~stream"),
    "layer.{i}.attention.self.query.bias": ("heads",),
    "layer.{i}.attention.self.key.weight": ("heads", "~stream"),
    "layer.{i}.attention.self.key.bias": ("heads",),
    "layer.{i}.attention.self.value.weight": ("heads", "~stream"),
    "layer.{i}.attention.self.value.bias": ("heads",),
    "layer.{i}.attention.output.dense.weight": ("stream", "~heads"),
    "layer.{i}.attention.output.dense.bias": ("stream",),
    "layer.{i}.attention.output.LayerNorm.weight": ("stream",),
    "layer.{i}.attention.output.LayerNorm.bias": ("stream",),
    "layer.{i}.intermediate.dense.weight": ("ffn", "~stream"),
    "layer.{i}.intermediate.dense.bias": ("ffn",),
    "layer.{i}.output.dense.weight": ("stream", "~ffn"),
    "layer.{i}.output.dense.bias": ("stream",),
    "layer.{i}.output.LayerNorm.weight": ("stream",),
    "layer.{i}.output.LayerNorm.bias": ("stream",),
}

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    base=("bert.",),
    layers="encoder.layer.{i}.",
    weights={
        "embeddings.word_embeddings.weight": ("vocab", "stream"),
        "embeddings.position_embeddings.weight": ("positions", "stream"),
        "embeddings.token_type_embeddings.weight": ("types", "stream"),
        "embeddings.LayerNorm.weight": ("stream",),
        "embeddings.LayerNorm.bias": ("stream",),
        **{f"encoder.{k}": v for k, v in LAYER.items()},
        "pooler.dense.weight": ("pooled", "~stream"),
        "pooler.dense.bias": ("pooled",),
    },
    heads={
        "cls.predictions.transform.dense.weight": ("stream", "~stream"),
        "cls.predictions.transform.dense.bias": ("stream",),
        "cls.predictions.transform.LayerNorm.weight": ("stream",),
        "cls.predictions.transform.LayerNorm.bias": ("stream",),
        "cls.predictions.decoder.weight": ("vocab", "~stream"),
        "cls.predictions.decoder.bias": ("vocab",),
        "cls.predictions.bias": ("vocab",),
        "cls.seq_relationship.weight": ("two", "~pooled"),
        "cls.seq_relationship.bias": ("two",),
        "classifier.weight": ("labels", "~stream"),  # token classification reads the stream,
        "classifier.bias": ("labels",),  # sequence classification the pooled output: the same map either way
        "qa_outputs.weight": ("two", "~stream"),
        "qa_outputs.bias": ("two",),
    },
    config=ConfigKeys(eps=("layer_norm_eps",)),
    norm="layer",
    norms=("embeddings.LayerNorm", "encoder.layer.{i}.attention.output.LayerNorm",
           "encoder.layer.{i}.output.LayerNorm"),
    head_norms=("cls.predictions.transform.LayerNorm",),
    pre_norm=False,
    depth=Depth(zero=("attention.output.dense.weight", "attention.output.dense.bias", "output.dense.weight",
                      "output.dense.bias"),
                post_norm=("attention.output.LayerNorm", "output.LayerNorm")),
    tied=("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
    final_norm="cls.predictions.transform.LayerNorm",  # what the tied decoder reads
    tiny=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
              max_position_embeddings=32),
)
