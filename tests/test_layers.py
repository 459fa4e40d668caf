"""The layering rules, read from the source: which package may import which, and no borrowed private names.

* ``arca_control.protocol`` imports nothing else of the project;
* ``arca_monitor`` imports nothing of ``arca_control`` outside ``protocol``;
* no module uses another module's private (``_name``) names, by import or by attribute.
"""

from __future__ import annotations

import ast
import pathlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("arca_control", "arca_monitor", "tools")
PROJECT = (*PACKAGES, "tests")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(*packages: str) -> Iterator[pathlib.Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def imported(path: pathlib.Path) -> Iterator[tuple[ast.Import | ast.ImportFrom, str, list[str]]]:
    """Every import in ``path``: the node, the absolute module it names, and the names it takes."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(filter(None, [*anchor, base]))
            yield node, base, [alias.name for alias in node.names]


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_protocol_imports_nothing_else_of_the_project() -> None:
    found = [
        f"{module_name(path)}:{node.lineno} imports {module}"
        for path in sources("arca_control/protocol")
        for node, module, _ in imported(path)
        if any(in_package(module, p) for p in PROJECT) and not in_package(module, "arca_control.protocol")
    ]
    assert not found, "\n".join(found)


def test_monitor_imports_only_the_protocol_of_the_guest_package() -> None:
    found = []
    for path in sources("arca_monitor"):
        for node, module, names in imported(path):
            targets = [f"{module}.{n}" for n in names] if module == "arca_control" else [module]
            found += [f"{module_name(path)}:{node.lineno} imports {target}" for target in targets
                      if in_package(target, "arca_control") and not in_package(target, "arca_control.protocol")]
    assert not found, "\n".join(found)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_private_names(path: pathlib.Path) -> set[str]:
    """The private names ``path`` defines: functions, classes, module names and attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {name for name in names if private(name)}


OWNERS: dict[str, set[str]] = {}
for _path in sources(*PROJECT):
    for _name in defined_private_names(_path):
        OWNERS.setdefault(_name, set()).add(module_name(_path))


@pytest.mark.parametrize("package", PROJECT)
def test_no_module_uses_another_modules_private_names(package: str) -> None:
    """Neither ``from m import _x`` nor ``obj._x`` where ``_x`` belongs to another of our modules."""
    found = []
    for path in sources(package):
        here = module_name(path)
        for statement, module, names in imported(path):
            found += [f"{here}:{statement.lineno} imports {module}.{name}" for name in names
                      if private(name) and any(in_package(module, p) for p in PROJECT)]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = OWNERS.get(node.attr, set())
            if owners and here not in owners:
                found.append(f"{here}:{node.lineno} uses {ast.unparse(node)} (of {', '.join(sorted(owners))})")
    assert not found, "\n".join(found)
