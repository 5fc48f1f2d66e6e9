"""The package's modules import each other without cycles (module-level imports, read from the sources)."""

from __future__ import annotations

import ast
from pathlib import Path

import danling

ROOT = Path(danling.__file__).parent


def module_files() -> dict[str, Path]:
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def imported_module(module: str, node: ast.ImportFrom, package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def module_level_imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    # Imports that run when the module is imported: at module level, outside `if TYPE_CHECKING:` and functions.
    found: set[str] = set()
    for statement in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.dump(statement.test):
            continue
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.ImportFrom):
                target = imported_module(module, node, path.name == "__init__.py")
                found.update(
                    f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target for alias in node.names
                )
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return {name for name in found if name in known and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    # Depth-first search; returns one cycle as the modules along it, or an empty list.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if child not in state and (cycle := visit(child)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return []


def test_the_import_graph_is_read():
    known = module_files()
    graph = {module: module_level_imports(module, path, known) for module, path in known.items()}
    assert len(graph) > 100
    assert "danling.runner.checkpointing.runner_state" in graph["danling.runner.base_runner"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    known = module_files()
    graph = {module: module_level_imports(module, path, known) for module, path in known.items()}
    assert find_cycle(graph) == []


def test_average_meters_re_export_without_a_cycle():
    known = module_files()
    single = module_level_imports("danling.metrics.average_meter", known["danling.metrics.average_meter"], known)
    multi_name = "danling.metrics.multi_task_average_meters"
    multi = module_level_imports(multi_name, known[multi_name], known)
    assert not (multi_name in single and "danling.metrics.average_meter" in multi)
