"""The package's layout is an architecture, checked: core imports no operator, family or front end; the verbs do not
import each other; there is no import cycle; imports sit at the top of modules (optional dependencies excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

import netgraft

ROOT = Path(netgraft.__file__).parent
OPTIONAL = {"transformers", "tqdm", "safetensors", "huggingface_hub", "psutil", "accelerate", "lightning"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(netgraft modules imported at module level, function-local imports of non-optional modules)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    top, local = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names]
        else:
            mod, names = node.names[0].name, [a.name for a in node.names]
        at_top = node in tree.body
        if at_top:
            for name in [mod, *names]:
                if name.startswith("netgraft"):
                    top.add(name)
        elif mod.split(".")[0] not in OPTIONAL:
            local.append((node.lineno, mod))
    return top, local


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in _imports(path)[0]:
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_core_imports_no_operator_family_or_front_end() -> None:
    bad = {m: sorted(t for t in deps if t.startswith(("netgraft.ops", "netgraft.families", "netgraft.hf",
                                                         "netgraft.cli", "netgraft.io")))
           for m, deps in _graph().items() if m.startswith("netgraft.core")}
    assert not any(bad.values()), bad


def test_verbs_do_not_import_each_other() -> None:
    verbs = ("widen", "deepen", "grow", "inject")
    for m, deps in _graph().items():
        if not m.startswith("netgraft.ops."):
            continue
        mine = m.split(".")[2]
        others = [d for d in deps if d.startswith("netgraft.ops.") and d.split(".")[2] in verbs
                  and d.split(".")[2] != mine]
        assert not others, (m, others)


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "netgraft":  # the package root re-exports the public API
                continue
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None and node != "netgraft":
            visit(node)


def test_imports_sit_at_the_top_of_modules() -> None:
    local = {name: found for name, path in MODULES.items() if (found := _imports(path)[1])}
    assert not local, local
