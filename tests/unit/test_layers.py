"""The policy library stands alone: app/resilience imports no other part of OrderFlow and no framework."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

RESILIENCE = Path(__file__).resolve().parents[2] / "app" / "resilience"
FRAMEWORKS = ("flask", "celery", "sqlalchemy", "requests", "urllib3")


def imported_modules(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_the_scan_sees_imports_inside_functions_too() -> None:
    tree = ast.parse("import a.b\nfrom c import d\nfrom . import e\ndef f():\n    from app.adapters import g\n")
    assert list(imported_modules(tree)) == ["a.b", "c", "app.adapters"]


def test_app_resilience_imports_nothing_of_ours_outside_itself_and_no_framework() -> None:
    offending = {
        f"{path.name}: {module}"
        for path in sorted(RESILIENCE.glob("*.py"))
        for module in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if (module.split(".")[0] == "app" and not module.startswith("app.resilience"))
        or module.split(".")[0] in FRAMEWORKS
    }
    assert offending == set()
