"""Initial values of the new units for `grow_`: zero fan-in, identity units in between, and a fan-out that is zero,
random or GradMax's (top singular vectors of M = E[dL/dz_{l+1} h_{l-1}^T]).

Roles come from the trace: a parameter axis that holds one value per unit ("copy") belongs either to a *writer* (the
Linear/Conv that creates the unit: its new rows and bias are zero, the zero fan-in) or to a *pass-through* layer that
reads the unit and writes it again (BatchNorm, GroupNorm, a depthwise conv: they become identity units). An axis
that is summed over ("fanin") is the fan-out of the unit in the next layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import _space as sp
from ._groups import Coupling, Group
from ._trace import COPY, FANIN, Value, owner_of

# Ops a new unit may cross between its writer and the next layer: identity units keep its value at zero.
_ELEMENTWISE = {"relu", "relu6", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "hardtanh", "elu", "selu", "celu",
                "softplus", "mish", "hardswish", "hardsigmoid", "prelu", "dropout", "alpha_dropout", "dropout1d",
                "dropout2d", "dropout3d", "feature_alpha_dropout", "batch_norm", "group_norm", "instance_norm",
                "contiguous", "clone"}
_POOL = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "mean", "flatten", "view", "reshape", "squeeze"}
# Activations whose autograd derivative is 0 at 0: a zero fan-in unit behind them never receives a gradient.
_DEAD_AT_ZERO = {"relu", "relu6"}
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


@dataclass
class GroupPlan:
    """What `grow_` needs to know about one grown group."""

    group: Group
    key: str
    writers: list[tuple[str, int]]  # (tensor, axis) of the layers that create the units
    passthrough: list[tuple[str, int]]  # (tensor, axis) of identity units (norms, depthwise convs)
    consumers: list[tuple[str, int]]  # (tensor, axis) summed over: the fan-out
    path_ops: list[str]  # op names between the writer and the consumers
    dead_ops: list[str] = field(default_factory=list)  # among them, activations with derivative 0 at 0


def _leaf_ids(space: sp.Space) -> set[int]:
    return {x.id for x in sp.leaves(space)}


def plan_group(coupling: Coupling, g: Group) -> GroupPlan:
    tr = coupling.trace
    ids = {g.leaf.id}
    writers, passthrough, consumers = [], [], []
    for m in g.members:
        key = (m.tensor, m.axis)
        if FANIN in m.roles:
            consumers.append(key)
        if COPY not in m.roles:
            continue
        if FANIN in m.roles:  # a tied tensor (embedding reused as output layer): zero new columns are exact
            writers.append(key)
            continue
        ops = tr.role_ops.get(key, [])
        # pass-through: a per-unit op (BatchNorm, depthwise conv) that reads the unit and does not sum over the
        # group; a Linear/Conv that sums over it (a residual stream feeding its own width) writes new units
        sums = any(role == FANIN and ids & _leaf_ids(tr.param_dims[p][a]) for op in ops for p, a, role in op.roles)
        reads = any(v.param is None and any(ids & _leaf_ids(d) for d in v.dims) for op in ops for v in op.inputs)
        (passthrough if reads and not sums else writers).append(key)
    return GroupPlan(g, g.name or str(g.members[0]), writers, passthrough, consumers,
                     *_path(coupling, writers, ids))


def _path(coupling: Coupling, writers: list[tuple[str, int]], ids: set[int]) -> tuple[list[str], list[str]]:
    """The ops the new units flow through (every op whose output still carries the grown dimension) from their
    writers up to the layers that sum over them: their names, and those that have derivative 0 at 0."""
    tr = coupling.trace
    names: list[str] = []
    dead: list[str] = []
    todo: list[Value] = [v for key in writers for op in tr.role_ops.get(key, []) for v in op.outputs]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        for op in v.consumers:
            if id(op) in seen:
                continue
            seen.add(id(op))
            carried = [o for o in op.outputs if any(ids & _leaf_ids(d) for d in o.dims)]
            if carried:
                names.append(op.name)
                todo.extend(carried)
                if op.name in _DEAD_AT_ZERO or (op.name == "hardtanh" and _num(op.arg(1, "min_val", -1.0)) >= 0):
                    dead.append("relu6" if op.name == "hardtanh" else op.name)  # ReLU6 is traced as hardtanh(0, 6)
    return names, dead


def _num(x: object) -> float:
    return float(x) if isinstance(x, (int, float)) else -1.0


def check_alive(plan: GroupPlan, init: str) -> None:
    dead = sorted(set(plan.dead_ops))
    if dead and init in ("gradmax", "random"):
        raise ValueError(
            f"grow_(init='{init}'): the new units of '{plan.key}' pass through {dead[0]} before the next layer. A unit "
            f"with zero fan-in has pre-activation 0, where PyTorch's {dead[0]} has derivative 0: its fan-in would get "
            f"no gradient and never move. Use an activation with f'(0) != 0 at growth time (LeakyReLU, GELU, SiLU, "
            f"tanh, ELU), or init='net2net' (duplication, exact and alive).")


def identity_value(model: nn.Module, name: str, old: torch.Tensor, axis: int,
                   bn_weight: float | None = 1.0) -> torch.Tensor | float:
    """The value of a pass-through layer's parameter for a new unit: the unit stays zero and gradients pass.
    `bn_weight`: gamma of a new BatchNorm channel (None: sqrt(eps))."""
    module, attr = owner_of(model, name)
    if attr in ("bias", "running_mean") or attr.endswith("bias"):
        return 0.0
    if attr == "running_var":
        return 1.0
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and attr == "weight":
        # A channel that is constantly 0 has batch variance 0: train-mode BN scales its gradient by gamma/sqrt(eps)
        # (x316 for eps = 1e-5). gamma = 1 (default: an identity unit in eval mode) lets the unit reach full scale
        # after its first step (measured: much lower loss with Adam, which normalises the step); gamma = sqrt(eps)
        # keeps the first gradient unamplified (safer with plain SGD) but leaves the unit tiny until gamma learns.
        return math.sqrt(module.eps) if bn_weight is None else float(bn_weight)
    if isinstance(module, _NORMS) and attr == "weight":
        return 1.0
    if isinstance(module, nn.modules.conv._ConvNd) and attr == "weight" and module.groups > 1 and axis == 0:
        k = torch.zeros_like(old.narrow(0, 0, 1))  # Dirac kernel: the depthwise filter passes its input through
        k[(0, 0, *[s // 2 for s in old.shape[2:]])] = 1.0
        return k
    return old.mean(dim=axis, keepdim=True)  # a per-unit scale of some custom layer: a typical unit's value


# ------------------------------------------------------------------------------------------------------ GradMax
def _single(items: list[tuple[str, int]], what: str, plan: GroupPlan) -> tuple[str, int]:
    if len(items) != 1:
        raise ValueError(f"grow_(init='gradmax') needs one {what} layer for '{plan.key}', found {len(items)} "
                         f"({[n for n, _ in items]}); use init='random', 'zeros' or 'net2net' for this dimension")
    return items[0]


def _layer(model: nn.Module, name: str, axis: int, want_axis: int, plan: GroupPlan) -> nn.Module:
    module, attr = owner_of(model, name)
    ok = attr == "weight" and axis == want_axis and (
        isinstance(module, nn.Linear) or (isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1))
    if not ok:
        raise ValueError(f"grow_(init='gradmax') supports Linear and Conv1d/Conv2d (groups=1) on both sides of the "
                         f"grown dimension; '{plan.key}' has '{name}' ({type(module).__name__}, axis {axis}). Use "
                         f"init='random', 'zeros' or 'net2net' for this dimension")
    return module


def _unfold(h: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """Patches of the conv's input: (B, C_in * prod(kernel), positions)."""
    if isinstance(conv, nn.Conv1d):
        h = h.unsqueeze(2)
        k, d, p, s = (1, *conv.kernel_size), (1, *conv.dilation), (0, *conv.padding), (1, *conv.stride)
    else:
        k, d, p, s = conv.kernel_size, conv.dilation, conv.padding, conv.stride
    if isinstance(p, str):
        raise ValueError(f"grow_(init='gradmax'): padding='{p}' is not supported; use integer padding")
    if conv.padding_mode != "zeros":
        raise ValueError(f"grow_(init='gradmax'): padding_mode='{conv.padding_mode}' is not supported")
    return F.unfold(h, k, dilation=d, padding=p, stride=s)


def _adjoint_patches(g: torch.Tensor, conv: nn.Module, spatial: tuple[int, ...]) -> torch.Tensor:
    """For every basis fan-out kernel e_j (j = (c_out, tap)), dL/d(new unit) at each position of the unit's map:
    the transposed convolution of the output gradient with e_j. Shape (B, C_out * prod(kernel), positions)."""
    c_out, taps = conv.out_channels, math.prod(conv.kernel_size)
    eye = torch.eye(c_out * taps, dtype=g.dtype, device=g.device)  # basis[c, j, t] = 1 iff j = c * taps + t
    basis = eye.reshape(c_out, taps, c_out * taps).transpose(1, 2).reshape(c_out, c_out * taps, *conv.kernel_size)
    fn = F.conv_transpose1d if isinstance(conv, nn.Conv1d) else F.conv_transpose2d
    out = fn(g, basis, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    pads = [s - o for s, o in zip(spatial, out.shape[2:], strict=True)]
    if any(p < 0 for p in pads):
        raise ValueError("grow_(init='gradmax'): the next layer's geometry does not match the grown layer's map")
    pad = [x for p in reversed(pads) for x in (0, p)]  # output_padding: positions no output reads get no gradient
    return F.pad(out, pad).flatten(2)


def gradmax_matrix(model: nn.Module, plan: GroupPlan, loss_fn, batch) -> torch.Tensor:  # noqa: ANN001
    """M = sum over the batch of dL/dz_{l+1} h_{l-1}^T (fan-out size x fan-in size), measured on `batch` without
    touching .grad, RNG streams or BatchNorm statistics. Layers between are identity units, f'(0) is 1 (see grow_)."""
    from ._trace import preserve_buffers

    tensors = dict(model.named_parameters())
    w_name, w_axis = _single([k for k in plan.writers if tensors.get(k[0]) is not None and tensors[k[0]].dim() >= 2],
                             "writer", plan)
    c_name, c_axis = _single(plan.consumers, "next", plan)
    writer = _layer(model, w_name, w_axis, 0, plan)
    consumer = _layer(model, c_name, c_axis, 1, plan)
    layouts = {m.layout for m in plan.group.members if (m.tensor, m.axis) in {(w_name, w_axis), (c_name, c_axis)}}
    if plan.group.unit != 1 or layouts - {""}:
        raise ValueError(f"grow_(init='gradmax'): '{plan.key}' grows in blocks of units (a GroupNorm's groups, "
                         f"heads or a flattened map); use init='random', 'zeros' or 'net2net' for this dimension")
    if isinstance(consumer.padding, str) if isinstance(consumer, nn.modules.conv._ConvNd) else False:
        raise ValueError(f"grow_(init='gradmax'): '{c_name}' has padding='{consumer.padding}'; use integer padding")
    pooled = isinstance(consumer, nn.Linear) and not isinstance(writer, nn.Linear)
    # a depthwise conv in between is a Dirac identity unit, but only a 1x1 map reaches a pooled Linear unchanged
    allowed = _ELEMENTWISE | (_POOL if pooled else {"conv1d", "conv2d"})
    odd = [n for n in plan.path_ops if n not in allowed]
    if pooled and not {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "mean"} & set(plan.path_ops):
        odd = odd or ["flatten (no global average pooling)"]
    if odd:
        raise ValueError(f"grow_(init='gradmax'): between '{w_name}' and '{c_name}' the units pass through "
                         f"'{odd[0]}'; supported: activations, norms, dropout, depthwise convs between convs, and a "
                         f"global average pool before a Linear. Use init='random', 'zeros' or 'net2net' here")
    seen: dict[str, list] = {"h": [], "x": [], "y": []}
    hooks = [writer.register_forward_pre_hook(lambda m, a: seen["h"].append(a[0].detach())),
             consumer.register_forward_pre_hook(lambda m, a: seen["x"].append(a[0].detach())),
             consumer.register_forward_hook(lambda m, a, out: seen["y"].append(out))]
    try:
        with preserve_buffers(model), torch.random.fork_rng(devices=[]), torch.enable_grad():
            loss = loss_fn(model, batch)
            if len(seen["h"]) != 1 or len(seen["y"]) != 1:
                raise ValueError(f"grow_(init='gradmax'): '{w_name}' and '{c_name}' must each run once in loss_fn "
                                 f"(ran {len(seen['h'])} and {len(seen['y'])} times)")
            (g,) = torch.autograd.grad(loss, [seen["y"][0]])
    finally:
        for hk in hooks:
            hk.remove()
    # g is the gradient of the loss itself (a batch mean already), so M sums: M^T v is exactly the new fan-in's
    # gradient for fan-out v (with f'(0) = 1)
    h, x, g = seen["h"][0], seen["x"][0], g.detach()
    if isinstance(writer, nn.Linear):
        if not isinstance(consumer, nn.Linear) or h.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"grow_(init='gradmax'): '{w_name}' (Linear) must feed '{c_name}' (Linear) directly")
        return g.reshape(-1, g.shape[-1]).T @ h.reshape(-1, h.shape[-1])
    patches = _unfold(h, writer)  # (B, D_in, P)
    if pooled:  # global average pooling in between (checked on the path above)
        if x.dim() != 2:
            raise ValueError(f"grow_(init='gradmax'): '{c_name}' reads the conv map flattened; only global pooling "
                             f"before a Linear is supported")
        return g.T @ patches.mean(2)
    if type(consumer) is not type(writer):
        raise ValueError(f"grow_(init='gradmax'): '{w_name}' and '{c_name}' must be convolutions of the same rank")
    spatial = x.shape[2:]
    if math.prod(spatial) != patches.shape[2]:
        raise ValueError(f"grow_(init='gradmax'): '{c_name}' does not read '{w_name}''s map at its own resolution "
                         f"(a pooling or strided op in between)")
    adj = _adjoint_patches(g, consumer, tuple(spatial))  # (B, D_out, P)
    return torch.einsum("bop,bip->oi", adj, patches)


def top_directions(m: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k unit fan-out vectors maximising sum ||M^T v||^2: the top left singular vectors of M; beyond the rank of M
    (or the fan-out size) orthogonal random completions. Returns (D_out x k vectors, the k singular values)."""
    u, s, _ = torch.linalg.svd(m.detach().double().cpu(), full_matrices=True)  # small: on the CPU, with the RNG
    d_out = m.shape[0]
    take = min(k, d_out)
    vecs, vals = [u[:, :take]], [torch.cat([s, s.new_zeros(max(0, d_out - len(s)))])[:take]]
    if k > take:  # more new units than directions: random unit vectors (they cannot all be orthogonal)
        extra = torch.randn(d_out, k - take, generator=generator, dtype=torch.float64)
        vecs.append(extra / extra.norm(dim=0, keepdim=True))
        vals.append(torch.zeros(k - take, dtype=torch.float64))
    return torch.cat(vecs, 1), torch.cat(vals)
