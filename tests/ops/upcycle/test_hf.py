"""upcycle on Hugging Face models: every supported pair exact in float32 and bfloat16 on fresh inputs (eval, train,
cached greedy decoding), granularity, E -> 2E in both modes, shared-expert variants, tied embeddings, selected layers,
save/load round trip, gradients reaching every new parameter, experts diverging, and refusals."""

from __future__ import annotations

import pytest
import torch

import netgraft
from netgraft.errors import InvalidRequestError

transformers = pytest.importorskip("transformers")

BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=96, max_position_embeddings=64, initializer_range=0.1)
DENSE = {"llama": ("Llama", {}), "mistral": ("Mistral", {}), "qwen2": ("Qwen2", {}),
         "qwen3": ("Qwen3", dict(head_dim=8))}
TARGET = {"llama": "MixtralForCausalLM", "mistral": "MixtralForCausalLM", "qwen2": "Qwen2MoeForCausalLM",
          "qwen3": "Qwen3MoeForCausalLM"}


def dense(family: str, dtype: torch.dtype = torch.float32, **extra) -> torch.nn.Module:
    prefix, more = DENSE[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{prefix}Config")(**BASE, **more, **extra)
    model = getattr(transformers, f"{prefix}ForCausalLM")(cfg)
    with torch.no_grad():  # norms away from 1, so that a mistake in them shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def fresh_ids(batch: int = 3, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def bound(y: torch.Tensor) -> float:
    return 1e-5 * (1 + float(y.abs().max()))


def assert_same_function(src: torch.nn.Module, moe: torch.nn.Module) -> None:
    """Logits on fresh ids of another batch size, in eval and train mode (float32 compute), and greedy cached
    generation token for token."""
    ids = fresh_ids()
    for train in (False, True):
        src.train(train)
        moe.train(train)
        with torch.no_grad():
            ya, yb = src(ids).logits.float(), moe(ids).logits.float()
        assert torch.isfinite(yb).all()
        assert (ya - yb).abs().max() <= bound(ya), (train, float((ya - yb).abs().max()))
    src.eval()
    moe.eval()
    prompt = fresh_ids(2, 5, seed=3)
    a = src.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    b = moe.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", list(DENSE))
@pytest.mark.parametrize("granularity", [1, 2])
def test_dense_to_moe_is_exact(family: str, granularity: int) -> None:
    src = dense(family)
    moe = netgraft.upcycle(src, num_experts=4 * granularity, top_k=2 * granularity, granularity=granularity, seed=0)
    assert type(moe).__name__ == TARGET[family]
    assert moe.config.num_experts_per_tok == 2 * granularity
    report = moe.netgraft_report
    assert report.exact and report.certificate.passed
    assert "cached decoding" in report.certificate.modes
    assert_same_function(src, moe)
    if family in ("qwen2", "qwen3"):
        assert moe.config.norm_topk_prob is True


@pytest.mark.parametrize("family", list(DENSE))
def test_bfloat16_is_exact_and_stays_bfloat16(family: str) -> None:
    src = dense(family, torch.bfloat16)
    moe = netgraft.upcycle(src, num_experts=4, top_k=4, granularity=2, seed=0)
    assert {p.dtype for p in moe.parameters()} == {torch.bfloat16}
    assert moe.netgraft_report.certificate.passed
    mlp = moe.model.layers[0].mlp.experts
    gate = src.model.layers[0].mlp.gate_proj.weight
    assert torch.equal(mlp.gate_up_proj[1, :32], gate[32:])  # segment 1's gate rows, bit for bit
    assert torch.equal(mlp.down_proj[0], src.model.layers[0].mlp.down_proj.weight[:, :32] * 2)
    assert_same_function(src.float(), moe.float())


@pytest.mark.parametrize("family", list(DENSE))
@pytest.mark.parametrize("split", ["copies", "segments"])
def test_more_experts_is_exact(family: str, split: str) -> None:
    moe = netgraft.upcycle(dense(family), num_experts=4, top_k=2, seed=0)
    with torch.no_grad():  # make the experts differ, as after training
        for name, p in moe.named_parameters():
            if "experts" in name or "mlp.gate." in name:
                p.add_(0.05 * torch.randn_like(p))
    more = netgraft.upcycle(moe, num_experts=8, split=split, seed=0)
    assert type(more) is type(moe)
    assert more.config.num_experts_per_tok == 4
    experts = more.model.layers[0].mlp.experts
    old = moe.model.layers[0].mlp.experts
    if split == "segments":
        assert experts.down_proj.shape[-1] == old.down_proj.shape[-1] // 2
    else:
        shares = experts.down_proj[0] + experts.down_proj[1]  # copies of expert 0: shares summing to 2
        assert torch.allclose(shares, 2 * old.down_proj[0], atol=1e-6)
        assert not torch.allclose(experts.down_proj[0], experts.down_proj[1])  # element-wise split: they differ
    assert more.netgraft_report.exact
    assert_same_function(moe, more)


def test_fixed_top_k_is_refused_unless_asked_and_then_measured() -> None:
    moe = netgraft.upcycle(dense("llama"), num_experts=4, top_k=2, seed=0)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if "experts" in name:
                p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(InvalidRequestError, match="top_k=4"):
        netgraft.upcycle(moe, num_experts=8, top_k=2, seed=0)
    loose = netgraft.upcycle(moe, num_experts=8, top_k=2, exact=False, seed=0)
    report = loose.netgraft_report
    assert not report.exact and "fixed top-k" in str(report)
    assert report.certificate.max_abs > 1e-4  # selection among copies changes the output: measured, not hidden


@pytest.mark.parametrize("mode", ["zero", "dense"])
def test_qwen2_shared_expert_variants(mode: str) -> None:
    src = dense("qwen2", tie_word_embeddings=True)
    moe = netgraft.upcycle(src, num_experts=4, top_k=2, shared_expert=mode, seed=0)
    mlp = moe.model.layers[1].mlp
    assert moe.lm_head.weight is moe.model.embed_tokens.weight  # tied stays tied
    assert torch.count_nonzero(mlp.shared_expert_gate.weight) == 0
    if mode == "zero":
        assert torch.count_nonzero(mlp.shared_expert.down_proj.weight) == 0
    else:
        assert torch.count_nonzero(mlp.experts.down_proj) == 0
        assert torch.equal(mlp.shared_expert.down_proj.weight, 2 * src.model.layers[1].mlp.down_proj.weight)
    assert_same_function(src, moe)


def test_selected_layers_stay_dense_where_the_family_allows() -> None:
    src = dense("qwen3")
    moe = netgraft.upcycle(src, num_experts=4, top_k=2, layers=[0, 2], seed=0)
    assert moe.config.mlp_only_layers == [1]
    assert type(moe.model.layers[1].mlp).__name__ == "Qwen3MoeMLP"
    assert torch.equal(moe.model.layers[1].mlp.down_proj.weight, src.model.layers[1].mlp.down_proj.weight)
    assert_same_function(src, moe)
    with pytest.raises(InvalidRequestError, match="no dense layers"):
        netgraft.upcycle(dense("llama"), num_experts=4, top_k=2, layers=[0])


def test_save_and_load_round_trip(tmp_path) -> None:
    src = dense("llama")
    moe = netgraft.upcycle(src, num_experts=4, top_k=2, seed=0)
    moe.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == "MixtralForCausalLM"
    ids = fresh_ids()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, moe(ids).logits)


def test_source_is_not_modified_and_the_result_owns_its_tensors() -> None:
    src = dense("qwen2")
    before = {n: t.clone() for n, t in src.state_dict().items()}
    moe = netgraft.upcycle(src, num_experts=4, top_k=2, seed=0)
    assert all(torch.equal(before[n], t) for n, t in src.state_dict().items())
    ptrs = {t.data_ptr() for t in src.state_dict().values()}
    assert not any(p.data_ptr() in ptrs for p in moe.parameters())


def test_every_new_parameter_learns_and_experts_diverge() -> None:
    src = dense("qwen2")
    moe = netgraft.upcycle(src, num_experts=4, top_k=2, seed=0).train()
    opt = torch.optim.Adam(moe.parameters(), lr=1e-3)
    start = {n: p.detach().clone() for n, p in moe.named_parameters()}
    for step in range(4):
        ids = fresh_ids(4, 12, seed=10 + step)
        loss = moe(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in moe.named_parameters() if not torch.equal(p, start[n])}
    new = [n for n, _ in moe.named_parameters() if ".mlp." in n]
    assert set(new) <= moved, sorted(set(new) - moved)
    experts = moe.model.layers[0].mlp.experts.gate_up_proj
    assert (experts[0] - experts[1]).abs().max() > 1e-5  # identical at the start, apart after training


@pytest.mark.parametrize("request_, match", [
    (dict(num_experts=8, top_k=9), "multiples"),
    (dict(num_experts=8, top_k=3, granularity=2), "Valid top_k: \\[2, 4, 6, 8\\]"),
    (dict(num_experts=6, top_k=2, granularity=4), "multiples"),
    (dict(num_experts=6, top_k=3, granularity=3), "valid values: \\[1, 2, 4, 8"),
    (dict(num_experts=8), "give top_k"),
    (dict(num_experts=1, top_k=1), ">= 2"),
    (dict(num_experts=4, top_k=2, config={"norm_topk_prob": False}), "norm_topk_prob"),
    (dict(num_experts=4, top_k=2, config={"num_experts": 3}), "set by the request"),
    (dict(num_experts=4, top_k=2, shared_expert="dense", family="llama"), "shared expert"),
    (dict(num_experts=4, top_k=2, layers=[7]), "out of range"),
])
def test_bad_requests_are_refused_with_the_valid_values(request_: dict, match: str) -> None:
    family = request_.pop("family", "qwen2")
    with pytest.raises(InvalidRequestError, match=match):
        netgraft.upcycle(dense(family), **request_)


def test_more_experts_refusals() -> None:
    moe = netgraft.upcycle(dense("llama"), num_experts=4, top_k=2, seed=0)
    with pytest.raises(InvalidRequestError, match="multiple of 4"):
        netgraft.upcycle(moe, num_experts=6)
    with pytest.raises(InvalidRequestError, match="granularity applies to a dense FFN"):
        netgraft.upcycle(moe, num_experts=8, granularity=2)
    half = netgraft.upcycle(dense("llama", torch.bfloat16), num_experts=4, top_k=2, seed=0)
    with pytest.raises(InvalidRequestError, match="not exact in torch.bfloat16"):
        netgraft.upcycle(half, num_experts=12)


def test_attention_bias_the_target_cannot_hold_is_refused() -> None:
    with pytest.raises(netgraft.NetgraftError, match="attention_bias|cannot hold"):
        netgraft.upcycle(dense("llama", attention_bias=True), num_experts=4, top_k=2)
    with pytest.raises(netgraft.NetgraftError, match="mlp_bias"):
        netgraft.upcycle(dense("llama", mlp_bias=True), num_experts=4, top_k=2)


@pytest.mark.parametrize("family, cls, want", [("llama", "LlamaForSequenceClassification",
                                                 "MixtralForSequenceClassification"),
                                                ("qwen2", "Qwen2Model", "Qwen2MoeModel")])
def test_task_heads_and_base_models_map_to_their_moe_class(family: str, cls: str, want: str) -> None:
    prefix, more = DENSE[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{prefix}Config")(**BASE, **more, num_labels=3, pad_token_id=0)
    src = getattr(transformers, cls)(cfg).eval()
    moe = netgraft.upcycle(src, num_experts=4, top_k=2, seed=0)
    assert type(moe).__name__ == want and moe.netgraft_report.certificate.passed
    ids = fresh_ids()
    with torch.no_grad():
        a, b = src(ids)[0], moe(ids)[0]
    assert (a - b).abs().max() <= bound(a)
