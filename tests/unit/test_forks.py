"""The one place a forked child starts over: hooks run around a real fork, in order, in the right process."""

from __future__ import annotations

import os

from app import forks


def test_hooks_run_around_a_fork_in_the_right_process_and_order() -> None:
    read_end, write_end = os.pipe()
    seen: list[str] = []
    registered = [(hooks, len(hooks)) for hooks in (forks._before, forks._after_in_parent, forks._after_in_child)]
    forks.on_fork(before=lambda: seen.append("before-1"))
    forks.on_fork(before=lambda: seen.append("before-2"), after_in_parent=lambda: seen.append("parent"),
                  after_in_child=lambda: seen.append("child-1"))
    forks.on_fork(after_in_child=lambda: seen.append("child-2"))
    try:
        pid = os.fork()
        if pid == 0:  # the child reports what ran in it, then leaves at once
            os.write(write_end, ",".join(seen).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read_end, 1024).decode().split(",")
    finally:
        os.close(read_end)
        os.close(write_end)
        for hooks, length in registered:
            del hooks[length:]  # the test's own; whatever the app registered before them stays
    # `before` hooks in reverse registration order (as os.register_at_fork does), the others in order.
    assert seen[-3:] == ["before-2", "before-1", "parent"]
    assert child[-4:] == ["before-2", "before-1", "child-1", "child-2"]
