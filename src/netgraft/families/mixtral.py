"""Mixtral: LLaMA's attention with a sparse mixture-of-experts feed-forward: a router (one row per expert) and
experts held fused, gate|up as (experts, 2 x ffn, stream) and down as (experts, stream, ffn). Every expert's FFN
grows by the same Net2Net map; the expert count stays (upcycling changes it).

On disk (the hub's layout, which transformers 5 writes and fuses again on load) the block keeps its old name
``block_sparse_moe`` and each expert is three Linears, w1 (gate), w3 (up) and w2 (down)."""

from .llama import FAMILY as LLAMA
from .schema import Depth, Stored

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
    stored=Stored(
        experts={"layers.{i}.mlp.experts.gate_up_proj": ("layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
                                                         "layers.{i}.block_sparse_moe.experts.{e}.w3.weight"),
                 "layers.{i}.mlp.experts.down_proj": ("layers.{i}.block_sparse_moe.experts.{e}.w2.weight",)},
        renamed={"layers.{i}.mlp.": "layers.{i}.block_sparse_moe."}),
    tiny=LLAMA.tiny | dict(num_local_experts=4, num_experts_per_tok=2),
)
