"""Injection step of `inject` (TLI): turn a source tensor into a target tensor's shape.

Per dimension, a *centre crop* when the source is larger and a *centre placement* when it is smaller (the target keeps
its own init around it), mixed with a *linear resize* of the source to the target's shape:
``result = 0.75 * crop_or_place + 0.25 * resize`` (the TLI paper's lambda). Both halves are deterministic functions
of (source size, target size), so a layer's kept output channels and the next layer's kept input channels are the
same ones whenever the two layers shrink or grow the same dimension alike. Equal shapes are copied bit for bit.

Which dimensions are resized: the paper interpolates every dimension; by default netgraft interpolates only *ordered*
dimensions (kernel taps, positions) and crops/places channel dimensions, because channel order is arbitrary and
interpolating between neighbouring channels averages unrelated features (measured in ``benchmarks/bench_inject.py``:
2.3x -> 3.0x default-init accuracy for a 2x narrower CNN after a quarter epoch). ``channel_resize=True`` restores
the paper's behaviour. Dimensions indexed by identity (an embedding's vocabulary) are aligned at the start and never
resized.
"""

from __future__ import annotations

import torch

from ...errors import InvalidRequestError

LAMBDA = 0.75  # weight of crop/placement against resize (TLI)


def _crop_place(src: torch.Tensor, dst: torch.Tensor, prefix_dims: tuple[int, ...]) -> torch.Tensor:
    out = dst.detach().clone()
    src_idx, dst_idx = [], []
    for d, (s, t) in enumerate(zip(src.shape, dst.shape, strict=True)):
        n = min(s, t)
        so, to = (0, 0) if d in prefix_dims else ((s - n) // 2, (t - n) // 2)
        src_idx.append(slice(so, so + n))
        dst_idx.append(slice(to, to + n))
    out[tuple(dst_idx)] = src[tuple(src_idx)].to(out.dtype)
    return out


def _interp_dim(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linear interpolation along `dim` to `size` samples, end points aligned (one sample: the centre)."""
    s = x.shape[dim]
    if s == 1:
        return x.repeat_interleave(size, dim=dim)
    pos = torch.tensor([(s - 1) / 2]) if size == 1 else torch.linspace(0, s - 1, size, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=s - 2)
    frac = (pos - lo).to(x.dtype).to(x.device)
    view = [1] * x.dim()
    view[dim] = size
    a, b = x.index_select(dim, lo.to(x.device)), x.index_select(dim, (lo + 1).to(x.device))
    return a + (b - a) * frac.view(view)


def _resize(src: torch.Tensor, dst: torch.Tensor, prefix_dims: tuple[int, ...],
            fixed_dims: tuple[int, ...]) -> torch.Tensor:
    x = src.detach()
    for d, t in enumerate(dst.shape):
        if x.shape[d] != t and d not in prefix_dims and d not in fixed_dims:
            x = _interp_dim(x, d, t)
    return _crop_place(x, dst, prefix_dims) if x.shape != dst.shape else x.to(dst.dtype)


def transplant(src: torch.Tensor, dst: torch.Tensor, prefix_dims: tuple[int, ...] = (),
               fixed_dims: tuple[int, ...] = ()) -> tuple[torch.Tensor, str]:
    """`src` reshaped to `dst`'s shape (values of `dst` fill what the source does not cover), and how.

    `prefix_dims` are aligned at the start instead of the centre; `fixed_dims` are cropped/placed but never resized.
    """
    if src.dim() != dst.dim():
        raise InvalidRequestError(f"cannot inject a tensor of shape {tuple(src.shape)} into one of shape "
                                  f"{tuple(dst.shape)}")
    if src.shape == dst.shape:
        return src.detach().to(dst.dtype).clone(), "copied"
    changed = [d for d, (s, t) in enumerate(zip(src.shape, dst.shape, strict=True)) if s != t]
    ops = "+".join(sorted({"crop" if src.shape[d] > dst.shape[d] else "place" for d in changed}))
    a = _crop_place(src, dst, prefix_dims)
    if all(d in prefix_dims or d in fixed_dims for d in changed):
        return a, ops
    out = LAMBDA * a + (1 - LAMBDA) * _resize(src, dst, prefix_dims, fixed_dims)
    return out, f"{ops} & resize"


def split_transplant(src: torch.Tensor, dst: torch.Tensor, parts: int, dim: int,
                     fixed_dims: tuple[int, ...] = ()) -> tuple[torch.Tensor, str]:
    """Fused projections (q, k, v stacked along `dim`): each part is injected into its own part."""
    pieces = [transplant(s, d, fixed_dims=fixed_dims)
              for s, d in zip(src.chunk(parts, dim), dst.chunk(parts, dim), strict=True)]
    how = pieces[0][1] if all(p[1] == pieces[0][1] for p in pieces) else "mixed"
    return torch.cat([p[0] for p in pieces], dim), f"{how} per q/k/v part"
