"""`inject` and `similarity`: data-free transfer between different architectures (TLI / DPIAT).

Pipeline: build both models' layer trees (execution order when inputs are given) -> align them by dynamic programming
(`_inject_match`) -> inject each matched tensor into its target's shape (`_inject_tensor`) with a fan-in scale
correction -> write everything at once into the target, so an error leaves it untouched.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...core.guards import check_model
from ...errors import InvalidRequestError
from .match import Aligner, Block, Leaf, build_tree, execution_order, leaves, width_ratio
from .tensor import split_transplant, transplant

SIMILARITY_THRESHOLD = 0.45  # below it transfer tended to hurt in DPIAT's 67 pairs
_FUSED_NAMES = ("qkv", "c_attn", "query_key_value", "in_proj")


@dataclass
class Transfer:
    """One injected tensor: where it came from, the shapes, how it was reshaped, and its layers' match score."""

    source: str
    target: str
    source_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    method: str
    score: float


@dataclass
class InjectionReport:
    """What `inject` wrote. `print(report)` shows a table."""

    similarity: float
    transfers: list[Transfer] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)  # target tensors no source tensor reached
    unused_source: list[str] = field(default_factory=list)  # source layers that seeded nothing

    def __str__(self) -> str:
        rows = [("source", "target", "shape", "method", "score")]
        for t in self.transfers:
            shape = f"{'x'.join(map(str, t.source_shape)) or '()'} -> {'x'.join(map(str, t.target_shape)) or '()'}"
            rows.append((t.source, t.target, shape, t.method, f"{t.score:.2f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"similarity {self.similarity:.3f}; {len(self.transfers)} tensor(s) injected, "
                 f"{len(self.left_at_init)} left at their init"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if self.left_at_init:
            lines.append(f"left at init: {', '.join(self.left_at_init[:12])}"
                         + (f" (+{len(self.left_at_init) - 12} more)" if len(self.left_at_init) > 12 else ""))
        return "\n".join(lines)


def _tree(model: nn.Module, example_inputs: Any) -> Block:
    order = None
    if example_inputs is not None:
        try:
            order = execution_order(model, example_inputs)
        except Exception:  # noqa: BLE001 - a model that cannot run these inputs is ordered as defined
            order = None
    return build_tree(model, order)


def _float_places(model: nn.Module) -> set[tuple[torch.dtype, torch.device]]:
    return {(t.dtype, t.device) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}


def _check_places(source: nn.Module, target: nn.Module) -> None:
    src, tgt = _float_places(source), _float_places(target)
    if len(tgt) > 1:
        raise InvalidRequestError(f"inject: the target's tensors are spread over several dtypes/devices "
                                  f"{sorted(map(str, tgt))};"
                         " move it with target.to(...) first")
    if src and tgt and src != tgt:
        (sd, sv), (td, tv) = next(iter(src)), next(iter(tgt))
        raise InvalidRequestError(f"inject: source tensors are {sd} on {sv} but the target's are {td} on {tv}; "
                                  "convert one "
                         f"with .to(dtype=..., device=...) first (netgraft never casts silently)")


def _modality(tree: Block) -> str:
    first = next(iter(leaves(tree)), None)
    return "tokens" if first is not None and first.layer is not None and first.layer.reads_ids else "features"


def _canonical(leaf: Leaf, name: str, t: torch.Tensor) -> torch.Tensor:
    """`t` in the canonical (out, in, *kernel) layout, read by its own module's layout (a view, never a copy)."""
    return leaf.layer.canonical(leaf.module, name, t) if leaf.layer is not None else t


def _stored(leaf: Leaf, name: str, t: torch.Tensor) -> torch.Tensor:
    """A canonical tensor back in the layout `leaf`'s module stores tensor `name` in."""
    return leaf.layer.stored(leaf.module, name, t) if leaf.layer is not None else t


def _fan_in(canonical: torch.Tensor) -> int:
    return math.prod(canonical.shape[1:])


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt()) if t.numel() else 0.0


def _fixed_dims(leaf: Leaf, t: torch.Tensor, channel_resize: bool) -> tuple[int, ...]:
    """Dimensions cropped/placed but never interpolated: channels (their order is arbitrary). Kernel taps and the
    positions of a bare parameter (a positional embedding, features last) are ordered and may be resized."""
    if channel_resize:
        return ()
    if leaf.layer is None:  # the bare parameters of a custom module
        return (t.dim() - 1,) if t.dim() else ()
    return tuple(d for d in (0, 1) if d < t.dim())


def _inject_leaf(src: Leaf, dst: Leaf, score: float,
                 channel_resize: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, Transfer]]:
    out = []
    for name, t in dst.tensors.items():
        s = src.tensors.get(name)
        if s is None or s.dim() != t.dim():
            continue
        if not t.is_floating_point():  # num_batches_tracked
            if s.shape == t.shape:
                out.append((t, s.detach().clone(), Transfer(f"{src.path}.{name}", f"{dst.path}.{name}",
                                                            tuple(s.shape), tuple(t.shape), "copied", score)))
            continue
        # Each side is read in its own module's layout (an nn.Linear is (out, in), GPT-2's Conv1D (in, out)), so the
        # same function stored in two layouts is copied exactly; the result is written back in the target's layout.
        s_c, t_c = _canonical(src, name, s), _canonical(dst, name, t)
        fused = name.startswith("in_proj") or (dst.path.rsplit(".", 1)[-1] in _FUSED_NAMES and name in ("weight",
                                                                                                      "bias"))
        if fused and s_c.shape[0] % 3 == 0 and t_c.shape[0] % 3 == 0 and s_c.shape[0] != t_c.shape[0]:
            new, how = split_transplant(s_c, t_c, 3, 0, _fixed_dims(dst, t_c, channel_resize))
        else:
            new, how = transplant(s_c, t_c, prefix_dims=dst.layer.prefix_dims if dst.layer is not None else (),
                                  fixed_dims=_fixed_dims(dst, t_c, channel_resize))
        if how != "copied" and t.dim() >= 2 and dst.layer is not None and dst.layer.fan_in_scaled:
            # Scale correction: rms(new) = rms(source) * sqrt(fan_in_source / fan_in_target), so that for inputs of
            # unit variance each output keeps the variance it had in the source (fan_in * rms^2 is unchanged).
            wanted = _rms(s) * math.sqrt(_fan_in(s_c) / _fan_in(t_c))
            factor = wanted / _rms(new) if _rms(new) > 0 else 1.0
            new = new * factor
            how += f", x{factor:.3g} fan-in scale"
        new = _stored(dst, name, new)
        out.append((t, new.contiguous(), Transfer(f"{src.path}.{name}", f"{dst.path}.{name}", tuple(s.shape),
                                                  tuple(t.shape), how, score)))
    return out


def _align(source: nn.Module, target: nn.Module, example_inputs: Any) -> tuple[Block, Block, float, list]:
    """Both trees, the similarity and the matched layer pairs (one width-aware alignment gives both)."""
    src_tree, tgt_tree = _tree(source, example_inputs), _tree(target, example_inputs)
    score, pairs = Aligner(width_ratio(src_tree, tgt_tree)).pair(src_tree, tgt_tree)
    best = Aligner().pair(tgt_tree, tgt_tree)[0]
    return src_tree, tgt_tree, (min(1.0, score / best) if best > 0 else 0.0), pairs


def similarity(source: nn.Module, target: nn.Module, *, example_inputs: Any = None) -> float:
    """How much of `target` the layers of `source` can seed, in [0, 1] (DPIAT's score, width-aware, directed).

    ``DP(source -> target) / DP(target -> target)``, the alignment score of `inject`'s matching normalised by the
    target's alignment with itself. Layer pairs score the product over weight dimensions of ``min(a/b, b/a)``
    (DPIAT), or, when it is higher, the same product with the source's channel dimensions scaled by the models'
    typical width ratio (median output width of their weight layers): a uniformly 2x wider or narrower target
    then scores like a same-width one, because injection handles such width changes well (DPIAT's plain score
    ranked our benchmark's pairs worse: Spearman 0.83 against 0.95 for this one). Exactly 1.0 for identical
    architectures, deterministic, and *not* symmetric (a small source seeds a large target less than the reverse).
    Below 0.45 (`SIMILARITY_THRESHOLD`) transfer tended to hurt in DPIAT's experiments, and `inject` warns.

    Example:
        >>> import torch, netgraft
        >>> a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        >>> b = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> netgraft.similarity(a, a), round(netgraft.similarity(a, b), 3)
        (1.0, 0.5)
    """
    for m in (source, target):
        check_model(m, "similarity")
    return _align(source, target, example_inputs)[2]


def inject_(
    source: nn.Module,
    target: nn.Module,
    *,
    example_inputs: Any = None,
    strict: bool = True,
    warn_below: float = SIMILARITY_THRESHOLD,
    channel_resize: bool = False,
) -> InjectionReport:
    """Write the weights of a trained `source` into a differently shaped `target`, in place (TLI / DPIAT).

    Layers are matched structurally (dynamic programming over the nested blocks: a target deeper than the source
    reuses source layers, extra layers on either side are skipped) and each matched tensor is cropped/placed at the
    centre and mixed with a linear resize (0.75 / 0.25) into the target's shape; kernel sizes, widths and depths may
    all differ, and shrinking is the same call. Channel dimensions are cropped/placed only (``channel_resize=True``
    interpolates them too, as the paper does). Weights whose fan-in changes are scaled by
    ``sqrt(fan_in_source / fan_in_target)`` so each output keeps the scale it had in the source. BatchNorm running
    statistics, LayerNorm/GroupNorm, Embedding (vocabulary aligned at the start), MultiheadAttention and fused q/k/v
    projections (injected per part) are included. GPT-2's ``Conv1D`` (weight stored (in, out)) and ``nn.Linear``
    ((out, in)) are each read in their own layout, so nanoGPT <-> Hugging Face GPT-2 of one shape is an exact copy.
    Deterministic; no data needed.

    Args:
        source: the trained model (not modified).
        target: the model to initialise; written in place, like ``load_state_dict``. Left untouched on error.
        example_inputs: optional inputs both models accept: their layers are then ordered as executed.
        strict: raise ``ValueError`` when no layer matches (else return an empty report).
        warn_below: warn when `similarity` is below this (transfer tends to hurt).
        channel_resize: also interpolate channel dimensions, as the TLI paper does. Off by default: channel order
            is arbitrary, so only kernel taps and positions are resized and channels are cropped/placed.

    Example:
        >>> import torch, netgraft
        >>> src = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        >>> dst = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4))
        >>> report = netgraft.inject_(src, dst)
        >>> [t.target for t in report.transfers]
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    for m in (source, target):
        check_model(m, "inject")
    _check_places(source, target)
    src_tree, tgt_tree, sim, pairs = _align(source, target, example_inputs)
    if _modality(src_tree) != _modality(tgt_tree):
        raise InvalidRequestError(f"inject: mismatched modalities: the source's first layer takes "
                                  f"{_modality(src_tree)}, the "
                         f"target's takes {_modality(tgt_tree)}")
    if not pairs:
        if strict:
            raise InvalidRequestError("inject: no compatible layers between source and target (no Linear, Conv, norm, "
                             "Embedding or attention layer of the same kind and rank on both sides)")
        return InjectionReport(sim, left_at_init=[f"{lf.path}.{n}" for lf in leaves(tgt_tree) for n in lf.tensors])
    aligner = Aligner()
    writes, seen = [], set()
    for s, t in pairs:
        for w in _inject_leaf(s, t, aligner.pair(s, t)[0], channel_resize):
            if id(w[0]) not in seen:  # a tied tensor (GPT-2's lm_head is wte) is written once, by its first layer
                seen.add(id(w[0]))
                writes.append(w)
    with torch.no_grad():  # everything was computed first: an error above leaves the target untouched
        for dst, new, _ in writes:
            dst.copy_(new)
    written = {id(w[0]) for w in writes}
    used = {id(s) for s, _ in pairs}
    report = InjectionReport(
        sim,
        [w[2] for w in writes],
        [f"{lf.path}.{n}" if lf.path else n for lf in leaves(tgt_tree) for n, t in lf.tensors.items()
         if id(t) not in written],
        [lf.path for lf in leaves(src_tree) if id(lf) not in used],
    )
    if sim < warn_below:
        warnings.warn(f"inject: similarity {sim:.3f} is below {warn_below}; transfer between such different "
                      "architectures tends to hurt (DPIAT)", stacklevel=2)
    return report


def inject(source: nn.Module, target: nn.Module, **kwargs: Any) -> InjectionReport:
    """The earlier name of `inject_` (it writes into `target` in place, so its name now ends in `_`); kept for one
    release, with a DeprecationWarning.

    Example:
        >>> import torch, warnings, netgraft
        >>> a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        >>> with warnings.catch_warnings(record=True):
        ...     netgraft.inject(a, b).similarity
        1.0
    """
    warnings.warn("netgraft.inject is now netgraft.inject_ (it writes into the target in place); inject will be "
                  "removed in the next release", DeprecationWarning, stacklevel=2)
    return inject_(source, target, **kwargs)
