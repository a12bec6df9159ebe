"""grow_checkpoint on mixture-of-experts checkpoints as transformers 5 saves them: experts fused in memory, one
tensor per expert and projection on disk (Mixtral's block as block_sparse_moe). Read and written through the family's
stored layout (`netgraft.hf.stored`), the output is what `save_pretrained` of the in-memory result writes, tensor for
tensor."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import netgraft
from netgraft.errors import CheckpointError
from netgraft.families import FAMILIES
from netgraft.hf.stored import StoredLayout
from netgraft.hf.stream import grow_checkpoint
from netgraft.io.reader import LazyCheckpoint
from netgraft.io.shards import INDEX

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASSES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
# One stored tensor per expert, as the hub names them: the expert a missing-tensor test removes.
EXPERT_TENSOR = {"mixtral": "model.layers.1.block_sparse_moe.experts.2.w3.weight",
                 "qwen2_moe": "model.layers.1.mlp.experts.2.up_proj.weight",
                 "qwen3_moe": "model.layers.1.mlp.experts.2.up_proj.weight"}
# Sizes grow by 8 units: the fused experts run torch's grouped matmul, which wants 16-byte-aligned strides.
CASES = {
    "deepen": {"num_hidden_layers": 4},
    "widen experts": {"mixtral": {"intermediate_size": 56},  # Mixtral's experts are intermediate_size wide
                      "qwen2_moe": {"moe_intermediate_size": 32, "shared_expert_intermediate_size": 48},
                      "qwen3_moe": {"moe_intermediate_size": 32}},
    "widen hidden x2": {"hidden_size": 64},
}


def _moe(model_type: str) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(model_type, **FAMILIES[model_type].tiny)
    config.architectures = [CLASSES[model_type]]
    torch.manual_seed(0)
    model = getattr(transformers, CLASSES[model_type])(config)
    with torch.no_grad():  # trained-looking norms, not the init's ones
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _sizes(model_type: str, case: str) -> netgraft.ConfigSizes:
    given = CASES[case]
    return netgraft.ConfigSizes(**given.get(model_type, given))


def _in_memory(model: torch.nn.Module, sizes: netgraft.ConfigSizes) -> torch.nn.Module:
    return netgraft.deepen(model, sizes) if sizes.num_hidden_layers else netgraft.widen(model, sizes, seed=3)


def _stored(directory) -> dict[str, torch.Tensor]:
    ckpt = LazyCheckpoint(directory)
    return {n: ckpt.get(n) for n in ckpt.names()}


def _logits_delta(a: torch.nn.Module, b: torch.nn.Module) -> float:
    ids = torch.randint(1, 64, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return float((a(input_ids=ids).logits.float() - b(input_ids=ids).logits.float()).abs().max())


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_a_hub_moe_checkpoint_grows_into_what_save_pretrained_writes(model_type: str, case: str, tmp_path) -> None:
    model = _moe(model_type)
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")  # per-expert tensors across several shards
    source = LazyCheckpoint(tmp_path / "src")
    assert EXPERT_TENSOR[model_type] in source.names() and len(source.headers) > 1
    sizes = _sizes(model_type, case)
    report = grow_checkpoint(tmp_path / "src", tmp_path / "out", sizes, max_shard_size="30KB", seed=3)
    out = tmp_path / "out"
    index = json.loads((out / INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] == LazyCheckpoint(out).nbytes()
    in_memory = _in_memory(model, sizes)
    in_memory.save_pretrained(tmp_path / "saved")
    written, saved = _stored(out), _stored(tmp_path / "saved")
    assert sorted(written) == sorted(saved) == sorted(index["weight_map"])  # the hub's keys, none fused
    assert not any(n.endswith(("gate_up_proj", "experts.down_proj")) for n in written)
    for name, t in saved.items():  # the same family plan and kernel: every stored tensor the same, bit for bit
        assert written[name].dtype == t.dtype and torch.equal(written[name], t), name
    grown = type(model).from_pretrained(out).eval()
    unsaved = {"transformers_version": None, "_name_or_path": None}
    assert grown.config.to_dict() | unsaved == in_memory.config.to_dict() | unsaved
    for name, t in in_memory.state_dict().items():
        assert torch.equal(t, grown.state_dict()[name]), name
    assert _logits_delta(grown, in_memory) == 0.0
    assert _logits_delta(grown, model) <= 1e-5 and report.certificate.passed


@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_bfloat16_experts_stay_bfloat16_and_exact(model_type: str, tmp_path) -> None:
    _moe(model_type).save_pretrained(tmp_path / "float32")
    # loaded as a user loads it: `.to(bfloat16)` would also round the rotary frequencies, which loading keeps float32
    model = getattr(transformers, CLASSES[model_type]).from_pretrained(tmp_path / "float32", dtype=torch.bfloat16)
    model.eval().save_pretrained(tmp_path / "src")
    sizes = netgraft.ConfigSizes(hidden_size=64)
    report = grow_checkpoint(tmp_path / "src", tmp_path / "out", sizes, max_shard_size="30KB", seed=3)
    written = _stored(tmp_path / "out")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    in_memory = _in_memory(model, sizes)
    grown = type(model).from_pretrained(tmp_path / "out", dtype=torch.bfloat16).eval()
    assert all(torch.equal(t, grown.state_dict()[n]) for n, t in in_memory.state_dict().items())
    assert _logits_delta(grown, in_memory) == 0.0 and report.certificate.passed


@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_a_checkpoint_with_fused_experts_reads_too(model_type: str, tmp_path) -> None:
    """Experts stored under the model's own fused names (transformers 5 loads those as they are) grow the same."""
    model = _moe(model_type)
    src = tmp_path / "src"
    model.config.save_pretrained(src)
    save_file({n: t.contiguous() for n, t in model.state_dict().items()}, src / "model.safetensors",
              metadata={"format": "pt"})
    assert "model.layers.0.mlp.experts.gate_up_proj" in LazyCheckpoint(src).names()
    sizes = _sizes(model_type, "widen experts")
    grow_checkpoint(src, tmp_path / "out", sizes, seed=3)
    model.save_pretrained(tmp_path / "hub")  # the same weights in the hub's layout
    grow_checkpoint(tmp_path / "hub", tmp_path / "out_hub", sizes, seed=3)
    fused, hub = _stored(tmp_path / "out"), _stored(tmp_path / "out_hub")
    assert sorted(fused) == sorted(hub) and all(torch.equal(fused[n], hub[n]) for n in hub)
    assert EXPERT_TENSOR[model_type] in fused  # written in the hub's layout whatever the source's


@pytest.mark.parametrize("model_type", sorted(CLASSES))
def test_a_checkpoint_missing_one_experts_tensor_is_refused_by_name(model_type: str, tmp_path) -> None:
    model = _moe(model_type)
    model.save_pretrained(tmp_path / "hub")
    state = _stored(tmp_path / "hub")
    del state[EXPERT_TENSOR[model_type]]
    src = tmp_path / "src"
    model.config.save_pretrained(src)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"missing tensor {EXPERT_TENSOR[model_type]}$"):
        grow_checkpoint(src, tmp_path / "out", netgraft.ConfigSizes(num_hidden_layers=3))
    assert not (tmp_path / "out").exists()


def test_the_stored_layout_splits_reads_and_names_as_the_hub_does() -> None:
    gate_up = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)  # 2 experts, gate|up of 3 rows each
    shapes = {"model.layers.3.mlp.experts.gate_up_proj": (2, 6, 4), "model.layers.3.mlp.gate.weight": (2, 4),
              "model.norm.weight": (4,)}
    layout = StoredLayout(FAMILIES["mixtral"], shapes)
    parts = dict(layout.split("model.layers.3.mlp.experts.gate_up_proj", gate_up))
    assert list(parts) == [f"model.layers.3.block_sparse_moe.experts.{e}.{w}.weight" for e in (0, 1)
                           for w in ("w1", "w3")]
    assert torch.equal(parts["model.layers.3.block_sparse_moe.experts.1.w3.weight"], gate_up[1, 3:])  # expert 1's up
    assert torch.equal(layout.read("model.layers.3.mlp.experts.gate_up_proj", parts.__getitem__), gate_up)
    assert layout.stored_shapes() == {**{n: (3, 4) for n in parts},
                                      "model.layers.3.block_sparse_moe.gate.weight": (2, 4), "model.norm.weight": (4,)}
    # a checkpoint holding the model's own names is read under them; a family without a layout is the identity
    fused = StoredLayout(FAMILIES["mixtral"], shapes, present=list(shapes))
    assert fused.stored_shapes() == shapes
    assert StoredLayout(FAMILIES["llama"], {"model.layers.0.mlp.down_proj.weight": (4, 6)}).stored_shapes() == \
        {"model.layers.0.mlp.down_proj.weight": (4, 6)}
