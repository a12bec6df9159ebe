"""netgraft's own mixture-of-experts module: what `upcycle` puts in place of any position-wise feed-forward module of
a model that is not a Hugging Face family (the same routing as Mixtral and Qwen-MoE with `norm_topk_prob`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import InvalidRequestError


class MoE(nn.Module):
    """Top-k mixture of experts over the last axis: ``y = sum_{i in top-k} w_i expert_i(x)``, where the router's
    softmax probabilities of the selected experts are renormalised to sum to one (w_i = p_i / sum_S p_j), computed in
    float32 as transformers' MoE layers do. Every expert maps (tokens, hidden) to (tokens, out); tokens are routed
    independently, so the experts must be position-wise (an MLP), which the certificate checks.

    Example:
        >>> import torch, netgraft
        >>> ffn = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
        >>> moe = netgraft.MoE(torch.nn.Linear(4, 2, bias=False), [ffn, ffn], top_k=2)
        >>> x = torch.randn(3, 5, 4)
        >>> bool(torch.allclose(moe(x), ffn(x), atol=1e-6))  # two identical experts, weights summing to one
        True
    """

    def __init__(self, router: nn.Linear, experts: Sequence[nn.Module], top_k: int):
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise InvalidRequestError(f"MoE: top_k must be in 1..{len(experts)} (the number of experts), got {top_k}")
        if router.out_features != len(experts):
            raise InvalidRequestError(f"MoE: the router has {router.out_features} outputs for {len(experts)} experts")
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.top_k = int(top_k)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, hidden) -> the selected experts (tokens, k) and their renormalised float32 weights (tokens, k)."""
        probs = torch.softmax(self.router(x).float(), dim=-1)  # (tokens, E)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # (tokens, k)
        return chosen, weights / weights.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, hidden = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, hidden)  # (tokens, hidden)
        chosen, weights = self.route(flat)
        out: torch.Tensor | None = None
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # the tokens routed to e, and where e sits in their top-k
            if token.numel() == 0:
                continue
            y = expert(flat[token])  # (n, out)
            if out is None:
                out = flat.new_zeros(flat.shape[0], y.shape[-1], dtype=y.dtype)
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        if out is None:  # no tokens at all
            out = self.experts[0](flat)
        return out.reshape(*lead, out.shape[-1])

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"
