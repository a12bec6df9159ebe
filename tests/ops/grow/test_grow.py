"""grow_: in-place growth during training (GradMax, random, zeros, Net2Net) with optimizer state transport."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgraft


def _mlp(act: type[nn.Module] = nn.Tanh, hidden: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, hidden), act(), nn.Linear(hidden, 3))


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.SiLU(),
                         nn.Conv2d(6, 5, 3, padding=2, dilation=2), nn.GELU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def _mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def _ce(model: nn.Module, batch: tuple) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _data(kind: str, dtype: torch.dtype = torch.float64) -> tuple:
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        return torch.randn(32, 6, generator=g, dtype=dtype), torch.randn(32, 3, generator=g, dtype=dtype)
    return torch.randn(8, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g)


CASES = {
    "mlp": (lambda: _mlp(), {"0": 9}, _mse),
    "cnn": (_cnn, {"0": 7, "3": 9, "5": 8}, _ce),
}


@pytest.mark.parametrize("init", netgraft.ops.grow.INITS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_function_is_preserved_at_growth_in_place(case: str, init: str) -> None:
    build, widths, loss_fn = CASES[case]
    torch.manual_seed(0)
    model = build().double()
    batch = _data(case)
    before = copy.deepcopy(model)
    params = list(model.parameters())
    result = netgraft.grow_(model, widths, init=init, loss_fn=loss_fn, batch=batch, seed=0)
    assert result is model and [id(p) for p in model.parameters()] == [id(p) for p in params]  # same objects
    for train in (False, True):
        cert = netgraft.check_preserved(before, model, (batch[0],), train=train)
        assert cert.max_abs <= 1e-10, (train, cert)
    assert model.netgraft_report.certificate.passed
    for key, size in widths.items():
        assert model.get_submodule(key).weight.shape[0] == size


@pytest.mark.parametrize("init", ["gradmax", "random", "zeros"])
def test_new_units_have_zero_fan_in_and_the_chosen_fan_out(init: str) -> None:
    torch.manual_seed(0)
    model = _mlp().double()
    old_in, old_out = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    netgraft.grow_(model, {"0": 8}, init=init, loss_fn=_mse, batch=_data("mlp"), seed=0)
    assert torch.equal(model[0].weight[:5], old_in) and torch.equal(model[2].weight[:, :5], old_out)
    assert float(model[0].weight[5:].abs().max()) == 0.0 and float(model[0].bias[5:].abs().max()) == 0.0
    new_out = model[2].weight[:, 5:].detach()
    if init == "zeros":
        assert float(new_out.abs().max()) == 0.0
    else:  # each new unit's fan-out has 0.5 x the mean norm of the existing ones
        want = 0.5 * old_out.norm(dim=0).mean()
        torch.testing.assert_close(new_out.norm(dim=0), want.expand(3), rtol=1e-12, atol=0)


def test_gradmax_direction_is_the_brute_force_maximiser_and_beats_random() -> None:
    torch.manual_seed(0)
    model = _mlp(hidden=4).double()
    batch = _data("mlp")
    probe = copy.deepcopy(model)
    netgraft.grow_(model, {"0": 5}, init="gradmax", loss_fn=_mse, batch=batch, seed=0)
    v = model[2].weight[:, 4].detach()

    def new_fan_in_grad_norm(fan_out: torch.Tensor) -> float:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m[2].weight[:, 4] = fan_out
        _mse(m, batch).backward()
        return float(m[0].weight.grad[4].norm())

    got = new_fan_in_grad_norm(v)
    # brute force: the best of many random directions of the same norm never beats the SVD's
    g = torch.Generator().manual_seed(1)
    best = 0.0
    for _ in range(3000):
        d = torch.randn(3, generator=g, dtype=torch.float64)
        best = max(best, new_fan_in_grad_norm(d / d.norm() * v.norm()))
    assert got >= best - 1e-12 and best > 0.98 * got
    # and it is sigma_1 x norm (tanh'(0) = 1), sigma_1 reported
    sigma = model.netgraft_report.singular_values["0"][0]
    assert got == pytest.approx(sigma * float(v.norm()), rel=1e-9)
    # random growth of the same norm gets a smaller gradient
    netgraft.grow_(probe, {"0": 5}, init="random", loss_fn=_mse, batch=batch, seed=0)
    assert new_fan_in_grad_norm(probe[2].weight[:, 4].detach()) < got


@pytest.mark.parametrize("key, size, consumer", [("3", 8, 5), ("5", 8, 9)], ids=["conv-conv", "conv-gap-linear"])
def test_gradmax_matrix_matches_autograd(key: str, size: int, consumer: int) -> None:
    """The gradient of each new unit's fan-in equals f'(0) x sigma x |fan-out| (M^T v for the chosen v): checked
    against real backward passes, for conv -> conv (stride, dilation) and conv -> global average pool -> Linear."""
    torch.manual_seed(0)
    model = _cnn().double()
    batch = _data("cnn")
    old = model.get_submodule(key).out_channels
    netgraft.grow_(model, {key: size}, init="gradmax", loss_fn=_ce, batch=batch, seed=0)
    model.zero_grad()
    _ce(model, batch).backward()
    grads = model.get_submodule(key).weight.grad[old:].flatten(1).norm(dim=1)
    fan_out = model[consumer].weight.detach().transpose(0, 1)[old:].flatten(1).norm(dim=1)
    sigmas = torch.tensor(model.netgraft_report.singular_values[key], dtype=torch.float64)
    # the new units pass SiLU / GELU on their way to the next layer: f'(0) = 0.5
    torch.testing.assert_close(grads, 0.5 * sigmas * fan_out, rtol=1e-6, atol=1e-12)


def test_more_new_units_than_directions_and_rank() -> None:
    torch.manual_seed(0)
    model = _mlp().double()
    netgraft.grow_(model, {"0": 12}, init="gradmax", loss_fn=_mse, batch=_data("mlp"), seed=0)  # 7 new, fan-out 3
    assert model[2].weight.shape == (3, 12)
    sv = model.netgraft_report.singular_values["0"]
    assert len(sv) == 7 and sv[3:] == [0.0] * 4
    assert torch.isfinite(model[2].weight).all()


def _state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in opt.state[p].items()}


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_optimizer_state_is_transported(opt_cls: type) -> None:
    torch.manual_seed(0)
    model = _mlp().double()
    kw = {"momentum": 0.9, "lr": 0.1} if opt_cls is torch.optim.SGD else {"lr": 1e-2}
    opt = opt_cls(model.parameters(), **kw)
    batch = _data("mlp")
    for _ in range(3):
        opt.zero_grad()
        _mse(model, batch).backward()
        opt.step()
    w_in, w_out = model[0].weight, model[2].weight
    before_in, before_out = _state(opt, w_in), _state(opt, w_out)
    netgraft.grow_(model, {"0": 8}, optimizer=opt, init="gradmax", loss_fn=_mse, batch=batch, seed=0)
    after_in, after_out = opt.state[w_in], opt.state[w_out]
    for key, old in before_in.items():
        new = after_in[key]
        if isinstance(old, torch.Tensor) and old.dim():
            assert new.shape == (8, 6) and torch.equal(new[:5], old) and float(new[5:].abs().max()) == 0.0
            assert torch.equal(after_out[key][:, :5], before_out[key]) and float(after_out[key][:, 5:].abs().max()) == 0
        else:
            assert torch.equal(torch.as_tensor(new), torch.as_tensor(old))  # Adam's step counter
    assert set(model.netgraft_report.optimizer_state) >= {"0.weight", "0.bias", "2.weight"}
    opt.zero_grad()
    _mse(model, batch).backward()
    opt.step()  # the transported state has the new shapes


def test_net2net_state_follows_the_gradient_of_each_copy() -> None:
    """With duplication, a copy's gradient along its per-unit rows is its fraction of the original's, and along the
    next layer's columns equal to it: the transported state is what training the grown model would have built."""
    torch.manual_seed(0)
    model = _mlp().double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _data("mlp")
    opt.zero_grad()
    _mse(model, batch).backward()
    opt.step()
    netgraft.grow_(model, {"0": 8}, optimizer=opt, init="net2net", seed=0, example_inputs=(batch[0],))
    grown = copy.deepcopy(model)
    grown.zero_grad()
    # the grown model's gradient at the same point, vs the transported first moment (one step: exp_avg = 0.1 g)
    _mse(grown, batch).backward()
    m_in, m_out = opt.state[model[0].weight]["exp_avg"], opt.state[model[2].weight]["exp_avg"]
    torch.testing.assert_close(m_in, 0.1 * grown[0].weight.grad, rtol=0.2, atol=1e-3)  # one step moved the point
    torch.testing.assert_close(m_out, 0.1 * grown[2].weight.grad, rtol=0.2, atol=1e-3)
    assert opt.state[model[0].weight]["exp_avg_sq"].shape == (8, 6)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_zeros_growth_preserves_training_dynamics_exactly(opt_cls: type) -> None:
    torch.manual_seed(0)
    small = _mlp().double()
    big = copy.deepcopy(small)
    kw = {"momentum": 0.9, "lr": 0.05} if opt_cls is torch.optim.SGD else {"lr": 1e-2, "weight_decay": 0.01}
    opt_s, opt_b = opt_cls(small.parameters(), **kw), opt_cls(big.parameters(), **kw)
    batch = _data("mlp")

    def step(m: nn.Module, o: torch.optim.Optimizer) -> float:
        o.zero_grad()
        loss = _mse(m, batch)
        loss.backward()
        o.step()
        return float(loss)

    for _ in range(3):
        step(small, opt_s), step(big, opt_b)
    netgraft.grow_(big, {"0": 9}, optimizer=opt_b, init="zeros", example_inputs=(batch[0],))
    for _ in range(6):
        assert step(big, opt_b) == pytest.approx(step(small, opt_s), abs=1e-12)


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
@pytest.mark.parametrize("init", ["gradmax", "random", "net2net"])
def test_dynamics_deviation_after_growth_is_measured_small(init: str, opt_name: str) -> None:
    """Zero fan-in growth keeps the first step exact (old weights get the same gradients); afterwards the new units
    start to contribute. Duplication (net2net) changes the steps from the start (each copy of a column gets the
    full gradient). All stay within 5% of the small model's losses over 5 steps."""
    batch = _data("mlp")
    torch.manual_seed(0)
    small = _mlp().double()
    big = copy.deepcopy(small)

    def make(m: nn.Module) -> torch.optim.Optimizer:
        if opt_name == "adam":
            return torch.optim.Adam(m.parameters(), lr=1e-2)
        return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    opt_s, opt_b = make(small), make(big)
    for m, o in ((small, opt_s), (big, opt_b)):  # some history for the optimizer state
        for _ in range(2):
            o.zero_grad()
            _mse(m, batch).backward()
            o.step()
    netgraft.grow_(big, {"0": 7}, optimizer=opt_b, init=init, loss_fn=_mse, batch=batch, seed=0)
    for i in range(5):
        losses = []
        for m, o in ((small, opt_s), (big, opt_b)):
            o.zero_grad()
            loss = _mse(m, batch)
            loss.backward()
            o.step()
            losses.append(float(loss))
        if i == 0:
            assert losses[0] == pytest.approx(losses[1], abs=1e-12)  # the function is preserved
        assert abs(losses[1] - losses[0]) < 0.05 * losses[0], (init, i, losses)


def test_a_training_loop_that_grows_three_times() -> None:
    torch.manual_seed(0)
    model = _mlp(hidden=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 20, gamma=0.9)
    x, y = _data("mlp", torch.float32)
    losses = []
    for step in range(80):
        if step in (20, 40, 60):
            netgraft.grow_(model, {"0": model[0].out_features + 2}, optimizer=opt, loss_fn=_mse, batch=(x, y))
        opt.zero_grad()
        loss = _mse(model, (x, y))
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    assert model[0].out_features == 9
    assert losses[-1] < 0.8 * losses[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9**4)


def test_errors_leave_the_model_and_optimizer_untouched() -> None:
    torch.manual_seed(0)
    model = _mlp()
    batch = _data("mlp", torch.float32)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}

    class Custom(torch.optim.SGD):
        pass

    with pytest.raises(TypeError, match="LBFGS"):
        netgraft.grow_(model, {"0": 7}, optimizer=torch.optim.LBFGS(model.parameters()), init="zeros",
                       example_inputs=(batch[0],))
    with pytest.raises(ValueError, match="loss_fn"):
        netgraft.grow_(model, {"0": 7}, batch=batch)
    with pytest.raises(ValueError, match="init must be one of"):
        netgraft.grow_(model, {"0": 7}, init="kaiming", batch=batch)
    relu = _mlp(nn.ReLU)
    with pytest.raises(ValueError, match="relu"):
        netgraft.grow_(relu, {"0": 7}, loss_fn=_mse, batch=batch)
    ln = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="net2net"):
        netgraft.grow_(ln, {"0": 8}, init="random", batch=batch)
    sig = _mlp(nn.Sigmoid)
    before = {k: v.clone() for k, v in sig.state_dict().items()}
    with pytest.raises(netgraft.NotPreservedError, match="restored"):
        netgraft.grow_(sig, {"0": 7}, init="random", batch=batch)
    assert all(torch.equal(before[k], v) for k, v in sig.state_dict().items()) and sig[0].out_features == 5
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
    assert model[0].out_features == 5


def test_depthwise_conv_in_between_becomes_an_identity_unit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SiLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.SiLU(),
                          nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()
    batch = _data("cnn")
    before = copy.deepcopy(model)
    netgraft.grow_(model, {"0": 6}, init="gradmax", loss_fn=_ce, batch=batch, seed=0)
    dw = model[2].weight.detach()
    assert dw.shape == (6, 1, 3, 3) and float(dw[4:, 0, 1, 1].min()) == 1.0 and float(dw[4:].abs().sum()) == 2.0
    assert netgraft.check_preserved(before, model, (batch[0],), train=True).max_abs <= 1e-10
    model.zero_grad()
    _ce(model, batch).backward()
    assert float(model[0].weight.grad[4:].abs().max()) > 0  # gradients reach the new fan-in through the dw conv


def _teacher_student_loop(schedule_kwargs: dict, steps: int = 60) -> tuple[nn.Module, netgraft.GrowthSchedule, list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 5), nn.Tanh(), nn.Linear(5, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    seen: list = []
    sched = netgraft.GrowthSchedule(model, optimizer=opt, loss_fn=_mse,
                                    callbacks=[lambda s, r, m: seen.append((s, m[0].out_features))], **schedule_kwargs)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        x = torch.randn(16, 20, generator=g)
        batch = (x, torch.tanh(x[:, :10]))
        sched.step(step, batch)
        opt.zero_grad()
        _mse(model, batch).backward()
        opt.step()
        lr_sched.step()
    return model, sched, seen


def test_schedule_adds_one_unit_every_n_steps_and_keeps_the_lr_scheduler_working() -> None:
    model, sched, seen = _teacher_student_loop({"widths": {"0": 10}, "every": 10, "times": 5})
    assert seen == [(10, 6), (20, 7), (30, 8), (40, 9), (50, 10)]  # exactly what was asked, never less
    assert model[0].weight.shape == (10, 20) and model[2].weight.shape == (10, 10)
    assert all(r.certificate.passed for _, r in sched.history)


def test_schedule_one_dimension_at_a_time() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    sched = netgraft.GrowthSchedule(model, {"0": 5, "2": 7}, at=[1, 2, 3, 4], one_at_a_time=True, init="random")
    sizes = []
    for step in range(6):
        batch = (torch.randn(8, 4), torch.randn(8, 2))
        sched.step(step, batch)
        sizes.append((model[0].out_features, model[2].out_features))
    assert sizes == [(3, 3), (4, 3), (4, 5), (5, 5), (5, 7), (5, 7)]


def test_schedule_errors() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="every and times"):
        netgraft.GrowthSchedule(model, {"0": 9}, every=0, times=2)
    with pytest.raises(ValueError, match="either"):
        netgraft.GrowthSchedule(model, {"0": 9}, every=2, times=2, at=[3])
    with pytest.raises(ValueError, match="increasing"):
        netgraft.GrowthSchedule(model, {"0": 9}, at=[4, 2])
    sched = netgraft.GrowthSchedule(model, {"0": 3}, at=[0], init="zeros")
    with pytest.raises(ValueError, match="below its current size"):
        sched.step(0, _data("mlp", torch.float32))


def test_new_batchnorm_channels_are_identity_units() -> None:
    torch.manual_seed(0)
    for bn_weight, want in ((1.0, 1.0), (None, 1e-5 ** 0.5)):
        model = _cnn().double()
        netgraft.grow_(model, {"0": 6}, init="random", batch=_data("cnn"), bn_weight=bn_weight, seed=0)
        bn = model[1]
        assert bn.weight[4:].tolist() == [pytest.approx(want)] * 2 and bn.bias[4:].tolist() == [0.0, 0.0]
        assert bn.running_mean[4:].tolist() == [0.0, 0.0] and bn.running_var[4:].tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------------------ review regressions
def test_a_parameter_held_by_a_live_graph_fails_cleanly_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = _mlp()
    x, y = _data("mlp", torch.float32)
    kept = model(x)  # its autograd graph saved the weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="still holds it"):
        netgraft.grow_(model, {"0": 7}, init="zeros", batch=(x, y))
    assert model[0].out_features == 5 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    del kept
    netgraft.grow_(model, {"0": 7}, init="zeros", batch=(x, y))  # fine once the graph is gone
    assert model[0].out_features == 7


@pytest.mark.parametrize("act", [nn.ReLU6, lambda: nn.Hardtanh(0.0, 2.0)])
def test_relu6_and_hardtanh_at_zero_are_dead_too(act) -> None:
    model = nn.Sequential(nn.Linear(6, 5), act(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="relu6"):
        netgraft.grow_(model, {"0": 7}, loss_fn=_mse, batch=_data("mlp", torch.float32))
    netgraft.grow_(nn.Sequential(nn.Linear(6, 5), nn.Hardtanh(), nn.Linear(5, 3)), {"0": 7}, loss_fn=_mse,
                   batch=_data("mlp", torch.float32))  # Hardtanh(-1, 1) has derivative 1 at 0


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(t)))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.f, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + torch.tanh(self.f(h)))


@pytest.mark.parametrize("init", ["zeros", "random"])
def test_tied_and_residual_widths_grow_exactly(init: str) -> None:
    torch.manual_seed(0)
    tied = _Tied().double()
    t = torch.randint(0, 10, (4, 7))
    before = copy.deepcopy(tied)
    netgraft.grow_(tied, {"emb": 6}, init=init, example_inputs=(t,))
    assert tied.out.weight is tied.emb.weight and tied.emb.weight.shape == (10, 6)
    assert netgraft.check_preserved(before, tied, (t,)).max_abs <= 1e-10
    res = _Residual().double()
    x = _data("mlp")[0]
    before = copy.deepcopy(res)
    netgraft.grow_(res, {"inp": 8}, init=init, example_inputs=(x,))
    assert netgraft.check_preserved(before, res, (x,), train=True).max_abs <= 1e-10


def test_gradmax_refuses_what_it_cannot_measure_with_a_clear_message() -> None:
    batch = _data("cnn")
    strided_dw = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh(), nn.Conv2d(4, 4, 3, groups=4, padding=1, stride=2),
                               nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    flat = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 64, 3)).double()
    gn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Tanh(), nn.Conv2d(4, 5, 3),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()
    same = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, padding="same"),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()
    for model, widths, match in ((strided_dw, {"0": 6}, "conv2d"), (flat, {"0": 6}, "global average|blocks"),
                                 (gn, {"0": 8}, "blocks"), (same, {"0": 6}, "padding='same'")):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            netgraft.grow_(model, widths, loss_fn=_ce, batch=batch)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        netgraft.grow_(model, widths, init="random", batch=batch)  # the other inits still work there


def test_pending_gradients_move_with_the_weights() -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = _data("mlp", torch.float32)
    _mse(model, batch).backward()
    g_old = model[0].weight.grad.clone()
    netgraft.grow_(model, {"0": 7}, optimizer=opt, init="random", batch=batch)
    assert torch.equal(model[0].weight.grad[:5], g_old) and float(model[0].weight.grad[5:].abs().max()) == 0
    w_old = model[0].weight.detach()[:5].clone()
    opt.step()  # the step of the backward above, on the grown shapes
    assert torch.allclose(model[0].weight.detach()[:5], w_old - 0.1 * g_old)


def test_the_certificate_also_checks_train_mode() -> None:
    """A forward that differs in train mode (here a mean over the grown features, only when training) is invisible to
    the eval-mode trace; the train-mode certificate catches it, rolls back and raises."""

    class TrainOnlyMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.a(x))
            if self.training:
                h = h + h.mean(dim=1, keepdim=True)  # zero new units change this mean
            return self.b(h)

    torch.manual_seed(0)
    model = TrainOnlyMean().double()
    with pytest.raises(netgraft.NotPreservedError, match="train mode"):
        netgraft.grow_(model, {"a": 7}, init="random", batch=_data("mlp"), seed=0)
    assert model.a.out_features == 5 and model.a.weight.shape == (5, 6)
    model.train(False)  # documented escape hatch: check=False skips both certificates
    netgraft.grow_(model, {"a": 7}, init="random", batch=_data("mlp"), seed=0, check=False)
    assert model.a.out_features == 7


def test_the_earlier_names_still_work_with_a_deprecation_warning() -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.Tanh(), nn.Linear(2, 1))
    with pytest.warns(DeprecationWarning, match="widths"):
        sched = netgraft.GrowthSchedule(model, targets={"0": 3}, at=[0], init="zeros")
    assert sched.targets == {"0": 3}
    with pytest.warns(DeprecationWarning, match="inject_"):
        report = netgraft.inject(nn.Linear(3, 3), nn.Linear(3, 3))
    assert report.similarity == 1.0
