"""docker-compose.yml runs the stack `make run` runs: the same processes, ports, proxies and commands.

`make run` is the reference: `app.stack.supervisor.stack_processes(Settings())` says what it starts. Each of its
processes is looked up in docker-compose.yml and compared on what matters. The differences a container
needs are the only ones allowed, and each is checked, not skipped: it listens on 0.0.0.0 where `make run`
listens on 127.0.0.1, and it addresses other services by compose service name where `make run` uses
127.0.0.1.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.config import Settings
from app.stack.supervisor import DEPENDENCIES, POPULATE_TEMPLATE, PROXY_PORTS, ProcessSpec, stack_processes
from tests.deploy.promql import REPO
from tests.deploy.tools import require_module

# make run's process -> the compose service that plays its part.
STACK_TO_COMPOSE = {
    "payment-sim": "payment-sim",
    "inventory-sim": "inventory-sim",
    "notification-sim": "notification-sim",
    "chaosproxy": "toxiproxy",
    "api": "api",
    "worker": "worker",
}
# Compose services with no process of their own under make run: the database there is a file (or
# DATABASE_URL), Redis is embedded, the supervisor applies the migrations itself, one API needs no load
# balancer, and monitoring is optional.
INFRASTRUCTURE = {"postgres", "redis", "migrate", "lb", "prometheus", "grafana"}
# The api and worker services scale to several replicas, so they publish no host port: the load balancer
# publishes the API's port, and Prometheus scrapes each worker replica on the compose network.
PUBLISHED_BY = {"api": "lb", "worker": None}
# CONTRACT section 2.
CONTRACT_PORTS = {"api": 8000, "worker": 9808, "chaosproxy": 8474, "payment-sim": 9101, "inventory-sim": 9102,
                  "notification-sim": 9103}
CONTRACT_QUEUES = {"payments", "notifications", "dead_letter"}
TOXIPROXY_DEFAULT_PORT = 8474  # Toxiproxy's API port when `-port` is not given
LOOPBACK, ALL_INTERFACES = "127.0.0.1", "0.0.0.0"
# Environment variables the app reads through a library rather than by name in its own code.
READ_BY_LIBRARIES = {"PROMETHEUS_MULTIPROC_DIR": "prometheus_client's multiprocess mode"}
# Real mismatches, known and reported. Each turns into a failure (strict xfail) once fixed, so its entry
# here gets removed with the fix.
KNOWN_UNREAD_VARIABLES: dict[str, str] = {}
# --- reading both sides -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    yaml = require_module("yaml", pip_name="pyyaml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    result: dict[str, Any] = compose["services"]
    return result


@pytest.fixture(scope="module")
def stack() -> dict[str, ProcessSpec]:
    return {spec.name: spec for spec in stack_processes(Settings())}


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from short-syntax `ports` ("host:container" or "container")."""
    published: dict[int, int] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        published[int(parts[-1])] = int(parts[-2]) if len(parts) > 1 else int(parts[-1])
    return published


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(key): None if value is None else str(value) for key, value in env.items()}


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def _options(args: list[str]) -> dict[str, str]:
    """`--name value`, `--name=value` and Go's `-name=value` as {name: value}; a bare flag maps to ""."""
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        name, sep, value = arg.lstrip("-").partition("=")
        if not sep and index + 1 < len(args) and not args[index + 1].startswith("-"):
            value, index = args[index + 1], index + 1
        options[name] = value
        index += 1
    return options


def _proxies(name: str) -> dict[str, dict[str, Any]]:
    proxies = json.loads((REPO / "deploy" / "toxiproxy" / name).read_text(encoding="utf-8"))
    return {proxy["name"]: proxy for proxy in proxies}


def _compose_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a path inside the container is, through the service's bind mounts."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount = str(volume).split(":")[:2]
        if source.startswith(".") and target.is_relative_to(mount):
            return (REPO / source / target.relative_to(mount)).resolve()
    raise AssertionError(f"{container_path} is not inside any bind mount of the service")


def _compose_listen_port(name: str, service: dict[str, Any]) -> int:
    """The port the compose service's process listens on inside its container."""
    args = _argv(service)
    if name.endswith("-sim"):
        return int(_options(args[4:])["port"])
    if name == "chaosproxy":
        return int(_options(args).get("port") or TOXIPROXY_DEFAULT_PORT)
    if name == "api":
        return int(_environment(service).get("API_PORT") or Settings().api_port)
    env_port = _environment(service)["WORKER_METRICS_PORT"]
    assert env_port is not None
    return int(env_port)


def test_compose_restarts_every_process_make_run_restarts(services: dict[str, Any]) -> None:
    """The supervisor starts a process that died on its own again; compose must do the same."""
    policies = {name: services[name].get("restart", "no") for name in STACK_TO_COMPOSE.values()}
    assert all(policy in ("unless-stopped", "always") for policy in policies.values()), policies
    assert services["migrate"].get("restart") == "no", "a one-shot migration must not loop"


# --- processes and ports --------------------------------------------------------------------------------

def test_compose_runs_a_service_for_every_process_of_make_run(
    services: dict[str, Any], stack: dict[str, ProcessSpec]
) -> None:
    assert set(stack) == set(STACK_TO_COMPOSE), "a process was added to or removed from make run"
    assert set(STACK_TO_COMPOSE.values()) <= set(services)
    assert set(services) - set(STACK_TO_COMPOSE.values()) == INFRASTRUCTURE


def test_make_run_listens_on_the_contract_ports(stack: dict[str, ProcessSpec]) -> None:
    assert {name: spec.port for name, spec in stack.items()} == CONTRACT_PORTS


@pytest.mark.parametrize("name", sorted(CONTRACT_PORTS))
def test_compose_listens_on_and_publishes_the_same_port(
    services: dict[str, Any], stack: dict[str, ProcessSpec], name: str
) -> None:
    service = services[STACK_TO_COMPOSE[name]]
    port = stack[name].port
    assert _compose_listen_port(name, service) == port
    publisher = PUBLISHED_BY.get(name, STACK_TO_COMPOSE[name])
    if publisher is None:
        assert port not in _published(service)
        return
    assert _published(services[publisher]).get(port) == port, f"{publisher} must publish {port}:{port}"


@pytest.mark.parametrize("name", ["payment-sim", "inventory-sim", "notification-sim", "api", "worker"])
def test_compose_healthchecks_probe_the_listening_port(
    services: dict[str, Any], stack: dict[str, ProcessSpec], name: str
) -> None:
    probe = " ".join(services[STACK_TO_COMPOSE[name]]["healthcheck"]["test"])
    assert re.findall(r"127\.0\.0\.1:(\d+)", probe) == [str(stack[name].port)]


# --- commands -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", DEPENDENCIES)
def test_simulators_run_the_same_command(
    services: dict[str, Any], stack: dict[str, ProcessSpec], kind: str
) -> None:
    local, compose = stack[f"{kind}-sim"].argv, _argv(services[f"{kind}-sim"])
    assert Path(local[0]).name.startswith("python") and compose[0] == "python"
    assert _options(local[4:])["host"] == LOOPBACK
    assert _options(compose[4:])["host"] == ALL_INTERFACES
    assert local[1:].index(LOOPBACK) == compose[1:].index(ALL_INTERFACES)
    assert [arg.replace(LOOPBACK, "HOST") for arg in local[1:]] == \
        [arg.replace(ALL_INTERFACES, "HOST") for arg in compose[1:]]


def _without_bind(args: list[str]) -> tuple[list[str], str | None]:
    for index, arg in enumerate(args):
        if arg == "--bind" or arg == "-b":
            return args[:index] + args[index + 2:], args[index + 1]
        if arg.startswith("--bind="):
            return args[:index] + args[index + 1:], arg.split("=", 1)[1]
    return args, None


def test_api_runs_the_same_gunicorn_config_and_app_factory(
    services: dict[str, Any], stack: dict[str, ProcessSpec]
) -> None:
    local, compose = stack["api"].argv, _argv(services["api"])
    assert Path(local[0]).name == "gunicorn" and compose[0] == "gunicorn"
    local_args, local_bind = _without_bind(local[1:])
    compose_args, compose_bind = _without_bind(compose[1:])
    # Both leave the address to the config module (API_HOST); a container must listen beyond its loopback.
    assert local_bind is None and compose_bind is None
    assert Settings().api_host == LOOPBACK
    assert _environment(services["api"])["API_HOST"] == ALL_INTERFACES
    assert local_args == compose_args
    assert _options(local_args[:-1]) == {"config": "python:app.gunicorn_config"}
    assert local_args[-1] == "app:create_app()"


def test_the_gunicorn_config_binds_make_run_to_the_api_port(
    monkeypatch: pytest.MonkeyPatch, stack: dict[str, ProcessSpec]
) -> None:
    monkeypatch.setenv("API_PORT", str(Settings().api_port))
    monkeypatch.delenv("API_HOST", raising=False)
    config = runpy.run_path(str(REPO / "app" / "gunicorn_config.py"))
    assert config["bind"] == f"{LOOPBACK}:{stack['api'].port}"


def _celery(argv: list[str]) -> tuple[str, dict[str, str]]:
    """(executable name, options) with the app and the sub-command as options `app` and `command`."""
    aliases = {"A": "app", "Q": "queues", "c": "concurrency", "l": "loglevel"}
    options: dict[str, str] = {}
    args = argv[1:]
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-A", "--app", "-Q", "-c", "-l"):
            options[aliases.get(arg.lstrip("-"), arg.lstrip("-"))] = args[index + 1]
            index += 2
            continue
        if not arg.startswith("-"):
            assert "command" not in options, f"two sub-commands: {options['command']!r} and {arg!r}"
            options["command"] = arg
        else:
            name, _, value = arg.lstrip("-").partition("=")
            options[aliases.get(name, name)] = value
        index += 1
    return Path(argv[0]).name, options


def test_worker_runs_the_same_app_queues_and_concurrency(
    services: dict[str, Any], stack: dict[str, ProcessSpec]
) -> None:
    local_exe, local = _celery(stack["worker"].argv)
    compose_exe, compose = _celery(_argv(services["worker"]))
    assert local_exe == compose_exe == "celery"
    for name in ("app", "command", "concurrency", "loglevel"):
        assert local.get(name) == compose.get(name), f"worker {name}"
    assert (local["app"], local["command"]) == ("workers", "worker")
    assert set(local["queues"].split(",")) == set(compose["queues"].split(",")) == CONTRACT_QUEUES
    assert int(local["concurrency"]) >= 2  # CONTRACT section 2: prefork, >= 2 processes


def test_worker_options_are_identical(services: dict[str, Any], stack: dict[str, ProcessSpec]) -> None:
    assert _celery(stack["worker"].argv)[1] == _celery(_argv(services["worker"]))[1]


# --- the chaos proxy and the proxies ------------------------------------------------------------------

def test_chaos_proxy_and_toxiproxy_load_their_proxy_files_on_the_same_api_port(
    services: dict[str, Any], stack: dict[str, ProcessSpec]
) -> None:
    local = _options(stack["chaosproxy"].argv[3:])
    toxiproxy = services["toxiproxy"]
    compose = _options(_argv(toxiproxy))
    assert (local["host"], compose["host"]) == (LOOPBACK, ALL_INTERFACES)
    assert int(local["port"]) == int(compose.get("port") or TOXIPROXY_DEFAULT_PORT)
    assert Path(local["config"]) == POPULATE_TEMPLATE == REPO / "deploy" / "toxiproxy" / "local.json"
    assert _compose_path(toxiproxy, compose["config"]) == REPO / "deploy" / "toxiproxy" / "compose.json"


def test_both_proxy_files_define_the_same_proxies_on_the_same_ports(stack: dict[str, ProcessSpec]) -> None:
    compose, local = _proxies("compose.json"), _proxies("local.json")
    assert list(compose) == list(local) == list(DEPENDENCIES)
    for dependency, proxy_port in zip(DEPENDENCIES, PROXY_PORTS, strict=True):
        simulator = f"{dependency}-sim"
        assert _host_port(local[dependency]["listen"]) == (LOOPBACK, proxy_port)
        assert _host_port(compose[dependency]["listen"]) == (ALL_INTERFACES, proxy_port)
        assert _host_port(local[dependency]["upstream"]) == (LOOPBACK, stack[simulator].port)
        # Inside compose a simulator is reached by its service name.
        compose_upstream = _host_port(compose[dependency]["upstream"])
        assert compose_upstream == (STACK_TO_COMPOSE[simulator], stack[simulator].port)
        assert local[dependency].get("enabled", True) is True
        assert compose[dependency].get("enabled", True) is True


def test_toxiproxy_publishes_every_proxy_port(services: dict[str, Any]) -> None:
    published = _published(services["toxiproxy"])
    for proxy in _proxies("compose.json").values():
        port = _host_port(proxy["listen"])[1]
        assert published.get(port) == port


@pytest.mark.parametrize("dependency", DEPENDENCIES)
@pytest.mark.parametrize("name", ["api", "worker"])
def test_the_app_reaches_each_dependency_through_its_proxy_in_both_stacks(
    services: dict[str, Any], name: str, dependency: str
) -> None:
    variable = f"{dependency.upper()}_URL"
    compose_url = _environment(services[name])[variable]
    assert compose_url is not None
    compose_target = urlsplit(compose_url)
    assert (compose_target.hostname, compose_target.port) == (
        STACK_TO_COMPOSE["chaosproxy"], _host_port(_proxies("compose.json")[dependency]["listen"])[1])
    local_target = urlsplit(getattr(Settings(), f"{dependency}_url"))
    local_listen = _host_port(_proxies("local.json")[dependency]["listen"])
    assert (local_target.hostname, local_target.port) == local_listen


# --- the environment compose sets ---------------------------------------------------------------------

def _app_source() -> str:
    files = sorted((REPO / "app").rglob("*.py")) + sorted((REPO / "workers").rglob("*.py"))
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def _compose_variables() -> list[Any]:
    """The variables compose sets for the API and the worker, read at collection time."""
    try:
        import yaml
    except ImportError:  # the test itself then skips (or fails under ORDERFLOW_REQUIRE_ALL=1)
        return ["DATABASE_URL"]
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    names = sorted({name for service in ("api", "worker") for name in _environment(services[service])}
                   - set(READ_BY_LIBRARIES))
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_UNREAD_VARIABLES[name]))
        if name in KNOWN_UNREAD_VARIABLES else name
        for name in names
    ]


@pytest.mark.parametrize("variable", _compose_variables())
def test_every_variable_compose_sets_for_the_app_is_read_by_it(
    services: dict[str, Any], variable: str
) -> None:
    assert any(variable in _environment(services[name]) for name in ("api", "worker"))
    source = _app_source()
    assert f'"{variable}"' in source or f"'{variable}'" in source, \
        f"docker-compose.yml sets {variable} for the app, but nothing in app/ or workers/ reads it"
