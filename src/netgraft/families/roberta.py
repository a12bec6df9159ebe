"""RoBERTa: BERT's encoder under another prefix, positions offset by the padding index, its own heads (lm_head with
a dense + LayerNorm transform, a two-layer classification head)."""

from .bert import FAMILY as BERT
from .bert import LAYER

FAMILY = BERT.variant(
    name="roberta",
    model_types=("roberta",),
    base=("roberta.",),
    weights={k: v for k, v in BERT.weights.items()},
    heads={
        "lm_head.dense.weight": ("stream", "~stream"),
        "lm_head.dense.bias": ("stream",),
        "lm_head.layer_norm.weight": ("stream",),
        "lm_head.layer_norm.bias": ("stream",),
        "lm_head.decoder.weight": ("vocab", "~stream"),
        "lm_head.decoder.bias": ("vocab",),
        "lm_head.bias": ("vocab",),
        "classifier.dense.weight": ("pooled", "~stream"),
        "classifier.dense.bias": ("pooled",),
        "classifier.out_proj.weight": ("labels", "~pooled"),
        "classifier.out_proj.bias": ("labels",),
        "classifier.weight": ("labels", "~stream"),
        "classifier.bias": ("labels",),
        "qa_outputs.weight": ("two", "~stream"),
        "qa_outputs.bias": ("two",),
    },
    head_norms=("lm_head.layer_norm",),
    tied=("lm_head.decoder.weight", "embeddings.word_embeddings.weight"),
    final_norm="lm_head.layer_norm",
    tiny=BERT.tiny | dict(pad_token_id=1, max_position_embeddings=40),
)
assert LAYER
