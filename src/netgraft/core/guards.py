"""Models netgraft refuses up front, with its own error, before anything runs: otherwise they would reach torch
deep inside a trace and fail there with a message about torch, not about the model.

- TorchScript (`torch.jit.script` / `torch.jit.trace`): its ops run in TorchScript, invisible to the trace and not
  rewritable; the Python model must be grown and scripted again.
- The meta device: parameters without values cannot be copied, grown or certified.
- Quantized modules (`torch.ao.nn.quantized`, dynamic or static): their weights are packed integers that netgraft
  cannot resize or split exactly; the float model must be grown and quantized again.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidRequestError, UnsupportedModelError

_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def _quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith(_QUANTIZED_PACKAGES)


def check_model(model: nn.Module, verb: str) -> None:
    """Raise TypeError for a non-module and UnsupportedModelError for a model netgraft cannot work on."""
    if not isinstance(model, nn.Module):
        raise InvalidRequestError(f"{verb}: model must be an nn.Module, got {type(model).__name__}")
    for path, module in model.named_modules():
        where = f"'{path}' ({type(module).__name__})" if path else f"the model ({type(module).__name__})"
        if isinstance(module, torch.jit.ScriptModule) and not path:  # a scripted submodule only blocks its axes
            raise UnsupportedModelError(
                f"{verb}: {where} is TorchScript (torch.jit.script / torch.jit.trace): its ops run in TorchScript, "
                f"which netgraft can neither trace nor rewrite. Grow the Python model, then script it again")
        if _quantized(module):
            raise UnsupportedModelError(
                f"{verb}: {where} is a quantized module: its weights are packed integers that netgraft cannot resize "
                f"or split exactly. Grow the float model, then quantize it again")
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise UnsupportedModelError(
                f"{verb}: '{name}' {tuple(t.shape)} is on the meta device (it has no values to grow or certify). Load "
                f"the weights first, e.g. model.to_empty(device='cpu') and load_state_dict(...)")
