"""Which module a layer op belongs to: the module that owns its parameters (so attributes such as `in_features`
follow it) and the key a user names the dimension it produces by."""

from __future__ import annotations

from torch import nn

from ..core.graph import Value
from ..core.registry import RuleContext
from ..core.space import Space


def _holds(module: nn.Module | None, tensor: object) -> bool:
    """True when `module` itself (not a child) registers `tensor` as a parameter or buffer."""
    return module is not None and any(t is tensor for t in (*module._parameters.values(), *module._buffers.values()))


def _owner(ctx: RuleContext, cls: type | tuple[type, ...], *values: Value | None) -> str | None:
    """Path of the `cls` module whose attributes must follow this op: the module that owns its parameters (found
    from their names, so calling `.forward` directly or reusing `other.weight` still updates `other`), else the
    module whose forward runs the op."""
    params = [ctx.trace.tensors_by_name[v.param] for v in values if v is not None and v.param is not None]
    current = ctx.running_module()
    if isinstance(current, cls) and (not params or any(_holds(current, p) for p in params)):
        return ctx.record.module  # the module running the op holds the parameter (also when it is tied)
    for v in values:
        if v is not None and v.param is not None:
            path = v.param.rsplit(".", 1)[0] if "." in v.param else ""
            try:
                m = ctx.trace.model.get_submodule(path) if path else ctx.trace.model
            except AttributeError:
                continue
            return path if isinstance(m, cls) else None
    return None


def _produce(ctx: RuleContext, space: Space, weight: Value | None) -> None:
    """Name `space` after the module that owns the weight (the module a user thinks of as producing it), and after
    the parameter itself when it is a bare one (`self.w`)."""
    if weight is None or weight.param is None:
        ctx.produces(space)
        return
    holds = _holds(ctx.running_module(), ctx.trace.tensors_by_name[weight.param])
    owner, _, leaf = weight.param.rpartition(".")
    ctx.produces(space, key=ctx.record.module if holds else (owner or ctx.record.module))
    if leaf != "weight":
        ctx.produces(space, key=weight.param)
