"""HTTP for OrderFlow's dependencies: ``requests``, with a hard wall-clock deadline per attempt.

``requests`` does the HTTP (framing, keep-alive pools, proxies and ``NO_PROXY``, TLS, content encodings). What
it cannot do is bound an attempt: its ``timeout`` bounds each socket operation, so a dependency that trickles
one byte every 100 ms keeps a caller forever ("the timeout that wasn't"). Every attempt here carries an
absolute ``time.monotonic()`` deadline, enforced three ways:

* each socket operation gets the time left as its timeout, so none outlives the deadline;
* the process ``Watchdog`` shuts the attempt's socket down at the deadline (``connection.py``), which ends a
  trickling read between two bytes;
* a response that completes after the deadline, or once the watchdog fired, is a timeout, and its connection
  is never reused.

One ``requests.Session`` per process: a forked child (gunicorn and Celery prefork) drops the one it inherited
and closes its copies of the parent's sockets. urllib3 retries nothing (the resilience pipeline retries); the
one re-send here is for a pooled connection the peer closed just as it was used: a request that is safe to
repeat (idempotent method, or one carrying an ``Idempotency-Key``) goes once more on a fresh connection,
within the same deadline.
"""

from __future__ import annotations

import email.utils
import http.client
import json as jsonlib
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from app.forks import on_fork

from .connection import Attempt, DeadlineAdapter, IncompleteHead, MalformedHead, current, forget_connections
from .watchdog import Watchdog, default_watchdog

__all__ = [
    "HttpConnectionError",
    "HttpResponse",
    "HttpTimeoutError",
    "HttpTransport",
    "HttpTransportError",
    "parse_retry_after",
]

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")
_JSON_HEADERS = {"Content-Type": "application/json"}
_ENVIRONMENT_CACHE_SIZE = 1024
# A session stores no cookie: every call stands alone, as the dependencies expect.
_NO_COOKIES = DefaultCookiePolicy(allowed_domains=[])
# What an exchange can raise once it started; anything else is a bug and propagates.
_EXCHANGE_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
# The peer ended the stream before the response was complete.
_CLOSED = (http.client.IncompleteRead, http.client.RemoteDisconnected, IncompleteHead,
           urllib3.exceptions.IncompleteRead)
_MALFORMED = (MalformedHead, http.client.BadStatusLine, http.client.LineTooLong, http.client.UnknownProtocol,
              urllib3.exceptions.InvalidChunkLength, urllib3.exceptions.InvalidHeader)


class HttpTransportError(Exception):
    """The attempt produced no HTTP response."""


class HttpConnectionError(HttpTransportError):
    """Refused, reset, unresolvable, or closed (or garbled) before the response was complete."""


class HttpTimeoutError(HttpTransportError):
    """The attempt's deadline passed, whatever phase it was in."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response. ``headers`` is case-insensitive, also when a test builds one from a plain dict."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float

    def __post_init__(self) -> None:
        if not isinstance(self.headers, CaseInsensitiveDict):
            object.__setattr__(self, "headers", CaseInsensitiveDict(self.headers))

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


class HttpTransport:
    """Thread-safe HTTP client: keep-alive pools per origin, a hard deadline per attempt.

    ``request`` reads the whole body before returning (dependency responses are small JSON) and raises
    ``HttpTimeoutError`` within a few milliseconds of ``deadline``, or ``HttpConnectionError``. Any status
    code is a response; deciding what to retry belongs to the resilience pipeline. A request that cannot be
    sent as given (method, URL, header) raises ``ValueError`` before anything goes out.
    """

    def __init__(
        self,
        *,
        pool_maxsize: int = 32,
        watchdog: Watchdog | None = None,
        user_agent: str = "orderflow",
    ) -> None:
        if pool_maxsize < 0:
            raise ValueError("pool_maxsize must be >= 0")
        self._pool_maxsize = pool_maxsize
        self._watchdog = watchdog if watchdog is not None else default_watchdog()
        self._lock = threading.Lock()
        self._headers = CaseInsensitiveDict(requests.utils.default_headers())
        self._headers["User-Agent"] = user_agent
        self._session = self._new_session()
        self._environment: dict[str, dict[str, Any]] = {}  # url -> what requests takes from the environment
        self._pid = os.getpid()
        _transports.add(self)
        _register_fork_hook()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = DeadlineAdapter(pool_maxsize=self._pool_maxsize)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.cookies.set_policy(_NO_COOKIES)
        return session

    def _environment_for(self, session: requests.Session, url: str) -> dict[str, Any]:
        # Proxies, NO_PROXY and the CA bundle, as requests reads them from the environment: once per URL and
        # process, not on every call, where reading them costs about a seventh of the call.
        session.get_adapter(url)  # InvalidSchema (a ValueError) for anything but http and https
        settings = dict(session.merge_environment_settings(url, {}, None, None, None))
        if len(self._environment) >= _ENVIRONMENT_CACHE_SIZE:
            self._environment.clear()
        self._environment[url] = settings
        return settings

    def _process_session(self) -> requests.Session:
        if self._pid != os.getpid():
            self._forget_parent()  # a fork os.register_at_fork did not see; never share the parent's sockets
        return self._session

    def _forget_parent(self) -> None:
        self._lock = threading.Lock()
        self._session = self._new_session()
        self._environment = {}
        self._pid = os.getpid()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection. The transport stays usable and opens new ones when asked."""
        with self._lock:
            self._process_session().close()

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
        body = None
        sent_headers: Mapping[str, str] = self._headers
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            sent_headers = {**sent_headers, **_JSON_HEADERS}
        if headers:
            sent_headers = {**sent_headers, **headers}  # the caller's win, whatever their case
        session = self._process_session()
        # Everything that can refuse the request as given does so here, before anything is sent. Not through
        # Session.prepare_request: a session here keeps no cookie and sends no .netrc credentials, and merging
        # them would cost a tenth of the call.
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=url, headers=sent_headers, data=body, params=params)
        settings = self._environment.get(url) or self._environment_for(session, url)
        may_resend = method in _IDEMPOTENT or "Idempotency-Key" in prepared.headers
        label = f"{method} {url}"
        fresh = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HttpTimeoutError(f"{label}: deadline passed (connect)")
            attempt = Attempt(deadline, fresh=fresh)
            attempt.watched_by(self._watchdog.watch(deadline, attempt.kill))
            current.attempt = attempt
            try:
                timeout = urllib3.Timeout(total=left)
                response = session.send(prepared, timeout=timeout,  # type: ignore[arg-type]  # urllib3's is taken
                                        allow_redirects=False, **settings)
            except _EXCHANGE_ERRORS as exc:
                in_time = attempt.stop_watch()
                if not in_time or attempt.killed or time.monotonic() >= deadline or _timed_out(exc):
                    raise HttpTimeoutError(f"{label}: deadline passed ({attempt.phase})") from exc
                if may_resend and not fresh and attempt.reused and not attempt.received:
                    fresh = True  # the peer closed a pooled connection as it was used: nothing was answered
                    continue
                raise HttpConnectionError(f"{label}: {_describe(exc, attempt)}") from exc
            finally:
                current.attempt = None
                attempt.stop_watch()
                attempt.conn = None
            if not attempt.stop_watch() or time.monotonic() >= deadline:
                # The response completed only as the deadline passed: what was read may be cut short.
                raise HttpTimeoutError(f"{label}: deadline passed ({attempt.phase})")
            return HttpResponse(response.status_code, response.headers, response.content, time.monotonic() - start)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: requests and urllib3 nest the socket's error in theirs."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        reason = getattr(error, "reason", None)  # urllib3's MaxRetryError
        nested = [arg for arg in error.args if isinstance(arg, BaseException)]
        if isinstance(reason, BaseException):
            nested.append(reason)
        if error.__cause__ is not None:
            nested.append(error.__cause__)
        elif error.__context__ is not None and not error.__suppress_context__:
            nested.append(error.__context__)
        todo.extend(reversed(nested))


def _timed_out(exc: BaseException) -> bool:
    # A socket timeout is the time left running out: the deadline, whatever urllib3 named it.
    return any(isinstance(cause, TimeoutError) for cause in _causes(exc))


def _describe(exc: BaseException, attempt: Attempt) -> str:
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, _MALFORMED) and not isinstance(cause, http.client.RemoteDisconnected):
            return f"malformed response: {cause}"
    if any(isinstance(cause, _CLOSED) for cause in causes):
        if attempt.received:
            return f"closed mid-response ({attempt.phase})"
        return f"closed before any response ({attempt.phase})"
    innermost = next((cause for cause in reversed(causes) if isinstance(cause, OSError)), exc)
    return f"{type(innermost).__name__}: {innermost} ({attempt.phase})"


_transports: weakref.WeakSet[HttpTransport] = weakref.WeakSet()
_fork_hook_registered = False


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        _fork_hook_registered = True
        on_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    # Runs before any other thread exists in the child. The inherited sessions may hold locks some parent
    # thread had at fork time, so they are dropped, not closed; their sockets are the parent's to use.
    forget_connections()
    for transport in list(_transports):
        transport._forget_parent()
