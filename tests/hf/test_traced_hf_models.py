"""Real Hugging Face classes built from configs (offline): what the core widens exactly, and what it refuses.

Attention heads and the hidden size of HF transformers (config-level growth) are the transformer issue's work; the
core must either widen exactly (the FFN) or refuse with a reason, never return a different model."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_exact, assert_unchanged, snapshot

import netgraft

transformers = pytest.importorskip("transformers")


def llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg)


def bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    return transformers.BertModel(cfg)


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def inputs(use_cache: bool = True) -> dict:
    torch.manual_seed(1)
    out: dict = {"input_ids": torch.randint(0, 100, (2, 7))}
    if use_cache:
        out["use_cache"] = False
    return out


@pytest.mark.parametrize(("build", "widths", "cache"), [
    (llama, {"model.layers.0.mlp.gate_proj": 96, "model.layers.1.mlp.up_proj": 128}, True),
    (bert, {"encoder.layer.0.intermediate.dense": 100}, False),
])
def test_hf_feed_forward_widens_exactly(build, widths, cache) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = inputs(cache)
    before = snapshot(model)
    wide = netgraft.widen(model, widths, example_inputs=x, seed=0, noise=0.1)
    assert type(wide) is type(model)
    assert_unchanged(model, before)
    assert_exact(model, wide, x)
    assert_exact(model, wide, x, train=True)
    for name, size in widths.items():
        assert wide.get_submodule(name).out_features == size


@pytest.mark.parametrize("build", [llama, gpt2])
def test_hf_models_fail_closed_where_the_core_cannot_map(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = inputs(build is not bert)
    before = snapshot(model)
    with pytest.raises(netgraft.UnsupportedModelError) as err:
        netgraft.widen(model, 2.0, example_inputs=x)
    assert "module '" in str(err.value) or "'transformer." in str(err.value) or "'model." in str(err.value)
    assert_unchanged(model, before)


def test_bert_attention_adds_heads_through_the_traced_path() -> None:
    """BertSelfAttention views into heads with `self.attention_head_size` (kept) and describes them with
    `num_attention_heads` and `all_head_size` (followed); the config is the family front end's business."""
    torch.manual_seed(0)
    model = bert().eval()
    x = inputs(False)
    wide = netgraft.widen(model, 2.0, example_inputs=x, seed=0)
    assert_exact(model, wide, x)
    assert_exact(model, wide, x, train=True)
    attn = wide.encoder.layer[1].attention.self
    assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (8, 8, 64)


def test_gpt2_conv1d_attribute_follows_its_weight() -> None:
    """Conv1D computes its output shape from `self.nf`: the trace sees the attribute used as a size and updates it."""
    torch.manual_seed(0)
    model = gpt2().eval()
    wide = netgraft.widen(model, {"transformer.h.0.mlp.c_fc": 192}, example_inputs=inputs(), seed=0)
    assert wide.transformer.h[0].mlp.c_fc.nf == 192
    assert_exact(model, wide, inputs())
