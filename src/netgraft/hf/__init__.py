"""The Hugging Face front end: grow a transformers model in config terms, planned from its family's table."""

from .front import *  # noqa: F401,F403 - transitional: split into plan / apply / certify next
from .front import HFError, HFReport, _power_of_two_shares, _with_shares, certify, describe, family_of, is_hf_model  # noqa: F401
