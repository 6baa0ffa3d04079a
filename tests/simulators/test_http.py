"""The HTTP behaviour every simulator shares: JSON everywhere, keep-alive, concurrency, no 500, clean stop."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from simulators import SimulatorServer, serve

from .client import call, exchange, parse_raw_response, send


def test_health_answers_ok(simulator: SimulatorServer) -> None:
    reply = call(simulator, "GET", "/health")
    assert (reply.status, reply.body) == (200, {"status": "ok"})
    assert reply.headers["Content-Type"] == "application/json"


def test_url_names_the_loopback_port(simulator: SimulatorServer) -> None:
    assert simulator.port > 0
    assert simulator.url == f"http://127.0.0.1:{simulator.port}"


def test_unknown_route_is_a_json_404(simulator: SimulatorServer) -> None:
    reply = call(simulator, "GET", "/nowhere")
    assert reply.status == 404
    assert "error" in reply.body


def test_wrong_method_is_a_json_405_naming_the_allowed_ones(simulator: SimulatorServer) -> None:
    reply = call(simulator, "POST", "/health")
    assert reply.status == 405
    assert "error" in reply.body
    assert reply.headers["Allow"] == "GET"


def test_malformed_json_is_a_400(simulator: SimulatorServer) -> None:
    reply = call(simulator, "PUT", "/faults", raw=b'{"error_rate": ')
    assert reply.status == 400
    assert reply.body == {"error": "malformed JSON"}


def test_head_answers_headers_without_a_body(simulator: SimulatorServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", simulator.port, timeout=5)
    try:
        conn.request("HEAD", "/health")
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == len(b'{"status": "ok"}')
        assert response.read() == b""
        # The connection is still in step: the next request gets its own answer.
        assert send(conn, "GET", "/health").body == {"status": "ok"}
    finally:
        conn.close()


def test_one_keep_alive_connection_serves_many_requests(simulator: SimulatorServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", simulator.port, timeout=5)
    try:
        send(conn, "GET", "/health")
        first_socket = conn.sock
        for _ in range(20):
            reply = send(conn, "GET", "/health")
            assert reply.status == 200
            assert reply.headers.get("Connection") != "close"
        assert conn.sock is first_socket
    finally:
        conn.close()


def test_sixty_concurrent_connections_are_served_at_once(inventory: SimulatorServer) -> None:
    call(inventory, "PUT", "/faults", json_body={"latency_ms": 300})
    statuses: list[int] = []
    lock = threading.Lock()
    start_together = threading.Barrier(60)

    def client() -> None:
        start_together.wait(timeout=5)
        status = call(inventory, "GET", "/stock/1").status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(60)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 60
    # One at a time this would take 60 x 0.3 s = 18 s.
    assert elapsed < 4.0


_BIG_NUMBER = b'{"latency_ms": 1' + b"0" * 5000 + b"}"
_DEEP = b"[" * 100_000


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra words\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET http://[x/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400),
        (b"PUT /faults HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"PUT /faults HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"PUT /faults HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 200),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: 4\r\n\r\n\xff\xfe\xfd\xfc", 400),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(_DEEP), _DEEP), 400),
        (b"PUT /faults HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BIG_NUMBER), _BIG_NUMBER), 400),
        (b'PUT /faults HTTP/1.1\r\nContent-Length: 19\r\n\r\n{"error_rate": NaN}', 400),
    ],
    ids=lambda value: value.decode("iso-8859-1")[:40] if isinstance(value, bytes) else str(value),
)
def test_malformed_requests_get_a_json_4xx_never_a_500(
    simulator: SimulatorServer, request_bytes: bytes, status: int
) -> None:
    answer, headers, body = parse_raw_response(exchange(simulator.port, request_bytes))
    assert answer == status
    assert headers["content-type"] == "application/json"
    assert isinstance(body, dict)
    # The simulator still serves after the garbage.
    assert call(simulator, "GET", "/health").status == 200


def test_shutdown_closes_the_listener_and_open_connections_and_is_idempotent() -> None:
    server = serve("payment")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        assert send(conn, "GET", "/health").status == 200
        started = time.monotonic()
        server.shutdown()
        server.shutdown()
        assert time.monotonic() - started < 1.0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            send(conn, "GET", "/health")
    finally:
        conn.close()


def test_serve_refuses_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown simulator kind"):
        serve("shipping")


def test_a_simulator_is_a_context_manager() -> None:
    with serve("inventory") as server:
        assert call(server, "GET", "/health").status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_responses_are_valid_json_with_exact_content_length(simulator: SimulatorServer) -> None:
    answer = exchange(simulator.port, b"GET /faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert len(body) == int(headers[b"Content-Length"])
    assert json.loads(body)["error_status"] == 503
