"""The errors netgraft raises: one base, `NetgraftError`, caught once by a caller who wants every refusal.

Every message names the module path, the op and the sizes involved, and the way out.

- `UnsupportedModelError`: the model has an op, layer or pattern netgraft cannot map exactly (fail closed).
- `NotPreservedError`: the result was built but its certificate failed (it is never returned silently).
- `InvalidRequestError`: the request itself is wrong (a size below the current one, a bad type, a key that names no
  module). It is also a `ValueError` and a `TypeError`, so code written against the built-in errors keeps working;
  `UnknownNameError` (a name that matches nothing) is also a `KeyError`.
"""

from __future__ import annotations

EXTENSION_HINT = (
    "To add support, register a rule: `@netgraft.register_layer(MyModule)` for a module type or "
    "`@netgraft.register_op(func)` for a torch function (see README, 'Extending netgraft')."
)


class NetgraftError(Exception):
    """Base of every error netgraft raises."""


class UnsupportedModelError(NetgraftError):
    """The model contains an op or layer whose effect on a coupled dimension netgraft cannot map.

    Raised instead of returning a model that might compute a different function.
    """


class NotPreservedError(NetgraftError):
    """The transformed model's outputs differ from the source's by more than the exactness bound."""


class InvalidRequestError(NetgraftError, ValueError, TypeError):
    """The request is wrong: a size, a type, an argument. Also a ValueError and a TypeError."""


class UnknownNameError(InvalidRequestError, KeyError):
    """A name (module path, key, family) that matches nothing. Also a KeyError."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class CheckpointError(NetgraftError):
    """A model directory netgraft cannot read or write safely: a missing or unused tensor, a pickle, OUT inside the
    source, not enough memory or disk."""


def one_line(text: object) -> str:
    """A message cut at its first line break (the first non-blank line): command-line errors are one line."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""
