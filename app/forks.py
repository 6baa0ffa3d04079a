"""What a forked child starts over with, in one place.

gunicorn and Celery's prefork pool fork worker processes from a parent that already runs threads, holds locks
and keeps sockets open. A child inherits all of that but only the thread that forked: a lock held by another
thread stays locked forever, a shared socket interleaves two processes' replies. Every part of OrderFlow that
keeps such state says here what to do around a fork, and this module is the one `os.register_at_fork` of the
code: the hooks run in the order they were registered.

Registered today: the HTTP transport and its watchdog (`app/adapters/http/`), the Redis breaker store
(`app/adapters/redis_breaker_store.py`), the SQLite writers' turn, whose queue and file lock are per process
(`app/adapters/writer_turn.py`), and the worker's relay, which keeps forks out of its transactions
(`workers/relay.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

Hook = Callable[[], None]

_before: list[Hook] = []
_after_in_parent: list[Hook] = []
_after_in_child: list[Hook] = []


def on_fork(*, before: Hook | None = None, after_in_parent: Hook | None = None,
            after_in_child: Hook | None = None) -> None:
    """Run these around every fork of this process (as `os.register_at_fork`, in registration order)."""
    for hooks, hook in ((_before, before), (_after_in_parent, after_in_parent), (_after_in_child, after_in_child)):
        if hook is not None:
            hooks.append(hook)


def _run(hooks: list[Hook], *, reverse: bool = False) -> Callable[[], None]:
    def run() -> None:
        for hook in reversed(list(hooks)) if reverse else list(hooks):
            hook()

    return run


# `before` hooks run in reverse registration order, as os.register_at_fork's own do; the others in order.
os.register_at_fork(before=_run(_before, reverse=True), after_in_parent=_run(_after_in_parent),
                    after_in_child=_run(_after_in_child))

__all__ = ["on_fork"]
