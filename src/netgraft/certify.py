"""Certify: run two models on the same inputs and measure how far their outputs are apart."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._trace import call_model, flat_outputs, preserve_buffers

_BOUNDS = {torch.float64: (1e-10, 0.0), torch.float32: (1e-5, 1e-5)}  # (absolute, relative to max|y|)


def bound_for(dtype: torch.dtype, max_ref: float) -> float:
    """The exactness bound: float32 1e-5 x (1 + max|y|); float64 1e-10; half types 1e-2 x (1 + max|y|)."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5 * (1.0 + max_ref)
    return 1e-2 * (1.0 + max_ref)


@dataclass(frozen=True)
class Certificate:
    """Measured output difference between a source model and its transformed copy on the same inputs."""

    max_abs: float
    max_rel: float
    max_ref: float
    bound: float
    dtype: str
    mode: str
    outputs: int
    ok: bool  # every output within the bound of its own dtype and scale

    @property
    def passed(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "preserved" if self.passed else "NOT preserved"
        return (f"max |delta| = {self.max_abs:.3g} (relative {self.max_rel:.3g}; bound {self.bound:.3g} for "
                f"{self.dtype}, max |y| = {self.max_ref:.3g}, {self.mode} mode, {self.outputs} output tensor(s)): "
                f"{verdict}")


@contextlib.contextmanager
def _mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Set train/eval for a measurement and restore the modes and buffers (BatchNorm statistics, counters) after."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        with preserve_buffers(model):
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _run(model: nn.Module, inputs: Any, train: bool, seed: int) -> list[torch.Tensor]:
    with _mode(model, train), torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [t.detach() for t in flat_outputs(call_model(model, inputs))]


def check_preserved(a: nn.Module, b: nn.Module, example_inputs: Any, *, train: bool = False) -> Certificate:
    """Run `a` and `b` on `example_inputs` and return the largest output difference.

    Both models are left as they were (modes and BatchNorm statistics restored). `train=True` compares train-mode
    outputs (meaningful for models without dropout).

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> x = torch.randn(5, 3)
        >>> wide = netgraft.widen(m, 2.0, example_inputs=(x,))
        >>> netgraft.check_preserved(m, wide, (x,)).passed
        True
    """
    return compare_outputs(_run(a, example_inputs, train, 0), b, example_inputs, train=train)


# Modules with a fused inference fast path that a TorchFunctionMode (the trace) switches off: with padding masks
# the fast path returns zeros where the slow path returns values, so their reference must come from a plain run.
_FAST_PATH_MODULES = (nn.TransformerEncoder, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
                      nn.MultiheadAttention)


def reference_outputs(model: nn.Module, example_inputs: Any, traced: list[torch.Tensor]) -> list[torch.Tensor]:
    """The source's eval-mode outputs: the ones recorded while tracing, unless the model has a fast path."""
    if any(isinstance(m, _FAST_PATH_MODULES) for m in model.modules()):
        return _run(model, example_inputs, False, 0)
    return traced


def compare_outputs(ya: list[torch.Tensor], b: nn.Module, example_inputs: Any, *, train: bool = False) -> Certificate:
    """Certificate of model `b` against reference outputs `ya` (e.g. the source's outputs recorded while tracing)."""
    yb = _run(b, example_inputs, train, 0)
    if len(ya) != len(yb) or any(x.shape != y.shape for x, y in zip(ya, yb, strict=False)):
        shapes = ([tuple(x.shape) for x in ya], [tuple(y.shape) for y in yb])
        raise ValueError(f"the models return outputs of different shapes: {shapes[0]} vs {shapes[1]}")
    # Each output is held to the bound of its own dtype and scale; integer and bool outputs must match exactly;
    # a NaN counts as a difference unless both models put it at the same place.
    worst = (-1.0, 0.0, 0.0, 0.0, "float32")  # (delta / bound, delta, max|y|, bound, dtype)
    max_abs = max_ref = 0.0
    for x, y in zip(ya, yb, strict=True):
        if not x.is_floating_point():
            delta, ref, bound = (0.0 if torch.equal(x, y) else float("inf")), 0.0, 0.0
        else:
            xd, yd = x.double(), y.double()
            d = (xd - yd).abs()
            d = torch.where((torch.isnan(xd) & torch.isnan(yd)) | (xd == yd), torch.zeros_like(d), d)
            delta = float("inf") if bool(torch.isnan(d).any()) else (float(d.max()) if d.numel() else 0.0)
            finite = xd[torch.isfinite(xd)]
            ref = float(finite.abs().max()) if finite.numel() else 0.0
            bound = bound_for(x.dtype, ref)
        max_abs, max_ref = max(max_abs, delta), max(max_ref, ref)
        ratio = delta / bound if bound > 0 else (0.0 if delta == 0 else float("inf"))
        if ratio > worst[0] or (ratio == worst[0] and bound > worst[3]):
            worst = (ratio, delta, ref, bound, str(x.dtype).replace("torch.", ""))
    ok = worst[0] <= 1.0
    bound = worst[3] if ya else 0.0
    return Certificate(max_abs, max_abs / max(max_ref, 1e-30), max_ref, bound, worst[4], "train" if train else "eval",
                       len(ya), ok)
