"""netgraft demo: train a small CNN on real data, widen it 2x and deepen it exactly, and keep training it.

Run with ``make demo`` (or ``.venv/bin/python scripts/demo.py``). Offline, CPU only, deterministic.

Steps:
    1. load scikit-learn's bundled 8x8 digits (no download), fixed stratified split, standardise;
    2. train a small CNN and report its validation accuracy;
    3. ``netgraft.widen`` it 2x: every hidden width doubles, the function (and the accuracy) stays the same;
    4. ``netgraft.deepen`` it: Net2Net identity layers after conv2 and fc1 (BatchNorm calibrated on training
       data), again the same function;
    5. train the grown model and the same wide and deep architecture from scratch with the same recipe;
    6. compare them in a table and a plot (``demo_out/demo_grow.png``).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the demo only writes a PNG, it never opens a window

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend selection)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import netgraft  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLOT_PATH = REPO / "demo_out" / "demo_grow.png"

SEED = 0
VAL_FRACTION = 0.25
BATCH_SIZE = 64
LR = 1e-3
PRETRAIN_EPOCHS = 6  # enough for the small net to be clearly useful, leaving room to improve
GROW_EPOCHS = 10  # the grown and the scratch model get exactly the same number of steps
RUNS = 3  # grown-vs-scratch repeats: on 450 validation images one run alone differs by a few images of noise
EVAL_EVERY = 5  # steps between validation measurements (the points of the curves)
SMALL_WIDTHS = {"c1": 8, "c2": 16, "hidden": 64}
FACTOR = 2.0
NOISE = 1.0  # exact symmetry breaking: copies split each outgoing weight in element-wise unequal shares
DEEPEN_AFTER = ["conv2", "fc1"]  # each gets an identity layer (+ its ReLU) right after its activation


@dataclass
class Data:
    """Standardised digits as (N, 1, 8, 8) float32 tensors, split into train and validation."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class Curve:
    """Validation measurements taken during one training run."""

    steps: list[int] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def add(self, step: int, acc: float, loss: float) -> None:
        """Record one validation measurement."""
        self.steps.append(step)
        self.acc.append(acc)
        self.loss.append(loss)


class DigitsCNN(nn.Module):
    """conv-BN-ReLU x2, max-pool, two Linears. Every hidden width is a constructor argument.

    Configurable widths make the comparison fair: the from-scratch baseline is this class built with the
    widened sizes, so it has exactly the grown model's architecture (checked parameter by parameter).
    """

    def __init__(self, c1: int = 8, c2: int = 16, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)  # 8x8 input, one 2x2 max-pool -> 4x4 per channel
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def reinitialised(model: nn.Module) -> nn.Module:
    """A copy of `model` with every layer's PyTorch default init (BatchNorm statistics reset too)."""
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def heading(title: str) -> None:
    """Print a step heading that stands out in a terminal log."""
    print(f"\n== {title} " + "=" * max(0, 100 - len(title)), flush=True)


def n_params(model: nn.Module) -> int:
    """Number of parameters (tied parameters counted once, as `parameters()` yields them once)."""
    return sum(p.numel() for p in model.parameters())


def load_data() -> Data:
    """Digits from scikit-learn (bundled with the package, so no network), stratified 75/25 split.

    One mean and standard deviation, computed on the training split only, so nothing about the validation
    images leaks into training (a per-pixel std would be zero for the always-blank border pixels).
    """
    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=VAL_FRACTION, stratify=y, random_state=SEED)
    mean, std = x_tr.mean(), x_tr.std()

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)

    return Data(to_tensor(x_tr), torch.from_numpy(y_tr), to_tensor(x_va), torch.from_numpy(y_va))


@torch.no_grad()
def evaluate(model: nn.Module, data: Data) -> tuple[float, float]:
    """Validation (accuracy, mean cross-entropy) in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    logits = model(data.x_val)
    model.train(was_training)
    loss = F.cross_entropy(logits, data.y_val).item()
    acc = (logits.argmax(1) == data.y_val).float().mean().item()
    return acc, loss


def train(model: nn.Module, data: Data, epochs: int, seed: int, desc: str) -> Curve:
    """Adam at a fixed learning rate on seeded shuffled mini-batches; validation every `EVAL_EVERY` steps.

    The batch order depends only on `seed`, so a grown and a scratch model given the same seed see the very
    same batches. A fresh optimizer every time: the grown model gets no Adam state the scratch one lacks.
    """
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    total = epochs * ((n + BATCH_SIZE - 1) // BATCH_SIZE)
    curve = Curve()
    curve.add(0, *evaluate(model, data))
    step = 0
    model.train()
    with tqdm(total=total, desc=desc, unit="step", ncols=100, disable=None) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, BATCH_SIZE):
                idx = order[i:i + BATCH_SIZE]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                if step % EVAL_EVERY == 0 or step == total:
                    curve.add(step, *evaluate(model, data))
                    bar.set_postfix(val_acc=f"{curve.acc[-1]:.3f}", val_loss=f"{curve.loss[-1]:.3f}")
    model.eval()
    return curve


def checkpoints(last: int) -> list[int]:
    """Table rows: the start, a few early steps (where growing helps most), then quarters of the run."""
    quarters = {round(last * q / 4 / EVAL_EVERY) * EVAL_EVERY for q in (1, 2, 3)}  # snapped to measured steps
    picks = {0, EVAL_EVERY, 2 * EVAL_EVERY, 4 * EVAL_EVERY, last} | quarters
    return sorted(s for s in picks if 0 <= s <= last)


def values_at(curves: list[Curve], step: int, metric: str) -> np.ndarray:
    """One metric at one step, for every run."""
    return np.array([getattr(c, metric)[c.steps.index(step)] for c in curves])


def plot(pre: Curve, grown: list[Curve], scratch: list[Curve], path: Path) -> None:
    """Validation accuracy and loss against steps (mean line, min-max band over the runs).

    The small model's training is drawn at negative steps, so step 0 is the moment of growing.
    """
    pre_x = [s - pre.steps[-1] for s in pre.steps]
    steps = grown[0].steps  # every run measures at the same steps
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, label in ((axes[0], "acc", "validation accuracy"), (axes[1], "loss", "validation loss")):
        ax.plot(pre_x, getattr(pre, metric), color="0.45", label="small model (before growing)")
        for curves, color, name in ((grown, "tab:blue", f"widened {FACTOR:g}x + deepened with netgraft"),
                                    (scratch, "tab:orange", "same wide, deep net from scratch")):
            values = np.array([getattr(c, metric) for c in curves])
            ax.plot(steps, values.mean(0), color=color, label=f"{name} (mean of {len(curves)})")
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2, linewidth=0)
        ax.axvline(0, color="0.7", linestyle="--", linewidth=1)
        ax.set_xlabel("training step (0 = growing)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # scratch starts near 2.3 nats: a linear axis would flatten the later steps
    axes[0].legend(loc="center right")  # lower right would hide the scratch curve's rise
    fig.suptitle("netgraft.widen + deepen on 8x8 digits: keep training the grown net vs. the same net from scratch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_results(small_acc: float, grown: list[Curve], scratch: list[Curve]) -> None:
    """Comparison table at a few checkpoints, catch-up steps, and the final numbers."""
    last = grown[0].steps[-1]
    print(f"validation accuracy and loss, mean over {len(grown)} runs (min-max in brackets)")
    header = ("step", "grown acc", "scratch acc", "grown loss", "scratch loss")
    print(f"{header[0]:>5} | {header[1]:>21} | {header[2]:>21} | {header[3]:>10} | {header[4]:>12}")
    print("-" * 83)
    for s in checkpoints(last):
        ga, sa = values_at(grown, s, "acc"), values_at(scratch, s, "acc")
        gl, sl = values_at(grown, s, "loss"), values_at(scratch, s, "loss")
        print(f"{s:>5} | {ga.mean():.4f} ({ga.min():.3f}-{ga.max():.3f}) | "
              f"{sa.mean():.4f} ({sa.min():.3f}-{sa.max():.3f}) | {gl.mean():>10.4f} | {sl.mean():>12.4f}")
    # How long scratch needs to reach the accuracy the grown model has at step 0 (the small model's).
    reach = [next((s for s, a in zip(c.steps, c.acc, strict=True) if a >= small_acc), None) for c in scratch]
    reach_text = ", ".join(str(r) if r is not None else f">{last}" for r in reach)
    print(f"\nthe grown model starts at the small model's {small_acc:.4f} val accuracy; "
          f"scratch needs {reach_text} steps to reach it (runs 1-{len(scratch)})")
    g_final, s_final = values_at(grown, last, "acc"), values_at(scratch, last, "acc")
    print(f"final after {last} steps: grown {g_final.mean():.4f}, scratch {s_final.mean():.4f} val accuracy "
          f"(mean); grown ahead in {(g_final > s_final).sum()}/{len(grown)} runs, "
          f"tied in {(g_final == s_final).sum()}")


def main() -> None:
    """Run the six steps and write the plot."""
    t_start = time.perf_counter()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # sized for a 2-core machine; also aids repeatability
    torch.use_deterministic_algorithms(True)

    heading("1. Data: scikit-learn digits (8x8 grey images, 10 classes, bundled offline)")
    data = load_data()
    counts = torch.bincount(data.y_train, minlength=10).tolist()
    print(f"train {tuple(data.x_train.shape)}  val {tuple(data.x_val.shape)}  "
          f"(stratified split, seed {SEED}; {min(counts)}-{max(counts)} training images per class)")

    heading("2. Train a small CNN")
    torch.manual_seed(SEED)
    small = DigitsCNN(**SMALL_WIDTHS)
    sizes = ", ".join(f"{k}={v}" for k, v in SMALL_WIDTHS.items())
    print(f"DigitsCNN({sizes}): {n_params(small):,} parameters")
    t0 = time.perf_counter()
    pre = train(small, data, PRETRAIN_EPOCHS, seed=SEED, desc="small    ")
    t_pre = time.perf_counter() - t0
    small_acc, small_loss = evaluate(small, data)
    print(f"small model: val accuracy {small_acc:.4f}, val loss {small_loss:.4f} "
          f"after {pre.steps[-1]} steps ({t_pre:.1f} s)")

    heading(f"3. Widen it {FACTOR:g}x with netgraft.widen (function-preserving)")
    x_batch = data.x_train[:BATCH_SIZE]
    t0 = time.perf_counter()
    grown = netgraft.widen(small, FACTOR, example_inputs=(x_batch,), noise=NOISE, seed=SEED)
    t_widen = time.perf_counter() - t0
    cert = grown.netgraft_report.certificate
    print(grown.netgraft_report)  # the grown dimensions, then the certificate line (max |delta|, bound)
    print(f"parameters: {n_params(small):,} -> {n_params(grown):,} (widen took {t_widen * 1e3:.0f} ms)")
    assert cert.passed, f"widening did not preserve the function: {cert}"
    # The certificate is measured on the example batch; the held-out images give an independent check.
    grown_acc, grown_loss = evaluate(grown, data)
    val_cert = netgraft.check_preserved(small, grown, (data.x_val,))
    print(f"on the {len(data.x_val)} validation images: max |delta logits| = {val_cert.max_abs:.3g}, "
          f"accuracy {small_acc:.4f} -> {grown_acc:.4f}, loss {small_loss:.6f} -> {grown_loss:.6f}")
    assert val_cert.passed, f"not preserved on validation data: {val_cert}"

    heading("4. Deepen it with netgraft.deepen (function-preserving)")
    calibration = [data.x_train[i:i + 256] for i in range(0, len(data.x_train), 256)]
    t0 = time.perf_counter()
    deep = netgraft.deepen(grown, DEEPEN_AFTER, example_inputs=(x_batch,), data=calibration, seed=SEED)
    t_deepen = time.perf_counter() - t0
    print(deep.netgraft_report)
    print(f"parameters: {n_params(grown):,} -> {n_params(deep):,} (deepen took {t_deepen * 1e3:.0f} ms, "
          f"BatchNorm statistics from {len(calibration)} training batches)")
    assert deep.netgraft_report.certificate.passed, deep.netgraft_report.certificate
    deep_acc, deep_loss = evaluate(deep, data)
    val_cert = netgraft.check_preserved(small, deep, (data.x_val,))
    print(f"small -> widened -> deepened on the {len(data.x_val)} validation images: max |delta logits| = "
          f"{val_cert.max_abs:.3g}, accuracy {small_acc:.4f} -> {deep_acc:.4f}, loss {small_loss:.6f} -> "
          f"{deep_loss:.6f}")
    assert val_cert.passed, f"not preserved on validation data: {val_cert}"
    print(deep)

    heading("5. Keep training the grown model vs. the same wide and deep architecture from scratch")
    print("scratch: the grown architecture (same modules, same parameter shapes) re-initialised with PyTorch's "
          "default init")
    print(f"both: Adam lr {LR:g}, batch {BATCH_SIZE}, {GROW_EPOCHS} epochs, the same batch order; "
          f"{RUNS} runs (the widen/deepen seed, the scratch init and the batch order change per run)")
    grown_curves: list[Curve] = []
    scratch_curves: list[Curve] = []
    t_grown = t_scratch = 0.0
    for run in range(RUNS):
        if run > 0:  # run 0 trains the model grown above; later runs use other replication maps and noise
            wide = netgraft.widen(small, FACTOR, example_inputs=(x_batch,), noise=NOISE, seed=SEED + run)
            deep = netgraft.deepen(wide, DEEPEN_AFTER, example_inputs=(x_batch,), data=calibration, seed=SEED + run)
        torch.manual_seed(SEED + 100 + run)  # an init unrelated to the small model's
        scratch = reinitialised(deep)
        order_seed = SEED + 200 + run
        t0 = time.perf_counter()
        grown_curves.append(train(deep, data, GROW_EPOCHS, seed=order_seed, desc=f"grown {run + 1}/{RUNS}"))
        t_grown += time.perf_counter() - t0
        t0 = time.perf_counter()
        scratch_curves.append(
            train(scratch, data, GROW_EPOCHS, seed=order_seed, desc=f"scratch {run + 1}/{RUNS}"))
        t_scratch += time.perf_counter() - t0
    print(f"training time over {RUNS} runs: grown {t_grown:.1f} s, scratch {t_scratch:.1f} s")

    heading("6. Results")
    print_results(small_acc, grown_curves, scratch_curves)
    plot(pre, grown_curves, scratch_curves, PLOT_PATH)
    print(f"total time {time.perf_counter() - t_start:.1f} s")
    print(f"\nthe plot is at {PLOT_PATH}")
    print("try next: `make test` (exactness on 20+ architectures and real Hugging Face models); "
          "`.venv/bin/netgraft inspect <hf-model-dir>` then `netgraft widen|deepen` (grow a transformer exactly); "
          "`make bench-quick` (growth vs scratch in FLOPs, GradMax, injection; README tables)")


if __name__ == "__main__":
    main()
