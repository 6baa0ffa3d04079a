"""Prometheus configuration and alert rules: valid for promtool, unit-tested, and complete."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.promql import PROMETHEUS_DIR, dashboard_exprs, grafana_to_promql, load_dashboard
from tests.deploy.tools import require_module, require_tool

REQUIRED_ALERTS = {"CircuitOpen", "CircuitIsolated", "FallbacksFrequent", "DeadLettersPresent",
                   "PaymentBacklogGrowing"}
SEVERITIES = {"critical", "warning", "info"}


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _load(name: str) -> Any:
    yaml = require_module("yaml", pip_name="pyyaml")
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text(encoding="utf-8"))


def _alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in _load("alerts.yml")["groups"] for rule in group["rules"]
            if "alert" in rule}


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_accepts_the_scrape_config_and_its_rule_files(config: str) -> None:
    output = _promtool("check", "config", config)
    assert "1 rule files found" in output


def test_promtool_accepts_the_alert_rules() -> None:
    output = _promtool("check", "rules", "alerts.yml")
    assert f"{len(_alert_rules())} rules found" in output


def test_alert_unit_tests_pass() -> None:
    output = _promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no offline query parser, but it parses every recording rule's expression.
    exprs = [grafana_to_promql(expr) for expr in dashboard_exprs(load_dashboard())]
    yaml = require_module("yaml", pip_name="pyyaml")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr} for index, expr in enumerate(exprs)
    ]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    output = _promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert f"{len(exprs)} rules found" in output


def test_scrape_config_finds_every_api_and_worker_replica() -> None:
    config = _load("prometheus.yml")
    targets = {f"{name}:{sd['port']}" for job in config["scrape_configs"] for sd in job["dns_sd_configs"]
               for name in sd["names"]}
    assert targets == {"api:8000", "worker:9808"}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])
    assert config["rule_files"] == ["alerts.yml"]


def test_local_scrape_config_targets_loopback() -> None:
    config = _load("prometheus.local.yml")
    targets = {target for job in config["scrape_configs"] for static in job["static_configs"]
               for target in static["targets"]}
    assert targets == {"127.0.0.1:8000", "127.0.0.1:9808"}


def test_every_required_alert_exists_with_severity_and_annotations() -> None:
    rules = _alert_rules()
    assert REQUIRED_ALERTS <= rules.keys()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    assert rules["CircuitIsolated"]["labels"]["severity"] == "info"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in _load("alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired >= _alert_rules().keys()
    assert quiet >= _alert_rules().keys()
