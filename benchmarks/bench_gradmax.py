"""Benchmark: growing during training with `netgraft.grow_` - GradMax vs random vs zeros vs Net2Net new units.

``make bench`` (via ``run_all.py``) calls ``main(quick=False)``; ``--quick`` uses 2 seeds. Directly:
``.venv/bin/python benchmarks/bench_gradmax.py [--quick]``.

Two protocols, each with the variants gradmax / random / zeros / net2net (all via `grow_`, optimizer state carried),
"no growth" (the small model trained throughout) and "big" (the final architecture trained from scratch):

    (a) teacher-student (GradMax paper): teacher MLP 20-10-10 (tanh), student starts with 5 hidden units and gains
        one every 200 steps, 5 times; MSE on fresh Gaussian inputs each step, SGD lr 0.1, batch 64, 1200 steps.
        Training loss = MSE on a fixed set of 2048 inputs.
    (b) a 1D CNN (Conv-BN-SiLU x3, global average pooling, Linear) on MNIST-1D, grown from 0.25x width (8-16-16)
        to 32-64-64 in 3 events (steps 75, 150, 225), Adam lr 1e-3, batch 64, 400 steps. Training loss =
        cross-entropy on 1000 fixed training sequences (eval mode), plus final test accuracy.

Right after each growth, the gradient norm of the new units' fan-in (weights and biases of the new rows, on the
growth batch) is recorded. SiLU/tanh, not ReLU: a zero fan-in unit behind ReLU gets no gradient in PyTorch.

Writes ``benchmarks/results/gradmax.json`` and ``gradmax.png`` (``gradmax_quick.*`` for --quick) and regenerates the
README's ``gradmax`` section.
"""

from __future__ import annotations

import datetime as dt
import platform
import statistics
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import netgraft

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("gradmax", "random", "zeros", "net2net", "no growth", "big")
GROWN = ("gradmax", "random", "zeros", "net2net")
BN_SQRT_EPS = "gradmax, bn_weight=None"  # new BatchNorm channels with gamma = sqrt(eps) instead of 1
SEEDS = {"full": (0, 1, 2, 3, 4), "quick": (0, 1)}
EVAL_EVERY = 10


# ---------------------------------------------------------------------------------------------- protocols
class TeacherStudent:
    name = "teacher-student"
    extra_variants: tuple[str, ...] = ()
    steps, every, times = 1200, 200, 5
    batch = 64

    def __init__(self, seed: int) -> None:
        torch.manual_seed(10_000 + seed)
        self.teacher = nn.Sequential(nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 10)).requires_grad_(False)
        g = torch.Generator().manual_seed(20_000 + seed)
        self.x_eval = torch.randn(2048, 20, generator=g)
        self.y_eval = self.teacher(self.x_eval)
        self.gen = torch.Generator().manual_seed(30_000 + seed)

    def model(self, hidden: int) -> nn.Module:
        return nn.Sequential(nn.Linear(20, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def start_model(self) -> nn.Module:
        return self.model(5)

    def big_model(self) -> nn.Module:
        return self.model(10)

    def targets(self) -> dict[str, int]:
        return {"0": 10}

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(self.batch, 20, generator=self.gen)
        return x, self.teacher(x)

    @staticmethod
    def loss_fn(model: nn.Module, batch: tuple) -> torch.Tensor:
        return F.mse_loss(model(batch[0]), batch[1])

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        return float(F.mse_loss(model(self.x_eval), self.y_eval))

    def test_accuracy(self, model: nn.Module) -> float | None:
        return None


class CnnMnist1d:
    name = "CNN on MNIST-1D"
    extra_variants = (BN_SQRT_EPS,)
    steps, every, times = 400, 75, 3
    batch = 64
    full = (32, 64, 64)

    def __init__(self, seed: int, data: dict[str, torch.Tensor]) -> None:
        self.data = data
        self.gen = torch.Generator().manual_seed(40_000 + seed)
        self.perm: list[torch.Tensor] = []
        torch.manual_seed(50_000 + seed)

    def model(self, widths: tuple[int, int, int]) -> nn.Module:
        a, b, c = widths
        return nn.Sequential(nn.Conv1d(1, a, 5, padding=2), nn.BatchNorm1d(a), nn.SiLU(),
                             nn.Conv1d(a, b, 5, stride=2, padding=2), nn.BatchNorm1d(b), nn.SiLU(),
                             nn.Conv1d(b, c, 3, stride=2, padding=1), nn.BatchNorm1d(c), nn.SiLU(),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 10))

    def start_model(self) -> nn.Module:
        return self.model(tuple(w // 4 for w in self.full))

    def big_model(self) -> nn.Module:
        return self.model(self.full)

    def targets(self) -> dict[str, int]:
        return dict(zip(("0", "3", "6"), self.full, strict=True))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=1e-3)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.perm:
            self.perm = list(torch.randperm(len(self.data["y"]), generator=self.gen).split(self.batch))
        idx = self.perm.pop(0)
        return self.data["x"][idx], self.data["y"][idx]

    @staticmethod
    def loss_fn(model: nn.Module, batch: tuple) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def train_loss(self, model: nn.Module) -> float:
        was = model.training
        model.eval()
        loss = float(F.cross_entropy(model(self.data["x"][:1000]), self.data["y"][:1000]))
        model.train(was)
        return loss

    @torch.no_grad()
    def test_accuracy(self, model: nn.Module) -> float:
        model.eval()
        return float((model(self.data["x_test"]).argmax(1) == self.data["y_test"]).float().mean())


def load_mnist1d() -> dict[str, torch.Tensor]:
    from offline_data import mnist1d

    return mnist1d()


# ------------------------------------------------------------------------------------------------------- runs
def new_unit_grad_norm(model: nn.Module, old_sizes: dict[str, int], loss_fn: Callable, batch: tuple) -> float:
    """Norm of the gradient of every new unit's fan-in (rows beyond the old size of each grown layer)."""
    model.zero_grad(set_to_none=True)
    loss_fn(model, batch).backward()
    total = 0.0
    for key, old in old_sizes.items():
        layer = model.get_submodule(key)
        for p in (layer.weight, layer.bias):
            if p is not None and p.grad is not None and p.shape[0] > old:
                total += float(p.grad[old:].pow(2).sum())
    model.zero_grad(set_to_none=True)
    return total ** 0.5


def run(protocol: Any, variant: str, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = protocol.big_model() if variant == "big" else protocol.start_model()
    opt = protocol.optimizer(model)
    grown = variant in GROWN or variant == BN_SQRT_EPS
    grow_steps = [protocol.every * (i + 1) for i in range(protocol.times)] if grown else []
    targets = protocol.targets()
    start = {k: model.get_submodule(k).weight.shape[0] for k in targets}
    curve, grad_norms = [], []
    event = 0
    for step in range(protocol.steps):
        batch = protocol.next_batch()
        if step in grow_steps:
            event += 1
            old = {k: model.get_submodule(k).weight.shape[0] for k in targets}
            # evenly spread: exact integers, the last event reaches the target
            sizes = {k: start[k] + round((t - start[k]) * event / protocol.times) for k, t in targets.items()}
            init, bn = ("gradmax", None) if variant == BN_SQRT_EPS else (variant, 1.0)
            netgraft.grow_(model, sizes, optimizer=opt, init=init, loss_fn=protocol.loss_fn, batch=batch,
                           seed=seed * 100 + event, bn_weight=bn)
            grad_norms.append(new_unit_grad_norm(model, old, protocol.loss_fn, batch))
        if step % EVAL_EVERY == 0:
            curve.append(protocol.train_loss(model))
        model.train()
        opt.zero_grad(set_to_none=True)
        protocol.loss_fn(model, batch).backward()
        opt.step()
    curve.append(protocol.train_loss(model))
    return {"curve": curve, "grad_norms": grad_norms, "test_accuracy": protocol.test_accuracy(model),
            "params": sum(p.numel() for p in model.parameters())}


def summarise(runs: dict[str, list[dict[str, Any]]], protocol: Any) -> dict[str, Any]:
    """Mean and spread per variant; the paper's two claims checked against random growth."""
    eval_steps = [*range(0, protocol.steps, EVAL_EVERY), protocol.steps]
    grow_steps = [protocol.every * (i + 1) for i in range(protocol.times)]
    out: dict[str, Any] = {"eval_steps": eval_steps, "grow_steps": grow_steps, "variants": {}}
    for v, rs in runs.items():
        curves = torch.tensor([r["curve"] for r in rs])
        after = [i for i, s in enumerate(eval_steps) if s >= grow_steps[0]]
        entry = {"curve_mean": curves.mean(0).tolist(), "curve_std": curves.std(0).tolist() if len(rs) > 1 else
                 [0.0] * len(eval_steps), "final_loss_mean": float(curves[:, -1].mean()),
                 "final_loss_std": float(curves[:, -1].std()) if len(rs) > 1 else 0.0,
                 "mean_loss_after_first_growth": float(curves[:, after].mean()),
                 "params": rs[0]["params"]}
        if rs[0]["grad_norms"]:
            g = torch.tensor([r["grad_norms"] for r in rs])
            entry["grad_norm_mean"] = g.mean(0).tolist()
            entry["grad_norm_std"] = g.std(0).tolist() if len(rs) > 1 else [0.0] * g.shape[1]
        if rs[0]["test_accuracy"] is not None:
            entry["test_accuracy_mean"] = statistics.fmean(r["test_accuracy"] for r in rs)
        out["variants"][v] = entry
    gm, rnd = out["variants"]["gradmax"], out["variants"]["random"]
    per_seed = [all(a >= b for a, b in zip(x["grad_norms"], y["grad_norms"], strict=True))
                for x, y in zip(runs["gradmax"], runs["random"], strict=True)]
    out["claims"] = {
        "gradmax_grad_norm_ge_random_at_every_growth_mean": all(
            a >= b for a, b in zip(gm["grad_norm_mean"], rnd["grad_norm_mean"], strict=True)),
        "gradmax_grad_norm_ge_random_every_growth_every_seed": all(per_seed),
        "grad_norm_ratio_gradmax_over_random": [a / b if b else float("inf") for a, b in
                                                zip(gm["grad_norm_mean"], rnd["grad_norm_mean"], strict=True)],
        "gradmax_final_loss_le_random": gm["final_loss_mean"] <= rnd["final_loss_mean"],
        "gradmax_mean_loss_after_growth_le_random":
            gm["mean_loss_after_first_growth"] <= rnd["mean_loss_after_first_growth"],
    }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"gradmax": "tab:red", "random": "tab:blue", "zeros": "tab:gray", "net2net": "tab:green",
               "no growth": "k", "big": "tab:purple", BN_SQRT_EPS: "tab:orange"}
    protos = list(result["protocols"])
    fig, axes = plt.subplots(2, len(protos), figsize=(6.2 * len(protos), 7.4))
    for col, name in enumerate(protos):
        p = result["protocols"][name]
        ax = axes[0, col]
        for v, e in p["variants"].items():
            m, s = torch.tensor(e["curve_mean"]), torch.tensor(e["curve_std"])
            ax.plot(p["eval_steps"], m, color=colours[v], label=v, lw=1.3, ls="--" if v in ("no growth", "big")
                    else "-")
            ax.fill_between(p["eval_steps"], m - s, m + s, color=colours[v], alpha=0.12)
        for s in p["grow_steps"]:
            ax.axvline(s, color="k", lw=0.4, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{name}: training loss (mean +- std, {len(result['seeds'])} seeds)")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        xs = range(1, len(p["grow_steps"]) + 1)
        for v in GROWN:
            e = p["variants"][v]
            ax.errorbar(xs, e["grad_norm_mean"], yerr=e["grad_norm_std"], color=colours[v], marker="o", capsize=3,
                        label=v)
        ax.set_xticks(list(xs), [f"#{i} (step {s})" for i, s in zip(xs, p["grow_steps"], strict=True)], fontsize=8)
        ax.set_ylabel("|grad| of the new units' fan-in")
        ax.set_title("gradient norm right after each growth")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def result_paths(quick: bool) -> tuple[Path, Path]:
    from report import result_paths as paths

    return paths("gradmax", quick)


def readme_markdown() -> str:
    from report import markdown_table, preferred_result

    found = preferred_result("gradmax")
    if found is None:
        return "(run `make bench` to fill this table)"
    path, r = found
    parts = []
    for name, p in r["protocols"].items():
        rows = []
        for v, e in p["variants"].items():
            row = {"variant": v, "params (end)": f"{e['params']:,}",
                   "final training loss": f"{e['final_loss_mean']:.4g} +- {e['final_loss_std']:.2g}",
                   "mean loss after 1st growth": f"{e['mean_loss_after_first_growth']:.4g}"}
            if "grad_norm_mean" in e:
                row["new fan-in grad norm at each growth"] = " / ".join(f"{g:.3g}" for g in e["grad_norm_mean"])
            if "test_accuracy_mean" in e:
                row["test accuracy"] = f"{e['test_accuracy_mean']:.3f}"
            rows.append(row)
        c = p["claims"]
        ratios = ", ".join(f"{x:.2f}x" for x in c["grad_norm_ratio_gradmax_over_random"])
        verdict = (f"GradMax's gradient norm >= random's at every growth (mean over seeds): "
                   f"{'yes' if c['gradmax_grad_norm_ge_random_at_every_growth_mean'] else 'NO'} (ratios {ratios}; "
                   f"in every seed: {'yes' if c['gradmax_grad_norm_ge_random_every_growth_every_seed'] else 'no'}). "
                   f"Training loss <= random's: at the end "
                   f"{'yes' if c['gradmax_final_loss_le_random'] else 'NO'}, averaged after the first growth "
                   f"{'yes' if c['gradmax_mean_loss_after_growth_le_random'] else 'NO'}.")
        parts += [f"**{name}** ({p['description']})", markdown_table(rows, align={k: "right" for k in rows[0]
                                                                                 if k != "variant"}),
                  textwrap.fill(verdict, 118)]
    footer = (f"Mean of {len(r['seeds'])} seeds. Measured, not typed: `{path.relative_to(REPO).as_posix()}` "
              f"({r['timestamp'][:10]}, torch {r['versions']['torch']}, netgraft {r['versions']['netgraft']}); plot "
              f"`{path.with_suffix('.png').relative_to(REPO).as_posix()}`.")
    return "\n\n".join([*parts, textwrap.fill(footer, 118)])


def publish_readme() -> Path:
    from report import publish_section

    return publish_section("gradmax", readme_markdown())


DESCRIPTIONS = {
    "teacher-student": "teacher 20-10-10 tanh; student 5 -> 10 hidden units, +1 every 200 steps; MSE, SGD 0.1",
    "CNN on MNIST-1D": "Conv-BN-SiLU x3 + GAP + Linear, 8-16-16 -> 32-64-64 at steps 75/150/225; Adam 1e-3",
}


def main(quick: bool = False) -> dict[str, Any]:
    """Run both protocols, write the JSON and PNG, regenerate the README section; return the results."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = SEEDS["quick" if quick else "full"]
    started = dt.datetime.now(dt.timezone.utc)
    print(f"bench_gradmax ({'quick' if quick else 'full'}): seeds {seeds}", flush=True)
    data = load_mnist1d()
    result: dict[str, Any] = {
        "benchmark": "gradmax", "mode": "quick" if quick else "full", "timestamp": started.isoformat(),
        "versions": {"netgraft": netgraft.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "seeds": list(seeds), "protocols": {},
    }
    for make in (TeacherStudent, lambda s: CnnMnist1d(s, data)):
        variants = (*VARIANTS, *make(seeds[0]).extra_variants)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        name = ""
        for seed in seeds:
            for v in variants:
                protocol = make(seed)  # fresh data stream per run: every variant sees the same batches
                name = protocol.name
                runs[v].append(run(protocol, v, seed))
        summary = summarise(runs, make(seeds[0]))
        summary["description"] = DESCRIPTIONS[name]
        summary["runs"] = runs
        result["protocols"][name] = summary
        c = summary["claims"]
        print(f"{name}: " + ", ".join(f"{v} {e['final_loss_mean']:.4g}" for v, e in summary["variants"].items())
              + f"; grad-norm ratio gradmax/random {[round(x, 2) for x in c['grad_norm_ratio_gradmax_over_random']]}",
              flush=True)
    result["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    from report import write_results

    json_path, png_path = write_results("gradmax", quick, result, plot)
    readme = publish_readme()
    print(f"wrote {json_path.relative_to(REPO)}, {png_path.relative_to(REPO)}; README section 'gradmax' in {readme} "
          f"({result['wall_seconds']:.0f} s)")
    return result


def _cli() -> None:
    from report import bench_cli

    bench_cli(__doc__.splitlines()[0], main, publish_readme, "2 seeds instead of 5")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    _cli()
