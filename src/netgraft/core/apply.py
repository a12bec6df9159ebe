"""Apply: build the grown model. Parameters are gathered along their grown axes; summing axes are split between
copies; attributes follow. The source model is never touched: the result is a deep copy whose changed tensors are
created directly (no extra copy of the old ones)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import EXTENSION_HINT, InvalidRequestError, UnsupportedModelError
from . import space as sp
from .attributes import check_attributes
from .clone import clone_module
from .coupling import Coupling, Group
from .graph import COPY, FANIN
from .memory import empty_for_write
from .plan import IndexMap, SpaceMaps

# ops whose output scales with their per-unit parameters (norm gain and bias, weight rows and bias, a gain)
_SCALABLE_FEEDERS = {"layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm", "linear", "conv1d",
                     "conv2d", "conv3d", "mul"}


# Ops whose output holds the same units of the tied axis, unscaled: a feeder before them can absorb the split.
_PASS_THROUGH = {"getitem", "contiguous", "clone", "dropout", "narrow", "select", "to", "float", "squeeze",
                 "unsqueeze"}


def _tied_compensation(coupling: Coupling, maps: SpaceMaps) -> dict[tuple[str, int], object]:
    """A parameter axis used both per-unit (an embedding) and summed over (a tied output layer) cannot be split.
    Instead, scale the per-unit parameters of the layer that feeds the summing use (e.g. the final LayerNorm's gain
    and bias) by the split fractions: same function, and the weights stay tied."""
    tr = coupling.trace
    extra: dict[tuple[str, int], object] = {}
    for (name, axis), roles in tr.roles.items():
        if not (COPY in roles and FANIN in roles):
            continue
        space = tr.param_dims[name][axis]
        if not maps.changes(space) or bool(np.all(maps.get(space).frac == 1)):
            continue  # nothing split (unchanged, or zero padding): nothing to absorb
        for op in tr.role_ops[(name, axis)]:
            if (name, axis, FANIN) not in op.roles:
                continue
            act = next((v for v in op.inputs if v.param is None
                        and any(sp.find(d) is sp.find(space) for d in v.dims)), None)
            # back through ops that only select or move positions (nanoGPT's x[:, [-1], :] before its tied lm_head):
            # the per-unit layer before them still scales every unit the summing use reads
            while act is not None and act.producer is not None and act.producer.name in _PASS_THROUGH \
                    and len(act.consumers) == 1 and act.producer.inputs:
                act = act.producer.inputs[0]
            feeder = act.producer if act is not None else None
            # Only parameters the feeder's output is linear in (gain and bias, weight rows), never running
            # statistics, an added bias alone, or the tied weight itself.
            copies = [(p, a) for p, a, r in (feeder.roles if feeder else []) if r == COPY
                      and sp.find(tr.param_dims[p][a]) is sp.find(space)
                      and isinstance(tr.tensors_by_name[p], nn.Parameter)]
            fanin_in_feeder = feeder is not None and any(
                r == FANIN and sp.find(tr.param_dims[p][a]) is sp.find(space) for p, a, r in feeder.roles)
            shared = any(len(tr.role_ops[key]) > 1 for key in copies)  # a LayerNorm used elsewhere too
            if (feeder is None or feeder.name not in _SCALABLE_FEEDERS or len(act.consumers) != 1 or not copies
                    or fanin_in_feeder or (name, axis) in copies or shared):
                raise UnsupportedModelError(
                    f"parameter '{name}' is tied: used per unit and summed over along axis {axis} "
                    f"({op.where()}), and no per-unit layer (LayerNorm, Linear) directly feeds the summing use to "
                    f"absorb the split. {EXTENSION_HINT}"
                )
            for key in copies:
                extra[key] = space
    return extra


def _axis_view(v: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _expand(t: torch.Tensor, srcs: dict[int, torch.Tensor], fracs: dict[int, torch.Tensor]) -> torch.Tensor:
    """Gather `t` along several axes at once (`out[..., j, ...] = t[..., src[j], ...]`) and scale the axes in
    `fracs` by the fan-in split of each new index.

    Net2Net maps keep the original units first (`src[:n] == arange(n)`), so the old block is written once, scaled
    on the way, into a single new allocation, and only the new slices are gathered: columns with `gather`, rows last,
    straight into the contiguous row block. Every byte of the result is written once (chained `index_select`s and a
    separate scaling pass were several times slower)."""
    n_old = list(t.shape)
    fr = {a: f.to(device=t.device, dtype=t.dtype) for a, f in fracs.items()}
    prefix = all(
        len(src) >= n_old[a] and bool(torch.equal(src[: n_old[a]], torch.arange(n_old[a], device=src.device)))
        for a, src in srcs.items()
    )
    if not prefix:  # e.g. a concatenation whose first part grew: plain gathers
        out = t
        for a, src in srcs.items():
            out = out.index_select(a, src)
        out = out if out is not t else t.clone()
        for a, f in fr.items():
            out.mul_(_axis_view(f, a, t.dim()))
        return out
    new_shape = [len(srcs[a]) if a in srcs else n for a, n in enumerate(n_old)]
    out = empty_for_write(new_shape, t.dtype, t.device)
    old_block = out[tuple(slice(0, n) for n in n_old)]
    scaled = list(fr)
    if scaled:
        torch.mul(t, _axis_view(fr[scaled[0]][: n_old[scaled[0]]], scaled[0], t.dim()), out=old_block)
        for a in scaled[1:]:
            old_block.mul_(_axis_view(fr[a][: n_old[a]], a, t.dim()))
    else:
        old_block.copy_(t)
    filled = list(n_old)
    for a in sorted(srcs, reverse=True):  # axis 0 last: its new rows are then whole contiguous rows
        n, extra = n_old[a], srcs[a][n_old[a]:]
        if len(extra) == 0:
            continue
        block = out[tuple(slice(0, f) for f in filled)]
        dst_index = [slice(0, f) for f in filled]
        dst_index[a] = slice(n, new_shape[a])
        dst = out[tuple(dst_index)]
        if a == 0 and dst.is_contiguous():
            torch.index_select(block, 0, extra, out=dst)
        else:
            idx = _axis_view(extra, a, t.dim()).expand(*[len(extra) if i == a else f for i, f in enumerate(filled)])
            dst.copy_(torch.gather(block, a, idx))
        if a in fr:  # the copies were gathered with their original's fraction; give them their own
            ratio = fr[a][n:] / fr[a][extra]
            if not bool((ratio == 1).all()):
                dst.mul_(_axis_view(ratio, a, t.dim()))
        filled[a] = new_shape[a]
    return out


def split_noise_(out: torch.Tensor, axis: int, src: torch.Tensor, frac: torch.Tensor, noise: float,
                 gen: torch.Generator, name: str, fresh: np.ndarray | None = None) -> None:
    """Make the copies of each unit split every summed-over weight differently, element by element, keeping the sum.

    Copy j of old unit i carries ``frac[j] * (1 + noise * (z[..., j] - zbar[..., i]))`` of each weight, where z is
    standard normal and zbar its frac-weighted mean over the copies of i: the shares of the copies still add up to
    exactly one for every element, so the function is unchanged. A per-unit split (one fraction per copy) would not
    do: under Adam-type optimisers the copies' gradients differ only by that fraction, which the normalisation
    removes, so the copies would move together forever; with element-wise shares each copy sees its own
    gradient direction. Uncopied units are untouched (z - zbar = 0). `fresh` units (zero padding) are no copies:
    they take no share (the kernel writes them afterwards)."""
    if out.dtype not in (torch.float32, torch.float64):
        raise InvalidRequestError(f"noise > 0 needs float32 or float64 parameters ('{name}' is {out.dtype}): "
                                  "element-wise "
                         f"shares do not add up exactly in lower precision; use noise=0 there")
    n_old = int(src.max()) + 1
    live = None if fresh is None else torch.from_numpy(~fresh)
    if int(torch.bincount(src.cpu() if live is None else src.cpu()[live], minlength=n_old).max()) < 2:
        return
    shape = [1] * out.dim()
    shape[axis] = -1
    z = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    f = frac.to(torch.float64) * (1.0 if live is None else live.double())
    f = f.reshape(shape)
    src_cpu = src.cpu()
    zbar = torch.zeros([n_old if a == axis else n for a, n in enumerate(out.shape)], dtype=torch.float64)
    zbar.index_add_(axis, src_cpu, z * f)  # the copies' fractions of each old unit sum to one
    factor = 1.0 + noise * (z - zbar.index_select(axis, src_cpu))
    out.mul_(factor.to(device=out.device, dtype=out.dtype))


def noise_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


@dataclass
class AxisGrowth:
    """How one axis of one tensor grows: the axis's `IndexMap`, and how the tensor uses the axis.

    - `summed`: the tensor sums over this axis (a weight's input columns): copies carry their share of the fan-in
      (`map.frac`), split element-wise by the noise when asked, and fresh units get random columns (they read
      zeros at growth, so the function is kept, and learn from the first step);
    - otherwise the axis holds one entry per unit (weight rows, biases, norm gains): copies are plain copies, scaled
      by `scale` where the plan says so (a tied output's split absorbed by the norm before it, a norm gain folding
      a padded stream's statistics), and fresh units are filled by `fill`: "zero" or "mean" (the mean of the old
      units, so a writer puts each token's mean into a padded LayerNorm stream; with `weights`, the weighted sum
      ``sum_c weights[c] * old[c]`` instead, e.g. a writer absorbing the layer scale after it).

    `columns` says what fresh units of a summed axis get: "random" (default; the units they read are 0) or "zero"
    (they read something else, e.g. each token's mean of a LayerNorm stream's old features).
    """

    map: IndexMap
    summed: bool
    fill: str = "zero"
    scale: np.ndarray | None = None  # per new unit, multiplied in on a per-unit axis
    weights: np.ndarray | None = None  # per old unit: the "mean" fill as a weighted sum
    columns: str = "random"


def grow_tensor(t: torch.Tensor, axes: dict[int, AxisGrowth], *, noise: float = 0.0,
                gen: torch.Generator | None = None, name: str = "") -> torch.Tensor:
    """The apply kernel shared by every front end: `t` grown along `axes` in one new allocation."""
    srcs, fracs = {}, {}
    for a, g in axes.items():
        src, frac = g.map.torch(t.device)
        srcs[a] = src
        if g.summed:
            fracs[a] = frac
        if g.scale is not None:
            scale = torch.from_numpy(np.asarray(g.scale, dtype=np.float64))
            fracs[a] = fracs[a] * scale if a in fracs else scale
    with torch.no_grad():
        out = _expand(t.detach(), srcs, fracs)
        for a, g in axes.items():
            if noise and g.summed and g.scale is None:
                split_noise_(out, a, srcs[a], fracs[a], noise, gen or noise_generator(None), name, g.map.fresh)
        for a, g in axes.items():
            if g.map.fresh is not None:
                _fill_fresh_(out, t, a, g, gen)
    return out


def _fill_fresh_(out: torch.Tensor, old: torch.Tensor, axis: int, g: AxisGrowth, gen: torch.Generator | None) -> None:
    """Write the fresh units of `axis` (see `AxisGrowth`)."""
    idx = torch.from_numpy(np.nonzero(g.map.fresh)[0]).to(out.device)
    shape = list(out.shape)
    shape[axis] = len(idx)
    if g.summed and g.columns == "random":  # random columns with the spread of the existing weights
        std = float(old.detach().double().std()) if old.numel() > 1 else 0.02
        gen = gen if gen is not None else torch.Generator().manual_seed(0)
        value = torch.randn(shape, generator=gen, dtype=torch.float64) * (std if std > 0 else 0.02)
    elif not g.summed and g.fill == "mean":
        kept = out.index_select(axis, torch.from_numpy(np.nonzero(~g.map.fresh)[0]).to(out.device)).double()
        if g.weights is None:
            value = kept.mean(axis, keepdim=True).expand(shape)
        else:
            w = torch.from_numpy(np.asarray(g.weights, dtype=np.float64)).to(out.device)
            value = (kept * _axis_view(w, axis, out.dim())).sum(axis, keepdim=True).expand(shape)
    else:
        value = torch.zeros(shape, dtype=torch.float64)
    out.index_copy_(axis, idx, value.to(device=out.device, dtype=out.dtype).contiguous())


def _padded_groups(coupling: Coupling, maps: SpaceMaps, padding: bool) -> dict[int, Group]:
    """The groups `maps` zero-pads (leaf id -> group). Only `build_model` writes what padding needs besides the
    tensors (the norms' epsilon): other callers (`grow_`) are refused rather than handed a stream that is off by the
    epsilon's share."""
    out = {}
    for leaf_id, m in maps.maps.items():
        if m.fresh is None:
            continue
        g = coupling.by_leaf.get(leaf_id)
        proof = g.padding if g is not None else None
        if proof is None:
            raise UnsupportedModelError(f"internal: {g.name if g else leaf_id} is zero-padded without a proof")
        if not padding:
            raise InvalidRequestError(
                f"'{g.name}' ({g.display_size}) would grow by zero padding ({proof.norm} over it, size not a multiple "
                f"of {g.display_size}), which only widen applies; use a multiple of {g.display_size} here")
        out[leaf_id] = g
    return out


def _padding_growth(coupling: Coupling, maps: SpaceMaps, padded: dict[int, Group], name: str, axis: int,
                    m: IndexMap, roles: set[str]) -> AxisGrowth | None:
    """How axis `axis` of `name` grows when it lies along a zero-padded group (None: it does not): the group's
    `PadProof` says what its new units hold; a norm gain also absorbs sqrt(d/D) (`netgraft.core.padding`)."""
    space = coupling.trace.param_dims[name][axis]
    leaves = [x for x in sp.leaves(space) if x.id in padded]
    if not leaves:
        return None
    r = sp.find(space)
    g = padded[leaves[0].id]
    fill = g.padding.fills.get((name, axis))
    if fill is None or fill.summed != (roles == {FANIN}) or (r is not g.leaf and not fill.summed):
        raise UnsupportedModelError(f"internal: the padding proof of '{g.name}' says nothing about '{name}' axis "
                                    f"{axis}")
    if fill.summed:
        return AxisGrowth(m, summed=True, columns="zero" if fill.value == "zero" else "random")
    scale = np.full(len(m.src), np.sqrt(g.size / len(m.src))) if fill.gain else None
    weights = None
    if fill.weights is not None:  # the layer scale gamma after a writer: sum_c gamma_c row_c / (d * gamma')
        gamma = coupling.trace.tensors_by_name[fill.weights].detach()
        stored = float(gamma.double().mean().to(gamma.dtype))  # gamma's new unit, as the kernel will store it
        weights = gamma.double().reshape(-1).cpu().numpy() / (g.size * stored)
    return AxisGrowth(m, summed=False, fill=fill.value, scale=scale, weights=weights)


def grow_tensors(coupling: Coupling, maps: SpaceMaps, *, padding: bool = False) -> dict[str, torch.Tensor]:
    """The traced front end's tensors: every parameter and buffer along a growing group, through `grow_tensor`.

    `padding`: the caller also applies `padded_attributes` (the norms' epsilon), so zero-padded groups may be
    grown; without it they are refused."""
    tr = coupling.trace
    padded = _padded_groups(coupling, maps, padding)
    extra = _tied_compensation(coupling, maps)
    gen = noise_generator(maps.seed)
    new: dict[str, torch.Tensor] = {}
    for name, dims in tr.param_dims.items():
        t = tr.tensors_by_name[name]
        axes: dict[int, AxisGrowth] = {}
        for axis, space in enumerate(dims):
            m = maps.get(space)
            if m is None:
                continue
            roles = tr.roles.get((name, axis))
            if not roles:
                raise UnsupportedModelError(
                    f"'{name}' axis {axis} lies along a dimension that grows, but no traced op says how it is used "
                    f"(per unit, or summed over). {EXTENSION_HINT}"
                )
            pad = _padding_growth(coupling, maps, padded, name, axis, m, roles) if padded else None
            if pad is not None:
                axes[axis] = pad
                continue
            tied = (name, axis) in extra  # a per-unit axis that a tied use also sums over: scaled, never noised
            scale = maps.get(extra[(name, axis)]).frac if tied else None
            axes[axis] = AxisGrowth(m, summed=roles == {FANIN} and not tied, scale=scale)
        if axes:
            new[name] = grow_tensor(t, axes, noise=maps.noise, gen=gen, name=name)
    return new


def padded_attributes(coupling: Coupling, maps: SpaceMaps) -> list[tuple[str, str, float]]:
    """(module path, attribute, value) to set in a result whose groups are zero-padded: each norm's epsilon x d/D."""
    out = []
    for leaf_id, g in _padded_groups(coupling, maps, True).items():
        new = len(maps.maps[leaf_id].src)
        for site in g.padding.eps:
            out.append((site.module, "eps", g.padding.eps_value(site, g.size, new)))
    return out


def _check_prefix_uses(coupling: Coupling, maps: SpaceMaps) -> None:
    """Code that reads the first n units of an axis (`x[:, :n]`, `x[:, i]`) is exact only if growth keeps those units
    in place: true for a plain group (originals stay first), not for a concatenation whose first part grows."""
    for space, n, where in coupling.trace.prefix_uses:
        m = maps.get(space)
        if m is not None and not np.array_equal(m.src[:n], np.arange(n)):
            raise UnsupportedModelError(
                f"{where} reads the first {n} units of an axis whose grown layout moves them (a concatenation whose "
                f"first part grows). Widen the other parts, or register a rule. {EXTENSION_HINT}"
            )


def build_model(coupling: Coupling, maps: SpaceMaps, sizes_of) -> nn.Module:
    tr = coupling.trace
    model = tr.model
    _check_prefix_uses(coupling, maps)
    new = grow_tensors(coupling, maps, padding=True)
    memo: dict[int, object] = {}
    for name, t in new.items():
        old = tr.tensors_by_name[name]
        if isinstance(old, nn.Parameter):
            memo[id(old)] = nn.Parameter(t, requires_grad=old.requires_grad)
            memo[id(old)].__dict__.update(copy.deepcopy(old.__dict__))  # user tags (e.g. _no_weight_decay)
        else:
            memo[id(old)] = t
    result = clone_module(model, memo)
    for setter in tr.attrs:
        module = result.get_submodule(setter.module) if setter.module else result
        value = tuple(sizes_of(s) for s in setter.spaces) if isinstance(setter.spaces, tuple) else sizes_of(
            setter.spaces)
        setattr(module, setter.attr, value)
    for path, attr, value in padded_attributes(coupling, maps):
        setattr(result.get_submodule(path) if path else result, attr, value)
    check_attributes(result)
    return result
