"""Grow a checkpoint directory in bounded memory: `grow_checkpoint(src, out, ConfigSizes(...))`, the engine of the CLI.

Nothing holds a whole model. The output is planned from the grown config alone (a model built on the meta device
gives every tensor's name, shape and dtype), cut into shards at a byte limit and created with final headers
(`netgraft.io.shards`). Then the certificate drives the conversion, one module at a time:

1. the source model, a skeleton on the meta device, runs the probe inputs; before each module runs, its own
   tensors are read from the source checkpoint (`netgraft.io.reader.LazyCheckpoint`) and after it they are freed;
2. the grown model runs the same inputs; before each module runs, its tensors are *computed* from the source's by
   the family plan (`Widener` / `depth_sources`, the same code as the in-memory path), written into their shard at
   their offset, and freed after it. Tensors no module used are produced at the end.

So the source is read about twice and the result written once, with one module's weights (in float32 for the
forward) in memory at a time; peak memory does not grow with depth. The certificate measures the outputs of both
passes exactly as the in-memory certificate does (the same probes, the float32 bound, NaN never passes), in eval mode;
train mode and cached decoding, which would each need more passes over the checkpoint, are the in-memory path's.

Tensors are named as the model holds them, and read and written through the family's stored layout
(`netgraft.hf.stored`): experts the model holds fused are read from the hub's per-expert tensors (or from fused
ones, which transformers also loads) and written per expert again, so the output holds the keys `save_pretrained`
writes and `from_pretrained` of the same class loads it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.certify import Certificate, Measurement, measure
from ..core.probes import make_probes
from ..core.rng import resolve_seed
from ..errors import NotPreservedError
from ..families.schema import Family
from ..io.atomic import atomic_dir, check_paths
from ..io.checkpoint import check_tensors, load_config, model_class, side_files
from ..io.reader import LazyCheckpoint
from ..io.resources import check_disk, check_memory
from ..io.shards import Entry, ShardWriter, parse_size, plan_shards
from .depth import depth_config, depth_sources, depth_tensor
from .errors import HFError
from .front import HFReport, _Outputs, family_of, new_config
from .plan import REQUEST_FIELDS, Sizes, config_value, plan_sizes, plan_widen
from .request import DEPTH_FIELDS, WIDTH_FIELDS, ConfigSizes
from .stored import StoredLayout
from .tensors import Widener
from .upcycle import check_names, plan_upcycle, target_class, upcycle_changes


@dataclass
class Progress:
    """Bytes produced so far, with a rate and an ETA, for a progress bar (tqdm when installed) or a log line."""

    total: int
    callback: Callable[[int, int, float], None] | None = None  # (done, total, seconds since start)
    done: int = 0
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        if self.callback is not None:
            self.callback(self.done, self.total, time.perf_counter() - self.start)


# -- a model whose weights come and go ------------------------------------------------------------------------------

def _buffers_module(module: nn.Module, config: Any) -> nn.Module | None:
    """A real (CPU) instance of a module that owns non-persistent buffers (rotary frequencies, position ids), built
    again from the config: their values are computed at construction, which the meta skeleton could not do."""
    try:
        params = inspect.signature(type(module).__init__).parameters
    except (TypeError, ValueError):
        return None
    if "config" not in params:
        return None
    with torch.device("cpu"):
        return type(module)(config=config)


def skeleton(cls: type, config: Any) -> nn.Module:
    """`cls(config)` on the meta device (no memory, no init), with its non-persistent buffers computed for real."""
    with torch.device("meta"):
        model = cls(config)
    persistent = set(model.state_dict())
    for path, module in model.named_modules():
        names = [n for n in module._buffers if f"{path}.{n}".lstrip(".") not in persistent and
                 module._buffers[n] is not None]
        if not names:
            continue
        real = _buffers_module(module, config)
        if real is None:
            raise HFError(f"module '{path}' ({type(module).__name__}) computes buffers {names} at construction, and "
                          f"netgraft cannot rebuild it from the config to stream the certificate")
        for n in names:
            module._buffers[n] = real._buffers[n]
    return model.eval()


@contextlib.contextmanager
def lazy_weights(model: nn.Module, load: Callable[[str], torch.Tensor]) -> Iterator[None]:
    """While inside: before a module runs, its own parameters and persistent buffers are `load(name)`-ed (as float32,
    without gradient); after it, they go back to the meta device. Tied tensors load under their first name."""
    canonical = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        canonical.setdefault(id(t), name)
    persistent = set(model.state_dict())
    owners = []
    for path, module in model.named_modules():
        own = [(k, f"{path}.{k}".lstrip("."), "param") for k, p in module._parameters.items() if p is not None]
        own += [(k, f"{path}.{k}".lstrip("."), "buffer") for k, b in module._buffers.items()
                if b is not None and f"{path}.{k}".lstrip(".") in persistent]
        if own:
            owners.append((module, own))
    meta = {id(m): {k: (p.shape, p.dtype) for k, p in [*m._parameters.items(), *m._buffers.items()] if p is not None}
            for m, _ in owners}

    def pre(module: nn.Module, args: Any) -> None:
        for key, name, kind in dict(owners_by_id)[id(module)]:
            current = module._parameters[key] if kind == "param" else module._buffers[key]
            value = load(canonical.get(id(current), name))
            value = value.float() if value.is_floating_point() else value
            if kind == "param":
                module._parameters[key] = nn.Parameter(value, requires_grad=False)
            else:
                module._buffers[key] = value

    def post(module: nn.Module, args: Any, out: Any) -> None:
        for key, _, kind in dict(owners_by_id)[id(module)]:
            shape, dtype = meta[id(module)][key]
            empty = torch.empty(shape, dtype=dtype, device="meta")
            if kind == "param":
                module._parameters[key] = nn.Parameter(empty, requires_grad=False)
            else:
                module._buffers[key] = empty

    owners_by_id = [(id(m), own) for m, own in owners]
    handles = []
    for module, _ in owners:
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model: nn.Module, inputs: dict, load: Callable[[str], torch.Tensor], select: _Outputs) -> list[torch.Tensor]:
    with lazy_weights(model, load), torch.no_grad():
        return [y.detach().float() for y in select(model(**inputs, use_cache=False) if "input_ids" in inputs
                                                   else model(**inputs))]


# -- the engine ------------------------------------------------------------------------------------------------------

def _stored_layout(ckpt: LazyCheckpoint, model: nn.Module, family: Family) -> StoredLayout:
    """The source checkpoint's layout: each of the model's tensors (a tied output excepted: stored once, under the
    embedding's name) in the family's stored layout, or under its own name where the checkpoint has that."""
    tied_out = _tied_output(model)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items() if n != tied_out}
    return StoredLayout(family, shapes, present=ckpt.names())


def _strict_names(ckpt: LazyCheckpoint, model: nn.Module, cls: type, layout: StoredLayout) -> None:
    """Every stored tensor the model needs is in the checkpoint with its shape, and every one there is used."""
    expected = layout.stored_shapes()
    tied_out = _tied_output(model)
    names = {n: ckpt.shape(n) for n in ckpt.names() if n != tied_out}
    ignore = list(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or [])
    buffers = [n for n, _ in model.named_buffers()]  # legacy persistent buffers transformers skips, as it does
    ignore += [r"rotary_emb\.inv_freq"] * any(n.endswith("rotary_emb.inv_freq") for n in buffers)
    ignore += [r"(^|\.)position_ids$"] * any(n.endswith("position_ids") for n in buffers)
    check_tensors(names, expected, ignore, str(ckpt.directory), cls.__name__)


def _tied_output(model: nn.Module) -> str | None:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return None
    return next((f"{n}.weight" for n, m in model.named_modules() if m is out), None)


def _probe_batch(config: Any, family: Family) -> tuple[dict, list[tuple[str, slice]]]:
    """The probes (example, fresh, one more sample) concatenated into one batch - one pass over the checkpoint - and
    the rows of each."""
    g = torch.Generator().manual_seed(0)
    if family.inputs == "pixels":
        x = torch.randn(2, config.num_channels, config.image_size, config.image_size, generator=g)
        probes, key = make_probes({"pixel_values": x}), "pixel_values"
    else:
        length = min(12, config_value(config, ("max_position_embeddings", "n_positions"), 12))
        probes, key = make_probes({"input_ids": torch.randint(0, config.vocab_size, (2, length), generator=g)}), \
            "input_ids"
    rows, start, parts = [], 0, []
    for p in probes:
        t = p.inputs[key]
        rows.append((p.describe(), slice(start, start + t.shape[0])))
        start += t.shape[0]
        parts.append(t)
    return {key: torch.cat(parts)}, rows


@dataclass
class _Source:
    """An opened source checkpoint: its config, family and class, the lazy reader and the skeleton it fills."""

    path: Path
    config: Any
    family: Family
    cls: type
    ckpt: LazyCheckpoint
    model: nn.Module
    stored: StoredLayout

    @classmethod
    def open(cls, src: Path) -> _Source:
        config = load_config(src)
        family = family_of(config)
        model_cls = model_class(config)
        ckpt = LazyCheckpoint(src)
        model = skeleton(model_cls, config)
        stored = _stored_layout(ckpt, model, family)
        _strict_names(ckpt, model, model_cls, stored)
        return cls(src, config, family, model_cls, ckpt, model, stored)

    def read(self, name: str) -> torch.Tensor:
        """A tensor of the source model, read (and for fused experts assembled) from the source checkpoint."""
        return self.stored.read(name, self.ckpt.get)

    def dtype(self, name: str) -> torch.dtype:
        """The dtype the source stores model tensor `name` in."""
        return self.ckpt.dtype(self.stored.parts(name)[0].name)


@dataclass
class _Conversion:
    """One streamed conversion, for the engine (`_convert`): the result's class and config, how each of its tensors is
    made from the source's (`make(name, read)`), which source tensor's dtype it keeps, and how to report it."""

    operation: str
    cls: type
    config: Any
    make: Callable[[str, Callable[[str], torch.Tensor]], torch.Tensor]
    dtype_from: Callable[[str], str]
    changes: dict[str, tuple[Any, Any]]
    # called once memory and disk are known to suffice (a width plan's maps can be as large as the result's axes);
    # returns a width plan, through which the certificate maps the source's hidden states, or None
    prepare: Callable[[], Any] = lambda: None


def _convert(source: _Source, out: Path, conv: _Conversion, *, max_shard_size: int | str, force: bool, check: bool,
             progress: Callable[[int, int, float], None] | None) -> HFReport:
    """The engine every streamed operation runs (see the module docstring)."""
    result = skeleton(conv.cls, conv.config)
    tied_out = _tied_output(result)
    shapes = {n: tuple(t.shape) for n, t in result.state_dict().items() if n != tied_out}
    names = list(shapes)
    # the output in the hub's layout of its family: planned, cut into shards and indexed by stored names (a tensor
    # keeps the dtype its source is stored in)
    target = StoredLayout(family_of(conv.config), shapes)
    entries = [Entry(part.name, source.dtype(conv.dtype_from(n)), part.shape)
               for n in names for part in target.parts(n)]
    extras, skipped = side_files(source.path)
    check_disk(sum(e.nbytes for e in entries) + sum(t.stat().st_size for _, t in extras), out)
    # one module's weights at a time: the largest tensor, as read, as grown and as the float32 copies the forward
    # runs with, is the bound on memory (plus activations of a few probe sequences)
    largest = max(math.prod(shape) for shape in shapes.values())  # a fused tensor (one layer's experts) counts whole
    check_memory(largest * (2 + 4 + 4), "the largest layer of the result")
    plan = conv.prepare()
    shards = plan_shards(entries, parse_size(max_shard_size))
    track = Progress(sum(e.nbytes for e in entries), progress)
    inputs, rows = _probe_batch(source.config, source.family)
    select = _Outputs()
    with atomic_dir(out, force) as tmp:
        writer = ShardWriter(tmp, shards)
        produced: set[str] = set()

        def produce(name: str) -> torch.Tensor:
            """The result's tensor `name`, made from the source, written once (as its stored tensors), returned."""
            if name in produced:  # a tensor used by a second module (a tie): as written
                return target.read(name, writer.read)
            new = conv.make(name, source.read)
            for part_name, part in target.split(name, new):
                writer.write(part_name, part)
            produced.add(name)
            track.add(new.numel() * new.element_size())
            return new

        reference = _run(source.model, inputs, source.read, select)
        names_ref = list(select.names)
        got = _run(result, inputs, produce, select)
        for name in names:  # tensors no module ran with (an unused head): produced all the same
            if name not in produced:
                produce(name)
        writer.finish()
        source.ckpt.close()
        cert = _certificate(reference, got, rows, names_ref, plan, select)
        if check and not cert.passed:
            raise NotPreservedError(f"{conv.operation} of the {source.family.name} checkpoint did not preserve its "
                                    f"outputs: {cert}")
        conv.config.save_pretrained(tmp)
        generation = source.path / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, tmp / generation.name)
        for entry, side in extras:
            if not (tmp / entry.name).exists():
                shutil.copyfile(side, tmp / entry.name)
        (tmp / "netgraft.json").write_text(json.dumps({
            "operation": conv.operation, "source": str(source.path), "changes": conv.changes,
            "shards": len(shards), "certificate": {"max_abs": cert.max_abs, "bound": cert.bound, "passed": cert.passed,
                                                   "inputs": list(cert.inputs), "modes": list(cert.modes)},
            "not_copied": dict(skipped)}, indent=1) + "\n")
    return HFReport(source.family.name, conv.changes, cert, dict(skipped))


def grow_checkpoint(src: str | Path, out: str | Path, sizes: ConfigSizes, *, max_shard_size: int | str = "5GB",
                    seed: int | None = None, noise: float = 0.0, force: bool = False, check: bool = True,
                    progress: Callable[[int, int, float], None] | None = None) -> HFReport:
    """Grow the Hugging Face checkpoint in directory `src` into a sharded checkpoint in `out`, in bounded memory.

    `sizes` says what grows: widths (`hidden_size`, `intermediate_size`, heads...) or `num_hidden_layers`. The output
    is written into a temporary sibling of `out` and renamed into place at the end (`out` may not be, contain or lie
    inside `src`; an existing `out` is replaced only with `force`); side files (tokenizer...) travel along, never a
    pickle. The same family tables and apply kernel as `widen`/`deepen` on a loaded model: the tensors are the same
    bit for bit. Returns the report (config changes and a certificate measured while streaming, see the module
    docstring); raises NotPreservedError (nothing written) when `check` and the certificate fails.

    Example:
        >>> import tempfile, transformers, netgraft
        >>> from netgraft.hf.stream import grow_checkpoint
        >>> d = tempfile.mkdtemp()
        >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
        >>> transformers.LlamaForCausalLM(cfg).save_pretrained(f"{d}/small")
        >>> report = grow_checkpoint(f"{d}/small", f"{d}/deep", netgraft.ConfigSizes(num_hidden_layers=4))
        >>> report.changes, report.certificate.passed
        ({'num_hidden_layers': (2, 4)}, True)
    """
    src, out = Path(src), Path(out)
    request = sizes.given()
    depth = set(request) == set(DEPTH_FIELDS)
    if not request or (not depth and set(request) - set(WIDTH_FIELDS)):
        raise HFError(f"grow_checkpoint: {sizes} must give widths or num_hidden_layers (not both)")
    check_paths(src, out, force)
    source = _Source.open(src)
    config, family = source.config, source.family
    old = Sizes.of(config, family)
    if depth:
        now = copy.copy(old)
        now.layers = request["num_hidden_layers"]
        if now.layers <= old.layers:
            raise HFError(f"num_hidden_layers {now.layers} must exceed the current {old.layers}")
        if why := family.check_config(config, depth=True):
            raise HFError(why)
        grown_config = new_config(config, family, now)
        for key, value in depth_config(config, old.layers, now.layers).items():
            setattr(grown_config, key, value)
        sources = depth_sources(source.stored.names(), family, old.layers, now.layers)

        def make(name: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
            src_name, how = sources[name]
            return depth_tensor(read(src_name), how)

        def prepare() -> None:
            return None
    else:  # sizes first (checked, nothing allocated), the maps once memory and disk are known to suffice
        _, now, pad = plan_sizes(config, family, request)
        grown_config = new_config(config, family, now, old.hidden if pad else None)
        sources = {}
        widener: list[Widener] = []

        def prepare() -> Any:
            plan = plan_widen(config, family, request, resolve_seed(seed))
            plan.noise = noise
            widener.append(Widener(plan, _tied_output(source.model) is not None))
            return plan

        def make(name: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
            return widener[0](name, read(name))
    fields = {**REQUEST_FIELDS, "num_hidden_layers": "layers"}
    changes = {k: (getattr(old, f), getattr(now, f)) for k, f in fields.items()
               if getattr(old, f) is not None and getattr(old, f) != getattr(now, f)}
    conv = _Conversion("deepen" if depth else "widen", source.cls, grown_config, make,
                       lambda n: sources[n][0] if depth else n, changes, prepare)
    return _convert(source, out, conv, max_shard_size=max_shard_size, force=force, check=check, progress=progress)


def _certificate(reference: list[torch.Tensor], got: list[torch.Tensor], rows: list[tuple[str, slice]],
                 names: list[str], plan: Any, select: _Outputs) -> Certificate:
    expand = select.expander(plan.index_map("stream", plan.old.hidden)) if plan is not None else None
    measurements: list[Measurement] = []
    for label, rows_slice in rows:
        ya = [y[rows_slice] for y in reference]
        if expand is not None:
            select.names = names
            ya = [expand(i, y) for i, y in enumerate(ya)]
        yb = [y[rows_slice] for y in got]
        measurements.append(measure(ya, yb, label, "eval", torch.float32))
    return Certificate(tuple(measurements), ("eval",), "streamed: eval mode on every probe (train mode and cached "
                                                       "decoding are certified by the in-memory path)")


def upcycle_checkpoint(src: str | Path, out: str | Path, *, num_experts: int, top_k: int | None = None,
                       granularity: int = 1, layers: list[int] | None = None, split: str | None = None,
                       shared_expert: str = "zero", exact: bool = True, noise: float | None = None,
                       drop: float = 0.0, expert_noise: float = 0.0, config: dict[str, Any] | None = None,
                       seed: int | None = None, max_shard_size: int | str = "5GB", force: bool = False,
                       check: bool = True, progress: Callable[[int, int, float], None] | None = None) -> HFReport:
    """Upcycle the Hugging Face checkpoint in directory `src` into a mixture-of-experts checkpoint in `out`, in
    bounded memory: the streamed form of `netgraft.upcycle` (the same arguments, plan and tensors), written as
    `grow_checkpoint` writes (sharded, the hub's per-expert layout, atomic, side files along, never a pickle).

    Example:
        >>> import tempfile, transformers
        >>> from netgraft.hf.stream import upcycle_checkpoint
        >>> d = tempfile.mkdtemp()
        >>> cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        ...                                num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
        >>> transformers.LlamaForCausalLM(cfg).save_pretrained(f"{d}/dense")
        >>> report = upcycle_checkpoint(f"{d}/dense", f"{d}/moe", num_experts=4, top_k=2, seed=0)
        >>> report.changes["model_type"], report.certificate.passed
        (('llama', 'mixtral'), True)
    """
    src, out = Path(src), Path(out)
    check_paths(src, out, force)
    source = _Source.open(src)
    shapes = {n: tuple(t.shape) for n, t in source.model.state_dict().items()}

    def described(name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return shapes[name], source.dtype(name)

    plan = plan_upcycle(source.config, described, num_experts=num_experts, top_k=top_k, granularity=granularity,
                        layers=layers, split=split, exact=exact, shared_expert=shared_expert, seed=resolve_seed(seed),
                        noise=noise, drop=drop, expert_noise=expert_noise, overrides=config)
    cls = target_class(source.cls, plan.target)
    with torch.device("meta"):
        target = cls(plan.new_config)
    tied_out = _tied_output(target)
    check_names(plan, {n: s for n, s in shapes.items() if n != _tied_output(source.model)},
                {n: tuple(t.shape) for n, t in target.state_dict().items() if n != tied_out})
    changes = upcycle_changes(plan)
    conv = _Conversion("upcycle", cls, plan.new_config, plan.produce, plan.dtype_source, changes)
    return _convert(source, out, conv, max_shard_size=max_shard_size, force=force, check=check and plan.exact,
                    progress=progress)
