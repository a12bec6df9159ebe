"""Planned shards written in any order, read back lazily: the hub's layout, exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from netgraft.errors import CheckpointError
from netgraft.io.reader import LazyCheckpoint
from netgraft.io.shards import INDEX, Entry, ShardWriter, parse_size, plan_shards


def test_shards_are_cut_at_the_limit_and_written_in_any_order(tmp_path) -> None:
    torch.manual_seed(0)
    tensors = {f"t{i}": torch.randn(10, 10 + i, dtype=torch.bfloat16 if i % 2 else torch.float32) for i in range(7)}
    tensors["big"] = torch.randn(100, 100)  # larger than the limit: a shard of its own
    entries = [Entry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    shards = plan_shards(entries, max_shard_size=1500)  # 7 small tensors of 200-800 bytes, one of 40 KB
    assert len(shards) >= 3 and all(s.nbytes <= 1500 or len(s.entries) == 1 for s in shards)
    writer = ShardWriter(tmp_path, shards)
    for name in reversed(list(tensors)):  # a forward pass's order is not the file order
        writer.write(name, tensors[name])
    assert writer.missing() == []
    writer.finish()
    index = json.loads((tmp_path / INDEX).read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == sorted(s.file for s in shards)
    assert shards[0].file == f"model-00001-of-{len(shards):05d}.safetensors"
    for name, t in tensors.items():  # safetensors' own reader agrees, bit for bit
        with safe_open(str(tmp_path / index["weight_map"][name]), framework="pt") as f:
            assert torch.equal(f.get_tensor(name), t)
    lazy = LazyCheckpoint(tmp_path)
    assert lazy.dtype("t1") == torch.bfloat16 and lazy.shape("big") == (100, 100)
    assert all(torch.equal(lazy.get(n), t) for n, t in tensors.items())
    assert lazy.nbytes() == index["metadata"]["total_size"]


def test_one_shard_is_model_safetensors_and_an_unfinished_writer_says_what_is_missing(tmp_path) -> None:
    entries = [Entry("a", torch.float32, (3,)), Entry("b", torch.float32, (2, 2))]
    shards = plan_shards(entries, parse_size("5GB"))
    assert [s.file for s in shards] == ["model.safetensors"]
    writer = ShardWriter(tmp_path, shards)
    writer.write("a", torch.ones(3))
    with pytest.raises(CheckpointError, match=r"never written: \['b'\]"):
        writer.finish()
    with pytest.raises(CheckpointError, match="planned as"):
        writer.write("b", torch.ones(3))
    writer.write("b", torch.ones(2, 2))
    assert torch.equal(writer.read("a"), torch.ones(3))
    writer.finish()
    assert not (tmp_path / INDEX).exists()


@pytest.mark.parametrize("text,value", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), (1234, 1234),
                                        ("1.5KB", 1500)])
def test_sizes_parse_as_the_hub_writes_them(text, value) -> None:
    assert parse_size(text) == value
    with pytest.raises(CheckpointError):
        parse_size("lots")
