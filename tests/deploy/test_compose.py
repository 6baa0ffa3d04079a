"""docker-compose.yml, the image it builds and the Toxiproxy populate files."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.promql import REPO
from tests.deploy.tools import require_module

TOXIPROXY_DIR = REPO / "deploy" / "toxiproxy"
SERVICES = {"postgres", "redis", "payment-sim", "inventory-sim", "notification-sim", "toxiproxy", "migrate",
            "api", "worker", "lb", "prometheus", "grafana"}
SIMULATORS = {"payment": 9101, "inventory": 9102, "notification": 9103}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    yaml = require_module("yaml", pip_name="pyyaml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    result: dict[str, Any] = compose["services"]
    return result


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _published(service: dict[str, Any]) -> set[int]:
    return {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR-default}`, as `docker compose` resolves them."""
    def resolve(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if value is None or (operator == ":-" and value == ""):
            return default if operator else ""
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", resolve, text)


def _bindings(services: dict[str, Any], env: dict[str, str]) -> dict[str, list[tuple[str, int, int]]]:
    """service -> (host address, host port, container port) of every published port, `env` interpolated."""
    bindings: dict[str, list[tuple[str, int, int]]] = {}
    for name, service in services.items():
        for entry in service.get("ports", []):
            assert isinstance(entry, str), f"{name}: publish ports in the short string syntax, not {entry!r}"
            parts = _interpolate(entry, env).split("/")[0].rsplit(":", 2)
            if len(parts) == 1:  # "8000": the same port on the host
                parts.append(parts[0])
            if len(parts) == 2:  # no address: Docker publishes the port on every interface
                parts.insert(0, "0.0.0.0")
            address, host_port, container_port = parts
            bindings.setdefault(name, []).append((address, int(host_port), int(container_port)))
    return bindings


def _proxies(name: str) -> dict[str, dict[str, Any]]:
    proxies = json.loads((TOXIPROXY_DIR / name).read_text(encoding="utf-8"))
    return {proxy["name"]: proxy for proxy in proxies}


def test_compose_names_exactly_the_stack_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_every_published_port_is_bound_to_loopback_by_default(services: dict[str, Any]) -> None:
    bindings = _bindings(services, {})
    assert {"lb", "toxiproxy", "prometheus", "grafana"} <= set(bindings)
    exposed = {name: ports for name, ports in bindings.items() if any(addr != "127.0.0.1" for addr, *_ in ports)}
    assert exposed == {}


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.7"])
def test_orderflow_bind_moves_every_published_port(services: dict[str, Any], address: str) -> None:
    default = _bindings(services, {})
    moved = _bindings(services, {"ORDERFLOW_BIND": address})
    assert moved == {name: [(address, host, container) for _, host, container in ports]
                     for name, ports in default.items()}
    assert _bindings(services, {"ORDERFLOW_BIND": ""}) == default


def test_api_runs_gunicorn_on_all_interfaces_after_migrations(services: dict[str, Any]) -> None:
    api = services["api"]
    assert _command(api) == ["gunicorn", "--config", "python:app.gunicorn_config", "app:create_app()"]
    assert (api["environment"]["API_HOST"], api["environment"]["API_PORT"]) == ("0.0.0.0", "8000")
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert _command(services["migrate"]) == ["alembic", "upgrade", "head"]


def test_worker_consumes_every_queue_and_serves_its_metrics_to_the_network(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert _command(worker) == ["celery", "-A", "workers", "worker", "--loglevel=INFO",
                                "--queues=payments,notifications,dead_letter", "--concurrency=3",
                                "--without-gossip", "--without-mingle"]
    assert worker["environment"]["WORKER_METRICS_PORT"] == "9808"
    assert worker["environment"]["WORKER_METRICS_HOST"] == "0.0.0.0"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["api", "worker", "migrate"])
def test_application_processes_reach_dependencies_through_toxiproxy(
    services: dict[str, Any], name: str
) -> None:
    env = services[name]["environment"]
    assert env["DATABASE_URL"] == "postgresql+psycopg://postgres:postgres@postgres:5432/orderflow"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["PAYMENT_URL"] == "http://toxiproxy:19101"
    assert env["INVENTORY_URL"] == "http://toxiproxy:19102"
    assert env["NOTIFICATION_URL"] == "http://toxiproxy:19103"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_multiprocess_metrics_start_empty_in_each_container(services: dict[str, Any], name: str) -> None:
    directory = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert directory in services[name]["tmpfs"]


@pytest.mark.parametrize(("kind", "port"), sorted(SIMULATORS.items()))
def test_simulators_listen_on_their_contract_ports(services: dict[str, Any], kind: str, port: int) -> None:
    simulator = services[f"{kind}-sim"]
    assert _command(simulator) == [
        "python", "-m", "simulators", kind, "--host", "0.0.0.0", "--port", str(port)
    ]
    assert port in _published(simulator)
    assert simulator["build"]["context"] == "."


def test_toxiproxy_loads_the_compose_proxies_and_publishes_its_api(services: dict[str, Any]) -> None:
    toxiproxy = services["toxiproxy"]
    assert toxiproxy["image"] == "ghcr.io/shopify/toxiproxy:2.12.0"
    assert _command(toxiproxy) == ["-host=0.0.0.0", "-config=/config/compose.json"]
    assert "./deploy/toxiproxy:/config:ro" in toxiproxy["volumes"]
    assert 8474 in _published(toxiproxy)


def test_database_and_monitoring_images(services: dict[str, Any]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "orderflow"
    assert services["redis"]["image"] == "redis:7"
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert 3000 in _published(grafana)
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    # migrate is one-shot: it exits when the schema is current, so there is nothing to probe.
    unchecked = {name for name, service in services.items() if "healthcheck" not in service}
    assert unchecked == {"migrate"}


def test_compose_and_local_proxies_match_in_names_and_listen_ports() -> None:
    compose, local = _proxies("compose.json"), _proxies("local.json")
    assert set(compose) == set(local) == set(SIMULATORS)
    for name in SIMULATORS:
        assert compose[name]["listen"].rsplit(":", 1)[1] == local[name]["listen"].rsplit(":", 1)[1]


@pytest.mark.parametrize(("kind", "port"), sorted(SIMULATORS.items()))
def test_proxies_point_at_the_simulators(kind: str, port: int) -> None:
    compose, local = _proxies("compose.json")[kind], _proxies("local.json")[kind]
    assert compose["listen"] == f"0.0.0.0:{port + 10000}"
    assert compose["upstream"] == f"{kind}-sim:{port}"
    assert local["listen"] == f"127.0.0.1:{port + 10000}"
    assert local["upstream"] == f"127.0.0.1:{port}"


def test_image_installs_the_project_on_python_311_slim() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "pip install --no-deps ." in dockerfile
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "var", ".git"} <= set(ignored)
