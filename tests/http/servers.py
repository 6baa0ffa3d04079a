"""Small scripted HTTP servers on 127.0.0.1 for transport tests: one thread per connection, each bounded.

A server runs ``behaviors[i]`` on its i-th accepted connection and ``default`` on any later one, and counts
the connections it accepted, so a test can tell a reused keep-alive connection from a new one.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Sequence

Behavior = Callable[[socket.socket, threading.Event], None]

_POLL = 0.05


def read_request(conn: socket.socket, stop: threading.Event) -> tuple[str, dict[str, str], bytes] | None:
    """One request: (line, lower-cased headers, body); None if the client closed or the test ended."""
    buf = b""
    conn.settimeout(_POLL)
    while b"\r\n\r\n" not in buf:
        chunk = _recv(conn, stop)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = _recv(conn, stop)
        if not chunk:
            return None
        rest += chunk
    return lines[0], headers, rest[:length]


def _recv(conn: socket.socket, stop: threading.Event) -> bytes:
    while not stop.is_set():
        try:
            return conn.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return b""
    return b""


def json_response(payload: object, *, status: int = 200, headers: Sequence[str] = ()) -> bytes:
    body = json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += headers
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def serve_json(conn: socket.socket, stop: threading.Event) -> None:
    """Keep-alive: answer each request with a JSON echo (line, headers, body, count on this connection)."""
    served = 0
    while (request := read_request(conn, stop)) is not None:
        served += 1
        line, headers, body = request
        conn.sendall(json_response({"line": line, "headers": headers, "body": body.decode(), "n": served}))


def serve_raw(*responses: bytes, then_close: bool = False) -> Behavior:
    """Answer the n-th request on the connection with ``responses[n]``; afterwards hold or close."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        for response in responses:
            if read_request(conn, stop) is None:
                return
            conn.sendall(response)
        if not then_close:
            stop.wait()

    return behave


def serve_then(count: int, after: Behavior) -> Behavior:
    """Serve ``count`` JSON responses keep-alive, then switch the same connection to ``after``."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        for _ in range(count):
            if read_request(conn, stop) is None:
                return
            conn.sendall(json_response({"ok": True}))
        after(conn, stop)

    return behave


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request and never answer."""
    read_request(conn, stop)
    stop.wait()


def trickle(response: bytes, *, interval: float, head_at_once: bool = False) -> Behavior:
    """Send the response one byte per ``interval`` (after the head, when ``head_at_once``)."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        if read_request(conn, stop) is None:
            return
        data = response
        if head_at_once:
            head_end = response.index(b"\r\n\r\n") + 4
            conn.sendall(response[:head_end])
            data = response[head_end:]
        for i in range(len(data)):
            if stop.wait(interval):
                return
            try:
                conn.sendall(data[i : i + 1])
            except OSError:
                return  # the client gave up, as it should
        stop.wait()

    return behave


def stall_tls_handshake(*, interval: float) -> Behavior:
    """Take the ClientHello, then trickle a never-ending handshake record one byte per ``interval``."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        if not _recv(conn, stop):
            return
        conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB, of which nothing follows at once
        while not stop.wait(interval):
            try:
                conn.sendall(b"\x00")
            except OSError:
                return  # the client gave up, as it should

    return behave


def answer_then_close(response: bytes) -> Behavior:
    """Read the request, send ``response`` (maybe partial), close the connection."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        if read_request(conn, stop) is not None:
            conn.sendall(response)

    return behave


class ScriptedServer:
    def __init__(self, behaviors: Sequence[Behavior] = (), *, default: Behavior = serve_json) -> None:
        self._behaviors = list(behaviors)
        self._default = default
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(_POLL)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="test-http-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = self.accepted
                self.accepted += 1
                self._conns.append(conn)
            behavior = self._behaviors[index] if index < len(self._behaviors) else self._default
            thread = threading.Thread(target=self._handle, args=(conn, behavior), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket, behavior: Behavior) -> None:
        try:
            behavior(conn, self._stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(2)
        self._listener.close()
        deadline = time.monotonic() + 2
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
