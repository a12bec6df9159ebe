"""Upcycling: dense feed-forward layers into mixtures of experts, and mixtures of experts into more experts, exactly
(the rules: `netgraft.core.experts`; Hugging Face families: `netgraft.hf.upcycle`; any model: `generic`)."""

from .moe import MoE
from .operator import UpcycleReport, upcycle

__all__ = ["MoE", "UpcycleReport", "upcycle"]
