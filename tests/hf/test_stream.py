"""grow_checkpoint: sharded in, sharded out, bounded memory, the same tensors and certificate as the in-memory path."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import netgraft
from netgraft.hf.stream import grow_checkpoint
from netgraft.io.reader import LazyCheckpoint
from netgraft.io.shards import INDEX

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from memcap import cap_reason, run_capped  # noqa: E402


def _llama(tied: bool = True, dtype: torch.dtype = torch.float32, layers: int = 2, **sizes) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                   tie_word_embeddings=tied, **sizes)
    model = transformers.LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


CASES = {
    "deepen": netgraft.ConfigSizes(num_hidden_layers=5),
    "widen x2": netgraft.ConfigSizes(hidden_size=64, intermediate_size=200),
    "widen padded": netgraft.ConfigSizes(hidden_size=40),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama-tied", "gpt2"])
def test_sharded_in_and_out_matches_the_in_memory_path_bit_for_bit(build, case: str, tmp_path) -> None:
    model = build()
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")  # a sharded source
    assert (tmp_path / "src" / INDEX).exists()
    sizes = CASES[case]
    report = grow_checkpoint(tmp_path / "src", tmp_path / "out", sizes, max_shard_size="30KB", seed=3)
    out = tmp_path / "out"
    index = json.loads((out / INDEX).read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    stored = LazyCheckpoint(out)
    assert index["metadata"]["total_size"] == stored.nbytes()
    grown = type(model).from_pretrained(out).eval()
    in_memory = (netgraft.deepen(model, sizes) if sizes.num_hidden_layers else netgraft.widen(model, sizes, seed=3))
    for name, t in in_memory.state_dict().items():  # the same family plan, the same kernel: the same tensors
        assert torch.equal(t, grown.state_dict()[name]), name
    if build is _llama:  # the tie is stored once and restored by from_pretrained
        assert "lm_head.weight" not in index["weight_map"]
        assert grown.lm_head.weight is grown.model.embed_tokens.weight
    ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, grown(input_ids=ids).logits
    assert float((a - b).abs().max()) <= 1e-5 * (1 + float(a.abs().max()))
    assert report.certificate.passed and report.certificate.modes == ("eval",)
    assert json.loads((out / "netgraft.json").read_text())["certificate"]["passed"]


def test_the_streamed_certificate_measures_what_the_in_memory_one_does(tmp_path) -> None:
    model = _llama()
    model.save_pretrained(tmp_path / "src")
    sizes = netgraft.ConfigSizes(hidden_size=64)
    streamed = grow_checkpoint(tmp_path / "src", tmp_path / "out", sizes, seed=0).certificate
    in_memory = netgraft.widen(model, sizes, seed=0).netgraft_report.certificate
    mem_eval = {m.inputs: m for m in in_memory.measurements if m.mode == "eval"}
    assert [m.inputs for m in streamed.measurements] == list(mem_eval)
    for m in streamed.measurements:
        ref = mem_eval[m.inputs]
        assert abs(m.max_abs - ref.max_abs) <= 1e-6 and abs(m.max_ref - ref.max_ref) <= 1e-6 and m.ok == ref.ok


def test_bfloat16_checkpoints_stay_bfloat16_with_exact_shares(tmp_path) -> None:
    model = _llama(dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    sizes = netgraft.ConfigSizes(hidden_size=96, intermediate_size=150)  # 3 copies per feature: 1/2, 1/4, 1/4
    report = grow_checkpoint(tmp_path / "src", tmp_path / "out", sizes, seed=1)
    stored = LazyCheckpoint(tmp_path / "out")
    assert {stored.dtype(n) for n in stored.names()} == {torch.bfloat16}
    assert report.certificate.passed and report.certificate.max_abs < 1e-5
    grown = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    in_memory = netgraft.widen(model, sizes, seed=1)
    assert all(torch.equal(t, grown.state_dict()[n]) for n, t in in_memory.state_dict().items())


def test_a_broken_result_is_not_written(tmp_path, monkeypatch) -> None:
    """A certificate that fails leaves no OUT (the check is inside the atomic directory)."""
    model = _llama()
    model.save_pretrained(tmp_path / "src")
    from netgraft.hf import stream

    real = stream.depth_tensor
    monkeypatch.setattr(stream, "depth_tensor", lambda t, how: real(t, "copy"))  # inserted layers not zeroed
    with pytest.raises(netgraft.NotPreservedError, match="did not preserve"):
        grow_checkpoint(tmp_path / "src", tmp_path / "out", netgraft.ConfigSizes(num_hidden_layers=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_memory_stays_bounded_under_a_hard_cap(tmp_path) -> None:
    """A 0.35 GB float32 checkpoint deepened 24 -> 32 layers under a 0.7 GB cgroup cap: loading source and result
    (~0.8 GB of tensors, plus torch) would not fit; the stream does."""
    why = cap_reason()
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=24,
                                   num_attention_heads=8, num_key_value_heads=8, vocab_size=1000)
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(cfg)
    cfg.architectures = ["LlamaForCausalLM"]
    src = tmp_path / "src"
    src.mkdir()
    cfg.save_pretrained(src)
    from safetensors.torch import save_file

    state = {n: torch.randn(t.shape) * 0.02 for n, t in meta.state_dict().items() if n != "lm_head.weight"}
    state["lm_head.weight"] = torch.randn(meta.lm_head.weight.shape) * 0.02
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    size = (src / "model.safetensors").stat().st_size
    del state
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = run_capped([sys.executable, "-m", "netgraft.cli", "deepen", str(src), "-o", str(out),
                      "--num-hidden-layers", "32", "--max-shard-size", "100MB"], limit=700 * 2**20, env=env,
                     timeout=600)
    print(f"checkpoint {size / 2**20:.0f} MiB; peak RSS {run.peak_rss / 2**20:.0f} MiB; cgroup peak "
          f"{(run.cgroup_peak or 0) / 2**20:.0f} MiB (cap 700 MiB)")
    # it completes under the cap, where loading the source and the result (0.33 + 0.44 GB of float32 tensors, next to
    # ~0.34 GB of torch and transformers) could not; its RSS also counts the safetensors pages it maps, which the
    # kernel reclaims under the cap
    assert run.returncode == 0, run.stderr[-2000:]
    assert size > 300 * 2**20
    assert len(list(out.glob("*.safetensors"))) > 3 and json.loads((out / "netgraft.json").read_text())["certificate"][
        "passed"]
