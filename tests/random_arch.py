"""Hypothesis strategies for random, small, valid architectures.

`random_models()` draws `(model, example_inputs)`. Internally a plain spec (`MLPSpec` / `CNNSpec`) is
drawn first and built by `build_model(spec)`, which is deterministic: the spec carries its own seed, and
building never touches the global torch RNG. Use `random_specs()` + `build_model` + `make_inputs` when the
test wants the spec too (it is also stored on the model as `model.spec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

try:  # works both when tests/ is a package and when it is only on sys.path
    from .zoo import randomize_batchnorm_stats
except ImportError:  # pragma: no cover
    from zoo import randomize_batchnorm_stats

__all__ = [
    "MLPBlockSpec",
    "MLPSpec",
    "ConvBlockSpec",
    "CNNSpec",
    "build_model",
    "make_inputs",
    "mlp_specs",
    "cnn_specs",
    "random_specs",
    "random_models",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
MAX_SEED = 2**31 - 1


# ----------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class MLPBlockSpec:
    """One MLP block. kind 'dense': Linear(w_in, width) [-> LayerNorm] -> act.
    kind 'residual': x + Linear(hidden, w_in)(act([LayerNorm] Linear(w_in, hidden)(x))) (width = hidden)."""

    kind: str  # "dense" | "residual"
    width: int
    act: str
    layernorm: bool


@dataclass(frozen=True)
class MLPSpec:
    in_features: int
    stem_width: int
    blocks: tuple[MLPBlockSpec, ...]
    out_features: int
    batch: int
    seed: int
    randomize_norms: bool = True


@dataclass(frozen=True)
class ConvBlockSpec:
    """One CNN block.

    conv:     Conv2d(c_in, width, k, padding=k//2, groups) [-> BN] -> ReLU
    residual: relu(x + BN(conv(relu(BN(conv(x)))))) keeping c_in channels (width ignored, kernel k, groups)
    concat:   relu(cat([conv1x1(x) -> width, conv3x3(x) -> width2], dim=1)) -> width + width2 channels
    pool:     MaxPool2d(2) (only drawn when the spatial size allows)
    """

    kind: str  # "conv" | "residual" | "concat" | "pool"
    width: int = 0
    width2: int = 0
    kernel: int = 3
    groups: int = 1
    bn: bool = True


@dataclass(frozen=True)
class CNNSpec:
    in_channels: int
    size: int
    stem_width: int
    stem_kernel: int
    blocks: tuple[ConvBlockSpec, ...]
    head: str  # "gap_mean" | "gap_pool" | "flatten"
    out_features: int
    batch: int
    seed: int
    randomize_norms: bool = True


# ----------------------------------------------------------------------------------------------------
# Modules


class MLPDense(nn.Module):
    """Linear [-> LayerNorm] -> activation."""

    def __init__(self, w_in: int, spec: MLPBlockSpec) -> None:
        super().__init__()
        self.fc = nn.Linear(w_in, spec.width)
        self.norm = nn.LayerNorm(spec.width) if spec.layernorm else nn.Identity()
        self.act = ACTIVATIONS[spec.act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.fc(x)))


class MLPResidual(nn.Module):
    """x + fc2(act([LayerNorm] fc1(x)))."""

    def __init__(self, w_in: int, spec: MLPBlockSpec) -> None:
        super().__init__()
        self.fc1 = nn.Linear(w_in, spec.width)
        self.norm = nn.LayerNorm(spec.width) if spec.layernorm else nn.Identity()
        self.act = ACTIVATIONS[spec.act]()
        self.fc2 = nn.Linear(spec.width, w_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.norm(self.fc1(x))))


class RandomMLP(nn.Module):
    """Linear stem -> blocks -> Linear head."""

    def __init__(self, spec: MLPSpec) -> None:
        super().__init__()
        self.stem = nn.Linear(spec.in_features, spec.stem_width)
        blocks: list[nn.Module] = []
        w = spec.stem_width
        for b in spec.blocks:
            if b.kind == "dense":
                blocks.append(MLPDense(w, b))
                w = b.width
            else:
                blocks.append(MLPResidual(w, b))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(w, spec.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


class ConvBNReLU(nn.Module):
    """Conv2d [-> BatchNorm2d] -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=not bn)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvResidual(nn.Module):
    """relu(x + bn2(conv2(relu(bn1(conv1(x))))))."""

    def __init__(self, c: int, kernel: int, groups: int = 1, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=groups, bias=not bn)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(c, c, kernel, padding=kernel // 2, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(x + out)


class ConvConcat(nn.Module):
    """relu(cat([1x1 branch, 3x3 branch], dim=1))."""

    def __init__(self, c_in: int, w1: int, w2: int, bn: bool = True) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(c_in, w1, 1)
        self.branch3 = nn.Conv2d(c_in, w2, 3, padding=1)
        self.bn = nn.BatchNorm2d(w1 + w2) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(torch.cat([self.branch1(x), self.branch3(x)], dim=1)))


class RandomCNN(nn.Module):
    """Conv stem -> blocks -> global pooling or flatten -> Linear head."""

    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        self.head_kind = spec.head
        self.stem = ConvBNReLU(spec.in_channels, spec.stem_width, spec.stem_kernel)
        c, size = spec.stem_width, spec.size
        blocks: list[nn.Module] = []
        for b in spec.blocks:
            if b.kind == "conv":
                blocks.append(ConvBNReLU(c, b.width, b.kernel, b.groups, b.bn))
                c = b.width
            elif b.kind == "residual":
                blocks.append(ConvResidual(c, b.kernel, b.groups, b.bn))
            elif b.kind == "concat":
                blocks.append(ConvConcat(c, b.width, b.width2, b.bn))
                c = b.width + b.width2
            elif b.kind == "pool":
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            else:  # pragma: no cover
                raise ValueError(f"unknown block kind {b.kind!r}")
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if spec.head == "gap_pool" else nn.Identity()
        head_in = c * size * size if spec.head == "flatten" else c
        self.head = nn.Linear(head_in, spec.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.head_kind == "gap_mean":
            x = x.mean((2, 3))
        else:  # "gap_pool" pools to 1x1 first; "flatten" keeps C*H*W channels-first
            x = self.pool(x).flatten(1)
        return self.head(x)


# ----------------------------------------------------------------------------------------------------
# Building


def build_model(spec: MLPSpec | CNNSpec) -> nn.Module:
    """Build `spec` in eval mode, seeded from spec.seed (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model: nn.Module = RandomMLP(spec) if isinstance(spec, MLPSpec) else RandomCNN(spec)
    if spec.randomize_norms:
        randomize_batchnorm_stats(model, seed=spec.seed)
    model.spec = spec  # type: ignore[assignment]  # plain frozen dataclass; kept for debugging
    return model.eval()


def make_inputs(spec: MLPSpec | CNNSpec) -> tuple[torch.Tensor]:
    """Example input for `spec` (seeded from spec.seed + 1; the global RNG is left as it was)."""
    gen = torch.Generator().manual_seed(spec.seed + 1)
    if isinstance(spec, MLPSpec):
        return (torch.randn(spec.batch, spec.in_features, generator=gen),)
    return (torch.randn(spec.batch, spec.in_channels, spec.size, spec.size, generator=gen),)


# ----------------------------------------------------------------------------------------------------
# Strategies

_widths = st.integers(2, 16)
_even_widths = st.integers(1, 8).map(lambda n: 2 * n)


@st.composite
def _mlp_block(draw: st.DrawFn) -> MLPBlockSpec:
    return MLPBlockSpec(
        kind=draw(st.sampled_from(["dense", "residual"])),
        width=draw(_widths),
        act=draw(st.sampled_from(sorted(ACTIVATIONS))),
        layernorm=draw(st.booleans()),
    )


@st.composite
def mlp_specs(draw: st.DrawFn, randomize_norms: bool = True) -> MLPSpec:
    """Random MLP spec: depth 1-4 blocks, widths 2-16."""
    return MLPSpec(
        in_features=draw(_widths),
        stem_width=draw(_widths),
        blocks=tuple(draw(st.lists(_mlp_block(), min_size=1, max_size=4))),
        out_features=draw(st.integers(1, 8)),
        batch=draw(st.integers(2, 4)),
        seed=draw(st.integers(0, MAX_SEED)),
        randomize_norms=randomize_norms,
    )


@st.composite
def cnn_specs(draw: st.DrawFn, randomize_norms: bool = True, grouped_after_concat: bool = False) -> CNNSpec:
    """Random CNN spec: depth 1-4 blocks, channels 2-16, images 4x4 to 8x8.

    Unless `grouped_after_concat`, no grouped conv reads channels that come from a concat (directly or through
    pool/residual blocks): splitting concatenated channels into conv groups is a pattern the library refuses.
    """
    size = draw(st.sampled_from([4, 6, 8]))
    stem_width = draw(_widths)
    c, cur = stem_width, size
    from_concat = False  # channels are (still) the output of a concat block
    blocks: list[ConvBlockSpec] = []
    n_blocks = draw(st.integers(1, 4))
    while len(blocks) < n_blocks:
        kinds = ["conv", "residual", "concat"] + (["pool"] if cur >= 4 else [])
        kind = draw(st.sampled_from(kinds))
        bn = draw(st.booleans())
        kernel = draw(st.sampled_from([1, 3]))
        may_group = c % 2 == 0 and (grouped_after_concat or not from_concat)
        if kind == "conv":
            grouped = may_group and draw(st.booleans())
            width = draw(_even_widths if grouped else _widths)
            blocks.append(
                ConvBlockSpec("conv", width=width, kernel=kernel, groups=2 if grouped else 1, bn=bn)
            )
            c, from_concat = width, False
        elif kind == "residual":
            grouped = may_group and draw(st.booleans())
            blocks.append(ConvBlockSpec("residual", kernel=kernel, groups=2 if grouped else 1, bn=bn))
        elif kind == "concat":
            w1, w2 = draw(st.integers(1, 8)), draw(st.integers(1, 8))
            blocks.append(ConvBlockSpec("concat", width=w1, width2=w2, bn=bn))
            c, from_concat = w1 + w2, True
        else:
            blocks.append(ConvBlockSpec("pool"))
            cur //= 2
    return CNNSpec(
        in_channels=draw(st.integers(1, 4)),
        size=size,
        stem_width=stem_width,
        stem_kernel=draw(st.sampled_from([1, 3])),
        blocks=tuple(blocks),
        head=draw(st.sampled_from(["gap_mean", "gap_pool", "flatten"])),
        out_features=draw(st.integers(1, 8)),
        batch=draw(st.integers(2, 4)),
        seed=draw(st.integers(0, MAX_SEED)),
        randomize_norms=randomize_norms,
    )


def random_specs(
    randomize_norms: bool = True, grouped_after_concat: bool = False
) -> st.SearchStrategy[MLPSpec | CNNSpec]:
    """Either an MLP or a CNN spec (see `cnn_specs` for `grouped_after_concat`)."""
    return st.one_of(mlp_specs(randomize_norms), cnn_specs(randomize_norms, grouped_after_concat))


def _build_pair(spec: MLPSpec | CNNSpec) -> tuple[nn.Module, tuple[torch.Tensor]]:
    return build_model(spec), make_inputs(spec)


def random_models(
    randomize_norms: bool = True, grouped_after_concat: bool = False
) -> st.SearchStrategy[tuple[nn.Module, tuple[torch.Tensor]]]:
    """Strategy for `(model, example_inputs)`; model in eval mode, norms randomised unless told not to."""
    return random_specs(randomize_norms, grouped_after_concat).map(_build_pair)
