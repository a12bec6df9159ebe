"""The Hugging Face front end's refusal: a model of a known family that cannot grow exactly as asked."""

from __future__ import annotations

from ..errors import InvalidRequestError


class HFError(InvalidRequestError):
    """A Hugging Face model netgraft cannot grow as asked (an impossible size, a layout the family refuses): the
    message names the reason and the sizes that would work."""
