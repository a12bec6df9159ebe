"""Benchmark: does growth pay? Compute to reach the from-scratch model's final validation loss.

``make bench`` (via ``run_all.py``) calls ``main(quick=False)``; ``--quick`` runs tiny versions (1 seed). Directly:
``.venv/bin/python benchmarks/bench_growth.py [--quick]``.

Workloads (real data, offline):
    vision    a CNN on MNIST-1D (20,000 training sequences generated locally): small 16-32-32 trained first, then
              `widen` 2x and `deepen` by two identity conv layers (BatchNorm calibrated on training data), trained on;
              against the large architecture from scratch and a naive "corner" init (small weights copied into the
              corner of a randomly initialised large model, new layers random).
    stages    the same CNN grown in two steps, 8-16-16 -> 16-32-32 -> 32-64-64 + 2 layers.
    language  a character-level GPT (Hugging Face GPT2LMHeadModel) on public-domain Shakespeare
              (benchmarks/data/shakespeare.txt.xz): 2 layers / d=64 grown to 4 layers / d=128 (heads 2 -> 4, head_dim
              32 fixed) with `widen(hidden_size=...)` and `deepen(num_hidden_layers=...)`; against scratch, "corner" and
              "stack" (widened exactly, depth by stacking copies of the trained layers, G_stack-style).
    lr        ablation of the learning-rate recipe around growth on the language task (see `Run`).
Variants "netgraft" (exact Net2Net copies) and "netgraft+noise" (`widen(noise=1.0)`: still exact, the copies split
each outgoing weight in element-wise unequal shares, which breaks their symmetry under Adam).

Metric: training FLOPs counted with ``torch.utils.flop_counter`` (forward + backward of one step of each model,
including the small model's steps) and wall time until the validation loss first reaches the scratch run's final
validation loss; savings = 1 - grown / scratch. Same batches; scratch: AdamW with warm-up and one cosine decay (peak
lr the best of a 3-point sweep, recorded); grown runs: the "wsd" recipe (the small model trains at the constant peak
lr, then the grown model re-warms up and decays over its own, shorter phase), 3 seeds.

Writes ``benchmarks/results/growth.json`` and ``growth.png`` (``growth_quick.*`` for --quick) and regenerates the
README's ``growth`` section.
"""

from __future__ import annotations

import copy
import datetime as dt
import lzma
import math
import os
import platform
import statistics
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import netgraft

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEEDS = {"full": (0, 1, 2), "quick": (0,)}
TARGET_SAVINGS = 0.40


# ------------------------------------------------------------------------------------------------ training core
class Run:
    """One training run: a model that may be replaced at growth steps, cumulative FLOPs and wall time, a curve.

    Learning-rate recipes (AdamW, peak `peak_lr`, linear warm-up of `warmup` steps):
        global    warm-up, then one cosine decay over the whole run; growth just continues it (no re-warm-up).
                  The scratch runs use this.
        wsd       warm-up-stable-decay across growth: the small model trains at the constant peak until `decay_from`
                  (the last growth), the grown model re-warms up (fresh optimizer) and decays over the rest of the
                  run (a short, accelerated decay as in LEMON).
        annealed  like wsd, but the small model's own phase is a full cosine decay (a small model trained "to the
                  end" before it is grown).
    """

    def __init__(self, total_steps: int, peak_lr: float, warmup: int, recipe: str = "global",
                 decay_from: int = 0) -> None:
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        self.total, self.peak, self.warmup, self.recipe = total_steps, peak_lr, warmup, recipe
        self.decay_from = decay_from
        self.step = 0
        self.flops = 0.0
        self.wall = 0.0
        self.curve: list[tuple[int, float, float, float]] = []  # (step, flops, wall, val loss)
        self.grown_at: list[int] = []
        self.jump: float | None = None  # change of the validation loss at growth (0 for exact growth)

    def lr(self) -> float:
        s, d = self.step, self.decay_from
        if self.recipe == "global":
            return self.peak * min(1.0, (s + 1) / self.warmup) * _cosine(s, self.total)
        since = s - (self.grown_at[-1] if self.grown_at else 0)
        warm = min(1.0, (since + 1) / self.warmup)  # every phase starts with a fresh optimizer: warm it up
        if s < d:
            return self.peak * warm * (_cosine(s, d) if self.recipe == "annealed" else 1.0)
        return self.peak * warm * _cosine(s - d, self.total - d)


RECIPES = ("global", "wsd", "annealed")


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def step_flops(model: nn.Module, batch: Any, loss_fn: Callable) -> int:
    """FLOPs of one training step (forward + backward) of `model` on `batch` (the optimizer's own are negligible)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def train(run: Run, model: nn.Module, steps: int, batches: Callable[[int], Any], loss_fn: Callable,
          evaluate: Callable[[nn.Module], float], eval_every: int, weight_decay: float = 0.0) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr(), weight_decay=weight_decay)
    per_step = step_flops(model, batches(run.step), loss_fn)
    for _ in range(steps):
        if run.step % eval_every == 0:
            run.curve.append((run.step, run.flops, run.wall, evaluate(model)))
        batch = batches(run.step)
        t0 = time.perf_counter()
        model.train()
        for g in opt.param_groups:
            g["lr"] = run.lr()
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        opt.step()
        run.wall += time.perf_counter() - t0
        run.flops += per_step
        run.step += 1
    return model


def finish(run: Run, model: nn.Module, evaluate: Callable[[nn.Module], float]) -> dict[str, Any]:
    run.curve.append((run.step, run.flops, run.wall, evaluate(model)))
    return {"curve": run.curve, "grown_at": run.grown_at, "params": sum(p.numel() for p in model.parameters()),
            "loss_jump_at_growth": run.jump}


def reach(curve: list, target: float) -> tuple[float, float] | None:
    """FLOPs and wall time at which the validation loss first reaches `target` (linear between evaluations)."""
    prev = None
    for step, flops, wall, loss in curve:
        if loss <= target:
            if prev is None or prev[3] <= target:
                return flops, wall
            f = (prev[3] - target) / (prev[3] - loss)
            return prev[1] + f * (flops - prev[1]), prev[2] + f * (wall - prev[2])
        prev = (step, flops, wall, loss)
    return None


def reset_(model: nn.Module) -> nn.Module:
    """Re-initialise every layer (the same architecture from scratch)."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model


SPLIT_NOISE = 1.0  # widen(noise=...) of the "+noise" variants: exact, element-wise unequal splits between copies
STACK_NOISE = 0.02  # relative std of the (non-exact) noise that breaks the symmetry of stacked layer copies


@torch.no_grad()
def perturb_(model: nn.Module, seed: int, rel: float = STACK_NOISE) -> nn.Module:
    """Gaussian noise of `rel` x each weight matrix's std (not exact; the change of the validation loss it causes is
    recorded): the "stack" baseline's symmetry breaking between copies of the same layer."""
    g = torch.Generator().manual_seed(10_000 + seed)
    for p in model.parameters():
        if p.dim() >= 2:
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * rel * p.std())
    return model


def corner_(large: nn.Module, small_layers: list[nn.Module], large_layers: list[nn.Module]) -> nn.Module:
    """Copy each small layer's tensors into the leading corner of its counterpart (the naive non-exact init)."""
    with torch.no_grad():
        for s, b in zip(small_layers, large_layers, strict=True):
            for (_name, t), (_, u) in zip(s.state_dict().items(), b.state_dict().items(), strict=True):
                if t.dim() == 0:
                    u.copy_(t)
                else:
                    u[tuple(slice(0, n) for n in t.shape)] = t
    return large


# ----------------------------------------------------------------------------------------------------- vision
def load_mnist1d(quick: bool) -> dict[str, torch.Tensor]:
    from offline_data import mnist1d

    return mnist1d(num_samples=5000 if quick else 25_000)


def cnn(widths: tuple[int, int, int]) -> nn.Sequential:
    a, b, c = widths
    return nn.Sequential(nn.Conv1d(1, a, 5, padding=2), nn.BatchNorm1d(a), nn.ReLU(),
                         nn.Conv1d(a, b, 5, padding=2), nn.BatchNorm1d(b), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(b, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 10))


def _ce(model: nn.Module, batch: tuple) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


class Vision:
    name = "vision"
    batch = 64
    peak_lr, warmup = 1e-2, 30  # the best of the scratch sweep (3e-3, 1e-2, 2e-2) at 900 steps
    sweep = (3e-3, 1e-2, 2e-2)

    def __init__(self, data: dict[str, torch.Tensor], quick: bool) -> None:
        self.data = data
        self.scratch_steps, self.small_steps, self.large_steps = (120, 200, 50) if quick else (900, 1800, 350)
        self.eval_every = 10 if quick else 25

    def batches(self, seed: int) -> Callable[[int], Any]:
        g = torch.Generator().manual_seed(seed)
        n = len(self.data["y"])
        epochs = (self.small_steps + self.large_steps) * self.batch // n + 2
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(epochs)])

        def get(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = order[step * self.batch:(step + 1) * self.batch]
            return self.data["x"][idx], self.data["y"][idx]
        return get

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        return float(F.cross_entropy(model(self.data["x_test"]), self.data["y_test"]))

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        return float((model(self.data["x_test"]).argmax(1) == self.data["y_test"]).float().mean())

    def grow(self, small: nn.Module, seed: int, noise: float) -> nn.Module:
        x = self.data["x"][:256]
        return netgraft.widen(small, 2.0, example_inputs=(x,), noise=noise, seed=seed)

    def deepen(self, model: nn.Module, seed: int) -> nn.Module:
        x = self.data["x"][:256]
        convs = [n for n, m in model.named_children() if isinstance(m, nn.Conv1d)]
        calib = [self.data["x"][i:i + 256] for i in range(0, 2048, 256)]
        return netgraft.deepen(model, [convs[1], convs[2]], example_inputs=(x,), data=calib, seed=seed)

    def _train(self, run: Run, model: nn.Module, steps: int, batches: Callable) -> nn.Module:
        return train(run, model, steps, batches, _ce, self.evaluate, self.eval_every)

    def run(self, variant: str, seed: int, recipe: str = "wsd", peak: float | None = None) -> dict[str, Any]:
        batches = self.batches(seed)
        torch.manual_seed(seed)
        small = cnn((16, 32, 32))
        grown = self.deepen(self.grow(small, seed, 0.0), seed)  # the large architecture (its layout)
        if variant == "scratch":
            run = Run(self.scratch_steps, peak or self.peak_lr, self.warmup, "global")
            model = self._train(run, reset_(copy.deepcopy(grown)), self.scratch_steps, batches)
            return {**finish(run, model, self.evaluate), "accuracy": self.accuracy(model)}
        total = self.small_steps + self.large_steps
        run = Run(total, self.peak_lr, self.warmup, recipe, decay_from=self.small_steps)
        if variant == "stages":  # 8-16-16 -> 16-32-32 -> 32-64-64 + 2 layers, the small phase split in two
            model = self._train(run, cnn((8, 16, 16)), self.small_steps // 2, batches)
            run.grown_at.append(run.step)
            model = self._train(run, self.grow(model, seed, SPLIT_NOISE), self.small_steps - run.step, batches)
            run.grown_at.append(run.step)
            model = self.deepen(self.grow(model, seed, SPLIT_NOISE), seed)
            model = self._train(run, model, self.large_steps, batches)
            return {**finish(run, model, self.evaluate), "accuracy": self.accuracy(model)}
        small = self._train(run, small, self.small_steps, batches)
        run.grown_at.append(run.step)
        before = self.evaluate(small)
        if variant.startswith("netgraft"):
            model = self.deepen(self.grow(small, seed, SPLIT_NOISE if variant == "netgraft+noise" else 0.0), seed)
        else:  # corner: small weights in the corner of a random large model, the new layers random
            model = reset_(copy.deepcopy(grown))
            inserted = {i.path for i in grown.netgraft_report.insertions}
            layers = (nn.Conv1d, nn.BatchNorm1d, nn.Linear)
            big = [m for n, m in model.named_modules() if isinstance(m, layers)
                   and not any(n == p or n.startswith(p + ".") for p in inserted)]
            corner_(model, [m for m in small.modules() if isinstance(m, layers)], big)
        run.jump = self.evaluate(model) - before
        model = self._train(run, model, self.large_steps, batches)
        return {**finish(run, model, self.evaluate), "accuracy": self.accuracy(model)}


# --------------------------------------------------------------------------------------------------- language
def load_shakespeare() -> tuple[torch.Tensor, torch.Tensor, int]:
    text = lzma.decompress((HERE / "data" / "shakespeare.txt.xz").read_bytes()).decode("ascii")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], len(chars)


def gpt(vocab: int, d: int, layers: int, context: int) -> nn.Module:
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=d, n_layer=layers, n_head=d // 32,
                                  n_inner=4 * d, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _lm(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, labels=batch).loss


class Language:
    name = "language"
    peak_lr, warmup = 3e-3, 30  # the best of the scratch sweep (1.5e-3, 3e-3, 6e-3) at 900 steps
    sweep = (1.5e-3, 3e-3, 6e-3)

    def __init__(self, quick: bool) -> None:
        self.train_ids, self.val_ids, self.vocab = load_shakespeare()
        self.context, self.batch = (32, 8) if quick else (64, 16)
        self.scratch_steps, self.small_steps, self.large_steps = (80, 80, 40) if quick else (900, 900, 400)
        self.eval_every = 10 if quick else 25
        self.small_cfg, self.large_cfg = ((32, 1), (64, 2)) if quick else ((64, 2), (128, 4))
        g = torch.Generator().manual_seed(123)
        starts = torch.randint(0, len(self.val_ids) - self.context, (16 if quick else 64,), generator=g)
        self.val = torch.stack([self.val_ids[s:s + self.context] for s in starts])

    def batches(self, seed: int) -> Callable[[int], Any]:
        def get(step: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(seed * 100_003 + step)
            starts = torch.randint(0, len(self.train_ids) - self.context, (self.batch,), generator=g)
            return torch.stack([self.train_ids[s:s + self.context] for s in starts])
        return get

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        return float(_lm(model, self.val))

    def grow(self, small: nn.Module, seed: int, noise: float) -> nn.Module:
        d, layers = self.large_cfg
        wide = netgraft.widen(small, hidden_size=d, intermediate_size=4 * d, noise=noise, seed=seed)
        return netgraft.deepen(wide, num_hidden_layers=layers)

    def run(self, variant: str, seed: int, recipe: str = "wsd", peak: float | None = None) -> dict[str, Any]:
        batches = self.batches(seed)
        torch.manual_seed(seed)
        d, layers = self.large_cfg
        if variant == "scratch":
            run = Run(self.scratch_steps, peak or self.peak_lr, self.warmup, "global")
            model = gpt(self.vocab, d, layers, self.context)
            model = train(run, model, self.scratch_steps, batches, _lm, self.evaluate, self.eval_every)
            return finish(run, model, self.evaluate)
        run = Run(self.small_steps + self.large_steps, self.peak_lr, self.warmup, recipe, decay_from=self.small_steps)
        small = gpt(self.vocab, *self.small_cfg, self.context)
        small = train(run, small, self.small_steps, batches, _lm, self.evaluate, self.eval_every)
        run.grown_at.append(run.step)
        before = self.evaluate(small)
        if variant.startswith("netgraft"):
            model = self.grow(small, seed, SPLIT_NOISE if variant == "netgraft+noise" else 0.0)
        elif variant == "stack":  # exact width, depth by stacking copies of the trained layers: [0, 1, 0, 1]
            wide = netgraft.widen(small, hidden_size=d, intermediate_size=4 * d)
            model = gpt(self.vocab, d, layers, self.context)
            n_small = self.small_cfg[1]
            state = {}
            for k, v in wide.state_dict().items():
                parts = k.split(".")
                if parts[:2] == ["transformer", "h"]:
                    for rep in range(layers // n_small):
                        state[".".join([*parts[:2], str(int(parts[2]) + rep * n_small), *parts[3:]])] = v.clone()
                else:
                    state[k] = v.clone()
            model.load_state_dict(state)
            model = perturb_(model, seed)
        else:  # corner
            model = gpt(self.vocab, d, layers, self.context)
            with torch.no_grad():
                big = dict(model.state_dict())
                for k, t in small.state_dict().items():
                    if k in big and t.dim() == big[k].dim():
                        big[k][tuple(slice(0, n) for n in t.shape)] = t
        run.jump = self.evaluate(model) - before
        model = train(run, model, self.large_steps, batches, _lm, self.evaluate, self.eval_every)
        return finish(run, model, self.evaluate)


# ---------------------------------------------------------------------------------------------------- summary
def _loss_at(curve: list, flops: float) -> float:
    """The validation loss of a run when it had used `flops` (linear between evaluations)."""
    prev = curve[0]
    for point in curve[1:]:
        if point[1] >= flops:
            f = (flops - prev[1]) / (point[1] - prev[1]) if point[1] > prev[1] else 1.0
            return prev[3] + f * (point[3] - prev[3])
        prev = point
    return curve[-1][3]


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    scratch = runs["scratch"]
    out: dict[str, Any] = {}
    for variant, rs in runs.items():
        per_seed = []
        for r, s in zip(rs, scratch, strict=True):
            target = s["curve"][-1][3]
            # the scratch run's own first arrival at its final loss (validation loss is noisy: often before the end)
            s_flops, s_wall = reach(s["curve"], target)
            hit = reach(r["curve"], target)
            per_seed.append({"target": target, "final_loss": r["curve"][-1][3],
                             "scratch_loss_at_same_flops": _loss_at(s["curve"], r["curve"][-1][1]),
                             "flops_vs_scratch": r["curve"][-1][1] / s["curve"][-1][1],
                             "flops_to_target": hit[0] if hit else None,
                             "flop_savings": (1 - hit[0] / s_flops) if hit else None,
                             "wall_savings": (1 - hit[1] / s_wall) if hit and s_wall else None,
                             "total_flops": r["curve"][-1][1]})
        savings = [p["flop_savings"] for p in per_seed if p["flop_savings"] is not None]
        walls = [p["wall_savings"] for p in per_seed if p["wall_savings"] is not None]
        out[variant] = {
            "per_seed": per_seed, "reached": f"{len(savings)}/{len(per_seed)}",
            "flop_savings_mean": statistics.fmean(savings) if len(savings) == len(per_seed) else None,
            "flop_savings_min": min(savings) if len(savings) == len(per_seed) else None,
            "wall_savings_mean": statistics.fmean(walls) if len(walls) == len(per_seed) else None,
            "final_loss_mean": statistics.fmean(p["final_loss"] for p in per_seed),
            "final_loss_std": statistics.pstdev([p["final_loss"] for p in per_seed]),
            "scratch_loss_at_same_flops": statistics.fmean(p["scratch_loss_at_same_flops"] for p in per_seed),
            "flops_vs_scratch": statistics.fmean(p["flops_vs_scratch"] for p in per_seed),
            "accuracy_mean": statistics.fmean(r["accuracy"] for r in rs) if "accuracy" in rs[0] else None,
            "loss_jump_at_growth": (statistics.fmean(r["loss_jump_at_growth"] for r in rs)
                                    if rs[0].get("loss_jump_at_growth") is not None else None),
            "params": rs[0]["params"],
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("vision", "language", "lr ablation (language)") if k in result["workloads"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    colours = {"scratch": "k", "netgraft": "tab:pink", "netgraft+noise": "tab:red", "corner": "tab:blue",
               "stack": "tab:green",
               "stages": "tab:orange", "wsd": "tab:red", "global": "tab:purple", "annealed": "tab:brown"}
    for ax, name in zip(axes[0], panels, strict=True):
        w = result["workloads"][name]
        for variant, rs in w["runs"].items():
            for i, r in enumerate(rs):
                xs = [c[1] / 1e12 for c in r["curve"]]
                ys = [c[3] for c in r["curve"]]
                ax.plot(xs, ys, color=colours.get(variant, "gray"), lw=1, alpha=0.8,
                        label=variant if i == 0 else None)
        target = statistics.fmean(p["target"] for p in w["summary"]["scratch"]["per_seed"])
        ax.axhline(target, color="k", lw=0.6, ls=":")
        ax.set_xlabel("training TFLOPs (cumulative, incl. the small model)")
        ax.set_ylabel("validation loss")
        ax.set_title(name)
        ax.set_yscale("log")
        lows = [c[3] for rs in w["runs"].values() for r in rs for c in r["curve"]]
        ax.set_ylim(min(lows) * 0.9, target * 3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def readme_markdown() -> str:
    from report import markdown_table, preferred_result

    found = preferred_result("growth")
    if found is None:
        return "(run `make bench` to fill this table)"
    path, r = found
    rows = []
    for name, w in r["workloads"].items():
        for variant, s in w["summary"].items():
            fs = s["flop_savings_mean"]
            rows.append({
                "workload": name, "variant": variant, "params (end)": f"{s['params']:,}",
                "final val loss": f"{s['final_loss_mean']:.4f} +- {s['final_loss_std']:.3f}",
                "reached scratch's final loss": s["reached"],
                "FLOPs saved (mean, min)": "-" if variant == "scratch" else (
                    f"{fs:.0%}, {s['flop_savings_min']:.0%}" if fs is not None else
                    "not reached" if s["reached"].startswith("0/") else "not in every seed"),
                "total FLOPs / scratch's": f"{s['flops_vs_scratch']:.2f}",
                "scratch's val loss at the same FLOPs": "-" if variant == "scratch" else
                f"{s['scratch_loss_at_same_flops']:.4f}",
                "wall time saved": "-" if variant == "scratch" or s["wall_savings_mean"] is None
                else f"{s['wall_savings_mean']:.0%}",
                "val loss change at growth": f"{s['loss_jump_at_growth']:+.2g}"
                if s.get("loss_jump_at_growth") is not None else "",
                "val accuracy": f"{s['accuracy_mean']:.3f}" if s.get("accuracy_mean") is not None else "",
            })
    intro = (f"{len(r['seeds'])} seed(s); FLOPs from torch.utils.flop_counter (forward + backward per step, the "
             f"small model's steps included); savings = 1 - (FLOPs until the validation loss first reaches the "
             f"scratch run's final one) / (FLOPs the scratch run itself needed to first reach it), per seed against "
             f"the scratch run of the same seed. "
             f"Target: >= {TARGET_SAVINGS:.0%} on the vision and language tasks. " + r["protocol"])
    table = markdown_table(rows, align={k: "right" for k in rows[0] if k not in ("workload", "variant")})
    sweep = r.get("scratch_lr_sweep")
    if sweep:
        intro += " Scratch's peak learning rate, swept on seed 0 (final validation loss): " + "; ".join(
            f"{task}: " + ", ".join(f"{lr} -> {loss:.4f}" for lr, loss in losses.items())
            for task, losses in sweep.items()) + "."
    footer = (f"Measured, not typed: `{path.relative_to(REPO).as_posix()}` ({r['timestamp'][:10]}, "
              f"{r['machine']['cpu_count']} CPUs, torch {r['versions']['torch']}, netgraft "
              f"{r['versions']['netgraft']}); plot `{path.with_suffix('.png').relative_to(REPO).as_posix()}`.")
    return "\n\n".join([textwrap.fill(intro, 118), table, textwrap.fill(footer, 118)])


def publish_readme() -> Path:
    from report import publish_section

    return publish_section("growth", readme_markdown())


def main(quick: bool = False) -> dict[str, Any]:
    import transformers

    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = SEEDS["quick" if quick else "full"]
    started = dt.datetime.now(dt.timezone.utc)
    vision = Vision(load_mnist1d(quick), quick)
    language = Language(quick)
    ablation = "lr ablation (language)"
    plan = {
        "vision": (vision, ("scratch", "netgraft", "netgraft+noise", "corner", "stages")),
        "language": (language, ("scratch", "netgraft", "netgraft+noise", "stack", "corner")),
        ablation: (language, ("scratch", *RECIPES)),  # netgraft+noise grown under each recipe
    }
    result: dict[str, Any] = {
        "benchmark": "growth", "mode": "quick" if quick else "full", "timestamp": started.isoformat(),
        "versions": {"netgraft": netgraft.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "seeds": list(seeds), "workloads": {},
        "protocol": (f"Vision: MNIST-1D ({len(vision.data['y']):,} training / {len(vision.data['y_test']):,} "
                     f"validation sequences, generated locally), batch {vision.batch}, scratch "
                     f"{vision.scratch_steps} large steps; grown: {vision.small_steps} small + {vision.large_steps} "
                     f"large steps; AdamW peak lr {vision.peak_lr:g}. Language: {len(language.train_ids):,} training "
                     f"characters, context {language.context}, batch {language.batch}, d/layers "
                     f"{language.small_cfg} -> {language.large_cfg}, scratch {language.scratch_steps} steps; grown: "
                     f"{language.small_steps} small + {language.large_steps} large steps; peak lr "
                     f"{language.peak_lr:g}. Grown runs take {vision.small_steps + vision.large_steps} / "
                     f"{language.small_steps + language.large_steps} steps (batches) against scratch's "
                     f"{vision.scratch_steps} / {language.scratch_steps}. Scratch: warm-up {language.warmup} steps "
                     f"+ cosine decay; grown runs: "
                     f"the 'wsd' recipe (small model at the constant peak lr, grow, fresh AdamW re-warmed up, cosine "
                     f"decay over the large phase). Split noise of the '+noise' variants: widen(noise="
                     f"{SPLIT_NOISE:g}) (exact)."),
    }
    for name, (workload, variants) in plan.items():
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for seed in seeds:
            for v in variants:
                t0 = time.perf_counter()
                if name == ablation and v in ("scratch", "wsd"):  # the same runs as the language workload's
                    runs[v].append(result["workloads"]["language"]["runs"][
                        "scratch" if v == "scratch" else "netgraft+noise"][seeds.index(seed)])
                    continue
                if name == ablation:
                    runs[v].append(workload.run("netgraft+noise", seed, recipe=v))
                else:
                    runs[v].append(workload.run(v, seed))
                print(f"  {name:<22} {v:<14} seed {seed}: final val loss {runs[v][-1]['curve'][-1][3]:.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
        summary = summarise(runs)
        result["workloads"][name] = {"runs": runs, "summary": summary}
        for v, s in summary.items():
            print(f"{name}: {v:<14} final {s['final_loss_mean']:.4f}, reached {s['reached']}, FLOP savings "
                  f"{s['flop_savings_mean']}", flush=True)
    if not quick:  # is scratch's peak lr the best one? (seed 0; the chosen value is the middle one)
        result["scratch_lr_sweep"] = {
            w.name: {f"{lr:g}": w.run("scratch", seeds[0], peak=lr)["curve"][-1][3] for lr in w.sweep}
            for w in (vision, language)}
        print("scratch lr sweep (final val loss):", result["scratch_lr_sweep"], flush=True)
    result["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    from report import write_results

    json_path, png_path = write_results("growth", quick, result, plot)
    readme = publish_readme()
    print(f"wrote {json_path.relative_to(REPO)}, {png_path.relative_to(REPO)}; README section 'growth' in {readme} "
          f"({result['wall_seconds']:.0f} s)")
    return result


def resummarise(quick: bool = False) -> None:
    """Recompute the summaries, plot and README section from the curves stored in the result file."""
    import json

    from report import result_paths as paths

    json_path, png_path = paths("growth", quick)
    result = json.loads(json_path.read_text())
    for w in result["workloads"].values():
        w["summary"] = summarise(w["runs"])
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, png_path)
    publish_readme()


def _cli() -> None:
    from report import bench_cli

    bench_cli(__doc__.splitlines()[0], main, publish_readme, "tiny versions, 1 seed")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    _cli()
