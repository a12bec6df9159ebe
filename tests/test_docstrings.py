"""Every public function has a docstring with at least one runnable example, and the examples pass."""

from __future__ import annotations

import doctest
import inspect

import pytest

import netgraft

# Every function netgraft exports, and the classes whose use is a recipe (the extension point, the schedule).
FUNCTIONS = [getattr(netgraft, n) for n in netgraft.__all__ if inspect.isfunction(getattr(netgraft, n))]
CLASSES = [netgraft.GrowthSchedule, netgraft.LayerKind, netgraft.MoE]


def run_examples(obj: object) -> tuple[int, int]:
    """(examples found in `obj`'s own docstring, examples that failed). Methods' docstrings are not counted."""
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    found = 0
    for test in finder.find(obj, obj.__name__, globs={"netgraft": netgraft}):
        found += len(test.examples)
        runner.run(test)
    return found, runner.failures


def test_the_public_functions_are_all_collected() -> None:
    names = {f.__name__ for f in FUNCTIONS}
    assert len(FUNCTIONS) >= 15 and {"widen", "deepen", "grow_", "inject", "register_kind", "unregister_op"} <= names


@pytest.mark.parametrize("obj", FUNCTIONS + CLASSES, ids=lambda f: f.__name__)
def test_public_function_has_a_runnable_example(obj) -> None:
    found, failed = run_examples(obj)
    assert found > 0, f"{obj.__name__} has no docstring example (a '>>>' line)"
    assert failed == 0


def test_the_check_fails_without_an_example() -> None:
    def documented_but_no_example() -> None:
        """Example: none given, only this sentence."""

    def failing() -> None:
        """
        >>> 1 + 1
        3
        """

    assert run_examples(documented_but_no_example) == (0, 0)
    assert run_examples(failing) == (1, 1)
