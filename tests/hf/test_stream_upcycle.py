"""upcycle_checkpoint and `netgraft upcycle`: the streamed upcycling writes exactly the in-memory result (same
tensors, the keys save_pretrained writes, sharded), loads with from_pretrained, keeps bf16, and refuses before
writing anything."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import netgraft
from netgraft import cli
from netgraft.hf.stream import upcycle_checkpoint
from netgraft.io.reader import LazyCheckpoint
from netgraft.io.shards import INDEX

transformers = pytest.importorskip("transformers")

BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=96, max_position_embeddings=64, initializer_range=0.1)


def save(model: torch.nn.Module, path: Path, shard: str = "40KB") -> Path:
    model.save_pretrained(path, max_shard_size=shard)
    return path


def dense(prefix: str, dtype: torch.dtype = torch.float32, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{prefix}Config")(**BASE, **extra)
    return getattr(transformers, f"{prefix}ForCausalLM")(cfg).to(dtype).eval()


def stored_keys(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def assert_same_as_in_memory(streamed: Path, in_memory: torch.nn.Module, tmp: Path) -> None:
    save(in_memory, tmp / "reference", "10GB")
    want, got = stored_keys(tmp / "reference"), stored_keys(streamed)
    assert set(got) == set(want)
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, different[:5]
    back = transformers.AutoModelForCausalLM.from_pretrained(streamed).eval()
    assert type(back) is type(in_memory)
    ids = torch.randint(0, BASE["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, in_memory(ids).logits)


@pytest.mark.parametrize("prefix, kwargs", [
    ("Llama", dict(num_experts=4, top_k=2)),
    ("Mistral", dict(num_experts=8, top_k=4, granularity=2)),
    ("Qwen2", dict(num_experts=4, top_k=2, layers=[0, 2], shared_expert="dense")),
    ("Qwen3", dict(num_experts=4, top_k=4, granularity=2, layers=[1])),
])
def test_streamed_upcycle_equals_the_in_memory_one(prefix: str, kwargs: dict, tmp_path: Path) -> None:
    extra = dict(head_dim=8) if prefix == "Qwen3" else {}
    model = dense(prefix, **extra)
    src = save(model, tmp_path / "src")
    report = upcycle_checkpoint(src, tmp_path / "out", max_shard_size="60KB", seed=3, **kwargs)
    assert report.certificate.passed
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 2
    assert json.loads((tmp_path / "out" / INDEX).read_text())["weight_map"]
    meta = json.loads((tmp_path / "out" / "netgraft.json").read_text())
    assert meta["operation"] == "upcycle" and meta["certificate"]["passed"]
    assert_same_as_in_memory(tmp_path / "out", netgraft.upcycle(model, seed=3, **kwargs), tmp_path)


@pytest.mark.parametrize("split", ["copies", "segments"])
def test_streamed_more_experts_from_a_hub_layout_moe(split: str, tmp_path: Path) -> None:
    moe = netgraft.upcycle(dense("Llama"), num_experts=4, top_k=2, seed=0)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if ".mlp." in name:
                p.add_(0.05 * torch.randn_like(p))
    src = save(moe, tmp_path / "src")
    assert any("block_sparse_moe.experts.3.w2" in k for k in LazyCheckpoint(src).names())
    report = upcycle_checkpoint(src, tmp_path / "out", num_experts=8, split=split, seed=1, max_shard_size="60KB")
    assert report.changes["num_local_experts"] == (4, 8) and report.certificate.passed
    assert_same_as_in_memory(tmp_path / "out", netgraft.upcycle(moe, num_experts=8, split=split, seed=1), tmp_path)


def test_bfloat16_stays_bfloat16(tmp_path: Path) -> None:
    model = dense("Qwen2", torch.bfloat16)
    src = save(model, tmp_path / "src")
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()  # as users load it
    upcycle_checkpoint(src, tmp_path / "out", num_experts=4, top_k=2, seed=0)
    assert {t.dtype for t in stored_keys(tmp_path / "out").values()} == {torch.bfloat16}
    assert_same_as_in_memory(tmp_path / "out", netgraft.upcycle(model, num_experts=4, top_k=2, seed=0), tmp_path)


def test_refusals_write_nothing(tmp_path: Path) -> None:
    src = save(dense("Llama"), tmp_path / "src")
    with pytest.raises(netgraft.InvalidRequestError, match="Valid top_k"):
        upcycle_checkpoint(src, tmp_path / "out", num_experts=8, top_k=3, granularity=2)
    with pytest.raises(netgraft.InvalidRequestError, match="no dense layers"):
        upcycle_checkpoint(src, tmp_path / "out", num_experts=4, top_k=2, layers=[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_round_trip_and_one_line_errors(tmp_path: Path, capsys) -> None:
    model = dense("Qwen2")
    src = save(model, tmp_path / "src")
    assert cli.main(["upcycle", str(src), "-o", str(tmp_path / "out"), "--num-experts", "4", "--top-k", "2",
                     "--layers", "::2", "--seed", "5", "--max-shard-size", "60KB"]) == 0
    printed = capsys.readouterr().out
    assert "certificate" in printed and "preserved" in printed
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(back).__name__ == "Qwen2MoeForCausalLM" and back.config.mlp_only_layers == [1]
    assert_same_as_in_memory(tmp_path / "out", netgraft.upcycle(model, num_experts=4, top_k=2, layers=[0, 2],
                                                                seed=5), tmp_path)
    for argv, needle in ((["--num-experts", "4", "--top-k", "5"], "multiples"),
                         (["--num-experts", "4", "--top-k", "2", "--granularity", "3"], "multiples"),
                         (["--num-experts", "4", "--top-k", "2", "--layers", "x"], "not a layer list"),
                         (["--num-experts", "4", "--top-k", "2", "--layers", "5:"], "selects no layer"),
                         (["--num-experts", "4", "--top-k", "2", "--shared-expert", "both"], "invalid choice")):
        with pytest.raises(SystemExit) if "choice" in needle or "layer list" in needle else contextlib.nullcontext():
            status = cli.main(["upcycle", str(src), "-o", str(tmp_path / "bad"), *argv])
            assert status == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "bad").exists()
    assert cli.main(["inspect", str(src)]) == 0
    assert "upcycle: -> qwen2_moe" in capsys.readouterr().out

