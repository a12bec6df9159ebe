"""Benchmark: `netgraft.inject` (TLI) as an initialiser, against PyTorch's default init and Xavier, on MNIST-1D.

``make bench`` (via ``run_all.py``) calls ``main(quick=False)``; ``--quick`` uses fewer seeds. Directly:
``.venv/bin/python benchmarks/bench_inject.py [--quick]``.

Protocol, in one run:
    * data: MNIST-1D generated locally (``mnist1d.data.make_dataset(get_dataset_args())``: 4000 training and 1000
      test sequences of length 40, 10 classes), standardised with the training set's mean and std.
    * donors: a 1D CNN (three Conv-BN-ReLU layers, global average pooling, a Linear head) and an MLP, each trained
      for `DONOR_EPOCHS` epochs with Adam.
    * targets: a deeper CNN, a wider CNN, a CNN with other kernel sizes, a narrower CNN, a ResNet-style 1D net and a
      deeper/wider MLP - each built three ways from the same seed: PyTorch's default init (Kaiming-uniform), Xavier
      (uniform weights, zero biases) and default init followed by ``netgraft.inject_(donor, target)``.
    * training: Adam (lr 1e-3), batch 64, the same batch order for the three inits of a seed; test accuracy after
      0, 4, 8, 16 (about a quarter of an epoch), 32 and 63 (one epoch) steps.
    * similarity: ``netgraft.similarity(donor, target)``; its Spearman correlation with the gain (injected accuracy
      / default accuracy after a quarter epoch) across all donor-target pairs.

Writes ``benchmarks/results/inject.json`` and ``inject.png`` (``inject_quick.*`` for --quick) and regenerates the
README's ``inject`` section from the result files present.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import netgraft

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

BATCH = 64
LR = 1e-3
DONOR_EPOCHS = 15
QUARTER, EPOCH = 16, 63  # steps: 16 x 64 = 1024 of 4000 samples; 63 batches cover the training set once
EVAL_STEPS = (0, 4, 8, QUARTER, 32, EPOCH)
SEEDS = {"full": (0, 1, 2, 3, 4), "quick": (0, 1, 2)}
DATA_SEED = 0  # mnist1d's own default
TARGET_QUARTER, TARGET_EPOCH = 2.5, 1.2  # injected / default accuracy
INITS = ("default", "xavier", "injected")


# ----------------------------------------------------------------------------------------------------- models
def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2), nn.BatchNorm1d(c_out), nn.ReLU()]


def cnn(widths: tuple[int, ...], kernels: tuple[int, ...], strides: tuple[int, ...]) -> nn.Sequential:
    """Conv-BN-ReLU layers, global average pooling, a Linear head."""
    layers: list[nn.Module] = []
    c = 1
    for w, k, s in zip(widths, kernels, strides, strict=True):
        layers += conv_bn(c, w, k, s)
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, 10))


class BasicBlock1d(nn.Module):
    """A ResNet basic block in 1D: two 3-tap Conv-BN layers and an identity (or 1x1 strided) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet1d() -> nn.Sequential:
    return nn.Sequential(*conv_bn(1, 32, 5), BasicBlock1d(32, 64, 2), BasicBlock1d(64, 64, 2),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 10))


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    c = 40
    for w in widths:
        layers += [nn.Linear(c, w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.Linear(c, 10))


DONORS: dict[str, Callable[[], nn.Module]] = {
    "cnn": lambda: cnn((32, 64, 64), (5, 5, 3), (1, 2, 2)),
    "mlp": lambda: mlp((256, 128)),
}
TARGETS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "deeper CNN": ("5 conv layers (32-64-64-64-64)", lambda: cnn((32, 64, 64, 64, 64), (5, 5, 3, 3, 3),
                                                                  (1, 2, 2, 1, 1))),
    "wider CNN": ("channels x1.5 (48-96-96)", lambda: cnn((48, 96, 96), (5, 5, 3), (1, 2, 2))),
    "other kernels": ("kernels 7-7-5 instead of 5-5-3", lambda: cnn((32, 64, 64), (7, 7, 5), (1, 2, 2))),
    "narrower CNN": ("channels /2 (16-32-32)", lambda: cnn((16, 32, 32), (5, 5, 3), (1, 2, 2))),
    "ResNet-1D": ("stem + 2 basic blocks", resnet1d),
    "MLP": ("3 hidden layers (512-256-128)", lambda: mlp((512, 256, 128))),
}
DONOR_DESCRIPTIONS = {"cnn": "1D CNN 32-64-64, kernels 5-5-3, BN, GAP, Linear",
                      "mlp": "MLP 256-128"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------- data
def load_data() -> dict[str, torch.Tensor]:
    from offline_data import mnist1d

    return mnist1d(DATA_SEED)


def batches(n: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Index batches for `steps` steps: a fresh permutation per epoch, the last batch of an epoch may be short."""
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out += list(perm.split(BATCH))
    return out[:steps]


@torch.no_grad()
def accuracy(model: nn.Module, data: dict[str, torch.Tensor]) -> float:
    was = model.training
    model.eval()
    acc = (model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item()
    model.train(was)
    return acc


def train(model: nn.Module, data: dict[str, torch.Tensor], steps: int, seed: int,
          eval_steps: tuple[int, ...] = ()) -> dict[int, float]:
    """Adam on cross-entropy; the test accuracy at each of `eval_steps` (0 = before the first step)."""
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    curve = {0: accuracy(model, data)} if 0 in eval_steps else {}
    model.train()
    for step, idx in enumerate(batches(len(data["y"]), steps, seed), start=1):
        loss = nn.functional.cross_entropy(model(data["x"][idx]), data["y"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in eval_steps:
            curve[step] = accuracy(model, data)
    return curve


# ------------------------------------------------------------------------------------------------ experiment
def xavier_(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build(target: str, init: str, seed: int, donor: nn.Module, example: torch.Tensor) -> nn.Module:
    torch.manual_seed(1000 + seed)
    model = TARGETS[target][1]()
    if init == "xavier":
        xavier_(model)
    elif init == "injected":
        with warnings.catch_warnings():  # low-similarity pairs are measured on purpose
            warnings.simplefilter("ignore")
            netgraft.inject_(donor, model, example_inputs=(example,))
    return model


def steps_to_reach(curve: dict[int, float], level: float) -> int | None:
    hit = [s for s, a in sorted(curve.items()) if a >= level]
    return hit[0] if hit else None


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def run_pair(donor_name: str, donor: nn.Module, target: str, seeds: tuple[int, ...],
             data: dict[str, torch.Tensor]) -> dict[str, Any]:
    example = data["x"][:8]
    sim = netgraft.similarity(donor, TARGETS[target][1](), example_inputs=(example,))
    report = netgraft.inject_(donor, build(target, "default", 0, donor, example), example_inputs=(example,),
                             warn_below=0.0)
    curves: dict[str, list[dict[int, float]]] = {i: [] for i in INITS}
    for seed in seeds:
        for init in INITS:
            model = build(target, init, seed, donor, example)
            curves[init].append(train(model, data, EPOCH, seed, EVAL_STEPS))
    mean = {i: {s: statistics.fmean(c[s] for c in curves[i]) for s in EVAL_STEPS} for i in INITS}
    ratio = {i: {s: mean[i][s] / mean["default"][s] for s in EVAL_STEPS} for i in ("xavier", "injected")}
    per_seed_ratio_q = [c[QUARTER] / d[QUARTER] for c, d in zip(curves["injected"], curves["default"], strict=True)]
    reach = steps_to_reach(mean["injected"], mean["default"][EPOCH])
    return {
        "donor": donor_name, "target": target, "target_description": TARGETS[target][0],
        "target_params": n_params(TARGETS[target][1]()), "similarity": sim,
        "injected_tensors": len(report.transfers), "left_at_init": len(report.left_at_init),
        "curves": {i: [{str(k): v for k, v in c.items()} for c in curves[i]] for i in INITS},
        "mean": {i: {str(k): v for k, v in mean[i].items()} for i in INITS},
        "ratio_vs_default": {i: {str(k): v for k, v in ratio[i].items()} for i in ratio},
        "injected_over_default_quarter_per_seed": per_seed_ratio_q,
        "injected_steps_to_default_epoch_accuracy": reach,
    }


def run(quick: bool) -> dict[str, Any]:
    seeds = SEEDS["quick" if quick else "full"]
    data = load_data()
    donors, donor_acc = {}, {}
    for name, make in DONORS.items():
        torch.manual_seed(0)
        donors[name] = make()
        curve = train(donors[name], data, DONOR_EPOCHS * EPOCH, seed=12345, eval_steps=(DONOR_EPOCHS * EPOCH,))
        donors[name].eval()
        donor_acc[name] = curve[DONOR_EPOCHS * EPOCH]
        print(f"donor {name}: {n_params(donors[name]):,} params, test accuracy {donor_acc[name]:.4f}", flush=True)
    pairs = []
    for donor_name, donor in donors.items():
        for target in TARGETS:
            p = run_pair(donor_name, donor, target, seeds, data)
            m = p["mean"]
            print(f"  {donor_name:>3} -> {target:<14} sim {p['similarity']:.3f}  "
                  f"quarter: default {m['default'][str(QUARTER)]:.3f} xavier {m['xavier'][str(QUARTER)]:.3f} "
                  f"injected {m['injected'][str(QUARTER)]:.3f}  epoch: default {m['default'][str(EPOCH)]:.3f} "
                  f"injected {m['injected'][str(EPOCH)]:.3f}", flush=True)
            pairs.append(p)
    return {"seeds": list(seeds), "data": {"name": "MNIST-1D", "train": len(data["y"]),
                                            "test": len(data["y_test"]), "length": data["x"].shape[-1]},
            "donors": {n: {"description": DONOR_DESCRIPTIONS[n], "params": n_params(d),
                           "test_accuracy": donor_acc[n], "epochs": DONOR_EPOCHS} for n, d in donors.items()},
            "pairs": pairs}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked on the measured numbers."""
    thr = netgraft.SIMILARITY_THRESHOLD
    cnn_pairs = [p for p in result["pairs"] if p["donor"] == "cnn"]
    q = {p["target"]: p["ratio_vs_default"]["injected"][str(QUARTER)] for p in cnn_pairs}
    e = {p["target"]: p["ratio_vs_default"]["injected"][str(EPOCH)] for p in cnn_pairs}
    half = {p["target"]: (p["injected_steps_to_default_epoch_accuracy"] is not None
                          and p["injected_steps_to_default_epoch_accuracy"] <= EPOCH // 2) for p in cnn_pairs}
    above = [p for p in result["pairs"] if p["similarity"] >= thr]
    worse = [f"{p['donor']} -> {p['target']}" for p in above
             if min(p["ratio_vs_default"]["injected"][str(s)] for s in (QUARTER, EPOCH)) < 1.0]
    sims = [p["similarity"] for p in result["pairs"]]
    gains = [p["ratio_vs_default"]["injected"][str(QUARTER)] for p in result["pairs"]]
    donor_acc = result["donors"]["cnn"]["test_accuracy"]
    return {
        "cnn_donor_quarter_ceiling": {p["target"]: donor_acc / p["mean"]["default"][str(QUARTER)] for p in cnn_pairs},
        "cnn_donor_quarter_ratio": q, "cnn_donor_epoch_ratio": e, "cnn_donor_half_steps": half,
        "quarter_target_met": {t: r >= TARGET_QUARTER for t, r in q.items()},
        "epoch_target_met": {t: e[t] >= TARGET_EPOCH or half[t] for t in e},
        "similarity_threshold": thr, "pairs_above_threshold": len(above), "worse_than_default_above_threshold": worse,
        "spearman_similarity_vs_quarter_gain": spearman(sims, gains),
        "spearman_similarity_vs_epoch_gain": spearman(
            sims, [p["ratio_vs_default"]["injected"][str(EPOCH)] for p in result["pairs"]]),
    }


# ---------------------------------------------------------------------------------------------------- output
def result_paths(quick: bool) -> tuple[Path, Path]:
    from report import result_paths as paths

    return paths("inject", quick)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [p for p in result["pairs"] if p["donor"] == "cnn"]
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(3.1 * (len(pairs) + 1), 3.4))
    colours = {"default": "tab:gray", "xavier": "tab:blue", "injected": "tab:red"}
    for ax, p in zip(axes, pairs, strict=False):
        for init in INITS:
            ax.plot(EVAL_STEPS, [p["mean"][init][str(s)] for s in EVAL_STEPS], marker="o", ms=3,
                    color=colours[init], label=init)
        ax.axvline(QUARTER, color="k", lw=0.5, ls=":")
        ax.set_title(f"{p['target']}\nsim {p['similarity']:.2f}", fontsize=9)
        ax.set_xlabel("steps")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("test accuracy (mean of seeds)")
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    for donor, marker in (("cnn", "o"), ("mlp", "s")):
        ps = [p for p in result["pairs"] if p["donor"] == donor]
        ax.scatter([p["similarity"] for p in ps], [p["ratio_vs_default"]["injected"][str(QUARTER)] for p in ps],
                   marker=marker, label=f"donor {donor}")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.axvline(result["summary"]["similarity_threshold"], color="k", lw=0.5, ls=":")
    ax.set_xlabel("similarity(donor, target)")
    ax.set_ylabel(f"injected / default accuracy at {QUARTER} steps")
    ax.set_title(f"Spearman {result['summary']['spearman_similarity_vs_quarter_gain']:.2f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(f"netgraft.inject vs default and Xavier init on MNIST-1D ({len(result['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_markdown() -> str:
    from report import markdown_table, preferred_result

    found = preferred_result("inject")
    if found is None:
        return "(run `make bench` to fill this table)"
    path, r = found
    s = r["summary"]
    rows = []
    for p in r["pairs"]:
        m, ratio = p["mean"], p["ratio_vs_default"]
        reach = p["injected_steps_to_default_epoch_accuracy"]
        rows.append({
            "donor -> target": f"{p['donor']} -> {p['target']} ({p['target_description']})",
            "similarity": f"{p['similarity']:.2f}",
            f"acc @{QUARTER} default / xavier / injected":
                f"{m['default'][str(QUARTER)]:.3f} / {m['xavier'][str(QUARTER)]:.3f} / "
                f"{m['injected'][str(QUARTER)]:.3f}",
            f"injected / default @{QUARTER}": f"{ratio['injected'][str(QUARTER)]:.2f}x",
            "ceiling (donor / default) @" + str(QUARTER):
                f"{r['donors'][p['donor']]['test_accuracy'] / m['default'][str(QUARTER)]:.2f}x",
            f"acc @{EPOCH} default / xavier / injected":
                f"{m['default'][str(EPOCH)]:.3f} / {m['xavier'][str(EPOCH)]:.3f} / {m['injected'][str(EPOCH)]:.3f}",
            f"injected / default @{EPOCH}": f"{ratio['injected'][str(EPOCH)]:.2f}x",
            "steps to default's 1-epoch acc": "-" if reach is None else str(reach),
        })
    donors = "; ".join(f"{n}: {d['description']}, {d['params']:,} params, {d['epochs']} epochs, test accuracy "
                       f"{d['test_accuracy']:.3f}" for n, d in r["donors"].items())
    q_met = sum(s["quarter_target_met"].values())
    e_met = sum(s["epoch_target_met"].values())
    n = len(s["quarter_target_met"])
    intro = (f"MNIST-1D ({r['data']['train']} training / {r['data']['test']} test sequences), Adam lr {LR:g}, batch "
             f"{BATCH}, mean of {len(r['seeds'])} seeds; the three inits of a seed share the model seed and the "
             f"batch order. Donors - {donors}. @{QUARTER} = after {QUARTER} steps (about a quarter epoch), "
             f"@{EPOCH} = after one epoch.")
    verdict = (f"Against the targets (CNN donor, {n} targets): >= {TARGET_QUARTER:g}x default init after a quarter "
               f"epoch in {q_met}/{n}; >= {TARGET_EPOCH:g}x after one epoch (or default's 1-epoch accuracy in at most "
               f"half the steps) in {e_met}/{n}. The ceiling column is the ratio a target would reach at the donor's "
               f"own accuracy: where it is below {TARGET_QUARTER:g}x, default init alone learns too fast for that "
               f"ratio to be reachable. Pairs with similarity >= {s['similarity_threshold']:g}: "
               f"{s['pairs_above_threshold']}, worse than default init at either budget: "
               f"{', '.join(s['worse_than_default_above_threshold']) or 'none'}. Spearman(similarity, gain) over all "
               f"{len(r['pairs'])} pairs: {s['spearman_similarity_vs_quarter_gain']:.2f} after a quarter epoch, "
               f"{s['spearman_similarity_vs_epoch_gain']:.2f} after one epoch.")
    table = markdown_table(rows, align={k: "right" for k in rows[0] if k != "donor -> target"})
    footer = (f"Measured, not typed: `{path.relative_to(REPO).as_posix()}` ({r['timestamp'][:10]}, "
              f"torch {r['versions']['torch']}, netgraft {r['versions']['netgraft']}); plot "
              f"`{path.with_suffix('.png').relative_to(REPO).as_posix()}`.")
    return "\n\n".join([textwrap.fill(intro, 118), table, textwrap.fill(verdict, 118), textwrap.fill(footer, 118)])


def publish_readme() -> Path:
    from report import publish_section

    return publish_section("inject", readme_markdown())


def main(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, write the JSON and PNG, regenerate the README section; return the results."""
    torch.set_num_threads(min(2, torch.get_num_threads()))  # small models: more threads only add noise
    print(f"bench_inject ({'quick' if quick else 'full'})", flush=True)
    started = dt.datetime.now(dt.timezone.utc)
    result: dict[str, Any] = {
        "benchmark": "inject", "mode": "quick" if quick else "full", "timestamp": started.isoformat(),
        "versions": {"netgraft": netgraft.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "protocol": {"batch": BATCH, "lr": LR, "optimizer": "Adam", "quarter_steps": QUARTER,
                     "epoch_steps": EPOCH, "eval_steps": list(EVAL_STEPS),
                     "targets": {"quarter_ratio": TARGET_QUARTER, "epoch_ratio": TARGET_EPOCH}},
    }
    result.update(run(quick))
    result["summary"] = summarise(result)
    result["wall_seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    from report import write_results

    json_path, png_path = write_results("inject", quick, result, plot)
    readme = publish_readme()
    s = result["summary"]
    print(json.dumps({k: s[k] for k in ("cnn_donor_quarter_ratio", "cnn_donor_epoch_ratio",
                                        "worse_than_default_above_threshold",
                                        "spearman_similarity_vs_quarter_gain")}, indent=1))
    print(f"wrote {json_path.relative_to(REPO)}, {png_path.relative_to(REPO)}; README section 'inject' in {readme} "
          f"({result['wall_seconds']:.0f} s)")
    return result


def _cli() -> None:
    from report import bench_cli

    bench_cli(__doc__.splitlines()[0], main, publish_readme, "3 seeds instead of 5")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    _cli()
