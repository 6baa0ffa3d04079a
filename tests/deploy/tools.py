"""Skip-or-fail helpers for deploy tests that need a tool or package a fresh machine may lack."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

# How to get each tool, printed with the skip so the reader knows the next step.
_INSTALL_HINTS: dict[str, str] = {
    "promtool": "apt-get install -y prometheus",
}


def _skip_or_fail(reason: str) -> NoReturn:
    # CI sets ORDERFLOW_REQUIRE_ALL=1: there a missing tool must fail the run, not hide tests behind a skip.
    if os.environ.get("ORDERFLOW_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (ORDERFLOW_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Return the path of executable `name`, or skip the test (fail under ORDERFLOW_REQUIRE_ALL=1)."""
    path = shutil.which(name)
    if path is None:
        hint = _INSTALL_HINTS.get(name)
        _skip_or_fail(f"{name} is not on PATH" + (f"; install it with `{hint}`" if hint else ""))
    return path


def require_module(name: str, *, pip_name: str | None = None) -> ModuleType:
    """Import module `name`, or skip the test (fail under ORDERFLOW_REQUIRE_ALL=1)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _skip_or_fail(f"Python package {pip_name or name} is not installed in this environment")
