from __future__ import annotations

import gzip
import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from app.adapters.http import HttpConnectionError, HttpTimeoutError, HttpTransport, HttpTransportError, Watchdog

from .conftest import ServerFactory
from .servers import (
    answer_then_close,
    json_response,
    serve_raw,
    serve_then,
    silent,
    stall_tls_handshake,
    trickle,
)

# Every timing test allows this much past the deadline; the contract says "a few ms", CI runners are noisy.
SLACK = 0.3


def _expect_timeout_at(deadline: float, call: object) -> None:
    assert callable(call)
    with pytest.raises(HttpTimeoutError):
        call()
    ended = time.monotonic()
    assert deadline <= ended <= deadline + SLACK, f"ended {ended - deadline:+.3f}s from the deadline"


def test_a_json_response_is_returned_whole(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server()
    response = transport.request("GET", server.url + "/stock/7", deadline=time.monotonic() + 2)
    assert response.status == 200
    assert response.json()["line"] == "GET /stock/7 HTTP/1.1"
    assert response.headers["content-type"] == response.headers["Content-Type"] == "application/json"
    assert 0 < response.elapsed < 2


def test_keep_alive_reuses_one_connection(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server()
    counts = [transport.request("GET", server.url + "/", deadline=time.monotonic() + 2).json()["n"]
              for _ in range(5)]
    assert counts == [1, 2, 3, 4, 5]
    assert server.accepted == 1


def test_json_body_headers_and_params_are_sent(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server()
    response = transport.request(
        "post",
        server.url + "/payments?x=1",
        deadline=time.monotonic() + 2,
        json={"order_id": "o-1", "amount": "12.50"},
        headers={"Idempotency-Key": "payment:o-1", "user-agent": "custom"},
        params={"order_id": "a b&c"},
    )
    echo = response.json()
    assert echo["line"] == "POST /payments?x=1&order_id=a+b%26c HTTP/1.1"
    assert echo["body"] == '{"order_id":"o-1","amount":"12.50"}'
    assert echo["headers"]["content-type"] == "application/json"
    assert echo["headers"]["idempotency-key"] == "payment:o-1"
    assert echo["headers"]["user-agent"] == "custom"
    assert echo["headers"]["host"] == f"127.0.0.1:{server.port}"


def test_header_injection_is_refused(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server()
    with pytest.raises(ValueError):
        transport.request("GET", server.url, deadline=time.monotonic() + 2, headers={"X-A": "1\r\nX-B: 2"})


@pytest.fixture
def refused_url() -> Iterator[str]:
    # Bound but not listening: connecting is refused, and no other test can take the port meanwhile.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def test_connection_refused_fails_fast(refused_url: str, transport: HttpTransport) -> None:
    started = time.monotonic()
    with pytest.raises(HttpConnectionError):
        transport.request("GET", refused_url, deadline=started + 5)
    assert time.monotonic() - started < 0.5


def test_a_passed_deadline_fails_without_any_io(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server()
    with pytest.raises(HttpTimeoutError):
        transport.request("GET", server.url, deadline=time.monotonic() - 0.001)
    time.sleep(0.05)
    assert server.accepted == 0


def test_a_server_that_never_answers_times_out_at_the_deadline(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server(default=silent)
    deadline = time.monotonic() + 0.5
    _expect_timeout_at(deadline, lambda: transport.request("GET", server.url, deadline=deadline))


def test_headers_trickled_byte_by_byte_time_out_at_the_deadline(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server(default=trickle(json_response({"ok": True}), interval=0.1))
    deadline = time.monotonic() + 0.6
    _expect_timeout_at(deadline, lambda: transport.request("GET", server.url, deadline=deadline))


def test_a_body_trickled_byte_by_byte_times_out_at_the_deadline(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    response = json_response({"padding": "x" * 200})
    server = make_server(default=trickle(response, interval=0.1, head_at_once=True))
    deadline = time.monotonic() + 0.6
    _expect_timeout_at(deadline, lambda: transport.request("GET", server.url, deadline=deadline))


def test_a_slow_trickle_is_cut_at_the_deadline_not_at_the_next_byte(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    # The next byte would come 0.4 s after the deadline; only the watchdog can end the wait in between.
    server = make_server(default=trickle(json_response({"ok": True}), interval=0.45))
    deadline = time.monotonic() + 0.5
    _expect_timeout_at(deadline, lambda: transport.request("GET", server.url, deadline=deadline))


def test_a_body_read_to_the_close_trickled_times_out_at_the_deadline(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    # No Content-Length: http.client hands the socket to the response and closes the connection at once.
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"padding": "' + b"x" * 200
    server = make_server(default=trickle(response, interval=0.1, head_at_once=True))
    deadline = time.monotonic() + 0.6
    _expect_timeout_at(deadline, lambda: transport.request("GET", server.url, deadline=deadline))


def test_a_stalled_tls_handshake_times_out_at_the_deadline(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server(default=stall_tls_handshake(interval=0.1))
    url = f"https://127.0.0.1:{server.port}/"
    deadline = time.monotonic() + 0.6
    _expect_timeout_at(deadline, lambda: transport.request("GET", url, deadline=deadline))


def test_a_timeout_names_the_phase(make_server: ServerFactory, transport: HttpTransport) -> None:
    response = json_response({"padding": "x" * 200})
    server = make_server(default=trickle(response, interval=0.05, head_at_once=True))
    with pytest.raises(HttpTimeoutError, match="body"):
        transport.request("GET", server.url, deadline=time.monotonic() + 0.3)


def test_after_a_timeout_the_next_request_succeeds(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server([silent])
    with pytest.raises(HttpTimeoutError):
        transport.request("GET", server.url, deadline=time.monotonic() + 0.3)
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).status == 200


def test_a_connection_that_timed_out_never_goes_back_to_the_pool(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    # The first connection answers once, then hangs; a broken socket reused would fail request three.
    server = make_server([serve_then(1, silent)])
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).status == 200
    with pytest.raises(HttpTimeoutError):
        transport.request("GET", server.url, deadline=time.monotonic() + 0.3)
    third = transport.request("GET", server.url, deadline=time.monotonic() + 2)
    assert third.json()["n"] == 1
    assert server.accepted == 2


class _RacingWatchdog:
    """A watchdog that, while ``racing``, reports on cancel that it fired just as the response completed."""

    def __init__(self) -> None:
        self.racing = False
        self._real = Watchdog()

    def watch(self, deadline: float, on_expire: object) -> object:
        handle = self._real.watch(deadline, on_expire)  # type: ignore[arg-type]
        racing = self.racing

        class Handle:
            def cancel(self) -> bool:
                return handle.cancel() and not racing

        return Handle()

    def stop(self) -> None:
        self._real.stop()


def test_a_connection_whose_watchdog_fired_is_never_reused(make_server: ServerFactory) -> None:
    server = make_server()
    watchdog = _RacingWatchdog()
    with HttpTransport(watchdog=watchdog) as transport:  # type: ignore[arg-type]
        assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json()["n"] == 1
        watchdog.racing = True
        with pytest.raises(HttpTimeoutError):
            transport.request("GET", server.url, deadline=time.monotonic() + 2)
        watchdog.racing = False
        assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json()["n"] == 1
    watchdog.stop()
    assert server.accepted == 2


def test_a_server_closing_mid_body_is_a_connection_error(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    server = make_server(default=answer_then_close(partial))
    with pytest.raises(HttpConnectionError, match="mid-response"):
        transport.request("GET", server.url, deadline=time.monotonic() + 2)


# Cut inside a field, or after a whole one: http.client would take the end of the stream for the end of the
# head, and read an empty body to the close.
@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nContent-Ty", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"])
def test_a_server_closing_mid_headers_is_a_connection_error(
    make_server: ServerFactory, transport: HttpTransport, head: bytes
) -> None:
    server = make_server(default=answer_then_close(head))
    with pytest.raises(HttpConnectionError):
        transport.request("GET", server.url, deadline=time.monotonic() + 2)


def test_a_server_closing_without_answering_is_a_connection_error(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server(default=answer_then_close(b""))
    with pytest.raises(HttpConnectionError):
        transport.request("POST", server.url, deadline=time.monotonic() + 2, json={})


def test_garbage_instead_of_a_response_is_a_connection_error(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server(default=answer_then_close(b"SSH-2.0-OpenSSH\r\n\r\n"))
    with pytest.raises(HttpConnectionError, match="malformed"):
        transport.request("GET", server.url, deadline=time.monotonic() + 2)


def test_a_pooled_connection_closed_by_the_server_is_replaced(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server([serve_raw(json_response({"first": True}), then_close=True)])
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == {"first": True}
    time.sleep(0.05)  # the server's FIN reaches the idle pooled socket
    assert transport.request("POST", server.url, deadline=time.monotonic() + 2, json={}).status == 200
    assert server.accepted == 2


@pytest.mark.parametrize(
    ("method", "headers"),
    [("GET", {}), ("PUT", {}), ("POST", {"Idempotency-Key": "payment:o-1"})],
)
def test_a_request_safe_to_repeat_is_sent_again_when_a_pooled_connection_turns_out_closed(
    make_server: ServerFactory, transport: HttpTransport, method: str, headers: dict[str, str]
) -> None:
    # The first connection answers once, then closes on the next request without a byte of answer.
    server = make_server([serve_then(1, answer_then_close(b""))])
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).status == 200
    again = transport.request(method, server.url, deadline=time.monotonic() + 2, json={}, headers=headers)
    assert (again.status, again.json()["n"]) == (200, 1)
    assert server.accepted == 2


def test_a_post_without_idempotency_key_is_never_sent_twice(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    server = make_server([serve_then(1, answer_then_close(b""))])
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).status == 200
    with pytest.raises(HttpConnectionError, match="closed before any response"):
        transport.request("POST", server.url, deadline=time.monotonic() + 2, json={})
    assert server.accepted == 1


def test_connection_close_responses_are_not_pooled(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    closing = json_response({"ok": True}, headers=["Connection: close"])
    server = make_server(default=answer_then_close(closing))
    for _ in range(2):
        assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == {"ok": True}
    assert server.accepted == 2


def test_chunked_bodies_are_decoded_and_the_connection_reused(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
               b"5\r\n{\"a\":\r\n3;ext=1\r\n 42\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n")
    server = make_server([serve_raw(chunked, chunked)])
    for _ in range(2):
        assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == {"a": 42}
    assert server.accepted == 1


def test_interim_responses_are_skipped(make_server: ServerFactory, transport: HttpTransport) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    server = make_server(default=serve_raw(interim + json_response({"ok": 1}, status=201)))
    response = transport.request("POST", server.url, deadline=time.monotonic() + 2, json={})
    assert (response.status, response.json()) == (201, {"ok": 1})


def test_every_interim_response_is_skipped_and_the_connection_stays_in_step(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    server = make_server([serve_raw(early_hints + json_response({"first": 1}), json_response({"second": 2}))])
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == {"first": 1}
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == {"second": 2}
    assert server.accepted == 1


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nno colon here\r\n\r\n{}",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ],
)
def test_a_head_that_cannot_be_trusted_is_a_connection_error(
    make_server: ServerFactory, transport: HttpTransport, head: bytes
) -> None:
    server = make_server(default=answer_then_close(head))
    with pytest.raises(HttpConnectionError, match="malformed"):
        transport.request("GET", server.url, deadline=time.monotonic() + 2)


def test_a_gzip_body_is_decoded(make_server: ServerFactory, transport: HttpTransport) -> None:
    body = gzip.compress(b'{"available": 7}')
    packed = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    server = make_server(default=serve_raw(packed))
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == {"available": 7}


def test_the_proxy_of_the_environment_is_used_and_no_proxy_honoured(
    make_server: ServerFactory, transport: HttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, direct = make_server(), make_server()
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    via_proxy = transport.request("GET", "http://inventory.internal/stock/1", deadline=time.monotonic() + 2)
    assert via_proxy.json()["line"] == "GET http://inventory.internal/stock/1 HTTP/1.1"
    assert transport.request("GET", direct.url + "/stock/1", deadline=time.monotonic() + 2).status == 200
    assert (proxy.accepted, direct.accepted) == (1, 1)


def test_no_content_and_head_responses_have_empty_bodies(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    server = make_server([serve_raw(no_content, head, json_response([1]))])
    assert transport.request("DELETE", server.url, deadline=time.monotonic() + 2).body == b""
    assert transport.request("HEAD", server.url, deadline=time.monotonic() + 2).body == b""
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json() == [1]
    assert server.accepted == 1


def test_error_statuses_are_responses_not_exceptions(
    make_server: ServerFactory, transport: HttpTransport
) -> None:
    busy = json_response({"error": "busy"}, status=503, headers=["Retry-After: 3"])
    server = make_server(default=serve_raw(busy))
    response = transport.request("GET", server.url, deadline=time.monotonic() + 2)
    assert (response.status, response.retry_after()) == (503, 3.0)


def test_a_bad_json_body_raises_value_error(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server(default=serve_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope"))
    response = transport.request("GET", server.url, deadline=time.monotonic() + 2)
    with pytest.raises(ValueError):
        response.json()


def test_both_errors_are_transport_errors() -> None:
    assert issubclass(HttpTimeoutError, HttpTransportError)
    assert issubclass(HttpConnectionError, HttpTransportError)


def test_twenty_threads_share_one_transport(make_server: ServerFactory, transport: HttpTransport) -> None:
    server = make_server()
    errors: list[BaseException] = []
    mismatches: list[tuple[int, object]] = []

    def worker(worker_id: int) -> None:
        try:
            for i in range(25):
                sent = {"worker": worker_id, "i": i}
                deadline = time.monotonic() + 5
                echo = transport.request("POST", server.url + "/echo", deadline=deadline, json=sent)
                if echo.status != 200 or echo.json()["body"] != f'{{"worker":{worker_id},"i":{i}}}':
                    mismatches.append((worker_id, echo.json()))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == [] and mismatches == []
    assert server.accepted <= 20  # each thread holds at most one connection at a time; all were pooled


def test_close_drops_idle_connections_and_the_transport_still_works(make_server: ServerFactory) -> None:
    server = make_server()
    transport = HttpTransport()
    transport.request("GET", server.url, deadline=time.monotonic() + 2)
    transport.close()
    assert transport.request("GET", server.url, deadline=time.monotonic() + 2).json()["n"] == 1
    transport.close()
    assert server.accepted == 2


def test_pool_maxsize_bounds_idle_connections(make_server: ServerFactory) -> None:
    server = make_server()
    transport = HttpTransport(pool_maxsize=0)
    for _ in range(3):
        transport.request("GET", server.url, deadline=time.monotonic() + 2)
    assert server.accepted == 3


@pytest.mark.parametrize("deadline", [math.nan, math.inf])
def test_a_deadline_must_be_a_finite_time(deadline: float, transport: HttpTransport) -> None:
    with pytest.raises(ValueError):
        transport.request("GET", "http://127.0.0.1:9/", deadline=deadline)


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///nohost", "not a url"])
def test_unsupported_urls_are_refused(url: str, transport: HttpTransport) -> None:
    with pytest.raises(ValueError):
        transport.request("GET", url, deadline=time.monotonic() + 1)
