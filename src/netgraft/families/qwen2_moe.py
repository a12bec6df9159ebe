"""Qwen2-MoE: Qwen2's attention with a mixture of experts (router, fused routed experts of moe_intermediate_size)
plus a shared expert (shared_expert_intermediate_size) gated by sigmoid(shared_expert_gate . x); layers listed in
mlp_only_layers have a dense MLP instead. Deepening shifts layer indices, so it needs every layer sparse.

On disk (the hub's layout, which transformers 5 writes and fuses again on load) each routed expert is three Linears,
gate_proj, up_proj and down_proj; the router and the shared expert keep their names."""

from .llama import FAMILY as LLAMA
from .schema import ConfigKeys, Depth, Stored

# Qwen3-MoE (and the other families transformers maps to qwen2_moe's conversion) store their experts the same way.
PER_EXPERT_LINEARS = Stored(experts={
    "layers.{i}.mlp.experts.gate_up_proj": ("layers.{i}.mlp.experts.{e}.gate_proj.weight",
                                            "layers.{i}.mlp.experts.{e}.up_proj.weight"),
    "layers.{i}.mlp.experts.down_proj": ("layers.{i}.mlp.experts.{e}.down_proj.weight",),
})

FAMILY = LLAMA.variant(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    weights=LLAMA.with_weights({
        "layers.{i}.mlp.gate.weight": ("experts", "~stream"),
        "layers.{i}.mlp.experts.gate_up_proj": ("experts", "expert_gate_up", "~stream"),
        "layers.{i}.mlp.experts.down_proj": ("experts", "stream", "~expert_ffn"),
        "layers.{i}.mlp.shared_expert.gate_proj.weight": ("shared_ffn", "~stream"),
        "layers.{i}.mlp.shared_expert.up_proj.weight": ("shared_ffn", "~stream"),
        "layers.{i}.mlp.shared_expert.down_proj.weight": ("stream", "~shared_ffn"),
        "layers.{i}.mlp.shared_expert_gate.weight": ("one", "~stream"),
    }),
    spaces={"expert_gate_up": ("cat", "expert_ffn", "expert_ffn")},
    config=ConfigKeys(kv=("num_key_value_heads",), eps=("rms_norm_eps",), expert_ffn=("moe_intermediate_size",),
                      shared_ffn=("shared_expert_intermediate_size",)),
    depth=Depth(zero=(*LLAMA.depth.zero, "mlp.experts.down_proj",
                      "mlp.shared_expert.down_proj.weight")),
    stored=PER_EXPERT_LINEARS,
    depth_require={"mlp_only_layers": ([], "it lists layer indices, which inserted layers would shift"),
                   "decoder_sparse_step": (1, "which layers are sparse depends on their index")},
    tiny=LLAMA.tiny | dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                           shared_expert_intermediate_size=40),
)
