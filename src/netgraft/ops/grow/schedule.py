"""`GrowthSchedule`: call `grow_` on a schedule from inside a plain training loop."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from ...core.coupling import groups
from ...errors import InvalidRequestError
from .operator import GrowReport, _inputs_of, grow_


class GrowthSchedule:
    """Grow `model` towards `widths` at fixed steps of a training loop, carrying the optimizer along.

    The sizes are spread evenly over the growth events (exact integers; the last event reaches the target). Because
    `grow_` keeps the model's Parameter objects and the optimizer's param_groups, learning-rate schedulers and
    anything else holding the optimizer keep working.

    Args:
        model: the model being trained (grown in place).
        widths: ``{module path: final size}`` as in `widen` and `grow_` (``targets=`` is the name used before).
        every, times, start: grow at ``start, start + every, ...`` (`times` events; `start` defaults to `every`).
        at: explicit growth steps instead (sorted, distinct).
        one_at_a_time: each event grows one dimension, cycling through `widths` in order, instead of all of them.
        optimizer, init, loss_fn, example_inputs, **grow_kwargs: passed to `grow_` (`scale`, `seed`, ...).
        callbacks: functions ``f(step, report, model)`` called after each growth (logging, re-creating EMAs...).

    Example:
        >>> import torch, netgraft
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> loss = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
        >>> sched = netgraft.GrowthSchedule(model, {"0": 5}, every=10, times=3, optimizer=opt, loss_fn=loss)
        >>> for step in range(40):
        ...     batch = (torch.randn(8, 4), torch.randn(8, 1))
        ...     _ = sched.step(step, batch)
        ...     opt.zero_grad(); loss(model, batch).backward(); opt.step()
        >>> model[0].out_features, [s for s, _ in sched.history]
        (5, [10, 20, 30])
    """

    def __init__(
        self,
        model: nn.Module,
        widths: dict[str, int] | None = None,
        *,
        every: int | None = None,
        times: int | None = None,
        start: int | None = None,
        at: Sequence[int] | None = None,
        one_at_a_time: bool = False,
        optimizer: Any = None,
        init: str = "gradmax",
        loss_fn: Callable | None = None,
        example_inputs: Any = None,
        callbacks: Iterable[Callable[[int, GrowReport, nn.Module], Any]] = (),
        targets: dict[str, int] | None = None,
        **grow_kwargs: Any,
    ) -> None:
        if targets is not None:  # the earlier name of `widths`
            if widths is not None:
                raise InvalidRequestError("give widths (or its earlier name targets), not both")
            warnings.warn("GrowthSchedule(targets=...) is now widths=..., as in widen and grow_; targets will be "
                          "removed in the next release", DeprecationWarning, stacklevel=2)
            widths = targets
        targets = widths
        if not targets or not isinstance(targets, dict):
            raise InvalidRequestError("widths must be a non-empty dict {module path: final size}")
        if at is not None:
            if every is not None or times is not None:
                raise InvalidRequestError("give either `at` or `every`/`times`, not both")
            steps = [int(s) for s in at]
            if not steps or steps != sorted(set(steps)) or steps[0] < 0:
                raise InvalidRequestError(f"`at` must be distinct, increasing steps >= 0, got {list(at)}")
        else:
            if not (isinstance(every, int) and every > 0 and isinstance(times, int) and times > 0):
                raise InvalidRequestError(f"every and times must be positive ints (or give `at`), got {every!r}, "
                                          f"{times!r}")
            first = every if start is None else int(start)
            steps = [first + i * every for i in range(times)]
        if one_at_a_time and len(steps) < len(targets):
            raise InvalidRequestError(f"{len(steps)} growth event(s) for {len(targets)} dimensions one at a time: "
                                      "some would "
                             f"never grow")
        self.model, self.targets, self.steps = model, dict(targets), steps
        self.one_at_a_time = one_at_a_time
        self.grow_kwargs = {"optimizer": optimizer, "init": init, "loss_fn": loss_fn, **grow_kwargs}
        self.example_inputs = example_inputs
        self.callbacks = list(callbacks)
        self.history: list[tuple[int, GrowReport]] = []
        self._plan: list[dict[str, int]] | None = None

    def plan(self, start_sizes: dict[str, int]) -> list[dict[str, int]]:
        """The sizes requested at each event, from the current `start_sizes`."""
        keys = list(self.targets)
        for k in keys:
            if self.targets[k] < start_sizes[k]:
                raise InvalidRequestError(f"target size {self.targets[k]} of '{k}' is below its current size "
                                          f"{start_sizes[k]}")
        events: list[dict[str, int]] = [{} for _ in self.steps]
        for ki, key in enumerate(keys):
            mine = [i for i in range(len(self.steps)) if not self.one_at_a_time or i % len(keys) == ki]
            if not mine:
                raise InvalidRequestError(f"'{key}' gets no growth event: {len(self.steps)} event(s) for {len(keys)} "
                                 f"dimensions one at a time")
            a, b = start_sizes[key], self.targets[key]
            previous = a
            for j, i in enumerate(mine, start=1):
                size = a + round((b - a) * j / len(mine))
                if size > previous:  # an event with nothing left to add for this key skips it
                    events[i][key] = previous = size
        return events

    def step(self, step: int, batch: Any = None) -> GrowReport | None:
        """Call once per training step (anywhere in it: pending gradients and optimizer state move with the
        weights); grows when `step` is a growth step."""
        if step not in self.steps:
            return None
        inputs = self.example_inputs if self.example_inputs is not None else _inputs_of(batch)
        if self._plan is None:
            table = groups(self.model, inputs)
            self._plan = self.plan({k: table[k].display_size for k in self.targets})
        wanted = self._plan[self.steps.index(step)]
        grow_now = {k: v for k, v in wanted.items() if v > self._current(k, inputs)}
        if not grow_now:
            return None
        grow_(self.model, grow_now, batch=batch, example_inputs=inputs, **self.grow_kwargs)
        report = self.model.netgraft_report
        self.history.append((step, report))
        for cb in self.callbacks:
            cb(step, report, self.model)
        return report

    def _current(self, key: str, inputs: Any) -> int:
        module = self.model.get_submodule(key)
        for attr in ("out_features", "out_channels", "embedding_dim", "num_features"):
            if isinstance(getattr(module, attr, None), int):
                return getattr(module, attr)
        return groups(self.model, inputs)[key].display_size
