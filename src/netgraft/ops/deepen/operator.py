"""`deepen`: the Net2DeeperNet operator - insert layers or blocks that start as exact identities.

Same pipeline as `widen`: trace the model once, plan a form for each insertion point from the traced graph
(`_deepen_plan`), build the new modules (`_deepen_build`), place them in a copy of the model, calibrate inserted
BatchNorms on data, and certify the result against the source's recorded outputs.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ... import hf
from ...core.catalogue import FUSED_FAST_PATH_LAYERS
from ...core.certify import MODES, Certificate, Reference, audit, certify
from ...core.clone import clone_module
from ...core.graph import ModuleCall, Trace
from ...core.guards import check_model
from ...core.registry import layer_rule_for
from ...core.rng import resolve_seed
from ...core.state import call_model, preserve_state, run_mode
from ...core.trace import trace
from ...errors import InvalidRequestError, NotPreservedError, UnsupportedModelError
from ...hf.request import DEPTH_FIELDS, ConfigSizes
from .build import Built, block_insert, identity_layer, make_identity_, residual_insert
from .inserts import Deepened
from .plan import IdentityForm, has_skip, identity_form, neighbourhood, zero_plan

KINDS = ("auto", "identity", "residual", "block", "copy")


@dataclass
class Insertion:
    """One inserted module: the anchor the user named, where the new module lives in the result, and how."""

    after: str
    path: str
    kind: str  # identity | residual | block | copy
    gated: bool
    new_params: int
    note: str
    runs_after: str = ""  # the module whose output the insert receives (may follow the anchor: its activation)

    def __str__(self) -> str:
        gate = " [gated: ramp with netgraft.set_gates_, then netgraft.fold_gates]" if self.gated else ""
        runs = f", runs after '{self.runs_after}'" if self.runs_after and self.runs_after != self.after else ""
        return (f"after '{self.after}'{runs}: '{self.path}' ({self.kind}, {self.new_params:,} params) "
                f"{self.note}{gate}")


@dataclass
class DeepenReport:
    """What `deepen` did: one `Insertion` per anchor and the measured certificate."""

    certificate: Certificate
    insertions: list[Insertion] = field(default_factory=list)
    exact: bool = True  # False when noise > 0 was asked for
    modes: tuple[str, ...] = MODES  # the modes in which the result is exact (claimed and certified)

    def __str__(self) -> str:
        lines = [f"  {i}" for i in self.insertions]
        kind = "" if self.exact else " (noise > 0: approximate by request)"
        if self.exact:
            kind += f" (exact in {' and '.join(self.modes)} mode)"
        return "\n".join([f"inserted {len(self.insertions)} module(s){kind}:", *lines,
                          f"certificate: {self.certificate}"])


@dataclass
class _Planned:
    anchor: str
    kind: str
    point: str  # module path the new module goes right after
    build: Built
    pass_args: bool  # blocks get the call's extra arguments (masks) too
    chained: bool = False  # the point's container feeds each entry's output to the next: insert into it
    dtype: torch.dtype | None = None  # of the value at the point (new layers are built in it); None: keep


def _chained(tr: Trace, model: nn.Module, point: str) -> bool:
    """True if the container holding `point` runs its entries as a chain (each gets the previous one's output), so a
    new entry after `point` receives exactly its output: a plain nn.Sequential always does; for a ModuleList (or a
    Sequential with its own forward) the trace must show it."""
    parent_path, _, key = point.rpartition(".")
    parent = model.get_submodule(parent_path) if point else None
    if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
        return False
    if type(parent).forward is nn.Sequential.forward:
        return True
    keys = list(parent._modules)
    first_call = {}
    for c in tr.calls:
        first_call.setdefault(c.path, c)
    at = keys.index(key)
    def sibling(k: str) -> ModuleCall | None:
        return first_call.get(f"{parent_path}.{k}" if parent_path else k)

    here = first_call.get(point)
    nxt = sibling(keys[at + 1]) if at + 1 < len(keys) else None
    prev = sibling(keys[at - 1]) if at > 0 else None
    if here is None:
        return False
    if nxt is not None:
        return bool(nxt.inputs) and nxt.inputs[0] is not None and nxt.inputs[0] is here.outputs[0]
    return prev is not None and bool(here.inputs) and here.inputs[0] is not None and here.inputs[0] is prev.outputs[0]


def _anchor_call(tr: Trace, model: nn.Module, path: str) -> ModuleCall:
    names = [n for n, _ in model.named_modules()]
    if path not in names:
        close = difflib.get_close_matches(path, names, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidRequestError(f"deepen: the model has no module '{path}'{hint}")
    calls = [c for c in tr.calls if c.path == path]
    if not calls:
        raise InvalidRequestError(f"deepen: module '{path}' did not run on example_inputs (or runs inside a layer "
                                  "traced as one "
                         "op), so there is nothing to insert after")
    if len(calls) > 1:
        raise UnsupportedModelError(f"deepen: module '{path}' ({type(calls[0].module).__name__}) is called "
                                    f"{len(calls)} times in forward; an insert after it would run after every call. "
                                    "Name a module that is called once")
    call = calls[0]
    if not call.output_is_tensor or len(call.outputs) != 1 or call.outputs[0] is None:
        raise UnsupportedModelError(f"deepen: module '{path}' ({type(call.module).__name__}) does not return one "
                                    "tensor; deepen inserts after modules that return a tensor: name the block that "
                                    "contains it, or a module after it")
    return call


def _is_block(module: nn.Module) -> bool:
    """A module with submodules that is not a plain container or a layer with its own rule: a 'block'."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return any(True for _ in module.children()) and not isinstance(module, containers) and \
        layer_rule_for(module) is None


def _template(tr: Trace, model: nn.Module, call: ModuleCall) -> ModuleCall:
    """The block to copy: the anchor if it keeps its input's shape, else a sibling of the same type that does."""
    def keeps_shape(c: ModuleCall) -> bool:
        return bool(c.inputs) and c.inputs[0] is not None and c.inputs[0].shape == c.outputs[0].shape == \
            call.outputs[0].shape

    if keeps_shape(call):
        return call
    parent = call.path.rpartition(".")[0]
    for c in tr.calls:
        if c.path.rpartition(".")[0] == parent and type(c.module) is type(call.module) and len(c.outputs) == 1 \
                and c.outputs[0] is not None and keeps_shape(c):
            return c
    inp = call.inputs[0].shape if call.inputs and call.inputs[0] is not None else "?"
    raise UnsupportedModelError(f"deepen: module '{call.path}' ({type(call.module).__name__}) maps shape {inp} to "
                                f"{call.outputs[0].shape}, so a copy of it cannot follow it, and no block of that type "
                                f"in '{parent or '<root>'}' keeps the shape; use kind='residual'")


def _inside_fast_path(model: nn.Module, path: str) -> str | None:
    """The module containing `path` whose fused inference fast path would skip an insert inside it (anchors there are
    refused), or None."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if isinstance(model.get_submodule(prefix), FUSED_FAST_PATH_LAYERS):
            return prefix
    return None


def _refuse_cache_indexed(template: ModuleCall) -> None:
    """A block that addresses a KV cache by its own layer index (Hugging Face's `layer_idx`) cannot be copied: the
    copy would read and write the anchor's cache slot, which a single forward does not show but cached decoding
    does."""
    for sub, module in template.module.named_modules():
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int) and not isinstance(index, bool):
            where = f"{template.path}.{sub}" if sub else template.path
            raise UnsupportedModelError(
                f"deepen: '{template.path}' ({type(template.module).__name__}) holds a layer index "
                f"('{where}'.layer_idx = {index}) that addresses the KV cache: a copy would share layer "
                f"{index}'s cache slot and decode wrongly with a cache. For a Hugging Face model use "
                f"netgraft.deepen(model, num_hidden_layers=...), which renumbers the layers and updates the "
                f"config; or kind='residual'")


def _plan_one(tr: Trace, model: nn.Module, path: str, kind: str) -> _Planned:
    call = _anchor_call(tr, model, path)
    value = call.outputs[0]
    where = f"the output of '{path}' ({type(call.module).__name__})"
    owner = _inside_fast_path(model, path)
    if owner is not None:
        raise UnsupportedModelError(f"deepen: '{path}' is inside {type(model.get_submodule(owner)).__name__} "
                                    f"'{owner}', whose fused inference fast path reads its submodules' weights "
                                    f"directly and would skip an inserted module; insert after '{owner}' instead")
    if kind == "auto":
        # a block whose residual branches can be zeroed; else, for a residual block (post-norm), a gated copy;
        # else the identity layer where exact in both modes, else a residual insert (both train at once, unlike a
        # closed gate). An identity layer with a BatchNorm is an identity in eval mode only: a residual insert then.
        if _is_block(call.module):
            with contextlib.suppress(UnsupportedModelError):
                planned = _plan_one(tr, model, path, "block")
                if not planned.build.gated or has_skip(_template(tr, model, call)):
                    return planned
        with contextlib.suppress(UnsupportedModelError):
            planned = _plan_one(tr, model, path, "identity")
            if not any(identity for _, identity in planned.build.calibrate):
                return planned
        kind = "residual"
    if kind in ("block", "copy"):
        template = _template(tr, model, call)
        _refuse_cache_indexed(template)
        if not any(True for _ in template.module.parameters()):
            raise UnsupportedModelError(f"deepen: '{template.path}' ({type(template.module).__name__}) has no "
                                        f"parameters, so a copy of it adds nothing; use kind='residual'")
        built = block_insert(template.module, template.path, zero_plan(template, value), fresh=kind == "block")
        if template is not call:
            built.note += f" (template: '{template.path}', which keeps the shape)"
        return _Planned(path, kind, path, built, pass_args=True)
    if kind == "identity":
        form = identity_form(tr, call)
        if isinstance(form, str):
            raise UnsupportedModelError(f"deepen: no exact identity layer after '{path}' "
                                        f"({type(call.module).__name__}): {form}. Alternatives: kind='residual' "
                                        "(x + f(x) with f's last layer zero: exact after any activation), or name "
                                        "the activation module that follows")
        assert isinstance(form, IdentityForm)
        point = form.call.outputs[0]
        built = identity_layer(form, point, neighbourhood(point), where, tr.model)
        built.note += form.via
        return _Planned(path, kind, form.call.path, built, pass_args=False, dtype=point.dtype)
    built = residual_insert(value, neighbourhood(value), where, tr.model)
    return _Planned(path, kind, path, built, pass_args=False, dtype=value.dtype)


def _locate(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str] | None:
    for parent in root.modules():
        for key, child in parent._modules.items():
            if child is target:
                return parent, key
    return None


def _place(root: nn.Module, target: nn.Module, new: nn.Module, pass_args: bool, wrap: bool) -> nn.Module:
    """Put `new` right after `target`: as the next entry of its (chained) Sequential/ModuleList, or by wrapping."""
    found = _locate(root, target)
    if found is None:  # the anchor is the model itself
        return _wrapper(root, new, pass_args)
    parent, key = found
    if not wrap and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        items = list(parent._modules.items())
        at = [k for k, _ in items].index(key) + 1
        numbered = [k for k, _ in items] == [str(i) for i in range(len(items))]
        new_key = str(at) if numbered else _fresh_key(parent, f"{key}_deep")
        items.insert(at, (new_key, new))
        if numbered:  # keep 0..n-1 numbering, as a deeper model built from scratch would have
            items = [(str(i), m) for i, (_, m) in enumerate(items)]
        parent._modules.clear()
        parent._modules.update(items)
        owner = _locate(root, parent)
        if isinstance(parent, nn.ModuleList) and owner is not None:
            layers_attr = getattr(owner[0], "num_layers", None)
            if isinstance(layers_attr, int) and layers_attr == len(items) - 1:
                owner[0].num_layers = len(items)
        return root
    parent._modules[key] = _wrapper(target, new, pass_args)
    return root


def _wrapper(target: nn.Module, new: nn.Module, pass_args: bool) -> Deepened:
    """`Deepened(target, new)` in the target's own mode (only the wrapper's flag: the modules inside keep theirs)."""
    wrapper = Deepened(target, new, pass_args)
    wrapper.training = target.training
    return wrapper


def _fresh_key(parent: nn.Module, key: str) -> str:
    n, out = 2, key
    while out in parent._modules:
        out, n = f"{key}{n}", n + 1
    return out


def _call_counts(model: nn.Module, modules: list[nn.Module], example_inputs: Any) -> list[int]:
    counts = [0] * len(modules)
    handles = [m.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, m in enumerate(modules)]
    try:
        with run_mode(model, train=False), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return counts


def _batches(data: Iterable, example_inputs: Any) -> Iterable:
    """Input batches from `data`: shaped like example_inputs; trailing items (labels of (x, y) pairs) are dropped."""
    n = len(example_inputs) if isinstance(example_inputs, tuple) else None
    for batch in data:
        if isinstance(example_inputs, torch.Tensor) and isinstance(batch, (tuple, list)) and batch:
            yield batch[0]
        elif isinstance(batch, torch.Tensor) and n is not None:
            yield (batch,)
        elif isinstance(batch, (tuple, list)) and n is not None and len(batch) > n:
            yield tuple(batch[:n])
        else:
            yield batch


@torch.no_grad()
def _calibrate(model: nn.Module, bns: list[tuple[nn.Module, bool]], data: Iterable, example_inputs: Any) -> int:
    """Measure each inserted BatchNorm's input statistics on `data`; identity BNs then undo them."""
    stats: dict[int, list] = {id(bn): [0, 0.0, 0.0] for bn, _ in bns}

    def hook(bn: nn.Module, args: tuple) -> None:
        x = args[0].detach().double().transpose(0, 1).reshape(args[0].shape[1], -1)
        s = stats[id(bn)]
        s[0], s[1], s[2] = s[0] + x.shape[1], s[1] + x.sum(1), s[2] + (x * x).sum(1)

    handles = [bn.register_forward_pre_hook(hook) for bn, _ in bns]
    modes = [(m, m.training) for m in model.modules()]
    # Measured as training will see it: the model's own BatchNorms use batch statistics (their running statistics are
    # restored after), while the inserted ones stay identities in eval mode so that they pass values on unchanged.
    model.train()
    for bn, _ in bns:
        bn.eval()
    batches = 0
    try:
        with preserve_state(model):
            for batch in _batches(data, example_inputs):
                try:
                    call_model(model, batch)
                except Exception as err:
                    raise InvalidRequestError(f"deepen: the model failed on `data` batch {batches} "
                                              f"({type(err).__name__}: "
                                     f"{str(err)[:200]}); batches must look like example_inputs (trailing items "
                                     "such as labels are dropped), with more than one sample") from err
                batches += 1
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    if batches == 0:
        raise InvalidRequestError("deepen: `data` yielded no batches")
    for bn, identity in bns:
        count, total, squares = stats[id(bn)]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)  # biased: what BatchNorm normalises with in training
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        if identity:  # gamma * (x - mean) / sqrt(var + eps) + beta == x
            make_identity_(bn)
    return batches


def _dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def deepen(
    model: nn.Module,
    after: str | list[str] | ConfigSizes | None = None,
    *,
    example_inputs: Any = None,
    num_hidden_layers: int | None = None,
    data: Iterable | None = None,
    kind: str = "auto",
    noise: float = 0.0,
    seed: int | None = None,
    check: bool = True,
) -> nn.Module:
    """Return a deeper copy of `model` that computes the same function (Net2DeeperNet). `model` is not modified.

    A new layer or block goes right after each module named in `after`:

    - ``"identity"``: the Net2Net identity layer (identity matrix, or Dirac kernel per group) imitating the Linear /
      Conv before it, then the same idempotent activation (ReLU, ReLU6, Hardtanh); with a BatchNorm when the
      neighbourhood has one. It goes where that activation applies (after the ReLU that follows a named Conv).
    - ``"residual"``: ``x + branch(x)``, branch ``Linear/Conv -> (norm) -> activation -> Linear/Conv`` whose last
      layer is zero: exact after any activation; every new parameter gets gradient within two steps.
    - ``"block"``: a new block of the anchor's type (freshly initialised) whose residual branches end in zeroed
      layers (ResNet's last BatchNorm, a transformer's attention-out and FFN-down projections). A block with no
      residual form (post-norm) goes behind a gate at 0: ``g * block(x) + (1 - g) * x``; ramp it with
      `set_gates_` and remove it with `fold_gates`.
    - ``"copy"``: like "block", but the copy keeps the anchor's trained weights (stacking).
    - ``"auto"`` (default): "block" for modules with submodules, else "identity" where exact, else "residual".

    Args:
        model: any `nn.Module`.
        after: where to insert, which also selects the front end: a module path or a list of them (as in
            ``model.named_modules()``), traced on `example_inputs`; or, for a Hugging Face model of a known family,
            a `netgraft.ConfigSizes(num_hidden_layers=N)`: new layers spread evenly (pre-norm: copies with zeroed
            output projections; post-norm BERT: identity layers), per-layer config fields extended, the result a
            plain model of the same class.
        example_inputs: tuple of tensors (or a dict of keyword inputs) to trace the model and certify the result.
        data: optional iterable of input batches (``(x, y)`` pairs are fine: labels are ignored). Inserted
            BatchNorms take their statistics from it, so they are identities in eval mode and close to one in train
            mode. Without it an identity BatchNorm is exact in eval mode only.
        kind: "auto", "identity", "residual", "block" or "copy" (see above).
        noise: std of Gaussian noise, relative to 1/sqrt(fan_in), added to the weights set for exactness (identity
            and zeroed layers) to break symmetry; any noise > 0 makes the result approximate by request.
        seed: seeds new weights and noise; None draws the seed from torch's global generator, as in every verb
            (global RNG state is otherwise left as it was).
        check: raise `NotPreservedError` if an exact (noise 0) result exceeds the bound.
        num_hidden_layers: shorthand for ``after=ConfigSizes(num_hidden_layers=N)``.

    The result carries ``result.netgraft_report`` (a `DeepenReport`, with its ``.certificate``).

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> deep = netgraft.deepen(m, "0", example_inputs=(torch.randn(4, 3),), seed=0)
        >>> [type(x).__name__ for x in deep], deep.netgraft_report.certificate.passed
        (['Linear', 'ReLU', 'Sequential', 'Linear'], True)
    """
    check_model(model, "deepen")
    if num_hidden_layers is not None:  # shorthand for a ConfigSizes request
        if after is not None:
            raise InvalidRequestError("deepen: give `after` or num_hidden_layers, not both")
        after = ConfigSizes(num_hidden_layers=num_hidden_layers)
    if isinstance(after, ConfigSizes):  # the family front end: planned from the config, no trace
        if not hf.is_hf_model(model):
            raise InvalidRequestError(f"deepen: ConfigSizes (config sizes) apply to Hugging Face models only; got "
                                      f"{type(model).__name__}: name the modules to grow instead")
        if set(after.given()) != set(DEPTH_FIELDS):
            raise InvalidRequestError(f"deepen: {after} must give num_hidden_layers only (widths: use widen)")
        return hf.deepen_hf(model, num_hidden_layers=after.num_hidden_layers, probe_inputs=example_inputs,
                            check=check)
    if example_inputs is None:
        raise InvalidRequestError("deepen needs example_inputs (the inputs to trace the model with)")
    anchors = [after] if isinstance(after, str) else list(after) if isinstance(after, (list, tuple)) else None
    if not anchors or not all(isinstance(a, str) for a in anchors):
        raise InvalidRequestError(f"after must be a module path or a non-empty list of them, got {after!r}")
    if len(set(anchors)) != len(anchors):
        raise InvalidRequestError(f"after names a module twice: {anchors}")
    if kind not in KINDS:
        raise InvalidRequestError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(noise, bool) or not (isinstance(noise, numbers.Real) and math.isfinite(noise) and noise >= 0):
        raise InvalidRequestError(f"noise must be a finite number >= 0, got {noise!r}")
    if data is not None and (isinstance(data, (torch.Tensor, dict)) or not isinstance(data, Iterable)):
        raise InvalidRequestError(f"data must be an iterable of input batches (a list or a DataLoader), got "
                        f"{type(data).__name__}; wrap a single batch as [x]")
    tr = trace(model, example_inputs)
    dtype, device = _dtype_device(model)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    seed = resolve_seed(seed)
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        plans = [_plan_one(tr, model, a, kind) for a in anchors]
        for p in plans:
            p.chained = _chained(tr, model, p.point)
        result, inserted = _assemble(model, plans, example_inputs, dtype, device)
        if noise > 0:
            with torch.no_grad():
                for p in plans:
                    for t, fan_in in p.build.structural:
                        t.add_(torch.randn_like(t) * (noise / math.sqrt(fan_in)))
    calibrate = [bn_flag for p in plans for bn_flag in p.build.calibrate]
    if data is not None and calibrate:
        _calibrate(result, calibrate, data, example_inputs)
    claimed, why = _claimed_modes(plans)
    reference = Reference(model, tr.probes, tr.probe_outputs)
    cert = certify(reference, result, claimed=claimed, note=why)
    if not cert.passed and noise == 0 and any(p.chained for p in plans):
        # a forward that reads its container's entries by position (outs[1] + outs[-1]) changes with a new entry:
        # wrapping the anchors instead leaves every position as it was
        result, inserted = _assemble(model, plans, example_inputs, dtype, device, force_wrap=True)
        if calibrate and data is not None:
            _calibrate(result, calibrate, data, example_inputs)
        cert = certify(reference, result, claimed=claimed, note=why)
    audit(model, result, example_inputs, {f"{i}.{n}": t for i, m in enumerate(inserted)
                                          for n, t in m.named_parameters()}, "deepen")
    paths = {id(m): n for n, m in result.named_modules()}
    report = DeepenReport(cert, [
        Insertion(p.anchor, paths.get(id(m), "?"), p.kind, p.build.gated, sum(t.numel() for t in m.parameters()),
                  p.build.note, p.point) for p, m in zip(plans, inserted, strict=True)], exact=noise == 0,
        modes=tuple(m for m in claimed if m in MODES))
    result.netgraft_report = report
    if check and noise == 0 and not cert.passed:
        raise NotPreservedError(f"deepen did not preserve the function: {cert}")
    return result


def _claimed_modes(plans: list[_Planned]) -> tuple[tuple[str, ...], str]:
    """The modes in which the inserts are exact: all of them, except that a Net2Net identity layer with a BatchNorm
    is an identity in eval mode only (in train mode it normalises with each batch's own statistics, which equal the
    calibration statistics on the calibration data alone)."""
    identity_bn = [p.anchor for p in plans if any(identity for _, identity in p.build.calibrate)]
    if identity_bn:
        why = (f"identity BatchNorm after {identity_bn}: exact in eval mode only (in train mode it uses each batch's "
               f"statistics); kind='residual' is exact in both")
        return ("eval", "cached decoding"), why
    return (*MODES, "cached decoding"), ""


def _assemble(model: nn.Module, plans: list[_Planned], example_inputs: Any, dtype: torch.dtype,
              device: torch.device, force_wrap: bool = False) -> tuple[nn.Module, list[nn.Module]]:
    """Place every planned module in a copy of `model`, then check the placement by running it: each inserted
    module must run once and every original module as often as before. A forward that indexes its ModuleList
    (``self.layers[i]`` for a fixed range) breaks that; those inserts are placed again by wrapping their anchor."""
    for p in plans:
        p.build.module.to(device=device, dtype=p.dtype or dtype)
        p.build.module.train(model.get_submodule(p.point).training if p.point else model.training)
        for bn, identity in p.build.calibrate:
            if identity:
                make_identity_(bn)
    inserted = [p.build.module for p in plans]
    originals = list(dict(model.named_modules()).values())
    expected = _call_counts(model, originals, example_inputs)
    wrap: set[int] = set(range(len(plans))) if force_wrap else set()
    for _ in range(2):
        result = clone_module(model)
        copies = list(dict(result.named_modules()).values())
        targets = [result.get_submodule(p.point) if p.point else result for p in plans]
        for i, (p, target) in enumerate(zip(plans, targets, strict=True)):
            result = _place(result, target, p.build.module, p.pass_args, wrap=i in wrap or not p.chained)
        try:
            counts = _call_counts(result, inserted + copies, example_inputs)
        except Exception as err:  # a traced model that ran must run with identities inserted: say where it broke
            if wrap or not any(p.chained for p in plans):
                anchors = [p.anchor for p in plans]
                raise UnsupportedModelError(f"deepen: the model fails to run with the inserted modules "
                                            f"({type(err).__name__}: {str(err)[:300]}); anchors: {anchors}") from err
            counts = [0] * (len(plans) + len(copies))  # a container passes other arguments: wrap instead
        bad = {i for i, c in enumerate(counts[:len(plans)]) if c != 1}
        if counts[len(plans):] != expected:
            bad |= {i for i, p in enumerate(plans) if p.chained}
        if not bad - wrap:
            break
        wrap |= bad
    if bad:
        raise UnsupportedModelError("deepen: inserted modules do not run exactly once, right after their anchor, "
                                    f"in the model's forward: {[plans[i].anchor for i in sorted(bad)]}")
    return result, inserted
