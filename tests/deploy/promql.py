"""Metric names referenced by PromQL expressions, and the expressions of the deploy files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "orderflow.json"

# Words PromQL reserves; none of them is a metric even when it stands where one could.
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan",
})
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[0-9A-Za-z_$]+")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:.])(?:0[xX][0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", re.DOTALL)

# Grafana's template variables, replaced by values that make a dashboard query plain PromQL.
GRAFANA_VARIABLES: dict[str, str] = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$service": ".*",
}


def metric_names_in(expr: str) -> set[str]:
    """Names of the metrics an expression selects (functions, keywords and label names left out)."""
    # Strings go first so braces or brackets inside them cannot confuse the later steps.
    text = _STRING.sub('""', expr)
    for pattern in (_MATCHERS, _RANGE, _LABEL_LIST, _OFFSET, _VARIABLE, _NUMBER):
        text = pattern.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        # An identifier followed by "(" is a function or an aggregation (its by-clause is already gone).
        if text[match.end():].lstrip().startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def grafana_to_promql(expr: str) -> str:
    """The dashboard query with its Grafana variables replaced, longest names first."""
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    return expr


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as handle:
        dashboard: dict[str, Any] = json.load(handle)
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and query variables."""
    exprs = [
        target.get("expr", "") for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            exprs.append(_variable_selector(text))
    return exprs


def _variable_selector(query: str) -> str:
    """The PromQL inside a Grafana variable query: `label_values(selector, label)` -> `selector`."""
    match = _LABEL_VALUES.fullmatch(query.strip())
    return match.group(1).strip() if match else query


def rule_exprs(rules: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
