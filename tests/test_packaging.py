"""`pyproject.toml` tells the truth: the Python floor is one the package imports on, every import is declared."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "danling"
# Distribution names of import names that differ.
DISTRIBUTIONS = {"yaml": "pyyaml"}


def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fp:
        return tomllib.load(fp)["project"]


def python_floor() -> tuple[int, int]:
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", project()["requires-python"].strip())
    assert match, project()["requires-python"]
    return int(match.group(1)), int(match.group(2))


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def runtime_union_types(tree: ast.Module) -> list[int]:
    # `X | Y` between types outside annotations (module-level aliases, isinstance...) runs at import time:
    # it needs Python 3.10. Annotations are strings under `from __future__ import annotations`.
    annotations = {id(node.annotation) for node in ast.walk(tree) if isinstance(node, (ast.AnnAssign, ast.arg))}
    annotations |= {id(node.returns) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    inside = set()
    for node in ast.walk(tree):
        if id(node) in annotations:
            inside |= {id(child) for child in ast.walk(node)}
    return [node.lineno for node in ast.walk(tree) if id(node) not in inside and is_type_union(node)]


def is_type_union(node: ast.AST) -> bool:
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
        return False
    names = {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}
    path_like = any(isinstance(child, ast.Attribute) and child.attr == "PathLike" for child in ast.walk(node))
    return path_like or bool(names & {"str", "int", "float", "bytes", "Mapping", "Sequence", "None"})


def test_requires_python_covers_the_syntax_evaluated_at_import_time():
    offenders = {str(path.relative_to(ROOT)): runtime_union_types(ast.parse(path.read_text())) for path in modules()}
    offenders = {path: lines for path, lines in offenders.items() if lines}
    if offenders:
        assert python_floor() >= (3, 10), f"X | Y evaluated at import time needs Python 3.10: {offenders}"


def test_the_python_floor_is_the_interpreter_range_we_test():
    assert python_floor() <= sys.version_info[:2]
    classifiers = project()["classifiers"]
    assert f"Programming Language :: Python :: {python_floor()[0]}.{python_floor()[1]}" in classifiers


def test_every_third_party_import_is_a_declared_dependency():
    declared = {re.split(r"[<>=!\[; ]", requirement)[0].lower() for requirement in project()["dependencies"]}
    imported = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "danling"}
    optional = {"tensorboard", "torchmetrics", "sklearn", "scipy", "matplotlib", "accelerate", "deepspeed"}
    optional |= set(project()["optional-dependencies"]) & {"wandb", "mlflow"}  # trackers: extras of their own
    missing = {name for name in third_party - optional if DISTRIBUTIONS.get(name, name).lower() not in declared}
    assert not missing, f"imported but not declared in [project].dependencies: {sorted(missing)}"


def test_each_tracker_is_an_extra_of_its_own_and_tested_in_ci():
    extras = project()["optional-dependencies"]
    for name in ("wandb", "mlflow"):
        assert [re.split(r"[<>=]", requirement)[0] for requirement in extras[name]] == [name]
        assert any(requirement.startswith(name) for requirement in extras["test"]), name
