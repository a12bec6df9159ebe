"""`inject` and `similarity`: data-free transfer between different architectures (TLI / DPIAT)."""

from .operator import SIMILARITY_THRESHOLD, InjectionReport, Transfer, inject, inject_, similarity

__all__ = ["inject_", "inject", "similarity", "InjectionReport", "Transfer", "SIMILARITY_THRESHOLD"]
