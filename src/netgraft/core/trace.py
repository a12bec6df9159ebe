"""Trace: run the model once and couple tensor axes through every torch op it executes.

A `TorchFunctionMode` sees each torch function call (F.linear, Tensor.view, torch.cat, ...) as one atomic op; module
hooks keep a stack of the module paths being executed, so every op knows where it ran. Each op is looked up in the
registry (`netgraft.registry`); an op with no rule blocks every axis it touches, so a model we cannot map is
refused rather than widened wrongly. Modules whose type has a registered *layer* rule are traced as one op.

Shapes written in a forward (``q.view(B, T, self.n_head, C // self.n_head)``) are followed too: while tracing, the
int attributes of the model's own modules and every size the forward reads (``x.size()``, ``x.shape``) are
`TracedInt`s that remember where they came from, so a reshape rule knows that a factor is ``self.n_head`` (an attribute
to update when heads are added) or the size of another axis (that it must keep equal). The attributes are put back
as they were when the trace ends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import EXTENSION_HINT, InvalidRequestError, UnsupportedModelError
from . import space as sp
from .graph import ModuleCall, Trace, TracedInt, Value, _flat_tensors
from .probes import make_probes, same_path_probes
from .registry import RuleFailure, dispatch_op, layer_rule_for, op_name, run_layer_rule
from .state import call_model, flat_outputs, run_mode


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace
        self.suppress = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suppress:
            return out
        if isinstance(out, (int, torch.Size)) and not isinstance(out, bool) and op_name(func) in ("size", "shape"):
            return self._traced_size(args, kwargs, out)
        dispatch_op(self.trace, func, args, kwargs, out)
        return out

    def _traced_size(self, args: tuple, kwargs: dict, out):  # noqa: ANN202
        """`x.size()`, `x.shape`, `x.size(d)`: sizes that remember their axis (see the module docstring)."""
        if not args or not isinstance(args[0], torch.Tensor):
            return out
        v = self.trace.peek(args[0])
        if v is None or len(v.dims) != args[0].dim():
            return out
        if isinstance(out, torch.Size):
            return torch.Size([TracedInt(n, {("size", s)}, ("size", s)) for n, s in zip(out, v.dims, strict=True)])
        d = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(d, int) or not v.dims:
            return out
        s = v.dims[d % len(v.dims)]
        return TracedInt(out, {("size", s)}, ("size", s))


# nn.Module's own bookkeeping ints are never traced; only attributes a user's module set
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _trace_attributes(model: nn.Module) -> list[tuple[nn.Module, str, int, TracedInt]]:
    """Replace the int attributes of the model's own (non-torch) modules by `TracedInt`s for the trace."""
    swapped = []
    for path, m in model.named_modules():
        if type(m).__module__.startswith("torch.") or isinstance(m, torch.jit.ScriptModule):
            continue
        for k, v in list(vars(m).items()):
            if type(v) is int and v > 1 and k not in _MODULE_INTERNALS:
                t = TracedInt(v, {("attr", path, k)}, ("attr", path, k))
                vars(m)[k] = t
                swapped.append((m, k, v, t))
    return swapped


def _restore_attributes(model: nn.Module, swapped: list[tuple[nn.Module, str, int, TracedInt]]) -> None:
    for m, k, v, t in swapped:
        if vars(m).get(k) is t:
            vars(m)[k] = v
    for m in model.modules():  # anything the forward stored (a cached length) is a plain int again
        for k, v in list(vars(m).items()):
            if isinstance(v, TracedInt):
                vars(m)[k] = int(v)


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds parameter/buffer `name` (a qualified name) and the attribute name inside it."""
    mod_path, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_path) if mod_path else model), attr


def trace(model: nn.Module, example_inputs: Any) -> Trace:
    """Run `model` once on `example_inputs` and return the coupled axes. The model is not modified."""

    tr = Trace(model)
    rec = _Recorder(tr)
    for t in _flat_tensors(example_inputs):
        v = tr.new_value(t, origin="model input")
        for i, s in enumerate(v.dims):
            sp.fix(s, f"axis {i} of a model input")
        tr.inputs.append(v)

    active_leaf: list[tuple[nn.Module, list]] = []  # the module with a layer rule being traced as one op
    call_inputs: list[list[Value | None]] = []  # read before the call: an in-place op inside may rebind a tensor

    def pre_hook(module: nn.Module, args: tuple) -> None:
        name = tr.module_names.get(id(module))
        if name is None or active_leaf:  # not part of the model, or inside a layer traced as one op
            return
        tr.module_stack.append(name)
        call_inputs.append([tr.peek(t) for t in _flat_tensors(args)])
        if isinstance(module, torch.jit.ScriptModule):  # its ops run in TorchScript, invisible to the trace
            for t in _flat_tensors(args):
                for s in tr.value_of(t, name).dims:
                    if s.size > 1:
                        sp.block(s, f"input of the TorchScript module '{name}' (its ops cannot be traced)")
        if layer_rule_for(module) is not None:
            active_leaf.append((module, list(args)))
            rec.suppress += 1

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        name = tr.module_names.get(id(module))
        if name is None:
            return
        if active_leaf:
            if active_leaf[-1][0] is not module:
                return
            _, leaf_args = active_leaf.pop()
            rec.suppress -= 1

            run_layer_rule(tr, layer_rule_for(module), module, name, leaf_args, output)
        if tr.module_stack and tr.module_stack[-1] == name:
            tr.module_stack.pop()
            outs = [tr.peek(t) for t in flat_outputs(output)]
            tr.calls.append(ModuleCall(name, module, call_inputs.pop(), outs, isinstance(output, torch.Tensor)))

    h1 = nn.modules.module.register_module_forward_pre_hook(pre_hook)
    h2 = nn.modules.module.register_module_forward_hook(post_hook)
    swapped = _trace_attributes(model)
    try:
        with run_mode(model, train=False), torch.no_grad(), rec:
            try:
                out = call_model(model, example_inputs)
            except Exception as err:

                if isinstance(err, RuleFailure):
                    raise UnsupportedModelError(f"{err}. A rule can be replaced: {EXTENSION_HINT}") from err
                raise InvalidRequestError(
                    f"the model failed on example_inputs while netgraft traced it ({type(err).__name__}: "
                    f"{str(err)[:300]}); pass inputs the model accepts (a tuple of tensors or a dict of keyword inputs)"
                ) from err
    finally:
        h1.remove()
        h2.remove()
        _restore_attributes(model, swapped)
    tr.output_tensors = [t.detach() for t in flat_outputs(out)]  # eval-mode outputs, reused by the certificate
    for t in flat_outputs(out):
        v = tr.value_of(t, "model output")
        for i, s in enumerate(v.dims):
            sp.fix(s, f"axis {i} of a model output")
        tr.outputs.append(v)
    tr.values.clear()  # drop references to activations
    # the same path on fresh inputs, or refuse; the probes the model accepted are the ones results are certified on
    tr.probes, probe_outputs = same_path_probes(model, make_probes(example_inputs))
    tr.probe_outputs = [tr.output_tensors] + [[t.detach() for t in flat_outputs(o)] for o in probe_outputs[1:]]
    return tr
