"""After fork (gunicorn and Celery prefork children) the watchdog and the connection pools start over."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from app.adapters.http import HttpTransport
from app.adapters.http.watchdog import default_watchdog

from .conftest import ServerFactory

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _run_in_child(body: Callable[[], bool], *, timeout: float = 5.0) -> int:
    """Fork, run ``body`` in the child, return its exit code (0 when body returned True)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = 0 if body() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("child process did not finish in time")


def test_a_forked_child_gets_its_own_working_watchdog() -> None:
    parent_dog = default_watchdog()
    parent_fired = threading.Event()
    parent_dog.watch(time.monotonic() + 0.01, parent_fired.set)
    assert parent_fired.wait(2)
    parent_thread = parent_dog.thread

    def child() -> bool:
        dog = default_watchdog()
        fired = threading.Event()
        dog.watch(time.monotonic() + 0.05, fired.set)
        thread = dog.thread
        return fired.wait(2) and thread is not None and thread is not parent_thread and thread.is_alive()

    assert _run_in_child(child) == 0
    still = threading.Event()
    parent_dog.watch(time.monotonic() + 0.01, still.set)
    assert still.wait(2), "the parent's watchdog must keep working after the fork"


def test_a_forked_child_never_uses_the_parents_pooled_connections(make_server: ServerFactory) -> None:
    server = make_server()
    with HttpTransport() as transport:
        assert transport.request("GET", server.url + "/a", deadline=time.monotonic() + 2).status == 200

        def child() -> bool:
            return transport.request("GET", server.url + "/b", deadline=time.monotonic() + 2).status == 200

        assert _run_in_child(child) == 0
        again = transport.request("GET", server.url + "/c", deadline=time.monotonic() + 2)
    assert again.json()["n"] == 2  # the parent's connection, untouched by the child
    assert server.accepted == 2  # the child opened its own
