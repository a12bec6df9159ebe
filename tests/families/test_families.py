"""Every Hugging Face family in the registry, every task class transformers has for it, grown in config terms.

Parametrised over `netgraft.families.FAMILIES`: a family is tested the moment its file exists. Each result is
checked by the test itself, never by trusting netgraft's certificate: outputs on fresh inputs (another batch size and
length) in eval and train mode, greedy generation with the KV cache for causal LMs, a save/load round trip into the
same class, and gradient reaching every tensor of the grown model.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import netgraft
from netgraft.families import FAMILIES
from netgraft.hf import HFError

transformers = pytest.importorskip("transformers")
auto = pytest.importorskip("transformers.models.auto.modeling_auto")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ("MODEL_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
         "MODEL_FOR_PRETRAINING_MAPPING_NAMES", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
         "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
         "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES")


def classes(model_type: str) -> list[str]:
    out = []
    for task in TASKS:
        name = getattr(auto, task).get(model_type)
        name = name[0] if isinstance(name, tuple) else name
        if name and hasattr(transformers, name) and name not in out:
            out.append(name)
    return out


CASES = [(mt, cls) for mt in sorted(FAMILIES) for cls in classes(mt)]
PRIMARY = {mt: classes(mt)[1] if len(classes(mt)) > 1 else classes(mt)[0] for mt in FAMILIES}  # the LM / classifier


def build(model_type: str, cls: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    family = FAMILIES[model_type]
    config_cls = transformers.AutoConfig.for_model(model_type).__class__
    config = config_cls(**family.tiny)
    for key, value in list(vars(config).items()):  # no dropout: train mode is then deterministic and comparable
        if "drop" in key and (value is None or isinstance(value, float)):
            setattr(config, key, 0.0)
    config.classifier_dropout = 0.0  # token-classification heads default to 0.1 when the config has none
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).to(dtype)
    with torch.no_grad():  # trained-looking norms and biases, not the init's ones and zeros
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def fresh_inputs(model: torch.nn.Module, model_type: str, batch: int = 3, length: int = 7) -> dict:
    g = torch.Generator().manual_seed(7)
    config = model.config
    if FAMILIES[model_type].inputs == "pixels":
        return {"pixel_values": torch.randn(batch, config.num_channels, config.image_size, config.image_size,
                                            generator=g)}
    return {"input_ids": torch.randint(1, config.vocab_size, (batch, length), generator=g)}


def outputs(model: torch.nn.Module, inputs: dict, train: bool) -> list[torch.Tensor]:
    was = model.training
    model.train(train)
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        model.train(was)
    names = ("logits", "start_logits", "end_logits", "prediction_logits", "seq_relationship_logits",
             "last_hidden_state", "pooler_output")
    return [getattr(out, n) for n in names if getattr(out, n, None) is not None]


def assert_same(small: torch.nn.Module, big: torch.nn.Module, model_type: str) -> None:
    """Logits equal; hidden states equal on the old features (copies and zero padding are checked by the
    certificate; here, that the old features are kept) - both modes, fresh inputs."""
    x = fresh_inputs(small, model_type)
    for train in (False, True):
        for a, b in zip(outputs(small, x, train), outputs(big, x, train), strict=True):
            b = b[..., : a.shape[-1]]
            bound = 1e-5 * (1 + float(a.abs().max()))
            assert float((a - b).abs().max()) <= bound, (train, float((a - b).abs().max()), bound)


def grow(model: torch.nn.Module, op: str) -> torch.nn.Module:
    config = model.config
    family = netgraft.hf.family_of(model)
    sizes = netgraft.hf.Sizes.of(config, family)
    if op == "hidden x2":
        return netgraft.widen(model, hidden_size=2 * sizes.hidden, seed=0)
    if op == "hidden padded":  # not a multiple: zero padding (one more kv group of heads where heads follow)
        return netgraft.widen(model, hidden_size=sizes.hidden + sizes.head_dim * (sizes.heads // sizes.kv), seed=0)
    if op == "ffn":  # + 8: fused MoE experts run torch's grouped matmul, which wants 16-byte-aligned strides
        return netgraft.widen(model, intermediate_size=sizes.ffn + 8, seed=0)
    if op == "heads":
        return netgraft.widen(model, num_attention_heads=2 * sizes.heads, seed=0)
    if op == "depth":
        return netgraft.deepen(model, num_hidden_layers=sizes.layers + 2)
    raise AssertionError(op)


def _refusal_reason(model_type: str, op: str) -> str | None:
    """Where a family cannot grow exactly, the reason netgraft must give (checked as a refusal)."""
    family = FAMILIES[model_type]
    sizes = netgraft.hf.Sizes.of(build(model_type, classes(model_type)[0]).config, family)
    if op == "hidden padded":
        if family.pad_stream:
            return family.pad_stream.split(" (")[0][:30]
        if not family.pre_norm and family.norm == "layer":
            return "post-norm LayerNorm stream"
        if netgraft.hf.plan.config_value(build(model_type, classes(model_type)[0]).config, family.config.eps) is None:
            return "epsilon is not a config field"
    if op == "heads":
        explicit = netgraft.hf.plan.config_value(build(model_type, classes(model_type)[0]).config,
                                                 family.config.head_dim) is not None
        if not explicit:
            return "would change head_dim"
    assert sizes
    return None


OPS = ("hidden x2", "hidden padded", "ffn", "heads", "depth")


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
@pytest.mark.parametrize("op", OPS)
def test_every_family_grows_exactly_or_refuses_with_the_reason(model_type: str, op: str) -> None:
    model = build(model_type, PRIMARY[model_type])
    reason = _refusal_reason(model_type, op)
    if reason is not None:
        with pytest.raises(HFError, match=reason):
            grow(model, op)
        return
    big = grow(model, op)
    assert type(big) is type(model) and big.netgraft_report.certificate.passed
    assert_same(model, big, model_type)


@pytest.mark.parametrize("model_type,cls", CASES)
def test_every_task_head_grows_with_its_body(model_type: str, cls: str) -> None:
    model = build(model_type, cls)
    for op in ("hidden x2", "depth"):
        big = grow(model, op)
        assert type(big) is type(model)
        assert_same(model, big, model_type)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_grown_model_saves_loads_decodes_and_learns(model_type: str, tmp_path) -> None:
    model = build(model_type, PRIMARY[model_type])
    big = grow(grow(model, "hidden x2"), "depth")
    big.save_pretrained(tmp_path)
    again = type(big).from_pretrained(tmp_path)
    x = fresh_inputs(model, model_type)
    for a, b in zip(outputs(big, x, False), outputs(again.eval(), x, False), strict=True):
        assert float((a - b).abs().max()) <= 1e-5 * (1 + float(a.abs().max()))  # kernels may sum in another order
    if hasattr(big, "generate") and big.can_generate():
        ids = x["input_ids"][:, :4]
        a = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        b = big.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        assert torch.equal(a, b)
    # every tensor of the grown model gets gradient within two optimizer steps
    trained = copy.deepcopy(big).train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    moved = {n: False for n, _ in trained.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        out = outputs_with_grad(trained, x)
        sum(o.float().pow(2).mean() for o in out).backward()
        for n, p in trained.named_parameters():
            moved[n] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
        opt.step()
    dead = [n for n, ok in moved.items() if not ok]
    assert not dead, dead


def outputs_with_grad(model: torch.nn.Module, inputs: dict) -> list[torch.Tensor]:
    out = model(**inputs)
    names = ("logits", "prediction_logits", "seq_relationship_logits", "last_hidden_state", "pooler_output")
    return [getattr(out, n) for n in names if getattr(out, n, None) is not None]
