"""One Settings object, read from the environment (all optional) once per process."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path

from app.services.outbox_relay import DEFAULT_REPUBLISH_AFTER
from app.services.payment_jobs import DEFAULT_LEASE_MARGIN

ROOT = Path(__file__).resolve().parent.parent
# Run from a checkout, OrderFlow uses the checkout's files: the resilience.toml operators edit, var/ beside the
# code. Installed as a package there is no checkout, only site-packages, which is no place for data.
CHECKOUT: Path | None = ROOT if (ROOT / "pyproject.toml").is_file() else None
DEFAULT_RESILIENCE_FILE = CHECKOUT / "resilience.toml" if CHECKOUT else Path(str(files("app") / "resilience.toml"))


def var_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where `make run` keeps its data: the SQLite file, the Redis socket, the admin token, metrics.

    ORDERFLOW_VAR, else var/ of the checkout, or of the working directory for an installed package.
    """
    env = os.environ if env is None else env
    return Path(env.get("ORDERFLOW_VAR") or (CHECKOUT or Path.cwd()) / "var")



DEFAULT_PREFIX = "orderflow"
LOOPBACK = "127.0.0.1"
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")


class SettingsError(ValueError):
    """A setting has a value the service cannot start with; the message names the variable."""


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: not a port number: {raw!r}") from None
    if not 0 <= value <= 65535:
        raise SettingsError(f"{name}: not a port number: {raw!r}")
    return value


# RFC 1123 host names: what a bind address may be when it is not an IP address (`localhost`, a container's name).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_SWITCHES = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    if not _HOST_NAME.match(raw):
        raise SettingsError(f"{name}: not an address to listen on: {raw!r} (an IP address such as 0.0.0.0, "
                            f"or a host name)")
    return raw


def _count(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise SettingsError(f"{name}: not a whole number >= {minimum}: {raw!r}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = _SWITCHES.get(raw.strip().lower())
    if value is None:
        raise SettingsError(f"{name}: 'on' or 'off', got {raw!r}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 if zero else value > 0):
        raise SettingsError(f"{name}: not a number of seconds {'>=' if zero else '>'} 0: {raw!r}")
    return value


def address(host: str, port: int) -> str:
    """host:port as a server binds it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_host(host: str) -> str:
    """Where a process on this machine reaches a server bound to `host`: a wildcard is reached on loopback."""
    return {"0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)


def admin_token_file(env: Mapping[str, str] | None = None) -> Path:
    """Where `make run` keeps the admin token it generated on first start."""
    return var_dir(env) / "admin-token"


def read_admin_token(path: Path) -> str | None:
    """The token kept in `path`, None when there is none.

    A file that group or others may read or write is refused rather than used: its token may be known.
    """
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o066:
                raise SettingsError(
                    f"{path} is readable or writable by group or others (mode {mode & 0o777:o}); "
                    f"fix it with: chmod 600 {path}"
                )
            stored = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the admin token: {exc.strerror}") from None
    return stored or None


def _admin_token(env: Mapping[str, str]) -> str | None:
    return env.get("ADMIN_TOKEN") or read_admin_token(admin_token_file(env))


def _broker(env: Mapping[str, str]) -> str | None:
    url = env.get("BROKER_URL")
    if not url:
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in AMQP_SCHEMES + REDIS_SCHEMES:
        raise SettingsError(f"BROKER_URL: unsupported scheme {scheme!r}: use amqp:// (RabbitMQ) or redis:// (Redis)")
    return url


def is_amqp_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in AMQP_SCHEMES


def _in_var(template: str, name: str) -> Callable[[], str]:
    """A default inside var/, found when a Settings is made (never when this module is imported)."""
    return lambda: template.format(var_dir() / name)


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=_in_var("sqlite:///{}", "orderflow.db"))
    database_schema: str | None = None
    redis_url: str = field(default_factory=_in_var("unix://{}", "redis.sock"))
    # BROKER_URL as given; None: the Redis of `redis_url` (see `broker_url`).
    broker: str | None = None
    # Names the deployment: its Redis keys start with it, and on RabbitMQ so do its queues (unless default).
    redis_prefix: str = DEFAULT_PREFIX
    admin_token: str | None = None
    resilience_file: Path = DEFAULT_RESILIENCE_FILE
    payment_url: str = "http://127.0.0.1:19101"
    inventory_url: str = "http://127.0.0.1:19102"
    notification_url: str = "http://127.0.0.1:19103"
    # 127.0.0.1 on a developer's machine; 0.0.0.0 (or the host's address) behind a load balancer or in a container.
    api_host: str = LOOPBACK
    api_port: int = 8000
    # gunicorn processes of the API and threads in each: threads for I/O-bound requests, processes for the GIL.
    api_processes: int = 2
    api_threads: int = 8
    chaos_port: int = 8474
    worker_metrics_host: str = LOOPBACK
    worker_metrics_port: int = 9808
    # Connections each process keeps to PostgreSQL, and how many more it may open under load: a fleet's
    # processes together must stay below the server's max_connections (docs/operations.md, "Running a fleet").
    database_pool_size: int = 10
    database_max_overflow: int = 10
    # How often the outbox relay looks for due jobs.
    relay_interval: float = 0.5
    # Whether this worker runs the outbox relay: a fleet needs it on some workers, not on all.
    relay: bool = True
    # A job published this long ago and still pending lost its message: the relay publishes it again.
    republish_after: float = DEFAULT_REPUBLISH_AFTER
    # How long past `jobs.payment.attempt_timeout` a claimed payment job stays leased to its worker.
    lease_margin: float = DEFAULT_LEASE_MARGIN
    # Whether `make run` applies the migrations before it starts the stack (off: something else does, once).
    migrate: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        var = var_dir(env)
        return cls(
            database_url=env.get("DATABASE_URL") or f"sqlite:///{var / 'orderflow.db'}",
            database_schema=env.get("DATABASE_SCHEMA") or None,
            redis_url=env.get("REDIS_URL") or f"unix://{var / 'redis.sock'}",
            broker=_broker(env),
            redis_prefix=env.get("ORDERFLOW_REDIS_PREFIX") or defaults.redis_prefix,
            admin_token=_admin_token(env),
            resilience_file=Path(env.get("RESILIENCE_FILE") or defaults.resilience_file),
            payment_url=(env.get("PAYMENT_URL") or defaults.payment_url).rstrip("/"),
            inventory_url=(env.get("INVENTORY_URL") or defaults.inventory_url).rstrip("/"),
            notification_url=(env.get("NOTIFICATION_URL") or defaults.notification_url).rstrip("/"),
            api_host=_host(env, "API_HOST", defaults.api_host),
            api_port=_port(env, "API_PORT", defaults.api_port),
            api_processes=_count(env, "API_PROCESSES", defaults.api_processes, minimum=1),
            api_threads=_count(env, "API_THREADS", defaults.api_threads, minimum=1),
            chaos_port=_port(env, "CHAOS_PORT", defaults.chaos_port),
            worker_metrics_host=_host(env, "WORKER_METRICS_HOST", defaults.worker_metrics_host),
            worker_metrics_port=_port(env, "WORKER_METRICS_PORT", defaults.worker_metrics_port),
            database_pool_size=_count(env, "DATABASE_POOL_SIZE", defaults.database_pool_size, minimum=1),
            database_max_overflow=_count(env, "DATABASE_MAX_OVERFLOW", defaults.database_max_overflow, minimum=0),
            relay_interval=_seconds(env, "ORDERFLOW_RELAY_INTERVAL", defaults.relay_interval),
            relay=_switch(env, "ORDERFLOW_RELAY", defaults.relay),
            republish_after=_seconds(env, "ORDERFLOW_REPUBLISH_AFTER", defaults.republish_after, zero=True),
            lease_margin=_seconds(env, "ORDERFLOW_LEASE_MARGIN", defaults.lease_margin, zero=True),
            migrate=_switch(env, "ORDERFLOW_MIGRATE", defaults.migrate),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def broker_url(self) -> str:
        """The Celery broker, in kombu's spelling: BROKER_URL, else the Redis of REDIS_URL."""
        return celery_broker_url(self.broker or self.redis_url)

    @property
    def broker_is_amqp(self) -> bool:
        return is_amqp_url(self.broker_url)


def celery_broker_url(redis_url: str) -> str:
    """Kombu spells a Redis unix socket `redis+socket://`; redis-py spells it `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url


def redis_py_url(url: str) -> str:
    """The inverse of `celery_broker_url`."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url
