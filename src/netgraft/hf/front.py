"""Hugging Face transformers (GPT-2, BERT, LLaMA-style): widen and deepen in config terms, exactly, into a plain model
of the same class (no wrapper modules, ties kept), so ``save_pretrained`` / ``from_pretrained`` just work.

Each family is a table: parameter name pattern -> what each axis of the tensor is (hidden stream "H", query heads "Q",
key/value heads "KV", fused q|k|v "QKV", feed-forward "F", or fixed) and whether the axis is written (rows: copied)
or read (columns: summed over, so split between the copies). The grown model is built from the new config (on the
meta device, no init cost) and filled with the mapped tensors; every tensor must be claimed by the table, so an
unknown layout raises instead of being guessed.

Exact rules (REFERENCE section 4): the hidden stream grows by integer uniform replication (LayerNorm/RMSNorm means
and variances unchanged) or, under RMSNorm, to any size by zero padding (gains x sqrt(d/D), epsilon x d/D); heads
are copied whole with head_dim fixed (rotary untouched) and, with grouped-query attention, kv-heads grow with them
(group size fixed); the FFN grows by Net2Net duplication (SwiGLU's gate and up together); a tied output layer keeps
its tie and the final norm absorbs the replication factor. Depth: pre-norm blocks (GPT-2, LLaMA) are copies of their
predecessor with the attention-out and FFN-down projections zeroed; a post-norm BERT layer is made an identity by
moving the previous layer's output LayerNorm affine into the new layer's last LayerNorm (the new layer's first
LayerNorm and the previous one become unit/zero affine: exact up to O(eps)).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.apply import _expand, noise_generator, split_noise_
from ..core.certify import Certificate, Reference
from ..core.certify import certify as certify_outputs
from ..core.probes import make_probes
from ..core.trace import owner_of
from ..errors import InvalidRequestError, NotPreservedError

W, R = "w", "r"  # an axis written (rows, vectors: copied) or read (columns: split between copies)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    rules: tuple[tuple[str, tuple[tuple[str, str] | None, ...]], ...]  # regex -> per-axis (space, role) or None
    final_norm: str  # prefix of the final norm (absorbs the factor when the output layer is tied)
    layers: str  # regex capturing the layer index
    hidden_keys: tuple[str, ...]  # config attribute names (primary first)
    ffn_keys: tuple[str, ...]
    head_keys: tuple[str, ...]
    kv_keys: tuple[str, ...]
    layer_keys: tuple[str, ...]
    pre_norm: bool
    zero_on_insert: tuple[str, ...]  # in an inserted pre-norm layer: these tensors are zeroed (output projections)
    conv1d: bool = False  # GPT-2's Conv1D stores (in, out)
    rms_norm: bool = False  # RMSNorm over the stream (any hidden size by zero padding) rather than LayerNorm
    eps_key: str = ""  # config attribute of the norms' epsilon


_H_W, _H_R = ("H", W), ("H", R)
GPT2 = Family(
    "gpt2", ("gpt2",),
    (
        (r"(transformer\.)?wte\.weight", (None, _H_W)),
        (r"(transformer\.)?wpe\.weight", (None, _H_W)),
        (r"(transformer\.)?h\.\d+\.ln_[12]\.(weight|bias)", (_H_W,)),
        (r"(transformer\.)?h\.\d+\.attn\.c_attn\.weight", (_H_R, ("QKV", W))),
        (r"(transformer\.)?h\.\d+\.attn\.c_attn\.bias", (("QKV", W),)),
        (r"(transformer\.)?h\.\d+\.attn\.c_proj\.weight", (("Q", R), _H_W)),
        (r"(transformer\.)?h\.\d+\.(attn|mlp)\.c_proj\.bias", (_H_W,)),
        (r"(transformer\.)?h\.\d+\.mlp\.c_fc\.weight", (_H_R, ("F", W))),
        (r"(transformer\.)?h\.\d+\.mlp\.c_fc\.bias", (("F", W),)),
        (r"(transformer\.)?h\.\d+\.mlp\.c_proj\.weight", (("F", R), _H_W)),
        (r"(transformer\.)?ln_f\.(weight|bias)", (_H_W,)),
        (r"lm_head\.weight", (None, _H_R)),
    ),
    "ln_f", r"(?:transformer\.)?h\.(\d+)\.", ("n_embd",), ("n_inner",), ("n_head",), (), ("n_layer",), True,
    ("attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"), conv1d=True,
)
BERT = Family(
    "bert", ("bert",),
    (
        (r"(bert\.)?embeddings\.(word|position|token_type)_embeddings\.weight", (None, _H_W)),
        (r"(bert\.)?embeddings\.LayerNorm\.(weight|bias)", (_H_W,)),
        (r"(bert\.)?encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.weight", (("Q", W), _H_R)),
        (r"(bert\.)?encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.bias", (("Q", W),)),
        (r"(bert\.)?encoder\.layer\.\d+\.attention\.output\.dense\.weight", (_H_W, ("Q", R))),
        (r"(bert\.)?encoder\.layer\.\d+\.(attention\.)?output\.(dense\.bias|LayerNorm\.(weight|bias))", (_H_W,)),
        (r"(bert\.)?encoder\.layer\.\d+\.intermediate\.dense\.weight", (("F", W), _H_R)),
        (r"(bert\.)?encoder\.layer\.\d+\.intermediate\.dense\.bias", (("F", W),)),
        (r"(bert\.)?encoder\.layer\.\d+\.output\.dense\.weight", (_H_W, ("F", R))),
        (r"(bert\.)?pooler\.dense\.weight", (_H_W, _H_R)),
        (r"(bert\.)?pooler\.dense\.bias", (_H_W,)),
    ),
    "", r"(?:bert\.)?encoder\.layer\.(\d+)\.", ("hidden_size",), ("intermediate_size",), ("num_attention_heads",),
    (), ("num_hidden_layers",), False, (),
)
LLAMA = Family(
    "llama", ("llama", "mistral", "qwen2"),
    (
        (r"(model\.)?embed_tokens\.weight", (None, _H_W)),
        (r"(model\.)?layers\.\d+\.self_attn\.q_proj\.weight", (("Q", W), _H_R)),
        (r"(model\.)?layers\.\d+\.self_attn\.q_proj\.bias", (("Q", W),)),
        (r"(model\.)?layers\.\d+\.self_attn\.[kv]_proj\.weight", (("KV", W), _H_R)),
        (r"(model\.)?layers\.\d+\.self_attn\.[kv]_proj\.bias", (("KV", W),)),
        (r"(model\.)?layers\.\d+\.self_attn\.o_proj\.weight", (_H_W, ("Q", R))),
        (r"(model\.)?layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)\.bias", (_H_W,)),
        (r"(model\.)?layers\.\d+\.mlp\.(gate|up)_proj\.weight", (("F", W), _H_R)),
        (r"(model\.)?layers\.\d+\.mlp\.(gate|up)_proj\.bias", (("F", W),)),
        (r"(model\.)?layers\.\d+\.mlp\.down_proj\.weight", (_H_W, ("F", R))),
        (r"(model\.)?layers\.\d+\.(input|post_attention)_layernorm\.weight", (_H_W,)),
        (r"(model\.)?norm\.weight", (_H_W,)),
        (r"lm_head\.weight", (None, _H_R)),
    ),
    "norm", r"(?:model\.)?layers\.(\d+)\.", ("hidden_size",), ("intermediate_size",), ("num_attention_heads",),
    ("num_key_value_heads",), ("num_hidden_layers",), True,
    ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias"),
    rms_norm=True, eps_key="rms_norm_eps",
)
FAMILIES = (GPT2, BERT, LLAMA)


class HFError(InvalidRequestError):
    """A Hugging Face model netgraft cannot grow as asked (unknown family, impossible size): names the reason."""


def family_of(model_or_config: Any) -> Family:
    config = getattr(model_or_config, "config", model_or_config)
    mt = getattr(config, "model_type", None)
    for fam in FAMILIES:
        if mt in fam.model_types:
            return fam
    raise HFError(f"unknown model family '{mt}': netgraft grows {', '.join(t for f in FAMILIES for t in f.model_types)}"
                  f" (add a Family table in netgraft/hf.py for another one)")


def is_hf_model(model: Any) -> bool:
    return hasattr(model, "config") and hasattr(model, "save_pretrained") and isinstance(model, nn.Module)


def _get(config: Any, keys: tuple[str, ...], default: Any = None) -> Any:
    for k in keys:
        v = getattr(config, k, None)
        if v is not None:
            return v
    return default


@dataclass
class Sizes:
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int

    @classmethod
    def of(cls, config: Any, fam: Family) -> Sizes:
        hidden = _get(config, fam.hidden_keys)
        heads = _get(config, fam.head_keys)
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        ffn = _get(config, fam.ffn_keys) or 4 * hidden  # GPT-2: n_inner None means 4 x n_embd
        return cls(hidden, ffn, heads, _get(config, fam.kv_keys, heads), head_dim, _get(config, fam.layer_keys))


@dataclass
class AxisMap:
    src: torch.Tensor  # new index -> old index
    frac: torch.Tensor  # share of src[j]'s fan-out that copy j carries (the copies of one unit sum to exactly 1)


def _power_of_two_shares(count: int) -> list[float]:
    """`count` powers of two summing to 1 (3 -> 1/2, 1/4, 1/4): multiplying by them is exact in any binary float
    format, bfloat16 included, so the copies of a column always add up to the original bit for bit. Closed form of
    "halve the largest share until there are `count`": with 2**k <= count < 2**(k+1), the first 2**(k+1) - count
    shares are 2**-k and the other 2 * (count - 2**k) are 2**-(k+1) (largest first; 0 or 1 copies -> [1.0])."""
    count = int(count)
    if count <= 1:
        return [1.0]
    k = count.bit_length() - 1
    return [math.ldexp(1.0, -k)] * (2 ** (k + 1) - count) + [math.ldexp(1.0, -k - 1)] * (2 * (count - 2 ** k))


def _with_shares(src: torch.Tensor, n: int) -> AxisMap:
    """The map new index -> old unit `src` with each copy's share: the r-th copy (in index order) of a unit with c
    copies gets entry r of `_power_of_two_shares(c)`. Vectorised, no Python loop over units or copies (one stable
    sort), so a 10-million-unit map takes about a second instead of growing quadratically."""
    flat = src.reshape(-1).long()
    counts = torch.bincount(flat, minlength=n)
    order = torch.argsort(flat, stable=True)  # the copies of each unit together, in index order
    first = torch.cumsum(counts, 0) - counts  # where each unit's copies start in that order
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel(), device=flat.device) - first[flat[order]]  # which copy of its unit
    c = counts[flat]
    k = torch.frexp(c.double())[1].long() - 1  # 2**k <= c < 2**(k+1) (exact: c < 2**53)
    powers = torch.tensor([math.ldexp(1.0, -i) for i in range(65)], dtype=torch.float64, device=flat.device)
    frac = torch.where(rank < (torch.ones_like(k) << (k + 1)) - c, powers[k], powers[k + 1])
    return AxisMap(src, frac.reshape(src.shape))


def _tile(n: int, new: int) -> AxisMap:
    return _with_shares(torch.arange(new) % n, n)


def _net2net(n: int, new: int, gen: np.random.Generator) -> AxisMap:
    return _with_shares(torch.from_numpy(np.concatenate([np.arange(n), gen.integers(0, n, new - n)])), n)


def _heads(m: AxisMap, head_dim: int) -> AxisMap:
    """A map over heads expanded to their head_dim features."""
    off = torch.arange(head_dim)
    return AxisMap((m.src[:, None] * head_dim + off).reshape(-1), m.frac.repeat_interleave(head_dim))


def _concat(parts: list[AxisMap], old_part: int) -> AxisMap:
    return AxisMap(torch.cat([p.src + i * old_part for i, p in enumerate(parts)]), torch.cat([p.frac for p in parts]))


@dataclass
class Plan:
    old: Sizes
    new: Sizes
    maps: dict[str, AxisMap] = field(default_factory=dict)
    pad: bool = False  # the stream grows by zero padding (RMSNorm models, any size) instead of replication
    seed: int | None = None
    noise: float = 0.0  # element-wise split noise on the read axes (exact symmetry breaking, see widen)


def plan_widen(config: Any, fam: Family, hidden_size: int | None, intermediate_size: int | None,
               num_attention_heads: int | None, num_key_value_heads: int | None, seed: int | None) -> Plan:
    old = Sizes.of(config, fam)
    hidden = hidden_size or old.hidden
    if hidden < old.hidden:
        raise HFError(f"hidden_size {hidden} is below the current {old.hidden}")
    pad = hidden % old.hidden != 0
    if pad and not fam.rms_norm:
        raise HFError(f"hidden_size {hidden}: a LayerNorm stream ({fam.name}) grows exactly by integer replication "
                      f"only (its mean and variance); valid sizes: {[old.hidden * k for k in range(1, 5)]}")
    k = 1 if pad else hidden // old.hidden
    # heads grow with the stream when they tile it (hidden = heads x head_dim, the usual layout), else stay
    heads = num_attention_heads or (old.heads * k if old.heads * old.head_dim == old.hidden else old.heads)
    if fam.name != "llama" and heads * old.head_dim != hidden:
        raise HFError(f"num_attention_heads {heads} with hidden_size {hidden} would change head_dim from "
                      f"{old.head_dim} to {hidden / heads:g} (the q.k scale cannot follow exactly); use "
                      f"num_attention_heads={hidden // old.head_dim}")
    if heads < old.heads:
        raise HFError(f"num_attention_heads {heads} is below the current {old.heads}")
    group = old.heads // old.kv_heads
    kv = num_key_value_heads or (heads // group if heads % group == 0 else None)
    if kv is None or kv * group != heads or kv < old.kv_heads:
        raise HFError(f"grouped-query attention: {old.heads} query heads share {old.kv_heads} key/value heads "
                      f"(groups of {group}); growing exactly keeps the group size, so num_key_value_heads must be "
                      f"num_attention_heads / {group} (got heads {heads}, kv heads {num_key_value_heads})")
    ffn = intermediate_size or old.ffn
    if ffn < old.ffn:
        raise HFError(f"intermediate_size {ffn} is below the current {old.ffn}")
    new = Sizes(hidden, ffn, heads, kv, old.head_dim, old.layers)
    gen = np.random.default_rng(seed)
    q = _heads(_tile(old.heads, heads), old.head_dim)
    stream = AxisMap(torch.arange(hidden) % old.hidden, torch.ones(hidden, dtype=torch.float64)) if pad else \
        _tile(old.hidden, hidden)  # padding: new features are overwritten below (zero rows, fresh columns)
    plan = Plan(old, new, {"H": stream, "F": _net2net(old.ffn, ffn, gen), "Q": q,
                           "KV": _heads(_tile(old.kv_heads, kv), old.head_dim)}, pad, seed)
    plan.maps["QKV"] = _concat([q, q, q], old.heads * old.head_dim)
    return plan


def new_config(config: Any, fam: Family, sizes: Sizes, pad_from: int | None = None) -> Any:
    """The config with the new sizes; with zero padding from `pad_from` features, the norms' epsilon scaled by
    pad_from / hidden (the mean square over the wider stream is that much smaller, epsilon follows it)."""
    cfg = copy.deepcopy(config)
    if pad_from is not None and fam.eps_key:
        setattr(cfg, fam.eps_key, getattr(config, fam.eps_key) * pad_from / sizes.hidden)
    for keys, value in ((fam.hidden_keys, sizes.hidden), (fam.ffn_keys, sizes.ffn), (fam.head_keys, sizes.heads),
                        (fam.kv_keys, sizes.kv_heads), (fam.layer_keys, sizes.layers)):
        for key in keys:
            setattr(cfg, key, value)
    if fam.name == "llama":
        cfg.head_dim = sizes.head_dim  # never derived again from hidden / heads
    return cfg


def _rule(fam: Family, name: str) -> tuple:
    for pattern, axes in fam.rules:
        if re.fullmatch(pattern, name):
            return axes
    raise HFError(f"parameter '{name}' of this {fam.name} model has no rule in netgraft's table (an unknown head or "
                  f"layer type); add one to netgraft/hf.py")


def _tied(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def _map_tensor(t: torch.Tensor, axes: tuple, plan: Plan, gen: torch.Generator, name: str) -> torch.Tensor:
    """Gather every mapped axis (copies) and scale the read axes by each copy's share, in one new allocation; with
    `plan.noise`, the copies' shares of each read weight differ element by element (still summing to one)."""

    if len(axes) != t.dim():
        raise HFError(f"tensor of shape {tuple(t.shape)} does not match its rule ({len(axes)} axes)")
    srcs, fracs = {}, {}
    for axis, spec in enumerate(axes):
        if spec is not None:
            m = plan.maps[spec[0]]
            srcs[axis] = m.src.to(t.device)
            if spec[1] == R:
                fracs[axis] = m.frac
    if not srcs:
        return t.clone()
    out = _expand(t, srcs, fracs)
    for axis in fracs if plan.noise else ():
        if not (plan.pad and axes[axis][0] == "H"):  # padded stream features are fresh columns, not copies
            split_noise_(out, axis, srcs[axis], fracs[axis], plan.noise, gen, name)
    return out


def _pad_stream_(new: torch.Tensor, old: torch.Tensor, axes: tuple, plan: Plan, name: str,
                 gen: torch.Generator) -> None:
    """Zero padding of an RMSNorm stream from d to D features. Writers put 0 in the new features (so the mean square
    is d/D of the old one, and epsilon is scaled by d/D in the config); the norms' gains are multiplied by
    sqrt(d/D), which cancels it exactly; readers get fresh random columns for the new features (they read zeros at
    growth, and gradients then reach the new features' writers)."""
    d, total = plan.old.hidden, plan.new.hidden
    for axis, spec in enumerate(axes):
        if spec is None or spec[0] != "H":
            continue
        fresh = new.narrow(axis, d, total - d)
        if spec[1] == R:
            std = float(old.float().std()) if old.numel() > 1 else 0.02
            fresh.copy_(torch.randn(fresh.shape, generator=gen).to(fresh.dtype) * std)
        elif new.dim() == 1 and re.search(r"norm\.weight$", name):  # a norm's gain
            new.narrow(0, 0, d).mul_(math.sqrt(d / total))
            fresh.fill_(float(new.narrow(0, 0, d).float().mean()))
        else:
            fresh.zero_()


def widen_state(model: nn.Module, fam: Family, plan: Plan) -> dict[str, torch.Tensor]:

    gen = torch.Generator().manual_seed(0 if plan.seed is None else plan.seed)
    split_gen = noise_generator(plan.seed)
    tied = _tied(model)
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if tied and name.endswith("lm_head.weight"):
            continue  # the tie is restored on the new model
        axes = _rule(fam, name)
        new = _map_tensor(t.detach(), axes, plan, split_gen, name)  # GPT-2's Conv1D rules list (in, out)
        if plan.pad:
            _pad_stream_(new, t, axes, plan, name, gen)
        if tied and re.fullmatch(rf"(\w+\.)?{fam.final_norm}\.(weight|bias)", name) and fam.final_norm:
            # the tied output layer sums the copies of each feature: the final norm gives each copy its share
            new.mul_(plan.maps["H"].frac.to(device=new.device, dtype=new.dtype))
        out[name] = new
    return out


def build_like(model: nn.Module, config: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """A model of the same class from `config`, on the meta device (no init), filled with `state`; non-persistent
    buffers (rotary inv_freq, position ids) are copied from `model` (their shapes do not depend on the sizes)."""
    with torch.device("meta"):
        new = type(model)(config)
    missing = set(new.state_dict()) - set(state)
    tied = _tied(new)
    if tied:
        missing = {n for n in missing if not n.endswith("lm_head.weight")}
    if missing:
        raise HFError(f"the grown model has tensors netgraft did not fill: {sorted(missing)[:5]}")
    new.load_state_dict(state, strict=False, assign=True)
    if tied:
        new.tie_weights()
    persistent = set(new.state_dict())
    old_buffers = dict(model.named_buffers())
    for name, buf in list(new.named_buffers()):
        if name in persistent:
            continue
        src = old_buffers.get(name)
        if src is None or src.shape != buf.shape:
            raise HFError(f"non-persistent buffer '{name}' cannot be carried over")
        module, attr = owner_of(new, name)
        module._buffers[attr] = src.clone()
    for name, p in new.named_parameters():
        if p.is_meta:
            raise HFError(f"parameter '{name}' was left on the meta device")
    new.train(model.training)
    return new


# ------------------------------------------------------------------------------------------------------- depth
def insertion_points(old_layers: int, new_layers: int) -> list[int]:
    """After which old layer each new layer goes, spread evenly: 6 -> 12 one after every layer, 4 -> 6 after layers 1
    and 3, 6 -> 18 two after every layer."""
    extra = new_layers - old_layers
    return [-(-(i + 1) * old_layers // extra) - 1 for i in range(extra)]


def deepen_state(model: nn.Module, fam: Family, new_layers: int) -> dict[str, torch.Tensor]:
    old = Sizes.of(model.config, fam).layers
    if new_layers <= old:
        raise HFError(f"num_hidden_layers {new_layers} must exceed the current {old}")
    after = insertion_points(old, new_layers)
    layer_re = re.compile(fam.layers)
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        m = layer_re.match(name)
        if m:
            per_layer.setdefault(int(m.group(1)), {})[name[m.end():]] = t.detach()
        else:
            rest[name] = t.detach()
    sample = next(n for n in model.state_dict() if layer_re.match(n))
    prefix = sample[: layer_re.match(sample).start(1)]
    out = dict(rest)
    j = 0
    for i in range(old):
        layer = dict(per_layer[i])
        inserts = after.count(i)
        if not fam.pre_norm and inserts:
            carried = (layer["output.LayerNorm.weight"], layer["output.LayerNorm.bias"])
            layer["output.LayerNorm.weight"] = torch.ones_like(carried[0])
            layer["output.LayerNorm.bias"] = torch.zeros_like(carried[1])
        for k, v in layer.items():
            out[f"{prefix}{j}.{k}"] = v.clone()
        j += 1
        for n in range(inserts):
            new = {k: v.clone() for k, v in per_layer[i].items()}
            if fam.pre_norm:
                for k in fam.zero_on_insert:
                    if k in new:
                        new[k].zero_()
            else:  # post-norm BERT: zero both residual branches, unit first LayerNorm, carry the affine last
                for k in ("attention.output.dense.weight", "attention.output.dense.bias", "output.dense.weight",
                          "output.dense.bias"):
                    new[k].zero_()
                new["attention.output.LayerNorm.weight"].fill_(1.0)
                new["attention.output.LayerNorm.bias"].zero_()
                last = n == inserts - 1
                new["output.LayerNorm.weight"] = carried[0].clone() if last else torch.ones_like(carried[0])
                new["output.LayerNorm.bias"] = carried[1].clone() if last else torch.zeros_like(carried[1])
            for k, v in new.items():
                out[f"{prefix}{j}.{k}"] = v
            j += 1
    return out


# ------------------------------------------------------------------------------------------------ certificates
def probe_inputs(model: nn.Module, batch: int = 2, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    config = model.config
    vocab = config.vocab_size
    positions = _get(config, ("max_position_embeddings", "n_positions"), length)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, min(length, positions)), generator=g)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device)}


class _Outputs:
    """The outputs a Hugging Face model is certified on (logits, last hidden state, pooled output; the cache and
    attentions count through what they produce), remembering their names so that hidden states can be mapped."""

    NAMES = ("logits", "last_hidden_state", "pooler_output")

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, out: Any) -> list[torch.Tensor]:
        self.names = [n for n in self.NAMES if getattr(out, n, None) is not None]
        return [getattr(out, n) for n in self.names]

    def expander(self, hidden_map: AxisMap | None) -> Any:
        """Map a source output to the grown layout where it is a hidden state: replicated by the stream's map (-1 in
        the map: a padded feature, which must be 0); logits never grow."""
        if hidden_map is None:
            return None

        def expand(index: int, y: torch.Tensor) -> torch.Tensor:
            if self.names[index] == "logits":
                return y
            src = hidden_map.src.to(y.device)
            padded = torch.cat([y, torch.zeros_like(y[..., :1])], -1)
            return padded.index_select(-1, torch.where(src < 0, y.shape[-1], src))
        return expand


def certify(old: nn.Module, new: nn.Module, inputs: dict[str, torch.Tensor], hidden_map: AxisMap | None) -> Certificate:
    """The shared certificate (`netgraft.certify`) on the example ids, fresh ids and one more sequence, in eval and
    train mode (dropout off) and with cached decoding where the model has a KV cache. Half-precision models are run
    in float32 without a float32 copy; every Hugging Face model is held to the float32 bound, because its norms
    compute their statistics in float32 even in a float64 model (LlamaRMSNorm upcasts to float32 only)."""
    outputs = _Outputs()
    reference = Reference(old, make_probes(inputs), float32=True, select=outputs, bound_dtype=torch.float32)
    return certify_outputs(reference, new, expand=outputs.expander(hidden_map))


def describe(model_or_config: Any) -> dict[str, Any]:
    """Family, sizes and what netgraft can do exactly for this model (used by ``netgraft inspect``)."""
    config = getattr(model_or_config, "config", model_or_config)
    fam = family_of(config)
    s = Sizes.of(config, fam)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return {
        "family": fam.name, "model_type": config.model_type, "architectures": getattr(config, "architectures", None),
        "hidden_size": s.hidden, "intermediate_size": s.ffn, "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim, "num_hidden_layers": s.layers,
        "tied_embeddings": tied,
        "exact": {
            "hidden_size": f"integer multiples of {s.hidden} (uniform replication; heads grow with it, head_dim "
                           f"{s.head_dim} fixed)",
            "intermediate_size": f"any size >= {s.ffn} (Net2Net duplication)",
            "num_attention_heads": ("any multiple of the kv group size (head_dim fixed)" if fam.name == "llama"
                                    and getattr(config, "head_dim", None) else "follows hidden_size (head_dim fixed)"),
            "num_hidden_layers": (f"any number > {s.layers} (pre-norm blocks with zeroed output projections)"
                                  if fam.pre_norm else f"any number > {s.layers} (post-norm identity layers: "
                                  "LayerNorm affine moved, residual branches zeroed; exact up to O(eps))"),
            "head_dim": "never (the q.k scale and rotary embeddings cannot follow exactly)",
        },
    }


# ------------------------------------------------------------------------------------------------- public entry
@dataclass
class HFReport:
    """What a Hugging Face growth did: config changes and the certificate (logits / hidden states on probe ids)."""

    family: str
    changes: dict[str, tuple[int, int]]
    certificate: Certificate

    def __str__(self) -> str:
        lines = [f"{self.family}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items())]
        return "\n".join([*lines, f"certificate: {self.certificate}"])


def _finish(model: nn.Module, new: nn.Module, fam: Family, old: Sizes, now: Sizes, probe: Any,
            hidden_map: AxisMap | None, check: bool) -> nn.Module:

    inputs = probe if probe is not None else probe_inputs(model)
    cert = certify(model, new, inputs, hidden_map)
    names = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
    pairs = zip(names, (old.hidden, old.ffn, old.heads, old.kv_heads, old.layers),
                (now.hidden, now.ffn, now.heads, now.kv_heads, now.layers), strict=True)
    shown = {n: (a, b) for n, a, b in pairs if a != b and (fam.kv_keys or n != "num_key_value_heads")}
    report = HFReport(fam.name, shown, cert)
    new.netgraft_report = report
    new.netgraft_certificate = cert
    if check and not cert.passed:
        raise NotPreservedError(f"growing the {fam.name} model did not preserve its outputs: {cert}")
    return new


def widen_hf(model: nn.Module, *, hidden_size: int | None = None, intermediate_size: int | None = None,
             num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
             seed: int | None = None, noise: float = 0.0, probe_inputs: Any = None, check: bool = True) -> nn.Module:
    """The `widen` path for Hugging Face models (sizes in config terms); see `netgraft.widen`."""
    fam = family_of(model)
    plan = plan_widen(model.config, fam, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
                      seed)
    plan.noise = noise
    config = new_config(model.config, fam, plan.new, plan.old.hidden if plan.pad else None)
    new = build_like(model, config, widen_state(model, fam, plan))
    hidden_map = plan.maps["H"] if plan.new.hidden > plan.old.hidden else None
    if plan.pad:  # the old features, then zeros: compare against the old output padded with zeros
        hidden_map = AxisMap(torch.cat([torch.arange(plan.old.hidden),
                                        torch.full((plan.new.hidden - plan.old.hidden,), -1)]), hidden_map.frac)
    return _finish(model, new, fam, plan.old, plan.new, probe_inputs, hidden_map, check)


# Config fields holding one value per layer: an inserted layer is a copy of the layer before it, so it takes that
# layer's value. Any other list as long as the layer count is refused (its meaning for new layers is unknown).
PER_LAYER_FIELDS = ("layer_types",)
# Config switches under which a layer's computation depends on its position: inserting layers would change what
# the existing layers compute.
DEPTH_DEPENDENT = {"scale_attn_by_inverse_layer_idx": "GPT-2 scales each layer's attention by 1 / (layer index + 1)"}


def depth_config(config: Any, old_layers: int, new_layers: int) -> dict[str, list]:
    """The per-layer config fields extended for the inserted layers, or HFError naming a field that follows depth in
    a way netgraft cannot extend."""
    for key, why in DEPTH_DEPENDENT.items():
        if getattr(config, key, False):
            raise HFError(f"config.{key}=True: {why}, so inserted layers would change the existing layers' outputs; "
                          f"netgraft cannot deepen this model exactly")
    after = insertion_points(old_layers, new_layers)
    extended = {}
    for key, value in vars(config).items():
        if not isinstance(value, (list, tuple)) or len(value) != old_layers or key.startswith("_"):
            continue
        if key not in PER_LAYER_FIELDS:
            raise HFError(f"config.{key} holds {old_layers} entries, one per layer, and netgraft does not know what a "
                          f"new layer's entry should be; deepening is refused rather than guessed (known per-layer "
                          f"fields: {', '.join(PER_LAYER_FIELDS)})")
        extended[key] = [v for i, v in enumerate(value) for _ in range(1 + after.count(i))]
    return extended


def deepen_hf(model: nn.Module, *, num_hidden_layers: int, probe_inputs: Any = None, check: bool = True) -> nn.Module:
    """The `deepen` path for Hugging Face models; see `netgraft.deepen`."""
    fam = family_of(model)
    old = Sizes.of(model.config, fam)
    now = copy.copy(old)
    now.layers = int(num_hidden_layers)
    if now.layers <= old.layers:
        raise HFError(f"num_hidden_layers {now.layers} must exceed the current {old.layers}")
    config = new_config(model.config, fam, now)
    for key, value in depth_config(model.config, old.layers, now.layers).items():
        setattr(config, key, value)
    new = build_like(model, config, deepen_state(model, fam, now.layers))
    return _finish(model, new, fam, old, now, probe_inputs, None, check)
