"""The HTTP/1.1 server under every simulator.

Why the standard library's ``ThreadingHTTPServer`` rather than werkzeug: it adds no dependency, gives each
connection its own daemon thread (so 50+ concurrent keep-alive clients are served at once and a request held
by injected latency blocks no other), and speaks HTTP/1.1 keep-alive once ``protocol_version`` is set and
every response carries a Content-Length. This module adds what the stock handler lacks for a benchmarked
test double: JSON for every answer including framing errors, body framing (Content-Length or chunked) that
keeps a keep-alive stream in step, TCP_NODELAY, a deep listen backlog, silence unless asked, and a shutdown
that also drops open keep-alive connections.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ._routing import Request, Response, Router

logger = logging.getLogger("simulators")

MAX_BODY = 1 << 20
MAX_LINE = 65536
# Idle keep-alive connections are dropped after this long, so abandoned clients do not pin threads forever.
IDLE_TIMEOUT = 300.0
_HEX = frozenset(b"0123456789abcdefABCDEF")


class SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # The stock backlog of 5 drops connections when a load test opens dozens at once.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], *, router: Router, verbose: bool = False) -> None:
        self.router = router
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._closed = False
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def track(self, connection: socket.socket) -> bool:
        with self._connections_lock:
            if self._closed:
                return False
            self._connections.add(connection)
            return True

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Refuse new connections' requests and end the open ones (their threads then exit)."""
        with self._connections_lock:
            self._closed = True
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that hung up is routine under load, not news
        logger.exception("unexpected error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OrderFlowSimulator/1.0"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server: SimulatorHTTPServer

    def setup(self) -> None:
        super().setup()
        if not self.server.track(self.connection):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        # The stock version answers unknown methods with an HTML 501; here every method reaches the router.
        try:
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > MAX_LINE:
                self.requestline = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.parse_request():
                return  # parse_request has answered through send_error
            self._serve()
            self.wfile.flush()
        except OSError:  # timeouts, resets, broken pipes: the client is gone
            self.close_connection = True

    def _serve(self) -> None:
        body, problem = self._read_body()
        if problem is not None:
            self._respond(problem, close=True)
            return
        try:
            parts = urlsplit(self.path)
        except ValueError:  # e.g. "http://[x/" names a broken IPv6 host
            self._respond(Response(400, {"error": "malformed request target"}))
            return
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        try:
            response = self.server.router.dispatch(request)
        except Exception:
            logger.exception("simulator bug answering %s %s", self.command, self.path)
            response = Response(500, {"error": "internal error"})
        self._respond(response)

    def _read_body(self) -> tuple[bytes, Response | None]:
        """The request body, or the error to answer; every error also closes the now unframed stream."""
        lengths = self.headers.get_all("Content-Length") or []
        transfer = self.headers.get("Transfer-Encoding")
        if transfer is not None:
            if transfer.strip().lower() != "chunked" or lengths:
                return b"", Response(400, {"error": "unsupported Transfer-Encoding"})
            return self._read_chunked()
        if not lengths:
            return b"", None
        text = lengths[0].strip()
        if any(value.strip() != text for value in lengths) or not _is_decimal(text):
            return b"", Response(400, {"error": "invalid Content-Length"})
        size = int(text)
        if size > MAX_BODY:
            return b"", Response(413, {"error": "request body too large"})
        body = self.rfile.read(size)
        if len(body) < size:
            return b"", Response(400, {"error": "request body shorter than Content-Length"})
        return body, None

    def _read_chunked(self) -> tuple[bytes, Response | None]:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_text = self.rfile.readline(MAX_LINE + 1).split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 8 or not set(size_text) <= _HEX:
                return b"", Response(400, {"error": "malformed chunked body"})
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                return b"", Response(413, {"error": "request body too large"})
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3).strip():
                return b"", Response(400, {"error": "malformed chunked body"})
            chunks.append(chunk)
        for _ in range(100):  # trailer fields, ignored
            if not self.rfile.readline(MAX_LINE + 1).strip():
                return b"".join(chunks), None
        return b"", Response(431, {"error": "too many trailer fields"})

    def _respond(self, response: Response, *, close: bool = False) -> None:
        payload = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            # The caller gave up (say, during injected latency); the work is done, only the answer is lost.
            self.close_connection = True
        if close:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Framing errors found by the stock parser, answered in JSON on a connection about to close."""
        # A garbled request line leaves the version at HTTP/0.9, which would suppress the status line.
        self.request_version = self.protocol_version
        self._respond(Response(int(code), {"error": message or HTTPStatus(code).phrase}), close=True)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        if self.server.verbose:
            logger.info("%s %s", self.address_string(), format % args)


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 18
