"""The modules `deepen` inserts, and the gate API for blocks that cannot start as an identity.

Everything here is a plain `nn.Module` that `print(model)`, `state_dict`, `widen` and `torch.save` understand:
- `ResidualInsert`: ``x + branch(x)`` whose branch ends in a zeroed layer, so it starts as an exact identity.
- `GatedBlock`: ``g * block(x) + (1 - g) * x`` with a gate ``g`` (a buffer) that starts at 0. Ramp it to 1 with
  `set_gates_` while training, then `fold_gates` replaces each gate by its block (MSG, Yao et al. 2023).
- `Deepened`: wraps a module that does not live in an ``nn.Sequential``/``nn.ModuleList``: ``inserted(original(x))``.
"""

from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from ...errors import InvalidRequestError


class ResidualInsert(nn.Module):
    """``x + branch(x)``; `deepen` zeroes the branch's last layer, so the insert is an identity at first."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class GatedBlock(nn.Module):
    """``gate * block(x, ...) + (1 - gate) * x``: exactly ``x`` while the gate is 0, exactly ``block`` at 1.

    The gate is a buffer, not a parameter: the schedule is yours (`set_gates_`), as in MSG's masked growth.
    """

    def __init__(self, block: nn.Module, gate: float = 0.0) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("gate", torch.tensor(float(gate)))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        skip = (1 - self.gate) * x  # taken first: a block may modify its input in place (ReLU(inplace=True))
        return self.gate * self.block(x, *args, **kwargs) + skip

    def extra_repr(self) -> str:
        return f"gate={float(self.gate):.4g}"


class Deepened(nn.Module):
    """``inserted(original(x, ...))``: how `deepen` adds a module after one that is not in a container.

    With ``pass_args=True`` (inserted blocks) the extra arguments of the call (attention masks...) reach the
    inserted block too.
    """

    def __init__(self, original: nn.Module, inserted: nn.Module, pass_args: bool = False) -> None:
        super().__init__()
        self.original = original
        self.inserted = inserted
        self.pass_args = pass_args

    def __getattr__(self, name: str):
        # Code that reads the anchor's attributes (``self.linear1.weight`` in a forward) still finds them.
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_modules", {}).get("original")
            if original is None:
                raise
            return getattr(original, name)

    def forward(self, *args, **kwargs):
        y = self.original(*args, **kwargs)
        if self.pass_args:
            return self.inserted(y, *args[1:], **kwargs)
        return self.inserted(y)


def set_gates_(model: nn.Module, value: float) -> int:
    """Set the gate of every `GatedBlock` in `model` (in place) to `value` in [0, 1]; returns how many were set.

    Call it from the training loop to ramp inserted post-norm blocks in, then `fold_gates` at 1.

    Example:
        >>> import torch, netgraft
        >>> layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        >>> m = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        >>> deep = netgraft.deepen(m, "layers.0", example_inputs=(torch.randn(2, 5, 8),))
        >>> for step in range(100):
        ...     n = netgraft.set_gates_(deep, min(1.0, step / 50))  # then a training step
        >>> n, float(deep.layers[1].gate)
        (1, 1.0)
    """
    if not (isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0):
        raise InvalidRequestError(f"a gate value must be a number in [0, 1], got {value!r}")
    gates = [m for m in model.modules() if isinstance(m, GatedBlock)]
    with torch.no_grad():
        for m in gates:
            m.gate.fill_(float(value))
    return len(gates)


def fold_gates(model: nn.Module) -> nn.Module:
    """Return a copy of `model` in which every `GatedBlock` (gate at 1) is replaced by its block: a plain model.

    At gate 1, ``1 * block(x) + 0 * x`` is ``block(x)`` exactly, so folding changes no output. Raises
    ``ValueError`` naming each gate that is not yet at 1. `model` is not modified.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(netgraft.GatedBlock(torch.nn.Linear(4, 4), gate=1.0))
        >>> type(netgraft.fold_gates(m)[0]).__name__
        'Linear'
    """
    open_gates = [f"'{n}' (gate {float(m.gate):.4g})" for n, m in model.named_modules()
                  if isinstance(m, GatedBlock) and float(m.gate) != 1.0]
    if open_gates:
        raise InvalidRequestError(f"fold_gates needs every gate at 1; ramp them with set_gates_ first: "
                                  f"{', '.join(open_gates)}")
    folded = copy.deepcopy(model)
    if isinstance(folded, GatedBlock):
        return folded.block
    for parent in list(folded.modules()):
        for key, child in list(parent._modules.items()):
            if isinstance(child, GatedBlock):
                parent._modules[key] = child.block
    return folded
