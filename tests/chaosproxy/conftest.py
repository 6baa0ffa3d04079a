"""A chaos proxy in-process and small upstreams on loopback: an echo server and a one-shot sender."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from chaosproxy.client import ToxiproxyClient
from chaosproxy.server import ChaosProxyServer, start


class Upstream:
    """A TCP server on 127.0.0.1:0 running ``handle(conn)`` per connection on its own thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self._handle = handle
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                self._handle(conn)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


@dataclass
class Sender:
    """Sends ``payload`` in ``pieces`` parts ``gap`` seconds apart after the first byte it reads, then
    keeps the connection open (``close_after`` None) or closes it."""

    payload: bytes = b"x" * 100
    pieces: int = 1
    gap: float = 0.0
    close_after: bool = True
    sent: list[float] = field(default_factory=list)

    def __call__(self, conn: socket.socket) -> None:
        if not conn.recv(1024):
            return
        size = -(-len(self.payload) // self.pieces)
        for offset in range(0, len(self.payload), size):
            if offset:
                time.sleep(self.gap)
            conn.sendall(self.payload[offset:offset + size])
            self.sent.append(time.monotonic())
        if not self.close_after:
            while conn.recv(1024):
                pass


@pytest.fixture(scope="session")
def chaos_server() -> Iterator[ChaosProxyServer]:
    server = start()
    yield server
    server.shutdown()


@pytest.fixture
def client(chaos_server: ChaosProxyServer) -> Iterator[ToxiproxyClient]:
    """A client of the shared proxy server; every proxy a test made is deleted afterwards."""
    api = ToxiproxyClient(chaos_server.url, timeout=5.0)
    yield api
    for name in api.proxies():
        api.delete_proxy(name)
    api.close()


@pytest.fixture
def echo() -> Iterator[Upstream]:
    upstream = Upstream(_echo)
    yield upstream
    upstream.close()


@pytest.fixture
def make_upstream() -> Iterator[Callable[[Callable[[socket.socket], None]], Upstream]]:
    made: list[Upstream] = []

    def make(handle: Callable[[socket.socket], None]) -> Upstream:
        upstream = Upstream(handle)
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        upstream.close()


def listen_port(proxy: dict[str, object]) -> int:
    return int(str(proxy["listen"]).rsplit(":", 1)[1])


def connect(proxy: dict[str, object], *, timeout: float = 3.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", listen_port(proxy)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> tuple[bytes, float]:
    """Send ``payload`` to an echo upstream; the echoed bytes and the seconds it took."""
    started = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received, time.monotonic() - started


def read_all(sock: socket.socket) -> tuple[bytes, list[bytes]]:
    """Everything until EOF, and the pieces as ``recv`` returned them."""
    pieces = []
    while data := sock.recv(65536):
        pieces.append(data)
    return b"".join(pieces), pieces
