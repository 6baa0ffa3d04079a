"""urllib3 connections that end an attempt at its deadline, for ``requests``.

``requests`` (through urllib3 and ``http.client``) bounds each socket operation, not the attempt: a peer that
trickles one byte at a time resets every socket timeout and keeps the caller forever. So the transport runs
each attempt as an ``Attempt`` that the process ``Watchdog`` kills at the deadline, and the connections below
hand their socket to the attempt they serve: the kill shuts that socket down, which ends a blocked send or
receive at once (``shutdown``, not ``close``: the file descriptor stays the owner's to close, so no other
thread's new socket can get its number meanwhile). A connect and a TLS handshake are single operations,
bounded by the socket timeout, which is always the time left (see ``_new_conn``).

How a connection learns its attempt: the transport makes the attempt current on its thread for the duration
of ``Session.send``. ``requests`` offers no per-request hook down to urllib3's connections, but it runs the
whole exchange, body included, on the calling thread, so the thread's current attempt is the attempt.

A connection goes back to the pool only through ``_put_conn``, after a complete response; that is where the
attempt's watchdog is cancelled. If the watchdog fired first (or is firing right now), the socket may be shut
down half-way through what looked like the end of the response, so the connection is closed, never reused.

``http.client`` takes end-of-stream for the empty line that ends a response head, so a peer dying mid-headers
(or a socket the watchdog shut down) would pass for a complete response; ``_StrictResponse`` refuses that, a
malformed header line, an unexpected protocol switch, and skips every interim (1xx) response, not only 100.

Known limits: name resolution (``getaddrinfo``) cannot be interrupted, and a name with several addresses
gets the time left for each connect; the dependencies are addressed by IP or by names the local resolver
answers at once. Through a SOCKS proxy only the socket timeouts apply.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import weakref
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HeaderParsingError
from urllib3.util.response import assert_header_parsing

from .watchdog import WatchHandle

__all__ = ["Attempt", "DeadlineAdapter", "IncompleteHead", "MalformedHead", "current", "forget_connections"]


class IncompleteHead(http.client.HTTPException):
    """The stream ended inside the response head."""


class MalformedHead(http.client.HTTPException):
    """The response head is not one this client can trust."""


class Attempt:
    """One try at one request, under an absolute ``time.monotonic()`` deadline.

    ``phase`` (connect, send, headers, body), ``reused`` (sent on a pooled connection) and ``received`` (a
    byte of the response arrived) let the transport name a failure and tell a stale pooled connection from
    a peer that failed mid-response.
    """

    __slots__ = ("deadline", "fresh", "killed", "phase", "reused", "received", "conn", "_handle", "_in_time")

    def __init__(self, deadline: float, *, fresh: bool = False) -> None:
        self.deadline = deadline
        self.fresh = fresh  # use no pooled connection
        self.killed = False
        self.phase = "connect"
        self.reused = False
        self.received = False
        self.conn: _Watched | None = None
        self._handle: WatchHandle | None = None
        self._in_time: bool | None = None

    def watched_by(self, handle: WatchHandle) -> None:
        self._handle = handle

    def kill(self) -> None:
        """The watchdog's callback, on its thread: end whatever I/O the attempt is blocked in."""
        self.killed = True
        conn = self.conn
        if conn is not None:
            conn.cut(self)

    def stop_watch(self) -> bool:
        """Cancel the watchdog; True when it had not fired. Later calls give the same answer."""
        if self._in_time is None:
            self._in_time = self._handle is None or self._handle.cancel()
        return self._in_time

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


class _Current(threading.local):
    attempt: Attempt | None = None


current = _Current()
"""The attempt the calling thread runs (set by the transport around ``Session.send``)."""

_connections: weakref.WeakSet[_Watched] = weakref.WeakSet()


def forget_connections() -> None:
    """In a forked child: close the child's copies of every connection's socket, taking no lock.

    The parent keeps using its connections; a child writing to one would interleave two requests on it.
    ``close`` (never ``shutdown``) only drops the child's reference to the file descriptor.
    """
    for conn in list(_connections):
        if conn.sock is not None:
            try:
                conn.sock.close()
            except OSError:
                pass


class _HeadReader:
    """Stands in for the response's file while ``http.client`` reads the head, to see how the head ended."""

    __slots__ = ("_fp", "_attempt", "last")

    def __init__(self, fp: Any, attempt: Attempt | None) -> None:
        self._fp = fp
        self._attempt = attempt
        self.last = b""

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._fp.readline(limit)
        if line and self._attempt is not None:
            self._attempt.received = True
        self.last = line
        return line

    def close(self) -> None:
        self._fp.close()


class _StrictResponse(http.client.HTTPResponse):
    def begin(self) -> None:
        if self.headers is not None:
            return
        raw = self.fp
        head = _HeadReader(raw, current.attempt)
        self.fp = head  # type: ignore[assignment]
        try:
            while True:
                super().begin()
                if head.last not in (b"\r\n", b"\n"):
                    raise IncompleteHead("the stream ended inside the response head")
                if self.status == 101:
                    raise MalformedHead("unexpected protocol switch")
                if self.status >= 200:
                    break
                self.headers = self.msg = None  # type: ignore[assignment]  # an interim response: the real one follows
        finally:
            if self.fp is head:  # else http.client closed it, having given up on the response
                self.fp = raw
        try:
            assert_header_parsing(self.msg)
        except HeaderParsingError as exc:
            raise MalformedHead(f"bad header field: {exc}") from exc


class _Watched(HTTPConnection):
    """A connection that serves one attempt at a time and lets that attempt's watchdog cut its socket."""

    response_class = _StrictResponse

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Taken by the watchdog's cut and by close, so a socket is never shut down while it is being closed.
        self._guard = threading.Lock()
        self._attempt: Attempt | None = None
        self._cut = False  # the watchdog shut this socket down: never reuse it
        # What a cut shuts down. It outlives close(): http.client closes the connection of a read-to-close
        # response at once and reads the body through the response's own reference to the socket.
        self._cut_sock: socket.socket | None = None
        _connections.add(self)

    def _enter(self) -> Attempt | None:
        attempt = current.attempt
        if attempt is None:
            return None
        if attempt.conn is not self:
            with self._guard:
                self._attempt = attempt
                reused = self.sock is not None
                stale = self._cut
            attempt.conn = self
            attempt.reused = reused
            if stale or (reused and attempt.fresh):
                self.close()
                attempt.reused = False
        if attempt.killed:
            raise TimeoutError("deadline passed")
        return attempt

    def cut(self, attempt: Attempt) -> None:
        with self._guard:
            if self._attempt is not attempt:
                return  # the connection went on to another attempt meanwhile
            self._cut = True
            if self._cut_sock is not None:
                try:
                    socket.socket.shutdown(self._cut_sock, socket.SHUT_RDWR)  # the plain socket's: no TLS alert
                except OSError:
                    pass

    def check_in(self) -> None:
        """The pool takes the connection back after a complete response: close it if the watchdog fired."""
        with self._guard:
            attempt, self._attempt = self._attempt, None
        if attempt is not None and not attempt.stop_watch():
            self.close()

    @property
    def is_connected(self) -> bool:
        return not self._cut and super().is_connected

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        with self._guard:
            self._cut = False
            self._cut_sock = sock
            attempt = self._attempt
        if attempt is not None:
            left = attempt.time_left()
            if attempt.killed or left <= 0:
                sock.close()
                raise TimeoutError("deadline passed while connecting")
            # wrap_socket detaches this socket object from its descriptor, so a cut cannot reach a TLS
            # handshake; but CPython bounds a whole handshake by the socket's timeout: the time left.
            sock.settimeout(left)
        return sock

    def connect(self) -> None:
        attempt = self._enter()
        if attempt is not None:
            attempt.phase = "connect"
        super().connect()
        with self._guard:
            self._cut_sock = self.sock  # the TLS socket, once there is one
        if attempt is not None:
            if attempt.killed:
                raise TimeoutError("deadline passed while connecting")
            attempt.phase = "send"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        attempt = self._enter()
        if attempt is not None and self.sock is not None:
            attempt.phase = "send"
        super().request(method, url, *args, **kwargs)

    def getresponse(self) -> Any:  # urllib3's HTTPResponse
        attempt = current.attempt
        if attempt is not None:
            attempt.phase = "headers"
        response = super().getresponse()
        if attempt is not None:
            attempt.phase = "body"
        return response

    def close(self) -> None:
        with self._guard:
            super().close()


class _WatchedTLS(_Watched, HTTPSConnection):
    pass


class _PoolMixin:
    def __init__(self, host: str, port: int | None = None, *args: Any, maxsize: int = 1, **kwargs: Any) -> None:
        super().__init__(host, port, *args, maxsize=maxsize, **kwargs)  # type: ignore[call-arg]
        self._keep_idle = maxsize > 0  # urllib3 reads a size of 0 as "no limit"; here it means "keep none"

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.check_in()
            if not self._keep_idle:
                conn.close()
                return
        elif not self._keep_idle:
            return
        super()._put_conn(conn)  # type: ignore[misc]


class _Pool(_PoolMixin, HTTPConnectionPool):
    ConnectionCls = _Watched


class _TLSPool(_PoolMixin, HTTPSConnectionPool):
    ConnectionCls = _WatchedTLS


_POOL_CLASSES = {"http": _Pool, "https": _TLSPool}


class DeadlineAdapter(HTTPAdapter):
    """``requests``' adapter on the connections above; no retries of its own (the pipeline retries)."""

    def __init__(self, *, pool_maxsize: int) -> None:
        super().__init__(pool_maxsize=pool_maxsize, max_retries=0, pool_block=False)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS brings connection classes of its own
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
