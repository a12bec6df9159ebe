"""Optimizer state transport for `grow_`: every per-parameter state tensor follows the same index map as its weight.

Which optimizers are known, and how each state slot scales with a gradient: first moments (momentum, Adam's
exp_avg) are linear in the gradient, second moments (exp_avg_sq, Adagrad's sum) quadratic. For Net2Net duplication a
copy's gradient along a per-unit ("copy") axis is its fraction of the original's (the next layer splits its fan-out
between the copies), while along a summed ("fanin") axis it equals the original's: state is gathered and scaled the
same way, so it is what the grown model would have accumulated had it been trained from the start. For zero fan-in
growth (gradmax, random, zeros) the new units have no history: their slots are zero.
"""

from __future__ import annotations

import torch

from ...errors import InvalidRequestError

KNOWN_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
                    torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adadelta)
# state key -> power of the gradient it accumulates (None: a scalar or counter, copied as is)
STATE_POWER = {"momentum_buffer": 1, "exp_avg": 1, "grad_avg": 1, "exp_inf": 1, "exp_avg_sq": 2,
               "max_exp_avg_sq": 2, "square_avg": 2, "sum": 2, "acc_delta": 2, "step": None, "mu_product": None}


def check_optimizer(optimizer: torch.optim.Optimizer | None, model: torch.nn.Module) -> None:
    """Refuse, before anything changes, an optimizer whose state netgraft cannot carry over."""
    if optimizer is None:
        return
    if not isinstance(optimizer, KNOWN_OPTIMIZERS):
        raise InvalidRequestError(
            f"grow_: optimizer {type(optimizer).__name__} is not one whose state netgraft knows how to transport "
            f"({', '.join(c.__name__ for c in KNOWN_OPTIMIZERS)}). Pass optimizer=None and build a new optimizer "
            f"after growing (its state would otherwise be lost silently)")
    params = {id(p) for p in model.parameters()}
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if held and not any(id(p) in params for p in held):
        raise InvalidRequestError(
            f"grow_: the optimizer ({type(optimizer).__name__}, {len(held)} parameter(s)) holds none of the model's "
            f"parameters: it was built for another model (or a copy). Pass the optimizer that trains this model, or "
            f"optimizer=None and build one after growing")
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensor_like = isinstance(value, torch.Tensor) and value.dim() > 0
                if tensor_like and key not in STATE_POWER and id(p) in params:
                    raise InvalidRequestError(f"grow_: unknown state '{key}' of {type(optimizer).__name__}; netgraft "
                                              "cannot "
                                    f"transport it")
