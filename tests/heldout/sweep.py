"""The held-out architectures, their inputs, and the checks the sweep makes itself.

Nothing here asks netgraft whether a result is right: outputs are compared by running both models on fresh inputs
(other batch sizes, other values, other spatial sizes or sequence lengths where the architecture allows), in eval and
in train mode, on deep copies so that no model's BatchNorm statistics or mode change.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import netgraft

from . import models_sequence as seq
from . import models_vision as vis

# a refusal must be one of these, and name a module path or an op
REFUSALS = (netgraft.UnsupportedModelError, ValueError, KeyError, TypeError)


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]  # the model under test
    variant: Callable[[], nn.Module]  # a wider and/or deeper model of the same family, same inputs (inject target)
    shapes: tuple  # example input shape (trace), then fresh shapes (other batch sizes / sizes / lengths)
    anchors: tuple[str, ...]  # deepen anchors: a block and a layer
    vocab: int = 0  # > 0: inputs are token ids below this
    timesteps: bool = False  # a second input: one diffusion timestep per sample

    def inputs(self, shape: tuple, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        if self.vocab:
            return (torch.randint(0, self.vocab, shape, generator=g),)
        x = torch.randn(shape, generator=g).to(dtype)
        if self.timesteps:
            return (x, torch.randint(0, 1000, (shape[0],), generator=g))
        return (x,)

    def example(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor]:
        return self.inputs(self.shapes[0], 100, dtype)

    def fresh(self, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor]]:
        return [self.inputs(s, 200 + i, dtype) for i, s in enumerate(self.shapes[1:])]

    def data(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor]:
        """A calibration batch like the example (more samples, other values)."""
        return self.inputs((8, *self.shapes[0][1:]), 300, dtype)


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("preact_resnet", vis.PreActResNet, lambda: vis.PreActResNet((3, 2), (12, 24)),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 20, 20), (4, 3, 9, 9)),
         ("layer1.1", "layer2.0.conv1")),
    Arch("densenet_bc", vis.DenseNetBC, lambda: vis.DenseNetBC((4, 3), growth_rate=6),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 20, 20), (4, 3, 10, 10)),
         ("dense2.0.conv1", "trans1.conv")),
    Arch("mobilenet_v2", vis.MobileNetV2,
         lambda: vis.MobileNetV2(setting=[[1, 12, 1, 1], [6, 16, 3, 2], [6, 24, 2, 2]], width=12, last=48),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 24, 24), (4, 3, 12, 12)),
         ("features.3", "features.6.0")),
    Arch("efficientnet_mbconv", vis.EfficientNetTiny,
         lambda: vis.EfficientNetTiny(stem=12, head=48, blocks=[(12, 12, 1, 3, 1), (12, 16, 6, 3, 2),
                                                                (16, 16, 6, 5, 1), (16, 16, 6, 5, 1),
                                                                (16, 24, 6, 5, 2)]),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 24, 24), (4, 3, 12, 12)),
         ("blocks.2", "head.0")),
    Arch("convnext", vis.ConvNeXt, lambda: vis.ConvNeXt(depths=(3, 2), dims=(12, 24)),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 24, 24), (2, 3, 8, 8)),
         ("stages.0.1", "stages.1.0.pwconv1")),
    Arch("vit", vis.VisionTransformer, lambda: vis.VisionTransformer(dim=24, depth=3, heads=3),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 16, 16)),
         ("blocks.1", "blocks.0.mlp.0")),
    Arch("mlp_mixer", vis.MLPMixer, lambda: vis.MLPMixer(dim=24, depth=3, token_hidden=12, channel_hidden=48),
         ((2, 3, 16, 16), (3, 3, 16, 16), (5, 3, 16, 16)),
         ("blocks.0", "blocks.1.token_mixing.fc1")),
    Arch("unet", vis.UNet, lambda: vis.UNet(base=12),
         ((2, 3, 16, 16), (3, 3, 16, 16), (3, 3, 20, 20), (2, 3, 18, 18)),
         ("inc.double_conv.3", "up2.conv")),
    Arch("nanogpt", seq.NanoGPT, lambda: seq.NanoGPT(n_layer=3, n_head=3, n_embd=24),
         ((2, 8), (3, 12), (4, 16), (5, 3)),
         ("transformer.h.0", "transformer.h.1.mlp.c_fc"), vocab=32),
    Arch("llama", seq.Llama, lambda: seq.Llama(dim=24, n_layers=3, n_heads=6, n_kv_heads=3),
         ((2, 8), (3, 12), (4, 16), (5, 3)),
         ("layers.0", "layers.1.feed_forward.w1"), vocab=32),
    Arch("wavenet", seq.WaveNet,
         lambda: seq.WaveNet(residual_channels=12, dilation_channels=12, skip_channels=24, end_channels=24,
                             dilations=(1, 2, 4, 8, 1, 2, 4, 8)),
         ((2, 1, 32), (3, 1, 32), (3, 1, 50), (2, 1, 9)),
         ("end1", "start")),
    Arch("pointnet", seq.PointNetCls, lambda: seq.PointNetCls(widths=(24, 48, 96), fc=(48, 24)),
         ((4, 3, 32), (3, 3, 32), (3, 3, 50), (6, 3, 17)),
         ("conv2", "stn.fc2")),
    Arch("tcn", seq.TCN, lambda: seq.TCN(num_channels=(12, 12, 16, 16), kernel_size=3),
         ((2, 2, 24), (3, 2, 24), (3, 2, 40), (2, 2, 7)),
         ("tcn.network.1", "tcn.network.0.conv2")),
    Arch("ddpm_unet", vis.DDPMUNet, lambda: vis.DDPMUNet(ch=12, ch_mult=(1, 2, 2)[:2], groups=4),
         ((2, 3, 8, 8), (3, 3, 8, 8), (2, 3, 12, 12), (4, 3, 4, 4)),
         ("mid_block2", "upsample_conv"), timesteps=True),
    Arch("gru", seq.GRUClassifier, lambda: seq.GRUClassifier(embed=12, hidden=24),
         ((2, 7), (3, 7), (3, 12), (4, 3)),
         ("embedding", "fc"), vocab=20),
]}

NAMES = sorted(ARCHS)


def make_trained_(model: nn.Module, arch: Arch, seed: int = 0) -> nn.Module:
    """Make a freshly built model look trained: every 1-D parameter (norm gains and shifts, biases, layer scales) is
    moved away from its init, and BatchNorm running statistics are what training leaves behind: measured on a few
    batches (so units are alive in eval mode as in a trained model), then moved a little off them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g).to(p))
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
            model.train()
            for i in range(3):
                model(*arch.inputs((8, *arch.shapes[0][1:]), 1000 + seed * 10 + i))
            for m in bns:
                m.momentum = 0.1
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(0.8 + 0.45 * torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def build(arch: Arch, dtype: torch.dtype = torch.float32, seed: int = 0, variant: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = (arch.variant if variant else arch.build)()
    make_trained_(model, arch, seed)
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------------------------------------------
# output comparison, done here (not by netgraft.check_preserved)


def run(model: nn.Module, inputs: tuple, train: bool) -> torch.Tensor:
    m = copy.deepcopy(model)  # BatchNorm statistics of `model` stay as they are
    m.train(train)
    with torch.no_grad():
        return m(*inputs)


def bound(dtype: torch.dtype, max_ref: float) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5 * (1.0 + max_ref)


def mismatches(source: nn.Module, result: nn.Module, inputs_list: list[tuple], modes=(False, True)) -> list[str]:
    """Every (input, mode) where the result's output is not within the exactness bound of the source's."""
    dtype = next(source.parameters()).dtype
    bad = []
    for inputs in inputs_list:
        for train in modes:
            ya, yb = run(source, inputs, train), run(result, inputs, train)
            where = f"input {tuple(inputs[0].shape)}, {'train' if train else 'eval'} mode"
            if ya.shape != yb.shape:
                bad.append(f"{where}: output shape {tuple(yb.shape)} != {tuple(ya.shape)}")
                continue
            delta = (ya.double() - yb.double()).abs().max().item()
            ref = ya.double().abs().max().item()
            if not delta <= bound(dtype, ref):
                bad.append(f"{where}: max|delta| = {delta:.3g} > bound {bound(dtype, ref):.3g} (max|y| = {ref:.3g})")
    return bad


def assert_same_function(source: nn.Module, result: nn.Module, inputs_list: list[tuple], modes=(False, True)) -> None:
    bad = mismatches(source, result, inputs_list, modes)
    assert not bad, "result computes a different function:\n  " + "\n  ".join(bad)


# ----------------------------------------------------------------------------------------------------------------
# source untouched


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[bool]]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def assert_unchanged(model: nn.Module, snap) -> None:
    state, modes, grads = snap
    now = model.state_dict()
    assert list(now) == list(state), "the source's state_dict keys changed"
    for k, v in state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), f"source tensor '{k}' was modified"
    assert [m.training for m in model.modules()] == modes, "the source's train/eval modes changed"
    assert [p.requires_grad for p in model.parameters()] == grads


# ----------------------------------------------------------------------------------------------------------------
# refusals


_OPS = {n.lower() for n in dir(torch) + dir(torch.nn.functional) + dir(torch.Tensor) if len(n) > 2 and n.isidentifier()}


def assert_named_refusal(err: BaseException, model: nn.Module) -> str:
    """A refusal must be netgraft's own error (or a ValueError/KeyError/TypeError for a bad request) whose message names
    a module path of the model or the op involved. Returns the message."""
    assert isinstance(err, REFUSALS), f"{type(err).__name__} is not a netgraft refusal: {err}"
    msg = str(err)
    paths = [n for n, _ in model.named_modules() if n]
    quoted = re.findall(r"'([^']+)'|`([^`]+)`", msg)
    words = {w for pair in quoted for w in pair if w}
    named = any(p in msg for p in paths) or any(w.split("(")[0].lower() in _OPS for w in words) or \
        any(re.search(rf"\bop '{re.escape(o)}'", msg) for o in ("lstm", "gru", "rnn"))
    assert named, f"refusal names neither a module path nor an op: {type(err).__name__}: {msg}"
    return msg


def calls_of(model: nn.Module, path: str, inputs: tuple) -> int:
    """How often the module at `path` (a name from `model.named_modules()`) runs in one eval forward."""
    count = [0]
    handle = model.get_submodule(path).register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        run(model, inputs, False)  # runs a deep copy: count through the copy's hook
    finally:
        handle.remove()
    return count[0]


def assert_deepen_refusal(err: BaseException, model: nn.Module, anchors, inputs: tuple) -> str:
    """A deepen refusal: netgraft's error naming a path or op; a ValueError ("bad request") only when an anchor really
    is not a module that runs once (a module that runs once is a valid request, whatever netgraft then decides)."""
    msg = assert_named_refusal(err, model)
    if isinstance(err, ValueError) and not isinstance(err, netgraft.UnsupportedModelError):
        names = {n for n, _ in model.named_modules()}
        valid = [a for a in ([anchors] if isinstance(anchors, str) else anchors)
                 if a in names and calls_of(model, a, inputs) == 1]
        assert len(valid) < len([anchors] if isinstance(anchors, str) else anchors), (
            f"deepen rejected valid anchors {valid} (each a module of named_modules() that runs once) as a bad "
            f"request: {msg}")
    return msg


# ----------------------------------------------------------------------------------------------------------------
# gradients


def _loss(model: nn.Module, inputs: tuple, seed: int = 7) -> torch.Tensor:
    out = model(*inputs)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g).to(out)
    return (out * w).sum()


def grads_after(model: nn.Module, inputs: tuple, steps: int = 1) -> dict[str, torch.Tensor]:
    """|grad| accumulated over `steps` SGD steps in train mode, on a copy of `model`."""
    m = copy.deepcopy(model).train()
    params = dict(m.named_parameters())
    seen = {k: torch.zeros_like(p) for k, p in params.items()}
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        _loss(m, inputs).backward()
        for k, p in params.items():
            if p.grad is not None:
                seen[k] += p.grad.detach().abs()
        opt.step()
    return seen


def dead_parameters(model: nn.Module, inputs: tuple, steps: int = 1, grads=None) -> list[str]:
    grads = grads_after(model, inputs, steps) if grads is None else grads
    return [k for k, g in grads.items() if not bool((g != 0).any())]


def _per_unit(g: torch.Tensor, axis: int) -> torch.Tensor:
    other = [d for d in range(g.dim()) if d != axis]
    return g.abs().amax(dim=other) if other else g.abs()


def dead_new_units(source: nn.Module, result: nn.Module, inputs: tuple, src_grads=None, res_grads=None) -> list[str]:
    """Grown parameters (same name, larger shape) with a new row/column that gets no gradient after one backward,
    where every old row/column of the source gets one (a copy of a unit that is silent in the source may be silent
    too)."""
    src = grads_after(source, inputs) if src_grads is None else src_grads
    res = grads_after(result, inputs) if res_grads is None else res_grads
    scale = max(float(g.abs().max()) for g in src.values())
    bad = []
    for name, g in res.items():
        old = src.get(name)
        if old is None or old.shape == g.shape or old.dim() != g.dim():
            continue
        # alive: above round-off of the largest gradient (float32: 1e-7; float64: 1e-13, where with split noise a
        # copy's share of a small gradient, e.g. a LayerNorm bias, can be small by chance yet far from zero)
        thresh = (1e-13 if g.dtype == torch.float64 else 1e-7) * scale
        for axis, (a, b) in enumerate(zip(old.shape, g.shape, strict=True)):
            if b <= a or not bool((_per_unit(old, axis) > thresh).all()):
                continue
            alive = _per_unit(g.narrow(axis, a, b - a), axis) > thresh
            if not bool(alive.all()):
                bad.append(f"{name} axis {axis}: new units {[a + int(i) for i in torch.nonzero(~alive).flatten()]}")
    return bad
