"""The SQLite writers' turn: handed over by the kernel across processes, first come first served inside one,
bounded by its caller, dropped with a killed holder, and given back when a transaction ends.

A waiter below asks for its turn with a window far longer than the test and a `give_up` that always says
yes: it can only get the turn by being woken with it, never by looking again after a window."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app.adapters.db import make_engine
from app.adapters.writer_turn import LOCAL_RUN, TurnTimeout, WriterTurn, writer_turn

NEVER_AGAIN = 60.0

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
sys.stdin.readline()
"""


def always() -> bool:
    return True


@pytest.fixture
def turn(tmp_path: Path) -> WriterTurn:
    return WriterTurn(tmp_path / "orders.db.writers")


@pytest.fixture
def other_process(turn: WriterTurn) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the turn's file lock until told to let go."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(turn.path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait(10)


class Waiter(threading.Thread):
    def __init__(self, turn: WriterTurn, name: str, served: list[str], *, hold: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.turn, self.label, self.served, self.hold = turn, name, served, hold
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ticket = self.turn.acquire(NEVER_AGAIN, always)
            self.served.append(self.label)
            time.sleep(self.hold)
            self.turn.release(ticket)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def queued(turn: WriterTurn) -> int:
    return len(turn._queue)


def gate_held(turn: WriterTurn) -> bool:
    """Some process waits on the turn's file lock (it holds the gate while it waits)."""
    fd = os.open(turn.gate_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_turn_passes_to_another_process_as_soon_as_its_holder_lets_go(
    turn: WriterTurn, other_process: subprocess.Popen[str]
) -> None:
    served: list[str] = []
    waiter = Waiter(turn, "here", served)
    waiter.start()
    wait_until(lambda: queued(turn) == 1)
    time.sleep(0.1)
    assert served == []  # the other process still holds it
    assert other_process.stdin is not None and other_process.stdout is not None
    other_process.stdin.write("\n")
    other_process.stdin.flush()
    waiter.join(10)
    assert waiter.error is None and served == ["here"]


def test_a_killed_holder_hands_the_turn_on(turn: WriterTurn, other_process: subprocess.Popen[str]) -> None:
    served: list[str] = []
    waiter = Waiter(turn, "here", served)
    waiter.start()
    wait_until(lambda: queued(turn) == 1)
    other_process.kill()
    waiter.join(10)
    assert waiter.error is None and served == ["here"]


def test_the_writers_of_one_process_are_served_first_come_first_served(turn: WriterTurn) -> None:
    first = turn.acquire(NEVER_AGAIN, always)
    served: list[str] = []
    waiters = []
    for n in range(6):
        waiter = Waiter(turn, f"w{n}", served, hold=0.001)
        waiter.start()
        wait_until(lambda n=n: queued(turn) == n + 1)
        waiters.append(waiter)
    turn.release(first)
    for waiter in waiters:
        waiter.join(10)
        assert waiter.error is None
    assert served == [f"w{n}" for n in range(6)]


def test_another_process_gets_its_turn_while_this_one_has_writers_queued(tmp_path: Path) -> None:
    """After a short run of its own writers a process gives the file lock back, so a writer of another
    process waits for that run, not for the whole queue of the first."""
    mine = WriterTurn(tmp_path / "orders.db.writers")
    theirs = WriterTurn(mine.path)  # its own open file: another process as far as the lock goes
    served: list[str] = []
    first = mine.acquire(NEVER_AGAIN, always)
    local = [Waiter(mine, f"mine{n}", served, hold=0.02) for n in range(12)]
    for n, waiter in enumerate(local):
        waiter.start()
        wait_until(lambda n=n: queued(mine) == n + 1)
    other = Waiter(theirs, "theirs", served)
    other.start()
    wait_until(lambda: gate_held(theirs))  # the other process waits on the turn, in front of the gate
    mine.release(first)
    for waiter in [*local, other]:
        waiter.join(10)
        assert waiter.error is None
    # `first` and three more of its own, then the process that was waiting: not whichever asked again first.
    assert served.index("theirs") == LOCAL_RUN - 1, served


def test_a_waiter_gives_up_at_its_bound_and_leaves_the_turn_free(
    turn: WriterTurn, other_process: subprocess.Popen[str]
) -> None:
    looks: list[float] = []

    def after_three_looks() -> bool:
        looks.append(time.monotonic())
        return len(looks) >= 3

    with pytest.raises(TurnTimeout):
        turn.acquire(0.05, after_three_looks)
    assert len(looks) == 3
    assert other_process.stdin is not None and other_process.stdout is not None
    other_process.stdin.write("\n")
    other_process.stdin.flush()
    assert other_process.stdout.readline() == "released\n"
    # The abandoned place in the queue does not keep the file lock: the next writer is served at once.
    ticket = turn.acquire(NEVER_AGAIN, always)
    turn.release(ticket)


HOLDER_THAT_FORKS = """
import os, sys, time
from app.adapters.writer_turn import writer_turn
turn = writer_turn(sys.argv[1])
ticket = turn.acquire(60, lambda: True)
if os.fork() == 0:
    print("child", flush=True)
    time.sleep(60)
    os._exit(0)
print("held", flush=True)
time.sleep(60)
"""


def test_a_holder_killed_after_forking_does_not_leave_the_turn_to_its_child(tmp_path: Path) -> None:
    """The child inherits the holder's open file; it must not keep the lock alive once the holder dies."""
    turn = writer_turn(str(tmp_path / "orders.db"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_THAT_FORKS, str(tmp_path / "orders.db")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
                              start_new_session=True)
    try:
        assert holder.stdout is not None
        assert sorted(holder.stdout.readline() for _ in range(2)) == ["child\n", "held\n"]
        served: list[str] = []
        waiter = Waiter(turn, "here", served)
        waiter.start()
        wait_until(lambda: queued(turn) == 1)
        holder.kill()  # the child lives on
        holder.wait(10)
        waiter.join(10)
        assert waiter.error is None and served == ["here"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)


def _take_turn_in_child(path: str, result: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    turn = writer_turn(path.removesuffix(".writers"))
    try:
        ticket = turn.acquire(0.05, always)
    except TurnTimeout:
        result.put("timed out")
        return
    turn.release(ticket)
    result.put("served")


def test_a_forked_child_waits_for_its_parent_like_any_other_process(tmp_path: Path) -> None:
    turn = writer_turn(str(tmp_path / "orders.db"))
    ticket = turn.acquire(NEVER_AGAIN, always)
    fork = multiprocessing.get_context("fork")
    result = fork.SimpleQueue()
    child = fork.Process(target=_take_turn_in_child, args=(str(turn.path), result))
    child.start()
    child.join(20)
    assert result.get() == "timed out"  # the parent's turn is not the child's
    turn.release(ticket)
    child = fork.Process(target=_take_turn_in_child, args=(str(turn.path), result))
    child.start()
    child.join(20)
    assert result.get() == "served"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'orders.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    yield engine
    engine.dispose()


def test_a_transaction_gives_the_turn_back_when_it_ends(engine: Engine, tmp_path: Path) -> None:
    turn = writer_turn(str(tmp_path / "orders.db"))
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert turn._holder is not None
        assert turn._holder is None  # committed
        with pytest.raises(ZeroDivisionError), conn.begin():
            conn.execute(text("INSERT INTO t VALUES (2)"))
            assert turn._holder is not None
            raise ZeroDivisionError
        assert turn._holder is None  # rolled back
        with conn.begin():  # the same connection takes it again
            conn.execute(text("INSERT INTO t VALUES (3)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 3]
    assert turn._holder is None and not turn._queue


def test_readers_never_take_the_turn(engine: Engine, tmp_path: Path) -> None:
    turn = writer_turn(str(tmp_path / "orders.db"))
    ticket = turn.acquire(NEVER_AGAIN, always)
    try:
        with engine.connect().execution_options(readonly=True) as conn, conn.begin():
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0
    finally:
        turn.release(ticket)
