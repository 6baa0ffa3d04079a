"""The Grafana dashboard and its provisioning."""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.promql import DASHBOARD, REPO, dashboard_exprs, dashboard_panels, load_dashboard
from tests.deploy.tools import require_module

PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard_panels(load_dashboard()) if panel.get("type") != "row"]


def _panel_using(metric: str) -> dict[str, Any]:
    matches = [panel for panel in _panels() if any(metric in t.get("expr", "") for t in panel["targets"])]
    assert matches, f"no panel queries {metric}"
    return matches[0]


def test_dashboard_parses_with_a_current_schema() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "orderflow"


def test_every_panel_queries_the_prometheus_datasource_with_an_expression() -> None:
    panels = _panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", {"uid": "prometheus"})["uid"] == "prometheus", panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panel_ids_are_unique_and_titles_present() -> None:
    panels = _panels()
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["title"].strip() for panel in panels)


def test_dashboard_covers_every_resilience_and_business_metric() -> None:
    queried = " ".join(dashboard_exprs(load_dashboard()))
    for metric in ("resilience_retry_attempts_total", "resilience_circuitbreaker_state{",
                   "resilience_circuitbreaker_state_changes_total", "resilience_fallback_executions_total",
                   "resilience_request_duration_seconds_bucket", "http_client_requests_total",
                   "orders_created_total", "payment_jobs_total", "payment_dead_letters",
                   "resilience_timeouts_total", "resilience_bulkhead_rejections_total"):
        assert metric in queried, metric


def test_circuit_state_panel_names_every_state() -> None:
    panel = _panel_using("resilience_circuitbreaker_state{")
    texts = {value: option["text"] for mapping in panel["fieldConfig"]["defaults"]["mappings"]
             for value, option in mapping["options"].items()}
    assert texts == {"0": "closed", "1": "open", "2": "half_open", "3": "isolated"}


def test_latency_panel_shows_p50_p95_p99_by_service() -> None:
    panel = _panel_using("resilience_request_duration_seconds_bucket")
    exprs = [target["expr"] for target in panel["targets"]]
    assert [expr.split(",")[0] for expr in exprs] == [
        "histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99"]
    assert all("by (service, le)" in expr for expr in exprs)


def test_success_rate_divides_successes_by_successes_and_failures() -> None:
    expr = _panel_using("http_client_requests_total")["targets"][0]["expr"]
    numerator, denominator = expr.split("\n/\n")
    assert 'status="success"' in numerator
    assert 'status=~"success|failure"' in denominator


def test_datasource_provisioning_has_the_uid_the_dashboard_uses() -> None:
    yaml = require_module("yaml", pip_name="pyyaml")
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    [datasource] = config["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_dashboard_provisioning_reads_the_folder_compose_mounts() -> None:
    yaml = require_module("yaml", pip_name="pyyaml")
    config = yaml.safe_load((PROVISIONING / "dashboards" / "orderflow.yml").read_text(encoding="utf-8"))
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    [provider] = config["providers"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
