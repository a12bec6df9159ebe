"""Qwen2: LLaMA's layout with q/k/v biases; per-layer attention types (`layer_types`) follow depth."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(name="qwen2", model_types=("qwen2",))
