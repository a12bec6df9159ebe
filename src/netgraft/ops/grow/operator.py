"""`grow_`: widen a model in place in the middle of training (GradMax, random, zeros or Net2Net new units), with the
optimizer's state carried along.

Same pipeline as `widen` (trace, couple, plan), then: new tensors whose new units have zero fan-in (writer rows zero,
identity units in between) and a fan-out chosen by `init`; optimizer state gathered with the same maps; everything
written into the user's own parameters (`torch.utils.swap_tensors`: the Parameter objects, and so the optimizer's
param_groups and any other reference, stay valid); certified, and rolled back if the certificate fails.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.apply import _expand, grow_tensors
from ...core.certify import MODES, Certificate, Reference, certify
from ...core.coupling import couple
from ...core.graph import COPY, FANIN
from ...core.guards import check_model
from ...core.plan import IndexMap, SpaceMaps, changes_of, plan_widths
from ...core.rng import resolve_seed
from ...core.space import total_size
from ...errors import InvalidRequestError, NotPreservedError
from .init import (
    GroupPlan,
    check_alive,
    gated_directions,
    gradmax_matrix,
    identity_value,
    plan_group,
    random_fan_in,
    top_directions,
)
from .optimizer import STATE_POWER, check_optimizer

INITS = ("gradmax", "random", "zeros", "net2net")


@dataclass
class GrowReport:
    """What `grow_` did: sizes, the certificate, and per grown dimension the fan-out norm and GradMax's singular
    values (the gradient norm each new unit's fan-in will get, up to the batch's scale)."""

    init: str
    certificate: Certificate
    changes: list[tuple[str, int, int]] = field(default_factory=list)
    fan_out_norm: dict[str, float] = field(default_factory=dict)
    singular_values: dict[str, list[float]] = field(default_factory=dict)
    optimizer_state: list[str] = field(default_factory=list)  # parameters whose state was transported

    def __str__(self) -> str:
        lines = [f"grew {len(self.changes)} dimension(s) with init='{self.init}':"]
        for key, old, new in self.changes:
            extra = f", fan-out norm {self.fan_out_norm[key]:.3g}" if key in self.fan_out_norm else ""
            lines.append(f"  {key}: {old} -> {new}{extra}")
        return "\n".join([*lines, f"certificate: {self.certificate}"])


def _inputs_of(batch: Any) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)
    raise InvalidRequestError("grow_ needs example_inputs (the model's inputs) when batch is not a tensor or "
                              "(inputs, ...)")


def _positions(origin: SpaceMaps, space, device, new: bool) -> torch.Tensor | None:  # noqa: ANN001
    """Indices of the new units (or of the original ones) along an axis; None if the axis does not grow."""
    m = origin.torch_map(space, device)
    return None if m is None else torch.nonzero((m[1] == 0) if new else (m[1] != 0)).flatten().to(device)


class _ZeroFanIn:
    """New tensors for gradmax / random / zeros: old values kept, new units with zero fan-in and a chosen fan-out."""

    def __init__(self, model: nn.Module, coupling, maps: SpaceMaps, origin: SpaceMaps, plans: list[GroupPlan],  # noqa: ANN001
                 init: str, scale: float, generator: torch.Generator, bn_weight: float | None = 1.0):
        self.model, self.c, self.maps, self.origin = model, coupling, maps, origin
        self.plans, self.init, self.scale, self.gen, self.bn_weight = plans, init, scale, generator, bn_weight
        self.role = {}  # (tensor, axis) -> "writer" | "pass" | "fanout"
        for p in plans:
            self.role.update({k: "fanout" for k in p.consumers})
            self.role.update({k: "pass" for k in p.passthrough})
            self.role.update({k: "writer" for k in p.writers})  # a writer that also sums (tied) stays zero
            if init in ("random", "gradmax"):  # the other factor of a gated product (see _grow_init.Gating)
                self.role.update({k: "random" for k in p.random_fanin})
        self.fan_in: dict[tuple[str, int], torch.Tensor] = {}  # random writer -> its new units' fan-in
        self.directions: dict[tuple[str, int], torch.Tensor] = {}  # consumer -> (D_out, k) unit vectors
        self.fan_out_norm: dict[str, float] = {}

    def is_fan_out(self, name: str, axis: int) -> bool:
        role = self.role.get((name, axis))
        return role == "fanout" or (role is None and self.c.trace.roles.get((name, axis)) == {FANIN})

    def target_norm(self, t: torch.Tensor, axis: int) -> float:
        """`scale` x the mean norm of the existing units' fan-out in this tensor."""
        cols = t.detach().movedim(axis, 0).flatten(1)
        return self.scale * float(cols.norm(dim=1).mean()) if cols.numel() else 0.0

    def fan_out_block(self, name: str, axis: int, t: torch.Tensor, n_new: int) -> torch.Tensor:
        """Values of the new units' fan-out in tensor `name` (old positions along the other axes)."""
        small = list(t.shape)
        small[axis] = n_new
        if self.init == "zeros":
            return t.new_zeros(small)
        norm = self.target_norm(t, axis)
        if self.init == "random":
            v = torch.randn(small, generator=self.gen, dtype=torch.float64)  # CPU generator: moved below
        else:
            d = self.directions[(name, axis)]  # (D_out, k), D_out = the other axes of the weight, flattened
            v = d.T.reshape(n_new, *[s for i, s in enumerate(t.shape) if i != axis]).movedim(0, axis)
        v = v / v.movedim(axis, 0).flatten(1).norm(dim=1).clamp_min(1e-30).reshape(
            [n_new if i == axis else 1 for i in range(t.dim())])
        self.fan_out_norm[name] = norm
        return (v * norm).to(device=t.device, dtype=t.dtype)

    def random_rows(self, name: str, axis: int) -> torch.Tensor:
        """The new units' random fan-in in writer `name` (drawn once: GradMax measures with the same values)."""
        if (name, axis) not in self.fan_in:
            t = self.c.trace.tensors_by_name[name].detach()
            n_new = len(_positions(self.origin, self.c.trace.param_dims[name][axis], t.device, new=True))
            self.fan_in[(name, axis)] = random_fan_in(t, axis, n_new, self.gen)
        return self.fan_in[(name, axis)]

    def tensor(self, name: str) -> torch.Tensor | None:
        tr = self.c.trace
        t = tr.tensors_by_name[name].detach()
        dims = tr.param_dims[name]
        srcs = {a: m[0] for a, s in enumerate(dims) if (m := self.maps.torch_map(s, t.device)) is not None}
        if not srcs:
            return None
        out = _expand(t, srcs, {})
        new_idx = {a: _positions(self.origin, dims[a], t.device, new=True) for a in srcs}  # new units along each axis
        old_idx = {a: _positions(self.origin, dims[a], t.device, new=False) for a in srcs}
        for a in srcs:  # fan-out first: the writers' zero rows below win where a new row meets a new column
            if not self.is_fan_out(name, a):
                continue
            block = self.fan_out_block(name, a, t, len(new_idx[a]))  # old sizes along the other axes
            out.index_copy_(a, new_idx[a], _spread(block, a, out.shape, old_idx))
        for a in srcs:
            role = self.role.get((name, a))
            if self.is_fan_out(name, a):
                continue
            if role == "pass":
                value = identity_value(self.model, name, t, a, self.bn_weight)
                if isinstance(value, torch.Tensor):
                    shape = list(out.shape)
                    shape[a] = len(new_idx[a])
                    out.index_copy_(a, new_idx[a], value.expand(shape).to(out.dtype).contiguous())
                    continue
                out.index_fill_(a, new_idx[a], value)
            elif role == "random":  # exact: the other factor of the product is 0 for a new unit
                out.index_copy_(a, new_idx[a], _spread(self.random_rows(name, a), a, out.shape, old_idx))
            else:  # writer (zero fan-in), or an axis used per unit whose role is not known: zero is function-safe
                out.index_fill_(a, new_idx[a], 0.0)
        return out


def _spread(block: torch.Tensor, axis: int, shape: torch.Size, old_idx: dict[int, torch.Tensor]) -> torch.Tensor:
    """A block of new units along `axis` (old sizes along the other axes) spread to the grown sizes of the other
    axes: their new positions stay zero."""
    for b, idx in old_idx.items():
        if b != axis:
            size = list(block.shape)
            size[b] = shape[b]
            block = block.new_zeros(size).index_copy_(b, idx, block)
    return block


class _Transport:
    """Moves per-parameter tensors (optimizer state, pending gradients) with the weights' maps: gathered, scaled like
    each copy's gradient for Net2Net (`power` 1 for first moments and gradients, 2 for second moments), zero for the
    new units of zero fan-in inits."""

    def __init__(self, coupling, maps: SpaceMaps, origin: SpaceMaps, init: str):  # noqa: ANN001
        self.tr, self.maps, self.origin, self.init = coupling.trace, maps, origin, init

    def __call__(self, name: str, v: torch.Tensor, power: int) -> torch.Tensor:
        dims = self.tr.param_dims[name]
        axis_maps = {a: m for a, s in enumerate(dims) if (m := self.maps.torch_map(s, v.device)) is not None}
        fracs = {}
        if self.init == "net2net":
            fracs = {a: m[1] ** power for a, m in axis_maps.items() if self.tr.roles.get((name, a)) == {COPY}}
        moved = _expand(v.detach(), {a: m[0] for a, m in axis_maps.items()}, fracs)
        if self.init != "net2net":
            for a in axis_maps:
                moved.index_fill_(a, _positions(self.origin, dims[a], v.device, new=True), 0.0)
        return moved

    def optimizer_state(self, optimizer, names: dict[int, str], grown: set[str]) -> dict[int, dict[str, Any]]:  # noqa: ANN001
        out: dict[int, dict[str, Any]] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                name, state = names.get(id(p)), optimizer.state.get(p)
                if name not in grown or not state:
                    continue
                out[id(p)] = {key: self(name, v, STATE_POWER[key])
                              if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape) else v
                              for key, v in state.items()}
        return out


def grow_(
    model: nn.Module,
    widths: dict[str, int] | float,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    init: str = "gradmax",
    loss_fn=None,  # noqa: ANN001
    batch: Any = None,
    example_inputs: Any = None,
    scale: float = 0.5,
    noise: float = 0.0,
    seed: int | None = None,
    bn_weight: float | None = 1.0,
    check: bool = True,
    heads: dict[str, str] | None = None,
) -> nn.Module:
    """Widen `model` **in place** during training, so that it computes the same function, and carry the optimizer's
    state along (GradMax, Evci et al. 2022; Net2Net, Chen et al. 2016).

    Args:
        model: the model being trained; modified in place (its Parameter objects are kept and resized).
        widths: as in `widen`: ``{module path: new size}`` or one float factor.
        optimizer: SGD, Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam or Adadelta; its state tensors (momentum,
            exp_avg, exp_avg_sq, ...) follow the weights. Another type raises ``TypeError`` (no silent state loss).
        init: how the new units start:
            ``"gradmax"`` zero fan-in; fan-out = the top left singular vectors of ``M = E[dL/dz_{l+1} h_{l-1}^T]``
            measured on `batch` with ``loss_fn(model, batch)``, which maximise the gradient norm of the new fan-in;
            ``"random"`` zero fan-in, random fan-out of the same norm (the paper's baseline);
            ``"zeros"`` zero fan-in and zero fan-out (the new units get no gradient under plain gradient descent:
            training continues exactly as without growth);
            ``"net2net"`` duplication as in `widen` (``noise`` for symmetry breaking, exact).
        loss_fn, batch: ``loss_fn(model, batch) -> scalar`` for GradMax (run once; no ``.grad``, RNG stream or
            BatchNorm statistic is touched).
        example_inputs: inputs to trace and certify the model; default: `batch` if it is a tensor, else ``batch[0]``.
        scale: each new unit's fan-out norm, as a fraction of the mean norm of the existing units' fan-out (the
            official GradMax code uses 0.5).
        noise, seed: as in `widen` (seed also draws the random fan-out and GradMax's completions).
        bn_weight: gamma of new BatchNorm channels (zero fan-in inits). 1.0 (default) is an identity unit in eval
            mode and lets the unit reach full scale after its first update; in train mode a channel that is constant
            0 has its gradient multiplied by gamma/sqrt(eps) (x316) - adaptive optimizers normalise that, with plain
            SGD pass None (gamma = sqrt(eps): gain 1, but the unit starts tiny).
        check: roll back and raise `NotPreservedError` if the certificate fails (it is always measured: on
            `example_inputs` and fresh probes, in eval and train mode with dropout off).
        heads: as in `widen`: ``{module path: attribute}`` naming the attribute that holds the head count of
            hand-written attention where the trace cannot tell.

    GradMax details: M is computed as if f'(0) = 1 (the paper's assumption) with the layers in between as identity
    units (BatchNorm: see `bn_weight`; depthwise convs get Dirac filters). Activations with derivative 0 at 0 in
    PyTorch (ReLU, ReLU6) would leave zero fan-in units without gradient: ``init="gradmax"/"random"`` raise there.
    More new units than directions (the fan-out size) get random unit vectors. Supported pairs: Linear -> Linear,
    Conv1d/2d -> Conv of the same rank (any stride/padding/dilation, groups=1), Conv -> global average pooling ->
    Linear.

    Gated products (``act(gate(x)) * up(x)``: SwiGLU, GeGLU, GLU): with both writers at zero fan-in the product and
    both its gradients would stay 0 forever, so for ``"gradmax"``/``"random"`` one writer (``up``; the gate when its
    activation is dead at 0, as ReLU) gives its new units a random fan-in of its rows' mean norm. The product stays
    exactly 0, the zero side learns from the first step. GradMax then measures one M per unit, through its random
    factor (Linear layers). A product that no such choice makes exact and alive (a fused gate/up projection,
    ``x * tanh(x)``) is refused; use ``"net2net"`` there.

    Returns `model` (the same object), with ``model.netgraft_report`` (a `GrowReport`).

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        >>> opt = torch.optim.Adam(m.parameters())
        >>> x, y = torch.randn(16, 4), torch.randn(16, 2)
        >>> loss = lambda model, b: torch.nn.functional.mse_loss(model(b[0]), b[1])
        >>> _ = netgraft.grow_(m, {"0": 7}, optimizer=opt, loss_fn=loss, batch=(x, y), seed=0)
        >>> m[0].weight.shape, float(m[0].weight[5:].detach().abs().max()), m.netgraft_report.certificate.passed
        (torch.Size([7, 4]), 0.0, True)
    """
    check_model(model, "grow_")
    if init not in INITS:
        raise InvalidRequestError(f"init must be one of {INITS}, got {init!r}")
    if init == "gradmax" and (loss_fn is None or batch is None):
        raise InvalidRequestError("grow_(init='gradmax') needs loss_fn(model, batch) -> scalar and a batch to "
                                  "measure M on")
    if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale >= 0):
        raise InvalidRequestError(f"scale must be a finite number >= 0, got {scale!r}")
    if noise and init != "net2net":
        raise InvalidRequestError("noise applies to init='net2net' only (zero fan-in inits are exact without it)")
    example_inputs = _inputs_of(batch) if example_inputs is None else example_inputs
    check_optimizer(optimizer, model)

    coupling = couple(model, example_inputs, heads)
    planner = plan_widths(coupling, widths)
    seed = resolve_seed(seed)
    raw = planner.build_maps(seed)
    maps = SpaceMaps(raw, noise, seed)
    origin = SpaceMaps({lid: IndexMap(m.src, (np.arange(len(m.src)) < coupling.by_leaf[lid].size).astype(float))
                        for lid, m in raw.items()})
    plans = [plan_group(coupling, g) for g in coupling.groups if g.leaf.id in raw]
    generator = torch.Generator().manual_seed(seed)
    singular: dict[str, list[float]] = {}
    if init == "net2net":
        new = grow_tensors(coupling, maps)
        fan_out_norm: dict[str, float] = {}
    else:
        for plan in plans:
            if plan.group.uniform:
                raise InvalidRequestError(f"grow_(init='{init}'): '{plan.key}' feeds {plan.group.uniform[0]}; new "
                                          "zero units "
                                 f"would change its statistics. Use init='net2net' (uniform duplication) there")
            check_alive(plan, init)
        builder = _ZeroFanIn(model, coupling, maps, origin, plans, init, float(scale), generator, bn_weight)
        if init == "gradmax":
            for plan in plans:
                if plan.random_fanin:  # a gated product: one M per unit, through its random factor
                    vecs, vals = gated_directions(model, plan, loss_fn, batch, builder.random_rows(
                        *plan.random_fanin[0]), generator)
                else:
                    m = gradmax_matrix(model, plan, loss_fn, batch)
                    k = int(raw[plan.group.leaf.id].src.shape[0] - plan.group.size)
                    vecs, vals = top_directions(m, k, generator)
                builder.directions[plan.consumers[0]] = vecs
                singular[plan.key] = [float(v) for v in vals]
        new = {n: t for n in coupling.trace.param_dims if (t := builder.tensor(n)) is not None}
        fan_out_norm = {p.key: builder.fan_out_norm[p.consumers[0][0]] for p in plans
                        if p.consumers and p.consumers[0][0] in builder.fan_out_norm}
    names = {id(t): n for n, t in coupling.trace.tensors_by_name.items()}
    transport = _Transport(coupling, maps, origin, init)
    state = transport.optimizer_state(optimizer, names, set(new)) if optimizer is not None else {}
    # pending gradients (grow_ called between backward() and step()) move too, so that step updates every weight
    grads = {n: transport(n, t.grad, 1) for n, t in coupling.trace.tensors_by_name.items()
             if n in new and isinstance(t, nn.Parameter) and t.grad is not None}
    # the source's outputs on every probe in both modes, before the model changes in place
    reference = Reference(model, coupling.trace.probes, coupling.trace.probe_outputs).precompute(MODES)

    undo = _write(model, coupling, new, grads, lambda s: total_size(s, planner.sizes))
    try:
        cert = certify(reference, model, cached=False)
    except BaseException:
        undo()
        raise
    if check and not cert.passed:
        undo()
        raise NotPreservedError(f"grow_(init='{init}') did not preserve the function (an activation with f(0) != 0, "
                                f"such as sigmoid, between the grown layer and the next?): {cert}. The model was "
                                f"restored")
    moved = []
    for p_id, st in state.items():
        p = next(p for g in optimizer.param_groups for p in g["params"] if id(p) == p_id)
        optimizer.state[p] = st
        moved.append(names[p_id])
    model.netgraft_report = GrowReport(init, cert, changes_of(coupling, planner), fan_out_norm, singular, moved)
    return model


def _write(model: nn.Module, coupling, new: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],  # noqa: ANN001
           sizes_of) -> Callable[[], None]:  # noqa: ANN001
    """Put the new tensors into the model's own Parameters/buffers and update attributes; returns an undo. An error
    part-way restores what was already written."""
    tr = coupling.trace
    saved: list = []
    owners: dict[int, list] = {}
    for _, mod in model.named_modules(remove_duplicate=False):
        for attr, b in mod._buffers.items():
            if b is not None:
                owners.setdefault(id(b), []).append((mod, attr))

    def undo() -> None:
        with torch.no_grad():
            for kind, a, b, c in reversed(saved):
                if kind == "param":
                    torch.utils.swap_tensors(a, b)
                    a.grad = c
                elif kind == "buffer":
                    a._buffers[b] = c
                else:
                    setattr(a, b, c)
            saved.clear()

    try:
        with torch.no_grad():
            for name, t in new.items():
                old = tr.tensors_by_name[name]
                if isinstance(old, nn.Parameter):
                    # swap_tensors, not `.data =`: autograd caches a parameter's shape in its gradient accumulator
                    grad, old.grad = old.grad, None
                    holder = nn.Parameter(t, requires_grad=old.requires_grad)
                    try:
                        torch.utils.swap_tensors(old, holder)
                    except RuntimeError as err:
                        old.grad = grad
                        raise RuntimeError(
                            f"grow_: cannot resize parameter '{name}' in place ({err}). Something still holds it: "
                            f"usually an output kept from an earlier forward pass (its autograd graph saved the "
                            f"weight) - delete it or .detach() it before growing. The model was left unchanged"
                        ) from err
                    saved.append(("param", old, holder, grad))
                    old.grad = grads.get(name)
                else:
                    for mod, attr in owners.get(id(old), []):
                        saved.append(("buffer", mod, attr, old))
                        mod._buffers[attr] = t
            for setter in tr.attrs:
                module = model.get_submodule(setter.module) if setter.module else model
                value = tuple(sizes_of(s) for s in setter.spaces) if isinstance(setter.spaces, tuple) else sizes_of(
                    setter.spaces)
                saved.append(("attr", module, setter.attr, getattr(module, setter.attr)))
                setattr(module, setter.attr, value)
    except BaseException:
        undo()
        raise
    return undo
