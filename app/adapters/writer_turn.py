"""The SQLite writers' turn: one write transaction at a time across every process on the database file,
handed from one writer to the next by the kernel instead of by SQLite's polling.

SQLite's busy handler is a poll: a writer that finds the lock taken sleeps 1, 2, 5, ... up to 100 ms and
tries again. Under load the lock stays idle between a commit and the next poll that happens to look, and a
waiter's place depends on its luck: with the payment circuit open (one short write per order) the slowest
orders waited half a second for a lock that was free most of that time.

Here a writer takes its turn before `BEGIN IMMEDIATE` and gives it back right after its COMMIT or ROLLBACK:
- across processes the turn is an exclusive `flock` on a file beside the database (`<database>.writers`),
  which the kernel hands over as soon as its holder lets go, and drops when its holder dies;
- inside a process the waiting threads queue first come, first served, and one thread per process (the
  turn's server) blocks on the `flock` for them. A releasing writer hands the turn straight to the next
  thread of its own process, at most `LOCAL_RUN` times in a row, then gives the file lock back so another
  process's writers get theirs;
- the process that waits on the file lock holds a second one, the gate (`<database>.writers-gate`), while
  it waits: a process that has just given the turn back, or a writer trying the free turn without waiting,
  must pass the gate first, so the process already waiting gets the turn before it (the kernel alone would
  let the first to ask again win).

A waiter's bound is its caller's: `acquire` waits in windows and asks `give_up` between two (the engine
gives up once nobody has committed for DB_WAIT_SECONDS, or its deadline passed). A writer that does not take
the turn (a tool opening the file by hand) still meets SQLite's own busy handler under `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.forks import on_fork

# Writers of one process served in a row before the file lock goes back to the other processes.
LOCAL_RUN = 4


class TurnTimeout(Exception):
    """The caller's bound passed before the turn came."""


class _Ticket:
    __slots__ = ("granted", "abandoned", "event")

    def __init__(self) -> None:
        self.granted = False
        self.abandoned = False
        self.event = threading.Event()


class WriterTurn:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.gate_path = path.with_name(f"{path.name}-gate")
        self._reset()

    def _reset(self) -> None:
        # Also what a forked child starts with: the parent's queue, holder, file and server are not its own.
        self._pid = -1
        self._fd = -1
        self._gate = -1
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)
        self._queue: deque[_Ticket] = deque()
        self._holder: _Ticket | None = None
        self._run = 0

    def _ensure_started(self) -> None:
        """Under the mutex: this process's file descriptor (its own open file, so its own lock) and server."""
        if self._pid == os.getpid():
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._gate = os.open(self.gate_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._pid = os.getpid()
        threading.Thread(target=self._serve, name="sqlite-writer-turn", daemon=True).start()

    # --- a writer --------------------------------------------------------------------------------------------

    def acquire(self, window: float, give_up: Callable[[], bool]) -> _Ticket:
        """The turn, first come first served; `give_up` is asked every `window` seconds while waiting."""
        ticket = _Ticket()
        with self._mutex:
            self._ensure_started()
            if self._holder is None and not self._queue and self._try_file_lock():
                self._grant(ticket, run=1)
                return ticket
            self._queue.append(ticket)
            self._changed.notify_all()
        while not ticket.event.wait(window):
            if give_up():
                with self._mutex:
                    if ticket.granted:
                        return ticket
                    ticket.abandoned = True
                    try:
                        self._queue.remove(ticket)
                    except ValueError:
                        pass
                raise TurnTimeout
        return ticket

    def release(self, ticket: _Ticket) -> None:
        with self._mutex:
            if self._holder is not ticket:
                return
            self._holder = None
            if self._run < LOCAL_RUN:
                following = self._next_waiter()
                if following is not None:
                    self._grant(following, run=self._run + 1)
                    return
            self._run = 0
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._changed.notify_all()

    # --- the server: waits on the file lock for the threads of its process ---------------------------------

    def _serve(self) -> None:
        pid = os.getpid()
        while True:
            with self._mutex:
                while self._pid == pid and (self._holder is not None or not self._queue):
                    self._changed.wait()
                if self._pid != pid:
                    return
                fd, gate = self._fd, self._gate
            # Behind the process already waiting (it holds the gate), then on the turn itself: the kernel wakes
            # this thread when the holder lets go.
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            with self._mutex:
                following = self._next_waiter() if self._holder is None else None
                if following is None:
                    if self._holder is None:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    continue
                self._grant(following, run=1)

    # --- under the mutex -------------------------------------------------------------------------------------

    def _try_file_lock(self) -> bool:
        """The free turn, taken without waiting, unless another process is waiting for it (holds the gate)."""
        try:
            fcntl.flock(self._gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        return True

    def _next_waiter(self) -> _Ticket | None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.abandoned:
                return ticket
        return None

    def _grant(self, ticket: _Ticket, *, run: int) -> None:
        self._holder = ticket
        self._run = run
        ticket.granted = True
        ticket.event.set()


_turns: dict[Path, WriterTurn] = {}
_turns_mutex = threading.Lock()


def writer_turn(database: str) -> WriterTurn:
    """The turn of the writers of this database file, one per process and file."""
    path = Path(f"{Path(database).resolve()}.writers")
    with _turns_mutex:
        turn = _turns.get(path)
        if turn is None:
            turn = _turns[path] = WriterTurn(path)
        return turn


def _reset_after_fork() -> None:
    """A forked child closes its copies of the parent's descriptors: a parent killed while holding the turn
    must not leave the lock (or the gate) held by a child that shares the open file (the kernel drops a
    `flock` only when every descriptor of that open file is closed). Closing a copy releases nothing."""
    global _turns_mutex
    _turns_mutex = threading.Lock()
    for turn in _turns.values():
        for fd in (turn._fd, turn._gate):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        turn._reset()


on_fork(after_in_child=_reset_after_fork)


class TurnConnection(sqlite3.Connection):
    """A SQLite connection that gives its writer's turn back as soon as its transaction ends."""

    turn: tuple[WriterTurn, _Ticket] | None = None

    def hold(self, turn: WriterTurn, ticket: _Ticket) -> None:
        self.turn = (turn, ticket)

    def let_go(self) -> None:
        held, self.turn = self.turn, None
        if held is not None:
            held[0].release(held[1])

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.let_go()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.let_go()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.let_go()


def connection_turn(dbapi_conn: Any) -> TurnConnection | None:
    return dbapi_conn if isinstance(dbapi_conn, TurnConnection) else None


__all__ = ["TurnConnection", "TurnTimeout", "WriterTurn", "connection_turn", "writer_turn"]
