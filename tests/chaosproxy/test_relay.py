"""The relay with no toxic (socket to socket) and its switch to and from toxics, on both event loops."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chaosproxy.client import ToxiproxyClient
from chaosproxy.server import ChaosProxyServer, start
from tests.chaosproxy.conftest import Sender, Upstream, connect, read_all, round_trip

MakeUpstream = Callable[[Callable[[socket.socket], None]], Upstream]


@pytest.fixture(params=["asyncio", "auto"])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChaosProxyServer]:
    monkeypatch.setenv("CHAOSPROXY_EVENT_LOOP", request.param)
    chaos = start()
    yield chaos
    chaos.shutdown()


@pytest.fixture
def api(server: ChaosProxyServer) -> Iterator[ToxiproxyClient]:
    client = ToxiproxyClient(server.url, timeout=5.0)
    yield client
    client.close()


def _proxy(api: ToxiproxyClient, upstream: Upstream) -> dict[str, Any]:
    return api.create_proxy("svc", "127.0.0.1:0", upstream.address)


def _wait_forgotten(server: ChaosProxyServer) -> bool:
    live = server.collection.proxies["svc"].connections
    deadline = time.monotonic() + 2
    while live and time.monotonic() < deadline:
        time.sleep(0.01)
    return not live


@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_a_toxic_added_after_the_last_was_removed_acts_on_the_open_connection(
    api: ToxiproxyClient, echo: Upstream, stream: str
) -> None:
    proxy = _proxy(api, echo)
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"
        for _ in range(2):
            api.add_toxic("svc", "latency", {"latency": 150}, stream=stream)
            echoed, took = round_trip(sock)
            assert (echoed, took >= 0.145) == (b"ping", True)
            api.remove_toxic("svc", f"latency_{stream}")
            echoed, took = round_trip(sock, b"x" * 100_000)
            # Well under the removed toxic's latency, with room for a loaded machine's pauses.
            assert (echoed, took < 0.14) == (b"x" * 100_000, True)


def test_a_large_response_to_a_slow_reader_arrives_intact(
    server: ChaosProxyServer, api: ToxiproxyClient, make_upstream: MakeUpstream
) -> None:
    payload = bytes(range(256)) * (32 * 1024)  # 8 MB: more than the sockets' buffers hold
    proxy = _proxy(api, make_upstream(Sender(payload=payload, pieces=64)))
    with connect(proxy, timeout=10) as sock:
        sock.sendall(b"go")
        time.sleep(0.5)  # the proxy has to stop reading the upstream until the client catches up
        received, _ = read_all(sock)
    assert received == payload
    assert _wait_forgotten(server)


def test_an_upstream_reset_mid_stream_closes_the_client_quietly(
    server: ChaosProxyServer, api: ToxiproxyClient, make_upstream: MakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    def read_then_reset(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    caplog.set_level(logging.WARNING)
    proxy = _proxy(api, make_upstream(read_then_reset))
    with connect(proxy) as sock:
        sock.settimeout(2)
        ended = False
        try:
            for _ in range(200):  # keep writing while the proxy learns the upstream is gone
                sock.sendall(b"y" * 4096)
                time.sleep(0.001)
            ended = sock.recv(1024) == b""
        except (ConnectionResetError, BrokenPipeError):
            ended = True
    assert ended
    assert _wait_forgotten(server)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_client_closing_without_toxics_is_forgotten(
    server: ChaosProxyServer, api: ToxiproxyClient, echo: Upstream
) -> None:
    proxy = _proxy(api, echo)
    for _ in range(10):
        with connect(proxy) as sock:
            assert round_trip(sock)[0] == b"ping"
    assert _wait_forgotten(server)
