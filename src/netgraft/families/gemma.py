"""Gemma: LLaMA's layout with RMSNorm gains stored as w (the norm multiplies by 1 + w), embeddings scaled by
sqrt(hidden_size), GeGLU, tied output embedding. Growing the stream rescales the embeddings by sqrt(d/D) so the
product is kept, and the final norm absorbs the tied output's factor."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(
    name="gemma",
    model_types=("gemma",),
    norm_gain="1+w",
    embed_scale=True,
    tiny=LLAMA.tiny | dict(head_dim=8),
)
