"""Certify: run the source and its transformed copy on the same inputs and measure how far their outputs are apart.

One implementation for every operator and front end:

- **inputs**: every probe the source accepted and took the traced path on (`_probes`: the example inputs, fresh
  values, one more sample), so a result is never certified on the example alone;
- **modes**: eval mode and train mode (dropout as the identity: the comparison is about what training computes,
  BatchNorm batch statistics and `if self.training` branches, not about its randomness); an operator says which
  modes it *claims* exact, and the others are measured and reported, not hidden;
- **cached decoding** for Hugging Face models with a KV cache: a prefix, then token-by-token decoding with
  ``past_key_values``, so a layer that writes into another layer's cache slot cannot pass;
- **the bound**: float64 1e-10; float32 1e-5 x (1 + max|y|); half precision 1e-2 x (1 + max|y|), or the float32 bound
  where the model is run in float32 (`float32_compute`, without a float32 copy of it). NaN and Inf never pass;
- **the audit** (`audit`): a result that still calls the source's modules or reads its tensors, or leaves a grown
  tensor unused, is refused whatever its outputs say (a copied closure can make a dead copy look exact).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import UnsupportedModelError
from .catalogue import FAST_PATH_MODULES
from .probes import Probe
from .state import call_model, flat_outputs, module_paths, run_mode

MODES = ("eval", "train")


def bound_for(dtype: torch.dtype, max_ref: float) -> float:
    """The exactness bound: float32 1e-5 x (1 + max|y|); float64 1e-10; half types 1e-2 x (1 + max|y|)."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-5 * (1.0 + max_ref)
    return 1e-2 * (1.0 + max_ref)


@dataclass(frozen=True)
class Measurement:
    """One comparison: the outputs of both models on one probe in one mode."""

    inputs: str  # which probe ("example_inputs", "fresh values", ...)
    mode: str  # "eval", "train" or "cached decoding"
    max_abs: float
    max_ref: float
    bound: float
    dtype: str
    outputs: int
    ok: bool
    note: str = ""  # why it failed beyond the numbers (non-finite values, shapes)

    @property
    def ratio(self) -> float:
        if self.bound > 0:
            return self.max_abs / self.bound
        return 0.0 if self.max_abs == 0 else math.inf


@dataclass(frozen=True)
class Certificate:
    """Measured output differences between a source model and its transformed copy.

    `passed` is True when every measurement in a *claimed* mode is within its bound; measurements in other modes are
    reported (`str(cert)`) but do not decide. ``max_abs``, ``bound``, ``dtype`` and ``mode`` describe the worst
    measurement relative to its bound.
    """

    measurements: tuple[Measurement, ...]
    claimed: tuple[str, ...] = MODES + ("cached decoding",)
    note: str = ""  # what an operator wants said about the modes (e.g. why train mode is not claimed)

    def _decisive(self) -> list[Measurement]:
        return [m for m in self.measurements if m.mode in self.claimed]

    def _worst(self) -> Measurement | None:
        pool = self._decisive() or list(self.measurements)
        return max(pool, key=lambda m: (m.ratio, m.bound)) if pool else None

    @property
    def passed(self) -> bool:
        decisive = self._decisive()
        return bool(decisive) and all(m.ok for m in decisive)

    @property
    def ok(self) -> bool:
        return self.passed

    @property
    def max_abs(self) -> float:
        return max((m.max_abs for m in self._decisive()), default=0.0)

    @property
    def max_ref(self) -> float:
        return max((m.max_ref for m in self.measurements), default=0.0)

    @property
    def max_rel(self) -> float:
        return self.max_abs / max(self.max_ref, 1e-30)

    @property
    def bound(self) -> float:
        w = self._worst()
        return w.bound if w else 0.0

    @property
    def dtype(self) -> str:
        w = self._worst()
        return w.dtype if w else "float32"

    @property
    def mode(self) -> str:
        w = self._worst()
        return w.mode if w else "eval"

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes measured and passed (those an operator claims exact are in `claimed`)."""
        measured = dict.fromkeys(m.mode for m in self.measurements)
        return tuple(k for k in measured if all(m.ok for m in self.measurements if m.mode == k))

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.inputs for m in self.measurements))

    @property
    def outputs(self) -> int:
        return max((m.outputs for m in self.measurements), default=0)

    def __str__(self) -> str:
        w = self._worst()
        if w is None:
            return "no measurement: NOT preserved"
        verdict = "preserved" if self.passed else "NOT preserved"
        decisive = self._decisive()
        modes = sorted(dict.fromkeys(m.mode for m in decisive), key=lambda x: (x not in MODES, x))
        text = (f"max |delta| = {self.max_abs:.3g} (bound {w.bound:.3g} for {w.dtype}, max |y| = {self.max_ref:.3g}) "
                f"on {len(self.inputs)} input(s) [{'; '.join(self.inputs)}], {' + '.join(modes)} mode: {verdict}")
        failed = [m for m in decisive if not m.ok]
        if failed:
            why = f": {failed[0].note}" if failed[0].note else ""
            text += f" (fails in {failed[0].mode} mode on {failed[0].inputs}{why})"
        others = [m for m in self.measurements if m.mode not in self.claimed]
        if others:
            worst = max(others, key=lambda m: m.ratio)
            text += (f"; {worst.mode} mode not claimed exact: max |delta| = {worst.max_abs:.3g} "
                     f"({'within' if all(m.ok for m in others) else 'above'} the bound)")
        if self.note:
            text += f"; {self.note}"
        return text


# -- running a model -------------------------------------------------------------------------------------------------

_CHUNK = 1 << 22  # elements of a weight upcast at once while running a half-precision Linear in float32 (16 MiB)


def _chunked_linear(module: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        w, b = module.weight, module.bias
        rows = max(1, _CHUNK // max(1, w.shape[1]))
        x = x.float()
        return torch.cat([F.linear(x, w[i:i + rows].float(), None if b is None else b[i:i + rows].float())
                          for i in range(0, w.shape[0], rows)], dim=-1)
    return forward


@contextlib.contextmanager
def float32_compute(model: nn.Module) -> Iterator[None]:
    """Run a bfloat16/float16 model in float32 without a float32 copy of it: Linear layers multiply by their weight
    upcast a slice at a time, embeddings look up in half precision (exact) and return float32, and every other
    module's own half-precision tensors are upcast (exactly) just for its forward and restored after it."""
    half = (torch.bfloat16, torch.float16)
    saved: dict[int, list] = {}

    def pre(module: nn.Module, args: tuple) -> None:
        mine = []
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if t.dtype in half:
                mine.append((t, t.data))
                t.data = t.data.float()
        saved[id(module)] = mine

    def post(module: nn.Module, args: tuple, out: Any) -> Any:
        for t, data in saved.pop(id(module), []):
            t.data = data
        return out

    handles, patched = [], []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.forward = _chunked_linear(m)
            patched.append(m)
        elif isinstance(m, nn.Embedding):
            handles.append(m.register_forward_hook(lambda mod, a, out: out.float()))
        else:
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in patched:
            del m.forward  # back to the class's forward
        for m in model.modules():
            post(m, (), None)


def is_half(model: nn.Module) -> bool:
    p = next(iter(model.parameters()), None)
    return p is not None and p.dtype in (torch.bfloat16, torch.float16)


def outputs_of(model: nn.Module, inputs: Any, train: bool = False, *, float32: bool = False,
               select: Callable[[Any], list[torch.Tensor]] = flat_outputs) -> list[torch.Tensor]:
    """The model's output tensors on `inputs` in eval or train mode (dropout off), state and modes restored;
    `float32=True` runs a half-precision model in float32 (`float32_compute`)."""
    upcast = float32_compute(model) if float32 and is_half(model) else contextlib.nullcontext()
    with run_mode(model, train), torch.no_grad(), torch.random.fork_rng(devices=[]), upcast:
        torch.manual_seed(0)
        return [t.detach() for t in select(call_model(model, inputs))]


def measure(ya: Sequence[torch.Tensor], yb: Sequence[torch.Tensor], inputs: str, mode: str,
            bound_dtype: torch.dtype | None = None) -> Measurement:
    """Compare two lists of outputs. Each output is held to the bound of its own dtype and scale (or of
    `bound_dtype`); integer and bool outputs must match exactly; NaN or Inf anywhere never passes."""
    if len(ya) != len(yb) or any(x.shape != y.shape for x, y in zip(ya, yb, strict=False)):
        shapes = ([tuple(x.shape) for x in ya], [tuple(y.shape) for y in yb])
        return Measurement(inputs, mode, math.inf, 0.0, 0.0, "?", len(ya), False,
                           f"outputs of different shapes: {shapes[0]} vs {shapes[1]}")
    worst = (-1.0, 0.0, 0.0, 0.0, "float32")  # (delta / bound, delta, max|y|, bound, dtype)
    max_abs = max_ref = 0.0
    note = ""
    for x, y in zip(ya, yb, strict=True):
        if not x.is_floating_point():
            delta, ref, bound = (0.0 if torch.equal(x, y) else math.inf), 0.0, 0.0
        else:
            xd, yd = x.double(), y.double()
            finite = bool(torch.isfinite(xd).all()) and bool(torch.isfinite(yd).all())
            if not finite:
                note = "non-finite outputs (NaN or Inf) are never certified"
            delta = float((xd - yd).abs().max()) if finite and xd.numel() else (0.0 if finite else math.inf)
            ref = float(xd.abs().max()) if finite and xd.numel() else 0.0
            bound = bound_for(bound_dtype or x.dtype, ref)
        max_abs, max_ref = max(max_abs, delta), max(max_ref, ref)
        ratio = delta / bound if bound > 0 else (0.0 if delta == 0 else math.inf)
        if ratio > worst[0] or (ratio == worst[0] and bound > worst[3]):
            worst = (ratio, delta, ref, bound, str(bound_dtype or x.dtype).replace("torch.", ""))
    ok = worst[0] <= 1.0 and not note
    return Measurement(inputs, mode, max_abs, max_ref, worst[3] if ya else 0.0, worst[4], len(ya), ok, note)


# -- the audit: the result computes with its own modules -------------------------------------------------------------

class _Reach(TorchFunctionMode):
    def __init__(self, watched: dict[int, str], used: set[int]):
        super().__init__()
        self.watched, self.used, self.reached = watched, used, []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        for t in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(t, torch.Tensor):
                self.used.add(id(t))
                if id(t) in self.watched and self.watched[id(t)] not in self.reached:
                    self.reached.append(self.watched[id(t)])
        return func(*args, **(kwargs or {}))


def _holder_of_closure(result: nn.Module, source_ids: set[int]) -> str:
    """'module X attribute Y' for a function stored on the result that captured one of the source's objects."""
    for path, module in result.named_modules():
        for key, value in module.__dict__.items():
            fn = value.__func__ if isinstance(value, types.MethodType) else value
            if isinstance(value, types.MethodType) and id(value.__self__) in source_ids:
                return f" (module '{path or '<root>'}' attribute '{key}', a bound method of the source's module)"
            cells = getattr(fn, "__closure__", None) or ()
            for cell in cells:
                with contextlib.suppress(ValueError):
                    if id(cell.cell_contents) in source_ids:
                        return f" (module '{path or '<root>'}' attribute '{key}', a function whose closure captured it)"
    return ""


def audit(source: nn.Module, result: nn.Module, inputs: Any, must_use: dict[str, torch.Tensor], verb: str) -> None:
    """Run `result` once and refuse it when it reaches a module or tensor of `source` (a copied closure or a global
    still points at the source: the result's own layers would be dead and training it would train the source) or
    when a tensor of `must_use` (grown or inserted) is never used."""
    src_modules = module_paths(source)
    src_tensors = {id(t): n for n, t in [*source.named_parameters(), *source.named_buffers()]}
    called: list[str] = []

    def pre(module: nn.Module, args: tuple) -> None:
        name = src_modules.get(id(module))
        if name is not None and name not in called:
            called.append(name)

    used: set[int] = set()
    reach = _Reach(src_tensors, used)
    handle = nn.modules.module.register_module_forward_pre_hook(pre)
    failure: Exception | None = None
    try:
        with run_mode(result, train=False), torch.no_grad(), reach:
            call_model(result, inputs)
    except Exception as err:  # noqa: BLE001 - reaching the source explains a failure best; else it is re-raised
        failure = err
    finally:
        handle.remove()
    if failure is not None and not (called or reach.reached):
        raise failure
    if called or reach.reached:
        what = (f"module '{called[0] or '<root>'}' ({type(source.get_submodule(called[0])).__name__})" if called
                else f"tensor '{reach.reached[0]}'")
        where = _holder_of_closure(result, set(src_modules) | set(src_tensors))
        raise UnsupportedModelError(
            f"{verb}: the copy still reaches the source model's {what} when it runs{where}: a function stored on the "
            f"model (a lambda, functools.partial, bound method or global) points at the source, so the copy's own "
            f"layers would be dead and training it would train the source. Make it a method or a submodule call "
            f"(e.g. `def mlpf(self, x): ...`)") from failure
    unused = [n for n, t in must_use.items() if id(t) not in used]
    if unused:
        raise UnsupportedModelError(
            f"{verb}: the result never uses {unused[:4]} when it runs, although they were resized or inserted: its "
            f"forward reaches other tensors than the traced path (a function stored on the model, a cached "
            f"reference). Refused rather than returning a model with dead parameters")


# -- cached decoding (Hugging Face models with a KV cache) -----------------------------------------------------------

def _token_ids(inputs: Any) -> torch.Tensor | None:
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else (
        inputs[0] if isinstance(inputs, (tuple, list)) and inputs else inputs)
    if isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point() and ids.shape[1] >= 2:
        return ids
    return None


def _decode(model: nn.Module, ids: torch.Tensor, prefix: int, float32: bool,
            select: Callable[[Any], list[torch.Tensor]]) -> list[list[torch.Tensor]] | None:
    """Outputs of a prefix run with use_cache=True, then of each next token fed alone with the cache (one list of
    selected outputs per step); None when the model returns no cache."""
    upcast = float32_compute(model) if float32 and is_half(model) else contextlib.nullcontext()
    # transformers 5 calls the argument and the output `cache`; earlier releases `past_key_values`
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    steps = []
    with run_mode(model, train=False), torch.no_grad(), upcast:
        out = model(input_ids=ids[:, :prefix], use_cache=True)
        for t in range(prefix, ids.shape[1] + 1):
            cache = getattr(out, key, None)
            if cache is None:
                return None
            steps.append([y.detach() for y in select(out)])
            if t < ids.shape[1]:
                out = model(input_ids=ids[:, t:t + 1], use_cache=True, **{key: cache})
    return steps


def has_kv_cache(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and bool(getattr(config, "use_cache", False)) and hasattr(model, "get_input_embeddings")


def cached_decoding(source: nn.Module, result: nn.Module, inputs: Any, *, float32: bool = False,
                    select: Callable[[Any], list[torch.Tensor]] = flat_outputs,
                    expand: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                    bound_dtype: torch.dtype | None = None) -> Measurement | None:
    """Compare token-by-token decoding with the KV cache (a prefix, then 3 tokens one at a time); None when the
    model has no cache or the inputs hold no token ids."""
    ids = _token_ids(inputs)
    if ids is None or not has_kv_cache(source):
        return None
    prefix = max(1, ids.shape[1] - 3)
    ya = _decode(source, ids, prefix, float32, select)
    if ya is None:
        return None
    name = f"token ids {tuple(ids.shape)}"
    yb = _decode(result, ids, prefix, float32, select)
    if yb is None:
        return Measurement(name, "cached decoding", math.inf, 0.0, 0.0, "?", len(ya), False,
                           "the result returns no cache")
    flat_a = [expand(i, y) if expand else y for step in ya for i, y in enumerate(step)]
    return measure(flat_a, [y for step in yb for y in step], name, "cached decoding", bound_dtype)


# -- the certificate -------------------------------------------------------------------------------------------------

# Modules with a fused inference fast path that a TorchFunctionMode (the trace, the path check) switches off: with
# padding masks the fast path returns zeros where the slow path returns values, so their reference must come from a
# plain run.
_FAST_PATH_MODULES = FAST_PATH_MODULES


@dataclass
class Reference:
    """The source's outputs on each probe per mode, computed once (eval-mode outputs often come from the trace)."""

    source: nn.Module
    probes: list[Probe]
    eval_outputs: list[list[torch.Tensor]] | None = None
    float32: bool = False  # run half-precision models in float32 (and hold them to the float32 bound)
    select: Callable[[Any], list[torch.Tensor]] = flat_outputs
    bound_dtype: torch.dtype | None = None  # one bound for every output instead of each output's own dtype's
    cache: dict[tuple[int, str], list[torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        plain = any(isinstance(m, _FAST_PATH_MODULES) for m in self.source.modules())
        if self.eval_outputs is not None and not plain:
            for i, out in enumerate(self.eval_outputs):
                self.cache[(i, "eval")] = out

    def precompute(self, modes: Sequence[str]) -> Reference:
        """Compute every output now (for a source about to change in place)."""
        for mode in modes:
            for i in range(len(self.probes)):
                self.outputs(i, mode)
        return self

    def outputs(self, i: int, mode: str) -> list[torch.Tensor]:
        if (i, mode) not in self.cache:
            self.cache[(i, mode)] = outputs_of(self.source, self.probes[i].inputs, mode == "train",
                                               float32=self.float32, select=self.select)
        return self.cache[(i, mode)]


def certify(reference: Reference, result: nn.Module, *, modes: Sequence[str] = MODES,
            claimed: Sequence[str] | None = None, expand: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
            note: str = "", cached: bool = True) -> Certificate:
    """Measure `result` against the source on every probe in every mode (and cached decoding where the model has a
    KV cache). `claimed`: the modes the operator promises exact (default: all measured); `expand` maps a source
    output to the result's layout where an output legitimately grows (a Hugging Face hidden state)."""
    results = []
    bound_dtype = reference.bound_dtype or (torch.float32 if reference.float32 and is_half(result) else None)
    for mode in modes:
        for i, probe in enumerate(reference.probes):
            ya = reference.outputs(i, mode)
            if expand is not None:
                ya = [expand(k, y) for k, y in enumerate(ya)]
            try:
                yb = outputs_of(result, probe.inputs, mode == "train", float32=reference.float32,
                                select=reference.select)
            except Exception as err:  # noqa: BLE001 - a result that cannot run this probe is not preserved
                results.append(Measurement(probe.name, mode, math.inf, 0.0, 0.0, "?", len(ya), False,
                                           f"the result fails on {probe.name}: {type(err).__name__}: "
                                           f"{str(err).splitlines()[0][:200] if str(err) else ''}"))
                continue
            results.append(measure(ya, yb, probe.describe(), mode, bound_dtype))
    decoded = cached_decoding(reference.source, result, reference.probes[0].inputs, float32=reference.float32,
                              select=reference.select, expand=expand, bound_dtype=bound_dtype) if cached else None
    if decoded is not None:
        results.append(decoded)
    claim = tuple(claimed) if claimed is not None else (*modes, "cached decoding")
    return Certificate(tuple(results), claim, note)


def check_preserved(a: nn.Module, b: nn.Module, example_inputs: Any, *, train: bool = False) -> Certificate:
    """Run `a` and `b` on `example_inputs` and return the largest output difference.

    Both models are left as they were (modes, buffers and parameters restored). `train=True` compares train-mode
    outputs (dropout off). NaN or Inf outputs never pass.

    Example:
        >>> import torch, netgraft
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> x = torch.randn(5, 3)
        >>> wide = netgraft.widen(m, 2.0, example_inputs=(x,))
        >>> netgraft.check_preserved(m, wide, (x,)).passed
        True
    """
    mode = "train" if train else "eval"
    probe = Probe("example_inputs", example_inputs)
    return Certificate((measure(outputs_of(a, example_inputs, train), outputs_of(b, example_inputs, train),
                                probe.describe(), mode),), (mode,))
