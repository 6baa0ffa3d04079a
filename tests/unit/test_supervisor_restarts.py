"""`make run`'s supervisor restarts a process that dies on its own, and stops the stack when one keeps dying.

Real child processes (`sleep`), killed for real; only the clock that schedules the backoff is injected.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from app.stack import supervisor as sup
from app.stack.supervisor import Child, ProcessSpec, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSupervisor(Supervisor):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.logged: list[str] = []

    def log(self, message: str, level: int = logging.INFO) -> None:
        self.logged.append(message)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stack(clock: Clock) -> Iterator[RecordingSupervisor]:
    supervisor = RecordingSupervisor(clock)
    for name in ("worker", "api"):
        spec = ProcessSpec(name, [sys.executable, "-c", "import time; time.sleep(60)"], stop_rank=0)
        supervisor.children.append(Child.start(spec, dict(os.environ)))
    try:
        yield supervisor
    finally:
        supervisor.stop()


def kill(child: Child) -> int:
    pid = child.proc.pid
    os.kill(pid, signal.SIGKILL)
    child.proc.wait(timeout=5)
    return pid


def crash_and_restart(stack: RecordingSupervisor, clock: Clock, child: Child, *, times: int) -> None:
    for _ in range(times):
        kill(child)
        assert stack.check_children()
        clock.now = child.restart_at or clock.now
        assert stack.check_children()
        assert child.proc.poll() is None


def test_a_process_that_dies_is_restarted_after_its_backoff(stack: RecordingSupervisor, clock: Clock) -> None:
    worker, api = stack.children
    api_pid = api.proc.pid
    old = kill(worker)

    assert stack.check_children()
    assert worker.proc.pid == old, "restarted before its backoff"
    clock.now += 0.5
    assert stack.check_children()
    assert worker.proc.pid != old and worker.proc.poll() is None
    assert api.proc.pid == api_pid, "a healthy process is left alone"
    assert any("worker exited with -9; restarting it in 0.5 s" in line for line in stack.logged)


def test_the_backoff_doubles_with_each_recent_exit(stack: RecordingSupervisor, clock: Clock) -> None:
    worker = stack.children[0]
    delays = []
    for _ in range(4):
        kill(worker)
        assert stack.check_children()
        assert worker.restart_at is not None
        delays.append(worker.restart_at - clock.now)
        clock.now = worker.restart_at
        assert stack.check_children()
        assert worker.proc.poll() is None
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_exits_older_than_the_window_are_forgotten(stack: RecordingSupervisor, clock: Clock) -> None:
    worker = stack.children[0]
    crash_and_restart(stack, clock, worker, times=sup.RESTART_LIMIT)
    clock.now += sup.RESTART_WINDOW + 1
    kill(worker)
    assert stack.check_children(), "old exits still counted"
    assert worker.restart_at == clock.now + 0.5


def test_a_process_that_keeps_dying_stops_the_stack(stack: RecordingSupervisor, clock: Clock) -> None:
    worker = stack.children[0]
    crash_and_restart(stack, clock, worker, times=sup.RESTART_LIMIT)
    kill(worker)
    assert not stack.check_children()
    assert any(f"worker exited with -9, {sup.RESTART_LIMIT + 1} times" in line
               for line in stack.logged)


def test_what_the_dead_process_left_in_its_group_is_killed(clock: Clock, tmp_path: os.PathLike[str]) -> None:
    """A Celery main process killed outright leaves its pool children behind; the restart must not run beside
    them."""
    pidfile = os.path.join(tmp_path, "grandchild.pid")
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)']); open({pidfile!r}, 'w').write(str(p.pid)); time.sleep(60)")
    supervisor = RecordingSupervisor(clock)
    supervisor.children.append(Child.start(ProcessSpec("worker", [sys.executable, "-c", script], 0),
                                           dict(os.environ)))
    try:
        deadline = time.monotonic() + 10
        while not (os.path.exists(pidfile) and open(pidfile).read()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        grandchild = int(open(pidfile).read())
        kill(supervisor.children[0])
        assert supervisor.check_children()
        deadline = time.monotonic() + 5
        while _alive(grandchild):
            assert time.monotonic() < deadline, "the orphaned pool process outlived its worker"
            time.sleep(0.02)
    finally:
        supervisor.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
