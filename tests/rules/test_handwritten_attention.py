"""Hand-written attention grows through the generic path (issue 14, item 7).

GPTs written the nanoGPT and minGPT way (`q.view(B, T, self.n_head, C // self.n_head)`, `split(self.n_embd)`,
`x[:, [-1], :]`, minGPT's `self.mlpf` lambda) and a LLaMA-style stack with grouped-query attention (`view(bsz,
seqlen, self.n_heads, self.head_dim)`, `repeat_kv` by expand + reshape, by `repeat_interleave` or by `repeat`), written
here for the test-suite. Each result is checked by the test itself, never by netgraft: outputs on fresh inputs (other
batch sizes and sequence lengths) in eval and train mode (dropout 0) within 1e-5 (1 + max|y|) in float32, greedy
decoding identical, the attributes the forward reads updated (n_head, n_embd, n_heads, n_kv_heads; head_dim and the
GQA group size n_rep kept), a gradient for every new unit, the source untouched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, snapshot
from torch import nn
from zoo import ChannelShuffle

import netgraft

# ----------------------------------------------------------------------------------------------------------------
# nanoGPT style


@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 40
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 16
    dropout: float = 0.0
    bias: bool = True
    flash: bool = False  # F.scaled_dot_product_attention instead of the masked softmax
    tie: bool = True  # lm_head shares the token embedding


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.flash = config.flash
        if not self.flash:  # causal mask: only attend to the left
            mask = torch.tril(torch.ones(config.block_size, config.block_size))
            self.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()  # batch, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.dropout if self.training else 0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # shape (t)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:  # inference: only the last position goes through lm_head (a list index on the time axis)
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss


# ----------------------------------------------------------------------------------------------------------------
# minGPT style


class NewGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class MinCausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        assert n_embd % n_head == 0
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(0.0)
        self.resid_dropout = nn.Dropout(0.0)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))
        self.n_head = n_head
        self.n_embd = n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MinBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = MinCausalSelfAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, 4 * n_embd), c_proj=nn.Linear(4 * n_embd, n_embd),
                                      act=NewGELU(), dropout=nn.Dropout(0.0)))
        m = self.mlp
        self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))  # MLP forward

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlpf(self.ln_2(x))


class MinGPT(nn.Module):
    def __init__(self, vocab_size: int = 40, block_size: int = 16, n_layer: int = 2, n_head: int = 3,
                 n_embd: int = 24) -> None:
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(0.0),
            h=nn.ModuleList([MinBlock(n_embd, n_head, block_size) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device).unsqueeze(0)  # shape (1, t)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


# ----------------------------------------------------------------------------------------------------------------
# LLaMA style: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, untied output


@dataclass
class LlamaArgs:
    dim: int = 32
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    vocab_size: int = 40
    multiple_of: int = 16
    norm_eps: float = 1e-5
    max_seq_len: int = 32
    kv_repeat: str = "expand"  # how keys/values reach the query heads: "expand", "interleave" or "tile"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        return self._norm(x.float()).type_as(x) * self.weight


def rope_tables(head_dim: int, end: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(end).float(), freqs)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_emb(xq, xk, cos, sin):
    cos, sin = cos[:, None, :], sin[:, None, :]  # (seqlen, 1, head_dim): broadcast over the heads
    return xq * cos + rotate_half(xq) * sin, xk * cos + rotate_half(xk) * sin


def repeat_kv(x, n_rep: int):
    """torch.repeat_interleave(x, dim=2, repeats=n_rep)"""
    bs, slen, n_kv_heads, head_dim = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv_heads, n_rep, head_dim).reshape(bs, slen, n_kv_heads * n_rep,
                                                                                      head_dim)


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.n_kv_heads = args.n_heads if args.n_kv_heads is None else args.n_kv_heads
        self.n_heads = args.n_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = args.dim // args.n_heads
        self.kv_repeat = args.kv_repeat
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, mask):
        bsz, seqlen, _ = x.shape
        xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)
        xq = xq.view(bsz, seqlen, self.n_heads, self.head_dim)
        xk = xk.view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xv = xv.view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, cos, sin)
        if self.kv_repeat == "interleave":
            keys = torch.repeat_interleave(xk, dim=2, repeats=self.n_rep)
            values = torch.repeat_interleave(xv, dim=2, repeats=self.n_rep)
        elif self.kv_repeat == "tile":  # query head h reads key/value head h % n_kv_heads
            keys, values = xk.repeat(1, 1, self.n_rep, 1), xv.repeat(1, 1, self.n_rep, 1)
        else:
            keys, values = repeat_kv(xk, self.n_rep), repeat_kv(xv, self.n_rep)  # (bs, seqlen, n_heads, head_dim)
        xq, keys, values = xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2)
        scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask  # (bs, n_heads, seqlen, seqlen)
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        output = torch.matmul(scores, values)  # (bs, n_heads, seqlen, head_dim)
        output = output.transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.wo(output)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, multiple_of: int) -> None:
        super().__init__()
        hidden_dim = int(2 * hidden_dim / 3)
        hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, 4 * args.dim, args.multiple_of)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, cos, sin, mask):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.params = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        cos, sin = rope_tables(args.dim // args.n_heads, args.max_seq_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens):
        _bsz, seqlen = tokens.shape
        h = self.tok_embeddings(tokens)
        cos, sin = self.cos[:seqlen], self.sin[:seqlen]
        mask = None
        if seqlen > 1:
            mask = torch.triu(torch.full((seqlen, seqlen), float("-inf"), device=tokens.device), diagonal=1)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.output(self.norm(h)).float()


# ----------------------------------------------------------------------------------------------------------------
# checks, made here


VOCAB = 40


def tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


EXAMPLE = (tokens(2, 8, 0),)
FRESH = [(tokens(3, 12, 1),), (tokens(1, 5, 2),), (tokens(4, 16, 3),)]  # other batch sizes and lengths


def trained_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights away from their init (norm gains and biases included), so that no unit is special."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.dim() == 1 else 0.0) * (p == 1).float())
    return model.eval()


def logits_of(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    return out[0] if isinstance(out, tuple) else out


def max_delta(source: nn.Module, result: nn.Module) -> float:
    """Worst max|delta| / bound over the fresh inputs, eval and train mode (dropout is 0); asserts each."""
    worst = 0.0
    for (idx,) in [EXAMPLE, *FRESH]:
        for train in (False, True):
            a, b = copy.deepcopy(source).train(train), copy.deepcopy(result).train(train)
            with torch.no_grad():
                ya, yb = logits_of(a, idx), logits_of(b, idx)
            assert ya.shape == yb.shape
            delta = (ya.double() - yb.double()).abs().max().item()
            bound = 1e-5 * (1.0 + ya.double().abs().max().item())
            assert delta <= bound, f"input {tuple(idx.shape)}, train={train}: max|delta| {delta:.3g} > {bound:.3g}"
            worst = max(worst, delta / bound)
    return worst


def greedy(model: nn.Module, idx: torch.Tensor, steps: int, block_size: int) -> torch.Tensor:
    for _ in range(steps):
        with torch.no_grad():
            logits = logits_of(model, idx[:, -block_size:])
        idx = torch.cat([idx, logits[:, -1, :].argmax(-1, keepdim=True)], dim=1)
    return idx


def new_units_without_gradient(source: nn.Module, result: nn.Module, loss_of) -> list[str]:
    """Every grown parameter: each new row/column gets a gradient (one backward in train mode), wherever every old
    row/column of the source gets one (an attention key bias never does: softmax ignores a shift shared by all keys).
    Alive: above 1e-6 x the parameter's largest gradient in the source, and above float round-off of the model."""
    grads = {}
    for name, m in (("source", source), ("result", result)):
        m = copy.deepcopy(m).train()
        loss_of(m).backward()
        grads[name] = {k: p.grad.detach().abs() for k, p in m.named_parameters() if p.grad is not None}
    src, res = grads["source"], grads["result"]
    floor = 1e-9 * max(float(g.max()) for g in src.values())
    dead = []
    for name, g in res.items():
        old = src.get(name)
        if old is None or old.shape == g.shape:
            continue
        thresh = max(1e-6 * float(old.max()), floor)
        for axis, (a, b) in enumerate(zip(old.shape, g.shape, strict=True)):
            other = [d for d in range(g.dim()) if d != axis]
            def per_unit(t: torch.Tensor, other=other) -> torch.Tensor:
                return t.amax(dim=other) if other else t
            if b > a and bool((per_unit(old) > thresh).all()):
                alive = per_unit(g.narrow(axis, a, b - a)) > thresh
                if not bool(alive.all()):
                    dead.append(f"{name} axis {axis}: new units {[a + int(i) for i in torch.nonzero(~alive)]}")
    return dead


def lm_loss(model: nn.Module) -> torch.Tensor:
    idx = tokens(3, 12, 7)
    targets = tokens(3, 12, 8)
    out = model(idx, targets) if not isinstance(model, Llama) else model(idx)
    if isinstance(out, tuple):
        return out[1]
    return F.cross_entropy(out.view(-1, out.size(-1)), targets.view(-1))


def grow_and_check(model: nn.Module, widths, block_size: int, **kw) -> tuple[nn.Module, float]:
    before = snapshot(model)
    wide = netgraft.widen(model, widths, example_inputs=EXAMPLE, seed=0, **kw)
    assert_unchanged(model, before)
    ratio = max_delta(model, wide)
    prompt = tokens(2, 3, 11)
    assert torch.equal(greedy(model, prompt, 8, block_size), greedy(wide, prompt, 8, block_size))
    assert not new_units_without_gradient(model, wide, lm_loss)
    return wide, ratio


# ----------------------------------------------------------------------------------------------------------------
# nanoGPT


def nanogpt(**kw) -> NanoGPT:
    torch.manual_seed(0)
    return trained_(NanoGPT(GPTConfig(**kw)))


@pytest.mark.parametrize("flash", [False, True], ids=["masked-softmax", "sdpa"])
@pytest.mark.parametrize("factor", [2, 3])
def test_nanogpt_stream_grows_and_heads_follow(flash: bool, factor: int) -> None:
    model = nanogpt(flash=flash, tie=False)
    wide, _ = grow_and_check(model, {"transformer.wte": 16 * factor}, 16)
    for block in wide.transformer.h:
        assert (block.attn.n_head, block.attn.n_embd) == (2 * factor, 16 * factor)  # head_dim 8 kept
        assert block.attn.c_attn.weight.shape == (48 * factor, 16 * factor)
    assert model.transformer.h[0].attn.n_head == 2 and model.transformer.h[0].attn.n_embd == 16


def test_nanogpt_tied_with_the_last_position_only() -> None:
    """The tied lm_head reads ln_f's output through x[:, [-1], :]: ln_f still absorbs the split."""
    model = nanogpt(tie=True)
    wide, _ = grow_and_check(model, {"transformer.wte": 32}, 16)
    assert wide.transformer.wte.weight is wide.lm_head.weight  # still tied
    assert [b.attn.n_head for b in wide.transformer.h] == [4, 4]


def test_nanogpt_by_factor_and_by_head_count() -> None:
    model = nanogpt(tie=False)
    wide, _ = grow_and_check(model, 2.0, 16, noise=0.5)
    assert [b.attn.n_head for b in wide.transformer.h] == [4, 4]
    assert [b.mlp.c_fc.out_features for b in wide.transformer.h] == [128, 128]
    # the head count has a name (module path:attribute); the stream (view(B, T, C)) follows it, and so do the
    # other layers' heads
    table = netgraft.groups(model, EXAMPLE)
    heads = table["transformer.h.0.attn:n_head"]
    assert heads.size == 2 and heads.display_size == 48  # 2 heads: c_attn's 48 rows (q, k, v x head_dim 8)
    wide, _ = grow_and_check(model, {"transformer.h.0.attn:n_head": 6}, 16)
    assert [(b.attn.n_head, b.attn.n_embd) for b in wide.transformer.h] == [(6, 48), (6, 48)]


def test_nanogpt_stream_needs_a_multiple_under_layernorm() -> None:
    with pytest.raises(netgraft.InvalidRequestError, match="uniform replication"):
        netgraft.widen(nanogpt(tie=False), {"transformer.wte": 24}, example_inputs=EXAMPLE)


# ----------------------------------------------------------------------------------------------------------------
# minGPT


def mingpt() -> MinGPT:
    torch.manual_seed(0)
    return trained_(MinGPT())


@pytest.mark.parametrize("factor", [2, 3])
def test_mingpt_stream_and_heads(factor: int) -> None:
    model = mingpt()
    wide, _ = grow_and_check(model, {"transformer.wte": 24 * factor}, 16)
    for block in wide.transformer.h:
        assert (block.attn.n_head, block.attn.n_embd) == (3 * factor, 24 * factor)
        assert block.mlpf(torch.zeros(1, 24 * factor)).shape == (1, 24 * factor)  # the lambda runs the copy's MLP
    wide, _ = grow_and_check(model, {"transformer.h.1.attn:n_head": 6, "transformer.h.0.mlp.c_fc": 100}, 16)
    assert [b.attn.n_head for b in wide.transformer.h] == [6, 6]
    assert wide.transformer.h[0].mlp.c_fc.out_features == 100


# ----------------------------------------------------------------------------------------------------------------
# LLaMA with grouped-query attention


def llama(kv_repeat: str = "expand") -> Llama:
    torch.manual_seed(0)
    return trained_(Llama(LlamaArgs(kv_repeat=kv_repeat)))


@pytest.mark.parametrize("kv_repeat", ["expand", "interleave", "tile"])
def test_llama_heads_grow_with_their_kv_heads(kv_repeat: str) -> None:
    model = llama(kv_repeat)
    wide, _ = grow_and_check(model, {"layers.0.attention:n_heads": 6, "layers.1.attention:n_kv_heads": 4}, 32)
    a0, a1 = wide.layers[0].attention, wide.layers[1].attention
    assert (a0.n_heads, a0.n_kv_heads, a0.n_rep, a0.head_dim) == (6, 3, 2, 8)  # group size and head_dim kept
    assert (a1.n_heads, a1.n_kv_heads, a1.n_rep, a1.head_dim) == (8, 4, 2, 8)
    assert a0.wq.weight.shape == (48, 32) and a0.wk.weight.shape == (24, 32) and a0.wo.weight.shape == (32, 48)
    assert wide.tok_embeddings.embedding_dim == 32  # the stream did not move


@pytest.mark.parametrize("factor", [2, 3])
def test_llama_stream_and_everything(factor: int) -> None:
    model = llama()
    wide, _ = grow_and_check(model, float(factor), 32, noise=0.3)
    assert wide.tok_embeddings.weight.shape == (VOCAB, 32 * factor)
    for layer in wide.layers:
        a = layer.attention
        assert (a.n_heads, a.n_kv_heads, a.n_rep, a.head_dim) == (4 * factor, 2 * factor, 2, 8)


def test_llama_rmsnorm_stream_needs_a_multiple() -> None:
    with pytest.raises(netgraft.InvalidRequestError, match="uniform replication"):
        netgraft.widen(llama(), {"tok_embeddings": 48}, example_inputs=EXAMPLE)


# ----------------------------------------------------------------------------------------------------------------
# what the trace cannot settle: refused with the candidates, then settled by the `heads=` hint


class GroupedScores(nn.Module):
    """GQA without repeat_kv: queries viewed as (kv heads, group, head_dim), scores by broadcasting in einsum. Both
    the kv-head count and the group size are attributes that size a query factor: which one is the head count?"""

    def __init__(self, d: int = 16, n_kv: int = 2, n_group: int = 2) -> None:
        super().__init__()
        self.n_kv, self.n_group, self.head_dim = n_kv, n_group, d // (n_kv * n_group)
        self.wq = nn.Linear(d, d)
        self.wk = nn.Linear(d, n_kv * self.head_dim)
        self.wv = nn.Linear(d, n_kv * self.head_dim)

    def forward(self, x):
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_kv, self.n_group, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim)
        att = torch.einsum("btgrd,bsgd->bgrts", q, k).softmax(-1)
        return torch.einsum("bgrts,bsgd->btgrd", att, v).reshape(B, T, C)


def test_ambiguous_head_count_is_refused_with_candidates_then_settled_by_the_hint() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), GroupedScores(), nn.Linear(16, 5)).eval()
    x = (torch.randn(2, 5, 6),)
    with pytest.raises(netgraft.UnsupportedModelError) as err:
        netgraft.widen(m, 2.0, example_inputs=x)
    msg = str(err.value)
    assert "'1'.n_kv = 2" in msg and "'1'.n_group = 2" in msg and "heads={'1': 'n_kv'}" in msg, msg
    for attr, want in (("n_kv", (4, 2)), ("n_group", (2, 4))):
        wide = netgraft.widen(m, {"0": 32}, example_inputs=x, heads={"1": attr}, seed=0)
        assert (wide[1].n_kv, wide[1].n_group, wide[1].head_dim) == (*want, 4)
        for xs in (x, (torch.randn(3, 7, 6),)):
            with torch.no_grad():
                ya, yb = m(*xs), wide(*xs)
            assert (ya - yb).abs().max() <= 1e-5 * (1 + ya.abs().max())
    with pytest.raises(netgraft.InvalidRequestError, match="not an int attribute"):
        netgraft.widen(m, 2.0, example_inputs=x, heads={"1": "wq"})
    with pytest.raises(netgraft.InvalidRequestError, match="sizes no factor"):
        netgraft.widen(m, 2.0, example_inputs=x, heads={"0": "in_features"})
    with pytest.raises(netgraft.UnknownNameError):
        netgraft.widen(m, 2.0, example_inputs=x, heads={"attn": "n_kv"})


def test_an_attribute_that_only_equals_a_factor_is_left_alone() -> None:
    """Attributes the forward used for a size are updated; one that merely equals a size is not: here `n_layer`
    equals the head count and `block_size` the width (which `n_embd`, used by split, already follows)."""
    torch.manual_seed(0)
    model = trained_(MinGPT(n_layer=3, n_head=3, n_embd=24, block_size=24))
    attn = model.transformer.h[0].attn
    attn.n_layer, attn.block_size = 3, 24
    wide = netgraft.widen(model, {"transformer.wte": 48}, example_inputs=EXAMPLE)
    attn = wide.transformer.h[0].attn
    assert (attn.n_head, attn.n_embd, attn.n_layer, attn.block_size) == (6, 48, 3, 24)
    max_delta(model, wide)


class DescribedAttention(nn.Module):
    """Views with `self.head_dim` only (heads inferred by -1); `num_heads` and `inner_dim` describe the module but
    the forward never reads them (BERT's num_attention_heads and all_head_size)."""

    def __init__(self, d: int = 16, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.inner_dim = num_heads, d // num_heads, d
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = (t.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).flatten(2))


def test_attributes_that_describe_the_heads_follow_them() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 16), DescribedAttention(), nn.Linear(16, 3)).eval()
    x = (torch.randn(2, 6, 5),)
    wide = netgraft.widen(m, {"1.qkv": 72}, example_inputs=x, seed=0)  # 2 -> 3 heads of 8
    assert (wide[1].num_heads, wide[1].head_dim, wide[1].inner_dim) == (3, 8, 24)
    for xs in (x, (torch.randn(3, 4, 5),)):
        with torch.no_grad():
            ya, yb = m(*xs), wide(*xs)
        assert (ya - yb).abs().max() <= 1e-5 * (1 + ya.abs().max())


# ----------------------------------------------------------------------------------------------------------------
# indexing with a list or a tensor blocks only the indexed axis


class LastToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))  # (B, T, 8)
        picked = h[:, [-1], :] + h[:, [0, 2], :].sum(1, keepdim=True) + h[..., [1]]  # list indices on T and on units
        return self.out(picked)


def test_list_indexing_blocks_only_the_indexed_axis() -> None:
    torch.manual_seed(0)
    m = LastToken().eval()
    x = (torch.randn(2, 5, 4),)
    wide = netgraft.widen(m, {"inp": 12}, example_inputs=x, seed=0)  # units read by [1] stay in place
    for xs in (x, (torch.randn(3, 9, 4),)):
        with torch.no_grad():
            ya, yb = m(*xs), wide(*xs)
        assert (ya - yb).abs().max() <= 1e-5 * (1 + ya.abs().max())
    m.forward = lambda x: m.out(torch.relu(m.inp(x))[..., [-1]].expand(-1, -1, 8))  # counted from the end: refused
    with pytest.raises(netgraft.UnsupportedModelError, match="counts from the end"):
        netgraft.widen(m, {"inp": 12}, example_inputs=x)


def test_channel_shuffle_grows_its_groups() -> None:
    """ShuffleNet's shuffle `x.view(b, self.groups, c // self.groups, h, w)`: the attribute-sized factor grows (the
    channels per group are kept) and `groups` follows."""

    torch.manual_seed(0)
    m = ChannelShuffle().eval()  # conv -> shuffle (2 groups) -> conv -> pool -> Linear
    x = (torch.randn(2, 3, 8, 8),)
    wide = netgraft.widen(m, 1.5, example_inputs=x, seed=0)
    assert wide.groups == 3 and wide.conv1.out_channels == 12
    for xs in (x, (torch.randn(3, 3, 6, 6),)):
        with torch.no_grad():
            ya, yb = m(*xs), wide(*xs)
        assert (ya - yb).abs().max() <= 1e-5 * (1 + ya.abs().max())
