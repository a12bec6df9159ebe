"""Test model zoo: small, fast, deterministic models written with plain `torch.nn`.

`ZOO` holds models the library must support; `UNSUPPORTED` holds models it must refuse to widen (fail closed).
Each entry's `build` and `inputs` use the global torch RNG, so the caller seeds torch first
(`torch.manual_seed(0)`) for a reproducible model and input.

Tags used on entries:
  conv        convolutional layers (1d/2d/3d or transposed)
  bn          BatchNorm running statistics
  layernorm   a LayerNorm or RMSNorm normalises a hidden width
  rmsnorm     uses `nn.RMSNorm`
  groupnorm   uses `nn.GroupNorm`
  transformer attention-based sequence model
  attention   computes attention (nn.MultiheadAttention or by hand)
  concat      `torch.cat` over the channel/feature axis
  inplace     in-place ops on activations (`nn.ReLU(inplace=True)`, `out += identity`)
  tied        one parameter is shared by two layers
  bare_param  forward uses bare `nn.Parameter`s outside any layer
  sequence    input is a (batch, tokens, features) or id sequence
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "UNSUPPORTED", "ZooEntry", "randomize_batchnorm_stats"]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and how to make an example input for it."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple]
    has_dropout: bool = False
    tags: frozenset[str] = frozenset()


# ----------------------------------------------------------------------------------------------------
# Helpers


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def _images(batch: int = 2, channels: int = 3, size: int = 16) -> tuple[torch.Tensor]:
    return (torch.randn(batch, channels, size, size),)


# ----------------------------------------------------------------------------------------------------
# Supported models


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear."""

    def __init__(self, d_in: int = 10, h1: int = 32, h2: int = 24, d_out: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class MLPGeluLN(nn.Module):
    """Linear-LayerNorm-GELU-Linear (LayerNorm over the hidden width)."""

    def __init__(self, d_in: int = 12, hidden: int = 32, d_out: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.ln(self.fc1(x))))


class VGGBN(nn.Module):
    """VGG-style net; the classifier flattens C*H*W channels-first features (no global pooling)."""

    def __init__(self, num_classes: int = 10, size: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 8),
            _conv_bn_relu(8, 8),
            nn.MaxPool2d(2),
            _conv_bn_relu(8, 16),
            _conv_bn_relu(16, 16),
            nn.MaxPool2d(2),
        )
        spatial = size // 4
        self.classifier = nn.Sequential(
            nn.Linear(16 * spatial * spatial, 32),
            nn.ReLU(),
            nn.Dropout(p=0.1),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.flatten(1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """ResNet basic block; `inplace_add` picks `out += identity` over `out = out + identity`."""

    def __init__(self, cin: int, cout: int, stride: int = 1, inplace_add: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        self.inplace_add = inplace_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.inplace_add:
            out += identity
        else:
            out = out + identity
        return self.relu(out)


class ResNet18Style(nn.Module):
    """Stem + 2 stages of 2 BasicBlocks (second stage stride 2 with 1x1 downsample) + avg pool + Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, inplace_add=True), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2, inplace_add=True), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand by 4; projection shortcut when needed."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50Style(nn.Module):
    """Stem + 2 stages of 2 Bottleneck blocks (widths 4 and 8 -> 16 and 32 channels) + pool + Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 8)
        self.layer1 = nn.Sequential(Bottleneck(8, 4), Bottleneck(16, 4))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, stride=2), Bottleneck(32, 8))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class InceptionBlock(nn.Module):
    """Four branches (1x1; 1x1->3x3; 1x1->5x5; maxpool->1x1) concatenated along channels."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.branch1 = _conv_bn_relu(cin, c1, k=1)
        self.branch3 = nn.Sequential(_conv_bn_relu(cin, c3r, k=1), _conv_bn_relu(c3r, c3, k=3))
        self.branch5 = nn.Sequential(_conv_bn_relu(cin, c5r, k=1), _conv_bn_relu(c5r, c5, k=5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(cin, cp, k=1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
        return torch.cat(outs, dim=1)


class Inception(nn.Module):
    """Stem conv, two inception blocks in sequence (concat feeds concat), 1x1 conv, pool, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 8)
        self.block1 = InceptionBlock(8, 4, 4, 6, 2, 4, 4)  # -> 18 channels
        self.block2 = InceptionBlock(18, 6, 4, 8, 2, 4, 4)  # -> 22 channels
        self.conv = _conv_bn_relu(22, 16, k=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        x = self.conv(x)
        return self.fc(x.mean((2, 3)))


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing `growth` new channels from the concat of all previous features."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv(self.relu(self.norm(x)))


class DenseNet(nn.Module):
    """Stem conv, one dense block of 3 layers (growth 4), transition (BN-ReLU-1x1conv-avgpool), head."""

    def __init__(self, num_classes: int = 10, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layers = nn.ModuleList(DenseLayer(8 + i * growth, growth) for i in range(3))
        cout = 8 + 3 * growth
        self.transition = nn.Sequential(
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, 10, 1, bias=False),
            nn.AvgPool2d(2),
        )
        self.norm = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        x = self.transition(torch.cat(features, 1))
        x = F.relu(self.norm(x))
        return self.fc(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN, residual add."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """Stem, 3 inverted residual blocks (two with residual), 1x1 conv, pool, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)
        )
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, stride=1, expand=2),
            InvertedResidual(8, 12, stride=2, expand=3),
            InvertedResidual(12, 12, stride=1, expand=2),
        )
        self.last = nn.Sequential(
            nn.Conv2d(12, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(inplace=True)
        )
        self.classifier = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """SE gating: x * sigmoid(fc2(relu(fc1(mean_hw(x))))) broadcast over H, W."""

    def __init__(self, channels: int, reduction: int = 4, use_view: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.use_view = use_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        if self.use_view:
            b, c = s.shape
            return x * s.view(b, c, 1, 1)
        return x * s[:, :, None, None]


class SENet(nn.Module):
    """Two conv-BN-ReLU stages, each followed by squeeze-and-excitation, pool, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(3, 16)
        self.se1 = SqueezeExcite(16)
        self.conv2 = _conv_bn_relu(16, 16)
        self.se2 = SqueezeExcite(16, use_view=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se1(self.conv1(x))
        x = self.se2(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class UNet(nn.Module):
    """Two down levels, bottleneck, two ConvTranspose2d up levels with concat skips, 1x1 output conv."""

    def __init__(self, cin: int = 3, n_classes: int = 2) -> None:
        super().__init__()
        self.enc1 = _conv_bn_relu(cin, 8)
        self.enc2 = _conv_bn_relu(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv_bn_relu(16, 32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec2 = _conv_bn_relu(32, 16)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = _conv_bn_relu(16, 8)
        self.out = nn.Conv2d(8, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)  # 16x16
        s2 = self.enc2(self.pool(s1))  # 8x8
        b = self.bottleneck(self.pool(s2))  # 4x4
        d2 = self.dec2(torch.cat([self.up2(b), s2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))
        return self.out(d1)


class GroupedConvNet(nn.Module):
    """Grouped conv (groups=4), depthwise conv (groups=C) and depthwise conv with channel multiplier 2."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 16)
        self.grouped = _conv_bn_relu(16, 16, groups=4)
        self.depthwise = _conv_bn_relu(16, 16, groups=16)
        self.dw_mult = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.bn_mult = nn.BatchNorm2d(32)
        self.pointwise = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.grouped(self.stem(x)))
        x = F.relu(self.bn_mult(self.dw_mult(x)))
        x = F.relu(self.pointwise(x))
        return self.fc(x.mean((2, 3)))


class TransformerPostNorm(nn.Module):
    """Token classifier: Embedding + learned positions, 2 post-norm encoder layers, token mean, Linear."""

    def __init__(self, vocab: int = 50, d: int = 32, tokens: int = 7, num_classes: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=False
            )
            for _ in range(2)
        )
        self.head = nn.Linear(d, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos[:, : ids.shape[1]]
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(dim=1))


class TransformerPreNorm(nn.Module):
    """Features -> Linear -> + positions -> nn.TransformerEncoder (pre-norm, GELU) -> LayerNorm -> head."""

    def __init__(self, d_in: int = 12, d: int = 32, tokens: int = 7, num_classes: int = 5) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=4,
            dim_feedforward=64,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x) + self.pos
        h = self.norm(self.encoder(h))
        return self.head(h.mean(dim=1))


class GroupNormCNN(nn.Module):
    """conv-GroupNorm(4)-SiLU-conv-GroupNorm(2)-ReLU-pool-Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.act1 = nn.SiLU()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.gn2 = nn.GroupNorm(2, 16)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.gn1(self.conv1(x)))
        x = self.act2(self.gn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class Conv1dNet(nn.Module):
    """Conv1d-BN1d-ReLU-Conv1d-ReLU-AdaptiveAvgPool1d-flatten-Linear."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(3, 8, 5, padding=2),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Conv1d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(16, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Conv3dNet(nn.Module):
    """Conv3d-BN3d-ReLU-Conv3d-mean-Linear."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.conv2 = nn.Conv3d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = self.conv2(x)
        return self.fc(x.mean((2, 3, 4)))


class TiedLM(nn.Module):
    """Embedding -> Linear-GELU -> LayerNorm -> output Linear whose weight IS the embedding weight."""

    def __init__(self, vocab: int = 60, d: int = 24) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc = nn.Linear(d, d)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.act(self.fc(self.emb(ids))))
        return self.head(h)


class BareParams(nn.Module):
    """Bare parameters in forward: per-channel conv scale, a bias added to a Linear, F.linear(x, w, b)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.randn(8, 1, 1))
        self.fc1 = nn.Linear(8, 16)
        self.bias = nn.Parameter(torch.randn(16) * 0.1)
        self.w = nn.Parameter(torch.randn(12, 16) / math.sqrt(16))
        self.b = nn.Parameter(torch.randn(12) * 0.1)
        self.fc2 = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x) * self.scale)
        x = F.relu(self.fc1(x.mean((2, 3))) + self.bias)
        x = F.relu(F.linear(x, self.w, self.b))
        return self.fc2(x)


class CausalSelfAttention(nn.Module):
    """Hand-written multi-head causal self-attention (GPT style), mask from a registered buffer."""

    def __init__(self, d: int, n_head: int, block_size: int) -> None:
        super().__init__()
        assert d % n_head == 0
        self.n_head = n_head
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        mask = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        hd = C // self.n_head
        q = self.q(x).view(B, T, self.n_head, hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_head, hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_head, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class GPTBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, d: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_head, block_size)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        x = x + self.fc_out(self.act(self.fc(self.ln2(x))))
        return x


class CustomAttention(nn.Module):
    """Input Linear(10->32), one hand-written GPT block, final LayerNorm, per-token Linear head."""

    def __init__(
        self, d_in: int = 10, d: int = 32, n_head: int = 4, block_size: int = 8, d_out: int = 7
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.block = GPTBlock(d, n_head, block_size)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(self.block(self.inp(x))))


class RMSNormSwiGLU(nn.Module):
    """LLaMA-style: x + down(silu(gate(rms(x))) * up(rms(x))), final RMSNorm, head."""

    def __init__(self, d_in: int = 8, d: int = 32, hidden: int = 64, d_out: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.norm = nn.RMSNorm(d)
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.norm_f = nn.RMSNorm(d)
        self.head = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        n = self.norm(h)
        h = h + self.down(F.silu(self.gate(n)) * self.up(n))
        return self.head(self.norm_f(h))


class MHAPlain(nn.Module):
    """Linear -> residual nn.MultiheadAttention self-attention (need_weights=False) -> Linear."""

    def __init__(self, d_in: int = 10, d: int = 24, n_head: int = 3, d_out: int = 5) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.attn = nn.MultiheadAttention(embed_dim=d, num_heads=n_head, batch_first=True)
        self.out = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(h + a)


# ----------------------------------------------------------------------------------------------------
# Unsupported models (the library must refuse to widen them)


class ChannelShuffle(nn.Module):
    """conv -> ShuffleNet channel shuffle (view/transpose/reshape) -> conv -> pool -> Linear."""

    def __init__(self, groups: int = 2, num_classes: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        b, c, h, w = x.shape
        g = self.groups
        x = x.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class LSTMNet(nn.Module):
    """Linear -> nn.LSTM (consumes the Linear's features) -> Linear."""

    def __init__(self, d_in: int = 6, d: int = 16, hidden: int = 12, d_out: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.lstm = nn.LSTM(d, hidden, batch_first=True)
        self.out = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(F.relu(self.inp(x)))
        return self.out(h)


class HardcodedShape(nn.Module):
    """Linear(8->16) -> h + torch.ones(16) (constant with a hard-coded size) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x) + torch.ones(16)
        return self.fc2(F.relu(h))


class ChannelReduce(nn.Module):
    """conv -> sum over the channel axis (keepdim) -> flatten -> Linear."""

    def __init__(self, size: int = 6, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = x.sum(dim=1, keepdim=True)
        return self.fc(x.flatten(1))


# ----------------------------------------------------------------------------------------------------
# Example inputs


def _in_mlp() -> tuple:
    return (torch.randn(4, 10),)


def _in_mlp_ln() -> tuple:
    return (torch.randn(4, 12),)


def _in_img16() -> tuple:
    return _images(2, 3, 16)


def _in_img12() -> tuple:
    return _images(2, 3, 12)


def _in_img8() -> tuple:
    return _images(2, 3, 8)


def _in_img6() -> tuple:
    return _images(2, 3, 6)


def _in_ids50x7() -> tuple:
    return (torch.randint(0, 50, (2, 7)),)


def _in_seq_7x12() -> tuple:
    return (torch.randn(2, 7, 12),)


def _in_conv1d() -> tuple:
    return (torch.randn(4, 3, 40),)


def _in_conv3d() -> tuple:
    return (torch.randn(2, 2, 6, 6, 6),)


def _in_ids60x9() -> tuple:
    return (torch.randint(0, 60, (2, 9)),)


def _in_seq_6x10() -> tuple:
    return (torch.randn(2, 6, 10),)


def _in_seq_5x8() -> tuple:
    return (torch.randn(2, 5, 8),)


def _in_seq_5x6() -> tuple:
    return (torch.randn(2, 5, 6),)


def _in_vec8() -> tuple:
    return (torch.randn(4, 8),)


def _entry(
    name: str,
    build: Callable[[], nn.Module],
    inputs: Callable[[], tuple],
    tags: tuple[str, ...] = (),
    has_dropout: bool = False,
) -> ZooEntry:
    return ZooEntry(name=name, build=build, inputs=inputs, has_dropout=has_dropout, tags=frozenset(tags))


_SUPPORTED = [
    _entry("mlp", MLP, _in_mlp),
    _entry("mlp_gelu_ln", MLPGeluLN, _in_mlp_ln, ("layernorm",)),
    _entry("vgg_bn", VGGBN, _in_img16, ("conv", "bn"), has_dropout=True),
    _entry("resnet18_style", ResNet18Style, _in_img16, ("conv", "bn", "inplace")),
    _entry("resnet50_style", ResNet50Style, _in_img16, ("conv", "bn", "inplace")),
    _entry("inception", Inception, _in_img16, ("conv", "bn", "concat")),
    _entry("densenet", DenseNet, _in_img16, ("conv", "bn", "concat")),
    _entry("mobilenetv2", MobileNetV2, _in_img16, ("conv", "bn", "inplace")),
    _entry("se_net", SENet, _in_img12, ("conv", "bn")),
    _entry("unet", UNet, _in_img16, ("conv", "bn", "concat")),
    _entry("grouped_conv", GroupedConvNet, _in_img12, ("conv", "bn")),
    _entry(
        "transformer_postnorm", TransformerPostNorm, _in_ids50x7, ("transformer", "layernorm", "attention")
    ),
    _entry(
        "transformer_prenorm", TransformerPreNorm, _in_seq_7x12, ("transformer", "layernorm", "attention")
    ),
    _entry("groupnorm_cnn", GroupNormCNN, _in_img12, ("conv", "groupnorm")),
    _entry("conv1d", Conv1dNet, _in_conv1d, ("conv", "bn")),
    _entry("conv3d", Conv3dNet, _in_conv3d, ("conv", "bn")),
    _entry("tied_lm", TiedLM, _in_ids60x9, ("layernorm", "tied", "sequence")),
    _entry("bare_params", BareParams, _in_img8, ("conv", "bare_param")),
    _entry("custom_attention", CustomAttention, _in_seq_6x10, ("transformer", "layernorm", "attention")),
    _entry("rmsnorm_swiglu", RMSNormSwiGLU, _in_seq_5x8, ("layernorm", "rmsnorm", "sequence")),
    _entry("mha_plain", MHAPlain, _in_seq_6x10, ("transformer", "attention")),
]

_REFUSED = [  # (a channel shuffle `view(b, self.groups, c // self.groups, h, w)` now grows its groups exactly:
    # tests/test_handwritten_attention.py)
    _entry("lstm", LSTMNet, _in_seq_5x6, ("sequence",)),
    _entry("hardcoded_shape", HardcodedShape, _in_vec8),
    _entry("channel_reduce", ChannelReduce, _in_img6, ("conv",)),
]

ZOO: dict[str, ZooEntry] = {e.name: e for e in _SUPPORTED}
UNSUPPORTED: dict[str, ZooEntry] = {e.name: e for e in _REFUSED}


# ----------------------------------------------------------------------------------------------------
# Norm statistics

_AFFINE_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


@torch.no_grad()
def randomize_batchnorm_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every norm layer random, non-trivial statistics and affine parameters, in place.

    BatchNorm/InstanceNorm running_mean ~ N(0, 0.5^2), running_var ~ U(0.5, 2.0) (always positive);
    affine weight ~ 1 + N(0, 0.3^2) (mostly away from 0), bias ~ N(0, 0.3^2) for BatchNorm, InstanceNorm,
    LayerNorm, GroupNorm and RMSNorm. Uses its own generator, so the global torch RNG is untouched.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand_like(t: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "normal":
            r = torch.randn(t.shape, generator=gen)
        else:
            r = torch.rand(t.shape, generator=gen)
        return r.to(dtype=t.dtype, device=t.device)

    for module in model.modules():
        if not isinstance(module, _AFFINE_NORMS):
            continue
        mean = getattr(module, "running_mean", None)
        var = getattr(module, "running_var", None)
        if isinstance(mean, torch.Tensor):
            mean.copy_(rand_like(mean, "normal") * 0.5)
        if isinstance(var, torch.Tensor):
            var.copy_(rand_like(var, "uniform") * 1.5 + 0.5)
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):
            weight.copy_(1.0 + 0.3 * rand_like(weight, "normal"))
        if isinstance(bias, torch.Tensor):
            bias.copy_(0.3 * rand_like(bias, "normal"))
