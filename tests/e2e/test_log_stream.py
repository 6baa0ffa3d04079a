"""`make run`'s one log stream: text for a terminal, JSON otherwise, ORDERFLOW_LOG_FORMAT over both.

The supervisor decides for its own output (a pseudo-terminal here, or a pipe) and tells the processes it
starts, whose output reaches it through pipes: a stack asked for text writes gunicorn's and Celery's lines as
prefixed text too. (A stack writing JSON by default into its log file: tests/e2e/test_make_run.py.)
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.test_startup import new_ports, supervisor_env
from tests.stack import ROOT, STACK_PROCESSES, running_stack

TEXT_LINE = re.compile(r"(?P<process>[a-z]+) +\| (?:(?P<time>\d\d:\d\d:\d\d) (?P<level>[A-Z]+) +)?(?P<msg>.*)")


CONTRADICTORY_POLICY = "[dependencies.payment]\nattempt_timeout = 9\ntotal_timeout = 1\n"


def refused_start(tmp: Path, *, terminal: bool, log_format: str | None,
                  policy: str = CONTRADICTORY_POLICY) -> tuple[int, list[str]]:
    """The supervisor started with a setting it refuses before starting anything (by default a contradictory
    policy file): its exit code and what it wrote, to a pseudo-terminal or to a pipe."""
    policy_file = tmp / "resilience.toml"
    policy_file.write_text(policy)
    env = supervisor_env(tmp, new_ports(), {"DATABASE_URL": f"sqlite:///{tmp}/orderflow.db"})
    env.pop("ORDERFLOW_LOG_FORMAT", None)
    env["RESILIENCE_FILE"] = str(policy_file)
    if log_format is not None:
        env["ORDERFLOW_LOG_FORMAT"] = log_format
    command = [sys.executable, "-m", "app.stack"]
    if not terminal:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=30)
        return done.returncode, (done.stdout + done.stderr).decode().splitlines()
    controller, terminal_fd = pty.openpty()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=terminal_fd,
                               stderr=terminal_fd)
    os.close(terminal_fd)
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 0.1)[0]:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    return process.returncode, output.decode().replace("\r\n", "\n").splitlines()


@pytest.mark.parametrize(("terminal", "log_format", "chosen"), [
    (True, None, "text"), (False, None, "json"), (True, "json", "json"), (False, "text", "text"),
])
def test_the_supervisor_writes_text_to_a_terminal_json_elsewhere_unless_told(
    tmp_path: Path, terminal: bool, log_format: str | None, chosen: str
) -> None:
    code, lines = refused_start(tmp_path, terminal=terminal, log_format=log_format)
    assert code == 2, lines
    [line] = lines
    refusal = "dependencies.payment.attempt_timeout: 9 exceeds dependencies.payment.total_timeout = 1"
    if chosen == "json":
        entry = json.loads(line)
        assert (entry["process"], entry["level"]) == ("supervisor", "error")
        assert refusal in entry["msg"]
    else:
        match = TEXT_LINE.fullmatch(line)
        assert match and line.startswith("supervisor   | "), line
        assert match["level"] == "ERROR" and refusal in match["msg"]


def test_a_log_format_it_does_not_know_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    code, lines = refused_start(tmp_path, terminal=False, log_format="yaml", policy="")
    assert code == 2
    assert [json.loads(line)["msg"] for line in lines] == ["ORDERFLOW_LOG_FORMAT: json or text, got 'yaml'"]


def test_a_stack_asked_for_text_writes_every_process_s_lines_as_prefixed_text(tmp_path: Path) -> None:
    with running_stack(tmp_path, extra_env={"ORDERFLOW_LOG_FORMAT": "text"}) as stack:
        response = requests.post(f"{stack.api}/api/orders", timeout=15,
                                 json={"customer_id": 11, "lines": [{"product_id": 1, "quantity": 1}]})
        assert response.json()["status"] == "Confirmed"  # the worker receives its notification task

        def lines() -> list[str]:
            text = stack.log.read_text(errors="replace").splitlines()
            first = next(i for i, line in enumerate(text) if TEXT_LINE.fullmatch(line))  # before: make's output
            return text[first:]

        deadline = time.monotonic() + 20
        while not any(line.startswith("worker ") and line.endswith("] received") for line in lines()):
            assert time.monotonic() < deadline, f"no task received by the worker:\n{stack.tail()}"
            time.sleep(0.2)
        written = lines()

    parsed = [TEXT_LINE.fullmatch(line) for line in written]
    assert all(parsed), [line for line, match in zip(written, parsed, strict=True) if not match]
    assert {match["process"] for match in parsed if match} <= STACK_PROCESSES

    def says(process: str, text: str) -> bool:
        return any(match["process"] == process and match["time"] and text in match["msg"] for match in parsed if match)

    assert says("api", "Booting worker with pid")
    assert says("api", '"POST /api/orders HTTP/1.1" 201')
    assert says("worker", "ready.")
    assert says("worker", "] received")
    assert says("supervisor", "order API       http://")
    assert says("payment", "payment simulator listening on")
    assert not any(line.startswith("{") for line in written)
