"""A tiny HTTP client for the simulator tests: JSON in, status, headers and JSON out."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from simulators import SimulatorServer

TIMEOUT = 5.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: Any


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    json_body: object = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on an open connection, which stays open for the next."""
    data = raw if raw is not None else (None if json_body is None else json.dumps(json_body).encode())
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    payload = response.read()
    return Reply(response.status, response.headers, json.loads(payload) if payload else None)


def call(
    server: SimulatorServer,
    method: str,
    path: str,
    *,
    json_body: object = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One request on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        return send(conn, method, path, json_body=json_body, raw=raw, headers=headers)
    finally:
        conn.close()


def exchange(port: int, data: bytes, *, timeout: float = TIMEOUT) -> bytes:
    """Raw bytes in, everything the server sends until it closes out: for requests no client would build."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # no more requests: the server answers, then closes
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_raw_response(data: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("iso-8859-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body) if body else None
