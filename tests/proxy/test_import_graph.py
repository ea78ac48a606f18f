"""No import loop in src/smtpgate, counting every import statement: also those
under ``if TYPE_CHECKING:`` and inside functions, which hide a loop rather than
remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import smtpgate

SRC = Path(smtpgate.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = ("smtpgate", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the smtpgate modules it imports anywhere in its text.

    A submodule's own packages are left out: Python runs them first anyway.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                wanted = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            else:
                continue
            for target in wanted:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a path that returns to its start, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            loop = visit(target, [*path, name])
            if loop:
                return loop
        done.add(name)
        return None

    for name in sorted(graph):
        loop = visit(name, [])
        if loop:
            return loop
    return None


def test_no_import_loop_in_src() -> None:
    assert find_loop(import_graph()) is None, " -> ".join(find_loop(import_graph()) or [])


def test_the_loop_finder_sees_a_loop_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_loop(graph) == ["a", "b", "c", "a"]
