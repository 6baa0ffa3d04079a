"""docker-compose.yml as a fleet: `docker compose up --scale api=3 --scale worker=4` (README, docs/operations.md).

No Docker engine is needed: the compose file, the load balancer's configuration and Prometheus's are read and
checked for what scaling needs. The api and worker replicas publish no host port (two replicas could not
publish the same one); one load balancer publishes the API's port on 127.0.0.1 and spreads requests over every
replica; Prometheus discovers every replica; the migrations run once, before any replica starts; every
replica checks the same admin token; and the pools of the documented fleet fit PostgreSQL's connections.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask
from werkzeug.exceptions import RequestEntityTooLarge

from app.api.errors import register_error_handlers
from tests.deploy.promql import PROMETHEUS_DIR, REPO
from tests.deploy.test_compose import _bindings, _command, _interpolate
from tests.deploy.tools import require_module

SCALED = ("api", "worker")
DOCUMENTED_SCALE = {"api": 3, "worker": 4}
NGINX_CONF = REPO / "deploy" / "nginx" / "orderflow.conf"
DOCKER_DNS = "127.0.0.11"
# gunicorn processes per API replica when API_PROCESSES is not set (app/gunicorn_config.py).
DEFAULT_API_PROCESSES = 2
# PostgreSQL keeps superuser_reserved_connections (3) of max_connections for itself.
RESERVED = 3


def _load(text: str) -> Any:
    yaml = require_module("yaml", pip_name="pyyaml")
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (REPO / "docker-compose.yml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def services(compose_text: str) -> dict[str, Any]:
    result: dict[str, Any] = _load(compose_text)["services"]
    return result


@pytest.fixture(scope="module")
def nginx() -> str:
    # Comments dropped, so only what nginx reads is checked.
    return "\n".join(line.split("#", 1)[0] for line in NGINX_CONF.read_text(encoding="utf-8").splitlines())


def _directives(conf: str, name: str) -> list[str]:
    return [match.strip() for match in re.findall(rf"^[ \t]*{name}[ \t]+([^;{{}}\n]*);", conf, re.MULTILINE)]


def _env(service: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = (service.get("environment") or {}).get(name, default)
    return None if value is None else str(value)


def test_api_and_worker_publish_no_host_port_so_they_can_scale(services: dict[str, Any]) -> None:
    for name in SCALED:
        assert "ports" not in services[name], f"{name}: a second replica could not publish the same host port"
        assert "container_name" not in services[name], f"{name}: a fixed container name allows one replica"


def test_the_load_balancer_publishes_the_one_api_port_on_loopback(services: dict[str, Any]) -> None:
    api_port = int(_env(services["api"], "API_PORT") or 0)
    assert _bindings(services, {})["lb"] == [("127.0.0.1", api_port, api_port)]
    lb = services["lb"]
    assert "./deploy/nginx/orderflow.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert lb["restart"] == "unless-stopped"
    assert f"127.0.0.1:{api_port}/health/live" in " ".join(lb["healthcheck"]["test"])


def test_the_load_balancer_image_has_dns_resolved_upstreams(services: dict[str, Any]) -> None:
    # `server ... resolve` came to nginx OSS in 1.27.3.
    image, _, tag = services["lb"]["image"].partition(":")
    assert image == "nginx"
    version = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", tag).groups(default="0"))  # type: ignore[union-attr]
    assert version >= (1, 27, 3), tag


def test_the_load_balancer_spreads_requests_over_every_api_replica(services: dict[str, Any], nginx: str) -> None:
    api_port = _env(services["api"], "API_PORT")
    [resolver] = _directives(nginx, "resolver")
    assert resolver.split()[0] == DOCKER_DNS
    assert re.search(r"\bvalid=\d+s\b", resolver)
    [upstream] = re.findall(r"upstream\s+(\w+)\s*\{", nginx)
    [server] = _directives(nginx, "server")
    address, *parameters = server.split()
    assert address == f"api:{api_port}"
    assert "resolve" in parameters  # asked again as replicas come and go, not once at start
    assert {p.split("=")[0] for p in parameters} >= {"max_fails", "fail_timeout"}  # passive health checks
    assert _directives(nginx, "zone")  # `resolve` keeps the peers in shared memory
    assert _directives(nginx, "proxy_pass") == [f"http://{upstream}"]
    assert _directives(nginx, "listen") == [api_port]


def test_the_load_balancer_never_sends_an_order_twice(nginx: str) -> None:
    [next_upstream] = _directives(nginx, "proxy_next_upstream")
    assert "non_idempotent" not in next_upstream.split()
    assert set(next_upstream.split()) <= {"error", "timeout"}


def test_a_body_the_load_balancer_refuses_gets_the_apis_own_413(nginx: str) -> None:
    app = Flask(__name__)
    register_error_handlers(app)

    @app.post("/too-large")
    def too_large() -> None:
        raise RequestEntityTooLarge()

    response = app.test_client().post("/too-large")
    [body] = re.findall(r"return 413 '([^']*)'", nginx)
    assert json.loads(body) == response.get_json()
    assert response.status_code == 413


def test_prometheus_discovers_every_replica_by_dns(services: dict[str, Any]) -> None:
    config = _load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    ports = {"api": _env(services["api"], "API_PORT"), "worker": _env(services["worker"], "WORKER_METRICS_PORT")}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in SCALED:
        job = jobs[f"orderflow-{name}"]
        assert "static_configs" not in job  # a static target is one replica of several
        [discovery] = job["dns_sd_configs"]
        assert discovery["names"] == [name]
        assert discovery["type"] == "A"
        assert str(discovery["port"]) == ports[name]


def test_migrations_run_once_before_any_replica_starts(services: dict[str, Any]) -> None:
    migrations = ("alembic upgrade head", "orderflow db upgrade")
    migrating = [name for name, service in services.items()
                 if "command" in service and " ".join(_command(service)) in migrations]
    assert migrating == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in SCALED:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "upgrade" not in _command(services[name])  # the replicas never migrate


def test_every_replica_checks_one_admin_token_from_the_environment(
    services: dict[str, Any], compose_text: str
) -> None:
    declared = {_env(services[name], "ADMIN_TOKEN") for name in SCALED}
    assert declared == {"${ADMIN_TOKEN:-}"}  # one variable, from the shell or .env; no replica makes its own
    given = _load(_interpolate(compose_text, {"ADMIN_TOKEN": "fleet-token"}))["services"]
    assert {_env(given[name], "ADMIN_TOKEN") for name in SCALED} == {"fleet-token"}
    # .env holds the token: it stays out of the image and out of the repository.
    assert ".env" in (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


def test_the_documented_fleet_fits_postgresqls_connections(services: dict[str, Any]) -> None:
    command = _command(services["postgres"])
    max_connections = int(command[command.index("-c") + 1].removeprefix("max_connections="))
    api, worker = services["api"], services["worker"]
    concurrency = int(next(arg for arg in _command(worker) if arg.startswith("--concurrency=")).split("=")[1])
    per_process = {name: int(_env(services[name], "DATABASE_POOL_SIZE") or 10)
                   + int(_env(services[name], "DATABASE_MAX_OVERFLOW") or 10) for name in SCALED}
    processes = {"api": int(_env(api, "API_PROCESSES", str(DEFAULT_API_PROCESSES)) or 0),
                 "worker": concurrency + 1}  # the pool processes and the main one (relay, metrics)
    fleet = sum(DOCUMENTED_SCALE[name] * processes[name] * per_process[name] for name in SCALED)
    assert fleet + 1 <= max_connections - RESERVED  # + the one-shot migrate
    # An API process serves API_THREADS requests at once, each with a connection of its own at most.
    assert per_process["api"] >= int(_env(api, "API_THREADS", "8") or 0)
