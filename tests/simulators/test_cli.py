"""``python -m simulators``: starts, logs one line, serves, and stops promptly on SIGTERM or SIGINT."""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .client import Reply, send

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 10.0


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    assert ready, "the simulator wrote no line in time"
    return proc.stderr.readline()


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """The simulator process, its URL, and its start line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", *args, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = _read_line(proc, STARTUP_TIMEOUT)
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        yield proc, match.group(1), line
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        assert proc.stderr is not None
        proc.stderr.close()


def _get(url: str, path: str) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        return send(conn, "GET", path)
    finally:
        conn.close()


@pytest.mark.parametrize(("kind", "signum"), [("payment", signal.SIGTERM), ("inventory", signal.SIGINT)])
def test_the_command_serves_and_stops_within_a_second_of_a_signal(kind: str, signum: int) -> None:
    with running(kind) as (proc, url, line):
        assert kind in line
        assert _get(url, "/health").body == {"status": "ok"}
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=1.0) == 0
        assert time.monotonic() - started < 1.0


def test_the_command_is_quiet_per_request_by_default() -> None:
    with running("notification") as (proc, url, _):
        _get(url, "/health")
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        assert proc.stderr.read() == ""


def test_verbose_logs_one_line_per_request() -> None:
    with running("notification", "--verbose") as (proc, url, _):
        _get(url, "/health")
        _get(url, "/notifications")
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        lines = proc.stderr.read().splitlines()
        assert len(lines) == 2
        assert "GET /health" in lines[0]
        assert "GET /notifications" in lines[1]


def test_a_port_in_use_exits_1_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "simulators", "payment", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_an_unknown_kind_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators", "shipping"], cwd=ROOT, capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
