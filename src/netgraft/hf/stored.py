"""How a model's tensors lie in a checkpoint, where that differs from how the model holds them.

transformers 5 holds a mixture of experts fused - ``mlp.experts.gate_up_proj`` (experts, 2 x ffn, stream), each
expert's gate and up rows concatenated, and ``mlp.experts.down_proj`` (experts, stream, ffn) - but `save_pretrained`
writes the hub's layout, one tensor per expert and projection (``mlp.experts.{e}.gate_proj.weight``...; Mixtral's
block as ``block_sparse_moe``), and `from_pretrained` fuses them again (transformers/conversion_mapping.py). Each
family file declares its layout as data (`netgraft.families.schema.Stored`); `StoredLayout` applies it to one model:
which stored tensors make each model tensor, `read` one model tensor from them, `split` one into them. Families
without a declared layout store every tensor under its own name: the layout is the identity.

The streaming engine reads and writes only through it, so a grown checkpoint has the keys `save_pretrained` writes,
and no more than one fused tensor (one layer's experts) is ever assembled in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..families.schema import Family
from .errors import HFError


@dataclass(frozen=True)
class Part:
    """One stored tensor of a model tensor: its stored name and shape, and where it lies in the model tensor."""

    name: str
    shape: tuple[int, ...]
    index: tuple = ()  # () for all of it, (expert, rows) for one expert's gate, up or down


def _pattern(template: str, family: Family, whole: bool) -> re.Pattern:
    """A family template (inside the base, ``{i}`` a layer index) as a regex capturing the base prefix and index."""
    prefixes = "|".join(re.escape(b) for b in family.base)
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(rf"(?P<base>(?:{prefixes})?){body}" + ("" if whole else "(?P<rest>.+)"))


class StoredLayout:
    """Which stored tensors make each tensor of one model (`shapes`: its state-dict names -> shapes).

    With `present` (the names a checkpoint holds), the layout of that checkpoint: a model tensor it stores under the
    model's own name (fused, as transformers 5 also loads) is read as such, any other in the family's stored layout.
    Without, the hub's layout: what `save_pretrained` writes, and what the streaming engine writes.

    Example:
        >>> import torch
        >>> from netgraft.families import FAMILIES
        >>> layout = StoredLayout(FAMILIES["mixtral"], {"model.layers.0.mlp.experts.down_proj": (2, 8, 6)})
        >>> [p.name for p in layout.parts("model.layers.0.mlp.experts.down_proj")]
        ['model.layers.0.block_sparse_moe.experts.0.w2.weight', 'model.layers.0.block_sparse_moe.experts.1.w2.weight']
        >>> down = torch.arange(96.0).reshape(2, 8, 6)
        >>> stored = dict(layout.split("model.layers.0.mlp.experts.down_proj", down))
        >>> torch.equal(layout.read("model.layers.0.mlp.experts.down_proj", stored.__getitem__), down)
        True
    """

    def __init__(self, family: Family, shapes: dict[str, tuple[int, ...]], present: Iterable[str] | None = None):
        self.family = family
        have = None if present is None else set(present)
        experts = [(_pattern(k, family, True), v) for k, v in family.stored.experts.items()]
        renamed = [(_pattern(k, family, False), v) for k, v in family.stored.renamed.items()]
        self._parts: dict[str, list[Part]] = {}
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        for name, shape in self._shapes.items():
            if have is not None and name in have:
                self._parts[name] = [Part(name, shape)]
            else:
                self._parts[name] = self._stored(name, shape, experts, renamed)

    def _stored(self, name: str, shape: tuple[int, ...], experts: list, renamed: list) -> list[Part]:
        for pattern, templates in experts:
            m = pattern.fullmatch(name)
            if m is None:
                continue
            if len(shape) < 2 or shape[1] % len(templates):
                raise HFError(f"tensor '{name}' {shape}: the {self.family.name} layout stores it as {len(templates)} "
                              f"tensors per expert along its second axis, which {shape[1:2]} does not divide")
            rows = shape[1] // len(templates)
            base, i = m.group("base"), m.group("i")
            return [Part(base + t.format(i=i, e=e), (rows, *shape[2:]), (e, slice(k * rows, (k + 1) * rows)))
                    for e in range(shape[0]) for k, t in enumerate(templates)]
        for pattern, prefix in renamed:
            m = pattern.match(name)
            if m is not None:
                return [Part(m.group("base") + prefix.format(i=m.group("i")) + m.group("rest"), shape)]
        return [Part(name, shape)]

    def names(self) -> list[str]:
        """The model tensors laid out, in the model's order."""
        return list(self._parts)

    def parts(self, name: str) -> list[Part]:
        """The stored tensors that make model tensor `name`, in the order they are written."""
        return self._parts[name]

    def stored_shapes(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Stored name -> shape, for the model tensors `names` (all by default): what a checkpoint must hold."""
        return {p.name: p.shape for n in (self._parts if names is None else names) for p in self._parts[n]}

    def read(self, name: str, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """Model tensor `name`, assembled from its stored tensors as `get(stored name)` returns them (a checkpoint's
        reader, or a writer reading back what it wrote). A tensor stored whole is returned as `get` gives it."""
        parts = self._parts[name]
        if len(parts) == 1 and parts[0].index == ():
            return get(parts[0].name)
        out = None
        for part in parts:  # one stored tensor in memory besides the result: never a list of them
            t = get(part.name)
            if out is None:
                out = torch.empty(self._shapes[name], dtype=t.dtype)
            if t.dtype != out.dtype or tuple(t.shape) != part.shape:
                raise CheckpointError(f"tensor '{part.name}' is {t.dtype} {tuple(t.shape)}, but '{parts[0].name}' "
                                      f"makes '{name}' {out.dtype} and each expert's part is {part.shape}")
            out[part.index] = t
            del t
        return out

    def split(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Model tensor `name` as (stored name, tensor) pairs: views of `tensor`, nothing copied."""
        if tuple(tensor.shape) != self._shapes[name]:
            raise HFError(f"tensor '{name}' is {tuple(tensor.shape)}, but the layout was planned for "
                          f"{self._shapes[name]}")
        return [(p.name, tensor[p.index] if p.index else tensor) for p in self._parts[name]]
