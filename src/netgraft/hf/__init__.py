"""The Hugging Face front end: grow a transformers model in config terms, planned from its family's table
(`netgraft.families`) and applied and certified by the shared core."""

from .errors import HFError
from .front import HFReport, certify, deepen_hf, describe, family_of, is_hf_model, new_config, probe_inputs, widen_hf
from .plan import Sizes
from .request import ConfigSizes

__all__ = ["ConfigSizes", "HFError", "HFReport", "Sizes", "certify", "deepen_hf", "describe", "family_of",
           "is_hf_model", "new_config", "probe_inputs", "widen_hf"]
