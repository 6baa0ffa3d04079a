"""What `make run`'s supervisor checks before it starts anything, and when it says the stack is ready.

Real sockets and real child processes; nothing is mocked but the supervisor's log.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from app.config import Settings
from app.stack.port_check import bind_error, describe_holders, port_holders
from app.stack.supervisor import (
    Child,
    ProcessSpec,
    StartupError,
    Supervisor,
    check_ports,
    listening_ports,
    probe,
)
from bench.stack import free_ports


class RecordingSupervisor(Supervisor):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[str] = []

    def log(self, message: str) -> None:
        self.logged.append(message)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_a_listening_socket_is_found_with_its_process(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert bind_error(port) is not None
    holders = port_holders(port)
    assert [h.pid for h in holders] == [os.getpid()]
    assert "pytest" in holders[0].command or "python" in holders[0].command
    assert f"pid {os.getpid()} (" in describe_holders(port)


def test_a_port_left_in_time_wait_is_free() -> None:
    # A connection closed by the server side first leaves the server's port in TIME_WAIT, as a stopped
    # stack does; the next start must not count it as taken. Its servers set SO_REUSEADDR, as this one.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.close()
    assert bind_error(port) is None
    assert port_holders(port) == []


def test_a_port_in_use_is_named_with_its_variable_and_holder(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    api, chaos, metrics, *rest = free_ports(8)
    settings = Settings.from_env({"API_PORT": str(api), "CHAOS_PORT": str(chaos),
                                  "WORKER_METRICS_PORT": str(metrics)})
    ports = listening_ports(settings, (rest[0], port, rest[1]), tuple(rest[2:5]))
    with pytest.raises(StartupError) as caught:
        check_ports(ports)
    message = str(caught.value)
    assert message.startswith(f"port {port} (SIMULATOR_PORTS, the inventory simulator) is in use by "
                              f"pid {os.getpid()} (")
    assert len(message.splitlines()) == 1


def test_one_port_given_twice_is_refused() -> None:
    api, chaos, *rest = free_ports(8)
    settings = Settings.from_env({"API_PORT": str(api), "CHAOS_PORT": str(chaos), "WORKER_METRICS_PORT": str(api)})
    with pytest.raises(StartupError, match=f"port {api} is given to both the order API \\(API_PORT\\) and the "
                                           f"workers' metrics \\(WORKER_METRICS_PORT\\)"):
        check_ports(listening_ports(settings, tuple(rest[:3]), tuple(rest[3:6])))


def test_every_port_of_the_stack_is_checked() -> None:
    settings = Settings.from_env({})
    ports = listening_ports(settings, (9101, 9102, 9103), (19101, 19102, 19103))
    assert sorted((variable, port) for port, variable, _ in ports) == [
        ("API_PORT", 8000), ("CHAOS_PORT", 8474), ("PROXY_PORTS", 19101), ("PROXY_PORTS", 19102),
        ("PROXY_PORTS", 19103), ("SIMULATOR_PORTS", 9101), ("SIMULATOR_PORTS", 9102), ("SIMULATOR_PORTS", 9103),
        ("WORKER_METRICS_PORT", 9808)]


SLOW_SERVER = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_ready_is_called_once_every_process_answers_and_not_before() -> None:
    fast, slow = free_ports(2)
    supervisor = RecordingSupervisor()
    for name, port, delay in (("fast", fast, "0"), ("slow", slow, "1.5")):
        spec = ProcessSpec(name, [sys.executable, "-c", SLOW_SERVER, str(port), delay], 0, port,
                           ready_path="/health")
        supervisor.children.append(Child.start(spec, dict(os.environ)))
    seen: list[tuple[float, str | None, str | None]] = []

    def on_ready() -> None:
        seen.append((time.monotonic() - started, probe(fast, "/health"), probe(slow, "/health")))
        supervisor.stopping = True

    started = time.monotonic()
    try:
        assert supervisor._watch(on_ready=on_ready, interval=0.05) == 0
    finally:
        supervisor.stop()
    assert len(seen) == 1
    elapsed, fast_problem, slow_problem = seen[0]
    assert elapsed >= 1.5
    assert (fast_problem, slow_problem) == (None, None)


def test_a_probe_says_what_it_got_instead_of_200(listener: socket.socket) -> None:
    (closed,) = free_ports(1)
    assert probe(closed, "/health") == "GET /health: Connection refused"
    port = listener.getsockname()[1]
    # Accepted by the kernel but never answered: the probe gives up at its timeout.
    assert probe(port, "/health", timeout=0.2) == "GET /health: timed out"
