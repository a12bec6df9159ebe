"""Gemma 2: Gemma with sandwich norms (an RMSNorm after attention and after the feed-forward, before each residual
add), logit soft-capping, alternating sliding-window layers (`layer_types`, extended with depth). The post norms are
over the stream: zero-padding folds into them as into the others, and a zeroed branch stays 0 through them."""

from .gemma import FAMILY as GEMMA

FAMILY = GEMMA.variant(
    name="gemma2",
    model_types=("gemma2",),
    weights=GEMMA.with_weights({"layers.{i}.pre_feedforward_layernorm.weight": ("stream",),
                                "layers.{i}.post_feedforward_layernorm.weight": ("stream",)}),
    norms=(*GEMMA.norms, "layers.{i}.pre_feedforward_layernorm", "layers.{i}.post_feedforward_layernorm"),
)
