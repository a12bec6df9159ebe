"""Copying a model so that the copy computes with its own modules, never the source's.

`copy.deepcopy` copies modules, parameters and containers, but treats functions as atoms: a lambda stored on a module
(minGPT's ``self.mlpf = lambda x: m.c_proj(m.act(m.c_fc(x)))``), a `functools.partial` or a bound method of another
module keeps pointing at the *source's* modules. The copy then runs the source's layers - a widened layer would be
dead, and training the copy would train the source. `clone_module` deep-copies and then rebinds every such function
found in the copy's module attributes (and in lists, tuples and dicts of them) to the copied objects, through the
same memo `deepcopy` filled. What it cannot rebind (a function that reaches the source through a global) is caught
when the result runs (`netgraft.certify` audits which modules and tensors the result touches).
"""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

from torch import nn

_SKIP = {"_modules", "_parameters", "_buffers"}  # copied properly by deepcopy


class _Rebinder:
    """Maps functions found in a fresh deep copy to versions whose closure cells, defaults and bound `self` point at
    the copied objects (through deepcopy's `memo`). New function objects are made only where something changed;
    lists and dicts are updated in place only when they are the copy's own (made by deepcopy): a container that
    only the source's closure captured belongs to the user and is never mutated."""

    def __init__(self, memo: dict[int, Any]):
        self.memo = memo
        self.copies = {id(v) for k, v in memo.items() if k != id(memo)}
        self.seen: dict[int, Any] = {}

    def mapped(self, obj: Any) -> Any:
        return self(self.memo.get(id(obj), obj))

    def __call__(self, obj: Any) -> Any:
        if id(obj) in self.seen:
            return self.seen[id(obj)]
        self.seen[id(obj)] = obj  # cycles resolve to the object itself
        out = self._rebind(obj)
        self.seen[id(obj)] = out
        return out

    def _rebind(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            return self._function(obj)
        if isinstance(obj, types.MethodType):
            owner, func = self.memo.get(id(obj.__self__), obj.__self__), self(obj.__func__)
            return obj if owner is obj.__self__ and func is obj.__func__ else types.MethodType(func, owner)
        if isinstance(obj, functools.partial):
            func = self.mapped(obj.func)
            args = tuple(self.mapped(a) for a in obj.args)
            kwargs = {k: self.mapped(v) for k, v in obj.keywords.items()}
            same = func is obj.func and all(a is b for a, b in zip(args, obj.args, strict=True)) and all(
                kwargs[k] is v for k, v in obj.keywords.items())
            return obj if same else functools.partial(func, *args, **kwargs)
        if isinstance(obj, (list, dict)) and not isinstance(obj, nn.Module) and id(obj) in self.copies:
            for k, item in (enumerate(obj) if isinstance(obj, list) else list(obj.items())):
                obj[k] = self(item)
            return obj
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            items = tuple(self(x) for x in obj)
            return obj if all(a is b for a, b in zip(items, obj, strict=True)) else items
        return obj

    def _function(self, fn: types.FunctionType) -> types.FunctionType:
        cells, changed = [], False
        for cell in fn.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell (a variable not assigned yet)
                cells.append(cell)
                continue
            new = self.mapped(content)
            changed |= new is not content
            cells.append(types.CellType(new) if new is not content else cell)
        defaults = fn.__defaults__
        if defaults:
            new_defaults = tuple(self.mapped(d) for d in defaults)
            changed |= any(a is not b for a, b in zip(new_defaults, defaults, strict=True))
            defaults = new_defaults
        if not changed:
            return fn
        out = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, defaults, tuple(cells) or None)
        out.__kwdefaults__, out.__qualname__ = fn.__kwdefaults__, fn.__qualname__
        out.__dict__.update(fn.__dict__)
        return out


def clone_module(model: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of `model` whose stored functions call the copy's modules, not the source's.

    `memo` may pre-map objects (e.g. a parameter to its grown replacement), exactly as for `copy.deepcopy`.

    Example:
        >>> import torch
        >>> class M(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(2, 2)
        ...         fc = self.fc
        ...         self.f = lambda x: fc(x)
        >>> m = M()
        >>> c = clone_module(m)
        >>> c.f.__closure__[0].cell_contents is c.fc
        True
    """
    memo = {} if memo is None else memo
    result = copy.deepcopy(model, memo)
    rebind = _Rebinder(memo)
    for module in result.modules():
        for key, value in list(module.__dict__.items()):
            if key not in _SKIP and (new := rebind(value)) is not value:
                module.__dict__[key] = new
    return result
