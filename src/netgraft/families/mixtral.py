"""Mixtral: LLaMA's attention with a sparse mixture-of-experts feed-forward: a router (one row per expert) and
experts stored fused, gate|up as (experts, 2 x ffn, stream) and down as (experts, stream, ffn). Every expert's FFN
grows by the same Net2Net map; the expert count stays (upcycling changes it)."""

from .llama import FAMILY as LLAMA
from .schema import Depth

FAMILY = LLAMA.variant(
    name="mixtral",
    model_types=("mixtral",),
    weights=LLAMA.with_weights(
        {"layers.{i}.mlp.gate.weight": ("experts", "~stream"),
         "layers.{i}.mlp.experts.gate_up_proj": ("experts", "gate_up", "~stream"),
         "layers.{i}.mlp.experts.down_proj": ("experts", "stream", "~ffn")},
        drop=tuple(k for k in LLAMA.weights if ".mlp." in k)),
    spaces={"gate_up": ("cat", "ffn", "ffn")},
    depth=Depth(zero=("self_attn.o_proj.weight", "mlp.experts.down_proj")),
    tiny=LLAMA.tiny | dict(num_local_experts=4, num_experts_per_tok=2),
)
