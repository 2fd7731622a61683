"""The house's import rule: arrows point downwards only.

``simulation`` (the bottom) imports nothing from ``rewards``, ``planners``, ``bev_warp`` or ``training``;
``rewards`` nothing from ``planners``, ``bev_warp`` or ``training``. Every import counts, including the ones
inside functions, since they are found by walking each module's syntax tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> the packages above it, which it must not import.
FORBIDDEN = {
    "simulation": ("rewards", "planners", "bev_warp", "training"),
    "rewards": ("planners", "bev_warp", "training"),
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """``(line, top-level package)`` of every absolute import in the module at ``path``."""
    out: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.lineno, node.module.split(".")[0]))
    return out


def test_imported_packages_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os.path\n\ndef f():\n    from planners.rule_based import X\n    from . import y\n")
    assert imported_packages(module) == {(1, "os"), (4, "planners")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    upwards = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files
        for line, name in sorted(imported_packages(path))
        if name in FORBIDDEN[package]
    ]
    assert not upwards, "\n".join(upwards)
