"""Every command README.md tells a reader to run works, against a stack of the test's own.

The commands are the lines of the ```sh blocks and the inline `curl ...` and `orderflow ...` examples, less
`make` itself. The test only redirects them (the stack's ports, its token, an order id of its own) and makes
curl fail on an HTTP error; the README stays as a reader copies it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import ROOT, RunningStack, running_stack

README = ROOT / "README.md"
INLINE_COMMAND = re.compile(r"(curl|(\.venv/bin/)?orderflow) ")
# Variables set for one command (`BROKER_URL=... make run`) do not change what the command is.
ASSIGNMENTS = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)+")
# Commands that start or test the whole project, not examples against a running stack.
NOT_EXAMPLES = ("make ", ".venv/bin/python -m pytest")


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and not ASSIGNMENTS.sub("", line).startswith(NOT_EXAMPLES):
                commands.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    commands += [span for span in re.findall(r"`([^`\n]+)`", prose) if INLINE_COMMAND.match(span)]
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_this_test_runs() -> None:
    assert len(COMMANDS) >= 10
    assert any("/admin/flags/" in command for command in COMMANDS)
    assert any(command.startswith(".venv/bin/orderflow ") for command in COMMANDS)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(tmp_path_factory.mktemp("readme")) as running:
        yield running


@pytest.fixture(scope="module")
def order_id(stack: RunningStack) -> str:
    response = stack.order()
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def token_file(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "admin-token"
    path.write_text(stack.admin_token + "\n")
    path.chmod(0o600)
    return path


def redirected(command: str, stack: RunningStack, order_id: str, token_file: Path) -> str:
    ports = {8000: stack.api, 8474: stack.chaos, 9808: stack.worker_metrics.removesuffix("/metrics")}
    ports.update({9101: stack.simulators["payment"], 9102: stack.simulators["inventory"],
                  9103: stack.simulators["notification"]})

    def port(match: re.Match[str]) -> str:
        documented = int(match.group(2))
        assert documented in ports, f"README names port {documented}, which this test does not know"
        return ports[documented]

    command = re.sub(r"(https?://)?(?:localhost|127\.0\.0\.1):(\d+)", lambda m: port(m), command)
    command = command.replace("var/admin-token", str(token_file)).replace("ORDER_ID", order_id)
    # An HTTP error fails the command (with its body printed); no call may hang the test.
    return re.sub(r"^curl ", "curl --fail-with-body --show-error --max-time 15 ", command)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_succeeds(command: str, stack: RunningStack, order_id: str, token_file: Path) -> None:
    assert stack.database is not None
    env = {**os.environ, **stack.database.env(), "ORDERFLOW_VAR": str(stack.var),
           "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    run = redirected(command, stack, order_id, token_file)
    done = subprocess.run(["bash", "-c", run], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{run}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
