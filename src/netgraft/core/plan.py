"""Plan: new sizes for the groups (checked against their constraints and links) and an index map for each."""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import EXTENSION_HINT, InvalidRequestError, UnknownNameError, UnsupportedModelError
from . import space as sp
from .coupling import Coupling, Group
from .space import Space, solve_leaf, total_size


@dataclass
class LeafMap:
    """Unit j of the grown group copies old unit `src[j]`; a summing consumer scales it by `frac[j]`."""

    src: np.ndarray  # int64, length new size
    frac: np.ndarray  # float64; for each old unit its copies' fractions sum to 1


def _describe(g: Group) -> str:
    return f"group '{g.name}'" if g.name else f"group #{g.index} ({g.members[0]})"


class Planner:
    def __init__(self, coupling: Coupling):
        self.c = coupling
        self.sizes: dict[int, int] = {}

    # -- requests -------------------------------------------------------------------------------------------
    def group_for_key(self, key: str) -> tuple[Group, Space]:
        spaces = self.c.producer_keys.get(key)
        if not spaces:
            names = [n for n, _ in self.c.trace.model.named_modules() if n]
            if key in names:
                raise UnknownNameError(
                    f"module '{key}' produces no dimension that netgraft can widen (a layer such as BatchNorm or an "
                    f"activation follows the width of the layer before it: name that layer). Keys: "
                    f"{sorted(self.c.producer_keys)[:12]}"
                )
            candidates = list(dict.fromkeys([*self.c.producer_keys, *names]))
            close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.5)
            raise UnknownNameError(f"no module named '{key}' in the model; close matches: {close or 'none'}")
        if len(spaces) > 1:
            raise InvalidRequestError(f"'{key}' produces several dimensions; name the parameter instead (e.g. "
                                      f"'{key}.weight')")
        space = spaces[0]
        leaves = [x for x in sp.leaves(space) if x.id in self.c.by_leaf]
        free = [x for x in leaves if self.c.free(x)]
        if len(free) == 1:
            return self.c.by_leaf[free[0].id], space
        status = [self.c.status.get(x.id, ([], [], [])) for x in sp.leaves(space)]
        blocked = [r for _, b, _ in status for r in b]
        if blocked:
            raise UnsupportedModelError(f"cannot widen '{key}': {blocked[0]}. {EXTENSION_HINT}")
        fixed = [r for f, _, _ in status for r in f]
        raise InvalidRequestError(f"cannot widen '{key}': its dimension cannot grow "
                                  f"({'; '.join(fixed[:3]) or 'no free unit'})")

    def request_total(self, key: str, total: int) -> None:
        g, space = self.group_for_key(key)
        old_total = sp.find(space).size
        unit = g.unit
        new = solve_leaf(space, g.leaf, {}, total)
        if total < old_total or new is None:
            raise InvalidRequestError(
                f"'{key}' ({_describe(g)}) has size {old_total}; requested {total}. Valid sizes: "
                f"{self.valid_totals(g, unit)}" + (" (sizes never shrink)" if total < old_total else "")
            )
        if g.uniform and new % g.size:
            raise InvalidRequestError(
                f"'{key}' has size {old_total} and {g.uniform[0]}: exact widening needs uniform replication, i.e. "
                f"a multiple of {old_total}. Valid sizes: {self.valid_totals(g, unit)}"
            )
        if g.leaf.id in self.sizes and self.sizes[g.leaf.id] != new:
            raise InvalidRequestError(f"conflicting sizes for {_describe(g)}: {self.sizes[g.leaf.id] * unit} and "
                                      f"{total}")
        try:
            self.propagate({**self.sizes, g.leaf.id: new})
        except ValueError as err:
            raise InvalidRequestError(f"'{key}' cannot be {total}: {err}. Valid sizes: "
                                      f"{self.valid_totals(g, unit)}") from err
        self.sizes[g.leaf.id] = new

    def valid_totals(self, g: Group, unit: int, count: int = 5) -> list[int]:
        out, q = [], g.size
        while len(out) < count and q < g.size * 1000:
            q += 1
            if g.uniform and q % g.size:
                continue
            trial = {**self.sizes, g.leaf.id: q}
            try:
                self.propagate(trial)
            except ValueError:
                continue
            out.append(q * unit)
        return out

    def request_factor(self, factor: float) -> None:
        if not (factor >= 1.0 and math.isfinite(factor)):
            raise InvalidRequestError(f"width factor must be a finite number >= 1, got {factor}")
        if factor == 1.0:
            return
        blocked = [g for g in self.c.groups if g.blocked and g.producers and not g.fixed]
        if blocked:
            lines = "; ".join(f"'{g.producers[0]}': {g.blocked[0]}" for g in blocked[:4])
            raise UnsupportedModelError(
                f"cannot widen every dimension by {factor}: {len(blocked)} dimension(s) touch ops netgraft cannot "
                f"map: {lines}. Pass a dict of the dimensions to widen instead, or add a rule. {EXTENSION_HINT}"
            )
        for g in self.c.groups:
            if not g.growable or not g.name or g.dependent or g.leaf.id in self.sizes:
                continue
            q = max(math.ceil(g.size * factor - 1e-9), g.size + 1)
            for _ in range(100 * g.size):
                if not (g.uniform and q % g.size):
                    trial = {**self.sizes, g.leaf.id: q}
                    try:
                        self.propagate(trial)
                    except ValueError:
                        pass
                    else:
                        self.sizes[g.leaf.id] = q
                        break
                q += 1
            else:  # never return a model that silently skipped a dimension it was asked to grow
                raise InvalidRequestError(f"no size of {_describe(g)} near {factor} x {g.size} satisfies its "
                                          "constraints and "
                                 f"links: {'; '.join(g.uniform + [link.reason for link in self.c.trace.links][:2])}")

    # -- links ------------------------------------------------------------------------------------------------
    def propagate(self, sizes: dict[int, int]) -> dict[int, int]:
        """Derive linked sizes (in place) in either direction; ValueError when a link or constraint cannot hold.

        A link's side is settled when every free group under it has a size; an unsettled side with exactly one
        free group left is solved from the settled side. Groups nobody settles keep their size."""
        def open_leaves(space: Space) -> list[Space]:
            return [x for x in self.c.free_leaves(space) if x.id not in sizes]

        links = self.c.trace.links
        for _ in range(2 * len(links) + 1):
            changed = False
            for link in links:
                for settled, other in ((link.primary, link.dependent), (link.dependent, link.primary)):
                    todo = open_leaves(other)
                    if open_leaves(settled) or len(todo) != 1:
                        continue
                    want = total_size(settled, sizes)
                    if want == total_size(other, sizes):
                        continue
                    leaf = todo[0]
                    new = solve_leaf(other, leaf, sizes, want)
                    g = self.c.by_leaf[leaf.id]
                    if new is None or new < leaf.size or (g.uniform and new % leaf.size):
                        raise InvalidRequestError(f"{link.reason}: {_describe(g)} cannot be resized to make it "
                                                  f"{want} wide")
                    sizes[leaf.id] = new
                    changed = True
            if not changed:
                break
        for link in links:
            a, b = total_size(link.primary, sizes), total_size(link.dependent, sizes)
            if a != b:
                raise InvalidRequestError(f"sizes break a link: {link.reason} ({a} != {b})")
        return sizes

    # -- maps ---------------------------------------------------------------------------------------------------
    def build_maps(self, seed: int | None) -> dict[int, LeafMap]:
        self.propagate(self.sizes)
        rng = np.random.default_rng(seed)
        maps: dict[int, LeafMap] = {}
        for g in self.c.groups:  # group order is trace order: deterministic for a given seed
            q = self.sizes.get(g.leaf.id, g.size)
            if q == g.size:
                continue
            n = g.size
            if g.uniform:
                src = np.arange(q) % n
            else:
                src = np.concatenate([np.arange(n), rng.integers(0, n, q - n)])
            counts = np.bincount(src, minlength=n)
            frac = 1.0 / counts[src]
            maps[g.leaf.id] = LeafMap(src.astype(np.int64), frac)
        return maps


class SpaceMaps:
    """Index maps of whole axes (products and concatenations of groups), memoised per space; `noise` and `seed` are
    the split noise the summed-over axes get (see `_apply.split_noise_`)."""

    def __init__(self, maps: dict[int, LeafMap], noise: float = 0.0, seed: int | None = None):
        self.maps = maps
        self.noise, self.seed = noise, seed
        self._memo: dict[int, LeafMap | None] = {}

    def changes(self, space: Space) -> bool:
        return self.get(space) is not None

    def get(self, space: Space) -> LeafMap | None:
        r = sp.find(space)
        if r.id in self._memo:
            return self._memo[r.id]
        if r.kind == "leaf":
            out = self.maps.get(r.id)
        else:
            parts = [self.get(p) or LeafMap(np.arange(sp.find(p).size), np.ones(sp.find(p).size)) for p in r.parts]
            if all(self.get(p) is None for p in r.parts):
                out = None
            elif r.kind == "prod":
                src, frac = np.zeros(1, np.int64), np.ones(1)
                for p, m in zip(r.parts, parts, strict=True):
                    n_old = sp.find(p).size
                    src = (src[:, None] * n_old + m.src[None, :]).reshape(-1)
                    frac = (frac[:, None] * m.frac[None, :]).reshape(-1)
                out = LeafMap(src, frac)
            else:
                offs = np.cumsum([0] + [sp.find(p).size for p in r.parts])
                out = LeafMap(np.concatenate([m.src + o for m, o in zip(parts, offs, strict=False)]),
                              np.concatenate([m.frac for m in parts]))
        self._memo[r.id] = out
        return out

    def torch_map(self, space: Space, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        m = self.get(space)
        if m is None:
            return None
        return torch.from_numpy(m.src).to(device), torch.from_numpy(m.frac)


def changes_of(coupling: Coupling, planner: Planner) -> list[tuple[str, int, int]]:
    return [(g.name or str(g.members[0]), g.display_size, planner.sizes[g.leaf.id] * g.unit)
            for g in coupling.groups if planner.sizes.get(g.leaf.id, g.size) != g.size]


def plan_widths(coupling: Coupling, widths: dict[str, int] | float) -> Planner:
    """A planner holding the requested sizes: ``{module path: size}`` or one float factor (checked here)."""
    planner = Planner(coupling)
    if isinstance(widths, dict):
        for key, size in widths.items():
            if not isinstance(size, numbers.Integral) or isinstance(size, bool):
                raise InvalidRequestError(f"widths['{key}'] must be an int, got {size!r}")
            planner.request_total(key, int(size))
    elif isinstance(widths, numbers.Real) and not isinstance(widths, bool):
        planner.request_factor(float(widths))
    else:
        raise InvalidRequestError(f"widths must be a dict {{module path: size}} or a float factor, got "
                                  f"{type(widths).__name__}")
    return planner
