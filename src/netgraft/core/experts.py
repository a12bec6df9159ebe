"""The exact rules of upcycling, on stacked expert tensors (README "Upcycling"; REFERENCE section 6).

Layout (transformers 5's fused experts, and what the Hugging Face front end reads and writes): router (E, H);
gate|up (E, 2I, H), each expert's gate in its first I rows; down (E, H, I). A dense SwiGLU FFN is E = 1.

Routing: p = softmax(router x), the top-k experts S, weights w_i = p_i / sum_S p (renormalised), y = sum_S w_i E_i(x).
New expert e of a grown set is member `e % per` of group `e // per` (the group's old expert, or the dense FFN):

- segments: member s holds the s-th of `per` equal slices of the intermediate units, its down-projection x `per`.
  Router rows are equal inside a group, so top-k (a multiple of `per`) selects whole groups; each member's weight is
  its group's weight / per, and the group adds up to q_j * sum_s F_s(x) = q_j F(x). Same active compute as before.
- copies: every member is the whole expert. Dense -> E: the members have their own router rows (identical experts
  that receive different tokens drift apart); the selected weights sum to 1, so y = F(x). Old E -> new mE: rows equal
  inside a group (top-k -> m k), member c's down-projection ``m * share_c`` with shares summing to one per element
  (`netgraft.core.apply.split_noise_`), so the group sums to m * (w_j / m) E_j = w_j E_j and the copies, seeing
  different down-projections, get different gradients.

Factors are powers of two wherever the sizes allow, so bfloat16 experts are exact too; other factors are refused for
half precision (`check_factor`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidRequestError
from .apply import AxisGrowth, grow_tensor
from .plan import IndexMap

SPLITS = ("copies", "segments")


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_factor(factor: int, dtype: torch.dtype, what: str) -> None:
    """A down-projection multiplied by `factor` is exact in `dtype` (powers of two are exact in every float format;
    others round in half precision by more than the certificate's bound)."""
    if dtype in (torch.float16, torch.bfloat16) and not is_power_of_two(factor):
        raise InvalidRequestError(f"{what} multiplies the down-projections by {factor}, which is not exact in {dtype}: "
                                  f"use a power of two, or upcycle a float32 copy")


def dense_to_stacked(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense SwiGLU FFN as one expert: gate (I, H), up (I, H), down (H, I) -> gate|up (1, 2I, H), down (1, H, I)."""
    return torch.cat([gate, up], 0).unsqueeze(0), down.unsqueeze(0)


def segment_rows(gate_up: torch.Tensor, per: int) -> torch.Tensor:
    """gate|up (E, 2I, H) -> (E * per, 2I / per, H): member s of expert j keeps rows s of gate and of up."""
    e, two_i, h = gate_up.shape
    i = two_i // 2
    gate, up = gate_up[:, :i], gate_up[:, i:]  # (E, I, H) each
    seg = i // per
    parts = torch.cat([gate.reshape(e, per, seg, h), up.reshape(e, per, seg, h)], 2)  # (E, per, 2 seg, H)
    return parts.reshape(e * per, 2 * seg, h)


def segment_columns(down: torch.Tensor, per: int) -> torch.Tensor:
    """down (E, H, I) -> (E * per, H, I / per), x per: member s of expert j keeps columns s."""
    e, h, i = down.shape
    seg = i // per
    parts = down.reshape(e, h, per, seg).permute(0, 2, 1, 3)  # (E, per, H, seg)
    return (parts * per).reshape(e * per, h, seg)


def repeat_experts(t: torch.Tensor, per: int) -> torch.Tensor:
    """(E, ...) -> (E * per, ...): new expert e is old expert e // per (router rows, copies' gate|up)."""
    return t.repeat_interleave(per, dim=0)


def copies_down(down: torch.Tensor, per: int, noise: float, gen: torch.Generator, name: str) -> torch.Tensor:
    """down (E, H, I) -> (E * per, H, I): copy c of expert j is ``per * share_c * down[j]``; the shares of the copies
    of each element sum to one - power-of-two fractions, split element by element by `noise` (float32/64 only)."""
    src = np.repeat(np.arange(down.shape[0], dtype=np.int64), per)
    grown = grow_tensor(down, {0: AxisGrowth(IndexMap.copies(src, down.shape[0]), summed=True)}, noise=noise,
                        gen=gen, name=name)
    return grown * per


def tile_experts(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(G, ...) -> (groups * G, ...): expert e of the result is segment e % G (dense -> groups of G segments)."""
    return t.repeat(groups, *([1] * (t.dim() - 1)))


def grouped_router(rows: torch.Tensor, per: int) -> torch.Tensor:
    """(groups, H) -> (groups * per, H): equal rows inside each group, so top-k selects whole groups."""
    return repeat_experts(rows, per)


# -- labelled non-exact variants -------------------------------------------------------------------------------------

def drop_units_(gate_up: torch.Tensor, down: torch.Tensor, fraction: float, gen: torch.Generator) -> None:
    """Drop-Upcycling (arXiv 2502.19261): in every expert, re-initialise a random `fraction` of its intermediate
    units (their gate and up rows, their down column) from a normal with the statistics of that expert's weights.
    Not exact: the report carries the measured difference."""
    e, two_i, h = gate_up.shape
    i = two_i // 2
    n = int(round(fraction * i))
    if n == 0:
        return
    with torch.no_grad():
        for k in range(e):
            units = torch.randperm(i, generator=gen)[:n]
            rows = torch.cat([units, units + i])
            for t, axis, idx in ((gate_up[k], 0, rows), (down[k], 1, units)):
                std, mean = float(t.double().std()), float(t.double().mean())
                shape = list(t.shape)
                shape[axis] = len(idx)
                fresh = torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean
                t.index_copy_(axis, idx, fresh.to(t.dtype))


def perturb_(t: torch.Tensor, scale: float, gen: torch.Generator) -> None:
    """Expert noise (mergekit's noise_scale, Qwen1.5-MoE's "added randomness"): each expert's weights plus
    ``scale * std * z`` (z standard normal, std of that expert's tensor). Not exact."""
    if scale == 0:
        return
    with torch.no_grad():
        for k in range(t.shape[0]):
            std = float(t[k].double().std())
            t[k] += (torch.randn(t[k].shape, generator=gen, dtype=torch.float64) * scale * std).to(t.dtype)


# -- the request, checked once for every front end -------------------------------------------------------------------


def _int(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise InvalidRequestError(f"upcycle: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class ExpertPlan:
    """old experts (1: a dense FFN) -> `new`, each old one a group of `per` (segments or copies); top-k old -> new;
    `exact` False only for an explicitly chosen top-k that does not keep the function."""

    old: int
    new: int
    per: int
    split: str  # "segments" | "copies"
    top_k: int
    old_top_k: int | None  # None for a dense FFN
    exact: bool = True

    @property
    def dense(self) -> bool:
        return self.old_top_k is None

    @property
    def groups(self) -> int:
        """Router groups of equal rows (dense with granularity G: E / G; E -> mE: E)."""
        return self.new // self.per if self.dense else self.old

    def check_units(self, units: int, where: str) -> None:
        """The intermediate size `units` of one expert (or the dense FFN) splits into `per` segments."""
        if self.split == "segments" and units % self.per:
            what = "granularity" if self.dense else "splitting each expert into segments, num_experts / experts"
            valid = [d for d in divisors(units) if d <= 64]
            raise InvalidRequestError(f"upcycle: {where} has {units} intermediate units, which {what} = {self.per} "
                                      f"does not divide; valid values: {valid}")

    def check_dtype(self, dtype: torch.dtype, where: str) -> None:
        if self.split == "segments" or not self.dense:  # dense copies multiply nothing
            check_factor(self.per, dtype, f"upcycle of {where} ({self.describe()})")

    def describe(self) -> str:
        src = "dense FFN" if self.dense else f"{self.old} experts, top-{self.old_top_k}"
        how = f"granularity {self.per}" if self.dense and self.per > 1 else (
            "copies" if self.dense else f"{self.per} {self.split} each")
        return f"{src} -> {self.new} experts, top-{self.top_k} ({how})"


def plan_experts(num_experts: object, top_k: object, granularity: object, *, old: int = 1,
                 old_top_k: int | None = None, split: str | None = None, exact: bool = True) -> ExpertPlan:
    """Check a request against a layer with `old` experts (1 and `old_top_k` None: dense) and return its plan.

    Example:
        >>> plan_experts(8, 2, 1).describe()
        'dense FFN -> 8 experts, top-2 (copies)'
        >>> plan_experts(16, None, 1, old=8, old_top_k=2).top_k  # each expert a group of 2 copies: top-k doubles
        4
    """
    e = _int(num_experts, "num_experts")
    g = _int(granularity, "granularity")
    if old_top_k is None:  # dense -> E experts
        if split not in (None, "segments", "copies"):
            raise InvalidRequestError(f"upcycle: split must be one of {SPLITS}, got {split!r}")
        if top_k is None:
            raise InvalidRequestError(f"upcycle: give top_k, the experts each token uses (a multiple of granularity "
                                      f"{g} up to num_experts {e}, e.g. top_k={min(2 * g, e)})")
        k = _int(top_k, "top_k")
        if e < 2:
            raise InvalidRequestError(f"upcycle: num_experts must be >= 2, got {e}")
        if e % g or k % g or k > e:
            valid_k = [v for v in range(g, e + 1, g)] if e % g == 0 else []
            raise InvalidRequestError(
                f"upcycle: granularity {g} needs num_experts and top_k to be multiples of it, top_k <= num_experts "
                f"(whole groups of {g} segments are selected); got num_experts={e}, top_k={k}. Valid top_k: "
                f"{valid_k or 'none (num_experts is not a multiple of granularity)'}")
        return ExpertPlan(1, e, g, "segments" if g > 1 else "copies", k, None)
    if g != 1:
        raise InvalidRequestError(f"upcycle: granularity applies to a dense FFN; a layer that already has {old} "
                                  f"experts grows with split='copies' or split='segments'")
    split = split or "copies"
    if split not in SPLITS:
        raise InvalidRequestError(f"upcycle: split must be one of {SPLITS}, got {split!r}")
    if e <= old or e % old:
        raise InvalidRequestError(f"upcycle: a layer with {old} experts grows to a multiple of {old} "
                                  f"(each expert becomes a group); got num_experts={e}; valid: {old * 2}, {old * 3}, "
                                  f"{old * 4}...")
    m = e // old
    exact_k = m * old_top_k
    k = exact_k if top_k is None else _int(top_k, "top_k")
    if k > e:
        raise InvalidRequestError(f"upcycle: top_k {k} exceeds num_experts {e}")
    if k != exact_k and exact:
        raise InvalidRequestError(
            f"upcycle: top_k {k} does not keep the function: each of the {old} experts becomes {m} {split}, so "
            f"tokens must select {exact_k} (= {m} x top-{old_top_k}) to select whole groups. Pass top_k={exact_k}, "
            f"or exact=False to accept a measured difference (e.g. Expert Upcycling's fixed top-k)")
    return ExpertPlan(old, e, m, split, k, old_top_k, exact=k == exact_k)
