"""Exceptions raised by netgraft. Every message names the module path, the op and the sizes involved."""

from __future__ import annotations

EXTENSION_HINT = (
    "To add support, register a rule: `@netgraft.register_layer(MyModule)` for a module type or "
    "`@netgraft.register_op(func)` for a torch function (see README, 'Extending netgraft')."
)


class UnsupportedModelError(Exception):
    """The model contains an op or layer whose effect on a coupled dimension netgraft cannot map.

    Raised instead of returning a model that might compute a different function.
    """


class NotPreservedError(AssertionError):
    """The transformed model's outputs differ from the source's by more than the exactness bound."""
