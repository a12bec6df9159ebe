"""`ConfigSizes`: a growth request in a Hugging Face config's terms. Passing one to `widen` or `deepen` selects the
family front end (`netgraft.hf`), as a dict of module paths or a float factor selects the traced one."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class ConfigSizes:
    """New sizes in config terms; fields left at None keep their size.

    Example:
        >>> import netgraft
        >>> netgraft.ConfigSizes(hidden_size=768, intermediate_size=3072)
        ConfigSizes(hidden_size=768, intermediate_size=3072)
    """

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    num_hidden_layers: int | None = None
    moe_intermediate_size: int | None = None  # each routed expert's FFN (Qwen2-MoE); Mixtral's is intermediate_size
    shared_expert_intermediate_size: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InvalidRequestError(f"ConfigSizes.{f.name} must be a positive int, got {value!r}")
            object.__setattr__(self, f.name, int(value))

    def given(self) -> dict[str, int]:
        """The sizes that were set, by config name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __repr__(self) -> str:
        return f"ConfigSizes({', '.join(f'{k}={v}' for k, v in self.given().items())})"


WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "moe_intermediate_size", "shared_expert_intermediate_size")
DEPTH_FIELDS = ("num_hidden_layers",)
