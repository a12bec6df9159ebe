"""Phi-3: LLaMA-like with a fused q|k|v projection and a fused gate|up projection."""

from .llama import FAMILY as LLAMA

FAMILY = LLAMA.variant(
    name="phi3",
    model_types=("phi3",),
    weights=LLAMA.with_weights(
        {"layers.{i}.self_attn.qkv_proj.weight": ("qkv", "~stream"),
         "layers.{i}.mlp.gate_up_proj.weight": ("gate_up", "~stream")},
        drop=tuple(k for k in LLAMA.weights if any(p in k for p in ("q_proj", "k_proj", "v_proj", "gate_proj",
                                                                    "up_proj")))),
    spaces={"qkv": ("cat", "heads", "kv", "kv"), "gate_up": ("cat", "ffn", "ffn")},
)
