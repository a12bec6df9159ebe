"""The family x operation table: every Hugging Face family in `netgraft.families`, grown in config terms.

For each family (its tiny config, the causal-LM / classification class) and each operation - hidden x2 (uniform
replication), hidden padded (a size that is not a multiple: zero padding), intermediate +8, heads x2, num layers +2 -
the outcome is measured, not assumed: exact (max |delta| on fresh inputs in eval mode, relative to the float32 bound
1e-5 x (1 + max|y|), checked here, outside netgraft's own certificate) or refused (netgraft's reason). Writes
results/families.json, a PNG (max |delta| / bound per cell) and the README table. Quick and full are the same (tiny
models, about a minute).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from report import markdown_table, publish_section, write_results  # noqa: E402
from transformers.models.auto import modeling_auto as auto  # noqa: E402

import netgraft  # noqa: E402
from netgraft.families import FAMILIES  # noqa: E402

OPS = ("hidden x2", "hidden padded", "intermediate +8", "heads x2", "layers +2")
TASKS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
         "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_MAPPING_NAMES")


def model_class(model_type: str) -> str:
    for task in TASKS:
        name = getattr(auto, task).get(model_type)
        if name:
            return name[0] if isinstance(name, tuple) else name
    raise KeyError(model_type)


def build(model_type: str) -> torch.nn.Module:
    family = FAMILIES[model_type]
    config = transformers.AutoConfig.for_model(model_type).__class__(**family.tiny)
    for key, value in list(vars(config).items()):
        if "drop" in key and (value is None or isinstance(value, float)):
            setattr(config, key, 0.0)
    torch.manual_seed(0)
    model = getattr(transformers, model_class(model_type))(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def grow(model: torch.nn.Module, op: str) -> torch.nn.Module:
    s = netgraft.hf.Sizes.of(model.config, netgraft.hf.family_of(model))
    if op == "hidden x2":
        return netgraft.widen(model, hidden_size=2 * s.hidden, seed=0)
    if op == "hidden padded":
        return netgraft.widen(model, hidden_size=s.hidden + s.head_dim * (s.heads // s.kv), seed=0)
    if op == "intermediate +8":
        return netgraft.widen(model, intermediate_size=s.ffn + 8, seed=0)
    if op == "heads x2":
        return netgraft.widen(model, num_attention_heads=2 * s.heads, seed=0)
    return netgraft.deepen(model, num_hidden_layers=s.layers + 2)


def fresh_inputs(model: torch.nn.Module, model_type: str) -> dict:
    g = torch.Generator().manual_seed(11)
    c = model.config
    if FAMILIES[model_type].inputs == "pixels":
        return {"pixel_values": torch.randn(3, c.num_channels, c.image_size, c.image_size, generator=g)}
    return {"input_ids": torch.randint(1, c.vocab_size, (3, 9), generator=g)}


def first_output(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def measure(model_type: str, op: str) -> dict[str, Any]:
    model = build(model_type)
    t0 = time.perf_counter()
    try:
        big = grow(model, op)
    except netgraft.NetgraftError as err:
        return {"outcome": "refused", "reason": str(err).split(": ", 1)[-1][:160], "error": type(err).__name__}
    seconds = time.perf_counter() - t0
    x = fresh_inputs(model, model_type)
    a, b = first_output(model, x), first_output(big, x)
    b = b[..., : a.shape[-1]]  # a hidden state keeps the old features first
    delta, bound = float((a - b).abs().max()), 1e-5 * (1 + float(a.abs().max()))
    return {"outcome": "exact" if delta <= bound else "NOT EXACT", "max_abs": delta, "bound": bound,
            "ratio": delta / bound, "seconds": seconds, "certificate_passed": big.netgraft_report.certificate.passed}


def plot(result: dict, path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    types = sorted(result["cells"])
    grid = np.full((len(types), len(OPS)), np.nan)
    for i, t in enumerate(types):
        for j, op in enumerate(OPS):
            cell = result["cells"][t][op]
            if cell["outcome"] != "refused":
                grid[i, j] = max(cell["ratio"], 1e-4)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(types) + 1.5))
    im = ax.imshow(np.log10(grid), cmap="viridis", vmin=-4, vmax=0, aspect="auto")
    ax.set_xticks(range(len(OPS)), OPS, rotation=20)
    ax.set_yticks(range(len(types)), types)
    for i, t in enumerate(types):
        for j, op in enumerate(OPS):
            if result["cells"][t][op]["outcome"] == "refused":
                ax.text(j, i, "refused", ha="center", va="center", fontsize=7, color="gray")
    fig.colorbar(im, label="log10(max |delta| / bound), fresh inputs")
    ax.set_title("Hugging Face families grown in config terms")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_table(result: dict) -> str:
    rows = []
    for t in sorted(result["cells"]):
        row = {"model_type": t, "class": result["classes"][t]}
        for op in OPS:
            cell = result["cells"][t][op]
            row[op] = (f"exact ({cell['ratio']:.1e})" if cell["outcome"] == "exact" else
                       f"refused: {cell['reason'][:70]}" if cell["outcome"] == "refused" else cell["outcome"])
        rows.append(row)
    head = (f"{len(result['cells'])} model types, measured by `benchmarks/bench_families.py` "
            f"({result['timestamp'][:10]}): exact = max |delta| / bound on fresh inputs (eval mode, float32 bound "
            f"1e-5 x (1 + max|y|)), refused = netgraft's reason, abbreviated.")
    return head + "\n\n" + markdown_table(rows)


def main(quick: bool = False) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    result: dict[str, Any] = {
        "benchmark": "families", "mode": "quick" if quick else "full", "timestamp": started.isoformat(),
        "versions": {"netgraft": netgraft.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "ops": list(OPS), "cells": {}, "classes": {},
    }
    for model_type in sorted(FAMILIES):
        result["classes"][model_type] = model_class(model_type)
        result["cells"][model_type] = {}
        for op in OPS:
            cell = measure(model_type, op)
            result["cells"][model_type][op] = cell
            detail = round(cell["ratio"], 4) if cell["outcome"] == "exact" else cell.get("ratio", cell.get("reason"))
            print(f"{model_type:<12} {op:<16} {cell['outcome']:<8} {detail}", flush=True)
    result["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    json_path, png_path = write_results("families", quick, result, plot)
    print(f"wrote {json_path} and {png_path}; updated {publish_section('families', readme_table(result))}")
    return result


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
