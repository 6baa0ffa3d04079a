"""The outbox relay's thread in the Celery worker's main process (the relay itself: `app.services.outbox_relay`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from app.forks import on_fork
from app.logs import name_thread
from app.services.outbox_relay import DEFAULT_REPUBLISH_AFTER, OutboxRelay, RelayPass

log = logging.getLogger("orderflow.relay")

# The prefork pool forks replacement children from the process this relay runs in. SQLite keeps its file
# locks in per-process bookkeeping that a child inherits: a fork taken while this thread is inside a
# transaction leaves the child believing another connection of its own holds the lock, and every write it
# tries is "database is locked" for good. So forks wait until no transaction of this process is open.
FORK_GUARD = threading.Lock()


def _wait_for_open_transactions() -> None:
    FORK_GUARD.acquire()


on_fork(before=_wait_for_open_transactions, after_in_parent=FORK_GUARD.release, after_in_child=FORK_GUARD.release)


@contextmanager
def no_fork() -> Iterator[None]:
    with FORK_GUARD:
        yield


class RelayThread:
    """Runs `relay.run_once` every `interval` seconds until stopped; an error in one pass never ends it."""

    def __init__(self, relay: OutboxRelay, *, interval: float) -> None:
        self._relay = relay
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orderflow-outbox-relay", daemon=True)
        # Its lines (and those of what it calls: the publisher, the circuit) say `relay`, not `worker`.
        name_thread(self._thread.name, "relay")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._relay.run_once()
            except Exception as exc:  # database down: try again next interval
                log.warning("relay pass failed", extra={"event": "relay_failed",
                                                        "error": f"{type(exc).__name__}: {exc}"})
            self._stop.wait(self._interval)


__all__ = ["DEFAULT_REPUBLISH_AFTER", "FORK_GUARD", "OutboxRelay", "RelayPass", "RelayThread", "no_fork"]
