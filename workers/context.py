"""What a worker process works with, built by the composition root on first use in that process.

Prefork children are forked from the main process; a database pool or socket shared across a fork is
corrupted by whichever process uses it second. So every process (the main one for the relay and metrics,
each pool child for the tasks) builds its own, keyed by pid.
"""

from __future__ import annotations

import os
import threading

from app.bootstrap import WorkerContext, bootstrap, build_worker
from app.config import Settings

_contexts: dict[int, WorkerContext] = {}
_lock = threading.Lock()


def worker_context() -> WorkerContext:
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        with _lock:
            context = _contexts.get(pid)
            if context is None:
                # A context inherited from the parent stays referenced, never used nor closed: closing a
                # SQLite connection the parent may hold inside a transaction would write to the shared
                # WAL index from this process and can leave the database locked for everyone.
                context = _contexts[pid] = build_worker(bootstrap(Settings.from_env()))
    return context


def current_context() -> WorkerContext | None:
    """This process's context if it has built one (nothing is built)."""
    return _contexts.get(os.getpid())


__all__ = ["WorkerContext", "current_context", "worker_context"]
