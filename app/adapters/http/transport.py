"""HTTP/1.1 transport for OrderFlow's dependencies, with a hard wall-clock deadline per attempt.

Why not ``requests``: its ``timeout`` bounds each socket operation, so a dependency that trickles one byte
every 100 ms keeps a caller forever ("the timeout that wasn't"). Here every attempt carries an absolute
``time.monotonic()`` deadline, enforced three ways:

* each socket gets the time left as its timeout, so no single connect, send or receive outlives the deadline;
* the process ``Watchdog`` shuts the attempt's socket down at the deadline, which ends a trickling read
  between two bytes (a per-operation timeout never fires while bytes keep coming);
* after every receive the clock is checked, so even a late watchdog cannot let the body run on.

Why not ``http.client`` + an own pool either: it treats end-of-stream inside the header block as the end of
the headers, so a peer dying mid-headers (or a socket the watchdog shut down) passes for a complete response.
The dependencies speak small JSON over keep-alive HTTP/1.1, so this module frames responses itself and
strictly (status line, headers, Content-Length / chunked / read-to-close), which also keeps the per-request
work to one ``sendall`` and usually one ``recv``: a fraction of ``requests.Session``'s overhead.

Connections are pooled per origin (LIFO, ``pool_maxsize`` idle sockets kept, more opened when busy). A socket
goes back to the pool only after a complete, keep-alive response read before the watchdog fired; anything
else closes it. A pooled socket the peer has closed meanwhile is noticed before reuse; if the peer closes one
in the same instant, a request that is safe to repeat (idempotent method, or one carrying an
``Idempotency-Key``) is sent once more on a fresh connection, within the same deadline.

Known limit: name resolution (``getaddrinfo``) cannot be interrupted; the dependencies are addressed by IP
or by names the local resolver answers at once.
"""

from __future__ import annotations

import email.utils
import functools
import json as jsonlib
import math
import os
import re
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

from .watchdog import Watchdog, default_watchdog

__all__ = [
    "HttpConnectionError",
    "HttpResponse",
    "HttpTimeoutError",
    "HttpTransport",
    "HttpTransportError",
]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_RECV_SIZE = 65536
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")
# Hop-by-hop framing is this module's business, never the caller's.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host"})


class HttpTransportError(Exception):
    """The attempt produced no HTTP response."""


class HttpConnectionError(HttpTransportError):
    """Refused, reset, unresolvable, or closed (or garbled) before the response was complete."""


class HttpTimeoutError(HttpTransportError):
    """The attempt's deadline passed, whatever phase it was in."""


class _Headers(Mapping[str, str]):
    """Response headers, looked up case-insensitively; repeated fields joined with ", " (RFC 9110 5.3)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # keys already lower-case

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response. ``headers`` is case-insensitive, also when a test builds one from a plain dict."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float

    def __post_init__(self) -> None:
        if not isinstance(self.headers, _Headers):
            fields = {name.lower(): value for name, value in self.headers.items()}
            object.__setattr__(self, "headers", _Headers(fields))

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON."""
        return jsonlib.loads(self.body)

    def retry_after(self, *, now: float | None = None) -> float | None:
        """Seconds the server asks us to wait (delta-seconds or HTTP-date); None if absent or invalid.

        ``now`` is the wall-clock time (``time.time()``) an HTTP-date is measured from.
        """
        return parse_retry_after(self.headers.get("retry-after"), now=now)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" and zone-less dates are UTC for HTTP
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Target(NamedTuple):
    origin: tuple[str, str, int]
    host: str
    port: int
    tls: bool
    host_header: str
    path: str


@functools.lru_cache(maxsize=1024)
def _split_url(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme in {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url!r}")
    tls = scheme == "https"
    default_port = 443 if tls else 80
    port = parts.port or default_port
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    # Percent-encode only what may not appear in a request line; valid URLs pass unchanged.
    path = quote(parts.path or "/", safe="/%!$&'()*+,;=:@-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%!$&'()*+,;=:@-._~?")
    return _Target((scheme, host, port), host, port, tls, host_header, path)


class _PeerClosed(Exception):
    """End of stream before the response was complete."""


class _ProtocolError(Exception):
    """The peer sent something that is not a well-formed HTTP/1.1 response."""


class _StaleConnection(Exception):
    """A pooled connection was already closed by the peer; nothing of a response arrived."""


class _Attempt:
    """What the watchdog needs to end one attempt: its socket, and a note that it did."""

    __slots__ = ("sock", "killed", "lock", "phase", "received")

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.killed = False
        self.lock = threading.Lock()
        self.phase = "connect" if sock is None else "send"
        self.received = False

    def kill(self) -> None:
        # Runs on the watchdog thread. shutdown(), not close(): it wakes the owner blocked in recv/send
        # at once, and the file descriptor stays the owner's to close (no reuse race).
        with self.lock:
            self.killed = True
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close_socket(self) -> None:
        with self.lock:  # waits for a kill() that is running right now
            if self.sock is not None:
                self.sock.close()
                self.sock = None


class _Pool:
    """Idle keep-alive sockets of one origin, newest first."""

    __slots__ = ("idle", "lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.idle: list[socket.socket] = []
        self.lock = threading.Lock()
        self.maxsize = maxsize

    def take(self) -> socket.socket | None:
        while True:
            with self.lock:
                if not self.idle:
                    return None
                sock = self.idle.pop()
            if _is_usable(sock):
                return sock
            sock.close()

    def give(self, sock: socket.socket) -> None:
        with self.lock:
            if len(self.idle) < self.maxsize:
                self.idle.append(sock)
                return
        sock.close()

    def drain(self) -> list[socket.socket]:
        """Empty the pool for good: sockets of requests still running are closed when they come back."""
        with self.lock:
            idle, self.idle = self.idle, []
            self.maxsize = 0
        return idle


def _is_usable(sock: socket.socket) -> bool:
    """An idle keep-alive socket must have nothing to read: readable means closed by the peer (or garbage)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class HttpTransport:
    """Thread-safe HTTP/1.1 client: keep-alive pools per origin, a hard deadline per attempt.

    ``request`` reads the whole body before returning (dependency responses are small JSON) and raises
    ``HttpTimeoutError`` within a few milliseconds of ``deadline``, or ``HttpConnectionError``. Any status
    code is a response; deciding what to retry belongs to the resilience pipeline.
    """

    def __init__(
        self,
        *,
        pool_maxsize: int = 32,
        watchdog: Watchdog | None = None,
        user_agent: str = "orderflow",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if pool_maxsize < 0:
            raise ValueError("pool_maxsize must be >= 0")
        _check_header("User-Agent", user_agent)
        self._pool_maxsize = pool_maxsize
        self._watchdog = watchdog if watchdog is not None else default_watchdog()
        self._ssl_context = ssl_context
        self._base_headers = {"user-agent": f"User-Agent: {user_agent}\r\n", "accept": "Accept: */*\r\n",
                              "accept-encoding": "Accept-Encoding: identity\r\n"}
        self._reset_pools()
        _transports.add(self)
        _register_fork_hook()

    def _reset_pools(self) -> None:
        self._pid = os.getpid()
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._pools_lock = threading.Lock()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection. The transport stays usable and opens new ones when asked."""
        with self._pools_lock:
            pools = list(self._pools.values())
            self._pools = {}
        for pool in pools:
            for sock in pool.drain():
                sock.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        json: object | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        start = time.monotonic()
        if not math.isfinite(deadline):
            raise ValueError("deadline must be a finite time.monotonic() value")
        if start >= deadline:
            raise HttpTimeoutError(f"{method} {url}: deadline already passed, nothing sent")
        method = method.upper()
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        target = _split_url(url)
        path = target.path
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        payload = self._encode(method, target, path, json, headers)
        if self._pid != os.getpid():
            self._reset_pools()  # a fork os.register_at_fork did not see; never share the parent's sockets
        pool = self._pools.get(target.origin) or self._new_pool(target.origin)
        may_resend = method in _IDEMPOTENT or (headers is not None and _has_idempotency_key(headers))
        label = f"{method} {url}"
        sock = pool.take()
        try:
            status, fields, body = self._attempt(pool, sock, target, method, payload, deadline, label)
        except _StaleConnection as exc:
            if not may_resend:
                raise HttpConnectionError(f"{label}: connection closed before any response") from exc
            # The peer closed a pooled socket just as we used it: once more, new connection, same deadline.
            status, fields, body = self._attempt(pool, None, target, method, payload, deadline, label)
        return HttpResponse(status, _Headers(fields), body, time.monotonic() - start)

    def _new_pool(self, origin: tuple[str, str, int]) -> _Pool:
        with self._pools_lock:
            pool = self._pools.get(origin)
            if pool is None:
                pool = self._pools[origin] = _Pool(self._pool_maxsize)
            return pool

    def _encode(
        self,
        method: str,
        target: _Target,
        path: str,
        json: object | None,
        headers: Mapping[str, str] | None,
    ) -> bytes:
        lines = dict(self._base_headers)
        body = b""
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            lines["content-type"] = "Content-Type: application/json\r\n"
        if headers:
            for name, value in headers.items():
                _check_header(name, value)
                lower = name.lower()
                if lower not in _FRAMING_HEADERS:
                    lines[lower] = f"{name}: {value}\r\n"
        head = f"{method} {path} HTTP/1.1\r\nHost: {target.host_header}\r\n{''.join(lines.values())}"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + body

    def _attempt(
        self,
        pool: _Pool,
        sock: socket.socket | None,
        target: _Target,
        method: str,
        payload: bytes,
        deadline: float,
        label: str,
    ) -> tuple[int, dict[str, str], bytes]:
        reused = sock is not None
        attempt = _Attempt(sock)
        handle = self._watchdog.watch(deadline, attempt.kill)
        try:
            if sock is None:
                sock = self._connect(target, deadline, attempt)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
            attempt.phase = "send"
            sock.sendall(payload)
            attempt.phase = "headers"
            status, fields, body, reusable = _read_response(sock, method, deadline, attempt)
        except (OSError, _PeerClosed, _ProtocolError) as exc:
            handle.cancel()
            attempt.close_socket()
            if attempt.killed or isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
                raise HttpTimeoutError(f"{label}: deadline passed ({attempt.phase})") from exc
            if reused and not attempt.received and attempt.phase in ("send", "headers") and isinstance(
                exc, _PeerClosed | ConnectionResetError | BrokenPipeError | ConnectionAbortedError
            ):
                raise _StaleConnection from exc
            if isinstance(exc, _ProtocolError):
                raise HttpConnectionError(f"{label}: malformed response: {exc}") from exc
            if isinstance(exc, _PeerClosed):
                raise HttpConnectionError(f"{label}: closed mid-response ({attempt.phase})") from exc
            raise HttpConnectionError(f"{label}: {type(exc).__name__}: {exc} ({attempt.phase})") from exc
        except BaseException:
            handle.cancel()
            attempt.close_socket()
            raise
        if not handle.cancel():
            # The watchdog fired as the response completed: the socket may be shut down half-way through
            # what looked like the end of the response, so nothing read from it can be trusted.
            attempt.close_socket()
            raise HttpTimeoutError(f"{label}: deadline passed ({attempt.phase})")
        if reusable:
            pool.give(sock)
        else:
            sock.close()
        return status, fields, body

    def _connect(self, target: _Target, deadline: float, attempt: _Attempt) -> socket.socket:
        last_error: OSError | None = None
        addresses = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        for family, kind, proto, _, address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock = socket.socket(family, kind, proto)
            with attempt.lock:
                if attempt.killed:
                    sock.close()
                    raise TimeoutError
                attempt.sock = sock
            try:
                sock.settimeout(remaining)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(address)
            except TimeoutError:
                raise
            except OSError as exc:
                attempt.close_socket()
                last_error = exc
                continue
            if target.tls:
                return self._handshake(sock, target, deadline, attempt)
            return sock
        raise last_error or OSError(f"no address for {target.host}")

    def _handshake(
        self, sock: socket.socket, target: _Target, deadline: float, attempt: _Attempt
    ) -> socket.socket:
        context = self._ssl_context or _default_ssl_context()
        # wrap_socket detaches the plain socket, so the watchdog must hold the TLS one before any TLS I/O.
        tls = context.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
        with attempt.lock:
            attempt.sock = tls
            if attempt.killed:
                raise TimeoutError
        tls.settimeout(max(deadline - time.monotonic(), 0.001))
        tls.do_handshake()
        return tls


def _read_response(
    sock: socket.socket, method: str, deadline: float, attempt: _Attempt
) -> tuple[int, dict[str, str], bytes, bool]:
    """One response: status, lower-cased header fields, body, and whether the socket may be reused."""
    reader = _Reader(sock, deadline, attempt)
    while True:
        end = reader.find(b"\r\n\r\n", 0, _MAX_HEAD)
        version, status, fields = _parse_head(bytes(reader.buf[:end]))
        reader.pos = end + 4
        if status >= 200 or status == 101:
            break
        del reader.buf[: reader.pos]  # 1xx interim response: the real one follows
        reader.pos = 0
    if status == 101:
        raise _ProtocolError("unexpected protocol switch")
    attempt.phase = "body"
    keep_alive = version == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "transfer-encoding" in fields:
        if fields["transfer-encoding"].lower().rsplit(",", 1)[-1].strip() != "chunked":
            body, keep_alive = reader.read_to_close(), False
        else:
            body = reader.read_chunked()
            # Both framings at once is how responses get smuggled; do not trust what follows.
            keep_alive = keep_alive and "content-length" not in fields
    elif "content-length" in fields:
        body = reader.read_exact(_content_length(fields["content-length"]))
    else:
        body, keep_alive = reader.read_to_close(), False
    reusable = keep_alive and reader.pos == len(reader.buf)
    return status, fields, body, reusable


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    well_formed = len(code) == 3 and code.isdigit() and rest[3:4] in ("", " ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or not well_formed:
        raise _ProtocolError(f"bad status line {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _ProtocolError(f"bad header line {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return version, int(code), fields


def _content_length(value: str) -> int:
    # "5, 5" is what a proxy makes of a repeated field; differing values mean the framing is unknowable.
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise _ProtocolError(f"conflicting Content-Length {value!r}")
    text = values.pop()
    if not text.isascii() or not text.isdigit():
        raise _ProtocolError(f"bad Content-Length {value!r}")
    length = int(text)
    if length > _MAX_BODY:
        raise _ProtocolError(f"body of {length} bytes is over the limit")
    return length


class _Reader:
    """A growing receive buffer over one socket; every receive is bounded by the attempt's deadline."""

    __slots__ = ("sock", "deadline", "attempt", "buf", "pos")

    def __init__(self, sock: socket.socket, deadline: float, attempt: _Attempt) -> None:
        self.sock = sock
        self.deadline = deadline
        self.attempt = attempt
        self.buf = bytearray()
        self.pos = 0

    def fill(self) -> None:
        chunk = self.sock.recv(_RECV_SIZE)
        if not chunk:
            raise _PeerClosed
        self.attempt.received = True
        self.buf += chunk
        # Bytes that keep trickling in reset no socket timeout; the deadline still ends the attempt here.
        if time.monotonic() >= self.deadline:
            raise TimeoutError

    def find(self, marker: bytes, start: int, limit: int) -> int:
        """Index of ``marker`` at or after ``start``; receives until it comes, at most ``limit`` bytes on."""
        searched = start
        while True:
            found = self.buf.find(marker, searched)
            if found >= 0:
                return found
            if len(self.buf) - start > limit:
                raise _ProtocolError("response head or chunk line too long")
            searched = max(start, len(self.buf) - len(marker) + 1)
            self.fill()

    def read_exact(self, length: int) -> bytes:
        end = self.pos + length
        while len(self.buf) < end:
            self.fill()
        body = bytes(self.buf[self.pos : end])
        self.pos = end
        return body

    def read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line_end = self.find(b"\r\n", self.pos, 1024)
            size_text = bytes(self.buf[self.pos : line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size < 0 or size_text.startswith((b"-", b"+", b"0x", b"0X")):
                raise _ProtocolError(f"bad chunk size {size_text[:20]!r}")
            self.pos = line_end + 2
            if size == 0:
                break
            total += size
            if total > _MAX_BODY:
                raise _ProtocolError("chunked body over the limit")
            parts.append(self.read_exact(size))
            if self.read_exact(2) != b"\r\n":
                raise _ProtocolError("chunk not followed by CRLF")
        while True:  # trailer fields, ignored, up to the empty line
            line_end = self.find(b"\r\n", self.pos, _MAX_HEAD)
            empty = line_end == self.pos
            self.pos = line_end + 2
            if empty:
                return b"".join(parts)

    def read_to_close(self) -> bytes:
        while True:
            if len(self.buf) - self.pos > _MAX_BODY:
                raise _ProtocolError("body over the limit")
            try:
                self.fill()
            except _PeerClosed:
                break
        body = bytes(self.buf[self.pos :])
        self.pos = len(self.buf)
        return body


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"invalid characters in header {name!r}")


def _has_idempotency_key(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == "idempotency-key" for name in headers)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


_transports: weakref.WeakSet[HttpTransport] = weakref.WeakSet()
_fork_hook_registered = False


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        _fork_hook_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    # The parent keeps using its pooled sockets; a child writing to them would interleave two requests on
    # one connection. close() (never shutdown()) only drops the child's reference to the descriptor.
    for transport in list(_transports):
        pools = transport._pools
        transport._reset_pools()
        for pool in pools.values():
            for sock in pool.idle:
                sock.close()
