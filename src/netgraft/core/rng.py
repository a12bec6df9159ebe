"""What `seed` means in every verb: an int seeds everything the verb draws (replication maps, noise, fresh weights,
GradMax completions); ``None`` draws that int once from torch's global generator - so ``torch.manual_seed(s)`` before
a call makes it reproducible, and two calls without a seed differ - and leaves no other trace on global RNG state."""

from __future__ import annotations

import numbers

import torch

from ..errors import InvalidRequestError


def resolve_seed(seed: int | None) -> int:
    """The int a verb seeds its draws with (see the module docstring).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0); a = resolve_seed(None)
        >>> _ = torch.manual_seed(0); b = resolve_seed(None)
        >>> a == b, resolve_seed(7)
        (True, 7)
    """
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidRequestError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)
