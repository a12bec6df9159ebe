"""Granite: LLaMA's layout; its scalar multipliers (embedding, residual, attention, logits) do not depend on sizes."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(name="granite", model_types=("granite",))
