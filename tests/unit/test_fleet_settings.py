"""The settings a fleet of hosts needs: where the API and the worker metrics listen, the database pool of each
process, which workers run the outbox relay, and whether `make run` migrates. All from the environment,
validated at start with a message that names the variable."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from sqlalchemy.pool import QueuePool

from app.adapters.db import make_engine
from app.adapters.migrate import database_problem
from app.bootstrap import bootstrap
from app.config import ROOT, Settings, SettingsError, address
from app.stack.supervisor import StartupError, Supervisor, preflight, stack_processes
from workers.bootsteps import metrics_server

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # never connected to: engines connect lazily


def test_the_defaults_are_one_machines() -> None:
    settings = Settings.from_env({})
    assert (settings.api_host, settings.worker_metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert (settings.database_pool_size, settings.database_max_overflow) == (10, 10)
    assert settings.relay is True
    assert settings.migrate is True
    assert address(Settings.from_env({}).api_host, Settings.from_env({}).api_port) == "127.0.0.1:8000"


@pytest.mark.parametrize(("host", "bind"), [
    ("0.0.0.0", "0.0.0.0:8100"),
    ("10.1.2.3", "10.1.2.3:8100"),
    ("::", "[::]:8100"),
    ("localhost", "localhost:8100"),
    ("api-1.internal", "api-1.internal:8100"),
])
def test_api_host_and_port_make_gunicorns_bind(monkeypatch: pytest.MonkeyPatch, host: str, bind: str) -> None:
    settings = Settings.from_env({"API_HOST": host, "API_PORT": "8100"})
    assert address(settings.api_host, settings.api_port) == bind
    assert Settings.from_env({"API_HOST": host}).api_host == host
    monkeypatch.setenv("API_HOST", host)
    monkeypatch.setenv("API_PORT", "8100")
    assert runpy.run_path(str(ROOT / "app" / "gunicorn_config.py"))["bind"] == bind


@pytest.mark.parametrize(("variable", "value"), [
    ("API_HOST", "0.0.0.0:8000"),
    ("API_HOST", "two words"),
    ("API_HOST", "http://0.0.0.0"),
    ("WORKER_METRICS_HOST", "-bad-"),
    ("DATABASE_POOL_SIZE", "0"),
    ("DATABASE_POOL_SIZE", "ten"),
    ("DATABASE_MAX_OVERFLOW", "-1"),
    ("DATABASE_MAX_OVERFLOW", "2.5"),
    ("ORDERFLOW_RELAY", "sometimes"),
    ("ORDERFLOW_MIGRATE", "later"),
    ("ORDERFLOW_RELAY_INTERVAL", "0"),
    ("ORDERFLOW_RELAY_INTERVAL", "soon"),
])
def test_a_bad_value_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({variable: value})
    assert str(raised.value).startswith(f"{variable}: ")
    assert repr(value) in str(raised.value)
    # make run checks them before it starts anything, with the same message.
    with pytest.raises(StartupError, match=f"^{variable}: "):
        preflight({variable: value})


def test_gunicorn_refuses_a_bad_api_host_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_HOST", "not an address")
    with pytest.raises(SettingsError, match="^API_HOST: "):
        runpy.run_path(str(ROOT / "app" / "gunicorn_config.py"))


@pytest.mark.parametrize(("value", "expected"), [
    ("off", False), ("OFF", False), ("false", False), ("0", False), ("no", False),
    ("on", True), ("On", True), ("true", True), ("1", True), ("yes", True), ("", True),
])
def test_relay_and_migrate_are_switched_on_or_off(value: str, expected: bool) -> None:
    settings = Settings.from_env({"ORDERFLOW_RELAY": value, "ORDERFLOW_MIGRATE": value})
    assert (settings.relay, settings.migrate) == (expected, expected)


def test_the_pool_settings_size_each_processs_postgresql_pool() -> None:
    settings = Settings.from_env({"DATABASE_URL": POSTGRES, "DATABASE_POOL_SIZE": "3", "DATABASE_MAX_OVERFLOW": "0",
                                  "REDIS_URL": "redis://127.0.0.1:6379/0", "ADMIN_TOKEN": "t"})
    services = bootstrap(settings)
    try:
        pool = services.engine.pool
        assert isinstance(pool, QueuePool)
        assert (pool.size(), pool._max_overflow) == (3, 0)  # noqa: SLF001 - no public reader of the overflow
    finally:
        services.engine.dispose()


def test_make_engine_keeps_as_many_again_as_its_overflow_unless_told() -> None:
    engine = make_engine(POSTGRES, pool_size=4)
    other = make_engine(POSTGRES, pool_size=4, max_overflow=1)
    try:
        assert isinstance(engine.pool, QueuePool) and isinstance(other.pool, QueuePool)
        assert engine.pool._max_overflow == 4  # noqa: SLF001
        assert other.pool._max_overflow == 1  # noqa: SLF001
    finally:
        engine.dispose()
        other.dispose()


def test_make_run_probes_the_api_and_the_worker_where_they_listen() -> None:
    local = {spec.name: spec for spec in stack_processes(Settings.from_env({}))}
    assert (local["api"].probe_host, local["worker"].probe_host) == ("127.0.0.1", "127.0.0.1")
    wide = {spec.name: spec for spec in stack_processes(
        Settings.from_env({"API_HOST": "0.0.0.0", "WORKER_METRICS_HOST": "10.1.2.3"}))}
    assert (wide["api"].probe_host, wide["worker"].probe_host) == ("127.0.0.1", "10.1.2.3")


class _NoServices:
    fleet_collector = None


def test_the_worker_metrics_server_listens_on_the_host_it_is_given() -> None:
    server = metrics_server(_NoServices(), host="127.0.0.1", port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    server = metrics_server(_NoServices(), host="0.0.0.0", port=0)
    try:
        assert server.server_address[0] == "0.0.0.0"
    finally:
        server.server_close()


class _QuietSupervisor(Supervisor):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[str] = []

    def log(self, message: str) -> None:
        self.logged.append(message)


def test_make_run_migrates_unless_orderflow_migrate_is_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orderflow.db'}"
    supervisor = _QuietSupervisor()
    supervisor.migrate(Settings.from_env({"DATABASE_URL": url, "ORDERFLOW_MIGRATE": "off"}))
    assert supervisor.logged == [f"not applying migrations to {url} (ORDERFLOW_MIGRATE=off)"]
    assert "does not exist" in str(database_problem(url))
    supervisor.migrate(Settings.from_env({"DATABASE_URL": url}))
    assert supervisor.logged[-1] == f"applying migrations to {url}"
    assert database_problem(url) is None
