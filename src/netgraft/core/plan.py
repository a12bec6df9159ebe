"""Plan: new sizes for the groups (checked against their constraints and links) and an index map for each.

A group under a LayerNorm/RMSNorm (a `uniform` constraint) grows by uniform replication to integer multiples, as
before, and to any other size by zero padding (`IndexMap.padded`) where `netgraft.core.padding` proves it exact
(`Group.padding`); elsewhere such sizes are refused with the proof's reason. A float factor rounds up to the nearest
valid size, so it pads where padding is exact (1.5 x 32 = 48) and rounds up to a multiple where it is not."""

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
class IndexMap:
    """How one axis grows, for every front end: unit j of the grown axis copies old unit `src[j]`, and a consumer
    that sums over the axis scales it by `frac[j]`; the fractions of each old unit's copies sum to exactly 1.
    `fresh[j]` marks a unit with no source (zero padding): its `src` entry is a placeholder and the apply kernel
    writes it from the axis's fill policy instead."""

    src: np.ndarray  # int64 (new size,)
    frac: np.ndarray  # float64 (new size,): powers of two (see `power_of_two_shares`)
    fresh: np.ndarray | None = None  # bool (new size,), or None when every unit is a copy

    @classmethod
    def identity(cls, n: int) -> IndexMap:
        return cls(np.arange(n, dtype=np.int64), np.ones(n))

    @classmethod
    def copies(cls, src: np.ndarray, n: int) -> IndexMap:
        """Units copied from `src` (old units first), with power-of-two shares."""
        src = np.asarray(src, dtype=np.int64)
        return cls(src, power_of_two_shares(src, n))

    @classmethod
    def padded(cls, n: int, new: int) -> IndexMap:
        """The n old units, then new - n fresh ones (zero padding)."""
        fresh = np.arange(new) >= n
        return cls(np.where(fresh, 0, np.arange(new)).astype(np.int64), np.ones(new), fresh)

    def torch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.src).to(device), torch.from_numpy(self.frac)


def power_of_two_shares(src: np.ndarray, n: int) -> np.ndarray:
    """Each copy's share of its unit's fan-out: the r-th copy (in index order) of a unit with c copies, where
    2**k <= c < 2**(k+1), gets 2**-k if r < 2**(k+1) - c, else 2**-(k+1) (3 copies: 1/2, 1/4, 1/4).

    Why powers of two and not 1/c: multiplying by a power of two is exact in every binary float format, bfloat16
    included, so the copies of a column add up to the original bit for bit and a half-precision model grows as
    exactly as a float64 one; any shares summing to one keep the function. Vectorised: one stable sort."""
    flat = np.asarray(src, dtype=np.int64).reshape(-1)
    counts = np.bincount(flat, minlength=n)
    order = np.argsort(flat, kind="stable")  # the copies of each unit together, in index order
    first = np.cumsum(counts) - counts  # where each unit's copies start in that order
    rank = np.empty_like(flat)
    rank[order] = np.arange(flat.size) - first[flat[order]]  # which copy of its unit each index is
    c = counts[flat]
    k = np.frexp(c.astype(np.float64))[1].astype(np.int64) - 1  # 2**k <= c < 2**(k+1), exact for c < 2**53
    big = rank < (np.left_shift(1, k + 1) - c)
    return np.ldexp(1.0, np.where(big, -k, -k - 1)).reshape(np.shape(src))


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
        if g.multiples_only and new % g.size:
            raise InvalidRequestError(
                f"'{key}' has size {old_total} and {g.uniform[0]}: exact widening needs uniform replication, i.e. "
                f"a multiple of {old_total}; zero padding to other sizes is not exact here: {g.padding_refused}. "
                f"Valid sizes: {self.valid_totals(g, unit)}"
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
            if g.multiples_only and q % g.size:
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
                if not (g.multiples_only and q % g.size):
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
                    if new is None or new < leaf.size or (g.multiples_only and new % leaf.size):
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
    def build_maps(self, seed: int | None) -> dict[int, IndexMap]:
        self.propagate(self.sizes)
        rng = np.random.default_rng(seed)
        maps: dict[int, IndexMap] = {}
        for g in self.c.groups:  # group order is trace order: deterministic for a given seed
            q = self.sizes.get(g.leaf.id, g.size)
            if q == g.size:
                continue
            n = g.size
            if g.uniform and q % n:  # under a LayerNorm/RMSNorm, not a multiple: zero padding (proven exact)
                if g.padding is None:
                    raise InvalidRequestError(f"{_describe(g)} cannot be {q}: not a multiple of {n}, and "
                                              f"{g.padding_refused}")
                maps[g.leaf.id] = IndexMap.padded(n, q)
                continue
            if g.uniform:
                src = np.arange(q) % n
            else:
                src = np.concatenate([np.arange(n), rng.integers(0, n, q - n)])
            maps[g.leaf.id] = IndexMap.copies(src, n)
        return maps


class SpaceMaps:
    """Index maps of whole axes (products and concatenations of groups), memoised per space; `noise` and `seed` are
    the split noise the summed-over axes get (see `netgraft.core.apply.split_noise_`)."""

    def __init__(self, maps: dict[int, IndexMap], noise: float = 0.0, seed: int | None = None):
        self.maps = maps
        self.noise, self.seed = noise, seed
        self._memo: dict[int, IndexMap | None] = {}

    def changes(self, space: Space) -> bool:
        return self.get(space) is not None

    def get(self, space: Space) -> IndexMap | None:
        r = sp.find(space)
        if r.id in self._memo:
            return self._memo[r.id]
        if r.kind == "leaf":
            out = self.maps.get(r.id)
        elif all(self.get(p) is None for p in r.parts):
            out = None
        else:
            parts = [self.get(p) or IndexMap.identity(sp.find(p).size) for p in r.parts]
            fresh = [m.fresh if m.fresh is not None else np.zeros(len(m.src), bool) for m in parts]
            if r.kind == "prod":  # row-major: the last part varies fastest
                src, frac, new = np.zeros(1, np.int64), np.ones(1), np.zeros(1, bool)
                for p, m, f in zip(r.parts, parts, fresh, strict=True):
                    n_old = sp.find(p).size
                    src = (src[:, None] * n_old + m.src[None, :]).reshape(-1)
                    frac = (frac[:, None] * m.frac[None, :]).reshape(-1)
                    new = (new[:, None] | f[None, :]).reshape(-1)
            else:
                offs = np.cumsum([0] + [sp.find(p).size for p in r.parts])
                src = np.concatenate([m.src + o for m, o in zip(parts, offs, strict=False)])
                frac, new = np.concatenate([m.frac for m in parts]), np.concatenate(fresh)
            out = IndexMap(src, frac, new if new.any() else None)
        self._memo[r.id] = out
        return out

    def torch_map(self, space: Space, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        m = self.get(space)
        return None if m is None else m.torch(device)


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

