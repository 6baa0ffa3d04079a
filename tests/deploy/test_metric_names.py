"""Every metric the dashboard and the alert rules query is one the application exports."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tests.deploy.promql import PROMETHEUS_DIR, dashboard_exprs, load_dashboard, metric_names_in, rule_exprs
from tests.deploy.tools import require_module

# CONTRACT section 4 (family name -> type) plus payment_jobs_backlog, the pending payment work gauge.
_CONTRACT_FAMILIES: dict[str, str] = {
    "resilience_retry_attempts": "counter",
    "resilience_circuitbreaker_state_changes": "counter",
    "resilience_circuitbreaker_state": "gauge",
    "resilience_fallback_executions": "counter",
    "resilience_timeouts": "counter",
    "resilience_bulkhead_rejections": "counter",
    "resilience_request_duration_seconds": "histogram",
    "http_client_requests": "counter",
    "orders_created": "counter",
    "payment_jobs": "counter",
    "payment_dead_letters": "gauge",
    "payment_jobs_backlog": "gauge",
}
_SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def sample_names(families: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The names a scrape shows for (family, type) pairs, as prometheus_client writes them."""
    return frozenset(name + suffix for name, kind in families for suffix in _SAMPLE_SUFFIXES[kind])


def exported_metric_names() -> frozenset[str]:
    """What the API and worker /metrics expose between them.

    Built from the contract for now. Once the application's registry exists, return instead
    `frozenset(s.name for m in registry.collect() for s in m.samples)` for that registry.
    """
    return sample_names(_CONTRACT_FAMILIES.items())


def _unknown(exprs: Iterable[str]) -> dict[str, set[str]]:
    exported = exported_metric_names()
    return {expr: missing for expr in exprs if (missing := metric_names_in(expr) - exported)}


def test_exported_names_expand_histograms_and_counters_like_the_client_library() -> None:
    names = exported_metric_names()
    assert {"resilience_request_duration_seconds_bucket", "resilience_request_duration_seconds_count",
            "resilience_retry_attempts_total", "payment_dead_letters", "payment_jobs_backlog"} <= names
    assert "resilience_request_duration_seconds" not in names
    assert "resilience_retry_attempts" not in names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (service) (rate(http_requests_total{status="a}b"}[5m]))', {"http_requests_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket[$__rate_interval])))", {"a_bucket"}),
        ("max(x) > 0 and on (service) y unless z offset 5m", {"x", "y", "z"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") * 1e3', {"up"}),
        ("sum without (instance) (a) / ignoring (kind) group_left (b) c", {"a", "c"}),
    ],
)
def test_metric_names_in_finds_selected_metrics_only(expr: str, expected: set[str]) -> None:
    assert metric_names_in(expr) == expected


def test_an_expression_with_an_unexported_metric_is_reported() -> None:
    assert _unknown(["rate(resilience_retries_total[5m])"]) == {
        "rate(resilience_retries_total[5m])": {"resilience_retries_total"}
    }


def test_every_dashboard_metric_is_exported() -> None:
    exprs = dashboard_exprs(load_dashboard())
    assert exprs
    assert _unknown(exprs) == {}


def test_every_alert_rule_metric_is_exported() -> None:
    yaml = require_module("yaml", pip_name="pyyaml")
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    assert _unknown(rule_exprs(rules)) == {}


def test_alert_unit_tests_feed_only_exported_series() -> None:
    yaml = require_module("yaml", pip_name="pyyaml")
    suite = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8"))
    series = [item["series"] for case in suite["tests"] for item in case["input_series"]]
    assert series
    assert _unknown(series) == {}


def _app_registry_names() -> frozenset[str]:
    """Sample names of the application's own metrics: its registry plus the fleet gauges it adds at scrape."""
    metrics = require_module("app.metrics")
    prometheus_client = require_module("prometheus_client")
    families = [(family.name, family.type) for family in prometheus_client.REGISTRY.collect()]
    fleet = metrics.FleetCollector(lambda: {"payment": "closed"}, lambda: 0, lambda: 0)
    families += [(family.name, family.type) for family in fleet.collect()]
    return sample_names((name, kind) for name, kind in families if kind in _SAMPLE_SUFFIXES)


def test_the_application_exports_every_name_the_contract_list_holds() -> None:
    # While this holds, exported_metric_names() can switch to the registry without losing a name in use.
    assert exported_metric_names() - _app_registry_names() == set()
