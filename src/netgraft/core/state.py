"""Running a user's model without changing it: state restored, modes restored, dropout off for train-mode checks.

netgraft runs the user's model to trace it, to certify a result, to calibrate BatchNorms and to measure GradMax's
matrix. A forward may change state as a side effect: BatchNorm statistics and counters in train mode, an EMA buffer,
a re-assigned buffer, and - less obviously - parameters: ``nn.Embedding(max_norm=...)`` renormalises the rows it looks
up in place, and hand-written code may call ``self.w.mul_(...)``. The user's model must come back exactly as it was,
even when the call is refused, so:

- buffers are cloned before the run and restored after (they are small: statistics, counters, masks);
- parameters are protected *copy-on-write*: a dispatch mode sees every aten op, and the first time an op writes into
  a parameter's storage (an in-place op, ``out=``, a renorm), that parameter is cloned just before the write.
  Nothing is copied for a forward that writes no parameter, which is almost every forward;
- a parameter whose version counter moved without the dispatch mode seeing the write (a write outside torch's
  dispatcher, e.g. through numpy) cannot be restored: that is refused loudly rather than left changed silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import UnsupportedModelError
from .catalogue import DROPOUT


def _storage_key(t: torch.Tensor) -> int | None:
    if t.is_meta or t.device.type == "meta":
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return None
    return ptr or None


class _CopyOnWrite(TorchDispatchMode):
    """Clone a protected tensor the first time an aten op is about to write into its storage."""

    def __init__(self, protected: dict[int, list[tuple[str, torch.Tensor]]]):
        super().__init__()
        self.protected = protected  # storage pointer -> [(name, parameter)]
        self.saved: dict[int, tuple[str, torch.Tensor, torch.Tensor]] = {}  # id(param) -> (name, param, copy)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        schema = getattr(func, "_schema", None)
        if schema is not None and self.protected:
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is None or not arg.alias_info.is_write:
                    continue
                value = kwargs.get(arg.name, args[i] if i < len(args) and not arg.kwarg_only else None)
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, torch.Tensor) and (key := _storage_key(t)) in self.protected:
                        for name, p in self.protected[key]:
                            if id(p) not in self.saved:
                                self.saved[id(p)] = (name, p, p.detach().clone())
        return func(*args, **kwargs)


@contextlib.contextmanager
def preserve_state(model: nn.Module) -> Iterator[None]:
    """Run `model` inside this block and get every buffer and parameter back as it was (see the module docstring).

    Buffers re-assigned during the run (``self.count = self.count + 1``) are put back as the same tensor objects.
    """
    saved = [(m, name, b, b.detach().clone()) for m in model.modules() for name, b in m._buffers.items()
             if b is not None]
    params: dict[int, list[tuple[str, torch.Tensor]]] = {}
    versions: list[tuple[str, torch.Tensor, int]] = []
    for name, p in model.named_parameters(remove_duplicate=True):
        if (key := _storage_key(p)) is not None:
            params.setdefault(key, []).append((name, p))
        versions.append((name, p, p._version))
    cow = _CopyOnWrite(params)
    try:
        with cow:
            yield
    finally:
        with torch.no_grad():
            for m, name, b, value in saved:
                m._buffers[name] = b
                b.copy_(value)
            for _, p, value in cow.saved.values():
                p.copy_(value)
    lost = [name for name, p, v in versions if p._version != v and id(p) not in cow.saved]
    if lost:
        raise UnsupportedModelError(
            f"the model's forward changed parameter(s) {lost[:4]} in place in a way netgraft could not intercept, so "
            f"they could not be restored; make the forward leave its parameters unchanged")


class _DropoutOff(TorchFunctionMode):
    """Dropout as the identity: train-mode certificates compare what training computes apart from its randomness
    (BatchNorm batch statistics, `if self.training` branches), with the same values in both models. Fused ops that
    drop out inside (attention's dropout_p, RReLU's random slopes) get their randomness switched off too."""

    _DROPOUT = DROPOUT
    _ARG = {"scaled_dot_product_attention": (4, "dropout_p", 0.0),  # (position, keyword, value without randomness)
            "multi_head_attention_forward": (10, "dropout_p", 0.0), "rrelu": (3, "training", False)}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in self._DROPOUT:
            return args[0] if args else kwargs["input"]
        if name in self._ARG:
            pos, key, off = self._ARG[name]
            if len(args) > pos:
                args = (*args[:pos], off, *args[pos + 1:])
            else:
                kwargs[key] = off
        return func(*args, **kwargs)


@contextlib.contextmanager
def run_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put `model` in train or eval mode for a measurement (train mode with dropout as the identity), preserve its
    state (`preserve_state`) and restore every module's mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        with preserve_state(model), (_DropoutOff() if train else contextlib.nullcontext()):
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call `model` the way its inputs are given: a dict of keyword inputs, one tensor, or a tuple of positionals."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return model(example_inputs)
    return model(*example_inputs)


def flat_outputs(obj: Any) -> list[torch.Tensor]:
    """Tensors in a model output: tensors, tuples, lists, dicts and Hugging Face ModelOutputs."""
    if hasattr(obj, "to_tuple") and callable(obj.to_tuple):
        obj = obj.to_tuple()
    leaves, _ = tree_flatten(obj)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def module_paths(model: nn.Module) -> dict[int, str]:
    """id(module) -> its path. A module registered under two names (`self.conv1` also inside `self.net`) is known by
    its first one, the name `named_modules()`, parameter names and users see."""
    return {id(m): n for n, m in model.named_modules()}
