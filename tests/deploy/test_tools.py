"""A missing tool skips a deploy test, except where ORDERFLOW_REQUIRE_ALL=1 demands every test run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.deploy.tools import require_module, require_tool

MISSING = "orderflow-no-such-tool"


def test_a_missing_tool_skips_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERFLOW_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        require_tool(MISSING)


def test_a_missing_tool_fails_when_every_test_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERFLOW_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="promtool is not on PATH; install it with"):
        monkeypatch.setenv("PATH", "")
        require_tool("promtool")


def test_a_present_tool_returns_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert Path(require_tool(Path(sys.executable).name)) == Path(sys.executable)


def test_a_missing_module_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERFLOW_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="orderflow-missing"):
        require_module("orderflow_missing_module", pip_name="orderflow-missing")
    monkeypatch.setenv("ORDERFLOW_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception):
        require_module("orderflow_missing_module")
    assert require_module("json").dumps([]) == "[]"
