"""Matching step of `inject` (TLI / DPIAT): which source layer seeds which target layer.

A model becomes a tree: leaves are layers (modules whose kind says how inject sees them, `LayerKind.inject_leaf`:
Linear, ConvNd, norms, Embedding, MultiheadAttention; or any module with parameters of its own), inner nodes are
blocks (the module tree), children in execution order when example inputs were traced. Two child sequences are
aligned by dynamic programming, DPIAT style: skip a source item, skip a target item, or let one source item seed a
contiguous run of k target items (score summed and damped by 1/sqrt(k), so a deeper target reuses source layers).
Leaves score the product over dimensions of min(a/b, b/a) of their weight shapes (0 across layer kinds); blocks
score their own alignment, recursively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.layers import LayerKind, kind_of
from ...core.state import call_model, module_paths, run_mode

MAX_RUN = 6  # longest run of target items one source item may seed
SKIP_COST = 1e-3  # breaks ties towards using every source layer


@dataclass(eq=False)
class Leaf:
    path: str
    module: nn.Module
    kind: str  # layers of the same kind can be matched
    tensors: dict[str, torch.Tensor]  # name inside the module -> parameter or buffer
    shape: tuple[int, ...]  # canonical main-weight shape used for scoring (out, in, *kernel)
    layer: LayerKind | None = None  # None: the bare parameters of a custom module

    @property
    def creates_features(self) -> bool:
        """A weight layer (Linear, Conv, Embedding, attention), as opposed to a norm or bare parameters."""
        return self.layer is not None and self.layer.creates_features

    @property
    def size(self) -> int:
        return 1


@dataclass(eq=False)
class Block:
    path: str
    children: list[Leaf | Block] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(c.size for c in self.children)

    @property
    def is_unit(self) -> bool:
        """A weight layer and the norms that follow it (conv -> BN): matched as one item against a block."""
        first, rest = self.children[0], self.children[1:]
        return (bool(rest) and isinstance(first, Leaf) and first.creates_features
                and all(isinstance(c, Leaf) and not c.creates_features for c in rest))


def leaf_kind(module: nn.Module) -> tuple[str, tuple[int, ...], LayerKind] | None:
    """(kind string, canonical shape, kind) for a layer whose kind tells inject how to see it, None otherwise."""
    kind = kind_of(module)
    seen = kind.inject_leaf(module) if kind is not None else None
    return None if seen is None else (*seen, kind)


def _own_tensors(module: nn.Module, recurse: bool) -> dict[str, torch.Tensor]:
    out = {n: p for n, p in module.named_parameters(recurse=recurse) if p is not None}
    out.update({n: b for n, b in module.named_buffers(recurse=recurse) if b is not None})
    return out


def build_tree(model: nn.Module, order: dict[str, int] | None = None) -> Block:
    """The model as a tree of blocks and layers; children sorted by first execution when `order` is given."""

    def visit(module: nn.Module, path: str) -> Leaf | Block | None:
        known = leaf_kind(module)
        if known is not None:
            return Leaf(path, module, known[0], _own_tensors(module, recurse=True), known[1], known[2])
        block = Block(path)
        own = {n: t for n, t in _own_tensors(module, recurse=False).items() if t.is_floating_point()}
        if own:  # bare parameters of a custom module (a positional embedding, a layer scale)
            main = max(own.values(), key=lambda t: t.numel())
            block.children.append(Leaf(path, module, f"{type(module).__name__}:params", own, tuple(main.shape)))
        for name, child in module.named_children():
            node = visit(child, f"{path}.{name}" if path else name)
            if node is not None:
                block.children.append(node)
        if order:
            block.children.sort(key=lambda n: _first(n, order))
        block.children = _units(block.children)
        if not block.children:
            return None
        return block.children[0] if len(block.children) == 1 else block

    root = visit(model, "")
    if root is None:
        return Block("")
    return root if isinstance(root, Block) else Block("", [root])


def _units(children: list[Leaf | Block]) -> list[Leaf | Block]:
    """Group a flat run of layers into units: a weight layer (Linear, Conv, Embedding, attention) with the norms
    that follow it (conv -> BN). A deeper target then repeats whole units (conv+BN, conv+BN), as in nested blocks."""
    out: list[Leaf | Block] = []
    unit: list[Leaf] = []

    def close() -> None:
        if len(unit) > 1:
            out.append(Block(unit[0].path, list(unit)))
        elif unit:
            out.append(unit[0])
        unit.clear()

    for c in children:
        if isinstance(c, Leaf) and (c.creates_features or not unit):
            close()
            unit.append(c)
        elif isinstance(c, Leaf):
            unit.append(c)
        else:
            close()
            out.append(c)
    close()
    if len(out) == 1 and isinstance(out[0], Block) and len(out[0].children) == len(children):
        return children  # the whole block is one unit already
    return out


def _first(node: Leaf | Block, order: dict[str, int]) -> int:
    if isinstance(node, Leaf):
        return order.get(node.path, 1 << 30)
    return min((_first(c, order) for c in node.children), default=1 << 30)


def leaves(node: Leaf | Block) -> list[Leaf]:
    return [node] if isinstance(node, Leaf) else [x for c in node.children for x in leaves(c)]


def _ratio(x: float, y: float) -> float:
    return min(x, y) / max(x, y) if max(x, y) > 0 else 1.0


def _channel_dims(leaf: Leaf) -> tuple[int, ...]:
    """Dimensions that grow with the model's width (not kernels, not an embedding's vocabulary)."""
    return leaf.layer.channel_dims(leaf.shape) if leaf.layer is not None else tuple(range(len(leaf.shape)))


def leaf_score(a: Leaf, b: Leaf, width_ratio: float = 1.0) -> float:
    """DPIAT: product over dimensions of min(a/b, b/a); 0 across kinds or ranks. With ``width_ratio`` r != 1 the
    score is also computed as if `a`'s channel dimensions were r times larger, and the better of the two is kept: a
    2x-narrower source then matches its own counterpart (score 1) rather than a layer that happens to share one size."""
    if a.kind != b.kind or len(a.shape) != len(b.shape):
        return 0.0
    plain = math.prod(_ratio(x, y) for x, y in zip(a.shape, b.shape, strict=True))
    if width_ratio == 1.0:
        return plain
    channels = _channel_dims(a)
    scaled = math.prod(_ratio(x * width_ratio if d in channels else x, y)
                       for d, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)))
    return max(plain, scaled)


def width_ratio(source: Block, target: Block) -> float:
    """Typical target width / source width: ratio of the median output widths of their weight layers."""
    def median_width(tree: Block) -> float:
        widths = sorted(lf.shape[lf.layer.out_dim] for lf in leaves(tree) if lf.creates_features)
        return float(widths[len(widths) // 2]) if widths else 1.0

    return median_width(target) / median_width(source)


class Aligner:
    """Memoised DPIAT alignment between the nodes of two trees."""

    def __init__(self, width_ratio: float = 1.0) -> None:
        self.width_ratio = width_ratio
        self._memo: dict[tuple[int, int], tuple[float, list[tuple[Leaf, Leaf]]]] = {}
        self._aligned: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, list[tuple[Leaf, Leaf]]]] = {}

    def pair(self, a: Leaf | Block, b: Leaf | Block) -> tuple[float, list[tuple[Leaf, Leaf]]]:
        key = (id(a), id(b))
        if key not in self._memo:
            if isinstance(a, Leaf) and isinstance(b, Leaf):
                s = leaf_score(a, b, self.width_ratio)
                self._memo[key] = (s, [(a, b)] if s > 0 else [])
            else:  # a block against a block, or a layer against the layers of a block (nesting may differ)
                self._memo[key] = self.align(self._items(a, b), self._items(b, a))
        return self._memo[key]

    @staticmethod
    def _items(node: Leaf | Block, other: Leaf | Block) -> list[Leaf | Block]:
        """What `node` contributes when aligned against `other`: its children, except that a unit (conv + BN) stays
        whole against a block of units, so its norm goes with its weight layer rather than to another unit."""
        if isinstance(node, Leaf) or (node.is_unit and isinstance(other, Block) and not other.is_unit):
            return [node]
        return node.children

    def align(self, xs: list, ys: list) -> tuple[float, list[tuple[Leaf, Leaf]]]:
        key = (tuple(map(id, xs)), tuple(map(id, ys)))  # sub-sequences recur in the regrouping moves
        if key not in self._aligned:
            self._aligned[key] = self._align(xs, ys)
        return self._aligned[key]

    def _align(self, xs: list, ys: list) -> tuple[float, list[tuple[Leaf, Leaf]]]:
        n, m = len(xs), len(ys)
        dp = [[0.0] * (m + 1) for _ in range(n + 1)]
        back: list[list[tuple[int, int, int]]] = [[(0, 0, 0)] * (m + 1) for _ in range(n + 1)]
        # Runs (one source item seeding several target items) only where the target has more items to fill: with
        # equal counts the shape score alone would prefer stacking a layer over a 2x-narrower but aligned match.
        max_run = MAX_RUN if m > n else 1
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                best, how = dp[i - 1][j] - SKIP_COST, (i - 1, j, 0)  # skip source item i
                if dp[i][j - 1] > best:
                    best, how = dp[i][j - 1], (i, j - 1, 0)  # skip target item j
                total = 0.0
                for k in range(1, min(max_run, j) + 1):  # source item i seeds target items j-k+1 .. j
                    s = self.pair(xs[i - 1], ys[j - k])[0]
                    if s <= 0:
                        break
                    total += s
                    cand = dp[i - 1][j - k] + total / math.sqrt(k)
                    if cand > best + 1e-12:
                        best, how = cand, (i - 1, j - k, k)
                # nesting differs: source items i-k+1 .. i together against target block j, or the reverse
                for k in range(2, min(MAX_RUN, i) + 1):
                    if isinstance(ys[j - 1], Block):
                        cand = dp[i - k][j - 1] + self.align(xs[i - k:i], ys[j - 1].children)[0]
                        if cand > best + 1e-12:
                            best, how = cand, (i - k, j - 1, -1)
                for k in range(2, min(MAX_RUN, j) + 1):
                    if isinstance(xs[i - 1], Block):
                        cand = dp[i - 1][j - k] + self.align(xs[i - 1].children, ys[j - k:j])[0]
                        if cand > best + 1e-12:
                            best, how = cand, (i - 1, j - k, -2)
                dp[i][j], back[i][j] = best, how
        pairs: list[tuple[Leaf, Leaf]] = []
        i, j = n, m
        while i > 0 and j > 0:
            pi, pj, k = back[i][j]
            if k == -1:
                pairs.extend(reversed(self.align(xs[pi:i], ys[j - 1].children)[1]))
            elif k == -2:
                pairs.extend(reversed(self.align(xs[i - 1].children, ys[pj:j])[1]))
            for t in reversed(range(max(k, 0))):
                pairs.extend(reversed(self.pair(xs[i - 1], ys[pj + t])[1]))
            i, j = pi, pj
        pairs.reverse()
        return dp[n][m], pairs


def execution_order(model: nn.Module, example_inputs) -> dict[str, int]:  # noqa: ANN001
    """Module path -> index of its first call (a forward pass under hooks, in eval mode, no gradients)."""
    names = module_paths(model)
    order: dict[str, int] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        name = names.get(id(module))
        if name is not None and name not in order:
            order[name] = len(order)

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with run_mode(model, train=False), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        handle.remove()
    return order
