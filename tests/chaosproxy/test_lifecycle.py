"""Proxies going down and up, the process starting and stopping, on both event loop implementations."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stack import free_ports
from chaosproxy.client import ToxiproxyClient
from chaosproxy.server import start
from tests.chaosproxy.conftest import Upstream, connect, round_trip

ROOT = Path(__file__).resolve().parents[2]


def _dropped(sock: socket.socket) -> bool:
    """True when the proxy has closed this connection (EOF or reset), False when it still answers."""
    sock.settimeout(2)
    try:
        sock.sendall(b"ping")
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_disabled_proxy_refuses_and_drops_then_enables_on_the_same_port(
    client: ToxiproxyClient, echo: Upstream
) -> None:
    proxy = client.create_proxy("svc", "127.0.0.1:0", echo.address)
    with connect(proxy) as open_conn:
        assert round_trip(open_conn)[0] == b"ping"
        disabled = client.disable("svc")
        assert disabled["enabled"] is False and disabled["listen"] == proxy["listen"]
        assert _dropped(open_conn)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    enabled = client.enable("svc")
    assert enabled["listen"] == proxy["listen"]
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"


def test_deleting_a_proxy_drops_its_connections(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = client.create_proxy("svc", "127.0.0.1:0", echo.address)
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"
        client.delete_proxy("svc")
        assert _dropped(sock)


def test_unreachable_upstream_closes_the_client(client: ToxiproxyClient) -> None:
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        proxy = client.create_proxy("svc", "127.0.0.1:0", f"127.0.0.1:{reserved.getsockname()[1]}")
        with connect(proxy) as sock:
            assert _dropped(sock)


def test_reset_restores_disabled_proxies_and_clean_connections(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = client.create_proxy("svc", "127.0.0.1:0", echo.address)
    other = client.create_proxy("other", "127.0.0.1:0", echo.address)
    client.add_toxic("svc", "latency", {"latency": 400})
    client.disable("other")
    with connect(proxy) as sock:
        assert round_trip(sock)[1] >= 0.39
        client.reset()
        assert round_trip(sock)[1] < 0.1  # the open connection lost its toxic too
    with connect(other) as sock:
        assert round_trip(sock)[0] == b"ping"


def test_server_shutdown_closes_listeners(echo: Upstream) -> None:
    server = start()
    api = ToxiproxyClient(server.url)
    proxy = api.create_proxy("svc", "127.0.0.1:0", echo.address)
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"
        server.shutdown()
        assert _dropped(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)


@pytest.fixture(params=["asyncio", "auto"])
def loop_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ToxiproxyClient]:
    """A fresh server on plain asyncio and on the default loop (uvloop when installed)."""
    monkeypatch.setenv("CHAOSPROXY_EVENT_LOOP", request.param)
    server = start()
    api = ToxiproxyClient(server.url)
    yield api
    api.close()
    server.shutdown()


def test_each_event_loop_proxies_delays_and_resets(loop_client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = loop_client.create_proxy("svc", "127.0.0.1:0", echo.address)
    with connect(proxy) as sock:
        assert round_trip(sock, b"z" * 100_000)[0] == b"z" * 100_000
        loop_client.add_toxic("svc", "latency", {"latency": 100})
        assert round_trip(sock)[1] >= 0.095
    loop_client.reset()
    loop_client.add_toxic("svc", "reset_peer", {"timeout": 0})
    with connect(proxy) as sock:
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    loop_client.disable("svc")
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)


def _free_port() -> int:
    return free_ports(1)[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_populates_from_config_and_stops_on_signal(tmp_path: Path, echo: Upstream, signum: int) -> None:
    port, api_port = _free_port(), _free_port()
    config = tmp_path / "proxies.json"
    config.write_text(json.dumps([{"name": "payment", "listen": f"127.0.0.1:{port}", "upstream": echo.address}]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "chaosproxy", "--host", "127.0.0.1", "--port", str(api_port),
         "--config", str(config), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().decode().strip() == f"chaosproxy listening on http://127.0.0.1:{api_port}"
        api = ToxiproxyClient(f"http://127.0.0.1:{api_port}")
        assert api.get_proxy("payment")["listen"] == f"127.0.0.1:{port}"
        with connect({"listen": f"127.0.0.1:{port}"}) as sock:
            assert round_trip(sock)[0] == b"ping"
            started = time.monotonic()
            process.send_signal(signum)
            assert process.wait(timeout=5) == 0
            assert time.monotonic() - started < 1.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(ConnectionRefusedError):
        connect({"listen": f"127.0.0.1:{port}"})


def test_cli_fails_on_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "proxies.json"
    config.write_text('[{"name": "x"}]')
    result = subprocess.run(
        [sys.executable, "-m", "chaosproxy", "--port", "0", "--config", str(config)],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=10,
    )
    assert result.returncode == 1
    assert b"missing required field: upstream at proxy 1" in result.stderr


def test_closed_connections_are_forgotten(chaos_server: object, client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = client.create_proxy("svc", "127.0.0.1:0", echo.address)
    client.add_toxic("svc", "latency", {"latency": 1}, stream="upstream")
    for _ in range(20):
        with connect(proxy) as sock:
            assert round_trip(sock)[0] == b"ping"
    live = chaos_server.collection.proxies["svc"].connections  # type: ignore[attr-defined]
    deadline = time.monotonic() + 2
    while live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not live
