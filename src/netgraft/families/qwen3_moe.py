"""Qwen3-MoE: Qwen3's attention (an RMSNorm over each head's head_dim on queries and keys, q_norm and k_norm) with
Qwen2-MoE's routed experts (router, fused experts of moe_intermediate_size) and no shared expert; layers listed in
mlp_only_layers, or off the decoder_sparse_step, have a dense MLP of intermediate_size instead.

The router's top-k weights (renormalised when norm_topk_prob) read only the router's logits, which every growth keeps.
As in Qwen3, q_norm and k_norm share rms_norm_eps with the stream's norms, so the stream grows by whole multiples;
deepening shifts layer indices, so it needs every layer sparse. On disk the experts are stored as Qwen2-MoE's are
(one gate_proj, up_proj and down_proj per expert)."""

from .llama import FAMILY as LLAMA
from .qwen2_moe import FAMILY as QWEN2_MOE
from .qwen2_moe import PER_EXPERT_LINEARS
from .qwen3 import FAMILY as QWEN3
from .schema import ConfigKeys, Depth

FAMILY = QWEN3.variant(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    weights=QWEN3.with_weights({
        "layers.{i}.mlp.gate.weight": ("experts", "~stream"),
        "layers.{i}.mlp.experts.gate_up_proj": ("experts", "expert_gate_up", "~stream"),
        "layers.{i}.mlp.experts.down_proj": ("experts", "stream", "~expert_ffn"),
    }),
    spaces={"expert_gate_up": ("cat", "expert_ffn", "expert_ffn")},
    config=ConfigKeys(kv=("num_key_value_heads",), head_dim=("head_dim",), eps=("rms_norm_eps",),
                      expert_ffn=("moe_intermediate_size",)),
    depth=Depth(zero=(*LLAMA.depth.zero, "mlp.experts.down_proj")),
    stored=PER_EXPERT_LINEARS,
    depth_require=QWEN2_MOE.depth_require,
    tiny=QWEN3.tiny | dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, norm_topk_prob=True),
)
