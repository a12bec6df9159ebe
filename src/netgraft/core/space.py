"""Unit spaces: the tensor axes that must change size together.

Every axis of every traced tensor and parameter is a `Space`. Ops *unify* spaces (a Linear's input columns and the
previous layer's output rows are one space), *split* them (a reshape into heads makes a product of two spaces, a
chunk makes a sum of two) or *constrain* them (a LayerNorm needs uniform replication, a model input is fixed).

After tracing, the leaves of the union-find forest are the coupled dimensions ("groups"); composite spaces
(products for reshapes, sums for concatenations) say how a tensor axis is laid out in terms of those leaves, which is
all that is needed to build the index map of any axis from the leaves' maps.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

_ids = itertools.count()


@dataclass(eq=False)
class Space:
    size: int
    origin: str = ""
    parent: Space | None = None
    kind: str = "leaf"  # "leaf", "prod" (row-major product of parts) or "sum" (concatenation of parts)
    parts: list[Space] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)  # natural reasons: model input/output, kernel axis, ...
    blocked: list[str] = field(default_factory=list)  # unsupported ops touching it: fail closed
    uniform: list[str] = field(default_factory=list)  # needs every unit replicated equally often (LayerNorm, ...)
    id: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return f"Space#{self.id}({self.size}, {self.kind})"


def find(s: Space) -> Space:
    root = s
    while root.parent is not None:
        root = root.parent
    while s.parent is not None:  # path compression
        s.parent, s = root, s.parent
    return root


def _absorb(into: Space, other: Space) -> None:
    other.parent = into
    into.fixed += other.fixed
    into.blocked += other.blocked
    into.uniform += other.uniform
    if not into.origin:
        into.origin = other.origin


def block(s: Space, reason: str) -> None:
    r = find(s)
    if reason not in r.blocked:
        r.blocked.append(reason)


def fix(s: Space, reason: str) -> None:
    r = find(s)
    if reason not in r.fixed:
        r.fixed.append(reason)


def require_uniform(s: Space, reason: str) -> None:
    r = find(s)
    if reason not in r.uniform:
        r.uniform.append(reason)


def make_composite(kind: str, parts: list[Space], origin: str) -> Space:
    """A new space whose units are laid out as the product (row-major) or concatenation of `parts`."""
    parts = [find(p) for p in parts]
    if len(parts) == 1:
        return parts[0]
    size = math.prod(p.size for p in parts) if kind == "prod" else sum(p.size for p in parts)
    return Space(size, origin=origin, kind=kind, parts=parts)


def union(a: Space, b: Space, origin: str = "") -> Space:
    """Make `a` and `b` the same space. Layouts that cannot be reconciled block both (fail closed)."""
    ra, rb = find(a), find(b)
    if ra is rb:
        return ra
    if ra.size != rb.size:
        raise AssertionError(f"internal: unify sizes {ra.size} != {rb.size} at {origin}")
    if rb.kind != "leaf" and ra.kind == "leaf":
        ra, rb = rb, ra
    if rb.kind == "leaf":
        _absorb(ra, rb)
        return ra
    # both composite
    if ra.kind == "prod" and rb.kind == "prod":
        fa, fb = _common_product_refinement(product_factors(ra), product_factors(rb), origin)
        if fa is not None and fb is not None:
            for x, y in zip(fa, fb, strict=True):
                union(x, y, origin)
            if find(ra) is not find(rb):
                _absorb(find(ra), find(rb))
            return find(ra)
    elif ra.kind == "sum" and rb.kind == "sum" and [p.size for p in ra.parts] == [p.size for p in rb.parts]:
        pairs = list(zip(ra.parts, rb.parts, strict=True))
        _absorb(ra, rb)
        for x, y in pairs:
            union(x, y, origin)
        return find(ra)
    reason = f"two layouts of one axis cannot be reconciled at {origin}"
    for s in (ra, rb):
        for leaf in leaves(s):
            block(leaf, reason)
    _absorb(ra, rb)
    return ra


def product_factors(s: Space) -> list[Space]:
    """The flat row-major factor list of a space (sum spaces and leaves are atomic factors)."""
    r = find(s)
    if r.kind == "prod":
        return [f for p in r.parts for f in product_factors(p)]
    return [r]


def _split_leaf(s: Space, sizes: list[int], origin: str) -> list[Space]:
    r = find(s)
    parts = [Space(n, origin=origin) for n in sizes]
    r.kind, r.parts = "prod", parts
    return parts


def _common_product_refinement(
    fa: list[Space], fb: list[Space], origin: str
) -> tuple[list[Space] | None, list[Space] | None]:
    """Split factors of two equal-size factor lists until their boundaries line up; None if impossible."""
    fa, fb = [f for f in fa if f.size != 1], [f for f in fb if f.size != 1]
    out_a: list[Space] = []
    out_b: list[Space] = []
    ia = ib = 0
    while ia < len(fa) and ib < len(fb):
        x, y = find(fa[ia]), find(fb[ib])
        if x.size == y.size:
            out_a.append(x)
            out_b.append(y)
            ia += 1
            ib += 1
            continue
        big, small = (x, y) if x.size > y.size else (y, x)
        if big.size % small.size or big.kind != "leaf":
            return None, None
        first, rest = _split_leaf(big, [small.size, big.size // small.size], origin)
        if big is x:
            fa[ia : ia + 1] = [first, rest]
        else:
            fb[ib : ib + 1] = [first, rest]
    if ia != len(fa) or ib != len(fb):
        return None, None
    return out_a, out_b


def split_product(s: Space, sizes: list[int], origin: str) -> list[Space] | None:
    """View space `s` as a row-major product of axes of `sizes` (a reshape). None if the layout can't follow."""
    factors = [f for f in product_factors(s) if f.size != 1]
    out: list[Space] = []
    i = 0
    for n in sizes:
        if n == 1:
            out.append(Space(1, origin=origin))
            continue
        group: list[Space] = []
        prod = 1
        while prod < n and i < len(factors):
            f = find(factors[i])
            if prod * f.size > n:
                if (n % prod) or f.kind != "leaf" or (f.size % (n // prod)):
                    return None
                need = n // prod
                first, rest = _split_leaf(f, [need, f.size // need], origin)
                factors[i : i + 1] = [first, rest]
                f = first
            group.append(f)
            prod *= f.size
            i += 1
        if prod != n:
            return None
        out.append(make_composite("prod", group, origin))
    if i != len(factors):
        return None
    return out


def split_sum(s: Space, sizes: list[int], origin: str) -> list[Space] | None:
    """View space `s` as a concatenation of pieces of `sizes` (split/chunk). None if the layout can't follow."""
    r = find(s)
    if len(sizes) == 1:
        return [r]
    if r.kind == "leaf":
        r.kind, r.parts = "sum", [Space(n, origin=origin) for n in sizes]
        return list(r.parts)
    if r.kind == "sum":
        # regroup existing parts into the requested pieces when the boundaries line up
        out: list[Space] = []
        parts = list(r.parts)
        i = 0
        for n in sizes:
            group, total = [], 0
            while total < n and i < len(parts):
                group.append(parts[i])
                total += find(parts[i]).size
                i += 1
            if total != n:
                return None
            out.append(make_composite("sum", group, origin))
        return out
    return None


def leaves(s: Space) -> list[Space]:
    r = find(s)
    if r.kind == "leaf":
        return [r]
    out: list[Space] = []
    for p in r.parts:
        for leaf in leaves(p):
            if leaf not in out:
                out.append(leaf)
    return out


def total_size(space: Space, sizes: dict[int, int]) -> int:
    """The size of `space` when its leaves have the sizes in `sizes` (by leaf id; others keep theirs)."""
    r = find(space)
    if r.kind == "leaf":
        return sizes.get(r.id, r.size)
    vals = [total_size(p, sizes) for p in r.parts]
    return math.prod(vals) if r.kind == "prod" else sum(vals)


def solve_leaf(space: Space, leaf: Space, sizes: dict[int, int], total: int) -> int | None:
    """The size of `leaf` that makes `space` (a product/concatenation of groups) `total` wide, or None.

    Totals are linear in one leaf (a product with fixed factors, a concatenation of copies of the same group)."""
    n = sizes.get(leaf.id, leaf.size)
    t0 = total_size(space, {**sizes, leaf.id: n})
    slope = total_size(space, {**sizes, leaf.id: n + 1}) - t0
    if slope <= 0 or (total - t0) % slope:
        return None
    x = n + (total - t0) // slope
    return x if x >= 1 and total_size(space, {**sizes, leaf.id: x}) == total else None
