"""Mistral: LLaMA's layout (sliding-window attention changes no weight)."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(name="mistral", model_types=("mistral",))
