"""Every public function has a docstring example, and the examples run."""

from __future__ import annotations

import doctest

import pytest

import netgraft

PUBLIC = [netgraft.widen, netgraft.groups, netgraft.check_preserved, netgraft.register_op, netgraft.register_layer,
          netgraft.deepen, netgraft.set_gates_, netgraft.fold_gates, netgraft.inject, netgraft.similarity,
          netgraft.grow_, netgraft.GrowthSchedule]


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__name__)
def test_public_function_has_a_runnable_example(func) -> None:
    assert func.__doc__ and "Example" in func.__doc__
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(func, func.__name__, globs={"netgraft": netgraft})
    for t in tests:
        runner.run(t)
    assert runner.failures == 0
